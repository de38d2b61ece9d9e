"""What the benchmarks share: the target, pgbench (the tpcb-like yardstick and custom scripts),
wrk (HTTP load), users, read latencies, a local stack, verdicts, results for scripts (--json)."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")
WORKERS = 8


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
    from cli.dev.processes import free_port_base
    from cli.dev.stack import LocalStack

    folder = Path(tempfile.mkdtemp(prefix="mycelium-bench-"))
    folder.chmod(0o755)
    stack = LocalStack(folder / "stack")
    print("bringing up a local stack", flush=True)
    stack.up(port_base=free_port_base(start=start_port))
    try:
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
    finally:
        stack.destroy()
        shutil.rmtree(folder, ignore_errors=True)


def claims(user_id: str) -> str:
    return json.dumps({"sub": user_id, "role": "authenticated"})


# ---------------------------------------------------------------------------------------------
# pgbench: the tpcb-like yardstick, and custom scripts driving direct SQL with the same C client
# (prepared statements, one connection per worker), so ratios compare server work, not Python.
# ---------------------------------------------------------------------------------------------


def pgbench_args(db_url: str) -> tuple[list[str], dict[str, str]]:
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    env = {**os.environ, "PGPASSWORD": str(info.get("password") or "")}
    args = [
        "-h",
        str(info.get("host", "127.0.0.1")),
        "-p",
        str(info.get("port", 5432)),
        "-U",
        str(info["user"]),
    ]
    return args, env


def run_pgbench(db_url: str, database: str, extra: list[str]) -> float:
    base, env = pgbench_args(db_url)
    done = subprocess.run([str(PGBENCH), *base, *extra, database], env=env, capture_output=True, text=True)
    tps = [line for line in done.stdout.splitlines() if line.startswith("tps =")]
    if done.returncode != 0 or not tps:
        raise RuntimeError(f"pgbench failed:\n{done.stdout}\n{done.stderr}")
    failed = [line for line in done.stdout.splitlines() if line.startswith("number of failed")]
    if failed and not failed[0].split(":")[1].strip().startswith("0"):
        print(f"    ({failed[0]})", flush=True)
    return float(tps[-1].split("=")[1].split()[0])


def script_rate(db_url: str, script: str, variables: dict[str, int], seconds: float) -> float:
    """Runs per second of a custom pgbench script by WORKERS clients."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as file:
        file.write(script)
    try:
        database = str(psycopg.conninfo.conninfo_to_dict(db_url).get("dbname", "postgres"))
        defines = [arg for name, value in variables.items() for arg in ("-D", f"{name}={value}")]
        return run_pgbench(
            db_url,
            database,
            [
                "-n",
                "-M",
                "prepared",
                "-c",
                str(WORKERS),
                "-j",
                str(WORKERS),
                "-T",
                str(int(seconds)),
                *defines,
                "-f",
                file.name,
            ],
        )
    finally:
        os.unlink(file.name)


@contextmanager
def pgbench_database(db_url: str, scale: int, label: str = "yardstick") -> Iterator[str]:
    """A scratch database on the same server, initialised for pgbench's tpcb-like at `scale`
    (branches; `label` tells two such databases of one run apart)."""
    database = f"mycelium_pgbench_{label}_{os.getpid()}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'create database "{database}"')
    try:
        base, env = pgbench_args(db_url)
        subprocess.run(
            [str(PGBENCH), "-i", "-q", "-s", str(scale), *base, database],
            check=True,
            env=env,
            capture_output=True,
        )
        yield database
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{database}" with (force)')


def tpcb_rate(db_url: str, database: str, seconds: float) -> float:
    return run_pgbench(
        db_url, database, ["-c", str(WORKERS), "-j", str(WORKERS), "-T", str(int(seconds)), "-b", "tpcb-like"]
    )


