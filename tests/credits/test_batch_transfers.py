"""mycelium_private.create_transfers, the write path's set-based twin
(sql/20261203080000_batch_transfers.sql): a batch of movements leaves the balances, entries and
lots that create_transfer leaves making them one after the other, updates (and broadcasts) each
account once with its final state, and refuses the whole batch over one bad movement."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.support.marketplace import D, MakeUser
from tests.support.realtime import readable_messages

Conn = psycopg.Connection[TupleRow]


def create_transfers(db: Conn, movements: list[dict[str, Any]]) -> list[str]:
    """One create_transfers call making `movements` (fields of mycelium_private.ledger_movement), in
    their order; their transfers' ids."""
    row = db.execute(
        """select mycelium_private.create_transfers(array(
             select jsonb_populate_record(null::mycelium_private.ledger_movement, m.movement)
             from jsonb_array_elements(%s::jsonb) with ordinality as m (movement, n)
             order by m.n))""",
        (json.dumps(movements),),
    ).fetchone()
    assert row is not None
    return [str(transfer) for transfer in row[0]]


def grant(db: Conn, user_id: str, amount: str, expires_at: datetime | None = None) -> None:
    db.execute("select public.grant_credits(%s, %s, 'seed', %s)", (user_id, amount, expires_at))


def state(db: Conn, user_id: str) -> tuple[Any, ...]:
    """The account's balance, held and expiring credits."""
    row = db.execute(
        "select balance, held, expiring from public.credit_accounts where user_id = %s", (user_id,)
    ).fetchone()
    assert row is not None
    return tuple(row)


