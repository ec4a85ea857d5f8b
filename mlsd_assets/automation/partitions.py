"""One partition per data batch: the official six first, then one per accepted data drop."""

import dagster as dg

from mlsd_assets.core.data.batches import OFFICIAL_BATCHES

raw_batches = dg.DynamicPartitionsDefinition(name="cifar10_batches")


def add_official_batches(instance: dg.DagsterInstance) -> list[str]:
    """Register the six official batches as partitions (idempotent); returns the keys that were new."""
    known = set(instance.get_dynamic_partitions(raw_batches.name))
    new = [key for key in OFFICIAL_BATCHES if key not in known]
    if new:
        instance.add_dynamic_partitions(raw_batches.name, new)
    return new
