"""The periodic jobs' SQL: the bounded batches they work in, and rpc/upkeep_backlog (what they have
left undone past its due time), through PostgREST (and at the SQL level for days of the past,
which only a superuser can write)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from tests.support import Api, body
from tests.support.marketplace import MakeUser, abandoned_order, expired_promotion


def backlog(api: Api, **args: Any) -> dict[str, dict[str, Any]]:
    reply = api.rpc("upkeep_backlog", **args)
    assert reply.status_code == 200, reply.text
    return {row["job"]: row for row in body(reply)}


def test_the_service_and_admins_read_every_jobs_backlog(service_api: Api, make_user: MakeUser) -> None:
    # Anyone else is refused: tests/security/test_credits.py, ADMIN_ONLY.
    jobs = {"release_expired_holds", "expire_credits", "refresh_ledger_rollups", "charge_due_subscriptions"}
    assert set(backlog(service_api)) == jobs
    assert set(backlog(make_user("admin").api)) == jobs


def test_abandoned_holds_are_overdue_until_released(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    abandoned_order(service_api, make_user, db)  # pending 25 hours, its hold's time to live 24
    overdue = backlog(service_api)["release_expired_holds"]
    assert overdue["overdue"] >= 1
    assert datetime.fromisoformat(overdue["due_since"]) <= datetime.now(UTC) - timedelta(minutes=59)
    # Within the grace given, it is not overdue yet.
    assert backlog(service_api, grace="2 hours")["release_expired_holds"]["overdue"] == 0
    assert service_api.rpc("release_expired_holds").status_code == 200
    assert backlog(service_api)["release_expired_holds"] == {
        "job": "release_expired_holds",
        "overdue": 0,
        "due_since": None,
    }


def test_expired_lots_are_overdue_until_swept(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    assert service_api.rpc("expire_credits").status_code == 200  # whatever other tests left
    expired_promotion(service_api, make_user, db)  # expired a minute ago
    assert backlog(service_api)["expire_credits"]["overdue"] == 0  # within the 15 minutes' grace
    assert backlog(service_api, grace="0 seconds")["expire_credits"]["overdue"] >= 1
    assert service_api.rpc("expire_credits").status_code == 200
    assert backlog(service_api, grace="0 seconds")["expire_credits"]["overdue"] == 0


def test_complete_days_are_overdue_until_rolled_up_a_batch_at_a_time(
    db: psycopg.Connection[TupleRow],
) -> None:
    def days() -> tuple[int, datetime | None]:
        row = db.execute(
            "select overdue, due_since from public.upkeep_backlog() where job = 'refresh_ledger_rollups'"
        ).fetchone()
        assert row is not None
        return row[0], row[1]

    def refresh(max_days: int) -> int:
        row = db.execute("select public.refresh_ledger_rollups(%s)", (max_days,)).fetchone()
        assert row is not None
        return int(row[0])

    assert days() == (0, None)  # the session's ledger starts today
    with db.transaction(force_rollback=True):
        db.execute(
            "insert into mycelium_private.transfers (kind, from_system, to_system, amount, created_at) "
            "values ('grant', 'issuance', 'expiry', 1, now() - interval '5 days')"
        )
        overdue, due_since = days()
        # Five days ago up to yesterday, or to the day before in the first hour and a quarter of a day.
        assert overdue in (4, 5)
        # The first of them fell due at one o'clock the next morning.
        first = (datetime.now(UTC) - timedelta(days=5)).date() + timedelta(days=1)
        assert due_since == datetime(first.year, first.month, first.day, 1, tzinfo=UTC)
        assert refresh(2) == 2  # oldest first
        assert days() == (overdue - 2, due_since + timedelta(days=2))
        assert refresh(31) >= overdue - 2
        assert days() == (0, None)


def test_each_job_works_in_bounded_batches(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    for _ in range(2):
        abandoned_order(service_api, make_user, db)
    assert body(service_api.rpc("release_expired_holds", max_orders=1))["orders_released"] == 1
    assert backlog(service_api)["release_expired_holds"]["overdue"] >= 1
    assert body(service_api.rpc("release_expired_holds"))["orders_released"] >= 1

    assert service_api.rpc("expire_credits").status_code == 200
    for _ in range(2):
        expired_promotion(service_api, make_user, db)
    assert body(service_api.rpc("expire_credits", max_lots=1))["lots_expired"] == 1
    assert body(service_api.rpc("expire_credits", max_lots=1))["lots_expired"] == 1
    assert body(service_api.rpc("expire_credits"))["lots_expired"] == 0

    for function, argument, largest in (
        ("release_expired_holds", "max_orders", 10000),
        ("expire_credits", "max_lots", 100000),
        ("refresh_ledger_rollups", "max_days", 3660),
    ):
        for size in (0, largest + 1):
            reply = service_api.rpc(function, **{argument: size})
            assert reply.status_code == 400 and body(reply)["code"] == "invalid_argument", reply.text


def test_a_grace_out_of_range_is_refused(service_api: Api) -> None:
    for grace in ("-1 minute", "31 days"):
        reply = service_api.rpc("upkeep_backlog", grace=grace)
        assert reply.status_code == 400 and body(reply)["code"] == "invalid_argument", reply.text
