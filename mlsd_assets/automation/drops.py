"""The landing-directory protocol for data drops, free of Dagster so it can be reasoned about alone.

A drop is a CIFAR pickle batch file, an image-folder directory (`<class>/*.png|jpg`) or a `.tar.gz` of
one, put in the landing directory under any name. It is COMPLETE when a marker file `<name>.ready` exists
next to it: producers write the drop first and the (empty) marker last, so a half-copied file or folder
is never read. Size/mtime stability was rejected: a writer stalling longer than a tick would look done.
Accepted drops move (one rename) to `drops/<partition key>`; rejected ones to `quarantine/<name>` with
`<name>.reason.txt`. Either way the drop leaves the landing directory, so it is never picked up twice.

Each drop is vetted in its own process with a deadline (`vet`): whatever a drop does to a reader (a hang,
a crash, memory) stays in that process, and one bad drop never stops the others. Links, FIFOs and devices
are refused from their metadata before anything opens them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlsd_assets.core.data.sources import MAX_KEY_LENGTH, TAR_SUFFIXES, read_drop
from mlsd_assets.core.platform.atomic import atomic_path
from mlsd_assets.core.platform.limits import shown

READY_SUFFIX = ".ready"
REASON_SUFFIX = ".reason.txt"
INCOMING_SUFFIX = ".incoming"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_MAX_QUARANTINE_NAME = 120  # longer names are shortened (+ a hash); the full name is in the reason file


@dataclass(frozen=True)
class Drop:
    path: Path
    partition_key: str

    @property
    def marker(self) -> Path:
        return self.path.with_name(self.path.name + READY_SUFFIX)


@dataclass(frozen=True)
class IntakeLimits:
    """Seconds one drop may take to read (watchdog), and one tick for all drops (Dagster's own limit is 60)."""

    drop_s: float = 40.0
    tick_s: float = 45.0


@dataclass(frozen=True)
class Verdict:
    """What vetting one drop found: its image count, or why it is refused."""

    images: int | None = None
    reason: str | None = None


def partition_key_for(name: str) -> str:
    """`new batch 7.tar.gz` -> `new_batch_7`: archive suffix dropped, characters keys must not have -> `_`."""
    for suffix in TAR_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    key = _UNSAFE.sub("_", name).strip("._-")
    if not key:
        raise ValueError(f"drop name {shown(name)!r} leaves no usable partition key: rename it")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(
            f"drop name gives a partition key of {len(key)} characters, more than the {MAX_KEY_LENGTH} "
            "a key may have (it names files): rename it shorter"
        )
    return key


def complete_drops(landing: Path) -> list[Drop]:
    """Drops whose marker exists, oldest marker first; hidden entries (temp files of writers) are ignored.

    A drop that is a link (even a dangling one) is listed: the sensor refuses it with a reason.
    """
    if not landing.is_dir():
        return []
    drops = []
    for marker in landing.glob(f"*{READY_SUFFIX}"):
        if marker.name.startswith("."):  # `.ready` alone names no drop; hidden markers belong to writers
            continue
        path = marker.with_name(marker.name[: -len(READY_SUFFIX)])
        try:
            os.lstat(path)
            ready_at = marker.lstat().st_mtime
        except FileNotFoundError:
            continue  # marker before data (or a vanished drop): not complete
        try:
            key = partition_key_for(path.name)
        except ValueError:
            key = ""  # quarantined by the sensor with the reason
        drops.append((ready_at, Drop(path=path, partition_key=key)))
    return [d for _, d in sorted(drops, key=lambda item: (item[0], os.fsencode(item[1].path.name)))]


def refusal(drop: Drop) -> str | None:
    """Why a drop is refused from its metadata alone (nothing opened): not a real file or folder."""
    mode = os.lstat(drop.path).st_mode
    if stat.S_ISLNK(mode):
        return (
            f"{shown(drop.path)}: is a symbolic link; a drop must be a real file or folder "
            "(a link's target could change after it was checked)"
        )
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return f"{shown(drop.path)}: not a regular file or folder (a FIFO, socket or device); refused unopened"
    return None


def vet(drop: Drop, timeout_s: float) -> Verdict:
    """Read the drop in a child process, killed after `timeout_s`: hangs and memory stay out of the caller."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", __name__, os.fsencode(drop.path), drop.partition_key],
            capture_output=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return Verdict(
            reason=f"{shown(drop.path)}: reading it took longer than {timeout_s:.0f} s (watchdog); "
            "split it into smaller drops"
        )
    lines = done.stdout.decode("utf-8", "backslashreplace").strip().splitlines()
    if done.returncode == 0 and lines:
        result = json.loads(lines[-1])
        return Verdict(images=result.get("images"), reason=result.get("reason"))
    tail = done.stderr.decode("utf-8", "backslashreplace").strip().splitlines()[-3:]
    return Verdict(reason=f"{shown(drop.path)}: the reader died (exit code {done.returncode}): " + " | ".join(tail))


def _vet_here(path: Path, key: str) -> dict[str, object]:
    """The child's side of `vet`: the same reader as ingestion; any exception is the drop's fault, reported
    with the file it names."""
    try:
        return {"images": len(read_drop(path, key))}
    except Exception as exc:  # noqa: BLE001 - every failure of a drop is a reason to quarantine it
        text = str(exc)
        if shown(path) not in text and path.name not in text:
            text = f"{shown(path)}: {text}"
        return {"reason": f"{type(exc).__name__}: {text}"}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def move_atomic(src: Path, dest: Path) -> Path:
    """One rename on the same file system; across file systems copy beside `dest` first, then rename.

    Links are moved or copied as links, never followed. A `.<dest>.incoming` left by a copy that died
    is ours (one tick at a time) and is replaced.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(dest):
        raise FileExistsError(f"cannot move drop {shown(src)} to {shown(dest)}: destination exists")
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        tmp = dest.with_name(f".{dest.name}{INCOMING_SUFFIX}")
        if os.path.lexists(tmp):
            _remove(tmp)  # the leftover of a copy that crashed: the source is still whole
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, tmp, symlinks=True)
        else:
            shutil.copy2(src, tmp, follow_symlinks=False)
        os.rename(tmp, dest)
        _remove(src)
    return dest


def accept(drop: Drop, drops_dir: Path) -> Path:
    dest = move_atomic(drop.path, drops_dir / drop.partition_key)
    drop.marker.unlink(missing_ok=True)
    return dest


def quarantine_name(name: str) -> str:
    """The drop's own name, or for a long one a shortened name plus a hash of the full name."""
    if len(os.fsencode(name)) <= _MAX_QUARANTINE_NAME:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return f"{_UNSAFE.sub('_', name)[:80]}-{digest}"


def quarantine(drop: Drop, quarantine_dir: Path, reason: str) -> Path:
    """Move the drop aside with its reason; a name already there gets a timestamp, nothing is overwritten."""
    base = name = quarantine_name(drop.path.name)
    stamp, n = time.strftime("%Y%m%dT%H%M%S"), 0
    while os.path.lexists(quarantine_dir / name):
        n += 1
        name = f"{base}.{stamp}" + (f"-{n}" if n > 1 else "")
    dest = move_atomic(drop.path, quarantine_dir / name)
    text = f"drop: {shown(drop.path.name)}\nreason: {shown(reason.rstrip())}\n"
    with atomic_path(quarantine_dir / f"{name}{REASON_SUFFIX}") as tmp:
        tmp.write_text(text, encoding="utf-8")
    drop.marker.unlink(missing_ok=True)
    return dest


if __name__ == "__main__":
    print(json.dumps(_vet_here(Path(sys.argv[1]), sys.argv[2])))
