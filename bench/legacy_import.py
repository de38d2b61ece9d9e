"""How long `mycelium legacy import` takes for 10,000 old user files (each with a few
transactions and, for one in five, two products), on a local stack of its own: the dry run,
the import, and the re-run that writes nothing. Then 2,000 of those users confirm their
address and claim their credits. Prints a table; measured in one run.

    ./run bench legacy_import [--users 10000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

from bench._results import run_benchmark
from bench._stack import fresh_stack

EXPECTED_SECONDS = 60.0  # the issue: "well under a minute" for 10,000 files
CLAIMS = 2000


def write_files(folder: Path, users: int) -> None:
    user_data = folder / "user_data"
    user_data.mkdir()
    for n in range(users):
        document = {
            "user_email": f"Bench.User{n}@Example.com",
            "name": f"User {n}",
            "roles": ["user", "farmer"] if n % 5 == 0 else ["user"],
            "wallet_balance": f"{n % 997}.25",
            "transactions": [
                {
                    "id": f"t{k}",
                    "transaction_type": "Purchase",
                    "amount": f"{k + 1}.5",
                    "timestamp": "2025-05-01T09:00:00Z",
                    "status": "Completed",
                    "counterparty": None,
                    "memo": "top-up",
                }
                for k in range(5)
            ],
            "products": [
                {
                    "id": f"p{k}",
                    "name": f"Slice {k}",
                    "category": "compute",
                    "price_tfp": "12.5",
                    "unit": "month",
                    "attributes": {"cpu": 4},
                    "active": True,
                }
                for k in range(2 if n % 5 == 0 else 0)
            ],
        }
        (user_data / f"user{n}.json").write_text(json.dumps(document))
    (folder / "marketplace.config").write_text("tfp_to_usd_rate = 0.1\nplatform_fee_percent = 5\n")


def timed_import(folder: Path, db_url: str, *extra: str) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "legacy",
            "import",
            str(folder),
            "--tfp-usd-rate",
            "0.1",
            "--db-url",
            db_url,
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - started, json.loads(ran.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    run_benchmark(parser, measure)


def measure(args: argparse.Namespace, results: dict[str, Any]) -> None:
    with (
        fresh_stack(start_port=43600) as stack,
        tempfile.TemporaryDirectory(prefix="mycelium-bench-legacy-") as old,
    ):
        data = Path(old)
        write_files(data, args.users)
        dry, _ = timed_import(data, stack.db_url, "--dry-run")
        full, report = timed_import(data, stack.db_url)
        rerun, rerun_report = timed_import(data, stack.db_url)
        assert report["users"] == args.users and rerun_report["users"] == 0, (report, rerun_report)
        claims = min(CLAIMS, args.users)
        with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
            started = time.perf_counter()
            conn.execute(
                """insert into auth.users (instance_id, id, aud, role, email, email_confirmed_at,
                     raw_app_meta_data, raw_user_meta_data, created_at, updated_at, is_anonymous)
                   select '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated',
                     'authenticated', 'bench.user' || n || '@example.com', now(), '{}', '{}', now(), now(),
                     false
                   from generate_series(0, %s - 1) n""",
                (claims,),
            )
            claimed = time.perf_counter() - started
            audit = conn.execute("select count(*) from mycelium_private.audit_ledger()").fetchone()
    table = Table(
        title=f"Legacy import of {args.users:,} user files ({report['transactions']:,} transactions, "
        f"{report['products']:,} products)"
    )
    for column in ("step", "seconds", "files per second"):
        table.add_column(column)
    for step, seconds in (("dry run", dry), ("import", full), ("re-run (writes nothing)", rerun)):
        table.add_row(step, f"{seconds:.2f}", f"{args.users / seconds:,.0f}")
    table.add_row(f"{claims:,} sign-ups claiming their credits", f"{claimed:.2f}", "")
    results.update(
        users=args.users,
        seconds={"dry_run": dry, "import": full, "re_run": rerun, "claims": claimed},
        claims=claims,
        expected_import_under_seconds=EXPECTED_SECONDS,
        audit_problems=audit[0] if audit else None,
    )
    console = Console()
    console.print(table)
    console.print(
        f"import: {full:.1f} s against the expectation of under {EXPECTED_SECONDS:.0f} s "
        f"({EXPECTED_SECONDS / full:.0f}x headroom); ledger audit findings: {audit[0] if audit else '?'}"
    )


if __name__ == "__main__":
    main()
