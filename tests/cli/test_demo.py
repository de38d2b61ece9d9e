"""`mycelium demo`, the README's first command, on the test session's stack."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from decimal import Decimal

import psycopg
from psycopg.rows import TupleRow

from cli.dev.stack import LocalStack
from cli.errors import EXIT_DRIFT

# Alice: 100 bought - 40 for Fiona's slice - 25.5 to Bob. Bob: 50 + 5 bonus + 25.5, his orders
# failed or refunded, 10 granted then expired; then 55 more (the package again) and 6 hours of
# the hourly slice at 20 (4 paid as they ran, 1 unpaid hour in grace, 1 started after resuming).
# Fiona: 40 + 120, less the 5% fee. Paul: refunded all.
FINAL_BALANCES = {
    "alice": Decimal("34.5"),
    "bob": Decimal("15.5"),
    "fiona": Decimal("152"),
    "paul": Decimal("0"),
}
SLICE_EVENTS = ["started", "renewed", "renewed", "renewed", "grace", "suspended", "resumed", "stopped"]
WATCHER_LINE = re.compile(r"watcher: (?P<name>\w+) has (?P<balance>[0-9.]+)")


def run_demo(stack: LocalStack, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--dir", str(stack.directory), *options],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_demo_tells_its_story_and_leaves_a_clean_ledger(stack: LocalStack) -> None:
    ran = run_demo(stack, "--json")
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    by_name = {email.split("-")[0]: balance for email, balance in summary["balances"].items()}
    assert {name: Decimal(balance) for name, balance in by_name.items()} == FINAL_BALANCES
    # The watcher saw the movements as they happened (holds, captures and refunds included), up
    # to each person's final balance.
    assert summary["watched_changes"] >= 16
    watched = {email: Decimal(balance) for email, balance in summary["watched_balances"].items()}
    assert watched == {email: Decimal(balance) for email, balance in summary["balances"].items()}
    assert summary["subscription_events"] == SLICE_EVENTS
    assert summary["ledger_audit"] == "clean"
    assert summary["env"]["SUPABASE_URL"] == stack.api_url


def test_the_demo_prints_each_step_for_a_person(stack: LocalStack) -> None:
    ran = run_demo(stack)
    assert ran.returncode == 0, ran.stderr
    for step in (
        "1. The admin sets the credit configuration",
        "Alice searches for a compute slice",
        "Fiona provisions the slice and fulfils the order",
        "the platform's 5% fee is 2.00 TFC",
        "Paul cannot provision it and fails the order",
        "then refunds it in full",
        "The promotion ends",
        "Bob runs it pay-as-you-go",
        "hour 1: the upkeep charges what is due; Fiona's service reads: renewed",
        "Bob is warned: his 20.50 TFC last 1.02 hours at 20.00 TFC an hour",
        "hour 4: the upkeep charges what is due; Fiona's service reads: grace",
        "the slice is in grace",
        "hour 5: the upkeep charges what is due; Fiona's service reads: suspended",
        "the slice is suspended: Fiona's service stops the workload",
        "the slice is active again",
        "the started hour is charged; the slice is stopped",
    ):
        assert step in ran.stdout
    last_watched = {m["name"].lower(): Decimal(m["balance"]) for m in WATCHER_LINE.finditer(ran.stdout)}
    assert last_watched == FINAL_BALANCES
    assert "Ledger audit: clean" in ran.stdout and f"SUPABASE_URL={stack.api_url}" in ran.stdout


def test_a_stack_built_from_older_migrations_is_told_to_reset(
    stack: LocalStack, db: psycopg.Connection[TupleRow]
) -> None:
    version = "20261127000400"
    (checksum,) = db.execute(
        "select checksum from supabase_migrations.mycelium_checksums where version = %s", (version,)
    ).fetchone() or (None,)
    assert checksum, "the session stack records a checksum for every migration it pushed"
    db.execute(
        "update supabase_migrations.mycelium_checksums set checksum = 'an earlier file' where version = %s",
        (version,),
    )
    try:
        ran = run_demo(stack)
    finally:
        db.execute(
            "update supabase_migrations.mycelium_checksums set checksum = %s where version = %s",
            (checksum, version),
        )
    assert ran.returncode == EXIT_DRIFT, ran.stdout + ran.stderr
    said = " ".join((ran.stdout + ran.stderr).split())
    assert "20261127000400_ledger.sql" in said and "mycelium dev reset" in said
