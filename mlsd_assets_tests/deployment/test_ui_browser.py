"""The Dagster UI in a real browser: the asset graph shows every asset, asset pages list their checks."""

from __future__ import annotations

from pathlib import Path

from mlsd_assets_tests.deployment.browser import Browser

ASSETS = [
    "raw_cifar10",
    "cifar10_split",
    "cifar10_tuning",
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


def test_asset_graph_and_checks_in_chromium(webserver: str, browser: Browser, tmp_path: Path) -> None:
    groups, checks = _location()
    assert sorted(groups) == sorted(ASSETS)
    shown: list[str] = []
    # The global lineage folds several groups into one box each; a group's graph draws its asset nodes.
    browser.navigate(f"{webserver}/asset-groups")
    browser.wait_for_text(sorted(set(groups.values())), timeout=120, absent=("fetching statuses",))
    browser.dismiss_community_dialog()
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
