"""`mycelium sql push/status/new` against real PostgreSQL databases, each test on a fresh one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from cli import migrations
from cli.dev.stack import LocalStack
from cli.dev.versions import PROJECT_ROOT
from cli.errors import UsageError
from tests.support import Api, after_schema_reload

SUPABASE_CLI = PROJECT_ROOT / "node_modules" / ".bin" / "supabase"

FIRST = "create table public.first (id int primary key);\n"
SECOND = "-- adds a column\nalter table public.first\n  add column label text;\n"


@pytest.fixture
def fresh_db(stack: LocalStack, superuser_conn: psycopg.Connection[TupleRow]) -> Iterator[str]:
    """An empty database owned by the migration role; yields its URL for `postgres`."""
    name = f"push_{uuid.uuid4().hex[:10]}"
    superuser_conn.execute(sql.SQL("create database {} owner postgres").format(sql.Identifier(name)))
    yield stack.db_url.replace("/postgres?", f"/{name}?")
    superuser_conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    folder = tmp_path / "sql"
    folder.mkdir()

    def write_file(file_name: str, text: str) -> Path:
        path = folder / file_name
        path.write_text(text)
        return path

    return write_file


def push(url: str, folder: Path, **options: object) -> migrations.PushResult:
    with migrations.connect(url) as conn:
        return migrations.push(conn, migrations.discover(folder), **options)  # type: ignore[arg-type]


def status(url: str, folder: Path) -> dict[str, migrations.State]:
    with migrations.connect(url) as conn:
        return {row.version: row.state for row in migrations.status(conn, migrations.discover(folder))}


def query(url: str, text: str) -> list[TupleRow]:
    with psycopg.connect(url) as conn:
        return conn.execute(text.encode()).fetchall()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_push_applies_in_version_order_and_a_repush_is_a_no_op(
    fresh_db: str, write: Callable[..., Path]
) -> None:
    second = write("20260102000000_second.sql", SECOND)
    write("20260101000000_first.sql", FIRST)

    result = push(fresh_db, second.parent)
    assert [f.file_name for f in result.applied] == ["20260101000000_first.sql", "20260102000000_second.sql"]
    assert query(fresh_db, "select version, name from supabase_migrations.schema_migrations order by 1") == [
        ("20260101000000", "first"),
        ("20260102000000", "second"),
    ]
    assert query(fresh_db, "select count(*) from supabase_migrations.mycelium_checksums") == [(2,)]
    assert query(fresh_db, "select label from public.first") == []

    again = push(fresh_db, second.parent)
    assert again.applied == [] and again.already_applied == 2
    assert set(status(fresh_db, second.parent).values()) == {migrations.State.APPLIED}


def test_a_failing_migration_rolls_back_the_whole_push_and_names_file_and_line(
    fresh_db: str, write: Callable[..., Path]
) -> None:
    write("20260101000000_first.sql", FIRST)
    broken = write(
        "20260102000000_broken.sql",
        "alter table public.first add column ok int;\n\nselect * from public.nowhere;\n",
    )

    with pytest.raises(migrations.MigrationFailed) as failure:
        push(fresh_db, broken.parent)

    message = str(failure.value)
    assert f"{broken}:3:" in message
    assert 'relation "public.nowhere" does not exist' in message
    assert query(fresh_db, "select to_regclass('public.first') is null") == [(True,)]
    assert query(fresh_db, "select to_regclass('supabase_migrations.schema_migrations') is null") == [(True,)]


def test_a_syntax_error_is_located_on_its_own_line(fresh_db: str, write: Callable[..., Path]) -> None:
    broken = write(
        "20260101000000_typo.sql",
        "create table public.ok (id int);\ncreate table public.t (\n  id intt\n  x\n);\n",
    )
    with pytest.raises(migrations.MigrationFailed) as failure:
        push(fresh_db, broken.parent)
    assert f"{broken}:4:" in str(failure.value)


def test_drift_is_reported_and_blocks_the_push(fresh_db: str, write: Callable[..., Path]) -> None:
    first = write("20260101000000_first.sql", FIRST)
    push(fresh_db, first.parent)
    first.write_text(FIRST + "create index on public.first (id);\n")
    write("20260102000000_second.sql", SECOND)

    assert status(fresh_db, first.parent) == {
        "20260101000000": migrations.State.DRIFTED,
        "20260102000000": migrations.State.PENDING,
    }
    with pytest.raises(migrations.DriftDetected) as drift:
        push(fresh_db, first.parent)
    assert drift.value.exit_code == 3
    assert "20260101000000_first.sql" in str(drift.value)
    assert query(fresh_db, "select count(*) from supabase_migrations.schema_migrations") == [(1,)]

    first.unlink()
    assert status(fresh_db, first.parent)["20260101000000"] is migrations.State.MISSING


def test_dry_run_lists_pending_and_applies_nothing(fresh_db: str, write: Callable[..., Path]) -> None:
    first = write("20260101000000_first.sql", FIRST)
    result = push(fresh_db, first.parent, dry_run=True)
    assert result.dry_run and [f.version for f in result.applied] == ["20260101000000"]
    assert query(fresh_db, "select to_regclass('public.first') is null") == [(True,)]


def test_concurrent_pushes_apply_each_migration_once(fresh_db: str, write: Callable[..., Path]) -> None:
    slow = write("20260101000000_slow.sql", "select pg_sleep(1);\n" + FIRST)
    results: list[migrations.PushResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(push(fresh_db, slow.parent))
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(len(r.applied) for r in results) == [0, 0, 1]
    assert query(fresh_db, "select count(*) from supabase_migrations.schema_migrations") == [(1,)]


def test_a_push_waiting_too_long_for_the_lock_fails_clearly(
    fresh_db: str, write: Callable[..., Path]
) -> None:
    first = write("20260101000000_first.sql", FIRST)
    with psycopg.connect(fresh_db) as holder:
        holder.execute("select pg_advisory_xact_lock(%s)", (migrations.PUSH_LOCK_KEY,))
        with pytest.raises(migrations.MigrationFailed, match="another push"):
            push(fresh_db, first.parent, lock_timeout_seconds=1)
    assert push(fresh_db, first.parent).applied


def test_bad_file_names_and_missing_folders_are_usage_errors(
    tmp_path: Path, write: Callable[..., Path]
) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        migrations.discover(tmp_path / "nowhere")
    bad = write("1_first.sql", FIRST)
    with pytest.raises(UsageError, match="14-digit version"):
        migrations.discover(bad.parent)


def test_new_creates_the_next_version(write: Callable[..., Path]) -> None:
    existing = write("29990101000000_far_future.sql", FIRST)
    created = migrations.new_migration(existing.parent, "orders")
    assert created.name == "29990101000001_orders.sql"
    assert [f.name for f in migrations.discover(existing.parent)] == ["far_future", "orders"]
    with pytest.raises(UsageError):
        migrations.new_migration(existing.parent, "Bad Name")


def test_a_new_migration_carries_the_security_checklist_and_pushes_as_a_no_op(
    fresh_db: str, write: Callable[..., Path]
) -> None:
    first = write("20260101000000_first.sql", FIRST)
    created = migrations.new_migration(first.parent, "order_notes")
    text = created.read_text()
    assert text.startswith("-- Order notes: ")
    for rule in (
        "security definer",
        "set search_path = ''",
        "require_admin()",
        "revoke execute on function public.order_notes(text) from public, anon",
        "grant execute on function public.order_notes(text) to",
        "enable row level security",
        "sql/privileges.manifest",
        "sql/RELEASED",
        "Expand, then contract",
    ):
        assert rule in text, rule
    # Comments only, until someone writes the change: pushing it as it is changes nothing.
    assert [f.file_name for f in push(fresh_db, first.parent).applied] == [first.name, created.name]
    assert query(fresh_db, "select count(*) from pg_proc where proname = 'order_notes'") == [(0,)]


# -- the released baseline ---------------------------------------------------------------------
SQL_DIR = PROJECT_ROOT / "sql"


def released() -> list[tuple[str, str, str]]:
    """sql/RELEASED: (release, file name, sha256) a line, comments and blank lines left out."""
    lines = (line.split() for line in (SQL_DIR / "RELEASED").read_text().splitlines())
    return [(fields[0], fields[1], fields[2]) for fields in lines if fields and not fields[0].startswith("#")]


def test_released_migrations_never_change() -> None:
    files = {f.file_name: f for f in migrations.discover(SQL_DIR)}
    listed = released()
    assert {release for release, _, _ in listed} >= {"0.1.0"}
    changed = [name for _, name, checksum in listed if name not in files or files[name].checksum != checksum]
    assert not changed, (
        "released migrations were changed or removed (they never change: a change of the schema is a "
        f"new file, `mycelium sql new NAME`): {changed}"
    )


def test_every_migration_is_released_in_version_order_or_comes_after_the_last_release() -> None:
    files = migrations.discover(SQL_DIR)
    listed = {name: release for release, name, _ in released()}
    last_released = max(f.version for f in files if f.file_name in listed)
    early = [f.file_name for f in files if f.file_name not in listed and f.version < last_released]
    assert not early, f"not released, yet older than the last released migration: {early}"
    releases = [
        tuple(int(part) for part in listed[f.file_name].split(".")) for f in files if f.file_name in listed
    ]
    assert releases == sorted(releases), "a release's files sort after every file of the releases before it"


def test_cli_exit_codes_and_one_line_errors(fresh_db: str, write: Callable[..., Path]) -> None:
    first = write("20260101000000_first.sql", FIRST)
    folder = str(first.parent)

    planned = cli("sql", "push", "--db-url", fresh_db, "--dir", folder, "--dry-run", "--json")
    pending = {"dry_run": True, "applied": ["20260101000000_first.sql"], "already_applied": 0}
    assert json.loads(planned.stdout) == pending  # what a push would apply, flagged by dry_run
    applied = cli("sql", "push", "--db-url", fresh_db, "--dir", folder, "--json")
    assert applied.returncode == 0, applied.stderr
    assert '"20260101000000_first.sql"' in applied.stdout

    assert cli("sql", "push", "--db-url", fresh_db, "--dir", folder).returncode == 0

    first.write_text(FIRST + "-- edited\nselect 1;\n")
    drift = cli("sql", "push", "--db-url", fresh_db, "--dir", folder)
    assert drift.returncode == 3 and "refusing to push" in drift.stderr
    assert cli("sql", "status", "--db-url", fresh_db, "--dir", folder).returncode == 3
    first.write_text(FIRST)

    write("20260102000000_broken.sql", "select nonsense from nowhere;\n")
    failed = cli("sql", "push", "--db-url", fresh_db, "--dir", folder)
    assert failed.returncode == 1 and "20260102000000_broken.sql:1:" in failed.stderr

    (first.parent / "20260103_too_short.sql").write_text("select 1;\n")
    badly_named = cli("sql", "push", "--db-url", fresh_db, "--dir", folder)
    assert badly_named.returncode == 2 and "20260103_too_short.sql" in badly_named.stderr
    (first.parent / "20260103_too_short.sql").unlink()

    wrong_password = fresh_db.replace("postgres:", "postgres:wrong", 1)
    for args in (
        ["--db-url", wrong_password, "--dir", folder],
        ["--db-url", "postgresql://postgres@127.0.0.1:1/x", "--dir", folder],
        ["--db-url", fresh_db, "--dir", folder + "/missing"],
    ):
        outcome = cli("sql", "push", *args)
        assert outcome.returncode == 2, outcome.stderr
        assert "Traceback" not in outcome.stderr
        assert len(outcome.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not SUPABASE_CLI.exists(), reason="the Supabase CLI is not installed: run `npm install`")
def test_the_supabase_cli_and_we_agree_on_what_is_applied(
    fresh_db: str, stack: LocalStack, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    cli_migrations = project / "supabase" / "migrations"
    cli_migrations.mkdir(parents=True)
    (cli_migrations / "20260101000000_first.sql").write_text(FIRST)
    (cli_migrations / "20260102000000_second.sql").write_text(SECOND)

    # We push, the CLI lists them as applied on the remote side.
    push(fresh_db, cli_migrations)
    listed = subprocess.run(
        [str(SUPABASE_CLI), "migration", "list", "--db-url", fresh_db],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if "2026010" in line]
    assert len(rows) == 2
    assert all(line.count("2026010") >= 2 for line in rows), listed.stdout  # both Local and Remote columns

    # The CLI pushes to another database; we see that one as up to date, with no drift.
    other = f"cli_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(stack.superuser_db_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {} owner postgres").format(sql.Identifier(other)))
    other_url = stack.db_url.replace("/postgres?", f"/{other}?")
    try:
        pushed = subprocess.run(
            [str(SUPABASE_CLI), "db", "push", "--db-url", other_url, "--yes"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert pushed.returncode == 0, pushed.stderr
        assert set(status(other_url, cli_migrations).values()) == {migrations.State.APPLIED}
        assert push(other_url, cli_migrations).applied == []
        (cli_migrations / "20260102000000_second.sql").write_text(
            SECOND + "create index on public.first (label);\n"
        )
        assert status(other_url, cli_migrations)["20260102000000"] is migrations.State.DRIFTED
    finally:
        with psycopg.connect(stack.superuser_db_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(other)))


def test_postgrest_sees_a_pushed_function_at_once(stack: LocalStack, tmp_path: Path, anon_api: Api) -> None:
    """The push ends with NOTIFY pgrst: no restart needed for a new function to answer."""
    name = f"pushed_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "extra"
    folder.mkdir()
    version = f"2999{uuid.uuid4().int % 10**10:010d}"
    (folder / f"{version}_{name}.sql").write_text(
        f"create function public.{name}() returns text language sql as $$ select 'fresh' $$;\n"
    )
    try:
        push(stack.db_url, folder)
        assert after_schema_reload(lambda: anon_api.rpc(name)).json() == "fresh"
    finally:
        with psycopg.connect(stack.superuser_db_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop function public.{}()").format(sql.Identifier(name)))
            admin.execute("delete from supabase_migrations.mycelium_checksums where version = %s", (version,))
            admin.execute("delete from supabase_migrations.schema_migrations where version = %s", (version,))


# -- the baseline's layout -----------------------------------------------------------------------
OUR_OBJECT = r"(?:public|mycelium_private|mycelium_gate)\.\w+"
CREATED = re.compile(
    rf"\bcreate\s+(?:or\s+replace\s+)?(?:table|view|function|type|domain|schema)\s+(?:if\s+not\s+exists\s+)?({OUR_OBJECT})",
    re.IGNORECASE,
)


def test_dependencies_point_one_way_each_migration_names_only_what_it_or_an_earlier_one_creates() -> None:
    """Credits first, the marketplace on top, audits and jobs after both: a function body is bound
    late, so PostgreSQL itself would not notice a migration calling what a later one creates."""
    texts = {f.file_name: re.sub(r"--[^\n]*", "", f.text) for f in migrations.discover(SQL_DIR)}
    # Where each object is first created: a later migration may redefine it (create or replace).
    created_in: dict[str, str] = {}
    for file, text in texts.items():
        for name in CREATED.findall(text):
            created_in.setdefault(name, file)
    order = list(texts)
    backwards = sorted(
        f"{file} names {name} (created in {created_in[name]})"
        for file, text in texts.items()
        for name in set(re.findall(OUR_OBJECT, text))
        if name in created_in and order.index(created_in[name]) > order.index(file)
    )
    assert not backwards, "\n".join(backwards)
