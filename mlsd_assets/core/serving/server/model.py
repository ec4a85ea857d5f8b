"""The ONNX model and the input contract embedded in it: the server learns everything from the model file."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

_REQUIRED = ("mlsd.classes", "mlsd.input_name", "mlsd.output_name", "mlsd.input_layout", "mlsd.input_dtype")


class ModelContractError(ValueError):
    """The model file does not carry the contract the server needs (raised at start-up, never per request)."""


@dataclass(frozen=True)
class ModelContract:
    """Names, layout and classes from the model's `mlsd.*` metadata, cross-checked with the graph itself."""

    input_name: str
    output_name: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    metadata: dict[str, str]

    @property
    def image_bytes(self) -> int:
        return int(np.prod(self.image_shape))

    @property
    def version(self) -> str:
        return self.metadata.get("mlsd.registered_model_version", "")

    @property
    def name(self) -> str:
        """The registered model name: the `{name}` of the v2 routes (every exported version carries it)."""
        return self.metadata.get("mlsd.registered_model_name") or "model"

    @classmethod
    def from_session(cls, path: Path, session: ort.InferenceSession) -> ModelContract:
        meta = dict(session.get_modelmeta().custom_metadata_map)
        missing = [k for k in _REQUIRED if k not in meta]
        if missing:
            raise ModelContractError(f"{path}: metadata_props lacks {missing}")
        if meta["mlsd.input_layout"] != "NHWC" or meta["mlsd.input_dtype"] != "uint8":
            raise ModelContractError(
                f"{path}: server expects uint8 NHWC input, model declares "
                f"{meta['mlsd.input_dtype']} {meta['mlsd.input_layout']}"
            )
        inputs = {i.name: i for i in session.get_inputs()}
        node = inputs.get(meta["mlsd.input_name"])
        if node is None or node.type != "tensor(uint8)":
            raise ModelContractError(f"{path}: graph input {meta['mlsd.input_name']!r} missing or not uint8")
        dims = node.shape[1:]
        if len(node.shape) != 4 or not all(isinstance(d, int) and d > 0 for d in dims):
            raise ModelContractError(f"{path}: input shape must be [batch, H, W, C], got {node.shape}")
        if meta["mlsd.output_name"] not in {o.name for o in session.get_outputs()}:
            raise ModelContractError(f"{path}: graph output {meta['mlsd.output_name']!r} missing")
        try:
            classes = tuple(str(c) for c in json.loads(meta["mlsd.classes"]))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ModelContractError(f"{path}: mlsd.classes is not a JSON list: {exc}") from exc
        return cls(meta["mlsd.input_name"], meta["mlsd.output_name"], classes, tuple(dims), meta)

    def describe(self) -> dict[str, Any]:
        """The mlsd contract beside the v2 model metadata: what a client sends and what the numbers mean."""
        m = self.metadata
        return {
            "model_name": m.get("mlsd.registered_model_name", ""),
            "model_version": self.version,
            "mlflow_run_id": m.get("mlsd.mlflow_run_id", ""),
            "architecture": m.get("mlsd.architecture", ""),
            "dataset_hash": m.get("mlsd.dataset_hash", ""),
            "opset": m.get("mlsd.opset", ""),
            "classes": list(self.classes),
            "input": {
                "name": self.input_name,
                "dtype": "uint8",
                "layout": "NHWC",
                "shape": [-1, *self.image_shape],
                "mean": _json_or_raw(m.get("mlsd.mean")),
                "std": _json_or_raw(m.get("mlsd.std")),
                "normalisation": "inside the graph: send raw 0..255 pixels",
            },
            "output": {"name": self.output_name, "dtype": "float32", "shape": [-1, len(self.classes)]},
        }


