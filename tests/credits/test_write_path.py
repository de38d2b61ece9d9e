"""The ledger has one write path: mycelium_private.create_transfer writes every transfer and entry,
and refuses what would put the ledger out of balance before it writes anything."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.support import User

Conn = psycopg.Connection[TupleRow]
MakeUser = Callable[..., User]

OUR_SCHEMAS = ["public", "mycelium_private", "mycelium_gate"]


def bodies_matching(db: Conn, pattern: str) -> set[str]:
    """Our functions whose source matches `pattern` (case-insensitive, white space folded)."""
    rows = db.execute(
        """select p.oid::regprocedure::text, p.prosrc from pg_proc p
           where p.pronamespace::regnamespace::text = any(%s)""",
        (OUR_SCHEMAS,),
    ).fetchall()
    return {str(name) for name, source in rows if re.search(pattern, " ".join(str(source).split()), re.I)}


def test_only_the_write_path_writes_transfers_and_entries(db: Conn) -> None:
    writers = bodies_matching(db, r"insert into (mycelium_private\.transfers|public\.credit_transactions)\b")
    assert {name.split("(")[0] for name in writers} == {
        "mycelium_private.create_transfer",
        "mycelium_private.create_transfers",
    }


def test_the_callers_role_is_read_in_one_place(db: Conn) -> None:
    readers = bodies_matching(db, r"coalesce\(auth\.role\(\), session_user")
    assert readers == {"mycelium_private.caller_role()"}


def balance_and_ledger_size(db: Conn, user: User) -> tuple[object, ...]:
    row = db.execute(
        """select (select balance from public.credit_accounts where user_id = %s),
                  (select count(*) from mycelium_private.transfers),
                  (select count(*) from public.credit_transactions)""",
        (user.id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize(
    "movement",
    [
        # Into holds without naming whose hold it is: `held` would not follow `holds`.
        "p_from_user => %(user)s, p_to_system => 'holds', p_reference => 'an order'",
        # Into holds for someone else than the sender.
        "p_from_user => %(user)s, p_to_system => 'holds', p_reference => 'an order', p_holder => %(other)s",
        # A hold without its reference: its lots could never come back.
        "p_from_user => %(user)s, p_to_system => 'holds', p_holder => %(user)s",
        # A holder named on a movement that does not touch holds.
        "p_from_system => 'issuance', p_to_user => %(user)s, p_holder => %(user)s",
    ],
)
def test_a_movement_through_holds_must_name_its_holder_and_reference(
    db: Conn, make_user: MakeUser, movement: str
) -> None:
    user, other = make_user(), make_user()
    db.execute("select public.grant_credits(%s, 5, 'seed')", (user.id,))
    before = balance_and_ledger_size(db, user)
    with pytest.raises(psycopg.Error) as refused:
        db.execute(
            f"select mycelium_private.create_transfer('order_hold', 1, {movement})",
            {"user": user.id, "other": other.id},
        )
    assert '"code" : "invalid_argument"' in str(refused.value)
    assert balance_and_ledger_size(db, user) == before


def test_the_transfers_table_refuses_a_movement_without_two_sides(db: Conn, make_user: MakeUser) -> None:
    user = make_user()
    for movement in ("p_to_user => %(user)s", "p_from_system => 'issuance', p_to_system => 'issuance'"):
        with pytest.raises(psycopg.errors.CheckViolation):
            db.execute(f"select mycelium_private.create_transfer('grant', 1, {movement})", {"user": user.id})


def test_a_retry_key_taken_before_returns_the_first_movement_and_moves_nothing(
    db: Conn, make_user: MakeUser
) -> None:
    user = make_user()
    key = f"k-{uuid.uuid4()}"
    first = db.execute(
        "select * from mycelium_private.create_transfer('grant', 2, p_from_system => 'issuance', "
        "p_to_user => %s, p_reference => %s)",
        (user.id, key),
    ).fetchone()
    again = db.execute(
        "select * from mycelium_private.create_transfer('grant', 7, p_from_system => 'issuance', "
        "p_to_user => %s, p_reference => %s)",
        (user.id, key),
    ).fetchone()
    assert first is not None and again is not None
    assert first[4] is False and again[4] is True
    assert again[0] == first[0] and again[3] is None
    assert balance_and_ledger_size(db, user)[0] == 2