# ---------------------------------------------------------------------------------------------
# wrk: HTTP load from a C client, as pgbench is for direct SQL, so that a ratio of the two compares
# the servers, not the load generators (a Python client would take a third of two cores).
# ---------------------------------------------------------------------------------------------

# Every wrk thread gets its own number (`thread_number`) and random sequence: scripts use them
# for unique references. RUN is unique per measure; `threads` lets done() read the threads' counts.
WRK_PRELUDE = """
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end
function init(args)
  math.randomseed(thread_number * 7919 + {seed})
end
local RUN = "{run}"
"""


def lua_locals(**values: str | list[str]) -> str:
    """Lua `local` definitions of strings and arrays of strings (JSON's string syntax is Lua's for
    ASCII)."""
    lines = []
    for name, value in values.items():
        strings = [value] if isinstance(value, str) else value
        literal = ",".join(map(json.dumps, strings))
        if not isinstance(value, str):
            literal = "{" + literal + "}"
        lines.append(f"local {name} = {literal}\n")
    return "".join(lines)


def wrk_rate(base_url: str, script: str, seconds: float) -> float:
    """Successful requests per second of a wrk `script` (it defines `request`), WORKERS keep-alive
    connections for `seconds`."""
    program = shutil.which("wrk")
    if program is None:
        raise SystemExit("the HTTP measures need wrk: `./run bench NAME` installs it (Debian: wrk)")
    prelude = WRK_PRELUDE.replace("{seed}", str(random.randrange(1 << 30))).replace("{run}", uuid.uuid4().hex)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(prelude + script)
    try:
        done = subprocess.run(
            [program, "-t", "2", "-c", str(WORKERS), "-d", f"{int(seconds)}s", "-s", file.name, base_url],
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(file.name)
    totals = re.search(r"(\d+) requests in ([\d.]+)(m?s)", done.stdout)
    if done.returncode != 0 or totals is None:
        raise RuntimeError(f"wrk failed:\n{done.stdout}\n{done.stderr}")
    failures = r"(?:Non-2xx or 3xx responses|connect|read|write|timeout):? (\d+)"
    failed = sum(int(n) for n in re.findall(failures, done.stdout))
    if failed:
        print(f"    ({failed} failed calls)", flush=True)
    elapsed = float(totals.group(2)) * (60 if totals.group(3) == "m" else 1)
    # A script that counts its own units (an order is two calls) prints `counted: N` from done().
    counted = re.search(r"^counted: (\d+)$", done.stdout, re.MULTILINE)
    return int(counted.group(1)) / elapsed if counted else (int(totals.group(1)) - failed) / elapsed


# ---------------------------------------------------------------------------------------------
# Setup and reads
# ---------------------------------------------------------------------------------------------


def create_users(conn: psycopg.Connection[Any], count: int) -> list[str]:
    rows = conn.execute(
        """
        insert into auth.users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                                created_at, updated_at)
        select '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', 'authenticated',
               'bench-' || gen_random_uuid() || '@example.test', '{}', '{}', now(), now()
        from generate_series(1, %s)
        returning id::text
        """,
        (count,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def fund(conn: psycopg.Connection[Any], users: list[str], usd: str) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "select public.purchase_credits(%s::uuid, %s::numeric, %s)",
            [(u, usd, f"bench-fund-{uuid.uuid4()}") for u in users],
        )


# A read to time: as whom (a user id: RLS applies; None: anon), the query, its parameters.
Read = tuple[str | None, str, tuple[Any, ...]]

# Timed alongside every set of reads: a read that touches no table, whose time is the machine's
# speed at that moment (a round trip, a transaction, a role switch) and nothing else.
REFERENCE = "reference"


def timed_reads(conn: psycopg.Connection[Any], reads: dict[str, Read], repeat: int) -> dict[str, float]:
    """Median seconds of each read, plus REFERENCE (`select 1`), after a warm-up. Their samples are
    taken in turn, one of each then again, so that a shared machine's slow moments fall on all of
    them alike."""
    first_user = next(iter(reads.values()))[0] if reads else None
    reads = {**reads, REFERENCE: (first_user, "select 1", ())}
    samples: dict[str, list[float]] = {name: [] for name in reads}
    for i in range(repeat + 50):
        for name, (user, query, params) in reads.items():
            with conn.transaction():
                if user is None:
                    conn.execute("set local role anon")
                else:
                    conn.execute("select set_config('request.jwt.claims', %s, true)", (claims(user),))
                    conn.execute("set local role authenticated")
                started = time.perf_counter()
                conn.execute(query, params, prepare=True).fetchall()
                elapsed = time.perf_counter() - started
            if i >= 50:
                samples[name].append(elapsed)
    return {name: statistics.median(values) for name, values in samples.items()}


def growth(large: dict[str, float], small: dict[str, float], name: str) -> float | None:
    """How much slower read `name` became from `small` to `large` (two timed_reads taken minutes
    apart), each measured against the REFERENCE read timed with it: the machine's speed changes
    between the two, what the data's growth does to the read is what remains."""
    return ratio(ratio(large[name], large[REFERENCE]), ratio(small[name], small[REFERENCE]))


def print_reference(small: dict[str, float], large: dict[str, float]) -> None:
    """The REFERENCE row under a table of `growth` ratios: what the machine's speed did meanwhile."""
    print(
        f"{'  (select 1, timed alongside; the ratios':44} {small[REFERENCE] * 1e3:>10.3f}ms "
        f"{large[REFERENCE] * 1e3:>10.3f}ms {ratio(large[REFERENCE], small[REFERENCE]) or 0:>8.3f}"
        "           above are against it)"
    )


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """One measure's rates per second, one a cycle."""

    samples: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)


@dataclass(frozen=True)
class RateRow:
    """A throughput to show and, where it is compared with another (`against`), their ratio: the
    ratio of the means, and the lowest and highest ratio within one cycle, where both sides ran
    seconds apart; that range shows how far the machine's noise moves the ratio. `target` is the
    least ratio wanted (None: shown for information)."""

    name: str
    rate: Rate | None
    against: Rate | None = None
    target: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.rate is None or self.against is None or not self.against.mean:
            return None
        return self.rate.mean / self.against.mean

    @property
    def cycle_range(self) -> tuple[float, float] | None:
        if self.rate is None or self.against is None:
            return None
        pairs = [a / b for a, b in zip(self.rate.samples, self.against.samples, strict=True) if b]
        return (min(pairs), max(pairs)) if pairs else None

    @property
    def verdict(self) -> str | None:
        return None if self.target is None else verdict(self.ratio, self.target)

    def as_dict(self) -> dict[str, Any]:
        return {
            "measure": self.name.strip(" ()"),
            "per_second": None if self.rate is None else self.rate.mean,
            "ratio": self.ratio,
            "ratio_in_a_cycle": self.cycle_range,
            "target_at_least": self.target,
            "verdict": self.verdict,
        }


def cycled_rates(
    admin_url: str, pgbench_scale: int, cycles: int, seconds: float, measures: dict[str, Callable[[], float]]
) -> dict[str, Rate]:
    """The tpcb-like yardstick (`tpcb`) and each measure, `seconds` each, cycled `cycles` times
    after one unmeasured warm-up cycle, every other cycle in reverse order.
    Short slices cycled many times spread a shared machine's bursts of outside load and its slow
    drifts (checkpoints, a growing ledger) over both sides of every ratio alike, and the reversed
    cycles cancel a steady drift between neighbours. (The best of a few long rounds did not: two
    sides of a ratio measured a minute apart each caught a different moment.)"""
    names = ["tpcb", *measures]
    samples: dict[str, list[float]] = {name: [] for name in names}
    with pgbench_database(admin_url, pgbench_scale) as yardstick:
        run = {"tpcb": lambda: tpcb_rate(admin_url, yardstick, seconds), **measures}
        slices = f"{WORKERS} clients, {seconds:.0f}s a slice"
        print(f"{cycles} cycles after a warm-up ({slices}): " + ", ".join(names), flush=True)
        for cycle in range(cycles + 1):
            order = names if cycle % 2 == 0 else names[::-1]
            for name in order:
                rate = run[name]()
                if cycle:
                    samples[name].append(rate)
            print(f"    cycle {cycle or 'warm-up'} done", flush=True)
    for name, values in samples.items():
        print(
            f"    {name}: mean {statistics.fmean(values):,.0f} per second "
            f"(slices {min(values):,.0f} to {max(values):,.0f})",
            flush=True,
        )
    return {name: Rate(tuple(values)) for name, values in samples.items()}


def print_rates(rows: list[RateRow]) -> int:
    """The throughput table; returns how many targets were missed."""
    print(f"{'measure':44} {'per second':>12} {'ratio':>8} {'in a cycle':>14} {'target':>8}  verdict")
    missed = 0
    for row in rows:
        shown = "n/a" if row.rate is None else f"{row.rate.mean:,.0f}"
        ratio_text = "" if row.ratio is None else f"{row.ratio:.3f}"
        band = row.cycle_range
        band_text = "" if band is None else f"{band[0]:.2f} to {band[1]:.2f}"
        goal_text = "" if row.target is None else f">= {row.target}"
        mark = row.verdict or ""
        missed += mark == "MISSED"
        print(f"{row.name:44} {shown:>12} {ratio_text:>8} {band_text:>14} {goal_text:>8}  {mark}")
    return missed


@dataclass(frozen=True)
class LatencyRow:
    """A read timed in two situations (median seconds) and how much slower the second is (`ratio`,
    against the REFERENCE read where the two were timed minutes apart); it must stay under
    `target`. `second` is None where it could not be timed."""

    name: str
    first: float
    second: float | None
    ratio: float | None
    target: float

    @property
    def verdict(self) -> str:
        return verdict(self.ratio, self.target, below=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.name,
            "first_ms": self.first * 1e3,
            "second_ms": None if self.second is None else self.second * 1e3,
            "ratio": self.ratio,
            "target_below": self.target,
            "verdict": self.verdict,
        }


def print_latencies(rows: list[LatencyRow], header: tuple[str, str, str] | None = None) -> int:
    """Latency rows under an optional header (title, first, second); returns how many missed."""
    if header:
        title, first, second = header
        print(f"{title:44} {first:>12} {second:>12} {'ratio':>8} {'target':>8}  verdict")
    for row in rows:
        second = "n/a" if row.second is None else f"{row.second * 1e3:.3f}ms"
        shown_ratio = "n/a" if row.ratio is None else f"{row.ratio:.3f}"
        print(
            f"{row.name:44} {row.first * 1e3:>10.3f}ms {second:>12} "
            f"{shown_ratio:>8} {f'< {row.target:g}':>8}  {row.verdict}"
        )
    return sum(row.verdict == "MISSED" for row in rows)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def verdict(value: float | None, target: float, below: bool = False) -> str:
    if value is None:
        return "n/a"
    good = value < target if below else value >= target
    return "ok" if good else "MISSED"


# ---------------------------------------------------------------------------------------------
# Results for scripts
# ---------------------------------------------------------------------------------------------


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the results as one JSON object on stdout (what people read goes to stderr)",
    )


@contextmanager
def results_for_scripts(as_json: bool) -> Iterator[dict[str, Any]]:
    """A dict the benchmark fills with what it measured. With --json, everything printed for people
    goes to stderr meanwhile, and the dict, as JSON, to stdout once the benchmark is done."""
    results: dict[str, Any] = {}
    if not as_json:
        yield results
        return
    with redirect_stdout(sys.stderr):
        yield results
    print(json.dumps(results, indent=2))
