"""`mycelium health`: is the configured stack serving? The database, PostgREST, Auth, Realtime,
the migrations, the ledger audit and the periodic jobs, one line each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC

import httpx
import psycopg
import typer
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect as websocket_connect

from cli import migrations
from cli.common import (
    ApiSettings,
    DbUrlOption,
    JsonOption,
    ServiceKeyOption,
    UrlOption,
    reported,
    resolve_api,
    resolve_db_url,
)
from cli.errors import EXIT_FAILED, CliError
from cli.output import emit_json, out
from mycelium_client import MyceliumClient, MyceliumError, UpkeepBacklog

TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class Unhealthy(Exception):
    """A check's failure, in one line."""


def _http(api: ApiSettings, path: str) -> str:
    headers = {"apikey": api.service_role_key, "Authorization": f"Bearer {api.service_role_key}"}
    try:
        response = httpx.get(f"{api.url}{path}", headers=headers, timeout=TIMEOUT_SECONDS)
    except httpx.TransportError as error:
        raise Unhealthy(f"unreachable: {error}") from None
    if response.status_code != 200:
        raise Unhealthy(f"HTTP {response.status_code}: {' '.join(response.text.split())[:160]}")
    return f"HTTP 200 from {path}"


def _realtime(api: ApiSettings) -> str:
    scheme, rest = api.url.split("://", 1)
    url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}/realtime/v1/websocket?apikey={api.service_role_key}&vsn=1.0.0"
    try:
        with websocket_connect(url, open_timeout=TIMEOUT_SECONDS):
            return "websocket accepted"
    except InvalidStatus as refused:
        raise Unhealthy(f"websocket refused: HTTP {refused.response.status_code}") from None
    except (OSError, WebSocketException, TimeoutError) as error:
        raise Unhealthy(f"unreachable: {error}") from None


def _database(db_url: str) -> str:
    with migrations.connect(db_url) as conn:
        row = conn.execute("select current_setting('server_version')").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


def _migrations(db_url: str) -> str:
    files = migrations.discover(migrations.resolve_sql_dir(None))
    with migrations.connect(db_url) as conn:
        states = migrations.status(conn, files)
    wrong = [f"{s.version} {s.state.value}" for s in states if s.state is not migrations.State.APPLIED]
    if wrong:
        raise Unhealthy(", ".join(wrong))
    return f"{len(states)} applied, none pending, no drift"


def _audit(api: ApiSettings) -> str:
    with MyceliumClient(api.url, api.service_role_key, timeout=TIMEOUT_SECONDS * 6) as client:
        findings = client.admin.audit_ledger()
    if findings:
        raise Unhealthy(
            f"{len(findings)} broken invariant(s), first: {findings[0].check_name} {findings[0].detail}"
        )
    return "clean"


def _overdue(job: UpkeepBacklog) -> str:
    since = "" if job.due_since is None else f" (since {job.due_since.astimezone(UTC):%Y-%m-%d %H:%M} UTC)"
    return f"{job.job} {job.overdue}{since}"


def _upkeep(api: ApiSettings) -> str:
    with MyceliumClient(api.url, api.service_role_key, timeout=TIMEOUT_SECONDS * 6) as client:
        behind = [job for job in client.admin.upkeep_backlog() if job.overdue]
    if behind:
        overdue = ", ".join(_overdue(job) for job in behind)
        raise Unhealthy(
            f"overdue: {overdue}; is `mycelium upkeep` running, and no session holding a transaction open?"
        )
    return "nothing overdue"


def _run(name: str, check: Callable[[], str]) -> Check:
    try:
        return Check(name, True, check())
    except Unhealthy as failure:
        return Check(name, False, str(failure))
    except (CliError, MyceliumError, psycopg.Error, httpx.HTTPError) as failure:
        return Check(name, False, " ".join(str(failure).split()))


def run_checks(api: ApiSettings, db_url: str | None) -> list[Check]:
    def database_url() -> str:
        if db_url is None:
            raise Unhealthy("no database URL: pass --db-url or set MYCELIUM_DB_URL")
        return db_url

    return [
        _run("database", lambda: _database(database_url())),
        _run("postgrest", lambda: _http(api, "/rest/v1/")),
        _run("auth", lambda: _http(api, "/auth/v1/health")),
        _run("realtime", lambda: _realtime(api)),
        _run("migrations", lambda: _migrations(database_url())),
        _run("ledger_audit", lambda: _audit(api)),
        _run("upkeep", lambda: _upkeep(api)),
    ]


@reported
def health(
    db_url: DbUrlOption = None,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check every part of the stack; exit 1 if any check fails.

    One line per check:
      database      PostgreSQL answers
      postgrest     the REST API answers
      auth          Supabase Auth answers
      realtime      the Realtime websocket opens
      migrations    every migration applied, none drifted or missing
      ledger_audit  every ledger invariant holds
      upkeep        no periodic job overdue

    Example: mycelium health --json
    """
    api = resolve_api(url, service_key)
    try:
        database = resolve_db_url(db_url)
    except CliError:
        database = None
    checks = run_checks(api, database)
    if as_json:
        emit_json({"ok": all(c.ok for c in checks), "checks": [vars(c) for c in checks]})
    else:
        for check in checks:
            mark = "[green]ok  [/green]" if check.ok else "[red]FAIL[/red]"
            out.print(f"{mark} {check.name:<13} {check.detail}", soft_wrap=True)  # one line per check
    if not all(c.ok for c in checks):
        raise typer.Exit(EXIT_FAILED)
