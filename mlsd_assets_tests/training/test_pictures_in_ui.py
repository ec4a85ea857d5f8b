"""The training curves PNG in cifar10_model's metadata renders as an image in the Dagster UI (Chromium)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from mlsd_assets.core.platform.pictures import markdown_image
from mlsd_assets_tests.deployment.browser import Browser

# naturalWidth > 0 only when the browser decoded the image: a blocked or sanitized src leaves 0 or no <img>
RENDERED = (
    "() => { const r = [...document.querySelectorAll('img')]"
    ".filter(i => i.src.startsWith('data:image/png') && i.complete)"
    ".map(i => [i.naturalWidth, i.getBoundingClientRect().width]); return r.length ? r : null; }"
)


def _curves_png(path: Path) -> Path:
    from mlsd_assets.core.training.curves import plot_curves
    from mlsd_assets.core.training.train import EpochStats

    history = [EpochStats(e, 3, 2.0 / e, 0.3 * e, 2.1 / e, 0.28 * e, 0.1, 900.0, 50.0, 55.0, 0.0) for e in (1, 2, 3)]
    return plot_curves(history, path, "training curves")


def test_training_curves_render_in_the_asset_page(webserver: str, browser: Browser, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.from_config(str(tmp_path / "dagster-home"))
    png = _curves_png(tmp_path / "training_curves.png")
    metadata = {"training_curves": dg.MetadataValue.md(markdown_image(png, "training curves"))}
    instance.report_runless_asset_event(dg.AssetMaterialization("cifar10_model", metadata=metadata))
    browser.navigate(f"{webserver}/assets/cifar10_model")
    browser.wait_for_text(["training_curves"], timeout=120)
    browser.dismiss_community_dialog()
    # The metadata table opens a markdown value in a dialog from a "[Show Markdown]" link: a user's click on it.
    browser.page.get_by_text("[Show Markdown]", exact=True).last.click()
    rendered = browser.page.wait_for_function(RENDERED, timeout=30_000).json_value()
    shot = browser.screenshot(tmp_path / "training_curves_dialog.png")
    print(f"rendered {json.dumps(rendered)}; screenshot {shot}")
    assert rendered and all(natural == 1000 and shown > 300 for natural, shown in rendered), rendered
    assert shot.stat().st_size > 10_000
