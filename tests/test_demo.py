"""`mycelium demo`, the README's first command, on the test session's stack."""

from __future__ import annotations

import json
import subprocess
import sys

from cli.dev.stack import LocalStack


def test_the_demo_tells_its_story_and_leaves_a_clean_ledger(stack: LocalStack) -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--dir", str(stack.directory), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    # Alice: 100 bought - 25.5 sent. Bob: 50 + 5 bonus + 25.5 received + 10 granted - 10 expired.
    assert sorted(summary["balances"].values()) == ["74.5", "80.5"]
    # The watcher saw every movement: two purchases, the grant, the transfer (both sides), the expiry.
    assert summary["watched_changes"] == 6
    assert summary["ledger_audit"] == "clean"
    assert summary["seconds"] < 60
    assert summary["env"]["SUPABASE_URL"] == stack.api_url


def test_the_demo_prints_each_step_for_a_person(stack: LocalStack) -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--dir", str(stack.directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    for step in ("1. The admin sets the credit configuration", "5. Bob buys the starter package", "watcher:"):
        assert step in ran.stdout
    assert "Ledger audit: clean" in ran.stdout and f"SUPABASE_URL={stack.api_url}" in ran.stdout
