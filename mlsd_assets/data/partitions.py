"""One partition per data batch: the official six first, then one per accepted data drop."""

import dagster as dg

OFFICIAL_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
OFFICIAL_TEST_BATCH = "test_batch"
OFFICIAL_BATCHES: tuple[str, ...] = (*OFFICIAL_TRAIN_BATCHES, OFFICIAL_TEST_BATCH)

raw_batches = dg.DynamicPartitionsDefinition(name="cifar10_batches")
