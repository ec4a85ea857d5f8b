"""Data formats: reading CIFAR-10 sources into batches, cleaning, and the train/validation/test split."""
