"""Helpers for tests that act through PostgREST the way a client (or an attacker) would, and
that run `mycelium` as an operator runs it."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import TupleRow

from cli.dev.stack import LocalStack
from cli.dev.users import create_user
from cli.keys import access_token

REPO = Path(__file__).resolve().parents[2]
# ../shared/, beside the checkout: tests that need it skip, saying so, where it is absent.
SHARED = REPO.parent / "shared"


def loads(text: str) -> Any:
    """JSON with every number as Decimal or int: money never passes through float."""
    return json.loads(text, parse_float=Decimal)


def body(response: httpx.Response) -> Any:
    return loads(response.text)


def _json_default(value: object) -> object:
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


class Api:
    """PostgREST through the gateway, with an API key and a bearer token, as supabase-py sends them."""

    def __init__(self, api_url: str, apikey: str, token: str | None = None) -> None:
        headers = {"apikey": apikey, "Authorization": f"Bearer {token or apikey}"}
        self.client = httpx.Client(base_url=f"{api_url}/rest/v1", headers=headers, timeout=30)

    def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        content = None if json_body is None else json.dumps(json_body, default=_json_default)
        extra = {"Content-Type": "application/json"} if content is not None else {}
        return self.client.request(
            method, path, content=content, params=params, headers={**extra, **(headers or {})}
        )

    def rpc(self, name: str, /, **args: Any) -> httpx.Response:
        return self._send("POST", f"/rpc/{name}", json_body=args)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self._send("GET", path, params=params)

    def post(self, path: str, json_body: Any, **params: Any) -> httpx.Response:
        return self._send(
            "POST", path, json_body=json_body, params=params, headers={"Prefer": "return=representation"}
        )

    def patch(self, path: str, json_body: Any, **params: Any) -> httpx.Response:
        return self._send(
            "PATCH", path, json_body=json_body, params=params, headers={"Prefer": "return=representation"}
        )

    def delete(self, path: str, **params: Any) -> httpx.Response:
        return self._send("DELETE", path, params=params, headers={"Prefer": "return=representation"})

    def close(self) -> None:
        self.client.close()


@dataclass
class User:
    id: str
    email: str
    token: str
    api: Api


def new_user(
    stack: LocalStack, superuser_conn: psycopg.Connection[TupleRow], *roles: str, email: str | None = None
) -> User:
    """A fresh user of `stack`, created as GoTrue would, with a real JWT; close `user.api` after."""
    address = email or f"user-{uuid.uuid4().hex[:12]}@example.test"
    created = create_user(superuser_conn, address, roles=roles)
    token = access_token(stack.jwt_secret, created.id, email=created.email)
    return User(str(created.id), created.email, token, Api(stack.api_url, stack.anon_key, token))


def after_schema_reload(request: Callable[[], httpx.Response], *, timeout: float = 10) -> httpx.Response:
    """Send `request` until PostgREST's schema cache, reloading after a NOTIFY, knows the object
    (it answers 404 meanwhile, for a moment even after the table itself is listed)."""
    deadline = time.monotonic() + timeout
    response = request()
    while response.status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.05)
        response = request()
    return response


# `mycelium` in a subprocess, from this checkout.
MYCELIUM = [sys.executable, "-m", "cli.main"]


def interruptible() -> None:
    """In the child, before exec: let Ctrl-C (SIGINT) in. A shell without job control starts
    background commands with SIGINT ignored, children inherit that, and Python then installs no
    KeyboardInterrupt handler: `./run test &` would otherwise see these commands ignore it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stack_folder(prefix: str) -> Path:
    """A fresh folder the `postgres` OS user can reach (pytest's own tmp folders are private)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("MYCELIUM_TEST_TMP", "/tmp")))
    folder.chmod(0o755)
    return folder


def denied(response: httpx.Response) -> bool:
    return response.status_code in (401, 403, 404)


class Clients:
    """One httpx client per thread and user."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.local = threading.local()
        self.made: list[Api] = []
        self.lock = threading.Lock()

    def api(self, token: str) -> Api:
        cache: dict[str, Api] = getattr(self.local, "cache", None) or {}
        self.local.cache = cache
        if token not in cache:
            cache[token] = Api(self.stack.api_url, self.stack.anon_key, token)
            with self.lock:
                self.made.append(cache[token])
        return cache[token]

    def close(self) -> None:
        for api in self.made:
            api.close()
