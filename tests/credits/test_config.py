"""The credit configuration: readable by anyone, changed by admins and service_role, audited."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from tests.support import Api, User, body

MakeUser = Callable[..., User]


@pytest.fixture
def restore_config(service_api: Api) -> Iterator[None]:
    yield
    reply = service_api.rpc(
        "set_credit_config",
        tfc_to_usd_rate="1.0",
        credit_currency_code="TFC",
        credit_display_name="ThreeFold Credits",
        credit_symbol="TFC",
    )
    assert reply.status_code == 200, reply.text


def test_anyone_reads_the_config(anon_api: Api) -> None:
    rows = body(anon_api.get("/credit_config"))
    assert len(rows) == 1
    config = rows[0]
    assert {
        "tfc_to_usd_rate",
        "credit_currency_code",
        "credit_display_name",
        "credit_symbol",
        "updated_at",
        "updated_by",
    } <= set(config)
    assert body(anon_api.rpc("tfc_to_usd", amount="2")) == Decimal(str(config["tfc_to_usd_rate"])) * 2


def test_admin_changes_rate_purchases_follow_and_history_records_it(
    service_api: Api, make_user: MakeUser, restore_config: None
) -> None:
    admin, user = make_user("admin"), make_user()
    reply = admin.api.rpc("set_credit_config", tfc_to_usd_rate="0.5", credit_symbol="T")
    assert reply.status_code == 200, reply.text
    # Who changed it is for admins, in the history: updated_by is deprecated, always null.
    assert body(reply)["updated_by"] is None
    bought = body(
        service_api.rpc(
            "purchase_credits", user_id=user.id, usd_amount="10", payment_reference=f"c-{uuid.uuid4()}"
        )
    )
    assert bought["amount"] == Decimal("20")
    balances = body(user.api.get("/credit_balances"))
    assert balances[0]["balance_usd"] == Decimal("10")
    history = body(admin.api.get("/credit_config_history", order="id.desc", limit=1))
    assert history[0]["changed_by"] == admin.id
    assert Decimal(str(history[0]["new_config"]["tfc_to_usd_rate"])) == Decimal("0.5")
    assert history[0]["new_config"]["credit_symbol"] == "T"
    # Plain users see no history and cannot change anything.
    assert body(user.api.get("/credit_config_history")) == []
    refused = user.api.rpc("set_credit_config", tfc_to_usd_rate="100")
    assert refused.status_code == 403 and body(refused)["code"] == "not_authorized"


@pytest.mark.parametrize(
    "args",
    [
        {"tfc_to_usd_rate": "0"},
        {"tfc_to_usd_rate": "-1"},
        {"tfc_to_usd_rate": "NaN"},
        {"tfc_to_usd_rate": "Infinity"},
        {"credit_currency_code": "tfc lower"},
        {"credit_display_name": " "},
        {},
    ],
)
def test_bad_config_is_rejected(service_api: Api, args: dict[str, str]) -> None:
    reply = service_api.rpc("set_credit_config", **args)
    assert reply.status_code == 400, reply.text
    assert body(reply)["code"] in ("invalid_amount", "invalid_argument")


def test_large_purchases_convert_exactly_truncated_to_six_decimals(
    service_api: Api, make_user: MakeUser, restore_config: None
) -> None:
    # numeric division keeps about 16 significant digits: 1e14 / 0.6 came out as ...666.6667,
    # more credits than were paid for.
    user = make_user()
    assert service_api.rpc("set_credit_config", tfc_to_usd_rate="0.6").status_code == 200
    bought = body(
        service_api.rpc(
            "purchase_credits",
            user_id=user.id,
            usd_amount="100000000000000",
            payment_reference=f"c-{uuid.uuid4()}",
        )
    )
    assert bought["amount"] == Decimal("166666666666666.666666")
    assert bought["balance_after"] == Decimal("166666666666666.666666")
