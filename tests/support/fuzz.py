"""Hostile requests for every table and RPC that PostgREST describes in its own OpenAPI document
(Swagger 2.0, `GET /rest/v1/`), the callers that send them, and what a rejection must leave
behind: nothing changed, a machine-readable reason.

The operations come from the document as the caller's role sees it (PostgREST lists only what
that role may reach); the values are Hypothesis strategies keyed by the PostgreSQL type PostgREST
names in each field's `format`, at the edges where parsers and casts break: exponents, NaN and
infinities, 1e400, a seventh decimal, negative zero, huge strings, SQL in text, bad UUIDs, wrong
JSON shapes, bytes that are not UTF-8, oversized pages and bodies. Bodies are written as raw JSON
text, so that tokens no JSON library emits (a bare NaN, 1e400, a lone surrogate) are sent as is.
"""

from __future__ import annotations

import json
import re
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import psycopg
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from psycopg.rows import TupleRow

from cli.dev.stack import LocalStack
from cli.keys import access_token
from tests.support import REPO, loads

Conn = psycopg.Connection[TupleRow]


# -- the operations, from the OpenAPI document -------------------------------------------------
@dataclass(frozen=True)
class Field:
    """An RPC argument or a column: its name and PostgreSQL type (PostgREST's `format`)."""

    name: str
    format: str
    required: bool = False


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    # RPC arguments (the body of a POST, the query of a GET) or the columns of a table or view.
    fields: tuple[Field, ...]

    @property
    def rpc(self) -> bool:
        return self.path.startswith("/rpc/")

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _fields(schema: dict[str, Any]) -> tuple[Field, ...]:
    required = set(schema.get("required", ()))
    return tuple(
        Field(name, str(spec.get("format", "text")), name in required)
        for name, spec in schema.get("properties", {}).items()
    )


def operations(document: dict[str, Any]) -> list[Operation]:
    """Every method of every path the document lists, with its fields."""
    found = []
    for path, methods in sorted(document["paths"].items()):
        if path == "/":
            continue
        for method, spec in sorted(methods.items()):
            if path.startswith("/rpc/"):
                parameters = spec.get("parameters", [])
                if method == "post":
                    body = next(p for p in parameters if p.get("in") == "body")
                    fields = _fields(body["schema"])
                else:
                    fields = tuple(
                        Field(p["name"], str(p.get("format", "text")), bool(p.get("required")))
                        for p in parameters
                        if p.get("in") == "query"
                    )
            else:
                fields = _fields(document["definitions"][path.lstrip("/")])
            found.append(Operation(method.upper(), path, fields))
    return found


