"""The ecosystem, unchanged: the libraries people already use work against Mycelium with nothing of
ours in between. supabase-py (`create_client`, `auth`, `table`, `rpc`) and @supabase/supabase-js
(a dashboard's script, run with node) sign users up and in, read balances, send credits and read
the history through the gateway; the database's trigger opens the account at sign-up, balances
after a transfer are exact, a transfer retried with its idempotency key moves credits once, and
row level security leaves each user only their own rows.

Both libraries parse JSON numbers into binary floats (supabase-py with the json module, supabase-js
with JSON.parse). Amounts are never computed with them: each is read back as a Decimal from its
shortest text form, which is the decimal PostgREST sent while it has at most 15 significant
digits. Past that, only a `::text` cast in the select is exact, as the last supabase-py test shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from supabase import Client, create_client

from tests.support import REPO
from tests.support.client import PASSWORD, Target

DASHBOARD = Path(__file__).parent / "ecosystem" / "dashboard.mjs"
SUPABASE_JS = REPO / "node_modules" / "@supabase" / "supabase-js"

NewClient = Callable[[], Client]


def _tfc(value: object) -> Decimal:
    """An amount as a library handed it over (int, float, or Decimal from our own JSON parsing),
    as a Decimal. `str` of a float is the shortest text that reads back as that float: the decimal
    PostgREST sent, for amounts of at most 15 significant digits. No arithmetic on the float."""
    assert isinstance(value, int | float | Decimal) and not isinstance(value, bool), value
    return Decimal(str(value))


def _rows(data: object) -> list[dict[str, Any]]:
    assert isinstance(data, list) and all(isinstance(row, dict) for row in data), data
    return data


def _object(data: object) -> dict[str, Any]:
    assert isinstance(data, dict), data
    return data


def _fund(target: Target, user_id: uuid.UUID, usd: str) -> Decimal:
    """Credits bought for `usd` through the payment webhook's rpc: the credits the database
    computed, whatever the configured rate."""
    return target.service().admin.purchase_credits(user_id, usd, f"eco-{uuid.uuid4()}").amount


@pytest.fixture
def new_client(target: Target) -> Iterator[NewClient]:
    """supabase-py clients for the target, exactly as its README makes them; signed out at the end
    so that no session (nor its refresh timer) outlives the test."""
    made: list[Client] = []

    def make() -> Client:
        client = create_client(target.url, target.anon_key)
        made.append(client)
        return client

    yield make
    for client in made:
        if client.auth.get_session() is not None:
            client.auth.sign_out()


# -- supabase-py ---------------------------------------------------------------------------------
def test_supabase_py_sign_up_opens_a_credit_account(new_client: NewClient) -> None:
    client = new_client()
    signed_up = client.auth.sign_up(
        {"email": f"eco-{uuid.uuid4().hex[:10]}@example.test", "password": PASSWORD}
    )
    if signed_up.session is None:
        pytest.skip("this project confirms e-mail addresses before the first session: nothing to read with")
    assert signed_up.user is not None
    # The client now carries the new session: the row is the one the auth.users trigger made.
    accounts = _rows(client.table("credit_accounts").select("*").execute().data)
    assert [(row["user_id"], _tfc(row["balance"]), _tfc(row["held"])) for row in accounts] == [
        (signed_up.user.id, Decimal(0), Decimal(0))
    ]


def test_supabase_py_transfers_exactly_and_sees_only_its_own_rows(
    target: Target, new_client: NewClient
) -> None:
    sender_id, email = target.create_user()
    funded = _fund(target, sender_id, "10.75")
    recipient_id, _ = target.create_user()
    client = new_client()
    client.auth.sign_in_with_password({"email": email, "password": PASSWORD})

    # `select *` with no filter: both users have an account, RLS leaves the sender its own.
    accounts = _rows(client.table("credit_accounts").select("*").execute().data)
    assert [(row["user_id"], _tfc(row["balance"])) for row in accounts] == [(str(sender_id), funded)]

    amount, key = Decimal("3.125001"), f"eco-{uuid.uuid4()}"
    # The amount goes as a string: a JSON number would pass through a float on the way out too.
    params = {"recipient": str(recipient_id), "amount": str(amount), "memo": "lunch", "idempotency_key": key}
    moved = _object(client.rpc("transfer_credits", params).execute().data)
    assert (moved["kind"], moved["from_user_id"], moved["to_user_id"], moved["memo"], moved["reference"]) == (
        "transfer",
        str(sender_id),
        str(recipient_id),
        "lunch",
        key,
    )
    assert (_tfc(moved["amount"]), _tfc(moved["balance_after"])) == (amount, funded - amount)

    balance = _rows(client.table("credit_accounts").select("balance").execute().data)
    assert [_tfc(row["balance"]) for row in balance] == [funded - amount]

    history = _rows(
        client.table("credit_transactions")
        .select("*")
        .order("created_at", desc=True)
        .order("id", desc=True)
        .execute()
        .data
    )
    assert [
        (row["kind"], _tfc(row["amount"]), _tfc(row["balance_after"]), row["counterparty_id"])
        for row in history
    ] == [
        ("transfer_out", -amount, funded - amount, str(recipient_id)),
        ("purchase", funded, funded, None),
    ]
    assert (history[0]["memo"], history[0]["reference"]) == ("lunch", key)

    # The recipient's account and entry exist (the service role sees them), yet naming them
    # finds nothing: RLS decides, whatever filter the client sends.
    assert target.service().credits.balance(recipient_id).balance == amount
    for table in ("credit_accounts", "credit_transactions"):
        assert client.table(table).select("*").eq("user_id", str(recipient_id)).execute().data == []


def test_supabase_py_reads_amounts_past_fifteen_digits_exactly_only_cast_to_text(
    target: Target, new_client: NewClient
) -> None:
    user_id, email = target.create_user()
    funded = _fund(target, user_id, "987654321098.765432")
    assert len(funded.as_tuple().digits) > 15  # more than a float holds: the case this test is about
    client = new_client()
    client.auth.sign_in_with_password({"email": email, "password": PASSWORD})

    # PostgREST sends the exact number; supabase-py's json module makes it a float and loses digits.
    plain = _rows(client.table("credit_accounts").select("balance").execute().data)
    assert len(plain) == 1 and isinstance(plain[0]["balance"], float)
    assert _tfc(plain[0]["balance"]) != funded
    # Cast to text by PostgREST, the amount arrives as a string and reads back exactly.
    cast = _rows(client.table("credit_accounts").select("balance::text").execute().data)
    assert [Decimal(row["balance"]) for row in cast] == [funded]


# -- @supabase/supabase-js -----------------------------------------------------------------------
def _node() -> list[str]:
    """The command that runs the dashboard script, or a skip saying what is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (`./run setup` installs Node.js)")
    if not (SUPABASE_JS / "package.json").is_file():
        pytest.skip("@supabase/supabase-js is not in node_modules (`./run setup` runs npm ci)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(version.strip().lstrip("v").split(".")[0])
    if major < 20:
        pytest.skip(f"node {version.strip()} is older than supabase-js supports (20)")
    # Node 20 and 21 have a global WebSocket only behind this flag, and createClient wants one.
    return [node, "--experimental-websocket"] if major < 22 else [node]


def test_a_supabase_js_dashboard_transfers_once_and_reads_its_history(target: Target) -> None:
    command = _node()
    sender_id, email = target.create_user()
    funded = _fund(target, sender_id, "20.5")
    recipient_id, _ = target.create_user()
    amount, key = Decimal("4.000001"), f"dashboard-{uuid.uuid4()}"
    settings = {
        "SUPABASE_URL": target.url,
        "SUPABASE_ANON_KEY": target.anon_key,
        "DASHBOARD_EMAIL": email,
        "DASHBOARD_PASSWORD": PASSWORD,
        "DASHBOARD_RECIPIENT": str(recipient_id),
        "DASHBOARD_AMOUNT": str(amount),
        "DASHBOARD_IDEMPOTENCY_KEY": key,
    }
    ran = subprocess.run(
        [*command, str(DASHBOARD)],
        env={**os.environ, **settings},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, f"stdout: {ran.stdout}\nstderr: {ran.stderr}"
    # JSON.stringify wrote each double in its shortest form: read as Decimal, never as float.
    out = json.loads(ran.stdout, parse_float=Decimal)

    assert out["user_id"] == str(sender_id)
    assert out["balance_type"] == "number"  # why the script also selects `balance::text`
    assert [
        (row["user_id"], _tfc(row["balance"]), Decimal(row["balance_text"])) for row in out["before"]
    ] == [(str(sender_id), funded, funded)]
    sent = out["sent"]
    assert (sent["kind"], sent["from_user_id"], sent["to_user_id"], sent["reference"]) == (
        "transfer",
        str(sender_id),
        str(recipient_id),
        key,
    )
    assert (_tfc(sent["amount"]), _tfc(sent["balance_after"])) == (amount, funded - amount)
    # The retry with the same key answered with the first transfer, and moved nothing more.
    assert out["resent"] == sent
    assert [(_tfc(row["balance"]), Decimal(row["balance_text"])) for row in out["after"]] == [
        (funded - amount, funded - amount)
    ]
    assert target.service().credits.balance(recipient_id).balance == amount

    assert [
        (row["kind"], Decimal(row["amount_text"]), _tfc(row["balance_after"]), row["counterparty_id"])
        for row in out["history"]
    ] == [
        ("transfer_out", -amount, funded - amount, str(recipient_id)),
        ("purchase", funded, funded, None),
    ]
    assert (out["history"][0]["memo"], out["history"][0]["reference"]) == ("from the dashboard", key)
