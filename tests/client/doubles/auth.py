"""A Supabase Auth (GoTrue) double: the endpoints the client uses, as the Auth OpenAPI spec
(`shared/specs/supabase-auth-openapi.yaml`) describes them.

It writes `auth.users` the way GoTrue does (bcrypt through `extensions.crypt`, so the database's
triggers create the profile and the credit account) and signs access tokens with the stack's JWT
secret, so the real PostgREST accepts them. Sessions and refresh tokens live in memory.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt
import psycopg
from psycopg.rows import dict_row

from cli.dev.users import act_as_auth_server

USER_COLUMNS = """
  id, aud, role, email, phone, email_confirmed_at, phone_confirmed_at, last_sign_in_at,
  raw_app_meta_data, raw_user_meta_data, created_at, updated_at, is_anonymous
"""


def _time(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def user_json(row: dict[str, Any]) -> dict[str, Any]:
    """A user as GoTrue renders it (UserSchema); absent times are left out, not null."""
    user: dict[str, Any] = {
        "id": str(row["id"]),
        "aud": row["aud"],
        "role": row["role"],
        "email": row["email"] or "",
        "phone": row["phone"] or "",
        "app_metadata": row["raw_app_meta_data"] or {},
        "user_metadata": row["raw_user_meta_data"] or {},
        "identities": [],
        "is_anonymous": bool(row["is_anonymous"]),
    }
    for name in ("email_confirmed_at", "phone_confirmed_at", "last_sign_in_at", "created_at", "updated_at"):
        if row[name] is not None:
            user[name] = _time(row[name])
    if row["email_confirmed_at"] is not None:
        user["confirmed_at"] = _time(row["email_confirmed_at"])
    return user


class AuthFailure(Exception):
    def __init__(self, status: int, error_code: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status, self.error_code, self.msg, self.extra = status, error_code, msg, extra

    def body(self) -> dict[str, Any]:  # ErrorSchema
        return {"code": self.status, "error_code": self.error_code, "msg": self.msg, **self.extra}


@dataclass
class RefreshToken:
    user_id: uuid.UUID
    session_id: str
    revoked: bool = False


@dataclass
class AuthDouble:
    db_url: str
    jwt_secret: str
    token_lifetime_seconds: int = 3600
    requests: list[str] = field(default_factory=list)  # "POST /token?grant_type=password", ...
    traceparents: list[str] = field(default_factory=list)  # the trace contexts requests carried
    _refresh_tokens: dict[str, RefreshToken] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> str:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:
                double._handle(self, "GET")

            def do_POST(self) -> None:
                double._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="auth-double").start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- HTTP ----------------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(handler.path)
        query = {name: values[0] for name, values in parse_qs(url.query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        self.requests.append(
            f"{method} {url.path}" + (f"?grant_type={query['grant_type']}" if "grant_type" in query else "")
        )
        if "traceparent" in handler.headers:
            self.traceparents.append(handler.headers["traceparent"])
        bearer = (handler.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        routes: dict[tuple[str, str], Callable[..., tuple[int, Any]]] = {
            ("POST", "/signup"): self.signup,
            ("POST", "/token"): self.token,
            ("GET", "/user"): self.user,
            ("POST", "/logout"): self.logout,
            ("POST", "/admin/users"): self.create_user,
        }
        route = routes.get((method, url.path))
        try:
            if route is None:
                raise AuthFailure(404, "not_found", f"no route {method} {url.path}")
            body = json.loads(raw) if raw else {}
            status, answer = route(body=body, query=query, bearer=bearer)
        except AuthFailure as failure:
            status, answer = failure.status, failure.body()
        content = b"" if answer is None else json.dumps(answer).encode()
        handler.send_response(status)
        if content:
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)

    # -- the database --------------------------------------------------------------------------
    def _query(self, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
        with psycopg.connect(self.db_url, autocommit=True, row_factory=dict_row) as conn:
            return conn.execute(sql, params).fetchone()

    def _write(self, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """A write to `auth.users` as GoTrue makes it: as its own role, so the database's triggers
        run as they would under Supabase Auth."""
        with psycopg.connect(self.db_url, row_factory=dict_row) as conn:
            act_as_auth_server(conn)
            return conn.execute(sql, params).fetchone()

    def _user(self, user_id: uuid.UUID | str) -> dict[str, Any]:
        row = self._query(f"select {USER_COLUMNS} from auth.users where id = %(id)s", {"id": str(user_id)})
        if row is None:
            raise AuthFailure(404, "user_not_found", "User not found")
        return row

    # -- sessions ------------------------------------------------------------------------------
    def _session(self, row: dict[str, Any], session_id: str | None = None) -> dict[str, Any]:
        """AccessTokenResponseSchema."""
        now = int(time.time())
        refresh = secrets.token_urlsafe(16)
        session = session_id or str(uuid.uuid4())
        with self._lock:
            self._refresh_tokens[refresh] = RefreshToken(row["id"], session)
        claims = {  # GoTrue's claims (see cli.keys.access_token), with this session's id
            "sub": str(row["id"]),
            "aud": "authenticated",
            "role": "authenticated",
            "email": row["email"],
            "phone": "",
            "app_metadata": row["raw_app_meta_data"],
            "user_metadata": row["raw_user_meta_data"],
            "iat": now,
            "exp": now + self.token_lifetime_seconds,
            "session_id": session,
            "is_anonymous": False,
        }
        token = jwt.encode(claims, self.jwt_secret, algorithm="HS256")
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.token_lifetime_seconds,
            "expires_at": now + self.token_lifetime_seconds,
            "refresh_token": refresh,
            "user": user_json(row),
        }

    def _claims(self, bearer: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                bearer, self.jwt_secret, algorithms=["HS256"], options={"verify_aud": False}
            )
        except jwt.PyJWTError as error:
            raise AuthFailure(401, "bad_jwt", f"invalid JWT: {error}") from None
        return claims

    def _insert_user(
        self, email: str, password: str, data: dict[str, Any], *, confirmed: bool
    ) -> dict[str, Any]:
        hashed = self._query(
            "select extensions.crypt(%(password)s, extensions.gen_salt('bf')) as hash", {"password": password}
        )
        assert hashed is not None
        try:
            row = self._write(
                f"""
                insert into auth.users (
                  instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                  confirmation_token, recovery_token, email_change_token_new, email_change,
                  raw_app_meta_data, raw_user_meta_data, created_at, updated_at, is_anonymous
                ) values (
                  '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', 'authenticated',
                  %(email)s, %(hashed)s,
                  case when %(confirmed)s then now() end, '', '', '', '',
                  '{{"provider": "email", "providers": ["email"]}}', %(data)s, now(), now(), false
                ) returning {USER_COLUMNS}
                """,
                {"email": email, "hashed": hashed["hash"], "data": json.dumps(data), "confirmed": confirmed},
            )
        except psycopg.errors.UniqueViolation:
            raise AuthFailure(
                422, "email_exists", "A user with this email address has already been registered"
            ) from None
        assert row is not None
        return row

    # -- endpoints -----------------------------------------------------------------------------
    def signup(self, *, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        email, password = str(body.get("email") or "").strip().lower(), str(body.get("password") or "")
        if "@" not in email:
            raise AuthFailure(400, "validation_failed", "Unable to validate email address: invalid format")
        if len(password) < 6:
            raise AuthFailure(
                422,
                "weak_password",
                "Password should be at least 6 characters.",
                weak_password={"reasons": ["length"]},
            )
        try:
            row = self._insert_user(email, password, body.get("data") or {}, confirmed=True)
        except AuthFailure:
            raise AuthFailure(422, "user_already_exists", "User already registered") from None
        return 200, self._session(row)  # autoconfirm: a session at once

    def token(self, *, body: dict[str, Any], query: dict[str, str], **_: Any) -> tuple[int, Any]:
        grant = query.get("grant_type")
        if grant == "password":
            found = self._query(
                """
                select id, email_confirmed_at from auth.users
                where lower(email) = lower(%(email)s)
                  and encrypted_password = extensions.crypt(%(password)s, encrypted_password)
                """,
                {"email": str(body.get("email") or ""), "password": str(body.get("password") or "")},
            )
            if found is None:
                raise AuthFailure(400, "invalid_credentials", "Invalid login credentials")
            # After the password, as GoTrue checks it: only the account's owner learns this.
            if found["email_confirmed_at"] is None:
                raise AuthFailure(400, "email_not_confirmed", "Email not confirmed")
            row = self._write(
                f"""
                update auth.users set last_sign_in_at = now(), updated_at = now()
                where id = %(id)s returning {USER_COLUMNS}
                """,
                {"id": found["id"]},
            )
            assert row is not None
            return 200, self._session(row)
        if grant == "refresh_token":
            with self._lock:
                entry = self._refresh_tokens.get(str(body.get("refresh_token") or ""))
                if entry is None:
                    raise AuthFailure(
                        400, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found"
                    )
                if entry.revoked:
                    raise AuthFailure(
                        400, "refresh_token_already_used", "Invalid Refresh Token: Already Used"
                    )
                entry.revoked = True  # rotation: a refresh token works once
            return 200, self._session(self._user(entry.user_id), entry.session_id)
        raise AuthFailure(400, "validation_failed", f"unsupported grant_type {grant!r}")

    def user(self, *, bearer: str, **_: Any) -> tuple[int, Any]:
        claims = self._claims(bearer)
        if claims.get("role") != "authenticated" or "sub" not in claims:
            raise AuthFailure(403, "bad_jwt", "invalid claim: missing sub claim")
        return 200, user_json(self._user(claims["sub"]))

    def logout(self, *, bearer: str, query: dict[str, str], **_: Any) -> tuple[int, Any]:
        claims = self._claims(bearer)
        scope = query.get("scope", "global")
        with self._lock:
            # GoTrue deletes the sessions, and their refresh tokens with them: a refresh with one
            # of those is then refresh_token_not_found, not a reuse of a rotated token.
            for token, entry in list(self._refresh_tokens.items()):
                current = entry.session_id == claims.get("session_id")
                in_scope = scope == "global" or current == (scope == "local")  # "others": all but this
                if str(entry.user_id) == claims.get("sub") and in_scope:
                    del self._refresh_tokens[token]
        return 204, None

    def create_user(self, *, body: dict[str, Any], bearer: str, **_: Any) -> tuple[int, Any]:
        """POST /admin/users, service_role only: a user, confirmed if `email_confirm`."""
        if self._claims(bearer).get("role") != "service_role":
            raise AuthFailure(403, "not_admin", "User not allowed")
        email = str(body.get("email") or "").strip().lower()
        row = self._insert_user(
            email,
            str(body.get("password") or ""),
            body.get("user_metadata") or {},
            confirmed=bool(body.get("email_confirm")),
        )
        return 200, user_json(row)
