"""Who a client acts as, and where the project lives. Shared by the sync and async clients."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlencode

from mycelium_client.errors import ConfigurationError, NotAuthorized


def token_claims(token: str) -> dict[str, object]:
    """The claims of a JWT, unverified: the server verifies; we only need to know the user."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        raise NotAuthorized("the access token is not a JWT", reason="invalid_token") from None
    if not isinstance(claims, dict):
        raise NotAuthorized("the access token is not a JWT", reason="invalid_token")
    return claims


@dataclass
class Identity:
    """The project's API key, and the access token of the user the client acts for, if any
    (fixed by `as_user`, or the auth session's, kept current as it is refreshed)."""

    api_key: str
    access_token: str | None = None
    _user: tuple[str, uuid.UUID | None] | None = field(default=None, repr=False)

    def bearer(self) -> str:
        return self.access_token or self.api_key

    def user_id(self) -> uuid.UUID | None:
        token = self.access_token
        if token is None:
            return None
        if self._user is None or self._user[0] != token:
            sub = token_claims(token).get("sub")
            self._user = (token, uuid.UUID(str(sub)) if sub else None)
        return self._user[1]

    def user_or(self, given: uuid.UUID | str | None) -> uuid.UUID:
        """`given`, else the signed-in user; refused before sending when there is neither."""
        if given is not None:
            return given if isinstance(given, uuid.UUID) else uuid.UUID(str(given))
        user = self.user_id()
        if user is None:
            raise NotAuthorized("sign in (or pass user_id when acting as a service)", reason="not_signed_in")
        return user


@dataclass(frozen=True)
class Project:
    """One Supabase project: its base URL (the gateway) and API key."""

    url: str
    key: str

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"the Supabase URL must start with http:// or https://, not {self.url!r}"
            )
        if not self.key:
            raise ConfigurationError("the Supabase API key is empty")

    @property
    def base(self) -> str:
        return self.url.rstrip("/")

    @property
    def rest_url(self) -> str:
        return f"{self.base}/rest/v1"

    @property
    def websocket_url(self) -> str:
        scheme, rest = self.base.split("://", 1)
        ws = "wss" if scheme == "https" else "ws"
        return f"{ws}://{rest}/realtime/v1/websocket?" + urlencode({"apikey": self.key, "vsn": "1.0.0"})
