"""new_data_sensor: each drop kind becomes a partition and a run; incomplete waits, bad is quarantined."""

import errno
import json
import os
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from mlsd_assets.automation import drops
from mlsd_assets.automation.drops import partition_key_for
from mlsd_assets.automation.sensors import build_new_data_sensor
from mlsd_assets.core.data.sources import find_drop, read_drop
from mlsd_assets.resources import DataPaths
from mlsd_assets_tests import hostile_files as hf
from mlsd_assets_tests.cifar_files import tar_gz, write_image_folder, write_pickle_batch
from mlsd_assets_tests.synthetic import make_images

SENSOR = build_new_data_sensor()


@pytest.fixture
def paths(tmp_path: Path) -> DataPaths:
    return DataPaths(root=str(tmp_path / "data"))


@pytest.fixture
def landing(paths: DataPaths) -> Path:
    """The landing directory drops arrive in, created empty."""
    paths.landing_dir.mkdir(parents=True)
    return paths.landing_dir


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as inst:
        yield inst


def _tick(instance: dg.DagsterInstance, paths: DataPaths, cursor: str | None = None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"paths": paths})
    return SENSOR(context)


def _ready(path: Path) -> Path:
    path.with_name(path.name + ".ready").touch()
    return path


def _pickle_drop(landing: Path, name: str, n: int = 20, seed: int = 3) -> Path:
    images, labels = make_images(n, seed=seed)
    return write_pickle_batch(landing / name, images, labels, name)


def _folder_drop(landing: Path, name: str, n: int = 20) -> Path:
    images, labels = make_images(n, seed=4)
    return write_image_folder(landing / name, images, labels)


def _tar_drop(tmp: Path, landing: Path, name: str, n: int = 20) -> Path:
    images, labels = make_images(n, seed=5)
    folder = write_image_folder(tmp / name.removesuffix(".tar.gz"), images, labels)
    return tar_gz(folder, landing / name)


@pytest.mark.parametrize("kind", ["pickle", "folder", "tar.gz"])
def test_complete_drop_becomes_partition_and_run(
    kind: str, tmp_path: Path, instance: dg.DagsterInstance, paths: DataPaths, landing: Path
) -> None:
    name = {"pickle": "batch_7", "folder": "spring-photos", "tar.gz": "field batch.tar.gz"}[kind]
    drop = {
        "pickle": lambda: _pickle_drop(landing, name),
        "folder": lambda: _folder_drop(landing, name),
        "tar.gz": lambda: _tar_drop(tmp_path, landing, name),
    }[kind]()
    _ready(drop)
    key = partition_key_for(name)

    result = _tick(instance, paths)

    [add] = result.dynamic_partitions_requests
    assert add.partitions_def_name == "cifar10_batches" and list(add.partition_keys) == [key]
    [request] = result.run_requests
    assert request.partition_key == key and request.run_key == f"drop:{key}"
    assert json.loads(result.cursor) == [key]
    assert not drop.exists() and not list(landing.iterdir()), "drop and marker leave the landing dir"
    batch = read_drop(find_drop(paths.drops_dir, key), key)
    assert len(batch) == 20 and batch.partition == key


def test_drop_without_marker_is_ignored(instance: dg.DagsterInstance, paths: DataPaths, landing: Path) -> None:
    drop = _pickle_drop(landing, "half_copied")
    result = _tick(instance, paths)
    assert not result.run_requests and "no complete drop" in result.skip_reason.skip_message
    assert drop.exists()
    _ready(drop)
    assert [r.partition_key for r in _tick(instance, paths).run_requests] == ["half_copied"]


def test_bad_drop_is_quarantined_once(instance: dg.DagsterInstance, paths: DataPaths, landing: Path) -> None:
    images, labels = make_images(10)
    labels[4] = 12
    bad = _ready(write_pickle_batch(landing / "bad_labels", images, labels, "bad"))
    garbage = landing / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b not really gzip")
    _ready(garbage)

    result = _tick(instance, paths)

    assert not result.run_requests and not result.dynamic_partitions_requests
    assert "2 drop(s) quarantined" in result.skip_reason.skip_message
    assert not bad.exists() and not garbage.exists()
    reason = (paths.quarantine_dir / "bad_labels.reason.txt").read_text()
    assert "bad_labels" in reason and "out of range" in reason and "index 4" in reason
    assert (paths.quarantine_dir / "garbage.tar.gz").exists()
    assert (paths.quarantine_dir / "garbage.tar.gz.reason.txt").read_text().strip()
    reported = [e.metadata["quarantined_drop"].value for e in result.asset_events]
    assert len(reported) == 2 and any("bad_labels" in r for r in reported)
    again = _tick(instance, paths, result.cursor)
    assert not again.run_requests and not again.asset_events, "a quarantined drop is never retried"


