"""Marketplace benchmark: orders placed and fulfilled per second through direct SQL and through
PostgREST (8 workers, many buyers, 50 providers; then every order for one popular provider),
against pgbench's tpcb-like transactions per second on the same server, and the latency of
product search pages at 1,000 and at 100,000 products.

    ./run bench orders                 # brings up its own local stack, then removes it
    ./run bench orders --cycles 2      # a quicker, noisier run

One order = place_order (the hold) then fulfil_order (the capture) by the product's provider: two
transactions. Every figure is measured in this one run; throughput measures run in short slices,
cycling through the yardstick and every measure many times, and each keeps its mean. The direct-SQL
orders and the yardstick run in both of pgbench's protocols, prepared and simple, and each ratio
compares two measures sent the same way (as bench/ledger.py does); the targets are taken prepared,
as PostgREST sends its queries. Targets (issue 4):
  one popular provider       >= 0.6 x orders spread over 50 providers (platform revenue is a
                             derived account: it must not serialise orders)
  filtered search page       at 100,000 products / at 1,000 products < 2 (indexes, not scans)
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import psycopg

from bench._catalogue import add_products
from bench._cycles import Rate, add_cycle_options, cycled_rates, in_protocol, in_protocols, yardstick_name
from bench._load import PROTOCOLS, Protocol, gset_value, lua_locals, script_rate, wrk_rate
from bench._reads import REFERENCE, Read, growth, print_reference, timed_reads
from bench._results import run_benchmark
from bench._stack import Target, add_target_options, on_target
from bench._users import create_users, fund
from bench._verdicts import LatencyRow, RateRow, print_latencies, print_rates_by_protocol
from cli.dev.gateway import Limits

PROVIDERS = 50
PRODUCTS_PER_PROVIDER = 20
# The gateway limits each access token (50 calls a second, cli/dev/gateway.py's Limits): one token
# fulfilling every order of the popular provider measured that limit, not the database. Each
# provider fulfils from this many sessions (tokens) instead, as a busy provider's back office would.
PROVIDER_SESSIONS = 20


def order_script(products: str, protocol: Protocol) -> str:
    """One order by direct SQL through pgbench, sent in `protocol`: buyers and products looked up by
    number in bench-only tables (mycelium_bench.`products`); the order id and its provider come back
    from place_order into pgbench variables (\\gset)."""
    items = "jsonb_build_array(jsonb_build_object('product_id', p.id, 'quantity', 1))"
    order = f"public.place_order({items}) ->> 'id'"
    return f"""
\\set b random(1, :buyers)
\\set p random(1, :products)
select set_config('request.jwt.claims',
                  json_build_object('sub', u.id, 'role', 'authenticated')::text, true) as claimed,
       {gset_value(order, protocol)} as order_id,
       {gset_value("p.provider_id", protocol)} as provider_id
from mycelium_bench.buyers u, mycelium_bench.{products} p where u.n = :b and p.n = :p
\\gset
select set_config('request.jwt.claims',
                  json_build_object('sub', :provider_id::uuid, 'role', 'authenticated')::text, true),
       public.fulfil_order(:order_id::uuid);
