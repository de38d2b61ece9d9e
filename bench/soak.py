"""Soak benchmark (issue 18): mixed traffic through the gateway for a bounded time, on a local stack
of its own. Does it stay as fast at the end as at the start, and does the servers' memory stay flat?

    ./run bench soak                                   # 10 minutes, one-minute windows
    ./run bench soak --duration 60 --window 10 --json  # a one-minute smoke

The traffic, from wrk's C client (WORKERS connections, as fast as they go unless --pause slows them),
mixes what the marketplace's users do: balance reads, history pages, product searches, transfers,
orders (placed, then cancelled by the buyer or fulfilled by the provider) as signed-in users, and
credit purchases as the back end (service_role). Calls are spread over many users' tokens, so that
the gateway's limit per token (cli/dev/gateway.py's Limits) is not what is measured; calls it
answered 429 are counted and shown.

Each window (a minute by default) reports the calls per second and their p50/p99 latency, and the
peak private memory (RssAnon: the heap, what a leak grows) of PostgreSQL (the postmaster and all its
children, summed) and of PostgREST, sampled every second. The peak, because PostgREST's heap rises
and falls with its garbage collections (sampled once a minute, 30 then 46 then 34 MiB): one sample
lands anywhere on that sawtooth, a leak raises its peaks. Its cycle can outlast a window (peaks of
44 and 55 MiB, minute after minute), so memory is judged by its peak over the first and the last
fifth of the windows (two minutes of ten; a window at least). RSS is recorded too, but it also
counts the shared buffers a backend has touched, which fill up with data by design.

A window of the same traffic comes first, unmeasured: in it caches fill and the servers grow to
their working size (PostgREST's peak went from 32 to 50 MiB in its first two minutes, then stayed
between 45 and 54 MiB for eight), which is not what "flat" asks about. Targets, after that warm-up:
  p99 latency       last window / first window < 1.5
  private memory    peak in the last fifth / peak in the first fifth < 1.2, for each of PostgreSQL
                    and PostgREST ("flat")
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench._catalogue import add_products
from bench._load import WORKERS, WrkTotals, lua_locals, run_wrk, wrk_command
from bench._percentiles import Percentiles
from bench._results import run_benchmark
from bench._stack import fresh_stack
from bench._users import create_users, fund
from bench._verdicts import ratio, verdict
from cli.dev.gateway import Limits
from cli.dev.stack import LocalStack
from cli.keys import access_token

P99_GROWTH_TARGET = 1.5
MEMORY_GROWTH_TARGET = 1.2
PROVIDERS = 20
SERVERS = ("postgresql", "postgrest")

# What each call of the mix is, by weight (of 20): reads first, as a marketplace's traffic is.
MIX = {"balance": 5, "history": 3, "search": 4, "transfer": 2, "purchase": 1, "order": 5}
# An order placed is followed by its buyer's cancel or its provider's fulfil, counted apart.
KINDS = [*MIX, "cancel", "fulfil"]
# wrk's answers by class: ok (2xx, 3xx), rate_limited (429), refused (other 4xx), failed (5xx).
ANSWERS = ["ok", "rate_limited", "refused", "failed"]

# Search bodies a front end sends, each a page of 20.
SEARCHES = [
    '{"category":"compute","max_price":20,"sort":"price_asc"}',
    '{"location":"BE"}',
    '{"query":"ubuntu","category":"compute"}',
    '{"min_attributes":{"cpu":16},"sort":"price_asc"}',
    '{"attributes":{"gpu":true},"sort":"price_desc"}',
]

# After bench/_load.py's prelude and the data (lua_locals): user_ids, user_tokens (by user id),
# provider_tokens (by provider id), products, searches, mix, kinds, answers, apikey, service_key,
# pause_ms. Each thread keeps the orders it placed and follows each up with its next call; it counts
# what it sent by kind and what it was answered by class; done() prints the totals and the latency.
SOAK_SCRIPT = """
local pending = {}
local made = 0
for _, kind in ipairs(kinds) do _G["sent_" .. kind] = 0 end
for _, answer in ipairs(answers) do _G[answer] = 0 end
refusal = ""

