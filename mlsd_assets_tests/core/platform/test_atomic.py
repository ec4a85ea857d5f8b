"""Temp files of killed writes are cleaned; a temp file a live writer holds is never touched."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np

from mlsd_assets.core.data.batches import RawBatch, image_hashes
from mlsd_assets.core.platform.atomic import clean_stale_temps
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets_tests.synthetic import make_images

LOG = logging.getLogger("test")
WRITER = """
import sys, time
from pathlib import Path
from mlsd_assets.core.platform.atomic import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(600)
"""


def _writer(target: Path) -> tuple[subprocess.Popen, Path]:
    """A writer stopped inside atomic_path, its temp file written: alive until we kill it."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.exists() and tmp.parent == target.parent
    return proc, tmp


def _age(path: Path, seconds: float = 3600) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_only_temps_of_dead_writers_are_removed(tmp_path: Path) -> None:
    live, held = _writer(tmp_path / "live.npz")
    killed, orphan = _writer(tmp_path / "killed.npz")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        fresh = tmp_path / ".fresh.npz.abc.tmp"  # a writer between mkstemp and flock looks like this
        fresh.write_bytes(b"y")
        for path in (held, orphan):
            _age(path)

        removed = clean_stale_temps(tmp_path, LOG)

        assert removed == [orphan] and not orphan.exists()
        assert held.exists(), "a live writer's temp file is never removed, however old"
        assert fresh.exists(), "younger than the grace period: kept"
    finally:
        live.kill()
        live.wait(timeout=10)


def test_io_manager_cleans_what_killed_writes_left(tmp_path: Path) -> None:
    images, labels = make_images(8, seed=2)
    batch = RawBatch("p1", images, labels, image_hashes(images), "test", {})
    manager = ArtifactIOManager(root=str(tmp_path))
    target = manager.path_for(dg.AssetKey("raw_cifar10"), "p1", RawBatch.suffix)
    killed, orphan = _writer(target)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    _age(orphan)

    context = dg.build_output_context(asset_key=dg.AssetKey("raw_cifar10"), partition_key="p1")
    manager.handle_output(context, batch)

    assert not orphan.exists()
    assert np.array_equal(RawBatch.load(target).images, images)
    assert not list(target.parent.glob(".*.tmp"))
