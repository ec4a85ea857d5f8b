"""Write-then-rename, so readers only ever see a whole file and a failed write keeps the previous one.

A writer holds an exclusive `flock` on its temp file until the rename: a temp file nobody holds a lock on
belongs to a writer that died (killed, OOM), and `clean_stale_temps` may remove it. The lock lives in the
kernel, so it is released whatever way the writer dies, and no pid has to be guessed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

TEMP_SUFFIX = ".tmp"
STALE_AFTER_S = 300.0  # also covers the instant between a writer's mkstemp and its flock


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name is cut so that a long target name still leaves room for the temp's prefix and suffix.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name[:150]}.", suffix=TEMP_SUFFIX, dir=path.parent)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held until we are done: see clean_stale_temps
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)


def clean_stale_temps(directory: Path, log: logging.Logger, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove temp files of `atomic_path` writers that died: unlocked and untouched for `older_than_s`.

    A temp file whose lock another process holds is never touched, however old.
    """
    removed = []
    if not directory.is_dir():
        return removed
    cutoff = time.time() - older_than_s
    for tmp in directory.glob(f".*{TEMP_SUFFIX}"):
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # gone already, or a link: not ours
        try:
            if os.fstat(fd).st_mtime > cutoff:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer holds it
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        finally:
            os.close(fd)
    for tmp in removed:
        log.warning(f"removed {tmp}: the temp file of a write that was killed")
    return removed


@contextmanager
def file_lock(lock_file: Path) -> Iterator[None]:
    """Serialise work on a shared cache between processes (parallel partitions, concurrent builds)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class JsonFile:
    """For a dataclass stored as one JSON file, written atomically (the IO manager's suffix/save/load)."""

    suffix: ClassVar[str] = ".json"

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Self:
        return cls(**cls.fields_from(json.loads(path.read_text())))

    @classmethod
    def fields_from(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The stored fields as the constructor takes them (override to read files of an older shape)."""
        return data
