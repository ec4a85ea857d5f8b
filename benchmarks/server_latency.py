"""Inference server latency and throughput (Open Inference Protocol v2), side by side with bare ONNX Runtime.

    .venv/bin/python benchmarks/server_latency.py --untrained airbench        # random weights, same compute
    .venv/bin/python benchmarks/server_latency.py --model .mlsd/data/artifacts/cifar10_onnx/latest.onnx \
        .mlsd/data/artifacts/cifar10_onnx/latest.reference-*.onnx           # the served graph and its fp32 graph

One run prints, per graph, for the same ORT intra-op threads: the server in its container (host network; the image
is built once, the other graphs bind-mounted over its model) beside bare ORT in this process (the limit) on the same
images, each image to both back to back (so load from other processes falls on both alike): 1-image p50/p99 and the
overhead (p50 of the per-image differences), and in the same rotation the floor: a bare socket server
(`floor_server`) running the same ORT call with no HTTP framework, whose overhead is what serving over loopback
costs on this machine at all (the processes' wake-ups, the kernel); requests/s at 16 connections with dynamic
batching on and off, batched images/s beside bare ORT's best (one call on all threads, or one-thread calls side by
side as the server's workers run them); then a table of all graphs. Goals on 2 cores: overhead <= 0.15 ms, p50 <= 1
ms, >= 1,500 req/s, >= 3,000 images/s batched. `--runtime container process` also runs the same server package as a
host process: on a machine shared with other work, Docker's cgroup (cgroup v1: every container together holds one
cpu.shares=1024 entity beside each host task) starves the container when the host is loaded, which the bare-ORT
limit in this process does not suffer; the process row shows the server's own cost.
The load generator is a small asyncio raw-HTTP/1.1 client on uvloop sending binary v2 tensors (an httpx client
costs several times more CPU per request, which on 2 cores would measure the client); its CPU seconds per request
are printed beside each rate, so it can be seen not to be the bottleneck. The 1-image latency, one request at a
time, comes from a blocking socket instead: no event loop in the client to wake up after every answer.
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
import resource
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlsd_assets.core.platform.limits import MAX_IMAGE_FILE_BYTES, read_tar  # noqa: E402
from mlsd_assets.core.serving.server.batching import BatchingConfig  # noqa: E402

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


def bare_ort(model_path: Path, threads: int):  # noqa: ANN201 (a Predictor; imported lazily)
    """The limit: the server's own Predictor (same session options), called directly in this process."""
    from mlsd_assets.core.serving.server.model import Predictor

    return Predictor(model_path, intra_op_threads=threads)


def bare_batched_rate(predictor, images: np.ndarray, batch: int) -> float:  # noqa: ANN001
    """One ORT call per `batch` images on all intra-op threads."""
    predictor.logits(images[:batch])
    start = time.perf_counter()
    for lo in range(0, len(images), batch):
        predictor.logits(images[lo : lo + batch])
    return len(images) / (time.perf_counter() - start)


