"""Load from C clients, WORKERS connections each: pgbench for direct SQL (its tpcb-like yardstick
and custom scripts) and wrk for HTTP, so that a ratio of two measures compares the servers, not the
load generators (a Python client would take a third of two cores)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg

PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")
WORKERS = 8
# pgbench's -M: each statement parsed and planned every time (simple), or once a connection
# (prepared, as PostgREST sends its queries). A ratio compares two measures sent the same way.
Protocol = Literal["simple", "prepared"]
PROTOCOLS: tuple[Protocol, ...] = ("prepared", "simple")


# ---------------------------------------------------------------------------------------------
# pgbench: the tpcb-like yardstick, and custom scripts driving direct SQL with the same C client
# (one connection per worker), so ratios compare server work, not Python.
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


def gset_value(expression: str, protocol: Protocol) -> str:
    """`expression`, for a pgbench script to keep with \\gset and send back in a later statement as
    a variable: when prepared, a variable is sent as a parameter; in the simple protocol its text
    is spelled out in the statement, so it is kept as a quoted literal."""
    return expression if protocol == "prepared" else f"quote_literal({expression})"


def script_rate(
    db_url: str,
    script: str,
    variables: dict[str, int],
    seconds: float,
    protocol: Protocol = "prepared",
    clients: int = WORKERS,
) -> float:
    """Runs per second of a custom pgbench script by `clients` clients (WORKERS unless told), its
    statements sent in `protocol`."""
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
                protocol,
                "-c",
                str(clients),
                "-j",
                str(clients),
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


def tpcb_rate(db_url: str, database: str, seconds: float, protocol: Protocol = "simple") -> float:
    """tpcb-like transactions per second by WORKERS clients, in `protocol` (pgbench's default is
    simple; a ratio against a measure sent prepared is fair only against the prepared yardstick)."""
    return run_pgbench(
        db_url,
        database,
        ["-M", protocol, "-c", str(WORKERS), "-j", str(WORKERS), "-T", str(int(seconds)), "-b", "tpcb-like"],
    )


# ---------------------------------------------------------------------------------------------
# wrk: HTTP load, keep-alive connections, each request made by a Lua script.
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


# A value a Lua script receives: a string, an array, or a table keyed by strings.
LuaValue = str | Sequence["LuaValue"] | Mapping[str, "LuaValue"]


def lua_literal(value: LuaValue) -> str:
    """`value` in Lua's syntax (JSON's string syntax is Lua's for ASCII)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        fields = [f"[{json.dumps(key)}] = {lua_literal(item)}" for key, item in value.items()]
    else:
        fields = list(map(lua_literal, value))
    return "{" + ",".join(fields) + "}"


def lua_locals(**values: LuaValue) -> str:
    """Lua `local` definitions of strings, arrays and tables keyed by strings."""
    return "".join(f"local {name} = {lua_literal(value)}\n" for name, value in values.items())


@contextmanager
def wrk_command(
    base_url: str, script: str, seconds: float, *, connections: int = WORKERS, threads: int = 2
) -> Iterator[list[str]]:
    """wrk's command line running `script` (after WRK_PRELUDE; the file is removed afterwards) on
    `connections` keep-alive connections for `seconds`."""
    program = shutil.which("wrk")
    if program is None:
        raise SystemExit("the HTTP measures need wrk: `./run bench NAME` installs it (Debian: wrk)")
    prelude = WRK_PRELUDE.replace("{seed}", str(random.randrange(1 << 30))).replace("{run}", uuid.uuid4().hex)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(prelude + script)
    try:
        yield [
            program,
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{int(seconds)}s",
            "-s",
            file.name,
            base_url,
        ]
    finally:
        os.unlink(file.name)


@dataclass(frozen=True)
class WrkTotals:
    """What wrk's summary says of a run: calls made, in how many seconds, and how many failed (an
    answer other than 2xx or 3xx, or a socket error)."""

    calls: int
    seconds: float
    failed: int

    @classmethod
    def parse(cls, stdout: str) -> WrkTotals | None:
        # wrk shows a run's length in s, then m from a minute on, then h.
        totals = re.search(r"(\d+) requests in ([\d.]+)([smh])\b", stdout)
        if totals is None:
            return None
        failures = r"(?:Non-2xx or 3xx responses|connect|read|write|timeout):? (\d+)"
        failed = sum(int(n) for n in re.findall(failures, stdout))
        seconds = float(totals.group(2)) * {"s": 1, "m": 60, "h": 3600}[totals.group(3)]
        return cls(int(totals.group(1)), seconds, failed)


def run_wrk(command: list[str], every_second: Callable[[], None] | None = None) -> tuple[WrkTotals, str]:
    """Run a `wrk_command`, calling `every_second` meanwhile if given; its totals and its output
    (what the script's done() printed too)."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as wrk:
        while every_second is not None and wrk.poll() is None:
            every_second()
            time.sleep(1)
        stdout, stderr = wrk.communicate()
    totals = WrkTotals.parse(stdout)
    if wrk.returncode != 0 or totals is None:
        raise RuntimeError(f"wrk failed:\n{stdout}\n{stderr}")
    return totals, stdout


def wrk_rate(base_url: str, script: str, seconds: float) -> float:
    """Successful requests per second of a wrk `script` (it defines `request`), WORKERS keep-alive
    connections for `seconds`."""
    with wrk_command(base_url, script, seconds) as command:
        totals, stdout = run_wrk(command)
    if totals.failed:
        print(f"    ({totals.failed} failed calls)", flush=True)
    # A script that counts its own units (an order is two calls) prints `counted: N` from done().
    counted = re.search(r"^counted: (\d+)$", stdout, re.MULTILINE)
    done = int(counted.group(1)) if counted else totals.calls - totals.failed
    return done / totals.seconds