def entries(db: Conn, transfers: list[str]) -> list[tuple[str, Any, Any]]:
    """(user, amount, balance_after) of the transfers' entries, in the order they were written."""
    rows = db.execute(
        "select user_id::text, amount, balance_after from public.credit_transactions "
        "where transfer_id = any(%s::uuid[]) order by id",
        (transfers,),
    ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def balance_changes(db: Conn, user_id: str) -> list[dict[str, Any]]:
    return [
        payload
        for _, event, payload in readable_messages(db, user_id, f"balance:{user_id}")
        if event == "balance_changed"
    ]


def ledger_audit(db: Conn) -> list[tuple[Any, ...]]:
    """The ledger's audit (the marketplace's is not concerned: these holds belong to no order)."""
    return [tuple(row) for row in db.execute("select * from mycelium_private.audit_ledger()").fetchall()]


def ledger_size(db: Conn) -> tuple[Any, ...]:
    row = db.execute(
        "select (select count(*) from mycelium_private.transfers), "
        "(select count(*) from public.credit_transactions)"
    ).fetchone()
    assert row is not None
    return tuple(row)


def transfer(sender: str, recipient: str, amount: str) -> dict[str, Any]:
    return {"kind": "transfer", "amount": amount, "from_user": sender, "to_user": recipient}


# Holds and their captures as `adjustment`s: the marketplace's audit wants an order or a subscription
# period behind every order_hold. Each test pays its holds out, so that every account's held
# credits stay those of its open orders.
def hold(holder: str, amount: str, reference: str) -> dict[str, Any]:
    return {"kind": "adjustment", "amount": amount, "from_user": holder, "to_system": "holds",
            "reference": reference, "holder": holder}  # fmt: skip


def earning(holder: str, provider: str, amount: str, reference: str) -> dict[str, Any]:
    return {"kind": "adjustment", "amount": amount, "from_system": "holds", "to_user": provider,
            "reference": reference, "holder": holder, "counterparty": holder}  # fmt: skip


def fee(holder: str, amount: str, reference: str) -> dict[str, Any]:
    return {"kind": "adjustment", "amount": amount, "from_system": "holds", "to_system": "platform_revenue",
            "reference": reference, "holder": holder}  # fmt: skip


def test_a_batch_leaves_the_balances_and_running_entries_of_its_movements_in_order(
    db: Conn, make_user: MakeUser
) -> None:
    alice, bob, carol = (make_user().id for _ in range(3))
    grant(db, alice, "10")
    grant(db, bob, "5")
    order = str(uuid.uuid4())
    before = {user: len(balance_changes(db, user)) for user in (alice, bob, carol)}

    # Bob spends credits only the batch's first movement gives him.
    made = create_transfers(
        db,
        [
            transfer(alice, bob, "3"),
            transfer(bob, carol, "6"),
            hold(alice, "2", order),
            earning(alice, carol, "1", order),
            fee(alice, "1", order),
        ],
    )

    assert len(made) == 5
    assert state(db, alice) == (D("5"), D("0"), D("0"))
    assert state(db, bob) == (D("2"), D("0"), D("0"))
    assert state(db, carol) == (D("7"), D("0"), D("0"))
    assert entries(db, made) == [
        (alice, D("-3"), D("7")), (bob, D("3"), D("8")),
        (bob, D("-6"), D("2")), (carol, D("6"), D("6")),
        (alice, D("-2"), D("5")),
        (carol, D("1"), D("7")),
    ]  # fmt: skip
    # One broadcast per account, with the batch's final state.
    for user, (balance, held) in {alice: ("5", "0"), bob: ("2", "0"), carol: ("7", "0")}.items():
        changes = balance_changes(db, user)[before[user] :]
        assert [(D(str(c["balance"])), D(str(c["held"]))) for c in changes] == [(D(balance), D(held))]
    assert ledger_audit(db) == []


def test_a_sender_with_expiring_credits_spends_them_first_through_the_single_path(
    db: Conn, make_user: MakeUser
) -> None:
    alice, bob, carol, dave = (make_user().id for _ in range(4))
    grant(db, alice, "4", datetime.now(UTC) + timedelta(days=1))
    grant(db, alice, "6")
    grant(db, carol, "5")
    order = str(uuid.uuid4())

    made = create_transfers(
        db,
        [
            hold(alice, "3", order),
            transfer(alice, bob, "2"),
            transfer(carol, dave, "5"),
            transfer(bob, dave, "1"),
            earning(alice, dave, "3", order),
        ],
    )

    # Alice's expiring credits went first: 3 into the hold (paid out to Dave), remembered there, 1 on
    # to Bob as a lot, which Bob spends first in turn.
    assert state(db, alice) == (D("5"), D("0"), D("0"))
    assert state(db, bob) == (D("1"), D("0"), D("0"))
    assert state(db, dave) == (D("9"), D("0"), D("1"))
    held_lots = db.execute(
        "select amount from mycelium_private.hold_lots where hold = %s", (order,)
    ).fetchall()
    assert held_lots == [(D("3"),)]
    assert sorted(balance_after for _, _, balance_after in entries(db, made)) == sorted(
        [D("7"), D("5"), D("2"), D("0"), D("5"), D("1"), D("6"), D("9")]
    )
    assert ledger_audit(db) == []


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (transfer("{bob}", "{alice}", "100"), "insufficient_credits"),
        (transfer("{bob}", "{nobody}", "1"), "unknown_recipient"),
        ({"kind": "order_hold", "amount": "1", "from_user": "{bob}", "to_system": "holds", "holder": "{bob}"},
         "invalid_argument"),
    ],
)  # fmt: skip
def test_one_bad_movement_refuses_the_whole_batch_with_its_reason(
    db: Conn, make_user: MakeUser, bad: dict[str, str], reason: str
) -> None:
    alice, bob = make_user().id, make_user().id
    grant(db, alice, "10")
    grant(db, bob, "1")
    names = {"alice": alice, "bob": bob, "nobody": str(uuid.uuid4())}
    before = (state(db, alice), state(db, bob), ledger_size(db))

    with pytest.raises(psycopg.Error) as refused:
        create_transfers(
            db, [transfer(alice, bob, "5"), {field: value.format(**names) for field, value in bad.items()}]
        )

    assert f'"code" : "{reason}"' in str(refused.value)
    assert (state(db, alice), state(db, bob), ledger_size(db)) == before


def test_a_bad_amount_is_refused_by_the_transfers_table(db: Conn, make_user: MakeUser) -> None:
    alice, bob = make_user().id, make_user().id
    grant(db, alice, "10")
    with pytest.raises(psycopg.errors.CheckViolation):
        create_transfers(db, [transfer(alice, bob, "1"), transfer(alice, bob, "0.0000001")])
    assert state(db, alice)[0] == D("10")


def test_a_retried_movement_in_a_batch_returns_the_one_made_before(db: Conn, make_user: MakeUser) -> None:
    alice, bob = make_user().id, make_user().id
    grant(db, alice, "10")
    keyed = transfer(alice, bob, "2") | {"reference": f"k-{uuid.uuid4()}"}
    first = create_transfers(db, [keyed])
    again = create_transfers(db, [transfer(alice, bob, "1"), keyed])
    assert again[1] == first[0]
    assert state(db, alice)[0] == D("7")
