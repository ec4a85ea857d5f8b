"""The bad-input matrix: hostile drops and sources through the documented interfaces, one fresh process each.

Interfaces: `read_drop` (what ingestion and the sensor's vetting call), `read_official_batch`
(MLSD_CIFAR10_SOURCE) and one `new_data_sensor` tick over the landing directory. For every kind it prints
the error text, the peak RSS of the process (its own and its children's: the sensor vets drops in a child),
the wall time, whether the error names the offending file, and whether the previously accepted good drop and
its stored partition are byte-identical afterwards.

    .venv/bin/python benchmarks/bad_inputs.py            # all kinds (about 2 minutes on 2 cores)
    .venv/bin/python benchmarks/bad_inputs.py --only png  # kinds whose name contains "png"
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import pickle
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlsd_assets.core.data.sources import read_drop
from mlsd_assets_tests import hostile_files as hf
from mlsd_assets_tests.cifar_files import tar_gz, truncate, write_cifar_python_dir, write_image_folder
from mlsd_assets_tests.synthetic import make_images

MIB = 1 << 20
GOOD = "good_drop"
AS_LIMIT = 4 << 30  # each child: a runaway case fails with MemoryError instead of taking the machine


def _folder(root: Path, name: str, data: bytes | None = None, make: Callable[[Path], None] | None = None) -> Path:
    return hf.folder_with(root, name, data, make)


def _tar_members(dest: Path, add: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        add(tar)
    return dest


def _special(kind: bytes, name: str, **fields: object) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        png = hf.png_bytes()
        info = tarfile.TarInfo("cat/0.png")
        info.size = len(png)
        tar.addfile(info, io.BytesIO(png))
        special = tarfile.TarInfo(name)
        special.type = kind
        for key, value in fields.items():
            setattr(special, key, value)
        tar.addfile(special)

    return add


def _with_png(name: str) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        png = hf.png_bytes()
        info = tarfile.TarInfo(name)
        info.size = len(png)
        tar.addfile(info, io.BytesIO(png))

    return add


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def _non_utf8(root: Path) -> Path:
    folder = _folder(root / "nonutf8", "cat/keep.png", hf.png_bytes())
    os.rename(folder / "cat" / "keep.png", os.fsencode(folder / "cat") + b"/caf\xe9.png")
    return folder


def _lying_gzip(path: Path) -> Path:
    bomb = hf.gzip_bomb(path.with_name("honest.gz"), 320 * MIB).read_bytes()
    path.write_bytes(bomb[:-4] + (1000).to_bytes(4, "little"))
    return path


def _corrupt_deflate(path: Path) -> Path:
    images, labels = make_images(200, seed=2)
    archive = tar_gz(write_image_folder(path.with_suffix(".src"), images, labels), path)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    archive.write_bytes(bytes(data))
    return archive


def _truncated_tar(path: Path) -> Path:
    images, labels = make_images(200, seed=2)
    return truncate(tar_gz(write_image_folder(path.with_suffix(".src"), images, labels), path), 0.5)


def _pickle_member_liar(path: Path) -> Path:
    return hf.tar_declaring(path, "cifar-10-batches-py/test_batch", 3 << 30)


def _official_with_link(root: Path) -> Path:
    folder = write_cifar_python_dir(root, per_batch=5)
    (folder / "test_batch").unlink()
    (folder / "test_batch").symlink_to("/dev/zero")
    return folder


# kind -> (interface, builder(work dir) -> path, the file name the error must contain)
Case = tuple[str, Callable[[Path], Path], str]
CASES: dict[str, Case] = {
    # image-folder drops
    "jpeg header claims 65000x65000 (800 B)": (
        "sensor",
        lambda d: _folder(d / "jpeg65k", "cat/big.jpg", hf.jpeg_claiming(65000, 65000)),
        "big.jpg",
    ),
    "jpeg header claims 16000x16000": (
        "read_drop",
        lambda d: _folder(d / "j16k", "cat/big.jpg", hf.jpeg_claiming(16000, 16000)),
        "big.jpg",
    ),
    "png header claims 12000x12000": (
        "read_drop",
        lambda d: _folder(d / "p12k", "dog/big.png", hf.png_claiming(12000, 12000)),
        "big.png",
    ),
    "png bomb 65000x65000": (
        "sensor",
        lambda d: _folder(d / "pngbomb", "dog/bomb.png", hf.png_claiming(65000, 65000)),
        "bomb.png",
    ),
    "png 64x64 (wrong size)": (
        "read_drop",
        lambda d: _folder(d / "p64", "cat/x.png", hf.png_bytes(np.zeros((64, 64, 3), np.uint8))),
        "x.png",
    ),
    "png truncated": ("read_drop", lambda d: _folder(d / "ptrunc", "cat/t.png", hf.png_bytes()[:60]), "t.png"),
    "garbage named .png": ("read_drop", lambda d: _folder(d / "pgarb", "cat/g.png", os.urandom(500)), "g.png"),
    "jpeg SOI then garbage": (
        "read_drop",
        lambda d: _folder(d / "jgarb", "cat/g.jpg", b"\xff\xd8" + os.urandom(500)),
        "g.jpg",
    ),
    "gif disguised as .png": ("read_drop", lambda d: _folder(d / "gif", "cat/a.png", b"GIF89a" + bytes(40)), "a.png"),
    "image file over 1 MiB": (
        "read_drop",
        lambda d: _folder(d / "fat", "cat/fat.png", hf.png_bytes() + bytes(2 * MIB)),
        "fat.png",
    ),
    "not an image suffix": ("read_drop", lambda d: _folder(d / "txt", "cat/notes.txt", b"hello"), "notes.txt"),
    "unknown class folder": ("read_drop", lambda d: _folder(d / "unk", "zebra/x.png", hf.png_bytes()), "zebra"),
    "nested one level too deep": (
        "read_drop",
        lambda d: _folder(d / "deep", "cat/more/x.png", hf.png_bytes()),
        "more/x.png",
    ),
    "empty folder": ("read_drop", lambda d: (d / "emptydir").mkdir() or d / "emptydir", "emptydir"),
    "link to /dev/zero inside folder": (
        "sensor",
        lambda d: _folder(d / "zeroln", "cat/z.png", make=lambda p: p.symlink_to("/dev/zero")),
        "z.png",
    ),
    "dangling link inside folder": (
        "sensor",
        lambda d: _folder(d / "dangin", "cat/d.png", make=lambda p: p.symlink_to(d / "nothing")),
        "d.png",
    ),
    "FIFO inside folder": ("sensor", lambda d: _folder(d / "fifoin", "cat/f.png", make=os.mkfifo), "f.png"),
    "non-UTF-8 file name inside folder": ("sensor", _non_utf8, "caf\\xe9.png"),
    # pickle drops
    "label 2**70": ("sensor", lambda d: hf.pickle_drop(d / "huge_label", labels=[2**70] * 10), "huge_label"),
    "labels: shared nested lists (2**40)": (
        "read_drop",
        lambda d: hf.pickle_drop(d / "nested", labels=[hf.shared_nested_labels(40)] * 10),
        "nested",
    ),
    "labels: a string": ("read_drop", lambda d: hf.pickle_drop(d / "lstr", labels="0123456789"), "lstr"),
    "labels: wrong length": ("read_drop", lambda d: hf.pickle_drop(d / "llen", labels=[1, 2]), "llen"),
    "label -1": ("read_drop", lambda d: hf.pickle_drop(d / "lneg", labels=[-1] * 10), "lneg"),
    "data: float dtype": (
        "read_drop",
        lambda d: hf.pickle_drop(d / "dfloat", data=np.zeros((10, 3072), np.float32)),
        "dfloat",
    ),
    "data: wrong shape": (
        "read_drop",
        lambda d: hf.pickle_drop(d / "dshape", data=np.zeros((10, 100), np.uint8)),
        "dshape",
    ),
    "data: missing": ("read_drop", lambda d: hf.pickle_drop(d / "dnone", data=None), "dnone"),
    "zero images": (
        "read_drop",
        lambda d: hf.pickle_drop(d / "dzero", data=np.zeros((0, 3072), np.uint8), labels=[]),
        "dzero",
    ),
    "pickle global os.system": (
        "read_drop",
        lambda d: _write(d / "evil", b"cos\nsystem\n(S'true'\ntR."),
        "evil",
    ),
    "pickle truncated": ("read_drop", lambda d: truncate(hf.pickle_drop(d / "ptr"), 0.5), "ptr"),
    "pickle of a list": (
        "read_drop",
        lambda d: _write(d / "plist", pickle.dumps([1, 2, 3])),
        "plist",
    ),
    "empty file": ("read_drop", lambda d: _write(d / "empty", b""), "empty"),
    "200 MiB file (sparse)": ("read_drop", lambda d: _sparse(d / "huge", 200 * MIB), "huge"),
    # tarball drops
    "gzip bomb: 1 GiB of zeros (1 MB)": ("sensor", lambda d: hf.gzip_bomb(d / "bomb.tar.gz", 1 << 30), "bomb.tar.gz"),
    "gzip bomb with a lying trailer": ("read_drop", lambda d: _lying_gzip(d / "liar.tar.gz"), "liar.tar.gz"),
    "tar member declares 3 GiB": (
        "read_drop",
        lambda d: hf.tar_declaring(d / "decl.tar", "cat/x.png", 3 << 30),
        "decl.tar",
    ),
    "tar member ../escape": (
        "read_drop",
        lambda d: _tar_members(d / "dots.tar.gz", _with_png("../cat/x.png")),
        "dots.tar.gz",
    ),
    "tar member /absolute": (
        "read_drop",
        lambda d: _tar_members(d / "abs.tar.gz", _with_png("/cat/x.png")),
        "abs.tar.gz",
    ),
    "tar symlink member": (
        "read_drop",
        lambda d: _tar_members(d / "sym.tar.gz", _special(tarfile.SYMTYPE, "cat/l.png", linkname="/dev/zero")),
        "sym.tar.gz",
    ),
    "tar hard link member": (
        "read_drop",
        lambda d: _tar_members(d / "hard.tar.gz", _special(tarfile.LNKTYPE, "cat/h.png", linkname="cat/0.png")),
        "hard.tar.gz",
    ),
    "tar device member": (
        "read_drop",
        lambda d: _tar_members(d / "dev.tar.gz", _special(tarfile.CHRTYPE, "cat/dev.png", devmajor=1, devminor=5)),
        "dev.tar.gz",
    ),
    "tar.gz truncated": ("read_drop", lambda d: _truncated_tar(d / "trunc.tar.gz"), "trunc.tar.gz"),
    "tar.gz corrupt deflate": ("read_drop", lambda d: _corrupt_deflate(d / "corrupt.tar.gz"), "corrupt.tar.gz"),
    "tar.gz with no files": ("read_drop", lambda d: _tar_members(d / "none.tar.gz", lambda tar: None), "none.tar.gz"),
    "tar.gz of text, not gzip": (
        "read_drop",
        lambda d: _write(d / "fake.tar.gz", b"plain text"),
        "fake.tar.gz",
    ),
    # the drop itself
    "drop is a FIFO": ("sensor", lambda d: hf.fifo(d / "fifo_drop"), "fifo_drop"),
    "drop is a link to a good folder": (
        "sensor",
        lambda d: hf.symlink(d / "linked", _folder(d.parent / "elsewhere", "cat/y.png", hf.png_bytes())),
        "linked",
    ),
    "drop is a dangling link": ("sensor", lambda d: hf.symlink(d / "dangling", d / "gone"), "dangling"),
    "drop is a link to /dev/zero": ("sensor", lambda d: hf.symlink(d / "zero", "/dev/zero"), "zero"),
    "drop name of 240 characters": ("sensor", lambda d: hf.pickle_drop(d / ("n" * 240)), "n" * 240),
    "drop name of 249 characters": ("sensor", lambda d: hf.pickle_drop(d / ("m" * 249)), "m" * 249),
    "drop name leaves no key": ("sensor", lambda d: hf.pickle_drop(d / "---"), "---"),
    "drop named like an official batch": ("sensor", lambda d: hf.pickle_drop(d / "data_batch_1"), "data_batch_1"),
    "drop named like an existing drop": ("sensor", lambda d: hf.pickle_drop(d / GOOD), GOOD),
    # MLSD_CIFAR10_SOURCE
    "source: missing path": ("official", lambda d: d / "nowhere", "nowhere"),
    "source: /dev/zero": ("official", lambda d: Path("/dev/zero"), "/dev/zero"),
    "source: batch is a link to /dev/zero": ("official", _official_with_link, "test_batch"),
    "source: pickle member declares 3 GiB": (
        "official",
        lambda d: _pickle_member_liar(d / "cifar-10-python.tar"),
        "cifar-10-python.tar",
    ),
}


def _child(kind: str, data_root: Path, path: Path) -> None:
    """Runs in the fresh process: one bad input through its interface; prints JSON with the outcome."""
    interface = CASES[kind][0] if kind in CASES else kind
    log = logging.getLogger("bad_inputs")
    error = None
    try:
        if interface == "read_drop" or interface == "good read_drop":
            read_drop(path, "bad")
        elif interface == "official":
            from mlsd_assets.core.data.sources import read_official_batch

            read_official_batch(str(path), "test_batch", data_root / "downloads", log)
        else:
            import dagster as dg

            from mlsd_assets.automation.sensors import build_new_data_sensor
            from mlsd_assets.resources import DataPaths

            (path.parent / f"{path.name}.ready").touch()
            with dg.instance_for_test() as instance:
                context = dg.build_sensor_context(
                    instance=instance, resources={"paths": DataPaths(root=str(data_root))}
                )
                result = build_new_data_sensor()(context)
            reports = [e.metadata["quarantined_drop"].value for e in result.asset_events]
            error = (
                reports[0]
                if reports
                else f"no quarantine; run requests: {[r.partition_key for r in result.run_requests]}"
            )
            if os.path.lexists(path):
                error = f"STILL IN LANDING: {error}"
    except Exception as exc:  # noqa: BLE001 - the error IS the measurement
        error = f"{type(exc).__name__}: {exc}"
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"error": error, "peak_kib": max(own, kids)}))


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for root in paths:
        for file in sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]:
            h.update(file.read_bytes())
    return h.hexdigest()


def _run_child(kind: str, data_root: Path, path: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", kind, str(data_root), os.fsencode(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT)),
    )
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over children so far (cross-check)
    lines = out.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {
            "error": f"CHILD DIED rc={proc.returncode}: {err.decode(errors='replace')[-300:]}",
            "peak_kib": rss,
        }, seconds
    return json.loads(lines[-1]), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only kinds whose name contains this")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, root, path = args.child
        _child(kind, Path(root), Path(path))
        return 0

    from mlsd_assets.core.data.batches import RawBatch

    work = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    data_root = work / "data"
    landing = data_root / "landing"
    landing.mkdir(parents=True)
    images, labels = make_images(40, seed=11)
    good = write_image_folder(data_root / "drops" / GOOD, images, labels)
    stored = data_root / "artifacts" / "raw_cifar10" / f"{GOOD}.npz"
    read_drop(good, GOOD).save(stored)
    assert RawBatch.load(stored).images.shape == (40, 32, 32, 3)
    good_digest = _digest([good, stored])

    cpuinfo = Path("/proc/cpuinfo")
    models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
    cpu = models[0] if models else platform.processor() or platform.machine()
    print(f"# bad-input matrix on {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}")
    rows = []
    baseline_drop = landing.parent / "baseline"
    write_image_folder(baseline_drop, images, labels)
    for name, interface in (("good drop via read_drop (baseline)", "good read_drop"),):
        result, seconds = _run_child(interface, data_root, baseline_drop)
        rows.append(
            (name, interface, result["error"] or "accepted (40 images)", result["peak_kib"] / 1024, seconds, True, True)
        )
    for kind, (interface, build, names) in CASES.items():
        if args.only and args.only not in kind:
            continue
        scratch = work / "build" / str(len(rows))
        scratch.mkdir(parents=True)
        path = build(landing if interface == "sensor" else scratch)
        result, seconds = _run_child(kind, data_root, path)
        error = result["error"] or "ACCEPTED (no error)"
        intact = _digest([good, stored]) == good_digest
        rows.append((kind, interface, error, result["peak_kib"] / 1024, seconds, names in error, intact))

    print("| kind | interface | error text | peak RSS MB | time s | names file | good data intact |")
    print("|---|---|---|---:|---:|:-:|:-:|")
    for kind, interface, error, peak, seconds, named, intact in rows:
        text = error.replace(str(work), "<tmp>").replace("|", "/").replace("\n", " ")
        if len(text) > 150:
            text = text[:147] + "..."
        marks = f"{'yes' if named else 'NO'} | {'yes' if intact else 'NO'}"
        print(f"| {kind} | {interface} | {text} | {peak:.0f} | {seconds:.2f} | {marks} |")
    bad = rows[1:]
    print(
        f"\n{len(bad)} kinds: {sum(r[5] for r in bad)} name the file, "
        f"{sum(r[3] < 500 for r in bad)} peak under 500 MB (max {max(r[3] for r in bad):.0f} MB), "
        f"good data intact after {sum(r[6] for r in bad)}; baseline peak {rows[0][3]:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
