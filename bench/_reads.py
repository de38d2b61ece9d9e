"""Read latencies timed in SQL, as a user (RLS applies) or as anon, each set of reads beside a
reference read that carries the machine's speed of the moment."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import psycopg

from bench._verdicts import ratio

# A read to time: as whom (a user id: RLS applies; None: anon), the query, its parameters.
Read = tuple[str | None, str, tuple[Any, ...]]

# Timed alongside every set of reads: a read that touches no table, whose time is the machine's
# speed at that moment (a round trip, a transaction, a role switch) and nothing else.
REFERENCE = "reference"


def claims(user_id: str) -> str:
    return json.dumps({"sub": user_id, "role": "authenticated"})


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
