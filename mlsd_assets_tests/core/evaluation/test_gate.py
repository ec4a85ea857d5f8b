"""The gate's statistics by hand: exact McNemar against the binomial, latency ratios, and each decision."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlsd_assets.core.evaluation.gate import Comparison, compare_predictions, decide, latency_ratio, mcnemar_worse_p


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),
        (3, 0, 1 / 8),  # three discordant images, all against the challenger: 0.5**3
        (0, 3, 1.0),
        (5, 1, 7 / 64),  # P(X >= 5 | n=6) = (6 + 1) / 64
        (10, 10, sum(math.comb(20, k) for k in range(10, 21)) / 2**20),
    ],
)
def test_mcnemar_exact_by_hand(b, c, expected):
    assert mcnemar_worse_p(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_matches_scipy_binomtest_on_large_counts():
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(60, 40), (200, 150), (1234, 1100), (30, 31)]:
        want = stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue
        assert mcnemar_worse_p(b, c) == pytest.approx(want, rel=1e-9)
    assert mcnemar_worse_p(5000, 4000) < 1e-20  # exact integers: no overflow, no premature zero


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match="b=-1"):
        mcnemar_worse_p(-1, 2)


def test_latency_ratio_median_spread_and_interval():
    rng = np.random.default_rng(0)
    champion = rng.uniform(0.004, 0.006, 2000)
    challenger = champion * 1.5 * rng.uniform(0.9, 1.1, 2000)
    ratio = latency_ratio(challenger, champion)
    assert ratio.pairs == 2000
    assert ratio.median == pytest.approx(1.5, abs=0.02)
    assert ratio.q1 < ratio.median < ratio.q3 and ratio.iqr == pytest.approx(0.15, abs=0.03)
    assert ratio.ci_low < ratio.median < ratio.ci_high and ratio.ci_high - ratio.ci_low < 0.02
    # A few huge stalls (a busy machine) barely move the median.
    stalled = challenger.copy()
    stalled[:20] *= 50
    assert latency_ratio(stalled, champion).median == pytest.approx(ratio.median, abs=0.01)


def test_latency_ratio_needs_pairs():
    with pytest.raises(ValueError, match="paired latencies"):
        latency_ratio(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="> 0"):
        latency_ratio(np.ones(2), np.zeros(2))


def comparison(champion_right: int, challenger_right: int, both: int, n: int, ratio: float) -> Comparison:
    """n images; `both` right for both, then `champion_right` only for the champion, then the challenger's."""
    labels = np.zeros(n, dtype=np.int64)
    champion = np.ones(n, dtype=np.int64)
    challenger = np.ones(n, dtype=np.int64)
    champion[:both] = challenger[:both] = 0
    champion[both : both + champion_right] = 0
    challenger[both + champion_right : both + champion_right + challenger_right] = 0
    seconds = np.full(n, 0.005)
    return compare_predictions(labels, champion, challenger, seconds, seconds * ratio, "3", "img")


def test_compare_predictions_counts_discordant_pairs():
    c = comparison(champion_right=12, challenger_right=4, both=80, n=100, ratio=1.1)
    assert (c.b, c.c) == (12, 4)
    assert c.champion_accuracy == pytest.approx(0.92) and c.challenger_accuracy == pytest.approx(0.84)
    assert c.p_worse == pytest.approx(mcnemar_worse_p(12, 4))
    assert c.ratio.median == pytest.approx(1.1)
    assert Comparison.from_dict(c.to_dict()) == c


def test_decide_first_model_is_promoted():
    decision = decide(None, 0.05, 1.25, "v1")
    assert decision.promote and "first champion" in decision.text


def test_decide_equal_models_promoted_with_the_figures_cited():
    decision = decide(comparison(3, 2, 90, 100, 1.02), 0.05, 1.25, "v4")
    assert decision.promote and decision.reasons == []
    for fragment in ("v4 promoted over v3", "ratio challenger/champion 1.020", "b=3", "c=2", "p=0.5"):
        assert fragment in decision.text


def test_decide_rejects_significantly_worse_accuracy():
    decision = decide(comparison(20, 5, 70, 100, 1.0), 0.05, 1.25, "v4")
    assert not decision.promote
    assert "v4 rejected, v3 stays champion" in decision.text
    assert "significantly less accurate: b=20 vs c=5" in decision.reasons[0]


def test_decide_small_insignificant_drop_is_promoted():
    # 6 vs 3 discordant: worse by 3 images, p = 0.25: not evidence at alpha 0.05.
    decision = decide(comparison(6, 3, 80, 100, 1.0), 0.05, 1.25, "v4")
    assert decision.promote, decision.text


def test_decide_rejects_slower_beyond_tolerance_and_alpha_is_configurable():
    slow = decide(comparison(0, 0, 100, 100, 1.3), 0.05, 1.25, "v4")
    assert not slow.promote and "median latency ratio 1.300 > 1.25" in slow.reasons[0]
    assert decide(comparison(0, 0, 100, 100, 1.3), 0.05, 1.5, "v4").promote
    borderline = comparison(6, 1, 80, 100, 1.0)  # p = 8/128 = 0.0625
    assert decide(borderline, 0.05, 1.25, "v4").promote
    assert not decide(borderline, 0.1, 1.25, "v4").promote
