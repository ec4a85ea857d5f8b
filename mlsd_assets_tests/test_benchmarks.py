"""The training benchmark still runs end to end: on a tiny generated CIFAR-10, with the figures it prints parsed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from mlsd_assets_tests.cifar_files import write_cifar_python_tarball

ROOT = Path(__file__).resolve().parents[1]


def test_time_to_accuracy_prints_the_ratio_and_the_budgeted_run(tmp_path: Path) -> None:
    """The reference, the preset and the preset under a budget of half the reference's time, all on one line each."""
    data = write_cifar_python_tarball(tmp_path, per_batch=40)
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "train_time_to_accuracy.py"),
        *("--data", str(data), "--cache", str(tmp_path / "cache")),
        *("--epochs", "2", "--threads", "1", "--budget-fractions", "0.5"),
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "data: 200 train / 40 test" in out.stdout
    results = re.findall(r"^RESULT preset=(\w+) .* epochs=(\d+) .*final_test_acc\([^)]*\)=([\d.]+)", out.stdout, re.M)
    assert [(preset, epochs) for preset, epochs, _ in results] == [("sgd", "2"), ("fast", "2"), ("fast", "1")]
    ratio = re.search(r"^RATIO preset=fast reference=sgd .*reference_wall_s=([\d.]+) .* ratio=", out.stdout, re.M)
    assert ratio is not None, out.stdout[-3000:]
    budget = re.search(
        r"^BUDGET preset=fast fraction=0\.50 budget_s=([\d.]+) wall_s=([\d.]+) .*train_ratio=[\d.]+"
        r" final_test_acc=([\d.]+)"
        r" reached_reference=(yes|no) .*cpu=",
        out.stdout,
        re.M,
    )
    assert budget is not None, out.stdout[-3000:]
    assert abs(float(budget[1]) - 0.5 * float(ratio[1])) <= 0.1
    assert float(budget[3]) == float(results[-1][2])
