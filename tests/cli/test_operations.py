"""`mycelium health`, `metrics serve` and `credits watch`, run as an operator runs them (real
subprocesses, Ctrl-C included) against the session's stack."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import generate_latest
from psycopg.rows import TupleRow
from typer.testing import CliRunner

from cli import keys
from cli.common import ApiSettings
from cli.dev.processes import free_port_base
from cli.dev.stack import LocalStack
from cli.main import app
from cli.metrics import exporter, migration_states
from cli.migrations import discover
from mycelium_client import MyceliumClient
from tests.support import MYCELIUM, REPO, Api, User, interruptible
from tests.support.client import Doubles
from tests.support.marketplace import abandoned_order, buyer, list_product, placed


@pytest.fixture
def stack_env(stack: LocalStack) -> dict[str, str]:
    return {**os.environ, **stack.env()}


@pytest.fixture
def bare_gateway(stack: LocalStack) -> Iterator[None]:
    """The local stack as `mycelium dev up` leaves it: no Auth and no Realtime server behind the
    gateway (other tests may have put doubles there; they get them back afterwards)."""
    auth, realtime = stack.settings.auth_upstream, stack.settings.realtime_upstream
    stack.set_upstreams(auth=None, realtime=None)
    stack.restart_gateway()
    yield
    stack.set_upstreams(auth=auth, realtime=realtime)
    stack.restart_gateway()


def health(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(app, ["health", "--json", *args], env=env)
    return result.exit_code, json.loads(result.stdout)


def by_name(report: dict[str, Any]) -> dict[str, Any]:
    return {check["name"]: check for check in report["checks"]}


@pytest.mark.usefixtures("bare_gateway")
def test_health_reports_auth_and_realtime_missing_from_the_local_stack(stack_env: dict[str, str]) -> None:
    assert CliRunner().invoke(app, ["upkeep"], env=stack_env).exit_code == 0  # whatever other tests left
    code, report = health(stack_env)
    checks = by_name(report)
    assert code == 1 and report["ok"] is False
    assert [name for name, check in checks.items() if check["ok"]] == [
        "database",
        "postgrest",
        "migrations",
        "ledger_audit",
        "upkeep",
    ]
    assert (
        "HTTP 503" in checks["auth"]["detail"] and "not part of the local stack" in checks["auth"]["detail"]
    )
    assert checks["realtime"]["detail"] == "websocket refused: HTTP 503"
    lines = CliRunner().invoke(app, ["health"], env=stack_env).stdout.splitlines()
    assert len(lines) == 7 and lines[2].startswith("FAIL auth")


def test_health_fails_when_the_periodic_jobs_fall_behind(
    stack_env: dict[str, str],
    service_api: Api,
    make_user: Callable[..., User],
    db: psycopg.Connection[TupleRow],
) -> None:
    abandoned_order(service_api, make_user, db)
    upkeep = by_name(health(stack_env)[1])["upkeep"]
    assert not upkeep["ok"]
    assert re.fullmatch(
        r"overdue: release_expired_holds \d+ \(since \d{4}-\d\d-\d\d \d\d:\d\d UTC\); "
        r"is `mycelium upkeep` running, and no session holding a transaction open\?",
        upkeep["detail"],
    ), upkeep["detail"]
    assert CliRunner().invoke(app, ["upkeep"], env=stack_env).exit_code == 0
    caught_up = by_name(health(stack_env)[1])["upkeep"]
    assert caught_up == {"name": "upkeep", "ok": True, "detail": "nothing overdue"}


def test_health_fails_on_pending_migrations_and_an_unreachable_database(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    sql = tmp_path / "sql"
    shutil.copytree(REPO / "sql", sql)
    (sql / "20991231000000_not_yet.sql").write_text("select 1;\n")
    _, report = health({**stack_env, "MYCELIUM_SQL_DIR": str(sql)})
    assert by_name(report)["migrations"] == {
        "name": "migrations",
        "ok": False,
        "detail": "20991231000000 pending",
    }
    _, report = health(stack_env, "--db-url", "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2")
    checks = by_name(report)
    assert not checks["database"]["ok"] and "cannot connect" in checks["database"]["detail"]
    assert checks["postgrest"]["ok"]


def test_metrics_are_scraped_over_http_and_ctrl_c_stops_the_exporter(
    stack_env: dict[str, str], stack: LocalStack, make_user: Callable[..., User], service_api: Api
) -> None:
    # A pending order: its hold is outstanding, and it counts among the orders.
    farmer = make_user("farmer")
    placed(buyer(service_api, make_user), (list_product(farmer)["id"], 2))
    port = free_port_base(span=2, start=47000) + 1  # the base itself is not checked
    exporter = subprocess.Popen(
        [*MYCELIUM, "metrics", "serve", "--port", str(port), "--address", "127.0.0.1"],
        env=stack_env,
        preexec_fn=interruptible,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert exporter.stdout is not None
        first = exporter.stdout.readline()
        assert "Serving metrics" in first, first + (exporter.stderr.read() if exporter.stderr else "")
        samples = mycelium_samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text)
        with MyceliumClient(stack.api_url, stack.service_role_key) as client:
            summary = client.admin.credit_summary()
        # Prometheus samples are float64: equal to about 15 significant digits.
        for name, exact in (
            ("mycelium_credits_in_circulation", summary.circulation),
            ("mycelium_credits_issued_total", summary.issued),
        ):
            assert abs(Decimal(samples[name]) - exact) <= exact * Decimal("1e-14"), name
        for name in ("mycelium_credits_spent_total", "mycelium_credits_expired_total"):
            assert name in samples
        assert Decimal(samples["mycelium_holds_outstanding"]) == summary.held >= 5
        assert Decimal(samples['mycelium_orders{status="pending"}']) >= 1
        assert samples["mycelium_ledger_audit_ok"] == "1.0" and samples["mycelium_scrape_ok"] == "1.0"
        # Prometheus sets `job` and `instance` on every series it scrapes: the exporter must not.
        assert not [name for name in samples if re.search(r"[{,](job|instance)=", name)]
        for task in ("release_expired_holds", "expire_credits", "refresh_ledger_rollups"):
            assert f'mycelium_upkeep_overdue{{task="{task}"}}' in samples
        # The session's stack pushed every migration of this checkout, which the exporter ships.
        assert samples['mycelium_migrations{state="applied"}'] == f"{len(discover(REPO / 'sql'))}.0"
        for state in ("pending", "drifted", "missing"):
            assert samples[f'mycelium_migrations{{state="{state}"}}'] == "0.0", state
        assert (
            1
            <= float(samples["mycelium_database_connections"])
            < float(samples["mycelium_database_max_connections"])
        )
        assert samples['mycelium_requests_total{status="200"}'] == "6.0"  # this scrape's six reads
    finally:
        exporter.send_signal(signal.SIGINT)
        out, err = exporter.communicate(timeout=15)
    assert exporter.returncode == 0, err
    assert "Stopped." in out and "Traceback" not in err


def test_migrations_the_database_lacks_or_altered_are_counted(stack: LocalStack) -> None:
    with MyceliumClient(stack.api_url, stack.service_role_key) as client:
        history = client.admin.applied_migrations()
    latest, altered = history[-1], history[0]
    lacking = [row for row in history if row is not latest]
    lacking[0] = altered.model_copy(update={"checksum": "0" * 64})
    lacking.append(altered.model_copy(update={"version": "19990101000000", "name": "gone"}))
    states = {metric.labels["state"]: metric.value for metric in migration_states(lacking).samples}
    assert states == {"applied": len(history) - 2, "pending": 1, "drifted": 1, "missing": 1}


def mycelium_samples(page: str) -> dict[str, str]:
    """The exporter's samples by name (with labels) from a /metrics page."""
    return {
        line.split(" ")[0]: line.split(" ")[1] for line in page.splitlines() if line.startswith("mycelium_")
    }


