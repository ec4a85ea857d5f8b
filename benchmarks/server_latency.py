"""Inference server latency and throughput (Open Inference Protocol v2), side by side with bare ONNX Runtime.

    .venv/bin/python benchmarks/server_latency.py --untrained airbench        # random weights, same compute
    .venv/bin/python benchmarks/server_latency.py --model .mlsd/data/artifacts/cifar10_onnx/latest.onnx

One run prints, for the same graph and the same ORT intra-op threads: bare ORT in this process (the limit: 1-image
p50/p99, batched images/s), then the server in its container (host network): 1-image p50/p99 on one keep-alive
connection and the overhead over bare ORT, requests/s at 16 connections with dynamic batching on and off, batched
images/s. Goals on 2 cores: overhead <= 0.15 ms, p50 <= 1 ms, >= 1,500 req/s, >= 3,000 images/s batched.
The client is a small asyncio raw-HTTP/1.1 client (uvloop when installed) sending binary v2 tensors.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import platform
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlsd_assets.core.platform.limits import MAX_IMAGE_FILE_BYTES, read_tar  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
log = logging.getLogger("server_latency")


def cpu_name() -> str:
    """Model name, ISA level and visible cores (the model name alone is just "AMD EPYC" on some VMs)."""
    info = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    isa = [name for flag, name in (("avx512_bf16", "AVX-512 BF16"), ("amx_tile", "AMX")) if flag in flags]
    if not isa and "avx512f" in flags:
        isa = ["AVX-512"]
    elif not isa and "avx2" in flags:
        isa = ["AVX2"]
    return f"{model or platform.processor() or 'unknown CPU'} ({', '.join(isa) or 'no AVX2'}), {os.cpu_count()} cores"


def test_images(path: Path, count: int) -> np.ndarray:
    from PIL import Image

    if not path.exists():
        sys.exit(f"real CIFAR-10 images not found at {path} (pass --data PATH to cifar10-jpeg.tar.gz)")
    files = read_tar(path, MAX_IMAGE_FILE_BYTES)
    names = sorted(n for n in files if "/test/" in f"/{n}" and n.endswith(".jpg"))[:count]
    return np.stack([np.asarray(Image.open(io.BytesIO(files[n])).convert("RGB")) for n in names])


def untrained_model(architecture: str, flip_tta: bool | None = None) -> bytes:
    """The default recipe's network (widths, flip-TTA) with random weights: the same graph, hence the same
    compute, as a trained one."""
    from mlsd_assets.core.data.batches import CIFAR10_CLASSES
    from mlsd_assets.core.serving.export import contract_metadata, export_onnx
    from mlsd_assets.core.training.models import InferenceModel, build_model
    from mlsd_assets.core.training.recipes import recipe_config

    config = recipe_config(architecture=architecture)
    tta = config.flip_tta if flip_tta is None else flip_tta
    net = build_model(architecture, config.widths if architecture == "airbench" else None)
    model = InferenceModel(net, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), flip_tta=tta).eval()
    meta = contract_metadata(
        classes=CIFAR10_CLASSES,
        mean=(0.49, 0.48, 0.45),
        std=(0.25, 0.24, 0.26),
        architecture=architecture,
        mlflow_run_id="benchmark",
        registered_model_name="benchmark",
        registered_model_version="0",
        dataset_hash="none",
    )
    return export_onnx(model, meta, log)


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return float(p50), float(p99)


def bare_ort(model_path: Path, images: np.ndarray, threads: int, batch: int) -> float:
    """The limit: the server's own Predictor (same session options), called directly. Returns p50 in ms."""
    from mlsd_assets.core.serving.server.model import Predictor

    predictor = Predictor(model_path, intra_op_threads=threads)
    for i in range(min(200, len(images))):
        predictor.logits(images[i : i + 1])
    seconds = []
    for i in range(len(images)):
        t0 = time.perf_counter()
        predictor.logits(images[i : i + 1])
        seconds.append(time.perf_counter() - t0)
    start = time.perf_counter()
    for lo in range(0, len(images), batch):
        predictor.logits(images[lo : lo + batch])
    rate = len(images) / (time.perf_counter() - start)
    p50, p99 = percentiles_ms(seconds)
    print(f"  bare ORT: 1 image p50 {p50:.3f} ms  p99 {p99:.3f} ms; batch {batch}: {rate:,.0f} images/s")
    return p50


def infer_request(model_name: str, images: np.ndarray, path: str | None = None) -> bytes:
    """A complete HTTP/1.1 v2 infer request: JSON header + binary uint8 pixels, logits back as binary."""
    pixels = np.ascontiguousarray(images).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": list(images.shape),
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(pixels)},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST {path or f'/v2/models/{model_name}/infer'} HTTP/1.1\r\nHost: bench\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(header) + len(pixels)}\r\n\r\n"
    )
    return head.encode() + header + pixels


_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    body = await reader.readexactly(int(_LENGTH.search(head).group(1)))
    if head[9:12] != b"200":
        raise RuntimeError(f"server answered {head[:12]!r}: {body[:200]!r}")
    return body


