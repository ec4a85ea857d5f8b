"""The promotion gate's statistics, on paired measurements of champion and challenger: no Dagster, no I/O.

Both servers answer the same images in one run, interleaved, so the comparison is paired: accuracy by
McNemar's exact test on the images where exactly one of them is right, latency as per-image ratios.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def mcnemar_worse_p(b: int, c: int) -> float:
    """One-sided exact McNemar p-value for "the challenger is worse".

    b: images the champion got right and the challenger wrong; c: the reverse. Under "equally good" each
    discordant image is a fair coin, so p = P(X >= b) for X ~ Binomial(b + c, 1/2), summed exactly.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(b, n + 1))
    return tail / 2**n  # exact integers, one rounding


@dataclass(frozen=True)
class LatencyRatio:
    """challenger / champion latency per image: median, quartiles and a bootstrap interval of the median."""

    median: float
    q1: float
    q3: float
    ci_low: float
    ci_high: float
    pairs: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def latency_ratio(
    challenger_s: np.ndarray, champion_s: np.ndarray, resamples: int = 2000, seed: int = 0
) -> LatencyRatio:
    """Per-image ratios of two interleaved passes; a median, so a few stalls on a busy machine do not move it."""
    challenger_s, champion_s = np.asarray(challenger_s, float), np.asarray(champion_s, float)
    if challenger_s.shape != champion_s.shape or challenger_s.size == 0:
        raise ValueError(
            f"need paired latencies of equal, non-zero length, got {challenger_s.size} and {champion_s.size}"
        )
    if (champion_s <= 0).any():
        raise ValueError("champion latencies must be > 0")
    ratios = challenger_s / champion_s
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(ratios, size=(resamples, ratios.size), replace=True), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return LatencyRatio(float(median), float(q1), float(q3), float(low), float(high), int(ratios.size))


@dataclass(frozen=True)
class Comparison:
    """What evaluation_report measured with both servers up; the promotion decision reads only this."""

    champion_version: str
    champion_image: str
    images: int
    champion_accuracy: float
    challenger_accuracy: float
    b: int  # champion right, challenger wrong
    c: int  # champion wrong, challenger right
    p_worse: float
    ratio: LatencyRatio
    champion_p50_ms: float
    challenger_p50_ms: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Comparison:
        return cls(**{**data, "ratio": LatencyRatio(**data["ratio"])})

    def summary(self) -> str:
        r = self.ratio
        return (
            f"latency ratio challenger/champion {r.median:.3f} (IQR {r.q1:.3f}-{r.q3:.3f}, 95% CI of the median "
            f"{r.ci_low:.3f}-{r.ci_high:.3f}, {r.pairs} interleaved pairs); accuracy {self.challenger_accuracy:.4f} "
            f"vs {self.champion_accuracy:.4f} on the same {self.images} images, disagreements b={self.b} "
            f"(only champion right) c={self.c} (only challenger right), McNemar one-sided p={self.p_worse:.3g}"
        )


def compare_predictions(
    labels: np.ndarray,
    champion_predictions: np.ndarray,
    challenger_predictions: np.ndarray,
    champion_seconds: np.ndarray,
    challenger_seconds: np.ndarray,
    champion_version: str,
    champion_image: str,
) -> Comparison:
    """Discordant counts, McNemar's p and the latency ratio of one side-by-side pass."""
    labels = np.asarray(labels)
    champion_right = np.asarray(champion_predictions) == labels
    challenger_right = np.asarray(challenger_predictions) == labels
    b = int((champion_right & ~challenger_right).sum())
    c = int((~champion_right & challenger_right).sum())
    return Comparison(
        champion_version=champion_version,
        champion_image=champion_image,
        images=int(labels.size),
        champion_accuracy=float(champion_right.mean()),
        challenger_accuracy=float(challenger_right.mean()),
        b=b,
        c=c,
        p_worse=mcnemar_worse_p(b, c),
        ratio=latency_ratio(challenger_seconds, champion_seconds),
        champion_p50_ms=float(np.median(champion_seconds) * 1000),
        challenger_p50_ms=float(np.median(challenger_seconds) * 1000),
    )


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]
    text: str


def decide(comparison: Comparison | None, alpha: float, max_latency_ratio: float, challenger: str) -> Decision:
    """Promote unless significantly less accurate (p < alpha) or slower than the tolerated median ratio."""
    if comparison is None:
        return Decision(True, [], f"{challenger} promoted as the first champion (nothing to compare with)")
    reasons = []
    if comparison.p_worse < alpha:
        reasons.append(
            f"significantly less accurate: b={comparison.b} vs c={comparison.c}, p={comparison.p_worse:.3g} < "
            f"alpha={alpha}"
        )
    if comparison.ratio.median > max_latency_ratio:
        reasons.append(
            f"slower beyond tolerance: median latency ratio {comparison.ratio.median:.3f} > {max_latency_ratio}"
        )
    champion = f"v{comparison.champion_version}"
    if reasons:
        text = f"{challenger} rejected, {champion} stays champion: " + "; ".join(reasons)
    else:
        text = f"{challenger} promoted over {champion}"
    return Decision(not reasons, reasons, f"{text}. {comparison.summary()}")