def test_a_failed_scrape_says_so_and_trips_the_documented_audit_alert(stack: LocalStack) -> None:
    forged = keys.api_key("not-the-stacks-secret-not-the-stacks-secret", "service_role")
    served = exporter(ApiSettings(stack.api_url, forged))
    try:
        samples = mycelium_samples(generate_latest(served.registry).decode())
    finally:
        served.close()
    assert samples["mycelium_scrape_ok"] == "0.0"
    # docs/deploy.md alerts on min(mycelium_ledger_audit_ok) < 1: an unchecked ledger must trip it.
    assert samples["mycelium_ledger_audit_ok"] == "0.0"
    # No numbers rather than stale ones.
    assert not any(name.startswith(("mycelium_credits_", "mycelium_upkeep_")) for name in samples)
    assert samples['mycelium_requests_total{status="401"}'] == "1.0"


class Watcher:
    """`mycelium credits watch ... --json` in a subprocess: one JSON change per line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [*MYCELIUM, "credits", "watch", *args, "--json"],
            env=env,
            preexec_fn=interruptible,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None and self.process.stdout is not None
        started = self.process.stderr.readline()
        assert "watching" in started, started + self.process.stderr.read()

    def next_change(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        return json.loads(self.process.stdout.readline(), parse_float=Decimal)  # type: ignore[no-any-return]

    def interrupt(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        _, err = self.process.communicate(timeout=15)
        return self.process.returncode, err


def buy(env: dict[str, str], user: User, usd: str) -> None:
    reference = f"watch-{uuid.uuid4()}"
    bought = CliRunner().invoke(
        app, ["credits", "purchase", user.email, "--usd", usd, "--payment-ref", reference], env=env
    )
    assert bought.exit_code == 0, bought.stderr


def test_watch_through_the_database_feed(
    stack_env: dict[str, str], stack: LocalStack, make_user: Callable[..., User]
) -> None:
    watched, other = make_user(), make_user()
    watcher = Watcher([watched.email, "--db-url", stack.db_url], stack_env)
    try:
        buy(stack_env, other, "1")  # not watched: never shown
        buy(stack_env, watched, "12.5")
        change = watcher.next_change()
        assert (change["user_id"], change["balance"], change["source"]) == (watched.id, "12.5", "feed")
    finally:
        code, err = watcher.interrupt()
    assert code == 0 and "Traceback" not in err


def test_watch_through_realtime(
    stack_env: dict[str, str],
    make_user: Callable[..., User],
    doubles: Doubles,
) -> None:
    user = make_user()
    watcher = Watcher([user.email], stack_env)
    try:
        first = watcher.next_change()
        assert (first["balance"], first["source"]) == ("0", "resync")  # the balance when subscribed
        buy(stack_env, user, "7.25")
        change = watcher.next_change()
        assert change["balance"] == "7.25" and change["source"] in ("broadcast", "postgres_changes")
    finally:
        code, err = watcher.interrupt()
    assert code == 0 and "Traceback" not in err


def test_watching_everyone_needs_the_database_feed(stack_env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["credits", "watch"], env=stack_env)
    assert result.exit_code == 2 and "pass --db-url to watch everyone" in result.stderr


def test_a_lock_timeout_below_one_second_is_a_usage_error(stack_env: dict[str, str]) -> None:
    """PostgreSQL reads a lock_timeout of 0 as "wait for ever" and refuses a negative one."""
    for seconds in ("-1", "0"):
        result = CliRunner().invoke(app, ["sql", "push", "--lock-timeout", seconds], env=stack_env)
        assert result.exit_code == 2, result.output
        assert "--lock-timeout" in result.stderr
