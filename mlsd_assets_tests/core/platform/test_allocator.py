"""jemalloc preloading for CPU training: finding the library, detecting it, and exec'ing a command under it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlsd_assets.core.platform.allocator import (
    ALLOCATOR_ENV,
    JEMALLOC_CONF,
    active_allocator,
    find_jemalloc,
    jemalloc_env,
)

SHOW = "from mlsd_assets.core.platform.allocator import active_allocator; print(active_allocator())"


def test_find_jemalloc_searches_the_given_dirs(tmp_path: Path) -> None:
    empty, libs = tmp_path / "empty", tmp_path / "libs"
    empty.mkdir()
    libs.mkdir()
    assert find_jemalloc((str(empty),)) is None
    (libs / "libjemalloc.so.2").write_bytes(b"")
    assert find_jemalloc((str(empty), str(libs))) == libs / "libjemalloc.so.2"


def test_active_allocator_reads_the_mapped_libraries(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert active_allocator(maps) == "system"
    maps.write_text(maps.read_text() + "7f02-7f03 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert active_allocator(maps) == "jemalloc"
    assert active_allocator(tmp_path / "missing") == "unknown"


def test_jemalloc_env_keeps_other_preloads_and_settings() -> None:
    env = jemalloc_env(
        {"LD_PRELOAD": "/x/libfoo.so /y/libjemalloc.so.1", "MALLOC_CONF": "narenas:2", "A": "1"},
        Path("/lib/libjemalloc.so.2"),
    )
    assert env["LD_PRELOAD"] == "/lib/libjemalloc.so.2 /x/libfoo.so"
    assert env["MALLOC_CONF"] == f"{JEMALLOC_CONF},narenas:2"
    assert env["A"] == "1" and env[ALLOCATOR_ENV] == "jemalloc"


def _run_under_wrapper(extra_env: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", ALLOCATOR_ENV)}
    out = subprocess.run(
        [sys.executable, "-m", "mlsd_assets.core.platform.allocator", sys.executable, "-c", SHOW],
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.skipif(find_jemalloc() is None, reason="libjemalloc2 is not installed (.ci/run installs it)")
def test_wrapper_runs_the_command_under_jemalloc() -> None:
    assert _run_under_wrapper({}) == "jemalloc"


def test_wrapper_leaves_the_system_allocator_when_asked() -> None:
    assert _run_under_wrapper({ALLOCATOR_ENV: "system"}) == "system"
