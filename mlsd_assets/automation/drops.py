"""The landing-directory protocol for data drops, free of Dagster so it can be reasoned about alone.

A drop is a CIFAR pickle batch file, an image-folder directory (`<class>/*.png|jpg`) or a `.tar.gz` of
one, put in the landing directory under any name. It is COMPLETE when a marker file `<name>.ready` exists
next to it: producers write the drop first and the (empty) marker last, so a half-copied file or folder
is never read. Size/mtime stability was rejected: a writer stalling longer than a tick would look done.
Accepted drops move (one rename) to `drops/<partition key>`; rejected ones to `quarantine/<name>` with
`<name>.reason.txt`. Either way the drop leaves the landing directory, so it is never picked up twice.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mlsd_assets.ml.atomic import atomic_path

READY_SUFFIX = ".ready"
REASON_SUFFIX = ".reason.txt"
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Drop:
    path: Path
    partition_key: str

    @property
    def marker(self) -> Path:
        return self.path.with_name(self.path.name + READY_SUFFIX)


def partition_key_for(name: str) -> str:
    """`new batch 7.tar.gz` -> `new_batch_7`: archive suffix dropped, characters keys must not have -> `_`."""
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    key = _UNSAFE.sub("_", name).strip("._-")
    if not key:
        raise ValueError(f"drop name {name!r} leaves no usable partition key")
    return key


def complete_drops(landing: Path) -> list[Drop]:
    """Drops whose marker exists, oldest marker first; hidden entries (temp files of writers) are ignored."""
    if not landing.is_dir():
        return []
    drops = []
    for marker in landing.glob(f"*{READY_SUFFIX}"):
        path = marker.with_name(marker.name[: -len(READY_SUFFIX)])
        if path.name.startswith(".") or not path.exists():
            continue
        try:
            key = partition_key_for(path.name)
        except ValueError:
            key = ""  # quarantined by the sensor with the reason
        drops.append((marker.stat().st_mtime, Drop(path=path, partition_key=key)))
    return [d for _, d in sorted(drops, key=lambda item: (item[0], item[1].path.name))]


def move_atomic(src: Path, dest: Path) -> Path:
    """One rename on the same file system; across file systems copy beside `dest` first, then rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        raise FileExistsError(f"cannot move drop {src} to {dest}: destination exists")
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        tmp = dest.with_name(f".{dest.name}.incoming")
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copy2(src, tmp)
        os.rename(tmp, dest)
        shutil.rmtree(src) if src.is_dir() else src.unlink()
    return dest


def accept(drop: Drop, drops_dir: Path) -> Path:
    dest = move_atomic(drop.path, drops_dir / drop.partition_key)
    drop.marker.unlink(missing_ok=True)
    return dest


def quarantine(drop: Drop, quarantine_dir: Path, reason: str) -> Path:
    """Move the drop aside with its reason; a name already there gets a timestamp, nothing is overwritten."""
    name = drop.path.name
    if (quarantine_dir / name).exists():
        name = f"{name}.{time.strftime('%Y%m%dT%H%M%S')}"
    dest = move_atomic(drop.path, quarantine_dir / name)
    with atomic_path(quarantine_dir / f"{name}{REASON_SUFFIX}") as tmp:
        tmp.write_text(reason.rstrip() + "\n")
    drop.marker.unlink(missing_ok=True)
    return dest
