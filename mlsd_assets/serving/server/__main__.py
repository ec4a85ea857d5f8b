"""`python -m mlsd_server --model model.onnx` in the image; `-m mlsd_assets.serving.server` in a checkout."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from .app import create_app
from .inputs import Limits
from .model import Predictor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mlsd_server", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="ONNX model with mlsd.* metadata")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--intra-op-threads", type=int, default=1, help="ORT threads per call (0: all cores)")
    parser.add_argument("--spinning", action="store_true", help="let ORT threads busy-wait (more CPU)")
    parser.add_argument("--max-batch", type=int, default=Limits.max_batch)
    parser.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    predictor = Predictor(args.model, intra_op_threads=args.intra_op_threads, spinning=args.spinning)
    app = create_app(predictor, Limits(max_batch=args.max_batch, max_body_bytes=args.max_body_bytes))
    logging.getLogger("mlsd_server").info(
        "serving %s version %r on %s:%d", args.model, predictor.contract.version, args.host, args.port
    )
    uvicorn.run(
        app, host=args.host, port=args.port, access_log=False, log_level=args.log_level, server_header=False
    )


if __name__ == "__main__":
    main()
