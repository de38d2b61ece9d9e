"""`client.auth` against the Auth double (or a real GoTrue in the live suite), and the doubles'
own faithfulness: the Auth double's answers validate against Supabase Auth's OpenAPI schemas,
and realtime-py, the reference client, subscribes to the Realtime double."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
import supabase
from supabase.lib.client_options import SyncClientOptions

from mycelium_client import Conflict, InvalidArgument, MyceliumClient, NotAuthorized
from tests.support.client import AUTH_SPEC, FAST_RETRY, PASSWORD, Doubles, MakeAccount, Target


def test_sign_up_gives_a_session_and_a_credit_account(target: Target) -> None:
    client = target.client()
    email = f"new-{uuid.uuid4().hex[:10]}@example.test"
    result = client.auth.sign_up(email, PASSWORD, data={"display_name": "Ada"})
    if result.session is None:
        pytest.skip("this project confirms e-mail addresses before the first session")
    assert result.user.email == email and result.user.user_metadata["display_name"] == "Ada"
    balance = client.credits.balance()  # the database's trigger opened the account
    assert balance.user_id == result.user.id and balance.balance == 0
    with pytest.raises(Conflict):
        target.client().auth.sign_up(email, PASSWORD)


def test_sign_in_user_refresh_sign_out(target: Target) -> None:
    user_id, email = target.create_user()
    client = target.client()
    with pytest.raises(NotAuthorized) as wrong:
        client.auth.sign_in(email, "not the password")
    assert wrong.value.reason == "invalid_credentials"

    session = client.auth.sign_in(email, PASSWORD)
    assert session.user.id == user_id and client.auth.session() == session
    current = client.auth.user()
    assert current is not None and current.id == user_id and current.last_sign_in_at is not None

    refreshed = client.auth.refresh()
    assert refreshed.refresh_token != session.refresh_token
    assert client.credits.balance().user_id == user_id  # REST carries the refreshed token

    client.auth.sign_out()
    assert client.auth.session() is None
    with pytest.raises(NotAuthorized):
        client.credits.balance()  # nobody to ask for
    # Signing out ended the session on the server: Auth no longer knows its refresh tokens.
    for revoked in (refreshed.refresh_token, session.refresh_token):
        answer = httpx.post(
            f"{target.url}/auth/v1/token",
            params={"grant_type": "refresh_token"},
            headers={"apikey": target.anon_key},
            json={"refresh_token": revoked},
            timeout=30,
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error_code"] == "refresh_token_not_found"


def test_signing_in_before_confirming_the_email_is_refused_as_such(target: Target) -> None:
    _, email = target.create_user(confirmed=False)
    client = target.client()
    with pytest.raises(NotAuthorized) as wrong:  # the password first: nothing said about the account
        client.auth.sign_in(email, "not the password")
    assert wrong.value.reason == "invalid_credentials"
    with pytest.raises(NotAuthorized) as unconfirmed:
        client.auth.sign_in(email, PASSWORD)
    assert (unconfirmed.value.reason, unconfirmed.value.status) == ("email_not_confirmed", 400)
    assert client.auth.session() is None


def test_as_user_acts_for_the_token_owner(target: Target, account: MakeAccount) -> None:
    user = account(funded=3)
    service = target.service()
    acting = service.as_user(user.token)
    assert acting.credits.balance().balance == 3
    assert acting.auth.session() is None
    current = acting.auth.user()
    assert current is not None and current.id == user.id
    with pytest.raises(InvalidArgument):
        acting.auth.sign_out()  # it owns no session
    assert service.credits.balance(user.id).balance == 3  # the service itself names the user


def test_a_weak_password_is_refused(target: Target) -> None:
    with pytest.raises(InvalidArgument) as raised:
        target.client().auth.sign_up(f"weak-{uuid.uuid4().hex[:8]}@example.test", "123")
    assert raised.value.reason == "weak_password"


# -- the doubles follow the real contracts ---------------------------------------------------------
@pytest.fixture(scope="module")
def auth_schemas() -> dict[str, Any]:
    if not AUTH_SPEC.is_file():
        pytest.skip(f"the Auth OpenAPI spec is not at {AUTH_SPEC} (the shared folder beside the repo)")
    yaml = pytest.importorskip("yaml")
    spec: dict[str, Any] = yaml.safe_load(AUTH_SPEC.read_text())
    return spec


def _validate(spec: dict[str, Any], schema_name: str, instance: Any) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    # OpenAPI 3.0 schemas are JSON Schema with `#/components/...` references: resolve them in place.
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    jsonschema.validate(instance, schema, format_checker=jsonschema.FormatChecker())


def test_the_auth_double_answers_as_the_spec_says(
    target: Target, local_doubles: Doubles, auth_schemas: dict[str, Any]
) -> None:
    url, key = f"{target.url}/auth/v1", target.anon_key
    email = f"spec-{uuid.uuid4().hex[:8]}@example.test"
    with httpx.Client(headers={"apikey": key}) as http:
        signed_up = http.post(f"{url}/signup", json={"email": email, "password": PASSWORD})
        assert signed_up.status_code == 200
        _validate(auth_schemas, "AccessTokenResponseSchema", signed_up.json())
        token = http.post(
            f"{url}/token", params={"grant_type": "password"}, json={"email": email, "password": PASSWORD}
        )
        _validate(auth_schemas, "AccessTokenResponseSchema", token.json())
        refreshed = http.post(
            f"{url}/token",
            params={"grant_type": "refresh_token"},
            json={"refresh_token": token.json()["refresh_token"]},
        )
        _validate(auth_schemas, "AccessTokenResponseSchema", refreshed.json())
        bearer = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
        user = http.get(f"{url}/user", headers=bearer)
        _validate(auth_schemas, "UserSchema", user.json())
        wrong = http.post(
            f"{url}/token", params={"grant_type": "password"}, json={"email": email, "password": "x"}
        )
        assert wrong.status_code == 400
        _validate(auth_schemas, "ErrorSchema", wrong.json())
        assert http.post(f"{url}/logout", headers=bearer).status_code == 204
        reused = http.post(
            f"{url}/token",
            params={"grant_type": "refresh_token"},
            json={"refresh_token": refreshed.json()["refresh_token"]},
        )
        assert reused.status_code == 400
        service = {"Authorization": f"Bearer {target.service_role_key}", "apikey": target.service_role_key}
        created = http.post(
            f"{url}/admin/users",
            headers=service,
            json={"email": f"a-{email}", "password": PASSWORD, "email_confirm": True},
        )
        _validate(auth_schemas, "UserSchema", created.json())


def test_realtime_py_subscribes_to_the_realtime_double(
    target: Target, local_doubles: Doubles, account: MakeAccount
) -> None:
    """The reference client joins the private balance topic with a user token and receives the
    broadcast of a real purchase."""
    from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

    user = account()

    async def scenario() -> dict[str, Any]:
        client = AsyncRealtimeClient(f"{target.url}/realtime/v1", target.anon_key)
        await client.set_auth(user.token)
        received: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        states: list[RealtimeSubscribeStates] = []
        channel = client.channel(
            f"balance:{user.id}",
            {
                "config": {
                    "broadcast": {"ack": False, "self": False},
                    "presence": {"key": "", "enabled": False},
                    "private": True,
                }
            },
        )
        channel.on_broadcast("balance_changed", lambda message: received.set_result(dict(message)))
        await channel.subscribe(lambda state, error: states.append(state))
        assert states == [RealtimeSubscribeStates.SUBSCRIBED]
        await asyncio.to_thread(target.service().admin.purchase_credits, user.id, 2, f"rt-{uuid.uuid4()}")
        message = await asyncio.wait_for(received, 10)
        await client.close()
        return message

    message = asyncio.run(scenario())
    assert message["event"] == "balance_changed" and message["payload"]["user_id"] == str(user.id)
    assert Decimal(str(message["payload"]["balance"])) == 2


def test_a_client_over_an_existing_supabase_client_follows_its_session_until_closed(
    target: Target,
) -> None:
    user_id, email = target.create_user()
    existing = supabase.Client(
        target.url, target.anon_key, SyncClientOptions(headers={}, persist_session=False)
    )
    existing.auth.sign_in_with_password({"email": email, "password": PASSWORD})
    followers = existing.auth._state_change_emitters  # supabase-auth's subscribers (pinned version)
    before = len(followers)

    client = MyceliumClient.from_supabase(existing, retry=FAST_RETRY)
    assert len(followers) == before + 1
    assert client.credits.balance().user_id == user_id  # acting as the session's user
    client.close()
    # It lets go of the session it followed, and leaves the existing client open and signed in.
    assert len(followers) == before
    session = existing.auth.get_session()
    assert session is not None and session.user.id == str(user_id)