local function unique()
  made = made + 1
  return RUN .. "-" .. thread_number .. "-" .. made
end
local function get(path, token)
  return wrk.format("GET", path, {["apikey"] = apikey, ["Authorization"] = "Bearer " .. token})
end
local function post(path, token, body, key)
  return wrk.format("POST", "/rest/v1/rpc/" .. path,
    {["apikey"] = key or apikey, ["Authorization"] = "Bearer " .. token,
     ["Content-Type"] = "application/json"}, body)
end

local calls = {
  balance = function(user)
    return get("/rest/v1/credit_accounts?select=balance,held", user_tokens[user])
  end,
  history = function(user)
    return get("/rest/v1/credit_transactions?select=*&order=created_at.desc,id.desc&limit=20",
      user_tokens[user])
  end,
  search = function(user)
    return post("search_products", user_tokens[user], searches[math.random(#searches)])
  end,
  transfer = function(user, n)
    -- Anyone but the sender.
    local to = user_ids[(n + math.random(#user_ids - 1) - 1) % #user_ids + 1]
    return post("transfer_credits", user_tokens[user],
      '{"recipient":"' .. to .. '","amount":0.01,"memo":"soak","idempotency_key":"' .. unique() .. '"}')
  end,
  purchase = function(user)
    return post("purchase_credits", service_key,
      '{"user_id":"' .. user .. '","usd_amount":1,"payment_reference":"' .. unique() .. '"}', service_key)
  end,
  order = function(user)
    return post("place_order", user_tokens[user],
      '{"items":[{"product_id":"' .. products[math.random(#products)] .. '","quantity":1}],' ..
      '"idempotency_key":"' .. unique() .. '"}')
  end,
}

local function send(kind, ...)
  _G["sent_" .. kind] = _G["sent_" .. kind] + 1
  return ...
end

request = function()
  local order = table.remove(pending)
  if order then
    local body = '{"order_id":"' .. order.id .. '"}'
    if math.random(3) == 1 then
      return send("cancel", post("cancel_order", user_tokens[order.buyer], body))
    end
    local sessions = provider_tokens[order.provider]
    return send("fulfil", post("fulfil_order", sessions[math.random(#sessions)], body))
  end
  local kind = mix[math.random(#mix)]
  local n = math.random(#user_ids)
  return send(kind, calls[kind](user_ids[n], n))
end

if pause_ms > 0 then
  delay = function() return pause_ms end
end

response = function(status, headers, body)
  if status == 429 then rate_limited = rate_limited + 1
  elseif status >= 500 then failed = failed + 1
  elseif status >= 400 then
    refused = refused + 1
    if refusal == "" then refusal = status .. " " .. body:sub(1, 200) end
  else
    ok = ok + 1
    -- place_order's answer (jsonb puts the shortest key first: the first "id" is the order's).
    if body:match('"status": "pending"') then
      table.insert(pending, {id = body:match('"id": "([^"]+)"'), buyer = body:match('"buyer_id": "([^"]+)"'),
                             provider = body:match('"provider_id": "([^"]+)"')})
    end
  end
end

done = function(summary, latency, requests)
  io.write("latency p50: " .. latency:percentile(50) .. "\\n")
  io.write("latency p99: " .. latency:percentile(99) .. "\\n")
  local counted = {}
  for _, kind in ipairs(kinds) do table.insert(counted, "sent_" .. kind) end
  for _, answer in ipairs(answers) do table.insert(counted, answer) end
  for _, name in ipairs(counted) do
    local total = 0
    for _, thread in ipairs(threads) do total = total + thread:get(name) end
    io.write("count " .. name .. ": " .. total .. "\\n")
  end
  for _, thread in ipairs(threads) do
    local seen = thread:get("refusal")
    if seen ~= "" then io.write("refusal: " .. seen:gsub("\\n", " ") .. "\\n") break end
  end
end
"""


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """Bytes resident in memory, summed over a server's processes: all of it (RSS) and the private
    part (RssAnon), which excludes shared memory and mapped files."""

    rss: int
    private: int

    @property
    def private_mib(self) -> float:
        return self.private / 2**20

    @classmethod
    def peak(cls, samples: list[Memory]) -> Memory:
        return cls(max(sample.rss for sample in samples), max(sample.private for sample in samples))


def memory_of(pids: list[int]) -> Memory:
    """The processes' memory from /proc/<pid>/status; one that ended meanwhile counts for nothing."""
    rss = private = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = dict(re.findall(r"^(VmRSS|RssAnon):\s+(\d+) kB$", status, re.MULTILINE))
        rss += int(fields.get("VmRSS", 0)) * 1024
        private += int(fields.get("RssAnon", 0)) * 1024
    return Memory(rss, private)


def with_children(parent: int) -> list[int]:
    """`parent` and the processes it started (PostgreSQL's backends and background workers)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name, in parentheses, may hold spaces: the parent's pid follows the state.
            after_name = stat.read_text().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(after_name[1]) == parent:
            children.append(int(stat.parent.name))
    return [parent, *children]


def servers_memory(stack: LocalStack) -> dict[str, Memory]:
    postmaster = int((stack.cluster.data / "postmaster.pid").read_text().split()[0])
    postgrest = stack.postgrest.pid()
    return {
        "postgresql": memory_of(with_children(postmaster)),
        "postgrest": memory_of([] if postgrest is None else [postgrest]),
    }


# ---------------------------------------------------------------------------------------------
# Windows and the report
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One window of traffic: calls answered in how long, their latency, what was sent by kind and
    answered by class (plus socket errors), and the servers' peak memory."""

    start: float
    seconds: float
    calls: int
    latency: Percentiles
    sent: dict[str, int]
    answers: dict[str, int]
    socket_errors: int
    memory: dict[str, Memory]
    refusal: str | None = None

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "start_s": self.start,
            "seconds": self.seconds,
            "calls": self.calls,
            "per_second": self.per_second,
            "p50_ms": self.latency.p50 * 1e3,
            "p99_ms": self.latency.p99 * 1e3,
            "sent": self.sent,
            "answers": self.answers,
            "socket_errors": self.socket_errors,
            "memory": {
                server: {"rss_bytes": memory.rss, "private_bytes": memory.private}
                for server, memory in self.memory.items()
            },
            "refusal": self.refusal,
        }


def window_of(start: float, totals: WrkTotals, stdout: str, memory: dict[str, Memory]) -> Window:
    """A window from wrk's output with SOAK_SCRIPT (latencies in microseconds, counts)."""
    latency = dict(re.findall(r"^latency (p50|p99): ([\d.]+)$", stdout, re.MULTILINE))
    counts = {name: int(n) for name, n in re.findall(r"^count (\w+): (\d+)$", stdout, re.MULTILINE)}
    refusal = re.search(r"^refusal: (.*)$", stdout, re.MULTILINE)
    answers = {answer: counts.get(answer, 0) for answer in ANSWERS}
    return Window(
        start=start,
        seconds=totals.seconds,
        calls=totals.calls,
        latency=Percentiles(float(latency["p50"]) / 1e6, float(latency["p99"]) / 1e6),
        sent={kind: counts.get(f"sent_{kind}", 0) for kind in KINDS},
        answers=answers,
        # wrk's failures are its answers of 400 and over (the script's classes but ok) and socket errors.
        socket_errors=max(0, totals.failed - sum(n for answer, n in answers.items() if answer != "ok")),
        memory=memory,
        refusal=refusal.group(1) if refusal else None,
    )


@dataclass(frozen=True)
class Growth:
    """A figure at the soak's end against the same at its start, and the ratio it must stay under."""

    name: str
    first: float
    last: float
    target: float
    unit: str

    @property
    def ratio(self) -> float | None:
        return ratio(self.last, self.first)

    @property
    def verdict(self) -> str:
        return verdict(self.ratio, self.target, below=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "measure": self.name,
            f"first_{self.unit.lower()}": self.first,
            f"last_{self.unit.lower()}": self.last,
            "ratio": self.ratio,
            "target_below": self.target,
            "verdict": self.verdict,
        }


def growths(windows: list[Window]) -> list[Growth]:
    """p99 latency, last window against the first; each server's private memory, its peak over the
    last fifth of the windows against its peak over the first fifth (a window at least)."""
    first, last = windows[0], windows[-1]
    rows = [Growth("p99 latency", first.latency.p99 * 1e3, last.latency.p99 * 1e3, P99_GROWTH_TARGET, "ms")]
    ends = max(1, round(len(windows) / 5))
    for server in SERVERS:
        before, after = (
            Memory.peak([window.memory[server] for window in part])
            for part in (windows[:ends], windows[-ends:])
        )
        rows.append(
            Growth(
                f"{server} private memory", before.private_mib, after.private_mib, MEMORY_GROWTH_TARGET, "MiB"
            )
        )
    return rows


def print_report(windows: list[Window]) -> int:
    """The windows' table and the verdicts; returns how many targets were missed."""
    print(
        f"{'window':>12} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'429':>6} {'4xx':>6} {'5xx':>5}"
        f" {'sockets':>7} {'PostgreSQL MiB':>15} {'PostgREST MiB':>14}"
    )
    for window in windows:
        span = f"{window.start:.0f}-{window.start + window.seconds:.0f}s"
        answers, memory = window.answers, window.memory
        print(
            f"{span:>12} {window.per_second:>9,.0f} {window.latency.p50 * 1e3:>8.1f} "
            f"{window.latency.p99 * 1e3:>8.1f} {answers['rate_limited']:>6} {answers['refused']:>6} "
            f"{answers['failed']:>5} {window.socket_errors:>7} "
            f"{memory['postgresql'].private_mib:>15.1f} {memory['postgrest'].private_mib:>14.1f}"
        )
    print("(memory: private, RssAnon, the window's peak; PostgreSQL: the postmaster and its children)")
    limited = sum(window.answers["rate_limited"] for window in windows)
    if limited:
        print(
            f"the gateway's rate limit answered {limited:,} calls 429: it, not only the servers, "
            "bounds this load (use more --users, or a --pause)"
        )
    refusal = next((window.refusal for window in windows if window.refusal), None)
    if refusal:
        print(f"a refused call: {refusal}")
    print()
    print(f"{'the end against the start':34} {'first':>12} {'last':>10} {'ratio':>7} {'target':>7}  verdict")
    missed = 0
    for row in growths(windows):
        shown = "n/a" if row.ratio is None else f"{row.ratio:.2f}"
        print(
            f"{row.name:34} {row.first:>8.1f} {row.unit:<3} {row.last:>6.1f} {row.unit:<3} {shown:>7} "
            f"{f'< {row.target:g}':>7}  {row.verdict}"
        )
        missed += row.verdict == "MISSED"
    return missed


def report(windows: list[Window], missed: int) -> dict[str, Any]:
    return {
        "windows": [window.as_dict() for window in windows],
        "last_against_first": [row.as_dict() for row in growths(windows)],
        "rate_limited": sum(window.answers["rate_limited"] for window in windows),
        "targets_missed": missed,
    }


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def setup(conn: psycopg.Connection[Any], stack: LocalStack, args: argparse.Namespace) -> str:
    """Funded users, providers (farmers) and their catalogue; returns the traffic's Lua data."""
    print(f"setup: {args.users} users, {PROVIDERS} providers, {args.products:,} products", flush=True)
    users = create_users(conn, args.users)
    fund(conn, users, "1000000")
    providers = create_users(conn, PROVIDERS)
    conn.execute(
        "insert into public.user_roles (user_id, role) select unnest(%s::uuid[]), 'farmer'", (providers,)
    )
    add_products(conn, providers, args.products)
    products = [str(row[0]) for row in conn.execute("select id from public.products").fetchall()]
    secret = stack.jwt_secret
    return lua_locals(
        user_ids=users,
        user_tokens={user: access_token(secret, user) for user in users},
        # A provider fulfils the orders of many buyers: from several sessions, as a back office would.
        provider_tokens={
            p: [access_token(secret, p) for _ in range(args.provider_sessions)] for p in providers
        },
        products=products,
        searches=SEARCHES,
        mix=[kind for kind, weight in MIX.items() for _ in range(weight)],
        kinds=KINDS,
        answers=ANSWERS,
        apikey=stack.anon_key,
        service_key=stack.service_role_key,
    )


def traffic(
    stack: LocalStack, script: str, seconds: float, args: argparse.Namespace
) -> tuple[WrkTotals, str, dict[str, Memory]]:
    """The traffic for `seconds`: wrk's totals and output, and the servers' peak memory meanwhile."""
    samples: list[dict[str, Memory]] = []
    with wrk_command(stack.api_url, script, seconds, connections=args.connections) as command:
        totals, stdout = run_wrk(command, every_second=lambda: samples.append(servers_memory(stack)))
    return totals, stdout, {server: Memory.peak([sample[server] for sample in samples]) for server in SERVERS}


def measure(args: argparse.Namespace, results: dict[str, Any]) -> int:
    count = int(args.duration // args.window)
    if count < 1 or args.window < 1:
        raise SystemExit("--duration must hold at least one --window of a second or more")
    # A pause after each answer, not a rate: wrk's scripts have no clock to keep a schedule by.
    pace = f"each pausing {args.pause} ms after each answer" if args.pause else "as fast as they go"
    limits = Limits()
    print("bringing up a local stack", flush=True)
    with fresh_stack(start_port=48500) as stack:
        with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
            script = setup(conn, stack, args) + f"local pause_ms = {args.pause}\n" + SOAK_SCRIPT
        print(
            f"{count} windows of {args.window}s after one of warm-up: {args.connections} "
            f"connections {pace}; gateway limit per token {limits.user_per_second}/s "
            f"(burst {limits.user_burst})",
            flush=True,
        )
        traffic(stack, script, args.window, args)
        windows = []
        for number in range(count):
            totals, stdout, memory = traffic(stack, script, args.window, args)
            windows.append(window_of(number * args.window, totals, stdout, memory))
            print(f"    window {number + 1}: {windows[-1].per_second:,.0f} calls/s", flush=True)
        with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
            problems = conn.execute("select count(*) from public.audit_ledger()").fetchone()
    print()
    missed = print_report(windows)
    print(f"\naudit_ledger(): {problems[0] if problems else '?'} problems")
    missed += bool(problems and problems[0])
    results.update(
        duration_s=count * args.window,
        window_s=args.window,
        connections=args.connections,
        pause_ms=args.pause,
        users=args.users,
        products=args.products,
        audit_problems=problems[0] if problems else None,
        **report(windows, missed),
    )
    return 1 if missed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=600, help="seconds of measured traffic")
    parser.add_argument("--window", type=int, default=60, help="seconds a window (a line of the report)")
    parser.add_argument("--pause", type=int, default=0, help="ms each connection waits after each answer")
    parser.add_argument("--connections", type=int, default=WORKERS)
    parser.add_argument("--users", type=int, default=500, help="signed-in users, one token each")
    parser.add_argument("--provider-sessions", type=int, default=5, help="tokens each provider fulfils from")
    parser.add_argument("--products", type=int, default=10_000)
    return run_benchmark(parser, measure)


if __name__ == "__main__":
    raise SystemExit(main())
