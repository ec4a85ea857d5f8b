"""mlsd: CIFAR-10 from raw batches to an evaluated inference server, as Dagster assets.

`defs` loads on first access (PEP 562): `dagster ... -m mlsd_assets` finds the code location, while importing
the plain-Python core (`mlsd_assets.core`) does not pull in Dagster.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "defs":
        from mlsd_assets.definitions import defs

        return defs
    raise AttributeError(f"module 'mlsd_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])
