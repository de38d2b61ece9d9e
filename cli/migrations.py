"""`sql/` migrations pushed to a Supabase database, recorded where the Supabase CLI records them.

Applied versions go to `supabase_migrations.schema_migrations` (the CLI's own table, so
`supabase migration list` agrees with us); a checksum of each applied file goes to a table of
ours beside it, which is how drift (an applied file edited afterwards) is found.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import psycopg
from psycopg import sql

from cli.errors import EXIT_DRIFT, CliError, UsageError
from cli.sqlsplit import Statement, split_statements

FILE_NAME = re.compile(r"^(?P<version>\d{14})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
NEW_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
# Any constant works as long as every pusher agrees on it: "mycelium" as a big-endian int64.
PUSH_LOCK_KEY = int.from_bytes(b"mycelium", "big", signed=True)
HISTORY_SCHEMA = "supabase_migrations"
DEFAULT_LOCK_TIMEOUT_SECONDS = 60


class MigrationFailed(CliError):
    """A migration raised an error; everything in the push was rolled back."""


class DriftDetected(CliError):
    exit_code = EXIT_DRIFT


@dataclass(frozen=True)
class MigrationFile:
    version: str
    name: str
    path: Path
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def file_name(self) -> str:
        return self.path.name


class State(StrEnum):
    APPLIED = "applied"
    PENDING = "pending"
    DRIFTED = "drifted"
    MISSING = "missing"  # recorded as applied, but no file has that version any more


@dataclass(frozen=True)
class MigrationStatus:
    version: str
    name: str
    state: State


@dataclass(frozen=True)
class PushResult:
    applied: list[MigrationFile]
    already_applied: int
    dry_run: bool


def bundled_sql_dir() -> Path:
    """The migrations shipped with this install: `sql/` beside the package in a checkout, or the
    copy packed into the wheel."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "sql", package / "migrations_bundle"):
        if candidate.is_dir():
            return candidate
    return package.parent / "sql"


def resolve_sql_dir(option: Path | None) -> Path:
    """`--dir`, else `MYCELIUM_SQL_DIR`, else `./sql`, else the migrations shipped with this install."""
    if option is not None:
        return option
    if env := os.environ.get("MYCELIUM_SQL_DIR"):
        return Path(env)
    if Path("sql").is_dir():
        return Path("sql")
    return bundled_sql_dir()