def bare_side_by_side_rate(predictor, images: np.ndarray, chunk: int) -> float:  # noqa: ANN001
    """The server's workers without the server: `chunk`-image one-thread ORT calls, one per core at a time."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [images[lo : lo + chunk] for lo in range(0, len(images), chunk)]
    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        list(pool.map(predictor.one_thread_logits, chunks[:4]))
        start = time.perf_counter()
        list(pool.map(predictor.one_thread_logits, chunks))
    return len(images) / (time.perf_counter() - start)


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


def paired_latency(
    ports: list[int],
    requests: list[bytes],
    predictor,  # noqa: ANN001 (a Predictor; imported lazily)
    images: np.ndarray,
) -> tuple[list[list[float]], list[float]]:
    """Seconds per image through each server in `ports` and through bare ORT, back to back, the order rotating
    image by image (load from other processes falls on all alike). One request at a time, so the client is a
    blocking socket: an event loop's wake-ups would be measured as the server's overhead (0.02-0.05 ms per round
    trip on a 2-core Zen 5)."""
    socks = [socket.create_connection(("127.0.0.1", port)) for port in ports]
    try:
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, req in enumerate(requests[:200]):  # warm-up
            for sock in socks:
                blocking_roundtrip(sock, req)
            predictor.logits(images[i : i + 1])
        servers: list[list[float]] = [[] for _ in socks]
        bare: list[float] = []
        targets = [*range(len(socks)), None]  # None: bare ORT
        for i, req in enumerate(requests):
            shift = i % len(targets)
            for which in targets[shift:] + targets[:shift]:
                t0 = time.perf_counter()
                if which is None:
                    predictor.logits(images[i : i + 1])
                    bare.append(time.perf_counter() - t0)
                else:
                    blocking_roundtrip(socks[which], req)
                    servers[which].append(time.perf_counter() - t0)
    finally:
        for sock in socks:
            sock.close()
    return servers, bare


def blocking_roundtrip(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        data += _received(sock)
    length = int(_LENGTH.search(data[: end + 2]).group(1))
    while len(data) < end + 4 + length:
        data += _received(sock)
    if data[9:12] != b"200":
        raise RuntimeError(f"server answered {data[:200]!r}")
    return data[end + 4 :]


def _received(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection mid-answer")
    return chunk


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def concurrent_rate(port: int, requests: list[bytes], connections: int, duration: float) -> tuple[float, float]:
    """Requests/s, and the client's own CPU seconds per request (to see it is not the bottleneck)."""

    async def worker(k: int, deadline: float) -> int:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        done = 0
        while time.perf_counter() < deadline:
            await roundtrip(r, w, requests[(k * 997 + done) % len(requests)])
            done += 1
        w.close()
        return done

    start, cpu = time.perf_counter(), cpu_seconds()
    counts = await asyncio.gather(*(worker(k, start + duration) for k in range(connections)))
    return sum(counts) / (time.perf_counter() - start), (cpu_seconds() - cpu) / max(sum(counts), 1)


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
    image_id: str,
    threads: int,
    batching: bool,
    extra: dict[str, str] | None = None,
    model: Path | None = None,
    cpu_shares: int | None = None,
) -> Iterator[tuple[int, object]]:
    """The image on the host network (no proxy between client and server), removed afterwards; `model` is
    bind-mounted over the image's own (one build serves every graph)."""
    from mlsd_assets.core.serving.runtime import free_port, wait_healthy
    from mlsd_assets.resources import DockerEngine

    port = free_port()
    env = {
        "MLSD_HOST": "127.0.0.1",
        "MLSD_PORT": str(port),
        "MLSD_INTRA_OP_THREADS": str(threads),
        "MLSD_BATCHING": "on" if batching else "off",
    } | (extra or {})
    volumes = {str(model.resolve()): {"bind": "/app/model.onnx", "mode": "ro"}} if model else None
    container = (
        DockerEngine()
        .client()
        .containers.run(
            image_id,
            detach=True,
            network_mode="host",
            name=f"mlsd-bench-{port}",
            environment=env,
            volumes=volumes,
            cpu_shares=cpu_shares,
        )
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 120, lambda: None)
        yield port, container
    finally:
        container.remove(force=True)


@contextmanager
def server_process(model: Path, threads: int, batching: bool, workers: int) -> Iterator[tuple[int, object]]:
    """The same server package as a process on the host (no container cgroup, see the docstring)."""
    import subprocess

    from mlsd_assets.core.serving.runtime import free_port, stop_process, wait_healthy

    port = free_port()
    args = ["--model", str(model), "--port", str(port), "--log-level", "warning", "--intra-op-threads", str(threads)]
    args += ["--workers", str(workers)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlsd_assets.core.serving.server", *args, "--batching", "on" if batching else "off"]
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 120, lambda: None if proc.poll() is None else "exited")
        yield port, proc
    finally:
        stop_process(proc, timeout_s=10)


