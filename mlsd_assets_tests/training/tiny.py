"""A training config small enough for tests: a narrow airbench net that still learns the synthetic classes."""

from __future__ import annotations

from typing import Any

TINY: dict[str, Any] = {
    "widths": (8, 16, 16),
    "epochs": 2,
    "batch_size": 50,
    "lr": 0.2,
    "muon_lr": 0.1,  # the default recipe trains filters with Muon; 0.24 is tuned for 50k images, not 400
    "precision": "fp32",
    "threads": 2,
    "eval_batch_size": 256,
}
