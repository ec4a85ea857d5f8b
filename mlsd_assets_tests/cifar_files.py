"""Writers for CIFAR-10 on-disk formats (official pickle batches, tarballs, image folders) from arrays."""

from __future__ import annotations

import functools
import http.server
import pickle
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from mlsd_assets.core.data.batches import CIFAR10_CLASSES, OFFICIAL_BATCHES
from mlsd_assets_tests.synthetic import make_images


def write_pickle_batch(path: Path, images: np.ndarray, labels: np.ndarray, batch_label: str) -> Path:
    """One batch in the official layout: bytes keys, rows of 3072 uint8 (1024 R, 1024 G, 1024 B)."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072)
    payload = {
        b"batch_label": batch_label.encode(),
        b"labels": [int(x) for x in labels],
        b"data": data,
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(payload, fh, protocol=2)
    return path


def write_cifar_python_dir(root: Path, per_batch: int = 50, seed: int = 0) -> Path:
    """`root/cifar-10-batches-py/` with the five training batches, the test batch and batches.meta."""
    out = root / "cifar-10-batches-py"
    for i, name in enumerate(OFFICIAL_BATCHES):
        images, labels = make_images(per_batch, seed=seed * 100 + i)
        write_pickle_batch(out / name, images, labels, f"{name} of 6")
    with open(out / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": per_batch}, fh)
    return out


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray, fmt: str = "png") -> Path:
    """`root/<class>/<n>.<fmt>`: the layout of one split of an image-folder tree, and of a data drop."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / CIFAR10_CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.{fmt}")
    return root


def write_image_folder_tree(root: Path, n_train: int = 100, n_test: int = 20, fmt: str = "png", seed: int = 0) -> Path:
    """`root/train/<class>/…` and `root/test/<class>/…`: the layout of ../shared/data/cifar10-jpeg.tar.gz."""
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = make_images(n, seed=s)
        write_image_folder(root / split, images, labels, fmt)
    return root


def tar_gz(source: Path, dest: Path) -> Path:
    """Pack `source` (its own name as the top folder) into `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(source, arcname=source.name)
    return dest


def write_cifar_python_tarball(root: Path, per_batch: int = 50, seed: int = 0) -> Path:
    """`root/cifar-10-python.tar.gz`, laid out like the official one (top folder cifar-10-batches-py/)."""
    batches = write_cifar_python_dir(root / "unpacked", per_batch, seed)
    return tar_gz(batches, root / "cifar-10-python.tar.gz")


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its bytes, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@contextmanager
def serve_dir(root: Path) -> Iterator[str]:
    """A real HTTP mirror of `root` on localhost (download code without the internet); yields its URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # clients that stop reading early (torchvision's redirect probe) are not errors here

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
