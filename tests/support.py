"""Helpers for tests that act through PostgREST the way a client (or an attacker) would."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from cli.dev.processes import port_in_use


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

    def _send(self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> httpx.Response:
        content = None if json_body is None else json.dumps(json_body, default=_json_default)
        extra = {"Content-Type": "application/json"} if content is not None else {}
        return self.client.request(method, path, content=content, params=params, headers={**extra, **(headers or {})})

    def rpc(self, name: str, **args: Any) -> httpx.Response:
        return self._send("POST", f"/rpc/{name}", json_body=args)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self._send("GET", path, params=params)

    def post(self, path: str, json_body: Any, **params: Any) -> httpx.Response:
        return self._send("POST", path, json_body=json_body, params=params,
                          headers={"Prefer": "return=representation"})

    def patch(self, path: str, json_body: Any, **params: Any) -> httpx.Response:
        return self._send("PATCH", path, json_body=json_body, params=params,
                          headers={"Prefer": "return=representation"})

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


def free_port_base(span: int = 5, start: int = 42000) -> int:
    """A port base whose next `span` ports are all free on 127.0.0.1."""
    probe = start
    while probe < 64000:
        if not any(port_in_use(probe + offset) for offset in range(1, span)):
            return probe
        probe += span * 7
    raise RuntimeError("no free ports on 127.0.0.1")


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def after_schema_reload(request: Callable[[], httpx.Response], *, timeout: float = 10) -> httpx.Response:
    """Send `request` until PostgREST's schema cache, reloading after a NOTIFY, knows the object
    (it answers 404 meanwhile, for a moment even after the table itself is listed)."""
    deadline = time.monotonic() + timeout
    response = request()
    while response.status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.05)
        response = request()
    return response
