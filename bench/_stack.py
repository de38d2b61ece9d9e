"""The stack a benchmark measures: a fresh local one of its own, removed afterwards, or an existing
one, and the addresses and keys it reaches it by (`Target`)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.dev.processes import free_port_base
from cli.dev.stack import LocalStack


@contextmanager
def fresh_stack(start_port: int) -> Iterator[LocalStack]:
    """A local stack for one run, on free ports from `start_port`, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="mycelium-bench-"))
    # mkdtemp makes it 700; the servers' OS user (postgres, when run as root) must reach it.
    folder.chmod(0o755)
    stack = LocalStack(folder / "stack")
    try:
        stack.up(port_base=free_port_base(start=start_port))
        yield stack
    finally:
        stack.destroy()
        shutil.rmtree(folder, ignore_errors=True)


def running_stack(folder: Path) -> LocalStack:
    """The local stack in `folder`, which must be up: a benchmark neither starts nor stops it."""
    stack = LocalStack(folder)
    if not stack.running():
        raise SystemExit(f"no running local stack in {folder}: `mycelium dev up --dir {folder}` first")
    return stack


@dataclass
class Target:
    db_url: str
    superuser_db_url: str | None = None
    api_url: str | None = None
    anon_key: str | None = None
    service_role_key: str | None = None
    jwt_secret: str | None = None
    postgrest_url: str | None = None  # PostgREST itself, behind no gateway (informational)


@contextmanager
def local_target(start_port: int) -> Iterator[Target]:
    """A fresh local stack for one run, removed afterwards."""
    print("bringing up a local stack", flush=True)
    with fresh_stack(start_port) as stack:
        yield Target(
            # Through the Unix socket, as PostgREST connects: direct SQL and PostgREST then pay the
            # same for a round trip to the database.
            db_url=stack.local_db_url(),
            superuser_db_url=stack.superuser_db_url,
            api_url=stack.api_url,
            anon_key=stack.anon_key,
            service_role_key=stack.service_role_key,
            jwt_secret=stack.jwt_secret,
            postgrest_url=f"http://127.0.0.1:{stack.postgrest.port}",
        )


def add_target_options(
    parser: argparse.ArgumentParser,
    db_url_help: str = "an existing database (role postgres); default: a fresh local stack",
    *,
    superuser: bool = True,
) -> None:
    """--db-url, the database `on_target` measures instead of a fresh local stack, and unless told
    not to, --superuser-db-url for its setup."""
    parser.add_argument("--db-url", help=db_url_help)
    if superuser:
        parser.add_argument("--superuser-db-url", help="with --db-url: a superuser login for setup")


Measure = Callable[[Target, argparse.Namespace, dict[str, Any]], int]


def on_target(measure: Measure, start_port: int) -> Callable[[argparse.Namespace, dict[str, Any]], int]:
    """`measure` (for `run_benchmark`) on the database of --db-url, set up through
    --superuser-db-url where the benchmark has that option, or else on a fresh local stack on free
    ports from `start_port`."""

    def measured(args: argparse.Namespace, results: dict[str, Any]) -> int:
        if args.db_url:
            target = Target(db_url=args.db_url, superuser_db_url=vars(args).get("superuser_db_url"))
            return measure(target, args, results)
        with local_target(start_port) as target:
            return measure(target, args, results)

    return measured
