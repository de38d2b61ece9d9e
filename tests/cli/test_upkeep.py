"""`mycelium upkeep`: the periodic jobs, once and on a schedule (a real subprocess stopped as
`docker stop` stops it), against the session's stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow
from typer.testing import CliRunner, Result

from cli import upkeep
from cli.dev.stack import LocalStack
from cli.main import app
from tests.support import MYCELIUM, Api, User, body, interruptible
from tests.support.marketplace import abandoned_order, account, audit_is_clean, expired_promotion
from tests.support.subscriptions import due_subscription, overdue_subscriptions, periods, stop

MakeUser = Callable[..., User]
D = Decimal
UpkeepRun = Callable[..., Result]


def balance(user: User) -> Decimal:
    return D(str(body(user.api.get("/credit_accounts", select="balance"))[0]["balance"]))


@pytest.fixture
def upkeep_in_batches(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> UpkeepRun:
    """`mycelium upkeep --json`, succeeding, with its jobs taking at most as many items a call as
    told (`HOLDS_PER_CALL=1`, ...); after a run that cleared whatever the other tests left due."""
    assert CliRunner().invoke(app, ["upkeep"], env=stack.env()).exit_code == 0

    def run(**per_call: int) -> Result:
        for name, most in per_call.items():
            monkeypatch.setattr(upkeep, name, most)
        result = CliRunner().invoke(app, ["upkeep", "--json"], env=stack.env())
        assert result.exit_code == 0, result.stderr
        return result

    return run


def upkeep_check(stack: LocalStack) -> dict[str, Any]:
    """The `upkeep` check of `mycelium health --json`."""
    health = CliRunner().invoke(app, ["health", "--json"], env=stack.env())
    checks = {check["name"]: check for check in json.loads(health.stdout)["checks"]}
    check: dict[str, Any] = checks["upkeep"]
    return check


def test_upkeep_releases_abandoned_holds_expires_credits_and_rolls_up_days(
    stack: LocalStack, service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    alice = abandoned_order(service_api, make_user, db)
    promoted = expired_promotion(service_api, make_user, db)
    result = CliRunner().invoke(app, ["upkeep", "--json"], env=stack.env())
    assert result.exit_code == 0, result.stderr
    done = json.loads(result.stdout, parse_float=Decimal)
    assert done["ok"] is True and datetime.fromisoformat(done["at"]).tzinfo is not None
    jobs = done["jobs"]
    assert list(jobs) == [
        "release_expired_holds",
        "expire_credits",
        "charge_due_subscriptions",
        "refresh_ledger_rollups",
    ]
    assert all(job["ok"] for job in jobs.values())
    released, expired = jobs["release_expired_holds"], jobs["expire_credits"]
    assert released["orders_released"] >= 1 and D(released["credits_released"]) >= 2
    assert expired["lots_expired"] >= 1 and D(expired["credits_expired"]) >= 3
    # The session's ledger starts today: no complete day to roll up yet.
    assert jobs["refresh_ledger_rollups"]["days"] == 0
    assert account(alice) == (D("10"), D("0"))
    assert balance(promoted) == 0
    audit_is_clean(service_api)

    shown = CliRunner().invoke(app, ["upkeep"], env=stack.env())
    assert shown.exit_code == 0, shown.stderr
    assert "release expired order holds" in shown.stdout and "0 order(s)" in shown.stdout
    assert "roll up complete days" in shown.stdout


@pytest.mark.parametrize("workers", [1, 2])
def test_upkeep_charges_due_subscriptions_in_batches_and_health_no_longer_finds_them_overdue(
    workers: int,
    stack: LocalStack,
    service_api: Api,
    make_user: MakeUser,
    db: psycopg.Connection[TupleRow],
    upkeep_in_batches: UpkeepRun,
) -> None:
    due = [due_subscription(service_api, make_user, db) for _ in range(2)]
    assert overdue_subscriptions(service_api) == 2
    check = upkeep_check(stack)
    assert check["ok"] is False and "charge_due_subscriptions" in check["detail"]

    result = upkeep_in_batches(PERIODS_PER_CALL=1, CHARGING_WORKERS=workers)
    charged = json.loads(result.stdout, parse_float=Decimal)["jobs"]["charge_due_subscriptions"]
    # Each subscription was two periods behind: four steps, a batch (one call) each, by one worker
    # or by two side by side (each subscription has a provider of its own).
    assert D(charged.pop("credits_charged")) == 4  # amounts in JSON are exact strings
    assert charged == {
        "ok": True,
        "periods_charged": 4,
        "renewed": 4,
        "grace": 0,
        "suspended": 0,
        "resumed": 0,
        "cancelled": 0,
    }
    assert result.stderr.count("subscriptions:") == 4  # progress after each full batch
    assert "4 period(s) charged so far" in result.stderr
    assert overdue_subscriptions(service_api) == 0
    check = upkeep_check(stack)
    assert check["ok"] is True, check
    for alice, subscription_id in due:
        assert [(p["seq"], p["status"]) for p in periods(alice.api, subscription_id)] == [
            (1, "charged"),
            (2, "charged"),
            (3, "held"),
        ]
        stop(alice.api, subscription_id)
    audit_is_clean(service_api)

    shown = CliRunner().invoke(app, ["upkeep"], env=stack.env())
    assert shown.exit_code == 0, shown.stderr
    assert "charge due subscriptions" in shown.stdout and "0 period(s)" in shown.stdout


def test_a_round_calls_each_job_again_until_a_batch_comes_back_short(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow], upkeep_in_batches: UpkeepRun
) -> None:
    for _ in range(2):
        abandoned_order(service_api, make_user, db)
        expired_promotion(service_api, make_user, db)
    result = upkeep_in_batches(HOLDS_PER_CALL=1, LOTS_PER_CALL=1)
    jobs = json.loads(result.stdout, parse_float=Decimal)["jobs"]
    assert jobs["release_expired_holds"]["orders_released"] == 2
    expired = jobs["expire_credits"]
    assert (expired["lots_expired"], expired["users"], D(expired["credits_expired"])) == (2, 2, D(6))


def test_a_failing_job_does_not_keep_the_others_from_running(
    stack: LocalStack, service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    promoted = expired_promotion(service_api, make_user, db)
    release = "function public.release_expired_holds(timestamptz, integer)"
    db.execute(f"revoke execute on {release} from service_role")
    try:
        result = CliRunner().invoke(app, ["upkeep", "--json"], env=stack.env())
    finally:
        db.execute(f"grant execute on {release} to service_role")
    assert result.exit_code == 1
    done = json.loads(result.stdout, parse_float=Decimal)
    failed = done["jobs"]["release_expired_holds"]
    assert done["ok"] is False and failed["ok"] is False and "permission denied" in failed["error"]
    assert done["jobs"]["expire_credits"]["ok"] and done["jobs"]["refresh_ledger_rollups"]["ok"]
    assert balance(promoted) == 0
    assert "release_expired_holds" in result.stderr


class Scheduled:
    """`mycelium upkeep --every 1s --json` in a subprocess: one JSON round per line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [*MYCELIUM, "upkeep", "--every", "1s", "--json"],
            env={**os.environ, **env},
            preexec_fn=interruptible,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def next_round(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, self.process.stderr.read() if self.process.stderr else "no output"
        return json.loads(line, parse_float=Decimal)  # type: ignore[no-any-return]

    def stop(self) -> tuple[int, str]:
        """As `docker stop` and Kubernetes stop it: SIGTERM."""
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=15)
        return self.process.returncode, err


