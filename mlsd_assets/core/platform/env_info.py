"""The software a model was made with: inference needs the same versions again, so every run records them."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from mlsd_assets.core.platform.allocator import active_allocator

PACKAGES: tuple[str, ...] = ("torch", "torchvision", "onnx", "onnxruntime", "numpy", "mlflow", "dagster")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def os_info() -> dict[str, str]:
    return {"os": platform.platform(), "machine": platform.machine(), "python_executable": sys.executable}


# The instruction-set extensions that decide CPU training speed (bf16/AMX kernels, AVX-512, AVX2 fallback).
CPU_FLAGS: tuple[str, ...] = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """CPU model, the speed-relevant flags it has, and the kernels torch dispatches to (`cpu.capability`)."""
    import torch

    model, flags = platform.processor() or platform.machine(), set()
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    present = [f for f in CPU_FLAGS if f in flags]
    return {
        "cpu.model": model,
        "cpu.flags": " ".join(present) or "none of " + ",".join(CPU_FLAGS),
        "cpu.capability": torch.backends.cpu.get_cpu_capability(),
    }


def git_sha(repo_dir: Path | None = None) -> str:
    """HEAD of the checkout the code runs from, '+dirty' with uncommitted changes, else 'unknown'."""
    cwd = repo_dir or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def environment() -> dict[str, str]:
    """Flat record for MLflow tags/params: `version.<pkg>`, `os`, `machine`, `allocator`, `git_sha`, `cpu.*`."""
    record = {f"version.{k}": v for k, v in package_versions().items()}
    record |= os_info()
    record["allocator"] = active_allocator()
    record["git_sha"] = git_sha()
    record |= cpu_info()
    return record
