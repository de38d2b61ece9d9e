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
    assert sorted(summary["balances"].values()) == ["25.5", "74.5"]
    assert summary["ledger_audit"] == "clean"
    assert summary["env"]["SUPABASE_URL"] == stack.api_url