async def single_latency(port: int, requests: list[bytes]) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for req in requests[:200]:  # warm-up
        await roundtrip(reader, writer, req)
    seconds = []
    for req in requests:
        t0 = time.perf_counter()
        await roundtrip(reader, writer, req)
        seconds.append(time.perf_counter() - t0)
    writer.close()
    return seconds


async def concurrent_rate(port: int, requests: list[bytes], connections: int, duration: float) -> float:
    async def worker(k: int, deadline: float) -> int:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        done = 0
        while time.perf_counter() < deadline:
            await roundtrip(r, w, requests[(k * 997 + done) % len(requests)])
            done += 1
        w.close()
        return done

    start = time.perf_counter()
    counts = await asyncio.gather(*(worker(k, start + duration) for k in range(connections)))
    return sum(counts) / (time.perf_counter() - start)


async def batched_rate(port: int, requests: list[bytes], images: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await roundtrip(reader, writer, requests[0])
    start = time.perf_counter()
    for req in requests:
        await roundtrip(reader, writer, req)
    writer.close()
    return images / (time.perf_counter() - start)


@contextmanager
def server_container(
    image_id: str, threads: int, batching: bool, extra: dict[str, str] | None = None
) -> Iterator[tuple[int, object]]:
    """The image on the host network (no proxy between client and server), removed afterwards."""
    from mlsd_assets.core.serving.runtime import free_port, wait_healthy
    from mlsd_assets.resources import DockerEngine

    port = free_port()
    env = {
        "MLSD_HOST": "127.0.0.1",
        "MLSD_PORT": str(port),
        "MLSD_INTRA_OP_THREADS": str(threads),
        "MLSD_BATCHING": "on" if batching else "off",
    } | (extra or {})
    container = (
        DockerEngine()
        .client()
        .containers.run(
            image_id,
            detach=True,
            network_mode="host",
            name=f"mlsd-bench-{port}",
            environment=env,
        )
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 120, lambda: None)
        yield port, container
    finally:
        container.remove(force=True)


def build_server_image(model_path: Path, work: Path, base_image: str, tag: str) -> tuple[str, int]:
    from mlsd_assets.core.serving.image import build_image, ensure_wheelhouse, host_pins, write_build_context
    from mlsd_assets.resources import DockerEngine

    wheelhouse = ensure_wheelhouse(work / "wheelhouses", host_pins(), log)
    context = write_build_context(work / "context", model_path.read_bytes(), wheelhouse)
    built = build_image(DockerEngine().client(), context, tag, base_image, {}, logging.getLogger("quiet"))
    return built.image_id, built.size_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="ONNX file with the mlsd.* contract")
    source.add_argument("--untrained", metavar="ARCH", help="export ARCH (e.g. airbench) with random weights")
    parser.add_argument("--no-tta", action="store_true", help="with --untrained: the graph without flip-TTA")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=2000, help="test images to send")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each concurrent phase")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads, server and bare (0: all)")
    parser.add_argument("--base-image", default="mlsd/python-base:bookworm")
    parser.add_argument("--tag", default="mlsd/cifar10-server:bench")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "server_latency")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    images = test_images(args.data, args.images)
    args.work.mkdir(parents=True, exist_ok=True)
    model_path = args.work / "model.onnx"
    model_path.write_bytes(
        args.model.read_bytes() if args.model else untrained_model(args.untrained, False if args.no_tta else None)
    )
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
    name = meta.get("mlsd.registered_model_name") or "model"
    variant = meta.get("mlsd.serving.variant", "fp32 (no served variant recorded in the metadata)")
    print(f"CPU: {cpu_name()}")
    print(
        f"{len(images)} real CIFAR-10 test images; model {args.model or args.untrained + ' (untrained)'}"
        f"{' without flip-TTA' if args.no_tta else ''}; "
        f"graph: {variant}; ORT intra-op threads: {args.threads or 'all cores'}"
    )
    bare_p50 = bare_ort(model_path, images, args.threads, args.batch)
    image_id, size = build_server_image(model_path, args.work, args.base_image, args.tag)
    singles = [infer_request(name, images[i : i + 1]) for i in range(len(images))]
    batches = [infer_request(name, images[lo : lo + args.batch]) for lo in range(0, len(images), args.batch)]
    print(f"  server container ({size / 1e6:.0f} MB image, host network):")
    for batching in (True, False):
        with server_container(image_id, args.threads, batching) as (port, _):
            if batching:
                p50, p99 = percentiles_ms(asyncio.run(single_latency(port, singles)))
                print(
                    f"    1 image, 1 connection: p50 {p50:.3f} ms  p99 {p99:.3f} ms "
                    f"(overhead over bare ORT p50: {p50 - bare_p50:+.3f} ms)"
                )
                rate = asyncio.run(batched_rate(port, batches, len(images)))
                print(f"    batch {args.batch} per request: {rate:,.0f} images/s")
            rps = asyncio.run(concurrent_rate(port, singles, args.connections, args.duration))
            print(
                f"    1 image per request, {args.connections} connections, batching "
                f"{'on ' if batching else 'off'}: {rps:,.0f} requests/s"
            )


if __name__ == "__main__":
    main()
