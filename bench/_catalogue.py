"""A catalogue for the benchmarks: products written straight into `public.products`."""

from __future__ import annotations

from typing import Any

import psycopg

LOCATIONS = ["BE", "DE", "NL", "FR", "CH", "AT", "US", "CA", "EG", "IN", "SG", "JP", "BR", "ZA", "AU"]


def add_products(conn: psycopg.Connection[Any], providers: list[str], count: int) -> None:
    """`count` products spread over `providers` (farmers): compute, node and gateway, prices from
    0.1 to 100, cpu, memory, gpu (one in ten) and a location each (drawn independently, so that
    no filter combination is empty by construction), created over the last days."""
    conn.execute(
        """
        insert into public.products
          (provider_id, category, name, description, price, unit, attributes, created_at)
        select (%(providers)s::uuid[])[1 + g %% cardinality(%(providers)s::uuid[])],
               (array['compute', 'compute', 'compute', 'node', 'gateway'])[1 + g %% 5],
               (array['Ubuntu', 'Debian', 'Alpine', 'Fedora', 'NixOS', 'Arch'])[1 + (g * 7) %% 6]
                 || (array[' slice', ' node', ' gateway'])[1 + g %% 3] || ' ' || g,
               (array['fast NVMe storage', 'certified farm', 'public IPv4', 'low latency', 'green energy'])
                 [1 + (g * 3) %% 5] || ', ' || (array['small', 'medium', 'large', 'huge'])[1 + g %% 4],
               round((0.1 + random() * 99.9)::numeric, 6),
               (array['hour', 'month', 'once'])[1 + g %% 3],
               jsonb_build_object(
                 'cpu', (array[1, 2, 4, 8, 16, 32])[1 + (g * 5) %% 6],
                 'memory_gb', (array[2, 4, 8, 16, 64, 256])[1 + (g * 11) %% 6],
                 'gpu', random() < 0.1,
                 'location', (%(locations)s::text[])
                   [1 + floor(random() * cardinality(%(locations)s::text[]))::int]),
               now() - (g * interval '1 second')
        from generate_series(1, %(count)s) g
        """,
        {"providers": providers, "locations": LOCATIONS, "count": count},
    )
    conn.execute("analyze public.products")
