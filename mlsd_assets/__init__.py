"""mlsd: CIFAR-10 from raw batches to an evaluated inference server, as Dagster assets."""

from mlsd_assets.definitions import defs

__all__ = ["defs"]