def openapi(stack: LocalStack, token: str | None = None) -> dict[str, Any]:
    """PostgREST's description as the role of `token` (the anon key alone: anon) sees it."""
    headers = {"apikey": stack.anon_key, "Authorization": f"Bearer {token or stack.anon_key}"}
    response = httpx.get(f"{stack.api_url}/rest/v1/", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = loads(response.text)
    return document


# -- hostile values, by PostgreSQL type ----------------------------------------------------------
# Text as a string literal of its type would hold it; a query string carries it as is, a JSON
# body as a JSON string.
NUMERIC_TEXTS = (
    "1e400", "-1e400", "1e-400", "1E+2", "2.5e-3", "1e131072", "1e-16383",
    "NaN", "nan", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "-inf",
    "-0", "-0.0", "0", "0.0000001", "1.0000001", "0.000001", "1.1234567",
    "999999999999999.999999", "1000000000000000", "123456789012345678901234567890.123456789",
    "-5", "1,5", "0x10", " 1 ", "1_000", "", "١٢", "1e", "--1",
)  # fmt: skip
INTEGER_TEXTS = (
    "2147483647", "2147483648", "-2147483649", "9223372036854775808", "-9223372036854775809",
    "1.5", "1e3", "-1", "0", "-0", "NaN", "Infinity", "", "0x1f", "1e400",
)  # fmt: skip
UUID_TEXTS = (
    "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "not-a-uuid", "", "00000000-0000-0000-0000-00000000000", "00000000-0000-0000-0000-0000000000000",
    "{00000000-0000-0000-0000-000000000000}", "00000000000000000000000000000000",
    "' or '1'='1", "00000000-0000-0000-0000-00000000000g", "null",
)  # fmt: skip
TIME_TEXTS = (
    "infinity", "-infinity", "epoch", "now", "2026-13-45", "2026-02-30T25:61:00Z", "294277-01-01",
    "4714-11-24 BC", "0000-00-00", "1 day", "-1 day", "1000000 years", "P1D", "", "yesterday",
)  # fmt: skip
BOOLEAN_TEXTS = ("true", "false", "yes", "on", "1", "t", "maybe", "", "null")
SQL_TEXTS = (
    "'; drop table public.credit_accounts; --", "' or '1'='1", "\" or \"\"=\"", "1; select pg_sleep(10)",
    "$$; select 1; $$", "%", "_", "\\", "*", "a,b", "(", ")", ".", "eq.1", "or=(id.eq.1)",
    "\x00", "\u202e", "\ufeff", "😀", "ж", "\U0010ffff", "null", "NULL", "true", "[]", "{}",
)  # fmt: skip
TEXTS: dict[str, tuple[str, ...]] = {
    "numeric": NUMERIC_TEXTS,
    "integer": INTEGER_TEXTS,
    "bigint": INTEGER_TEXTS,
    "smallint": INTEGER_TEXTS,
    "uuid": UUID_TEXTS,
    "timestamp with time zone": TIME_TEXTS,
    "date": TIME_TEXTS,
    "interval": TIME_TEXTS,
    "boolean": BOOLEAN_TEXTS,
}
# JSON tokens no JSON library writes, or shapes no field of these types takes.
RAW_TOKENS = (
    "NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0", "-0.0", "0.0000001",
    "1.0000001", "1E+2", "123456789012345678901234567890", "true", "null", "[]", "{}", "[1,2]",
    '{"a":1}', '"\\ud800"', '"\\u0000"', '"\\udfff\\ud800"', "01", ".5", "+1", "1.", "0x10",
)  # fmt: skip
# Wrong shapes for a jsonb argument (an order's items and the like).
JSON_SHAPES = (
    "[]", "{}", "[{}]", "[null]", '"items"', "1", "null", "[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]",
    '[{"product_id":"not-a-uuid","quantity":1}]', '[{"product_id":null,"quantity":null}]',
    '{"product_id":"00000000-0000-0000-0000-000000000000","quantity":1}',
    "[" + ",".join(['{"product_id":"00000000-0000-0000-0000-000000000000","quantity":1}'] * 500) + "]",
    "[" * 5000 + "]" * 5000,
)  # fmt: skip
# Huge strings: past the anonymous query allowance (2 KiB) in a query, far past anything in a body.
QUERY_HUGE = (3_000,)
BODY_HUGE = (10_000, 300_000)
# A query string stays within the request line nginx and Kong read (8 KiB): past it they answer
# 414 themselves, with a page of their own before any location (and error_page) applies.
QUERY_ROOM = 7_000


def texts(kind: str, known_ids: Sequence[str], huge: Sequence[int] = BODY_HUGE) -> st.SearchStrategy[str]:
    """Hostile text for a value of PostgreSQL type `kind` (and now and then of another type); one
    in sixteen huge, since each costs its size on every hop."""
    choices: list[st.SearchStrategy[str]] = [
        st.sampled_from(TEXTS.get(kind, SQL_TEXTS)),
        st.sampled_from([value for values in TEXTS.values() for value in values] + list(SQL_TEXTS)),
        st.text(max_size=40),
    ]
    if kind == "uuid":
        choices += [st.sampled_from(known_ids), st.uuids().map(str)]
    if kind in ("numeric", "integer", "bigint"):
        choices += [
            st.decimals(places=7).map(str),
            st.integers(min_value=-(10**40), max_value=10**40).map(str),
        ]
    huge_text = st.sampled_from(huge).map(lambda length: "x" * length)
    return st.integers(0, 15).flatmap(lambda n: huge_text if n == 0 else st.one_of(choices))


def tokens(kind: str, known_ids: Sequence[str]) -> st.SearchStrategy[str]:
    """A hostile raw JSON token for a field of PostgreSQL type `kind`."""
    choices = [texts(kind, known_ids).map(json.dumps), st.sampled_from(RAW_TOKENS)]
    if kind in ("numeric", "integer", "bigint"):
        choices.append(st.sampled_from(NUMERIC_TEXTS + INTEGER_TEXTS))  # unquoted
    if kind in ("jsonb", "json"):
        choices.append(st.sampled_from(JSON_SHAPES))
        choices.append(
            st.tuples(st.sampled_from(known_ids), st.sampled_from(RAW_TOKENS)).map(
                lambda pair: f'[{{"product_id":"{pair[0]}","quantity":{pair[1]}}}]'
            )
        )
    return st.one_of(choices)


# -- requests --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str = ""  # as sent: percent-encoded, and may encode bytes that are not UTF-8
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def target(self) -> str:
        return f"/rest/v1{self.path}" + (f"?{self.query}" if self.query else "")

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How Hypothesis shows a failing example: as `str`, not field by field."""
        printer.text(str(self))

    def __str__(self) -> str:
        """The whole request, a repeated run written once with its count: `x{*3000}`, `(ab){*20}`."""
        extra = "".join(f" -H '{name}: {value}'" for name, value in self.headers)
        shown = "" if self.body is None else f" {self.body!r}"
        text = _CHARACTER_RUN.sub(
            lambda run: f"{run[1]}{{*{len(run[0])}}}", f"{self.method} {self.target}{extra}{shown}"
        )
        return _RUN.sub(
            lambda run: f"({run[1]}){{*{len(run[0]) // len(run[1])}}}" if len(run[0]) > 60 else run[0], text
        )


_CHARACTER_RUN = re.compile(r"(.)\1{15,}", re.DOTALL)
_RUN = re.compile(r"(.{2,100}?)\1{4,}", re.DOTALL)


# A byte sequence that is not UTF-8: a lone continuation byte, an overlong NUL, a truncated
# three-byte sequence and an encoded surrogate.
BAD_UTF8 = b"\x80\xc0\x80\xe2\x82\xed\xa0\x80"
BAD_UTF8_QUERY = "".join(f"%{byte:02X}" for byte in BAD_UTF8)
PAGE_TEXTS = ("-1", "0", "1", "1000", "1001", "1000000", "99999999999999999999", "1.5", "NaN", "a", "")
BODY_LIMIT = 1024 * 1024  # the gateway's (README, "Abuse limits")


def _object(fields: Sequence[tuple[str, str]]) -> bytes:
    return ("{" + ",".join(f"{json.dumps(name)}:{token}" for name, token in fields) + "}").encode()


@st.composite
def _members(
    draw: st.DrawFn, operation: Operation, value: Callable[[Field], st.SearchStrategy[str]]
) -> list[tuple[str, str]]:
    """Some of the fields (the required ones mostly), each with a hostile value, perhaps a stranger."""
    members = [
        (f.name, draw(value(f)))
        for f in operation.fields
        if draw(st.booleans()) or (f.required and draw(st.integers(0, 9)) > 0)
    ]
    if draw(st.integers(0, 9)) == 0:
        members.append((draw(st.sampled_from(["", "id", "__proto__", "x" * 300, "a b", "'"])), "1"))
    return members


@st.composite
def bodies(draw: st.DrawFn, operation: Operation, known_ids: Sequence[str]) -> bytes:
    """A hostile JSON body: an object of the fields, a batch of them, a wrong shape, bad UTF-8,
    or one over the gateway's limit."""

    def token(f: Field) -> st.SearchStrategy[str]:
        return tokens(f.format, known_ids)

    members = draw(_members(operation, token))
    shape = draw(
        st.sampled_from(["object"] * 12 + ["batch", "batch", "shape", "shape", "utf8", "utf8", "oversized"])
    )
    if shape == "batch":
        return b"[" + b",".join(_object(draw(_members(operation, token))) for _ in range(3)) + b"]"
    if shape == "shape":
        shape_text: str = draw(st.sampled_from(JSON_SHAPES + RAW_TOKENS + ("", "{", '{"a":1,"a":2}', "[1,")))
        return shape_text.encode()
    if shape == "utf8":
        name = members[0][0] if members else "name"
        return _object(members).replace(b"{", b'{"' + name.encode() + b'":"' + BAD_UTF8 + b'",', 1)
    if shape == "oversized":
        size = draw(st.sampled_from([BODY_LIMIT - 4096, BODY_LIMIT + 1]))
        return _object([*members, ("padding", json.dumps("x" * size))])
    return _object(members)


def _query_value(text: str) -> str:
    return quote(text, safe="")


def _query(parts: Sequence[str]) -> str:
    """The parts that fit in QUERY_ROOM, joined."""
    kept: list[str] = []
    for part in parts:
        if sum(len(p) + 1 for p in kept) + len(part) <= QUERY_ROOM:
            kept.append(part)
    return "&".join(kept)


@st.composite
def filters(draw: st.DrawFn, operation: Operation, known_ids: Sequence[str]) -> list[str]:
    """Row filters, ordering, embedding and paging on a table or view, PostgREST's grammar."""
    parts: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        column = draw(st.sampled_from(operation.fields)) if operation.fields else Field("id", "uuid")
        operator = draw(
            st.sampled_from(
                ["eq", "neq", "gt", "lte", "like", "ilike", "in", "is", "fts", "cs", "ov", "not.eq"]
            )
        )
        value = draw(texts(column.format, known_ids, QUERY_HUGE))
        if operator == "in":
            value = f"({value},{value})"
        parts.append(f"{_query_value(column.name)}={operator}.{_query_value(value)}")
    columns = [f.name for f in operation.fields]
    extras = st.one_of(
        st.sampled_from(PAGE_TEXTS).map(lambda text: f"limit={_query_value(text)}"),
        st.sampled_from(PAGE_TEXTS).map(lambda text: f"offset={_query_value(text)}"),
        st.sampled_from([*columns, "nope", ";"]).map(lambda text: f"order={_query_value(text)}.desc"),
        st.sampled_from(["*", "nope", "*,profiles(*)", "id::text", "count()"]).map(
            lambda text: f"select={_query_value(text)}"
        ),
        st.sampled_from(["(id.eq.1,or(", "(a.eq.1)", "()"]).map(lambda text: f"or={_query_value(text)}"),
        st.sampled_from(["id", "nope", ""]).map(lambda text: f"on_conflict={_query_value(text)}"),
        st.just(f"name=eq.{BAD_UTF8_QUERY}"),
    )
    return parts + draw(st.lists(extras, max_size=2))


HEADERS = (
    ("Range", "0-99999999"),
    ("Range", "-5--1"),
    ("Prefer", "count=exact"),
    ("Prefer", "return=representation"),
    ("Prefer", "params=single-object"),
    ("Prefer", "tx=commit"),
    ("Accept", "application/vnd.pgrst.object+json"),
    ("Accept", "text/csv"),
    ("Content-Profile", "mycelium_private"),
    ("Accept-Profile", "auth"),
)
# PostgREST also reads CSV and form bodies (and answered bad UTF-8 in them 500): the gateways
# refuse them (415 unsupported_media_type), and the fuzz sends the same bytes under those media
# types, cut short, to hold them to it. A form body's text can become one argument name, and
# PostgREST 12's "Perhaps you meant" hint for an unknown name takes time that grows with the
# square of its length (10 KB: 11 s of its CPU; anonymous bodies are now held to 2 KiB, found by
# this fuzz, reported, not ours to fix): the fuzz stays bounded.
CONTENT_TYPES = ("application/json",) * 8 + ("text/csv", "application/x-www-form-urlencoded")
OTHER_BODY_BYTES = 1000


@st.composite
def requests(draw: st.DrawFn, operation: Operation, known_ids: Sequence[str]) -> Request:
    """A hostile request for `operation`: arguments in the query of an RPC's GET, a body for its
    POST and a table's POST and PATCH, filters for a table's GET, PATCH and DELETE."""
    headers = tuple(draw(st.lists(st.sampled_from(HEADERS), max_size=1)))
    if operation.rpc and operation.method == "GET":
        arguments = draw(_members(operation, lambda f: texts(f.format, known_ids, QUERY_HUGE)))
        parts = [f"{_query_value(name)}={_query_value(text)}" for name, text in arguments]
        if draw(st.integers(0, 5)) == 0:
            parts.append(f"{operation.fields[0].name if operation.fields else 'x'}={BAD_UTF8_QUERY}")
        return Request("GET", operation.path, _query(parts), None, headers)
    query = "" if operation.rpc or operation.method == "POST" else _query(draw(filters(operation, known_ids)))
    body = None if operation.method in ("GET", "DELETE") else draw(bodies(operation, known_ids))
    content_type = ("Content-Type", draw(st.sampled_from(CONTENT_TYPES)))
    if body is not None and content_type[1] != "application/json":
        body = body[:OTHER_BODY_BYTES]
    return Request(operation.method, operation.path, query, body, (content_type, *headers))


# -- callers ---------------------------------------------------------------------------------
@dataclass
class Caller:
    """Who sends the fuzz: the API key, the bearer tokens it rotates through, the loopback
    addresses it sends from, and whether a call of its may change anything at all."""

    name: str
    apikey: str
    tokens: Sequence[str | None]
    addresses: Sequence[str] = ("127.0.0.1",)
    # Anon and forged tokens own nothing: nothing they send may change anything, answered 2xx or not.
    owns_nothing: bool = False
    # A token made without the secret: every call of it must be rejected.
    forged: bool = False
    _clients: list[httpx.Client] = field(default_factory=list)
    _sent: int = 0

    def send(self, api_url: str, request: Request) -> httpx.Response:
        # The gateway counts anon by address and users by token (README, "Abuse limits"): the fuzz
        # spreads its calls so that they are answered, not queued; the limits have their own tests.
        if not self._clients:
            self._clients = [
                httpx.Client(
                    base_url=api_url,
                    transport=httpx.HTTPTransport(local_address=address),
                    timeout=60,
                )
                for address in self.addresses
            ]
        client = self._clients[self._sent % len(self._clients)]
        token = self.tokens[self._sent % len(self.tokens)]
        self._sent += 1
        headers = {"apikey": self.apikey, **({"Authorization": f"Bearer {token}"} if token else {})}
        return client.request(
            request.method, request.target, content=request.body, headers={**headers, **dict(request.headers)}
        )

    def close(self) -> None:
        for client in self._clients:
            client.close()


def user_caller(name: str, stack: LocalStack, user_id: str, email: str, count: int = 8) -> Caller:
    """A user with several live tokens (Auth issues one a session), each counted on its own."""
    tokens = [access_token(stack.jwt_secret, user_id, email=email) for _ in range(count)]
    return Caller(name, stack.anon_key, tokens)


def anon_caller(stack: LocalStack) -> Caller:
    addresses = [f"127.0.18.{host}" for host in range(1, 17)]
    return Caller("anon", stack.anon_key, [None, stack.anon_key], addresses, owns_nothing=True)


def _base64(claims: dict[str, Any]) -> str:
    return jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()


def forged_tokens(stack: LocalStack, victim_id: str) -> dict[str, str]:
    """Tokens an attacker can make without the JWT secret, by the trick each tries."""
    now = int(time.time())
    service = {"role": "service_role", "iss": "supabase", "iat": now, "exp": now + 3600}
    victim = jwt.decode(access_token(stack.jwt_secret, victim_id), options={"verify_signature": False})
    genuine = access_token(stack.jwt_secret, str(uuid.uuid4()))
    header, _, signature = genuine.split(".")
    unsigned = _base64({"alg": "none", "typ": "JWT"})
    return {
        "wrong secret, service role": jwt.encode(service, "not the secret", algorithm="HS256"),
        "wrong secret, a victim's claims": jwt.encode(victim, "not the secret", algorithm="HS256"),
        "alg none, service role": f"{unsigned}.{_base64(service)}.",
        "another token's signature on a victim's claims": f"{header}.{_base64(victim)}.{signature}",
        "signed with the anon key": jwt.encode(service, stack.anon_key, algorithm="HS256"),
        "a superuser role": jwt.encode({**service, "role": "supabase_admin"}, "guess", algorithm="HS256"),
        "expired": access_token(stack.jwt_secret, victim_id, lifetime_seconds=-60),
        "garbage": "a.b.c",
        "oversized": "x" * 6000,
    }


# -- what a rejection must leave behind ------------------------------------------------------
_FAIL_REASON = re.compile(r"mycelium_private\.fail\(\s*'([a-z_]+)'")
# The gateways' own answers: `"code":"rate_limited"` in nginx's, `code = 'query_too_long'` in Kong's Lua.
_GATEWAY_REASON = re.compile(r"code\W{1,6}([a-z]+(?:_[a-z]+)+)")
GATEWAYS = (REPO / "cli" / "dev" / "gateway.py", REPO / "supabase" / "kong.yml")
# SQLSTATEs that name no reason: a bare RAISE and an internal error.
UNNAMED_SQLSTATES = frozenset({"P0001", "XX000"})
SQLSTATE = re.compile(r"[0-9A-Z]{5}")
POSTGREST_CODE = re.compile(r"PGRST\d{3}")


def known_reasons() -> frozenset[str]:
    """The reasons we name: the SQL's (`mycelium_private.fail`) and the gateways'."""
    sql = (
        reason for path in (REPO / "sql").glob("*.sql") for reason in _FAIL_REASON.findall(path.read_text())
    )
    gateways = (reason for path in GATEWAYS for reason in _GATEWAY_REASON.findall(path.read_text()))
    return frozenset([*sql, *gateways])


def unstable_reason(response: httpx.Response, known: frozenset[str]) -> str | None:
    """Why a rejection's body carries no stable machine-readable reason, or None when it does.
    Stable: a reason we name (`known_reasons`), PostgREST's own
    `PGRSTnnn`, or PostgreSQL's SQLSTATE other than the ones that name nothing."""
    code = reason(response)
    if not isinstance(code, str):
        return f"no code in {response.text[:200]!r}"
    if code in known or POSTGREST_CODE.fullmatch(code):
        return None
    if SQLSTATE.fullmatch(code) and code not in UNNAMED_SQLSTATES:
        return None
    return f"code {code!r} is no stable reason: {response.text[:200]!r}"


NON_FINITE = frozenset({"NaN", "Infinity", "-Infinity"})


def answer_of(response: httpx.Response) -> Any:
    """The JSON answer (numbers as Decimal), or None when the body is no JSON."""
    try:
        return loads(response.text)
    except ValueError:
        return None


def non_finite_amount(response: httpx.Response) -> bool:
    """Whether an RPC answered an amount, or amounts by currency, that is NaN or infinite (numeric
    holds them; JSON writes them as strings): money is finite, so such an input is to be refused."""
    answer = answer_of(response)
    values = list(answer.values()) if isinstance(answer, dict) else [answer]
    special = [isinstance(value, str) and value in NON_FINITE for value in values]
    numbers = [isinstance(value, int | Decimal) for value in values]
    return any(special) and all(s or n for s, n in zip(special, numbers, strict=True))


def fingerprint_query(db: Conn) -> str:
    """One statement that reads, for every table of ours, Supabase's and Auth's, its row count
    and the newest row version's transaction: any committed insert, update or delete moves it."""
    tables = db.execute(
        """select format('%I.%I', n.nspname, c.relname) from pg_class c
           join pg_namespace n on n.oid = c.relnamespace
           where c.relkind in ('r', 'p') and n.nspname in ('public', 'mycelium_private', 'auth', 'realtime')
           order by 1"""
    ).fetchall()
    return " union all ".join(
        f"select '{table}', count(*), coalesce(max(xmin::text::bigint), 0) from {table}"
        for (table,) in tables
    )


Fingerprint = dict[str, tuple[int, int]]


def fingerprint(db: Conn, query: str) -> Fingerprint:
    return {str(name): (int(rows), int(newest)) for name, rows, newest in db.execute(query).fetchall()}


def changed(before: Fingerprint, after: Fingerprint) -> list[str]:
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


@dataclass
class Fuzz:
    """Sends hostile requests and writes down, one line each with the exact request, what is
    wrong with the answers: a server error, a rejection without a stable reason or whose reason
    changes when it is sent again (once for each reason), a change left behind by a rejected call
    (or by any call of a caller that owns nothing), a non-finite amount, a forged token let in."""

    api_url: str
    db: Conn
    known_ids: Sequence[str]
    state_query: str = field(init=False)
    reasons: frozenset[str] = field(default_factory=known_reasons)
    findings: list[str] = field(default_factory=list)
    sent: int = 0
    replayed: set[tuple[str, str, str, int, Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.state_query = fingerprint_query(self.db)

    def operation(self, caller: Caller, operation: Operation, examples: int) -> None:
        """`examples` requests for `operation`, the same ones every run for this caller (no
        shrinking: each costs a round trip, and the finding names its request)."""

        @seed(zlib.crc32(f"{caller.name} {operation}".encode()))
        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(requests(operation, self.known_ids))
        def send(request: Request) -> None:
            self.check(caller, request)

        send()

    def check(self, caller: Caller, request: Request) -> None:
        before = fingerprint(self.db, self.state_query)
        response = self._send(caller, request)
        failed, rejected = response.status_code >= 500, response.status_code >= 400
        if failed:
            self._found(caller, request, response, f"server error {response.text[:200]!r}")
        if caller.forged and not rejected:
            self._found(caller, request, response, "a forged token was accepted")
        moved = changed(before, fingerprint(self.db, self.state_query))
        if moved and (rejected or caller.owns_nothing):
            self._found(caller, request, response, f"changed {moved}")
        if failed:
            return
        if not rejected:
            if request.path.startswith("/rpc/") and non_finite_amount(response):
                self._found(
                    caller, request, response, f"answered a non-finite amount {response.text[:200]!r}"
                )
            return
        why = unstable_reason(response, self.reasons)
        if why:
            self._found(caller, request, response, why)
            return
        # Sent again, once for each reason an operation gives a caller: the same answer.
        replay = (caller.name, request.method, request.path, response.status_code, reason(response))
        if replay in self.replayed:
            return
        self.replayed.add(replay)
        again = self._send(caller, request)
        if (again.status_code, reason(again)) != (response.status_code, reason(response)):
            self._found(caller, request, response, f"reason {reason(response)!r}, then {reason(again)!r}")

    def _send(self, caller: Caller, request: Request) -> httpx.Response:
        self.sent += 1
        return caller.send(self.api_url, request)

    def _found(self, caller: Caller, request: Request, response: httpx.Response, what: str) -> None:
        self.findings.append(f"[{caller.name}] {what} (HTTP {response.status_code}): {request}")

    def assert_nothing_found(self) -> None:
        if self.findings:
            raise AssertionError(
                f"{len(self.findings)} findings in {self.sent} requests:\n" + "\n".join(self.findings)
            )


def reason(response: httpx.Response) -> Any:
    answer = answer_of(response)
    return answer.get("code") if isinstance(answer, dict) else None
