"""The command's logs and traces: JSON log lines of a full run that tell every money operation,
job and audit and hold no secret; each command the root span of its trace, its API calls the
children; and that trace exported over OTLP into a real Jaeger."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import StatusCode
from typer.testing import CliRunner

from cli import keys, upkeep
from cli.dev.processes import wait_until
from cli.dev.stack import LocalStack
from cli.logs import REDACTED, LogFormat, LogLevel
from cli.main import app
from mycelium_client import InsufficientCredits
from tests.support import MYCELIUM
from tests.support.client import PASSWORD, Doubles, Target
from tests.support.telemetry import (
    Spans,
    command_logs,
    is_child,
    json_lines,
    leaked,
    running_jaeger,
    trace_id,
)

MONEY_OPERATIONS = {"purchase_credits", "grant_credits", "transfer_credits", "place_order", "refund_order"}


def by_event(lines: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        events[line.get("event", "")].append(line)
    return events


def test_json_logs_of_a_full_run_tell_every_operation_and_hold_no_secret(
    stack: LocalStack, doubles: Doubles
) -> None:
    env = {**os.environ, **stack.env(), "MYCELIUM_LOG_FORMAT": "json", "MYCELIUM_LOG_LEVEL": "debug"}
    written: list[str] = []

    def mycelium(*args: str) -> subprocess.CompletedProcess[str]:
        ran = subprocess.run([*MYCELIUM, *args], env=env, capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr[-2000:]
        written.append(ran.stderr)
        return ran

    mycelium("demo", "--dir", str(stack.directory), "--json")
    target = Target(
        "local", stack.api_url, stack.anon_key, stack.service_role_key, stack.superuser_db_url, doubles
    )
    try:
        # Users signed in through Auth with a password, so holding real access tokens.
        payer, payee = target.account(funded=10), target.account()
        key = f"observability-{uuid.uuid4()}"
        mycelium("credits", "grant", payer.email, "5", "--reason", "logs", "--idempotency-key", key)
        upkept = mycelium("upkeep", "--json")
        assert json.loads(upkept.stdout)["ok"] is True  # the logs stayed off stdout
        mycelium("credits", "audit", "--json")
        # A service's own calls as a user, logged as the command logs them.
        with command_logs(LogFormat.JSON, LogLevel.DEBUG) as logged:
            session = payer.client.auth.sign_in(payer.email, PASSWORD)
            payer.client.auth.refresh()
            payer.client.credits.transfer(payee.id, 1)
            payer.client.credits.balance()
            with pytest.raises(InsufficientCredits):
                payer.client.credits.transfer(payee.id, 1000)
        written.append(logged.getvalue())
    finally:
        target.close()

    everything = "\n".join(written)
    secrets = [stack.anon_key, stack.service_role_key, stack.jwt_secret, PASSWORD, payer.token, payee.token]
    secrets += [session.access_token, session.refresh_token]
    assert leaked(everything, secrets) == []
    # No token of any kind (the demo's users' included), and none that had to be scrubbed.
    assert "eyJ" not in everything and REDACTED not in everything

    assert all(line.startswith("{") for line in written[-1].splitlines())
    events = by_event([line for output in written for line in json_lines(output)])
    money = [call for call in events["api_call"] if call.get("rpc") in MONEY_OPERATIONS]
    assert {call["rpc"] for call in money} == MONEY_OPERATIONS
    for call in money:
        assert call["level"] == "info" and call["idempotency_key"], call
        assert isinstance(call["duration_ms"], float) and call["method"] == "POST"
    granted = [call for call in money if call.get("idempotency_key") == key]
    assert [(c["rpc"], c["outcome"]) for c in granted] == [("grant_credits", "ok")]
    refused = [call for call in money if call["outcome"] == "error"]
    assert [(c["rpc"], c["reason"]) for c in refused][-1] == ("transfer_credits", "insufficient_credits")
    auth_calls = [(c["path"], c["outcome"]) for c in events["api_call"] if c["path"].startswith("/auth/")]
    assert auth_calls == [("/auth/v1/token", "ok"), ("/auth/v1/token", "ok")]  # the sign-in, the refresh
    assert {job["job"] for job in events["upkeep_job"]} >= set(upkeep.JOBS)
    assert all(job["outcome"] == "ok" and job["level"] == "info" for job in events["upkeep_job"])
    for sweep in ("holds_released", "credits_expired", "subscriptions_charged", "ledger_rolled_up"):
        assert events[sweep], f"no {sweep} event"
    assert events["ledger_audit"] and all(audit["clean"] for audit in events["ledger_audit"])
    assert events["credit_summary"]  # the demo's


def test_a_command_is_the_root_span_of_its_calls_and_its_logs_carry_the_trace(
    stack: LocalStack, spans: Spans
) -> None:
    result = CliRunner().invoke(app, ["--log-format", "json", "credits", "audit", "--json"], env=stack.env())
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True
    root = spans.one("mycelium credits audit")
    assert root.parent is None
    assert is_child(spans.one("POST /rpc/audit_ledger"), root)
    [audit] = by_event(json_lines(result.stderr))["ledger_audit"]
    assert audit["trace_id"] == trace_id(root) and audit["level"] == "info"


def test_upkeep_traces_each_job_and_its_batches(stack: LocalStack, spans: Spans) -> None:
    result = CliRunner().invoke(app, ["upkeep", "--json"], env=stack.env())
    assert result.exit_code == 0, result.stderr
    root = spans.one("mycelium upkeep")
    for name in upkeep.JOBS:
        job = spans.one(f"upkeep {name}")
        assert is_child(job, root)
        batches = spans.named(f"POST /rpc/{name}")
        assert batches and all(is_child(batch, job) for batch in batches)


def test_a_failed_command_s_span_is_an_error(stack: LocalStack, spans: Spans) -> None:
    forged = keys.api_key("not-the-stacks-secret-not-the-stacks-secret", "service_role")
    result = CliRunner().invoke(
        app, ["credits", "audit"], env={**stack.env(), "SUPABASE_SERVICE_ROLE_KEY": forged}
    )
    assert result.exit_code != 0
    root = spans.one("mycelium credits audit")
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == f"exit code {result.exit_code}"
    call = spans.one("POST /rpc/audit_ledger")
    assert call.status.status_code is StatusCode.ERROR and (call.attributes or {})["mycelium.reason"]


def test_a_command_s_trace_reaches_jaeger_over_otlp(stack: LocalStack, tmp_path: Path) -> None:
    service = f"mycelium-{uuid.uuid4().hex[:8]}"
    with running_jaeger(tmp_path) as jaeger:
        ran = subprocess.run(
            [*MYCELIUM, "credits", "audit", "--json"],
            env={
                **os.environ,
                **stack.env(),
                "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_url,
                "OTEL_SERVICE_NAME": service,
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0, ran.stderr
        # Sent when the command exited; stored once Jaeger's pipeline has passed them on.
        assert wait_until(lambda: bool(jaeger.traces(service)), timeout=30), "no trace reached Jaeger"
        [found] = jaeger.traces(service)
    spans = {span["operationName"]: span for span in found["spans"]}
    root, call = spans["mycelium credits audit"], spans["POST /rpc/audit_ledger"]
    assert root["references"] == []
    assert [(ref["refType"], ref["spanID"]) for ref in call["references"]] == [("CHILD_OF", root["spanID"])]
    tags = {tag["key"]: tag["value"] for tag in call["tags"]}
    assert tags["http.response.status_code"] == 200 and tags["mycelium.rpc"] == "audit_ledger"
    assert found["processes"][call["processID"]]["serviceName"] == service
