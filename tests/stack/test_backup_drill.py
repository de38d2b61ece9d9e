"""The backup and point-in-time restore of docs/deploy.md, drilled on local stacks of their own.

The drill archives the WAL with the compose file's own archive_command, takes a base backup with
supabase/db/backup.sh (what the compose `backup` service runs), makes two known transfers with a
restore point between them, loses the database, and restores it with supabase/db/restore.sh into
a second stack that keeps the first one's keys (as supabase/.env is restored with the database).
The first transfer comes after the base backup, so only the archived WAL can bring it back; the
second must not come back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cli.dev.postgres import SUPERUSER, server_binaries
from cli.dev.processes import free_port_base, wait_until
from cli.dev.stack import LocalStack, UpReport
from cli.migrations import bundled_sql_dir, discover
from tests.support import MYCELIUM, Api, body, loads, new_user, stack_folder
from tests.support.deploy import (
    BACKUP_SCRIPT,
    COMPOSE_FILE,
    RESTORE_SCRIPT,
    WAL_ARCHIVE_IN_CONTAINERS,
    load_yaml,
    postgres_settings,
)

RESTORE_POINT = "before-the-second-transfer"


# The two ways docs/deploy.md names the moment to restore: a restore point (made just before a
# risky operation) and a time (what an operator usually has).
TARGETS = ("name", "time")


@dataclass
class Restore:
    stack: LocalStack
    up: UpReport


@dataclass
class Drill:
    accounts: list[str]
    at_restore_point: dict[str, Decimal]
    at_the_loss: dict[str, Decimal]
    restores: dict[str, Restore]


def balances(stack: LocalStack, accounts: list[str]) -> dict[str, Decimal]:
    api = Api(stack.api_url, stack.service_role_key)
    try:
        response = api.get("/credit_accounts", select="user_id,balance", user_id=f"in.({','.join(accounts)})")
    finally:
        api.close()
    assert response.status_code == 200, response.text
    return {row["user_id"]: Decimal(str(row["balance"])) for row in body(response)}


def run_script(stack: LocalStack, script: Path, *args: str, **env: str) -> str:
    """`script` as the database's OS user, with the server binaries first on PATH, as in the
    database's container; passed inline, since that user may not reach this checkout."""
    path = f"{server_binaries()}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    assignments = [f"{name}={value}" for name, value in {"PATH": path, **env}.items()]
    done = stack.run_as.run(["env", *assignments, "bash", "-c", script.read_text(), script.name, *args])
    assert done.returncode == 0, f"{script.name} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def archive_wal(stack: LocalStack, archive: Path) -> None:
    """The compose file's archiving, pointed at `archive` (archive_mode takes a restart)."""
    settings = postgres_settings(load_yaml(COMPOSE_FILE)["services"]["db"]["command"])
    archiving = {name: value for name, value in settings.items() if name.startswith("archive_")}
    archiving["archive_command"] = archiving["archive_command"].replace(
        WAL_ARCHIVE_IN_CONTAINERS, str(archive)
    )
    with psycopg.connect(stack.superuser_db_url, autocommit=True) as db:
        for name, value in archiving.items():
            db.execute(sql.SQL("alter system set {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    stack.cluster.stop()
    stack.cluster.start()


def transfer(sender: Api, recipient: str, amount: str) -> None:
    response = sender.rpc("transfer_credits", recipient=recipient, amount=amount)
    assert response.status_code == 200, response.text


def switch_and_archive(stack: LocalStack) -> None:
    """Close the current WAL segment and wait until the archive has it: what a restore can replay
    is what reached the archive."""
    with psycopg.connect(stack.superuser_db_url, autocommit=True) as db:
        row = db.execute("select pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None
        segment = row[0]

        def archived() -> bool:
            last = db.execute("select last_archived_wal from pg_stat_archiver").fetchone()
            return last is not None and last[0] is not None and last[0] >= segment

        assert wait_until(archived, timeout=30), f"{segment} was not archived"


@pytest.fixture(scope="module")
def drill() -> Iterator[Drill]:
    folder = stack_folder("mycelium-backup-drill-")
    archive, backups = folder / "wal-archive", folder / "backups"
    live = LocalStack(folder / "live")
    restored = {target: LocalStack(folder / f"restored-by-{target}") for target in TARGETS}
    try:
        live.up(port_base=free_port_base())
        for made in (archive, backups):
            made.mkdir(mode=0o700)
            live.run_as.own(made)
        archive_wal(live, archive)
        backup_settings = {"BACKUP_DIR": str(backups), "WAL_ARCHIVE": str(archive)}

        with psycopg.connect(live.superuser_db_url, autocommit=True) as db:
            alice, bob = new_user(live, db), new_user(live, db)
        accounts = [alice.id, bob.id]
        service = Api(live.api_url, live.service_role_key)
        granted = service.rpc("grant_credits", user_id=alice.id, amount="100", reason="backup drill")
        service.close()
        assert granted.status_code == 200, granted.text

        run_script(
            live,
            BACKUP_SCRIPT,
            PGHOST="127.0.0.1",
            PGPORT=str(live.db_port),
            PGUSER=SUPERUSER,
            PGPASSWORD=live.settings.passwords[SUPERUSER],
            **backup_settings,
        )
        transfer(alice.api, bob.id, "10.5")
        with psycopg.connect(live.superuser_db_url, autocommit=True) as db:
            db.execute("select pg_create_restore_point(%s)", [RESTORE_POINT])
            # The database's clock, after the first transfer's commit and before the second's.
            row = db.execute("select clock_timestamp()::text").fetchone()
            assert row is not None
        targets = {"name": ["--name", RESTORE_POINT], "time": ["--time", row[0]]}
        at_restore_point = balances(live, accounts)
        transfer(alice.api, bob.id, "25")
        at_the_loss = balances(live, accounts)
        for user in (alice, bob):
            user.api.close()
        switch_and_archive(live)
        live.down()

        (backup,) = [entry.name for entry in backups.iterdir()]
        restores = {}
        for target, stack in restored.items():
            # The restored stack keeps the lost one's keys and passwords, as supabase/.env is
            # restored with the database.
            stack.directory.mkdir()
            shutil.copy2(live.settings_file, stack.settings_file)
            data = stack.directory / "postgres"
            data.mkdir(mode=0o700)
            stack.run_as.own(data)
            run_script(stack, RESTORE_SCRIPT, backup, *targets[target], PGDATA=str(data), **backup_settings)
            restores[target] = Restore(stack, stack.up(port_base=free_port_base()))
        yield Drill(accounts, at_restore_point, at_the_loss, restores)
    finally:
        for stack in (*restored.values(), live):
            stack.destroy()
        shutil.rmtree(folder, ignore_errors=True)


def mycelium_json(*args: str) -> tuple[int, Any]:
    done = subprocess.run(
        [*MYCELIUM, *args, "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    return done.returncode, loads(done.stdout) if done.stdout else done.stderr


@pytest.mark.parametrize("target", TARGETS)
def test_the_restore_brings_back_the_balances_of_the_target(drill: Drill, target: str) -> None:
    assert drill.at_restore_point != drill.at_the_loss, "the second transfer must change the balances"
    alice, bob = drill.accounts
    # The first transfer, made after the base backup, came back from the archived WAL.
    assert drill.at_restore_point == {alice: Decimal("89.5"), bob: Decimal("10.5")}
    assert balances(drill.restores[target].stack, drill.accounts) == drill.at_restore_point


@pytest.mark.parametrize("target", TARGETS)
def test_the_restored_ledger_audit_is_clean(drill: Drill, target: str) -> None:
    restored = drill.restores[target].stack
    status, report = mycelium_json(
        "credits", "audit", "--url", restored.api_url, "--service-key", restored.service_role_key
    )
    assert (status, report) == (0, {"ok": True, "findings": []})


@pytest.mark.parametrize("target", TARGETS)
def test_the_next_push_applies_nothing(drill: Drill, target: str) -> None:
    restore = drill.restores[target]
    assert restore.up.migrations_applied == []
    status, result = mycelium_json("sql", "push", "--db-url", restore.stack.db_url)
    assert status == 0, result
    assert result == {
        "dry_run": False,
        "applied": [],
        "already_applied": len(discover(bundled_sql_dir())),
    }


def test_each_restored_database_takes_writes_on_a_timeline_of_its_own(drill: Drill) -> None:
    """Promoted after the replay, each on a new timeline (the archive's history files tell a restore
    which ones are taken), so that their WAL never mixes in the archive with the lost database's
    or with each other's."""
    timelines = []
    for restore in drill.restores.values():
        with psycopg.connect(restore.stack.superuser_db_url, autocommit=True) as db:
            row = db.execute(
                "select pg_is_in_recovery(), timeline_id from pg_control_checkpoint()"
            ).fetchone()
        assert row is not None and row[0] is False
        timelines.append(row[1])
    assert 1 not in timelines and len(set(timelines)) == len(timelines), timelines
