"""audit_ledger() finds what is broken (SQL level: only a superuser can break the ledger)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg
from psycopg.rows import TupleRow

from tests.support import Api, User, body

MakeUser = Callable[..., User]


def test_audit_reports_each_broken_invariant(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    rich, poor, lonely = make_user(), make_user(), make_user()
    for user in (rich, poor):
        reply = service_api.rpc(
            "purchase_credits", user_id=user.id, usd_amount="10", payment_reference=f"a-{uuid.uuid4()}"
        )
        assert reply.status_code == 200, reply.text
    assert body(service_api.rpc("audit_ledger")) == []

    with db.transaction(force_rollback=True):
        # A balance changed behind the ledger's back.
        db.execute("update public.credit_accounts set balance = balance + 1 where user_id = %s", (rich.id,))
        # A lot that its account does not count.
        db.execute(
            "insert into public.credit_lots (user_id, amount, remaining, expires_at) "
            "values (%s, 2, 2, now() + interval '1 day')",
            (poor.id,),
        )
        # A transfer without its entry (credits issued to nobody's history).
        db.execute(
            "insert into mycelium_private.transfers (kind, from_system, to_user, amount) "
            "values ('grant', 'issuance', %s, 3)",
            (lonely.id,),
        )
        found = {(check, subject) for check, subject, _ in db.execute("select * from public.audit_ledger()")}
    assert ("sum_zero", "ledger") in found
    assert ("balance_equals_entries", rich.id) in found
    assert ("balance_after_of_last_entry", rich.id) in found
    assert ("lots_equal_expiring", poor.id) in found
    assert ("entries_equal_transfers", lonely.id) in found
    assert body(service_api.rpc("audit_ledger")) == []


def test_daily_rollups_give_the_same_stats_as_live_sums(
    make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    user = make_user()
    stats = "select * from public.platform_daily_stats(current_date - 20, current_date)"
    with db.transaction(force_rollback=True):
        # Movements on past days (rolled back with everything else at the end).
        db.execute(
            "insert into mycelium_private.transfers (kind, from_system, to_user, amount, created_at) "
            "select 'grant', 'issuance', %s, g, now() - g * interval '1 day' from generate_series(1, 15) g",
            (user.id,),
        )
        live = db.execute(stats).fetchall()
        added = db.execute("select public.refresh_ledger_rollups()").fetchone()
        assert added is not None and added[0] >= 14
        assert db.execute("select public.refresh_ledger_rollups()").fetchone() == (0,)
        assert db.execute(stats).fetchall() == live
        by_day = {row[0]: row for row in live}
        assert all(
            by_day[day][3] >= g
            for day, g in db.execute(
                "select (now() - g * interval '1 day')::date, g from generate_series(2, 14) g"
            )
        )


def test_refresh_rollups_is_for_admins(make_user: MakeUser) -> None:
    reply = make_user().api.rpc("refresh_ledger_rollups")
    assert reply.status_code == 403 and body(reply)["code"] == "not_authorized"