def floor_server(model: str, threads: int, one_thread_up_to: int, port: int, ready) -> None:  # noqa: ANN001 (an Event)
    """The floor under any HTTP server on this machine: a bare asyncio protocol on uvloop that reads a request's
    Content-Length, runs the same Predictor on the body's last image and answers its logits. No HTTP parsing beyond
    that, no JSON, no routing, no metrics: what is left is the kernel's loopback, the processes' wake-ups and ORT.
    It runs small batches on one ORT thread up to the server's own `one_thread_up_to`, not its own timing's."""
    import uvloop

    from mlsd_assets.core.serving.server.model import Predictor

    predictor = Predictor(Path(model), intra_op_threads=threads)
    predictor.one_thread_up_to = one_thread_up_to
    shape, size = predictor.contract.image_shape, predictor.contract.image_bytes

    class Floor(asyncio.Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self.transport, self.buffer = transport, b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            body_end = end + 4 + int(_LENGTH.search(self.buffer[: end + 2]).group(1))
            if len(self.buffer) < body_end:
                return
            image = np.frombuffer(self.buffer[body_end - size : body_end], np.uint8).reshape(1, *shape)
            self.buffer = self.buffer[body_end:]
            logits = predictor.logits(image).tobytes()
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(logits), logits))

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Floor, "127.0.0.1", port)
        ready.set()
        await server.serve_forever()

    uvloop.run(serve())