def discover(directory: Path) -> list[MigrationFile]:
    """Every `<14-digit version>_<name>.sql` in `directory`, in version order."""
    if not directory.is_dir():
        raise UsageError(f"migrations folder {directory} does not exist (pass --dir or set MYCELIUM_SQL_DIR)")
    found: dict[str, MigrationFile] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = FILE_NAME.match(path.name)
        if not match:
            raise UsageError(
                f"{path}: migration files are named <14-digit version>_<lowercase_name>.sql, "
                "for example 20261126120000_credits.sql"
            )
        version = match["version"]
        if version in found:
            raise UsageError(f"{path}: version {version} is also used by {found[version].path.name}")
        found[version] = MigrationFile(version, match["name"], path, path.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


# What `mycelium sql new` writes: comments only (a push of it changes nothing) that carry the
# rules every migration after the released baseline follows, and the shape of an API function.
TEMPLATE = """\
-- {title}: what this migration changes, and why.
--
-- Released migrations never change (sql/RELEASED lists them): a change of the schema is a new
-- file like this one. Expand, then contract: add what old and new clients can both live with,
-- and drop or rename the old only in a later release, once no client uses it (docs/deploy.md,
-- "Upgrading"). A push applies every pending file in one transaction.
--
-- Checklist, for every function the API reaches (schema public):
--   [ ] security definer, with set search_path = '' (so every name is schema-qualified)
--   [ ] the caller checked first: mycelium_private.require_admin(), require_service(),
--       require_signed_in('...'), or authorize(<who may>, '<message>')
--   [ ] arguments checked by the helpers (check_amount, check_text, ...); refusals through
--       mycelium_private.fail('<stable reason>', ...); credits move only through
--       mycelium_private.create_transfer
--   [ ] revoke execute on function ... from public, anon (Supabase grants anon every new one)
--   [ ] grant execute on function ... to the roles that may call it
-- and for every table and view in public:
--   [ ] tables: enable row level security, with policies; views: security_invoker = true
--   [ ] revoke all ... from anon, authenticated, service_role (identity sequences too), then
--       grant back only what the API needs
--   [ ] its line in sql/privileges.manifest (tests/security/test_privileges.py holds them equal)
--
-- create or replace function public.{name}(p_example text)
-- returns jsonb
-- language plpgsql
-- security definer
-- set search_path = ''
-- as $$
-- begin
--   perform mycelium_private.require_admin();
--   ...
-- end;
-- $$;
-- revoke execute on function public.{name}(text) from public, anon;
-- grant execute on function public.{name}(text) to authenticated, service_role;
"""


def new_migration(directory: Path, name: str, *, now: datetime | None = None) -> Path:
    """Create a migration file from the template whose version sorts after every existing one."""
    if not NEW_NAME.match(name):
        raise UsageError(f"migration name {name!r}: use lowercase letters, digits and underscores")
    existing = discover(directory)
    stamp = int((now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S"))
    if existing:
        stamp = max(stamp, int(existing[-1].version) + 1)
    path = directory / f"{stamp:014d}_{name}.sql"
    path.write_text(TEMPLATE.format(title=name.replace("_", " ").capitalize(), name=name), encoding="utf-8")
    return path


def connect(db_url: str) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection, turning every reason it cannot be opened into one readable line."""
    try:
        return psycopg.connect(db_url, connect_timeout=10, autocommit=False)
    except psycopg.Error as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise UsageError(f"cannot connect to the database: {reason}") from None
    except Exception as error:  # malformed URLs raise plain exceptions from libpq's parser
        raise UsageError(f"cannot connect to the database: {error}") from None


# A migration history: version -> name, checksum (None where the Supabase CLI pushed it), statements.
Applied = dict[str, tuple[str, str | None, list[str]]]


def _normalized(text: str) -> str:
    """`text` without comments, white space and semicolons: what survives any statement splitter."""
    return "".join("".join(statement.text.split()) for statement in split_statements(text))


def _history_exists(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute("select to_regclass('supabase_migrations.schema_migrations') is not null").fetchone()
    return bool(row and row[0])


def _applied(conn: psycopg.Connection[tuple[object, ...]]) -> Applied:
    """Applied versions: name, our checksum (None where another tool pushed it), statements."""
    if not _history_exists(conn):
        return {}
    has_checksums = conn.execute(
        "select to_regclass('supabase_migrations.mycelium_checksums') is not null"
    ).fetchone()
    checksum_join = (
        "left join supabase_migrations.mycelium_checksums c using (version)"
        if has_checksums and has_checksums[0]
        else "left join (select null::text as version, null::text as checksum) c using (version)"
    )
    rows = conn.execute(
        f"select m.version, coalesce(m.name, ''), c.checksum, coalesce(m.statements, '{{}}') "
        f"from supabase_migrations.schema_migrations m {checksum_join}"
    ).fetchall()
    return {str(v): (str(n), c if c is None else str(c), list(s)) for v, n, c, s in rows}  # type: ignore[call-overload]


def _state(file: MigrationFile, record: tuple[str, str | None, list[str]] | None) -> State:
    if record is None:
        return State.PENDING
    _, checksum, statements = record
    if checksum is not None:
        return State.APPLIED if checksum == file.checksum else State.DRIFTED
    # Pushed by the Supabase CLI: it keeps the statements it ran, which we compare instead.
    return State.APPLIED if _normalized(";\n".join(statements)) == _normalized(file.text) else State.DRIFTED


def status(conn: psycopg.Connection[tuple[object, ...]], files: list[MigrationFile]) -> list[MigrationStatus]:
    """Every migration known to the folder or the database, in version order."""
    applied = _applied(conn)
    conn.rollback()
    return compare(files, applied)


def compare(files: list[MigrationFile], applied: Applied) -> list[MigrationStatus]:
    """The state of every migration in `files` or in the history `applied` (version: name,
    checksum, statements), in version order."""
    rows = [MigrationStatus(f.version, f.name, _state(f, applied.get(f.version))) for f in files]
    known = {f.version for f in files}
    rows += [
        MigrationStatus(version, record[0], State.MISSING)
        for version, record in applied.items()
        if version not in known
    ]
    return sorted(rows, key=lambda row: row.version)


def _ensure_history(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(
        """
        create schema if not exists supabase_migrations;
        create table if not exists supabase_migrations.schema_migrations (
          version text not null primary key,
          statements text[],
          name text
        );
        create table if not exists supabase_migrations.mycelium_checksums (
          version text primary key,
          checksum text not null,
          applied_at timestamptz not null default now(),
          applied_by text not null default current_user
        );
        """
    )


@contextmanager
def _push_lock(conn: psycopg.Connection[tuple[object, ...]], lock_timeout_seconds: int) -> Iterator[None]:
    """Hold the push lock for the transaction; a second push waits for it, then sees what the
    first one applied."""
    conn.execute(sql.SQL("set local lock_timeout = {}").format(sql.Literal(f"{lock_timeout_seconds}s")))
    try:
        conn.execute("select pg_advisory_xact_lock(%s)", (PUSH_LOCK_KEY,))
    except psycopg.errors.LockNotAvailable:
        conn.rollback()
        raise MigrationFailed(
            f"another push has held the migration lock for over {lock_timeout_seconds}s; nothing was applied"
        ) from None
    conn.execute("set local lock_timeout = 0")
    yield


def _failure(file: MigrationFile, statement: Statement, error: psycopg.Error) -> MigrationFailed:
    line = statement.line
    position = error.diag.statement_position
    if position:
        line += statement.text[: int(position) - 1].count("\n")
    message = error.diag.message_primary or str(error).strip()
    extra = "; ".join(part for part in (error.diag.message_detail, error.diag.message_hint) if part)
    return MigrationFailed(
        f"{file.path}:{line}: {message}{f' ({extra})' if extra else ''}; the whole push was rolled back"
    )


def push(
    conn: psycopg.Connection[tuple[object, ...]],
    files: list[MigrationFile],
    *,
    dry_run: bool = False,
    lock_timeout_seconds: int = DEFAULT_LOCK_TIMEOUT_SECONDS,
) -> PushResult:
    """Apply every pending migration in one transaction, or none of them."""
    try:
        with _push_lock(conn, lock_timeout_seconds):
            _ensure_history(conn)
            applied = _applied(conn)
            states = {f.version: _state(f, applied.get(f.version)) for f in files}
            drifted = [f.file_name for f in files if states[f.version] is State.DRIFTED]
            if drifted:
                raise DriftDetected(
                    "refusing to push: applied migrations changed since they were applied: "
                    + ", ".join(drifted)
                    + " (restore them, or add a new migration with the change)"
                )
            pending = [f for f in files if states[f.version] is State.PENDING]
            if dry_run:
                conn.rollback()
                return PushResult(pending, len(files) - len(pending), dry_run=True)
            conn.execute("set local statement_timeout = 0")
            for file in pending:
                _apply(conn, file)
            if pending:
                conn.execute("notify pgrst, 'reload schema'")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return PushResult(pending, len(files) - len(pending), dry_run=False)


def _apply(conn: psycopg.Connection[tuple[object, ...]], file: MigrationFile) -> None:
    statements = split_statements(file.text)
    for statement in statements:
        try:
            conn.execute(statement.text.encode(), prepare=False)
        except psycopg.Error as error:
            raise _failure(file, statement, error) from None
    conn.execute(
        "insert into supabase_migrations.schema_migrations (version, name, statements) values (%s, %s, %s)",
        (file.version, file.name, [s.text for s in statements]),
    )
    conn.execute(
        "insert into supabase_migrations.mycelium_checksums (version, checksum) values (%s, %s)",
        (file.version, file.checksum),
    )