def _json_or_raw(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def inference_session(
    model: bytes | str | Path, intra_op_threads: int = 0, spinning: bool = False, save_optimized: Path | None = None
) -> ort.InferenceSession:
    """The one way the project opens an ONNX model, so what is measured anywhere is what the server runs: CPU,
    sequential graph, `intra_op_threads` (0: all cores), no busy-spinning unless asked, every graph optimization.
    `save_optimized` writes ORT's optimized graph there instead, at EXTENDED level: ALL adds NCHWc layout
    transforms sized to this CPU's vector width, which would tie the saved file to this hardware."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if save_optimized is not None:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(save_optimized)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


class Predictor:
    """The model in ORT sessions (`inference_session`): `logits` on `intra_op_threads` (a request alone, or
    every batch when the batcher has one worker), and with `one_thread` a second session for
    `one_thread_logits` (the batcher's workers, each running a batch of its own; ORT sessions take concurrent
    calls). A server with one worker never calls the latter, so it does not open that session.

    Small batches of a small graph can lose more to waking ORT's other threads than they gain from them (on an
    Ice Lake, int8 without flip-TTA: 1 image 0.47 ms on one thread, 0.52 on two; fp32 with it: 1.66 against
    1.36), so at start-up the two sessions are timed on this CPU and graph, on batches of up to `largest_batch`
    images (the batcher's `max_batch_size`: `logits` is never called on more), and `logits` sends batches of up
    to `one_thread_up_to` images to the one-thread session (`confirmed_crossover`)."""

    confirm_after_s = 0.5  # a choice of one thread is timed again this much later (`confirmed_crossover`)

    def __init__(
        self,
        model_path: Path,
        intra_op_threads: int = 0,
        spinning: bool = False,
        one_thread: bool = True,
        largest_batch: int = 16,
    ) -> None:
        self.session = inference_session(model_path, intra_op_threads, spinning)
        self.one_thread = inference_session(model_path, 1) if one_thread else None
        self.contract = ModelContract.from_session(model_path, self.session)
        self._outputs = [self.contract.output_name]
        self.one_thread_up_to = 0
        # Warm up before /v2/health/ready says ok, so the first client does not pay for lazy initialisation.
        self.logits(np.zeros((1, *self.contract.image_shape), dtype=np.uint8))
        if self.one_thread is not None:
            self.one_thread_logits(np.zeros((1, *self.contract.image_shape), dtype=np.uint8))
            threads = intra_op_threads or len(os.sched_getaffinity(0))
            if threads > 1:
                self.one_thread_up_to = confirmed_crossover(self._time_sessions, largest_batch, self.confirm_after_s)

    def logits(self, images: np.ndarray) -> np.ndarray:
        session = self.one_thread if len(images) <= self.one_thread_up_to else self.session
        return session.run(self._outputs, {self.contract.input_name: images})[0]  # type: ignore[union-attr]

    def one_thread_logits(self, images: np.ndarray) -> np.ndarray:
        if self.one_thread is None:
            raise RuntimeError("this Predictor was opened without its one-thread session (one_thread=False)")
        return self.one_thread.run(self._outputs, {self.contract.input_name: images})[0]

    def _time_sessions(self, images: int, calls: int = 15, blocks: int = 5) -> tuple[float, float]:
        """Median seconds of one call on `images` images: (all intra-op threads, one thread). The sessions are
        called in turns, in `blocks` blocks of `calls` calls each; each session's figure is the median of its
        block medians, so a stall of the machine that spans a block (one decision in twelve flipped with a
        single block of 15 calls, and so did one of 45) moves one block, not the decision."""
        feed = {self.contract.input_name: np.zeros((images, *self.contract.image_shape), dtype=np.uint8)}
        medians: tuple[list[float], list[float]] = ([], [])
        for _ in range(blocks):
            seconds: tuple[list[float], list[float]] = ([], [])
            for i in range(calls + 2):  # the first calls of a block warm it up, in both orders
                for which in (0, 1) if i % 2 else (1, 0):
                    start = time.perf_counter()
                    (self.session, self.one_thread)[which].run(self._outputs, feed)  # type: ignore[union-attr]
                    if i >= 2:
                        seconds[which].append(time.perf_counter() - start)
            for which in (0, 1):
                medians[which].append(statistics.median(seconds[which]))
        return statistics.median(medians[0]), statistics.median(medians[1])


def confirmed_crossover(
    time_sessions: Callable[[int], tuple[float, float]],
    max_images: int,
    confirm_after_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """`one_thread_crossover`, and when it says one thread, the same again `confirm_after_s` later: one thread
    keeps only the sizes it won both times. On a 2-core VM all threads ran as slowly as one for the whole of a
    timing (~0.2 s) in about one fresh process of six to ten, and such a server answered single images ~0.4 ms
    slower for its whole life; timed again 0.5 s later, two of three such choices were overturned (README)."""
    first = one_thread_crossover(time_sessions, max_images)
    if not first or confirm_after_s <= 0:
        return first
    sleep(confirm_after_s)
    return min(first, one_thread_crossover(time_sessions, max_images))


def one_thread_crossover(
    time_sessions: Callable[[int], tuple[float, float]], max_images: int = 16, margin: float = 0.05
) -> int:
    """The largest of 1, 2, 4, ... `max_images` images up to which one thread was faster than all of them by
    `margin` at every size timed (`time_sessions(n)` -> (all threads s, one thread s)); 0 when it is not for
    one image. Within the margin the timings are noise (two start-ups of one server can disagree there)."""
    faster_up_to, images = 0, 1
    while images <= max_images:
        all_threads, one = time_sessions(images)
        if one > all_threads * (1 - margin):
            break
        faster_up_to, images = images, images * 2
    return faster_up_to