"""


def order_rate(
    db_url: str, products: str, variables: dict[str, int], seconds: float, protocol: Protocol
) -> float:
    """Orders per second by direct SQL (`order_script`), sent in `protocol`."""
    return script_rate(db_url, order_script(products, protocol), variables, seconds, protocol)


# PostgREST through wrk: a thread places an order as a random buyer for a random product, and
# fulfils it as that product's provider, from one of its sessions, with its next call; an order
# counts once fulfilled.
HTTP_SCRIPT = """
local pending = {}
fulfilled = 0
request = function()
  local order = table.remove(pending)
  if order then
    local sessions = provider_tokens[order.provider]
    return wrk.format("POST", "/rest/v1/rpc/fulfil_order",
      {["apikey"] = apikey, ["Authorization"] = "Bearer " .. sessions[math.random(#sessions)],
       ["Content-Type"] = "application/json"},
      '{"order_id":"' .. order.id .. '"}')
  end
  return wrk.format("POST", "/rest/v1/rpc/place_order",
    {["apikey"] = apikey, ["Authorization"] = "Bearer " .. buyer_tokens[math.random(#buyer_tokens)],
     ["Content-Type"] = "application/json"},
    '{"items":[{"product_id":"' .. products[math.random(#products)] .. '","quantity":1}]}')
end
response = function(status, headers, body)
  if status ~= 200 then return end
  local state = body:match('"status": "(%a+)"')
  if state == "pending" then
    -- jsonb puts the shortest key first: the first "id" is the order's.
    local order = body:match('"id": "([^"]+)"')
    table.insert(pending, {id = order, provider = body:match('"provider_id": "([^"]+)"')})
  elseif state == "fulfilled" then
    fulfilled = fulfilled + 1
  end
end
done = function(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("fulfilled") end
  io.write("counted: " .. total .. "\\n")
end
"""


def http_rate(
    target: Target,
    buyer_tokens: list[str],
    products: list[tuple[str, str]],
    provider_tokens: dict[str, list[str]],
    seconds: float,
) -> float:
    """Orders per second through the gateway, `products` being (product_id, provider_id), each
    provider fulfilling from its sessions' tokens (`provider_tokens`)."""
    assert target.api_url and target.anon_key
    providers = sorted({provider for _, provider in products})
    data = lua_locals(
        apikey=target.anon_key,
        buyer_tokens=buyer_tokens,
        products=[product for product, _ in products],
        provider_tokens={provider: provider_tokens[provider] for provider in providers},
    )
    return wrk_rate(target.api_url, data + HTTP_SCRIPT, seconds)


# ---------------------------------------------------------------------------------------------
# Catalogue search
# ---------------------------------------------------------------------------------------------


# A filter mix a marketplace front end sends, and the next page of the first. Each fills its page
# of 20 at 1,000 products already, so both sizes do the same work when indexes serve the page (a
# filter too narrow to fill a page at 1,000 products would compare a short page with a full one).
SEARCHES: dict[str, str] = {
    "category + price range, by price": (
        "select * from public.search_products(category => 'compute', min_price => 5, max_price => 20,"
        " sort => 'price_asc')"
    ),
    "location, newest": "select * from public.search_products(location => 'BE')",
    "full text + category, newest": (
        "select * from public.search_products(query => 'ubuntu', category => 'compute')"
    ),
    "attribute minimums (cpu >= 16), by price": (
        "select * from public.search_products(min_attributes => '{\"cpu\": 16}', sort => 'price_asc')"
    ),
    "gpu, price descending": (
        "select * from public.search_products(attributes => '{\"gpu\": true}', sort => 'price_desc')"
    ),
}
NEXT_PAGE = (
    "select * from public.search_products(category => 'compute', min_price => 5, max_price => 20,"
    " sort => 'price_asc', after => %s::jsonb)"
)


def search_latencies(conn: psycopg.Connection[Any], repeat: int) -> dict[str, float]:
    """Median seconds per search page, as anon (and of REFERENCE, timed alongside)."""
    reads: dict[str, Read] = {name: (None, query, ()) for name, query in SEARCHES.items()}
    first = conn.execute(SEARCHES["category + price range, by price"]).fetchall()
    cursor = json.dumps(first[-1][-1]) if first else None
    reads["next page (keyset) of the first"] = (None, NEXT_PAGE, (cursor,))
    return timed_reads(conn, reads, repeat)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def throughput_rows(rates: Mapping[str, Rate], protocol: Protocol) -> list[RateRow]:
    """The throughput table of one protocol: the direct-SQL orders against the yardstick sent alike.
    Targets are the prepared table's; the orders through PostgREST, which prepares its queries,
    show there, against the direct SQL sent prepared."""
    tpcb = rates.get(yardstick_name(protocol))
    sql_many = rates.get(in_protocol("sql_many", protocol))
    popular_target = 0.6 if protocol == "prepared" else None
    rows = [
        RateRow("pgbench tpcb-like (tps)", tpcb),
        RateRow("direct SQL orders, 50 providers", sql_many, tpcb),
        RateRow(
            "direct SQL orders, one popular provider",
            rates.get(in_protocol("sql_popular", protocol)),
            sql_many,
            popular_target,
        ),
    ]
    if protocol == "prepared":
        http_many = rates.get("http_many")
        rows += [
            RateRow("PostgREST orders, 50 providers", http_many, sql_many),
            RateRow("PostgREST orders, one popular provider", rates.get("http_popular"), http_many, 0.6),
        ]
    return rows


def setup(conn: psycopg.Connection[Any], buyers_count: int) -> tuple[list[str], list[str]]:
    print(
        f"setup: {buyers_count} buyers, {PROVIDERS} providers x {PRODUCTS_PER_PROVIDER} products", flush=True
    )
    buyers = create_users(conn, buyers_count)
    providers = create_users(conn, PROVIDERS)
    conn.execute(
        "insert into public.user_roles (user_id, role) select unnest(%s::uuid[]), 'farmer'", (providers,)
    )
    fund(conn, buyers, "1000000")
    add_products(conn, providers, PROVIDERS * PRODUCTS_PER_PROVIDER)
    conn.execute("drop schema if exists mycelium_bench cascade")
    conn.execute("create schema mycelium_bench")
    conn.execute("create table mycelium_bench.buyers (n integer primary key, id uuid not null)")
    conn.execute(
        "insert into mycelium_bench.buyers select n, id from unnest(%s::uuid[]) with ordinality u(id, n)",
        (buyers,),
    )
    for table, only in (("products", None), ("popular", providers[0])):
        conn.execute(
            f"create table mycelium_bench.{table} as"
            " select row_number() over (order by id)::integer as n, id, provider_id from public.products"
            " where %s::uuid is null or provider_id = %s::uuid",
            (only, only),
        )
    conn.execute("grant usage on schema mycelium_bench to postgres")
    conn.execute("grant select on all tables in schema mycelium_bench to postgres")
    return buyers, providers


def measure(target: Target, args: argparse.Namespace, results: dict[str, Any]) -> int:
    seconds = args.seconds
    admin_url = target.superuser_db_url or target.db_url
    with psycopg.connect(admin_url, autocommit=True) as conn:
        buyers, providers = setup(conn, args.buyers)
        product_rows = conn.execute("select id::text, provider_id::text from public.products").fetchall()
        print(f"search at {len(product_rows):,} products", flush=True)
        small = search_latencies(conn, args.repeat)

    counts = {"buyers": len(buyers), "products": PROVIDERS * PRODUCTS_PER_PROVIDER}
    popular_counts = {"buyers": len(buyers), "products": PRODUCTS_PER_PROVIDER}
    measures = in_protocols(
        {
            "sql_many": partial(order_rate, target.db_url, "products", counts, seconds),
            "sql_popular": partial(order_rate, target.db_url, "popular", popular_counts, seconds),
        }
    )
    if target.api_url and target.jwt_secret:
        from cli.keys import access_token

        def token(user: str) -> str:
            return access_token(target.jwt_secret or "", uuid.UUID(user), email=None)

        buyer_tokens = [token(b) for b in buyers]
        provider_tokens = {p: [token(p) for _ in range(PROVIDER_SESSIONS)] for p in providers}
        popular_rows = [(product, provider) for product, provider in product_rows if provider == providers[0]]

        def orders_rate(rows: list[tuple[str, str]]) -> Callable[[], float]:
            return lambda: http_rate(target, buyer_tokens, rows, provider_tokens, seconds)

        measures["http_popular"] = orders_rate(popular_rows)
        measures["http_many"] = orders_rate(product_rows)
    rates = cycled_rates(admin_url, args.pgbench_scale, args.cycles, seconds, measures, PROTOCOLS)

    with psycopg.connect(admin_url, autocommit=True) as conn:
        missing = args.products - int(conn.execute("select count(*) from public.products").fetchone()[0])  # type: ignore[index]
        print(f"adding {missing:,} products", flush=True)
        started = time.perf_counter()
        add_products(conn, providers, missing)
        print(
            f"    added in {time.perf_counter() - started:.1f}s; search at {args.products:,} products",
            flush=True,
        )
        large = search_latencies(conn, args.repeat)
        problems = conn.execute("select count(*) from public.audit_ledger()").fetchone()

    print()
    print(
        "orders = place_order + fulfil_order; ratios: 50 providers against tpcb-like (direct SQL) or "
        "direct SQL sent prepared (PostgREST), one popular provider against 50 providers"
    )
    if target.api_url:
        print(
            f"PostgREST: {len(buyers):,} buyers' tokens, {PROVIDER_SESSIONS} sessions' tokens a provider "
            f"(the gateway limits each token to {Limits.user_per_second} calls a second)"
        )
    missed, results["throughput"] = print_rates_by_protocol(partial(throughput_rows, rates))
    results["provider_sessions"] = PROVIDER_SESSIONS
    results["rates"] = {name: {"mean": rate.mean, "cycles": rate.samples} for name, rate in rates.items()}
    print()
    pages = [
        LatencyRow(name, small[name], large[name], growth(large, small, name), 2)
        for name in small
        if name != REFERENCE
    ]
    missed += print_latencies(pages, ("search page (median, anon)", "1,000", f"{args.products:,}"))
    print_reference(small, large)
    results["search_pages"] = [page.as_dict() for page in pages]
    print(f"\naudit_ledger(): {problems[0] if problems else '?'} problems")
    missed += bool(problems and problems[0])
    results["audit_problems"] = problems[0] if problems else None
    results["targets_missed"] = missed
    return 1 if missed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_target_options(parser, "an existing database (role postgres): direct SQL and search only")
    add_cycle_options(parser, cycles=6)
    parser.add_argument("--buyers", type=int, default=1000)
    parser.add_argument("--products", type=int, default=100_000, help="catalogue size for the large search")
    parser.add_argument("--repeat", type=int, default=200, help="samples per search latency")
    parser.add_argument("--pgbench-scale", type=int, default=10)

    return run_benchmark(parser, on_target(measure, start_port=47500))


if __name__ == "__main__":
    raise SystemExit(main())
