"""Scale-out: two processes work on one study in a real PostgreSQL, sharing its trials (no number twice)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from mlsd_assets.core.tuning.study import study_name
from mlsd_assets_tests.core.tuning import tiny_study
from mlsd_assets_tests.deployment.conftest import postgres_server  # noqa: F401  (the session fixture)
from mlsd_assets_tests.deployment.postgres import PostgresServer


def test_two_workers_share_one_study_in_postgres(postgres_server: PostgresServer, tmp_path: Path) -> None:  # noqa: F811
    url = postgres_server.url(postgres_server.create_database("tuning"), driver="postgresql+psycopg")
    tiny_study.open_study(url, "warm-up", tiny_study.settings())  # create the schema once, not in a race
    cmd = [sys.executable, "-m", "mlsd_assets_tests.core.tuning.tiny_study", url, "2", "1"]
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [
        subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=os.environ.copy()) for log in logs
    ]
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(timeout=600) == 0, log.read_text()[-3000:]

    name = study_name(
        tiny_study.SPACE, tiny_study.settings(max_trials=2, trial_epochs=1), tiny_study.SPLIT.content_hash
    )
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    ended = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 2 <= len(ended) <= 3  # each worker stops at 2 ended; one may have started its last just before
    for log in logs:  # both did trials
        assert re.search(r"Trial \d+ (finished|pruned)", log.read_text()), log.read_text()[-3000:]
