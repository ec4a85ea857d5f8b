"""The study on tiny data: trials run, a poor trial is pruned, budgets stop it, a killed study resumes, a finished
one is returned as stored, and test images never reach a trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from mlsd_assets.core.data.batches import image_hashes
from mlsd_assets.core.tuning.space import SearchSpace
from mlsd_assets.core.tuning.study import open_study, run_study, study_name, tuning_data
from mlsd_assets_tests.core.tuning import tiny_study
from mlsd_assets_tests.core.tuning.tiny_study import BAD, GOOD, SPACE, SPLIT

ENDED = (TrialState.COMPLETE, TrialState.PRUNED)


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def test_trials_run_and_a_poor_trial_is_pruned(tmp_path: Path) -> None:
    settings = tiny_study.settings(max_trials=3)
    study = open_study(_url(tmp_path), study_name(SPACE, settings, SPLIT.content_hash), settings, 1, 2)
    study.enqueue_trial(GOOD)
    study.enqueue_trial(BAD)
    result = run_study(study, tuning_data(SPLIT), SPACE, settings, optuna.logging.get_logger("test"))
    states = [t.state for t in result.trials]
    assert len(states) == 3 and states[:2] == ["COMPLETE", "PRUNED"], result.trials
    assert result.trials[1].last_step == 1  # stopped at the first rung: after epoch 1 of 2
    assert result.trials[1].last_report < result.trials[0].value
    complete = [t for t in result.trials if t.state == "COMPLETE"]
    assert result.best_value == max(t.value for t in complete) > 0.3  # the synthetic classes are learnable
    assert result.best_params == next(t.params for t in complete if t.value == result.best_value)
    assert optuna.load_study(study_name=study.study_name, storage=_url(tmp_path)).user_attrs["finished"]


def test_a_finished_study_returns_its_best_without_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = tiny_study.settings(max_trials=1, trial_epochs=1)
    first = tiny_study.run(_url(tmp_path), settings)
    assert not first.skipped and len(first.trials) == 1

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished study trained again")

    monkeypatch.setattr("mlsd_assets.core.training.train.train", no_training)
    again = tiny_study.run(_url(tmp_path), settings)
    assert again.skipped
    assert again.trials == first.trials and again.best_params == first.best_params
    # another search space, other settings or other data name another study
    name = study_name(SPACE, settings, SPLIT.content_hash)
    assert study_name(SearchSpace(batch_sizes=(25,)), settings, SPLIT.content_hash) != name
    assert study_name(SPACE, tiny_study.settings(max_trials=2, trial_epochs=1), SPLIT.content_hash) != name
    assert study_name(SPACE, settings, "another-dataset") != name


def test_total_budget_stops_starting_trials(tmp_path: Path) -> None:
    """3-second trials in a 7-second study: at most two start, and each reports percent of its budget."""
    settings = tiny_study.settings(trial_epochs=None, trial_budget_s=3.0, total_budget_s=7.0)
    result = tiny_study.run(_url(tmp_path), settings)
    assert 1 <= len(result.trials) <= 2
    assert all(t.state in ("COMPLETE", "PRUNED") for t in result.trials)
    assert result.spent_seconds <= 2 * 3.0


def test_a_killed_study_resumes_without_repeating_finished_trials(tmp_path: Path) -> None:
    url, settings = _url(tmp_path), tiny_study.settings(max_trials=4)
    name = study_name(SPACE, settings, SPLIT.content_hash)
    log = (tmp_path / "worker.log").open("w")
    cmd = [sys.executable, "-m", "mlsd_assets_tests.core.tuning.tiny_study", url, "4"]
    worker = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    deadline = time.monotonic() + 300
    try:
        while True:  # kill it as soon as a trial has ended and the next has just started
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial ended within 300 s"
            trials = _trials(url, name)
            # all params drawn (a trial killed while drawing is retried with those it had), no epoch reported
            running = [
                t
                for t in trials
                if t.state == TrialState.RUNNING and len(t.params) == len(GOOD) and not t.intermediate_values
            ]
            if running and any(t.state in ENDED for t in trials):
                break
            time.sleep(0.1)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    before = _trials(url, name)
    ended = {t.number: t for t in before if t.state in ENDED}
    (killed,) = [t for t in before if t.state == TrialState.RUNNING]

    time.sleep(3)  # past the 2-second grace period: the killed trial's heartbeat is stale
    result = tiny_study.run(url, settings)

    after = {t.number: t for t in _trials(url, name)}
    for number, trial in ended.items():  # finished trials stay as they were, and are not run again
        assert after[number].state == trial.state and after[number].datetime_complete == trial.datetime_complete
    assert after[killed.number].state == TrialState.FAIL
    (retry,) = [t for t in after.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.params == killed.params and retry.state in ENDED and retry.number > killed.number
    new = [t for t in after.values() if t.number not in ended and t.number != killed.number]
    assert all(t.number > max(ended) for t in new)  # the count continues
    assert sum(t.state in ENDED for t in after.values()) == 4 == result.count("COMPLETE") + result.count("PRUNED")
    assert len({tuple(sorted(t.params.items())) for t in after.values() if t.state in ENDED}) == 4


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=url).get_trials()
    except KeyError:  # not created yet
        return []


def test_trials_see_train_and_validation_only() -> None:
    data = tuning_data(SPLIT, train_images=50, seed=3)
    assert len(data.arrays.train_labels) == 50 and len(data.arrays.val_labels) == SPLIT.counts()["validation"]
    assert np.array_equal(
        data.arrays.train_images, tuning_data(SPLIT, train_images=50, seed=3).arrays.train_images
    )  # a fixed subset
    test_hashes = set(image_hashes(SPLIT.arrays("test")[0]))
    seen = set(image_hashes(np.concatenate([data.arrays.train_images, data.arrays.val_images])))
    assert not seen & test_hashes
    assert set(image_hashes(data.arrays.train_images)) <= set(image_hashes(SPLIT.arrays("train")[0]))
