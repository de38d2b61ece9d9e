"""Every subscription test leaves nothing running: a subscription left to fall due would show as
overdue upkeep (rpc/upkeep_backlog, `mycelium health`) to the tests that run after it."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import TupleRow


@pytest.fixture(autouse=True)
def nothing_left_running(db: psycopg.Connection[TupleRow]) -> Iterator[None]:
    yield
    # A superuser connection acts as the service.
    db.execute(
        "select public.stop_subscription(s.id) from public.subscriptions s"
        " where s.status in ('active', 'grace', 'suspended')"
    )