def test_cursor_prevents_reprocessing(instance: dg.DagsterInstance, paths: DataPaths, landing: Path) -> None:
    _ready(_pickle_drop(landing, "batch_8"))
    first = _tick(instance, paths)
    assert [r.partition_key for r in first.run_requests] == ["batch_8"]

    # build_sensor_context does not apply partition requests: only the cursor stands before a re-run.
    assert not _tick(instance, paths, first.cursor).run_requests
    recovered = _tick(instance, paths, cursor=None)
    assert [r.partition_key for r in recovered.run_requests] == ["batch_8"], "no cursor: resumed from drops/"

    # The same name delivered again is not new data under an existing key: quarantined, not re-ingested.
    _ready(_pickle_drop(landing, "batch_8", seed=9))
    dup = _tick(instance, paths, first.cursor)
    assert not dup.run_requests
    assert "already exists" in (paths.quarantine_dir / "batch_8.reason.txt").read_text()


def test_unusable_name_is_quarantined(instance: dg.DagsterInstance, paths: DataPaths, landing: Path) -> None:
    _ready(_pickle_drop(landing, "---"))
    result = _tick(instance, paths)
    assert not result.run_requests
    assert "no usable partition key" in (paths.quarantine_dir / "---.reason.txt").read_text()


def test_official_batch_name_is_not_a_drop(instance: dg.DagsterInstance, paths: DataPaths, landing: Path) -> None:
    _ready(_pickle_drop(landing, "data_batch_1"))
    assert not _tick(instance, paths).run_requests
    assert (paths.quarantine_dir / "data_batch_1.reason.txt").exists()


def test_partition_keys_are_safe() -> None:
    assert partition_key_for("new batch 7.tar.gz") == "new_batch_7"
    assert partition_key_for("photos.TGZ") == "photos"
    assert partition_key_for("-x (1)") == "x_1"
    with pytest.raises(ValueError, match="no usable partition key"):
        partition_key_for("...tar.gz")
    assert np.unique([partition_key_for(n) for n in ("a", "a.tar", "a.tar.gz")]).tolist() == ["a"]


# --- one bad drop never stops intake (issue 11) ---


def _reason(paths: DataPaths, name: str) -> str:
    return (paths.quarantine_dir / f"{name}.reason.txt").read_text()


BAD_DROPS = {
    "png_bomb": lambda landing: hf.folder_with(landing / "png_bomb", "cat/bomb.png", hf.png_claiming(65000, 65000)),
    "huge_label": lambda landing: hf.pickle_drop(landing / "huge_label", labels=[2**70] * 10),
    "dangling": lambda landing: hf.symlink(landing / "dangling", landing / "gone"),
    "dangling_inside": lambda landing: hf.folder_with(
        landing / "dangling_inside", "cat/x.png", make=lambda p: p.symlink_to(landing / "gone")
    ),
    "fifo": lambda landing: hf.fifo(landing / "fifo"),
    "fifo_inside": lambda landing: hf.folder_with(landing / "fifo_inside", "cat/x.png", make=os.mkfifo),
    "linked": lambda landing: hf.symlink(landing / "linked", _folder_drop(landing.parent, "elsewhere")),
}


@pytest.mark.timeout(60)  # a reader that blocks (FIFO) or walks a bomb fails the test instead of hanging the suite
@pytest.mark.parametrize("kind", sorted(BAD_DROPS))
def test_bad_drop_is_quarantined_and_the_tick_goes_on(
    kind: str, instance: dg.DagsterInstance, paths: DataPaths, landing: Path
) -> None:
    bad = _ready(BAD_DROPS[kind](landing))
    os.utime(bad.with_name(bad.name + ".ready"), (1, 1))  # the bad drop is first in line
    _ready(_pickle_drop(landing, "good_after"))

    result = _tick(instance, paths)

    assert [r.partition_key for r in result.run_requests] == ["good_after"]
    assert not os.path.lexists(bad), "the bad drop left the landing dir"
    reason = _reason(paths, kind)
    assert f"drop: {kind}" in reason and str(landing / kind) in reason, reason
    if kind in ("dangling", "linked"):
        assert "symbolic link" in reason
        assert os.path.islink(paths.quarantine_dir / kind), "moved as the link, never followed"
    if kind == "linked":
        assert (landing.parent / "elsewhere" / "cat").is_dir(), "the link target is untouched"


