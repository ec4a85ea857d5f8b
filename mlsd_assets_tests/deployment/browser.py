"""Headless Debian Chromium driven over the DevTools protocol: navigate, wait for text, take a screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from mlsd_assets.core.serving.runtime import stop_process

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,1000",
]


def chromium_unavailable_reason() -> str | None:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        return "Debian chromium absent (apt-get install chromium)"
    return None


class Browser:
    """One Chromium process with one page; closes with the context manager."""

    def __init__(self, profile_dir: Path) -> None:
        self._profile = profile_dir
        self._ids = itertools.count(1)
        binary = CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))
        self._process = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={profile_dir}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._stack = ExitStack()
        try:
            self._ws: ClientConnection = self._stack.enter_context(
                connect(self._page_socket(), max_size=64 * 2**20, open_timeout=30)
            )
        except BaseException:
            self._process.kill()
            self._process.wait()
            raise

    def _page_socket(self) -> str:
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not open its DevTools port (exit code {self._process.poll()})")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.load(response)
        return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"DevTools {method} failed: {message['error']}")
                return message.get("result", {})

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        result = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")
        return result["result"].get("value", "")

    def wait_for_text(self, needles: list[str], timeout: float, absent: tuple[str, ...] = ()) -> str:
        """The page text once every needle shows and no `absent` text does (the UI renders client-side)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            missing = [n for n in needles if n not in text]
            present = [a for a in absent if a in text]
            if not missing and not present:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"after {timeout:.0f} s the page lacks {missing} / still shows {present}:\n{text[:2000]}"
                )
            time.sleep(1)

    def click_button(self, label: str) -> bool:
        """Click the first button whose text is `label`; False when there is none."""
        expression = (
            "(() => { const b = [...document.querySelectorAll('button')]"
            f".find(e => e.innerText.trim() === {json.dumps(label)}); if (b) b.click(); return !!b; }})()"
        )
        return bool(self.call("Runtime.evaluate", expression=expression)["result"].get("value"))

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        stop_process(self._process, timeout_s=20)
