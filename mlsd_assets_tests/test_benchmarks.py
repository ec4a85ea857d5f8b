"""The benchmarks behind the issues' figures still run end to end: on tiny generated data, their output parsed."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from mlsd_assets_tests.cifar_files import tar_gz, write_cifar_python_tarball, write_image_folder_tree

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, ignore_sigterm: bool = False) -> str:
    """The script's stdout; a non-zero exit fails the test with the end of its stderr. `ignore_sigterm`: started
    as from a shell's background job, SIGTERM ignored (and so in every child that does not reset it)."""
    command = [sys.executable, str(ROOT / "benchmarks" / script), *args]
    ignore = (lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)) if ignore_sigterm else None
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False, preexec_fn=ignore)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_time_to_accuracy_prints_the_ratio_and_the_budgeted_run(tmp_path: Path) -> None:
    """The reference, the preset and the preset under a budget of half the reference's time, all on one line each."""
    data = write_cifar_python_tarball(tmp_path, per_batch=40)
    stdout = run_benchmark(
        "train_time_to_accuracy.py",
        *("--data", str(data), "--cache", str(tmp_path / "cache")),
        *("--epochs", "2", "--threads", "1", "--budget-fractions", "0.5"),
    )
    assert "data: 200 train / 40 test" in stdout
    results = re.findall(r"^RESULT preset=(\w+) .* epochs=(\d+) .*final_test_acc\([^)]*\)=([\d.]+)", stdout, re.M)
    assert [(preset, epochs) for preset, epochs, _ in results[:2]] == [("sgd", "2"), ("fast", "2")]
    # the budgeted run's RESULT gives the epochs it trained (after RATIO: its own epoch lines), not its first plan
    budget_epochs = re.findall(r"^fast epoch ", stdout.split("\nRATIO ")[1], re.M)
    assert results[2][0] == "fast" and int(results[2][1]) == len(budget_epochs) >= 1
    ratio = re.search(r"^RATIO preset=fast reference=sgd .*reference_wall_s=([\d.]+) .* ratio=", stdout, re.M)
    assert ratio is not None, stdout[-3000:]
    budget = re.search(
        r"^BUDGET preset=fast fraction=0\.50 budget_s=([\d.]+) wall_s=([\d.]+) .*train_ratio=[\d.]+"
        r" final_test_acc=([\d.]+)"
        r" reached_reference=(yes|no) .*cpu=",
        stdout,
        re.M,
    )
    assert budget is not None, stdout[-3000:]
    assert abs(float(budget[1]) - 0.5 * float(ratio[1])) <= 0.1
    assert float(budget[3]) == float(results[-1][2])


def test_train_throughput_prints_each_variant_beside_the_first(tmp_path: Path) -> None:
    data = write_cifar_python_tarball(tmp_path, per_batch=40)
    stdout = run_benchmark(
        "train_throughput.py",
        *("--data", str(data), "--cache", str(tmp_path / "cache"), "--rounds", "2"),
        *("--variant", "auto:", "--variant", "fp32-1thread:precision=fp32,threads=1"),
    )
    order = re.findall(r"^round (\d) (\S+) ", stdout, re.M)
    assert order == [("1", "auto"), ("1", "fp32-1thread"), ("2", "fp32-1thread"), ("2", "auto")], stdout  # rotated
    rows = re.findall(r"^(auto|fp32-1thread) +(bf16|fp32) +median +(\d+) img/s +ratio +([\d.]+)$", stdout, re.M)
    assert [name for name, *_ in rows] == ["auto", "fp32-1thread"], stdout
    assert rows[0][3] == "1.00" and rows[1][1] == "fp32", stdout
    assert all(int(speed) > 0 for _, _, speed, _ in rows), stdout
    assert re.search(r"^cpu='.*' flags='.*' nproc=\d+", stdout, re.M), stdout


def test_server_latency_prints_the_server_beside_bare_ort(tmp_path: Path) -> None:
    """The issue 16 table, from the server as a host process on an untrained net: every figure present, the
    floor (a bare socket server on the same ORT) beside the overhead. Started with SIGTERM ignored, as from a
    shell's background job: it still ends (its floor child, stopped with SIGTERM, once hung it at exit there)."""
    tree = write_image_folder_tree(tmp_path / "cifar10", n_train=10, n_test=48, fmt="jpg")
    stdout = run_benchmark(
        "server_latency.py",
        *("--untrained", "airbench", "--runtime", "process", "--data", str(tar_gz(tree, tmp_path / "c.tar.gz"))),
        *("--images", "48", "--batch", "16", "--duration", "0.5", "--work", str(tmp_path / "work")),
        ignore_sigterm=True,
    )
    number = r"([\d,.]+)"
    row = re.search(
        rf"^\| fp32 \| process \| {number} / {number} \| {number} / {number} \| ([+-][\d.]+) \(([+-][\d.]+)\) "
        rf"\| {number} / {number} \| {number} \({number}\) \|$",
        stdout,
        re.M,
    )
    assert row is not None, stdout[-3000:]
    figures = (float(v.replace(",", "")) for v in row.groups())
    bare_p50, _, p50, _, overhead, floor, rps_on, rps_off, batched, bare_batched = figures
    assert min(bare_p50, p50, rps_on, rps_off, batched, bare_batched) > 0, row[0]
    assert f"overhead {overhead:+.3f} ms; the floor (a bare socket server, same ORT) {floor:+.3f} ms" in stdout
    assert "48 real CIFAR-10 test images" in stdout and "goals: overhead <= 0.15 ms" in stdout
