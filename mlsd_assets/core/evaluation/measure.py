"""Measure a running server against offline ONNX predictions: parity on every image, accuracy, latency."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from mlsd_assets.core.evaluation.client import Pass, ServerClient, batched_pass, single_image_pass


class EvaluationError(RuntimeError):
    """The server could not be measured honestly (errors, or predictions differing from offline ONNX)."""


def offline_predictions(model_bytes: bytes, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The same ONNX file run in-process: the reference the server must reproduce exactly."""
    from mlsd_assets.core.serving.server.model import inference_session

    session = inference_session(model_bytes)
    name, out = session.get_inputs()[0].name, session.get_outputs()[0].name
    starts = range(0, len(images), batch_size)
    chunks = [session.run([out], {name: images[i : i + batch_size]})[0] for i in starts]
    return np.concatenate(chunks).argmax(axis=1)


@dataclass(frozen=True)
class Measurements:
    predictions: np.ndarray
    single_seconds: list[float]
    single_requests: int
    batched_images_per_s: float
    server_metrics: dict[str, float]
    # Set when a champion answered the same single-image requests, interleaved with the challenger's.
    champion_predictions: np.ndarray | None = None
    champion_seconds: list[float] | None = None


def server_counters(metrics_text: str) -> dict[str, float]:
    """Infer-request totals from the server's own /metrics, to cross-check what the client saw."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"requests": 0.0, "errors_4xx": 0.0, "errors_5xx": 0.0, "images": 0.0}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "mlsd_requests_total" and sample.labels["route"] == "/v2/models/{name}/infer":
                totals["requests"] += sample.value
                status = sample.labels["status"]
                if status.startswith("4"):
                    totals["errors_4xx"] += sample.value
                elif status.startswith("5"):
                    totals["errors_5xx"] += sample.value
            elif sample.name == "mlsd_inferred_images_total":
                totals["images"] = sample.value
    return totals


def interleaved_single_pass(
    challenger: ServerClient, champion: ServerClient, images: np.ndarray, seed: int = 0
) -> tuple[Pass, Pass]:
    """Each image to both servers back to back, in a random order per image: whatever load the machine
    has lands on both alike, so the per-image latency ratio is measured under the same conditions."""
    n = len(images)
    passes = (Pass(np.full(n, -1, dtype=np.int64)), Pass(np.full(n, -1, dtype=np.int64)))
    challenger_first = np.random.default_rng(seed).random(n) < 0.5
    start = time.perf_counter()
    for i in range(n):
        order = ((challenger, passes[0]), (champion, passes[1]))
        for client, result in order if challenger_first[i] else order[::-1]:
            one = single_image_pass(client, images[i : i + 1])
            result.predictions[i] = one.predictions[0]
            result.seconds.extend(one.seconds)
            result.errors.extend(f"image {i}: {e}" for e in one.errors)
    for result in passes:
        result.wall_seconds = time.perf_counter() - start
    return passes


def measure_server(
    base_url: str,
    images: np.ndarray,
    expected: np.ndarray,
    batch_size: int,
    single_requests: int,
    log: logging.Logger,
    champion_url: str | None = None,
    seed: int = 0,
) -> Measurements:
    """Every image batched (throughput, parity) and `single_requests` images one by one (latency, parity),
    interleaved with the same requests to the champion at `champion_url` when there is one.
    Raises EvaluationError on any failed request or any prediction that differs from offline ONNX."""
    client = ServerClient(base_url)
    champion = ServerClient(champion_url) if champion_url else None
    try:
        batched = batched_pass(client, images, batch_size)
        if champion is None:
            singles, champion_singles = single_image_pass(client, images[:single_requests]), None
        else:
            singles, champion_singles = interleaved_single_pass(client, champion, images[:single_requests], seed)
        metrics = server_counters(client.get("/metrics").decode())
    finally:
        client.close()
        if champion is not None:
            champion.close()
    errors = batched.errors + singles.errors + (champion_singles.errors if champion_singles else [])
    if errors:
        where = base_url + (f" (and the champion at {champion_url})" if champion_url else "")
        raise EvaluationError(f"{len(errors)} requests to {where} failed; first: {errors[:3]}")
    for what, got, want in (
        ("batched", batched.predictions, expected),
        ("single-image", singles.predictions, expected[:single_requests]),
    ):
        wrong = np.flatnonzero(got != want)
        if wrong.size:
            raise EvaluationError(
                f"{what} server predictions differ from offline ONNX on {wrong.size}/{len(want)} images "
                f"(first at index {int(wrong[0])}: server {int(got[wrong[0]])}, "
                f"offline {int(want[wrong[0]])})"
            )
    if metrics["errors_5xx"]:
        raise EvaluationError(f"server counted {metrics['errors_5xx']:.0f} 5xx responses during evaluation")
    throughput = len(images) / batched.wall_seconds
    log.info(
        f"{len(images)} images batched at {throughput:,.0f}/s; {single_requests} single requests"
        + (f", interleaved with the champion at {champion_url}" if champion_url else "")
    )
    return Measurements(
        batched.predictions,
        singles.seconds,
        single_requests,
        throughput,
        metrics,
        champion_singles.predictions if champion_singles else None,
        champion_singles.seconds if champion_singles else None,
    )
