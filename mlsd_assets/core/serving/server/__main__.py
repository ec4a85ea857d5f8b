"""`python -m mlsd_server --model model.onnx` in the image; `-m mlsd_assets.core.serving.server` in a checkout."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from .app import create_app
from .batching import BatchingConfig, batch_workers
from .inputs import Limits
from .model import Predictor
from .protocol import HEAD_TIMEOUT_S, MAX_HEAD_BYTES, InferProtocol


def _flag(value: str) -> bool:
    if value.lower() not in ("1", "0", "true", "false", "on", "off"):
        raise argparse.ArgumentTypeError(f"expected on/off, got {value!r}")
    return value.lower() in ("1", "true", "on")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mlsd_server", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="ONNX model with mlsd.* metadata")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--intra-op-threads", type=int, default=0, help="ORT threads per call (0: all cores)")
    parser.add_argument("--spinning", action="store_true", help="let ORT threads busy-wait (more CPU)")
    parser.add_argument("--batching", type=_flag, default=True, help="coalesce concurrent requests (on/off)")
    numbers = (  # (flag, type, default, help)
        ("--max-batch-size", int, BatchingConfig.max_batch_size, "images per ORT call; bigger requests run in chunks"),
        ("--max-queue-delay-us", int, BatchingConfig.max_queue_delay_us, "wait of a batch's first request (0: none)"),
        ("--workers", int, BatchingConfig.workers, "batches run at once, one thread each (0: one per core)"),
        ("--max-request-images", int, Limits.max_batch, "images per request"),
        ("--max-body-bytes", int, Limits.max_body_bytes, "body bytes per request"),
        ("--max-inflight-bytes", int, Limits.max_inflight_bytes, "bodies held by all requests together; beyond: 503"),
        ("--body-timeout-s", float, Limits.body_timeout_s, "the whole body must arrive within this"),
        ("--max-head-bytes", int, MAX_HEAD_BYTES, "request line + headers; beyond: 431"),
        ("--head-timeout-s", float, HEAD_TIMEOUT_S, "the request head must arrive within this"),
        ("--max-connections", int, 512, "open connections (and in-flight requests) before new requests get 503"),
    )
    for flag, kind, default, help_text in numbers:
        parser.add_argument(flag, type=kind, default=default, help=help_text)
    parser.add_argument("--keep-alive-s", type=int, default=5, help="idle keep-alive connections close after")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    limits = Limits(
        max_batch=args.max_request_images,
        max_body_bytes=args.max_body_bytes,
        max_inflight_bytes=args.max_inflight_bytes,
        body_timeout_s=args.body_timeout_s,
    )
    batching = BatchingConfig(args.batching, args.max_batch_size, args.max_queue_delay_us, args.workers)
    one_thread = batch_workers(batching) > 1
    predictor = Predictor(args.model, args.intra_op_threads, args.spinning, one_thread, batching.max_batch_size)
    app = create_app(predictor, limits, batching)
    protocol = type(
        "Protocol",
        (InferProtocol,),
        {"max_head_bytes": args.max_head_bytes, "head_timeout_s": args.head_timeout_s},
    )
    logging.getLogger("mlsd_server").info(
        "serving %s (%s version %r) on %s:%d, %s; one ORT thread for up to %d images (0: none; timed faster)",
        args.model,
        predictor.contract.name,
        predictor.contract.version,
        args.host,
        args.port,
        batching,
        predictor.one_thread_up_to,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level=args.log_level,
        server_header=False,
        http=protocol,
        loop="uvloop",
        limit_concurrency=args.max_connections,
        timeout_keep_alive=args.keep_alive_s,
        backlog=2048,
        proxy_headers=False,  # no proxy sets X-Forwarded-* for us, and no client address is used: skip the layer
    )


if __name__ == "__main__":
    main()
