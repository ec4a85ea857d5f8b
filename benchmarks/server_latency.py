"""Inference server latency and throughput against the running container, beside a bare ORT session.

    .venv/bin/python benchmarks/server_latency.py --untrained airbench        # random weights, same compute
    .venv/bin/python benchmarks/server_latency.py --model .mlsd/data/artifacts/cifar10_onnx/latest.onnx

Prints: p50/p99 latency of 1-image requests (one keep-alive connection), requests/s with 8 concurrent
connections, batched images/s, and the same model in a bare ONNX Runtime session in this process.
Targets on 2 cores: p50 <= 1.0 ms, p99 <= 2 ms, >= 1,500 req/s, batched >= 3,000 images/s.
The client is a small asyncio raw-HTTP/1.1 client (uvloop when installed), so it costs little CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlsd_assets.ml.image_folder import read_tar_files  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
log = logging.getLogger("server_latency")


def test_images(path: Path, count: int) -> np.ndarray:
    from PIL import Image

    if not path.exists():
        sys.exit(f"real CIFAR-10 images not found at {path} (pass --data PATH to cifar10-jpeg.tar.gz)")
    files = read_tar_files(path)
    names = sorted(n for n in files if "/test/" in f"/{n}" and n.endswith(".jpg"))[:count]
    return np.stack([np.asarray(Image.open(io.BytesIO(files[n])).convert("RGB")) for n in names])


def untrained_model(architecture: str) -> bytes:
    """The default network with random weights: the same graph, hence the same compute, as a trained one."""
    import json

    from mlsd_assets.ml.batches import CIFAR10_CLASSES
    from mlsd_assets.ml.export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx
    from mlsd_assets.ml.models import InferenceModel, build_model

    model = InferenceModel(build_model(architecture), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)).eval()
    meta = {
        "classes": json.dumps(list(CIFAR10_CLASSES)), "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "input_layout": "NHWC", "input_dtype": "uint8", "mean": "[0.49, 0.48, 0.45]", "std": "[0.25, 0.24, 0.26]",
        "architecture": architecture, "mlflow_run_id": "benchmark", "registered_model_name": "benchmark",
        "registered_model_version": "0", "dataset_hash": "none", "opset": str(OPSET),
    }
    return export_onnx(model, {f"mlsd.{k}": v for k, v in meta.items()}, log)


def percentiles_ms(seconds: list[float]) -> str:
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return f"p50 {p50:.3f} ms  p99 {p99:.3f} ms"


def bare_ort(model_path: Path, images: np.ndarray, threads: int, batch: int) -> None:
    from mlsd_assets.serving.server.model import Predictor

    predictor = Predictor(model_path, intra_op_threads=threads)
    seconds = []
    for i in range(len(images)):
        t0 = time.perf_counter()
        predictor.logits(images[i : i + 1])
        seconds.append(time.perf_counter() - t0)
    start = time.perf_counter()
    for lo in range(0, len(images), batch):
        predictor.logits(images[lo : lo + batch])
    rate = len(images) / (time.perf_counter() - start)
    print(f"bare ORT session ({threads} intra-op thread(s)): 1 image {percentiles_ms(seconds)}; "
          f"batch {batch}: {rate:,.0f} images/s")


def request_bytes(images: np.ndarray) -> bytes:
    body = np.ascontiguousarray(images).tobytes()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
            f"X-Shape: {','.join(map(str, images.shape))}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.I)


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    body = await reader.readexactly(int(_LENGTH.search(head).group(1)))
    if head[9:12] != b"200":
        raise RuntimeError(f"server answered {head[:12]!r}: {body[:200]!r}")


async def http_figures(port: int, images: np.ndarray, batch: int, connections: int, duration: float) -> None:
    singles = [request_bytes(images[i : i + 1]) for i in range(len(images))]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for req in singles[:200]:  # warm-up
        await roundtrip(reader, writer, req)
    seconds = []
    for req in singles:
        t0 = time.perf_counter()
        await roundtrip(reader, writer, req)
        seconds.append(time.perf_counter() - t0)
    batches = [request_bytes(images[lo : lo + batch]) for lo in range(0, len(images), batch)]
    start = time.perf_counter()
    for req in batches:
        await roundtrip(reader, writer, req)
    rate = len(images) / (time.perf_counter() - start)
    writer.close()

    async def worker(k: int, deadline: float) -> int:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        done = 0
        while time.perf_counter() < deadline:
            await roundtrip(r, w, singles[(k * 997 + done) % len(singles)])
            done += 1
        w.close()
        return done

    deadline = time.perf_counter() + duration
    counts = await asyncio.gather(*(worker(k, deadline) for k in range(connections)))
    print(f"  1 image per request, 1 connection: {percentiles_ms(seconds)} ({len(seconds)} requests)")
    print(f"  {connections} concurrent connections: {sum(counts) / duration:,.0f} requests/s")
    print(f"  batch {batch} per request: {rate:,.0f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="ONNX file with the mlsd.* contract")
    source.add_argument("--untrained", metavar="ARCH", help="export ARCH (e.g. airbench) with random weights")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=2000, help="test images to send")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of the concurrent phase")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (server and bare)")
    parser.add_argument("--runtime", choices=("container", "local_process"), default="container")
    parser.add_argument("--base-image", default="mlsd/python-base:bookworm")
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
    model_path.write_bytes(args.model.read_bytes() if args.model else untrained_model(args.untrained))
    print(f"{len(images)} real CIFAR-10 test images; model {args.model or args.untrained + ' (untrained)'}")
    bare_ort(model_path, images, args.threads, args.batch)
    if args.runtime == "container":
        run_container(args, model_path, images)
    else:
        from mlsd_assets.serving.runtime import running_local_process

        with running_local_process(model_path, args.work / "server.log", log) as server:
            print(f"local server process ({server.name}):")
            asyncio.run(http_figures(int(server.base_url.rsplit(":", 1)[1]), images, args.batch,
                                     args.connections, args.duration))


def run_container(args: argparse.Namespace, model_path: Path, images: np.ndarray) -> None:
    from mlsd_assets.serving.image import build_image, ensure_wheelhouse, host_pins, write_build_context
    from mlsd_assets.serving.resources import DockerEngine
    from mlsd_assets.serving.runtime import free_port, wait_healthy

    client = DockerEngine().client()
    wheelhouse = ensure_wheelhouse(args.work / "wheelhouses", host_pins(), log)
    context = write_build_context(args.work / "context", model_path.read_bytes(), wheelhouse)
    built = build_image(client, context, "mlsd/cifar10-server:bench", args.base_image, {}, logging.getLogger("quiet"))
    port = free_port()
    container = client.containers.run(
        built.image_id, detach=True, network_mode="host", name=f"mlsd-bench-{port}",
        environment={"MLSD_HOST": "127.0.0.1", "MLSD_PORT": str(port), "MLSD_INTRA_OP_THREADS": str(args.threads)},
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 120, lambda: None)
        print(f"container from mlsd/cifar10-server:bench ({built.size_bytes / 1e6:.0f} MB, "
              f"{args.threads} intra-op thread(s)):")
        asyncio.run(http_figures(port, images, args.batch, args.connections, args.duration))
    finally:
        container.remove(force=True)


if __name__ == "__main__":
    main()
