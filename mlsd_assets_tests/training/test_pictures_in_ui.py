"""The training curves PNG in cifar10_model's metadata renders as an image in the Dagster UI (Chromium)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import pytest

from mlsd_assets.core.platform.pictures import markdown_image
from mlsd_assets_tests.deployment.browser import Browser, chromium_unavailable_reason
from mlsd_assets_tests.deployment.test_ui_browser import _dismiss_community_dialog, webserver  # noqa: F401

# naturalWidth > 0 only when the browser decoded the image: a blocked or sanitized src leaves 0 or no <img>
RENDERED = (
    "[...document.querySelectorAll('img')].filter(i => i.src.startsWith('data:image/png') && i.complete)"
    ".map(i => [i.naturalWidth, i.getBoundingClientRect().width])"
)


# The metadata table opens a markdown value in a dialog from a "[Show Markdown]" link.
SHOW_MARKDOWN = (
    "(() => { const e = [...document.querySelectorAll('*')]"
    ".filter(e => e.innerText && e.innerText.trim() === '[Show Markdown]').pop();"
    " if (!e) return null; const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
)


def _curves_png(path: Path) -> Path:
    from mlsd_assets.core.training.curves import plot_curves
    from mlsd_assets.core.training.train import EpochStats

    history = [EpochStats(e, 3, 2.0 / e, 0.3 * e, 2.1 / e, 0.28 * e, 0.1, 900.0, 50.0, 55.0, 0.0) for e in (1, 2, 3)]
    return plot_curves(history, path, "training curves")


def test_training_curves_render_in_the_asset_page(webserver: str, tmp_path: Path) -> None:  # noqa: F811
    reason = chromium_unavailable_reason()
    if reason:
        pytest.skip(reason)
    instance = dg.DagsterInstance.from_config(str(tmp_path / "dagster-home"))
    png = _curves_png(tmp_path / "training_curves.png")
    metadata = {"training_curves": dg.MetadataValue.md(markdown_image(png, "training curves"))}
    instance.report_runless_asset_event(dg.AssetMaterialization("cifar10_model", metadata=metadata))
    with Browser(tmp_path / "chromium-profile") as browser:
        browser.navigate(f"{webserver}/assets/cifar10_model")
        browser.wait_for_text(["training_curves"], timeout=120)
        _dismiss_community_dialog(browser)
        where = browser.call("Runtime.evaluate", expression=SHOW_MARKDOWN, returnByValue=True)["result"]["value"]
        assert where, "no [Show Markdown] link in the metadata table"
        for kind in ("mousePressed", "mouseReleased"):  # a user's click, where the link is drawn
            browser.call("Input.dispatchMouseEvent", type=kind, x=where[0], y=where[1], button="left", clickCount=1)
        deadline, rendered = time.monotonic() + 30, []
        while not rendered and time.monotonic() < deadline:
            time.sleep(1)
            rendered = browser.call("Runtime.evaluate", expression=RENDERED, returnByValue=True)["result"]["value"]
        shot = browser.screenshot(tmp_path / "training_curves_dialog.png")
    print(f"rendered {json.dumps(rendered)}; screenshot {shot}")
    assert rendered and all(natural == 1000 and shown > 300 for natural, shown in rendered), rendered
    assert shot.stat().st_size > 10_000
