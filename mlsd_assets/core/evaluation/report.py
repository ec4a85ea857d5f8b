"""The evaluation report of a running server: figures, how they were measured, and where the files are.

Light (numpy, json): the class is an annotation in the code location; matplotlib is imported only to draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlsd_assets.core.platform.atomic import JsonFile, atomic_path


def classification_metrics(
    labels: np.ndarray, predictions: np.ndarray, classes: list[str]
) -> tuple[float, dict[str, dict[str, float]], list[list[int]]]:
    """Accuracy, per-class precision/recall/F1/support, confusion matrix (rows: true, columns: predicted)."""
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    tp = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(k), where=both > 0)
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, actual, strict=True)
    }
    return float(tp.sum() / len(labels)), per_class, confusion.tolist()


def latency_summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    figures = dict(zip(("p50", "p95", "p99"), np.percentile(ms, [50, 95, 99]), strict=True))
    return {k: float(v) for k, v in (figures | {"mean": ms.mean(), "max": ms.max()}).items()}


def draw_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), v in np.ndenumerate(matrix):
        colour = "white" if v > matrix.max() / 2 else "black"
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color=colour)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


@dataclass(frozen=True)
class EvaluationReport(JsonFile):
    """What the gate compares and people read; `runtime` says whether a real container was measured."""

    model_name: str
    model_version: str
    mlflow_run_id: str
    runtime: str
    server: str
    image_tag: str
    image_id: str
    image_size_bytes: int
    test_images: int
    accuracy: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    latency_ms: dict[str, float]
    single_requests: int
    batch_size: int
    batched_images_per_s: float
    server_metrics: dict[str, float]
    created_at: str
    files: dict[str, str] = field(default_factory=dict)
    served_variant: str = "unrecorded"  # which graph the image serves (cifar10_onnx's measured choice)
    # Side by side with the champion (mlsd_assets.core.evaluation.gate.Comparison as a dict); None without one.
    comparison: dict[str, Any] | None = None

    @classmethod
    def fields_from(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Reports written before the always-constant `errors` and `parity_*` fields went still load."""
        return {k: v for k, v in data.items() if k not in ("errors", "parity_images", "parity_mismatches")}

    def markdown(self) -> str:
        where = (
            f"Docker container from image `{self.image_tag}` (`{self.image_id[:19]}`, "
            f"{self.image_size_bytes / 1e6:.1f} MB)"
            if self.runtime == "container"
            else f"**local process, not the Docker image** ({self.server}); the image `{self.image_tag}` "
            "was not measured"
        )
        lat = self.latency_ms
        lines = [
            f"# Evaluation of {self.model_name} v{self.model_version}",
            "",
            f"Server: {where}. MLflow run `{self.mlflow_run_id}`. {self.created_at}.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| test images | {self.test_images} |",
            f"| served graph variant | {self.served_variant} |",
            f"| accuracy | {self.accuracy:.4f} |",
            f"| latency p50 / p95 / p99 (1 image, ms) | {lat['p50']:.3f} / {lat['p95']:.3f} / {lat['p99']:.3f} |",
            f"| single-image requests | {self.single_requests} |",
            f"| batched throughput (batch {self.batch_size}) | {self.batched_images_per_s:,.0f} images/s |",
            f"| server == offline ONNX predictions | all {self.test_images} (any error or difference fails it) |",
            "",
            *self._comparison_lines(),
            "| class | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
        ]
        for name, m in self.per_class.items():
            lines.append(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {int(m['support'])} |")
        return "\n".join(lines) + "\n"

    def _comparison_lines(self) -> list[str]:
        c = self.comparison
        if not c:
            return ["No champion to compare with: this is the first model (or the comparison was turned off).", ""]
        r = c["ratio"]
        return [
            f"## Side by side with champion v{c['champion_version']} (`{c['champion_image']}`)",
            "",
            "Same images, same run, requests interleaved in random order per image.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| latency ratio challenger / champion (median per image) | {r['median']:.3f} |",
            f"| spread: IQR of the ratios / 95% bootstrap CI of the median | {r['q1']:.3f}-{r['q3']:.3f} / "
            f"{r['ci_low']:.3f}-{r['ci_high']:.3f} |",
            f"| p50 latency challenger / champion (ms) | {c['challenger_p50_ms']:.3f} / {c['champion_p50_ms']:.3f} |",
            f"| accuracy challenger / champion, same {c['images']} images | {c['challenger_accuracy']:.4f} / "
            f"{c['champion_accuracy']:.4f} |",
            f"| disagreements: b (only champion right) / c (only challenger right) | {c['b']} / {c['c']} |",
            f"| McNemar exact one-sided p (challenger worse) | {c['p_worse']:.3g} |",
            "",
        ]
