"""How long `mycelium sql push` takes: a full push of `sql/` on an empty Supabase-like database,
and a no-op re-push, on a local stack of its own. Prints a table; measured in one run.

    ./run bench sql_push [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from bench._results import run_benchmark
from bench._stack import fresh_stack
from cli import migrations
from cli.dev.bootstrap import bootstrap

EXPECTED_SECONDS = {"full push": 5.0, "no-op re-push": 0.5}


def timed_push(url: str, files: list[migrations.MigrationFile]) -> tuple[float, int]:
    started = time.perf_counter()
    with migrations.connect(url) as conn:
        result = migrations.push(conn, files)
    return time.perf_counter() - started, len(result.applied)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    run_benchmark(parser, measure)


def measure(args: argparse.Namespace, results: dict[str, Any]) -> None:
    files = migrations.discover(migrations.bundled_sql_dir())
    timings: dict[str, list[float]] = {name: [] for name in EXPECTED_SECONDS}
    with (
        fresh_stack(start_port=43500) as stack,
        psycopg.connect(stack.superuser_db_url, autocommit=True) as admin,
    ):
        for _ in range(args.rounds):
            name = f"bench_{uuid.uuid4().hex[:8]}"
            admin.execute(sql.SQL("create database {} owner postgres").format(sql.Identifier(name)))
            with psycopg.connect(
                stack.superuser_db_url.replace("/postgres?", f"/{name}?"), autocommit=True
            ) as c:
                bootstrap(c, passwords={})
            url = stack.db_url.replace("/postgres?", f"/{name}?")
            full, applied = timed_push(url, files)
            assert applied == len(files)
            noop, applied_again = timed_push(url, files)
            assert applied_again == 0
            timings["full push"].append(full)
            timings["no-op re-push"].append(noop)
            admin.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))

    grid = Table(title=f"sql push: {len(files)} migrations, {args.rounds} rounds", title_justify="left")
    for column in ("case", "median s", "best s", "expected under s", "median / expected"):
        grid.add_column(column, justify="right" if column != "case" else "left")
    for name, values in timings.items():
        median = statistics.median(values)
        grid.add_row(
            name,
            f"{median:.3f}",
            f"{min(values):.3f}",
            f"{EXPECTED_SECONDS[name]}",
            f"{median / EXPECTED_SECONDS[name]:.2f}",
        )
    Console().print(grid)
    results.update(
        migrations=len(files),
        rounds=args.rounds,
        cases={
            name: {
                "median_s": statistics.median(values),
                "best_s": min(values),
                "expected_under_s": EXPECTED_SECONDS[name],
            }
            for name, values in timings.items()
        },
    )


if __name__ == "__main__":
    main()
