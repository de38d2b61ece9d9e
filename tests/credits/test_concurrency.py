"""Concurrency: many parallel transfers and purchases over few accounts keep the ledger sound."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from cli.dev.stack import LocalStack
from tests.support import Api, Clients, User, body

MakeUser = Callable[..., User]
D = Decimal


def balances(db: psycopg.Connection[TupleRow], users: list[User]) -> dict[str, Decimal]:
    rows = db.execute(
        "select user_id::text, balance from public.credit_accounts where user_id = any(%s::uuid[])",
        ([u.id for u in users],),
    ).fetchall()
    return {str(user_id): D(str(value)) for user_id, value in rows}


def test_parallel_transfers_and_purchases_keep_the_ledger_sound(
    stack: LocalStack, service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    users = [make_user() for _ in range(5)]
    for user in users:
        reply = service_api.rpc(
            "purchase_credits", user_id=user.id, usd_amount="20", payment_reference=f"c-{uuid.uuid4()}"
        )
        assert reply.status_code == 200, reply.text
    rng = random.Random(7)
    jobs: list[tuple[str, User, User | None, str]] = []
    for _ in range(240):
        sender, recipient = rng.sample(users, 2)
        jobs.append(("transfer", sender, recipient, str(rng.choice(["0.5", "1", "3.25", "7", "15"]))))
    for _ in range(40):
        jobs.append(("purchase", rng.choice(users), None, str(rng.choice(["1", "2.5"]))))
    rng.shuffle(jobs)
    clients = Clients(stack)

    def run(job: tuple[str, User, User | None, str]) -> tuple[str, int, Any]:
        kind, who, recipient, amount = job
        if kind == "purchase":
            api = clients.api(stack.service_role_key)
            reply = api.rpc(
                "purchase_credits", user_id=who.id, usd_amount=amount, payment_reference=f"c-{uuid.uuid4()}"
            )
        else:
            assert recipient is not None
            reply = clients.api(who.token).rpc("transfer_credits", recipient=recipient.id, amount=amount)
        return kind, reply.status_code, body(reply)

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(run, jobs))
    finally:
        clients.close()

    purchased = D(20 * len(users))
    for (kind, status, payload), job in zip(results, jobs, strict=True):
        if status == 200:
            if kind == "purchase":
                purchased += D(job[3])
        else:
            assert kind == "transfer" and status == 409 and payload["code"] == "insufficient_credits", payload
    assert sum(1 for _, status, _ in results if status == 200) > 100
    final = balances(db, users)
    assert sum(final.values()) == purchased
    assert all(value >= 0 for value in final.values())
    assert body(service_api.rpc("audit_ledger")) == []


def test_racing_transfers_cannot_overdraw(
    stack: LocalStack, service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    sender, recipient = sender_with_ten_credits(service_api, make_user), make_user()
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(
            pool.map(lambda _: transfer_once(stack, sender, recipient.id, "3", None)[0], range(10))
        )
    assert sorted(statuses) == [200] * 3 + [409] * 7
    assert balances(db, [sender, recipient]) == {sender.id: D(1), recipient.id: D(9)}


def sender_with_ten_credits(service_api: Api, make_user: MakeUser) -> User:
    sender = make_user()
    reply = service_api.rpc(
        "purchase_credits", user_id=sender.id, usd_amount="10", payment_reference=f"r-{uuid.uuid4()}"
    )
    assert reply.status_code == 200, reply.text
    return sender


def transfer_once(
    stack: LocalStack, sender: User, recipient: str, amount: str, key: str | None
) -> tuple[int, Any]:
    api = Api(stack.api_url, stack.anon_key, sender.token)
    try:
        reply = api.rpc("transfer_credits", recipient=recipient, amount=amount, idempotency_key=key)
        return reply.status_code, body(reply)
    finally:
        api.close()


def test_concurrent_retries_with_one_idempotency_key_move_once(
    stack: LocalStack, service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    sender, recipient = sender_with_ten_credits(service_api, make_user), make_user()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(lambda _: transfer_once(stack, sender, recipient.id, "4", "retry-me"), range(8))
        )
    assert {status for status, _ in results} == {200}
    assert len({payload["transfer_id"] for _, payload in results}) == 1
    assert balances(db, [sender, recipient]) == {sender.id: D(6), recipient.id: D(4)}


def test_concurrent_webhook_retries_credit_once(
    stack: LocalStack, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    user = make_user()
    reference = f"stripe-{uuid.uuid4()}"

    def purchase(_: int) -> tuple[int, Any]:
        api = Api(stack.api_url, stack.service_role_key)
        try:
            reply = api.rpc("purchase_credits", user_id=user.id, usd_amount="25", payment_reference=reference)
            return reply.status_code, body(reply)
        finally:
            api.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(purchase, range(8)))
    assert {status for status, _ in results} == {200}
    assert len({payload["transfer_id"] for _, payload in results}) == 1
    assert balances(db, [user]) == {user.id: D(25)}


def test_opposite_transfers_do_not_deadlock(
    stack: LocalStack, service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    a, b = make_user(), make_user()
    for user in (a, b):
        assert (
            service_api.rpc(
                "purchase_credits", user_id=user.id, usd_amount="100", payment_reference=f"d-{uuid.uuid4()}"
            ).status_code
            == 200
        )
    jobs = [(a, b.id) if i % 2 else (b, a.id) for i in range(60)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda job: transfer_once(stack, job[0], job[1], "1", None)[0], jobs))
    assert statuses == [200] * 60
    assert balances(db, [a, b]) == {a.id: D(100), b.id: D(100)}


def test_spending_expiring_credits_races_the_sweep_and_keeps_the_ledger_sound(
    stack: LocalStack, service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    """Transfers spend expiring lots while some of those lots expire and sweeps run: every account
    still equals its entries, `expiring` its lots, and nothing is created or lost."""
    users = [make_user() for _ in range(4)]
    soon = datetime.now(UTC) + timedelta(seconds=1)
    later = datetime.now(UTC) + timedelta(hours=1)
    for user in users:
        # More expiring soon than a user can send in the run: some of it is always left to expire.
        for amount, expires in (("40", soon.isoformat()), ("6", later.isoformat()), ("6", None)):
            reply = service_api.rpc(
                "grant_credits", user_id=user.id, amount=amount, reason="race", expires_at=expires
            )
            assert reply.status_code == 200, reply.text
    rng = random.Random(11)
    jobs: list[tuple[User, str] | None] = [
        (sender, recipient.id) for sender, recipient in (rng.sample(users, 2) for _ in range(120))
    ]
    jobs += [None] * 12  # sweeps
    rng.shuffle(jobs)
    clients = Clients(stack)

    def run(job: tuple[User, str] | None) -> tuple[int, Any]:
        if job is None:
            reply = clients.api(stack.service_role_key).rpc("expire_credits")
        else:
            reply = clients.api(job[0].token).rpc("transfer_credits", recipient=job[1], amount="0.75")
        return reply.status_code, body(reply)

    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(run, jobs))
    finally:
        clients.close()
    for status, payload in results:
        assert status == 200 or (status == 409 and payload["code"] == "insufficient_credits"), payload
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    assert service_api.rpc("expire_credits").status_code == 200
    expired = db.execute(
        "select coalesce(sum(amount), 0) from mycelium_private.transfers "
        "where kind = 'expiry' and from_user = any(%s::uuid[])",
        ([u.id for u in users],),
    ).fetchone()
    assert expired is not None and D(str(expired[0])) > 0
    assert sum(balances(db, users).values()) + D(str(expired[0])) == D(52 * len(users))
    assert body(service_api.rpc("audit_ledger")) == []
