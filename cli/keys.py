"""JWTs the way a self-hosted Supabase issues them: HS256 with the stack's secret.

The anon and service_role keys are long-lived tokens that carry only `role`, `iss`, `iat` and
`exp`; user access tokens carry GoTrue's claims so PostgREST and `auth.uid()` see a real user.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHM = "HS256"
API_KEY_LIFETIME_SECONDS = 10 * 365 * 24 * 3600
ACCESS_TOKEN_LIFETIME_SECONDS = 3600


def new_jwt_secret() -> str:
    """A fresh secret, 40 URL-safe characters (Supabase asks for at least 32)."""
    return secrets.token_urlsafe(30)


def api_key(secret: str, role: str, *, now: int | None = None) -> str:
    """The anon or service_role key for `secret`."""
    issued = int(time.time()) if now is None else now
    claims = {"role": role, "iss": "supabase", "iat": issued, "exp": issued + API_KEY_LIFETIME_SECONDS}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


@dataclass(frozen=True)
class ApiKeys:
    jwt_secret: str
    anon_key: str
    service_role_key: str

    @classmethod
    def generate(cls, secret: str | None = None) -> ApiKeys:
        chosen = secret or new_jwt_secret()
        return cls(chosen, api_key(chosen, "anon"), api_key(chosen, "service_role"))


def access_token(
    secret: str,
    user_id: uuid.UUID | str,
    *,
    email: str | None = None,
    role: str = "authenticated",
    app_metadata: dict[str, Any] | None = None,
    user_metadata: dict[str, Any] | None = None,
    lifetime_seconds: int = ACCESS_TOKEN_LIFETIME_SECONDS,
    now: int | None = None,
) -> str:
    """A user access token with the claims GoTrue puts in it."""
    issued = int(time.time()) if now is None else now
    claims = {
        "sub": str(user_id),
        "aud": "authenticated",
        "role": role,
        "email": email or "",
        "phone": "",
        "app_metadata": app_metadata or {"provider": "email", "providers": ["email"]},
        "user_metadata": user_metadata or {},
        "iat": issued,
        "exp": issued + lifetime_seconds,
        "session_id": str(uuid.uuid4()),
        "is_anonymous": False,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode(token: str, secret: str) -> dict[str, Any]:
    """Verify `token` with `secret` and return its claims (audience not checked: API keys have none)."""
    claims: dict[str, Any] = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"verify_aud": False})
    return claims
