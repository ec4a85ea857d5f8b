"""MLflowTracking.run owns a run's lifecycle on a real MLflow store: started or resumed, then ended right."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsd_assets.resources import MLflowTracking


@pytest.fixture
def tracking(tmp_path: Path) -> MLflowTracking:
    return MLflowTracking(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=(tmp_path / "artifacts").as_uri()
    )


def _status(tracking: MLflowTracking, run_id: str) -> str:
    return tracking.client().get_run(run_id).info.status


def test_a_run_is_running_inside_and_finished_after(tracking: MLflowTracking) -> None:
    with tracking.run("ok", {"source": "test"}) as run_id:
        assert _status(tracking, run_id) == "RUNNING"
    assert _status(tracking, run_id) == "FINISHED"
    assert tracking.client().get_run(run_id).data.tags["source"] == "test"


def test_an_error_marks_the_run_failed_and_propagates(tracking: MLflowTracking) -> None:
    with pytest.raises(RuntimeError, match="boom"), tracking.run("bad", {}) as run_id:
        raise RuntimeError("boom")
    assert _status(tracking, run_id) == "FAILED"


def test_an_interruption_marks_the_run_killed(tracking: MLflowTracking) -> None:
    with pytest.raises(KeyboardInterrupt), tracking.run("stopped", {}) as run_id:
        raise KeyboardInterrupt
    assert _status(tracking, run_id) == "KILLED"


def test_a_failed_run_is_resumed_by_id_and_an_unknown_id_starts_a_new_one(tracking: MLflowTracking) -> None:
    with pytest.raises(RuntimeError), tracking.run("first", {"attempt": "1"}) as first:
        raise RuntimeError("worker lost")
    with tracking.run("second", {"attempt": "2"}, resume_run_id=first) as again:
        assert again == first and _status(tracking, first) == "RUNNING"
    run = tracking.client().get_run(first)
    assert run.info.status == "FINISHED" and run.data.tags["attempt"] == "2"
    with tracking.run("third", {}, resume_run_id="0" * 32) as fresh:
        assert fresh != first
    assert _status(tracking, fresh) == "FINISHED"


def test_logging_through_the_fluent_api_keeps_the_status(tracking: MLflowTracking) -> None:
    import mlflow

    with tracking.run("fluent", {}) as run_id:
        with tracking.active_run(run_id):
            mlflow.log_metric("x", 1.0)
        assert _status(tracking, run_id) == "RUNNING"
    assert _status(tracking, run_id) == "FINISHED"
    assert tracking.client().get_run(run_id).data.metrics["x"] == 1.0
