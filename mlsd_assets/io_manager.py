"""Stores every asset value as one file that is swapped in atomically."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

import dagster as dg

from mlsd_assets.core.platform.atomic import clean_stale_temps


class Artifact(Protocol):
    """What the IO manager can store: a value that writes itself to one file (atomically) and reads it back."""

    suffix: ClassVar[str]

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> Self: ...


def _artifact_type(context: dg.InputContext) -> type[Artifact]:
    """The stored class, from the downstream annotation (`T` or `dict[str, T]` for several partitions)."""
    annotation = context.dagster_type.typing_type
    if typing.get_origin(annotation) is dict:
        annotation = typing.get_args(annotation)[1]
    if not (isinstance(annotation, type) and hasattr(annotation, "load") and hasattr(annotation, "suffix")):
        raise dg.DagsterInvariantViolationError(
            f"input {context.name!r} of {context.op_def.name!r} must be annotated with an artifact class "
            f"(or dict[str, <artifact class>] for a partitioned upstream), got {annotation!r}"
        )
    return annotation


class ArtifactIOManager(dg.ConfigurableIOManager):
    """`<root>/<asset key>/<partition or 'latest'><suffix>`; a failed materialization leaves the last good file."""

    root: str

    def path_for(self, asset_key: dg.AssetKey, partition: str | None, suffix: str) -> Path:
        return Path(self.root).joinpath(*asset_key.path) / f"{partition or 'latest'}{suffix}"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        partition = context.partition_key if context.has_asset_partitions else None
        path = self.path_for(context.asset_key, partition, type(obj).suffix)
        clean_stale_temps(path.parent, context.log)  # what killed writes left here (never a live one)
        obj.save(path)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path)), "file_bytes": path.stat().st_size})

    def load_input(self, context: dg.InputContext) -> Any:
        cls = _artifact_type(context)
        key = context.asset_key
        if not context.has_asset_partitions:
            return cls.load(self._existing(self.path_for(key, None, cls.suffix), key))
        loaded = {}
        for partition in context.asset_partition_keys:
            path = self.path_for(key, partition, cls.suffix)
            if path.exists():
                loaded[partition] = cls.load(path)
            else:
                context.log.warning(f"{key.to_user_string()} partition {partition!r} was never materialized: skipped")
        if typing.get_origin(context.dagster_type.typing_type) is dict:
            return loaded
        if len(loaded) != 1:
            raise dg.DagsterInvariantViolationError(
                f"{key.to_user_string()}: expected one partition, found {sorted(loaded)}"
            )
        return next(iter(loaded.values()))

    @staticmethod
    def _existing(path: Path, key: dg.AssetKey) -> Path:
        if not path.exists():
            raise FileNotFoundError(f"{key.to_user_string()} has not been materialized yet (no {path})")
        return path
