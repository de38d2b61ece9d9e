"""What the benchmarks' smoke tests share: a small run of a benchmark, its --json report."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.support import REPO


def bench_report(benchmark: str, *options: str, timeout: int) -> dict[str, Any]:
    """The --json report of `python -m bench.<benchmark> <options>`, a run that finished whether
    or not it met its targets: its exit status 1 where the report counts a target missed, else 0."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{benchmark}", *options, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == (1 if report["targets_missed"] else 0), report["targets_missed"]
    return report
