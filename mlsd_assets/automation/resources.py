"""Where failure alerts go: a webhook whose URL is a secret (dg.EnvVar), never shown in config or the UI."""

import json
import urllib.request
from typing import Any

import dagster as dg

from mlsd_assets.settings import ALERT_WEBHOOK_ENV, Settings


class AlertWebhook(dg.ConfigurableResource):
    """POSTs a short JSON alert; an empty `url` means alerts are only logged."""

    url: str = ""
    timeout_s: float = 10.0

    def post(self, payload: dict[str, Any]) -> int:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "mlsd-alerts"},
            method="POST",
        )
        # Non-2xx raises HTTPError: the sensor tick fails visibly instead of losing the alert.
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return response.status


def alert_webhook(settings: Settings) -> AlertWebhook:
    """Bind the secret only when it is set: dg.EnvVar on an unset variable fails every run at config time."""
    if not settings.alert_webhook_configured:
        return AlertWebhook()
    return AlertWebhook(url=dg.EnvVar(ALERT_WEBHOOK_ENV))


def root_cause(error: Any) -> str:
    """The user's exception, not Dagster's "error occurred while executing op" wrapper around it."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def failure_payload(context: dg.RunFailureSensorContext) -> dict[str, Any]:
    """Asset(s), run id, job and the first error: enough to triage from a chat message."""
    run = context.dagster_run
    step_failures = context.get_step_failure_events()
    errors = [
        f"{event.step_key}: {root_cause(event.event_specific_data.error)}"
        for event in step_failures
        if event.event_specific_data is not None and event.event_specific_data.error is not None
    ]
    assets = sorted(key.to_user_string() for key in run.asset_selection or ())
    if not assets:
        assets = sorted({event.step_key for event in step_failures if event.step_key})
    return {
        "text": f"mlsd run failed: {run.job_name} ({run.run_id})",
        "run_id": run.run_id,
        "job": run.job_name,
        "assets": assets,
        "partition": run.tags.get("dagster/partition"),
        "error": errors[0] if errors else (context.failure_event.message or "run failed"),
        "failed_steps": [event.step_key for event in step_failures],
    }
