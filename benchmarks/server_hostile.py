"""The server container under hostile clients while a normal client measures its latency (issue 11 item 6).

    .venv/bin/python benchmarks/server_hostile.py --untrained airbench
    .venv/bin/python benchmarks/server_hostile.py --model .mlsd/data/artifacts/cifar10_onnx/latest.onnx

The hostile mix, run in a second process for --duration seconds (each attacker reconnects and repeats):
100 uploads declaring 16 MiB - 1 that send all but the last byte and stall; 4 clients sending headers of up to
256 MiB; 2 clients posting JSON nested 1000 deep; 2 clients disconnecting mid-body; one client sending 1024-image
batches back to back. The normal client (this process, one keep-alive connection) sends 1-image infer requests and
/v2/health/ready probes, first alone (baseline), then during the attack. Prints p50/p99 of both phases, the
container's memory peak (docker stats) and what the attackers got back.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_latency import (  # noqa: E402
    DEFAULT_DATA,
    REPO,
    build_server_image,
    cpu_name,
    infer_request,
    percentiles_ms,
    server_container,
    test_images,
    untrained_model,
)

MiB = 1024 * 1024


async def _exchange(
    port: int, payload_parts: list[bytes], outcome: collections.Counter, stall_s: float = 0, close_early: bool = False
) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        outcome[f"connect failed: {type(exc).__name__}"] += 1
        await asyncio.sleep(0.1)
        return
    try:
        for part in payload_parts:
            writer.write(part)
            await writer.drain()
        if close_early:
            outcome["closed mid-body"] += 1
            return
        line = await asyncio.wait_for(reader.readline(), timeout=stall_s + 60)
        outcome[line[9:12].decode() or "closed"] += 1
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        outcome[f"{type(exc).__name__}"] += 1
    finally:
        writer.close()


async def _attack(port: int, name: str, duration: float, heavy: bytes, results: dict, mix: str) -> None:
    deadline = time.monotonic() + duration
    infer = f"/v2/models/{name}/infer"
    stalled_body = bytes(16 * MiB - 2)
    deep = ('{"inputs": ' + "[" * 1000 + "]" * 1000 + "}").encode()
    outcomes = {k: collections.Counter() for k in ("stalled", "headers", "deep_json", "disconnect", "heavy")}

    async def loop(kind: str, make) -> None:
        while time.monotonic() < deadline:
            await make(outcomes[kind])

    def stalled(out):
        head = f"POST {infer} HTTP/1.1\r\nHost: h\r\nContent-Length: {16 * MiB - 1}\r\n\r\n".encode()
        return _exchange(port, [head, stalled_body], out, stall_s=60)

    def headers(out):
        head = b"POST /v2 HTTP/1.1\r\nHost: h\r\nX-Big: "
        return _exchange(port, [head] + [b"a" * MiB] * 256, out)

    def deep_json(out):
        return _exchange(
            port,
            [
                f"POST {infer} HTTP/1.1\r\nHost: h\r\nContent-Length: {len(deep)}\r\nConnection: close\r\n\r\n".encode()
                + deep
            ],
            out,
        )

    def disconnect(out):
        head = f"POST {infer} HTTP/1.1\r\nHost: h\r\nContent-Length: {len(heavy)}\r\n\r\n".encode()
        return _exchange(port, [head, heavy[: len(heavy) // 2]], out, close_early=True)

    async def heavy_client() -> None:
        """Back to back on one connection; a refusal (503 while stalled uploads hold the budget) is retried."""
        from server_latency import roundtrip

        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                while time.monotonic() < deadline:
                    await roundtrip(reader, writer, heavy)
                    outcomes["heavy"]["200"] += 1
                writer.close()
            except (RuntimeError, OSError, asyncio.IncompleteReadError) as exc:
                outcomes["heavy"][str(exc)[:30]] += 1
                await asyncio.sleep(0.05)

    tasks = []
    if mix in ("all", "stalled"):
        tasks += [loop("stalled", stalled) for _ in range(100)]
    if mix in ("all", "headers"):
        tasks += [loop("headers", headers) for _ in range(4)]
    if mix in ("all", "deep_json"):
        tasks += [loop("deep_json", deep_json) for _ in range(2)]
    if mix in ("all", "disconnect"):
        tasks += [loop("disconnect", disconnect) for _ in range(2)]
    if mix in ("all", "heavy"):
        tasks.append(heavy_client())
    await asyncio.gather(*tasks, return_exceptions=True)
    results.update({k: dict(v) for k, v in outcomes.items()})


def attacker(port: int, name: str, duration: float, heavy: bytes, results: dict, mix: str) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_attack(port, name, duration, heavy, results, mix))


def _http(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    if head[9:12] != b"200":
        raise RuntimeError(head[:40])
    return body


def normal_client(port: int, requests: list[bytes], seconds: float) -> tuple[list[float], list[float], int]:
    """One keep-alive connection: infer and health probes alternately, for `seconds`."""
    health = b"GET /v2/health/ready HTTP/1.1\r\nHost: n\r\n\r\n"
    infer_s, health_s, errors, i = [], [], 0, 0
    deadline = time.monotonic() + seconds
    sock = socket.create_connection(("127.0.0.1", port))
    while time.monotonic() < deadline:
        for kind, req in (("infer", requests[i % len(requests)]), ("health", health)):
            t0 = time.perf_counter()
            try:
                _http(sock, req)
            except (OSError, RuntimeError):
                errors += 1
                sock.close()
                sock = socket.create_connection(("127.0.0.1", port))
                continue
            (infer_s if kind == "infer" else health_s).append(time.perf_counter() - t0)
        i += 1
    sock.close()
    return infer_s, health_s, errors


def memory_watch(container, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        stats = container.stats(stream=False).get("memory_stats", {})
        peak[0] = max(peak[0], int(stats.get("usage", 0)), int(stats.get("max_usage", 0)))
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path)
    source.add_argument("--untrained", metavar="ARCH")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the attack")
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of the normal client alone")
    parser.add_argument(
        "--mix",
        default="all",
        choices=("all", "stalled", "headers", "deep_json", "disconnect", "heavy"),
        help="all attackers at once (default), or one kind alone",
    )
    parser.add_argument("--base-image", default="mlsd/python-base:bookworm")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "server_hostile")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model_path = args.work / "model.onnx"
    model_path.write_bytes(args.model.read_bytes() if args.model else untrained_model(args.untrained))
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
    name = meta.get("mlsd.registered_model_name") or "model"
    images = test_images(args.data, 1024)
    image_id, _ = build_server_image(model_path, args.work, args.base_image, "mlsd/cifar10-server:hostile")
    singles = [infer_request(name, images[i : i + 1]) for i in range(256)]
    heavy = infer_request(name, images)
    print(
        f"CPU: {cpu_name()}; model {args.model or args.untrained + ' (untrained)'}; server defaults; "
        f"hostile mix: {args.mix}"
    )
    with server_container(image_id, 0, True) as (port, container):
        peak, stop = [0], threading.Event()
        watcher = threading.Thread(target=memory_watch, args=(container, stop, peak), daemon=True)
        watcher.start()
        base_infer, base_health, base_errors = normal_client(port, singles, args.baseline)
        idle_peak = peak[0]
        with multiprocessing.Manager() as manager:
            results = manager.dict()
            attack = multiprocessing.Process(
                target=attacker, args=(port, name, args.duration, heavy, results, args.mix)
            )
            attack.start()
            time.sleep(1.0)
            hostile_infer, hostile_health, hostile_errors = normal_client(port, singles, args.duration - 2)
            attack.join(timeout=args.duration + 90)
            outcomes = dict(results)
        time.sleep(3)
        after = int(container.stats(stream=False)["memory_stats"].get("usage", 0))
        stop.set()
        watcher.join()
        logs = container.logs().decode(errors="replace")
    for label, infer_s, health_s, errors in (
        ("alone", base_infer, base_health, base_errors),
        ("under the hostile mix", hostile_infer, hostile_health, hostile_errors),
    ):
        ip50, ip99 = percentiles_ms(infer_s) if infer_s else (float("nan"),) * 2
        hp50, hp99 = percentiles_ms(health_s) if health_s else (float("nan"),) * 2
        print(
            f"normal client {label}: {len(infer_s)} infer p50 {ip50:.2f} ms p99 {ip99:.2f} ms; "
            f"health p50 {hp50:.2f} ms p99 {hp99:.2f} ms; {errors} errors"
        )
    print(
        f"container memory: {idle_peak / MiB:.0f} MiB peak alone, {peak[0] / MiB:.0f} MiB peak overall, "
        f"{after / MiB:.0f} MiB 3 s after the attack"
    )
    for kind, counts in outcomes.items():
        print(f"  attacker {kind}: {counts}")
    print(f"server log: {logs.count('Traceback')} tracebacks, {len(logs.splitlines())} lines")


if __name__ == "__main__":
    main()