def test_scheduled_upkeep_runs_round_after_round_until_terminated(
    stack: LocalStack, service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    scheduled = Scheduled(stack.env())
    try:
        assert scheduled.next_round()["ok"] is True
        # An order abandoned now is released by a later round.
        alice = abandoned_order(service_api, make_user, db)
        for _ in range(3):
            if scheduled.next_round()["jobs"]["release_expired_holds"]["orders_released"] >= 1:
                break
        assert account(alice) == (D("10"), D("0"))
    finally:
        code, err = scheduled.stop()
    assert code == 0 and "Traceback" not in err, err


def test_scheduled_upkeep_reports_a_failed_round_and_goes_on(stack: LocalStack) -> None:
    scheduled = Scheduled({**stack.env(), "SUPABASE_URL": "http://127.0.0.1:9"})
    try:
        rounds = [scheduled.next_round(), scheduled.next_round()]
    finally:
        code, err = scheduled.stop()
    assert [round["ok"] for round in rounds] == [False, False]
    assert "Connection refused" in rounds[0]["error"] and "jobs" not in rounds[0]
    assert code == 0 and "Traceback" not in err and err.count("error:") >= 2, err


def test_upkeep_once_fails_with_a_one_line_error(stack: LocalStack) -> None:
    result = CliRunner().invoke(app, ["upkeep"], env={**stack.env(), "SUPABASE_URL": "http://127.0.0.1:9"})
    assert result.exit_code == 2 and result.stderr.startswith("error:")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("every", ["0", "5x", "-1m", "m", "1.5h"])
def test_upkeep_refuses_a_schedule_that_is_not_a_duration(stack: LocalStack, every: str) -> None:
    result = CliRunner().invoke(app, ["upkeep", "--every", every], env=stack.env())
    assert result.exit_code == 2 and "is not a duration such as 90s, 5m, 1h or 1d" in result.stderr