@contextmanager
def floor_process(model: Path, threads: int, one_thread_up_to: int) -> Iterator[int]:
    """`floor_server` in a fresh process (spawned: no state of this one)."""
    import multiprocessing

    from mlsd_assets.core.serving.runtime import free_port

    context = multiprocessing.get_context("spawn")
    port, ready = free_port(), context.Event()
    proc = context.Process(target=floor_server, args=(str(model), threads, one_thread_up_to, port, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(120):
            raise RuntimeError(f"the floor server did not start (exit code {proc.exitcode})")
        yield port
    finally:  # SIGKILL: a child started from a shell's background job inherits SIGTERM ignored, and would outlive us
        proc.kill()
        proc.join(10)


def server_one_thread_up_to(port: int, name: str) -> int:
    """The server's choice, from its v2 model metadata."""
    import httpx

    meta = httpx.get(f"http://127.0.0.1:{port}/v2/models/{name}", timeout=10).json()
    return int(meta["parameters"]["runtime"]["one_thread_up_to_images"])


def build_server_image(model_path: Path, work: Path, base_image: str, tag: str) -> tuple[str, int]:
    from mlsd_assets.core.serving.image import build_image, ensure_wheelhouse, host_pins, write_build_context
    from mlsd_assets.resources import DockerEngine

    wheelhouse = ensure_wheelhouse(work / "wheelhouses", host_pins(), log)
    context = write_build_context(work / "context", model_path.read_bytes(), wheelhouse)
    built = build_image(DockerEngine().client(), context, tag, base_image, logging.getLogger("quiet"))
    return built.image_id, built.size_bytes


def graph_name(path: Path) -> tuple[str, str]:
    """(registered model name, served variant) from the file's metadata."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    variant = meta.get("mlsd.serving.variant") or "fp32 (no variant recorded: the fp32 export)"
    return meta.get("mlsd.registered_model_name") or "model", variant


def measure_graph(
    args: argparse.Namespace, path: Path, image_id: str, images: np.ndarray, mount: bool, runtime: str
) -> dict:
    name, variant = graph_name(path)
    print(f"graph {path.name}: {variant}; server as a {runtime}")
    predictor = bare_ort(path, args.threads)
    singles = [infer_request(name, images[i : i + 1]) for i in range(len(images))]
    batches = [infer_request(name, images[lo : lo + args.batch]) for lo in range(0, len(images), args.batch)]
    row: dict = {"graph": variant.split(" ")[0], "runtime": runtime}
    for batching in (True, False):
        if runtime == "container":
            workers = {"MLSD_WORKERS": str(args.workers)}
            server = server_container(image_id, args.threads, batching, workers, model=path if mount else None)
        else:
            server = server_process(path, args.threads, batching, args.workers)
        with server as (port, _):
            if batching:
                # Bare ORT and the floor take the server's start-up choice of one ORT thread or all for small
                # batches: each process timing its own could decide differently (~0.5 ms apart for one image).
                predictor.one_thread_up_to = server_one_thread_up_to(port, name)
                with floor_process(path, args.threads, predictor.one_thread_up_to) as floor_port:
                    (server_s, floor_s), bare_s = paired_latency([port, floor_port], singles, predictor, images)
                row["bare_p50"], row["bare_p99"] = percentiles_ms(bare_s)
                row["p50"], row["p99"] = percentiles_ms(server_s)
                row["overhead"] = float(np.median(np.subtract(server_s, bare_s)) * 1000)
                row["floor"] = float(np.median(np.subtract(floor_s, bare_s)) * 1000)
                row["bare_batched"] = max(
                    bare_batched_rate(predictor, images, args.batch),
                    bare_side_by_side_rate(predictor, images, BatchingConfig.max_batch_size),
                )
                row["batched"] = asyncio.run(batched_rate(port, batches, len(images)))
                print(
                    f"  1 image: server p50 {row['p50']:.3f} ms p99 {row['p99']:.3f} ms; bare ORT p50 "
                    f"{row['bare_p50']:.3f} ms p99 {row['bare_p99']:.3f} ms; overhead {row['overhead']:+.3f} ms; "
                    f"the floor (a bare socket server, same ORT) {row['floor']:+.3f} ms; all three on one ORT thread"
                    f" up to {predictor.one_thread_up_to} images (the server's start-up choice)"
                )
                print(
                    f"  batch {args.batch}: server {row['batched']:,.0f} images/s, bare ORT {row['bare_batched']:,.0f} "
                    f"(the better of one call on all threads and one-thread calls side by side)"
                )
            rps, client_cpu = asyncio.run(concurrent_rate(port, singles, args.connections, args.duration))
            row["rps_on" if batching else "rps_off"] = rps
            print(
                f"  1 image per request, {args.connections} connections, batching {'on ' if batching else 'off'}: "
                f"{rps:,.0f} requests/s (client CPU {client_cpu * 1e6:.0f} us per request = "
                f"{client_cpu * rps:.0%} of one core)"
            )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, nargs="+", help="ONNX files with the mlsd.* contract (same model name)")
    source.add_argument("--untrained", metavar="ARCH", help="export ARCH (e.g. airbench) with random weights")
    parser.add_argument("--no-tta", action="store_true", help="with --untrained: the graph without flip-TTA")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=2000, help="test images to send")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each concurrent phase")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads, server and bare (0: all)")
    parser.add_argument("--workers", type=int, default=0, help="the server's batch workers (0: one per core)")
    parser.add_argument(
        "--runtime",
        nargs="+",
        choices=("container", "process"),
        default=["container"],
        help="where the server runs: its container (the deliverable), and/or a host process of the same package",
    )
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
    paths = []  # copies, readable by the container's user
    for i, src in enumerate(args.model or [None]):
        paths.append(args.work / f"model{i}.onnx")
        paths[-1].write_bytes(
            src.read_bytes() if src else untrained_model(args.untrained, False if args.no_tta else None)
        )
        paths[-1].chmod(0o644)
    print(f"CPU: {cpu_name()}; load average {os.getloadavg()[0]:.1f} at the start")
    print(
        f"{len(images)} real CIFAR-10 test images; models: "
        f"{', '.join(map(str, args.model)) if args.model else args.untrained + ' (untrained)'}"
        f"{' without flip-TTA' if args.no_tta else ''}; ORT intra-op threads: {args.threads or 'all cores'}"
    )
    image_id = ""
    if "container" in args.runtime:
        image_id, size = build_server_image(paths[0], args.work, args.base_image, args.tag)
        print(f"server container: {size / 1e6:.0f} MB image, host network")
    rows = [
        measure_graph(args, path, image_id, images, mount=i > 0, runtime=runtime)
        for runtime in args.runtime
        for i, path in enumerate(paths)
    ]
    print(f"load average {os.getloadavg()[0]:.1f} at the end\n")
    print(
        "| graph | server | bare ORT p50 / p99 ms | server p50 / p99 ms | overhead ms (floor) "
        "| req/s batching on / off | batched img/s (bare) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['graph']} | {r['runtime']} | {r['bare_p50']:.3f} / {r['bare_p99']:.3f} "
            f"| {r['p50']:.3f} / {r['p99']:.3f} "
            f"| {r['overhead']:+.3f} ({r['floor']:+.3f}) | {r['rps_on']:,.0f} / {r['rps_off']:,.0f} "
            f"| {r['batched']:,.0f} ({r['bare_batched']:,.0f}) |"
        )
    print("goals: overhead <= 0.15 ms, p50 <= 1 ms, >= 1,500 req/s, >= 3,000 images/s batched")


if __name__ == "__main__":
    main()
