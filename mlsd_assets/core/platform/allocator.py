"""Memory allocator for CPU training.

glibc hands every tensor above 32 MB back to the kernel on free, so each training step page-faults its
activations in again (measured: ~5x the page faults and ~4x the system time of jemalloc). jemalloc that
never returns dirty pages reuses them instead. It must be preloaded before the process starts, so entry
points that train (`python -m mlsd_assets pipeline`, the benchmarks) re-exec themselves through
`reexec_with_jemalloc`; `MLSD_ALLOCATOR=system` turns that off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

ALLOCATOR_ENV = "MLSD_ALLOCATOR"
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
_LIB_NAMES = ("libjemalloc.so.2", "libjemalloc.so")


def find_jemalloc(dirs: tuple[str, ...] = _LIB_DIRS) -> Path | None:
    for directory in dirs:
        for name in _LIB_NAMES:
            if (Path(directory) / name).is_file():
                return Path(directory) / name
    return None


def active_allocator(maps: Path = Path("/proc/self/maps")) -> str:
    """'jemalloc', 'tcmalloc' or 'system': what this process actually has mapped."""
    try:
        text = maps.read_text()
    except OSError:
        return "unknown"
    for name in ("jemalloc", "tcmalloc"):
        if f"lib{name}" in text:
            return name
    return "system"


def jemalloc_env(environ: Mapping[str, str], library: Path) -> dict[str, str]:
    """`environ` with jemalloc preloaded (kept first) and configured to keep its pages."""
    preload = [p for p in environ.get("LD_PRELOAD", "").split() if p and "jemalloc" not in p]
    conf = environ.get("MALLOC_CONF", "")
    return {
        **environ,
        "LD_PRELOAD": " ".join([str(library), *preload]),
        "MALLOC_CONF": ",".join(c for c in (JEMALLOC_CONF, conf) if c),
        ALLOCATOR_ENV: "jemalloc",
    }


def preload_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """`environ` with jemalloc preloaded, or None when `MLSD_ALLOCATOR` turns it off or it is not installed."""
    library = find_jemalloc() if environ.get(ALLOCATOR_ENV, "auto") == "auto" else None
    return jemalloc_env(environ, library) if library else None


def reexec_with_jemalloc(environ: Mapping[str, str]) -> None:
    """Replace this process by itself under jemalloc, once; no-op if disabled, missing or already active.

    `environ` is the process environment (mlsd_assets.settings.environment(), the one place that reads it)."""
    env = preload_env(environ) if active_allocator() == "system" else None
    if env is None:
        return
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    """`python -m mlsd_assets.core.platform.allocator CMD ARGS...`: exec CMD with jemalloc preloaded when installed."""
    if not argv:
        print("usage: python -m mlsd_assets.core.platform.allocator CMD [ARGS...]", file=sys.stderr)
        return 2
    os.execvpe(argv[0], argv, preload_env(environ) or dict(environ))
    return 127  # not reached: execvpe replaces the process or raises


if __name__ == "__main__":
    from mlsd_assets.settings import environment

    sys.exit(main(sys.argv[1:], environment()))
