"""Raw CIFAR-10 batches and the cleaned split."""
