"""The Dagster UI in a real browser: the asset graph shows the six assets, asset pages list their checks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsd_assets.core.serving.runtime import stop_process
from mlsd_assets_tests.deployment.browser import Browser, chromium_unavailable_reason

REPO = Path(__file__).resolve().parents[2]
ASSETS = [
    "raw_cifar10",
    "cifar10_split",
    "cifar10_model",
    "cifar10_onnx",
    "inference_server_image",
    "evaluation_report",
    "model_promotion",
]


def _location() -> tuple[dict[str, str], dict[str, list[str]]]:
    """Each asset's group, and each asset's check names, as the code location defines them."""
    from mlsd_assets.definitions import defs

    graph = defs.get_repository_def().asset_graph
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    checks: dict[str, list[str]] = {}
    for key in graph.asset_check_keys:
        checks.setdefault(key.asset_key.to_user_string(), []).append(key.name)
    return groups, checks


def _dismiss_community_dialog(browser: Browser) -> None:
    """A first visit opens Dagster's newsletter dialog over the graph; skip it as a user would."""
    deadline = time.monotonic() + 10
    while "Join the Dagster community" not in browser.text():
        if time.monotonic() > deadline:
            return  # this Dagster version shows none
        time.sleep(0.5)
    assert browser.click_button("Skip")
    browser.wait_for_text([], timeout=15, absent=("Join the Dagster community",))


@pytest.fixture
def webserver(tmp_path: Path) -> Iterator[str]:
    """`dagster-webserver` on the embedded workspace.yaml and dagster.yaml, in a temporary home."""
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "MLSD_HOME": str(tmp_path / "mlsd-home")}
    log = (tmp_path / "webserver.log").open("w")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(REPO / "workspace.yaml"),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = (tmp_path / "webserver.log").read_text()[-3000:]
                    pytest.fail(f"dagster-webserver did not serve:\n{output}")
                time.sleep(1)
        yield url
    finally:
        stop_process(process, timeout_s=30)
        log.close()


def test_asset_graph_and_checks_in_chromium(webserver: str, tmp_path: Path) -> None:
    reason = chromium_unavailable_reason()
    if reason:
        pytest.skip(reason)
    groups, checks = _location()
    assert sorted(groups) == sorted(ASSETS)
    shown: list[str] = []
    with Browser(tmp_path / "chromium-profile") as browser:
        # The global lineage folds several groups into one box each; a group's graph draws its asset nodes.
        browser.navigate(f"{webserver}/asset-groups")
        browser.wait_for_text(sorted(set(groups.values())), timeout=120, absent=("fetching statuses",))
        _dismiss_community_dialog(browser)
        browser.screenshot(tmp_path / "asset_lineage.png")
        for group in sorted(set(groups.values())):
            members = sorted(a for a, g in groups.items() if g == group)
            # never-run checks read "0 / N Passed" on each asset node once its status has loaded
            counts = [f"0 / {len(checks[a])} Passed" for a in members if a in checks]
            browser.navigate(f"{webserver}/locations/mlsd_assets/asset-groups/{group}")
            browser.wait_for_text([*members, *counts], timeout=90, absent=("Loading...",))
            shown.append(group)
            browser.screenshot(tmp_path / f"asset_graph_{group}.png")
        for asset, names in checks.items():
            browser.navigate(f"{webserver}/assets/{asset}?view=checks")
            browser.wait_for_text(sorted(names), timeout=60)
    screenshots = sorted(tmp_path.glob("asset_*.png"))
    assert len(screenshots) == 1 + len(shown) and all(p.stat().st_size > 10_000 for p in screenshots)
    print(f"asset graph screenshots: {' '.join(str(p) for p in screenshots)}")
