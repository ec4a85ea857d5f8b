"""Headless Debian Chromium driven by Playwright: the system binary (`executable_path`), no browser download."""

from __future__ import annotations

import time
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

CHROMIUM = Path("/usr/bin/chromium")
COMMUNITY_DIALOG = "Join the Dagster community"


def chromium_unavailable_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"Debian chromium absent at {CHROMIUM} (apt-get install chromium)"
    return None


class Browser:
    """One Chromium with one 1600x1000 page (`page`, Playwright's); its profile lives in `profile_dir`."""

    def __init__(self, profile_dir: Path) -> None:
        self._playwright = sync_playwright().start()
        try:
            self._context = self._playwright.chromium.launch_persistent_context(
                profile_dir,
                executable_path=CHROMIUM,
                args=["--disable-dev-shm-usage"],  # containers often give /dev/shm 64 MiB
                viewport={"width": 1600, "height": 1000},
            )
        except BaseException:
            self._playwright.stop()
            raise
        self.page: Page = self._context.pages[0]

    def navigate(self, url: str) -> None:
        self.page.goto(url, timeout=60_000)

    def wait_for_text(self, needles: list[str], timeout: float, absent: tuple[str, ...] = ()) -> str:
        """The page text once every needle shows and no `absent` text does (the UI renders client-side)."""
        body = self.page.locator("body")
        deadline = time.monotonic() + timeout
        for needle in needles:
            expect(body).to_contain_text(needle, use_inner_text=True, timeout=self._left_ms(deadline))
        for text in absent:
            expect(body).not_to_contain_text(text, use_inner_text=True, timeout=self._left_ms(deadline))
        return body.inner_text()

    @staticmethod
    def _left_ms(deadline: float) -> float:
        return max(deadline - time.monotonic(), 1.0) * 1000

    def dismiss_community_dialog(self) -> None:
        """A first visit opens Dagster's newsletter dialog over the page a few seconds in; skip it as a user would."""
        dialog = self.page.get_by_text(COMMUNITY_DIALOG).first
        try:
            dialog.wait_for(state="visible", timeout=10_000)
        except PlaywrightTimeoutError:
            return  # not shown (this Dagster version, or already dismissed in this profile)
        self.page.get_by_role("button", name="Skip", exact=True).click()
        expect(dialog).to_be_hidden(timeout=15_000)

    def screenshot(self, path: Path) -> Path:
        self.page.screenshot(path=path, animations="disabled")  # a dialog still fading in is drawn finished
        return path

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._context.close()
        finally:
            self._playwright.stop()