def test_empty_ready_name_is_ignored(instance: dg.DagsterInstance, paths: DataPaths, landing: Path) -> None:
    (landing / ".ready").touch()
    _ready(_pickle_drop(landing, "batch_9"))
    assert [r.partition_key for r in _tick(instance, paths).run_requests] == ["batch_9"]


def test_non_utf8_drop_name(instance: dg.DagsterInstance, paths: DataPaths, landing: Path) -> None:
    name = os.fsdecode(b"caf\xe9")
    os.rename(_pickle_drop(landing, "staged"), landing / name)
    _ready(landing / name)
    _ready(hf.folder_with(landing / "inner_name", "cat/keep.png", hf.png_bytes()))
    os.rename(landing / "inner_name" / "cat" / "keep.png", os.fsencode(landing / "inner_name" / "cat") + b"/\xff.png")

    result = _tick(instance, paths)

    assert [r.partition_key for r in result.run_requests] == ["caf"], "the name's bytes that are not a key become _"
    reason = _reason(paths, "inner_name")
    assert "not valid UTF-8" in reason and "\\xff.png" in reason
    for event in result.asset_events:
        event.metadata["quarantined_drop"].value.encode()  # storable: no lone surrogates


def test_crash_leftover_of_a_cross_filesystem_move_is_recovered(
    instance: dg.DagsterInstance, paths: DataPaths, landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick killed mid-copy leaves `.<key>.incoming`; the next move replaces it instead of failing forever."""
    _ready(_folder_drop(landing, "batch_x"))
    (paths.drops_dir / ".batch_x.incoming" / "cat").mkdir(parents=True)
    (paths.drops_dir / ".batch_x.incoming" / "cat" / "0.png").write_bytes(b"half a copy")
    real_rename = os.rename

    def cross_device(src: os.PathLike, dest: os.PathLike) -> None:
        if Path(src).parent == landing:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(src, dest)

    monkeypatch.setattr(drops.os, "rename", cross_device)
    result = _tick(instance, paths)

    assert [r.partition_key for r in result.run_requests] == ["batch_x"]
    assert len(read_drop(paths.drops_dir / "batch_x", "batch_x")) == 20
    assert not (paths.drops_dir / ".batch_x.incoming").exists()


@pytest.mark.parametrize("length", [240, 249])
def test_long_names_are_refused_with_a_reason(
    length: int, instance: dg.DagsterInstance, paths: DataPaths, landing: Path
) -> None:
    name = "n" * length
    _ready(_pickle_drop(landing, name))

    result = _tick(instance, paths)

    assert not result.run_requests and not result.dynamic_partitions_requests
    [reason_file] = paths.quarantine_dir.glob("*.reason.txt")
    reason = reason_file.read_text()
    assert f"drop: {name}\n" in reason and "more than the 200" in reason
    assert not list(landing.iterdir())


def test_any_exception_quarantines_only_that_drop(
    instance: dg.DagsterInstance, paths: DataPaths, landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ready(_pickle_drop(landing, "explodes"))
    _ready(_pickle_drop(landing, "fine"))
    real_vet = drops.vet

    def vet(drop: drops.Drop, timeout_s: float) -> drops.Verdict:
        if drop.partition_key == "explodes":
            raise RuntimeError("disk on fire")
        return real_vet(drop, timeout_s)

    monkeypatch.setattr(drops, "vet", vet)
    result = _tick(instance, paths)
    assert [r.partition_key for r in result.run_requests] == ["fine"]
    assert "RuntimeError: disk on fire" in _reason(paths, "explodes")


def test_watchdog_bounds_one_drop(instance: dg.DagsterInstance, paths: DataPaths, landing: Path) -> None:
    """A reader that outlives its deadline is killed; the drop is quarantined with the reason."""
    _ready(_pickle_drop(landing, "slow"))
    sensor = build_new_data_sensor(limits=drops.IntakeLimits(drop_s=0.01, tick_s=30))
    context = dg.build_sensor_context(instance=instance, resources={"paths": paths})
    result = sensor(context)
    assert not result.run_requests
    assert "longer than 0 s (watchdog)" in _reason(paths, "slow")
