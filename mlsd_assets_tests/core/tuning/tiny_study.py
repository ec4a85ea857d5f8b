"""A study small enough for tests, and a worker process that runs it (so a test can SIGKILL it mid-study)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from mlsd_assets.core.tuning.space import SearchSpace
from mlsd_assets.core.tuning.study import StudySettings, open_study, run_study, study_name, tuning_data
from mlsd_assets_tests.synthetic import make_split
from mlsd_assets_tests.training.tiny import TINY

SPLIT = make_split(400, 100, 20)
SPACE = SearchSpace(
    lr=(1e-3, 1.0),
    muon_lr=(1e-3, 0.3),
    widths=((8, 16, 16), (12, 24, 24)),
    batch_sizes=(50,),
    weight_decay=(1e-3, 5e-3),
)
FIXED = tuple((k, TINY[k]) for k in ("precision", "threads", "eval_batch_size"))
GOOD = {
    "lr": 0.2,
    "muon_lr": 0.1,
    "label_smoothing": 0.1,
    "weight_decay": 2.42e-3,
    "widths": "8-16-16",
    "batch_size": 50,
}
BAD = {**GOOD, "lr": 1e-3, "muon_lr": 1e-3}  # barely moves in a few steps: the pruner's target


def settings(**changes: Any) -> StudySettings:
    fields: dict[str, Any] = {
        "fixed": FIXED,
        "trial_budget_s": None,
        "trial_epochs": 2,
        "total_budget_s": 600.0,
        "first_rung": 0.5,
        "startup_trials": 2,
        "enqueue_baseline": False,
    }
    return StudySettings(**{**fields, **changes})


def run(storage_url: str, study_settings: StudySettings, heartbeat_s: int = 1, grace_s: int = 2):  # noqa: ANN201
    """Open (or resume) the tiny study and run it to its end; returns the TuningResult."""
    name = study_name(SPACE, study_settings, SPLIT.content_hash)
    study = open_study(storage_url, name, study_settings, heartbeat_s, grace_s)
    data = tuning_data(SPLIT, study_settings.train_images, study_settings.seed)
    return run_study(study, data, SPACE, study_settings, logging.getLogger("tiny_study"))


if __name__ == "__main__":  # python -m mlsd_assets_tests.core.tuning.tiny_study URL MAX_TRIALS [EPOCHS]
    logging.basicConfig(level=logging.INFO)
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    run(sys.argv[1], settings(max_trials=int(sys.argv[2]), trial_epochs=epochs))
