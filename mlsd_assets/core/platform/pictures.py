"""PNG figures inlined into asset metadata: the Dagster UI renders a data: URI, not a file:// path."""

from __future__ import annotations

import base64
from pathlib import Path


def markdown_image(png: Path, alt: str) -> str:
    """Markdown that shows `png` itself (base64 data URI; Dagster's markdown sanitizer allows data: images)."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})"
