"""`client.auth`: sign up, sign in, sign out, the current user and session, refresh.

Thin over supabase-py's Auth client (GoTrue); its errors become the client's own, and its
session's access token is what the client's REST and Realtime calls carry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from supabase_auth import AsyncGoTrueClient, SyncGoTrueClient
from supabase_auth.errors import AuthApiError, AuthError, AuthRetryableError, AuthSessionMissingError
from supabase_auth.types import AuthResponse
from supabase_auth.types import Session as GoTrueSession

from mycelium_client.errors import (
    Conflict,
    InvalidArgument,
    MyceliumError,
    NotAuthorized,
    NotFound,
    ServiceUnavailable,
    error_class,
)
from mycelium_client.models import AuthUser, Session, SignUpResult

T = TypeVar("T")

_BY_AUTH_CODE: dict[str, type[MyceliumError]] = {
    "invalid_credentials": NotAuthorized,
    "bad_jwt": NotAuthorized,
    "session_not_found": NotAuthorized,
    "refresh_token_not_found": NotAuthorized,
    "refresh_token_already_used": NotAuthorized,
    "email_not_confirmed": NotAuthorized,
    "user_banned": NotAuthorized,
    "user_already_exists": Conflict,
    "email_exists": Conflict,
    "weak_password": InvalidArgument,
    "validation_failed": InvalidArgument,
    "user_not_found": NotFound,
}


def translate(error: AuthError) -> MyceliumError:
    """A GoTrue error as one of the client's."""
    if isinstance(error, AuthRetryableError):
        return ServiceUnavailable(
            f"Auth is unreachable: {error.message}",
            reason="network_error",
            status=getattr(error, "status", 0),
        )
    if isinstance(error, AuthSessionMissingError):
        return NotAuthorized("not signed in", reason="not_signed_in")
    reason = str(error.code or "auth_error")
    status = error.status if isinstance(error, AuthApiError) else 0
    cls = _BY_AUTH_CODE.get(reason) or error_class(reason, status)
    return cls(error.message, reason=reason, status=status)


def _call(action: Callable[[], T]) -> T:
    try:
        return action()
    except AuthError as error:
        raise translate(error) from error


async def _acall(action: Callable[[], Awaitable[T]]) -> T:
    try:
        return await action()
    except AuthError as error:
        raise translate(error) from error


def session_of(session: GoTrueSession) -> Session:
    return Session(
        access_token=session.access_token,
        refresh_token=session.refresh_token,
        expires_at=session.expires_at,
        user=user_of(session.user),
    )


def user_of(user: Any) -> AuthUser:
    return AuthUser.model_validate(user.model_dump())


def sign_up_result(response: AuthResponse) -> SignUpResult:
    if response.user is None:
        raise MyceliumError("Auth answered the sign-up without a user", reason="auth_error")
    session = None if response.session is None else session_of(response.session)
    return SignUpResult(user=user_of(response.user), session=session)


def signed_in(response: AuthResponse) -> Session:
    if response.session is None:
        raise NotAuthorized("Auth answered without a session", reason="no_session")
    return session_of(response.session)


_FIXED = "this client acts with a fixed access token (as_user): sign in with the client it came from"


def _credentials(email: str, password: str, data: dict[str, Any] | None = None) -> Any:
    credentials: dict[str, Any] = {"email": email, "password": password}
    if data:
        credentials["options"] = {"data": data}
    return credentials


class Auth:
    def __init__(self, gotrue: SyncGoTrueClient, *, fixed_token: str | None = None) -> None:
        self._gotrue, self._fixed_token = gotrue, fixed_token

    def _session_owner(self) -> SyncGoTrueClient:
        if self._fixed_token is not None:
            raise InvalidArgument(_FIXED, reason="fixed_token")
        return self._gotrue

    def sign_up(self, email: str, password: str, *, data: dict[str, Any] | None = None) -> SignUpResult:
        """Create a user; signs in at once when the project confirms e-mails automatically."""
        return sign_up_result(
            _call(lambda: self._session_owner().sign_up(_credentials(email, password, data)))
        )

    def sign_in(self, email: str, password: str) -> Session:
        """Sign in with e-mail and password; the client then acts as this user."""
        return signed_in(
            _call(lambda: self._session_owner().sign_in_with_password(_credentials(email, password)))
        )

    def sign_out(self) -> None:
        """End the session (on the server too); the client acts with its API key again."""
        _call(self._session_owner().sign_out)

    def session(self) -> Session | None:
        """The current session, refreshed first if it is about to expire (None for `as_user`)."""
        if self._fixed_token is not None:
            return None
        current = _call(self._gotrue.get_session)
        return None if current is None else session_of(current)

    def user(self) -> AuthUser | None:
        """The signed-in user as Auth knows them now (a request to Auth), or None."""
        response = _call(lambda: self._gotrue.get_user(self._fixed_token))
        return None if response is None else user_of(response.user)

    def refresh(self) -> Session:
        """A new access token now, whatever the expiry of the current one."""
        return signed_in(_call(self._session_owner().refresh_session))


class AsyncAuth:
    """The async twin of `Auth`."""

    def __init__(self, gotrue: AsyncGoTrueClient, *, fixed_token: str | None = None) -> None:
        self._gotrue, self._fixed_token = gotrue, fixed_token

    def _session_owner(self) -> AsyncGoTrueClient:
        if self._fixed_token is not None:
            raise InvalidArgument(_FIXED, reason="fixed_token")
        return self._gotrue

    async def sign_up(self, email: str, password: str, *, data: dict[str, Any] | None = None) -> SignUpResult:
        return sign_up_result(
            await _acall(lambda: self._session_owner().sign_up(_credentials(email, password, data)))
        )

    async def sign_in(self, email: str, password: str) -> Session:
        return signed_in(
            await _acall(lambda: self._session_owner().sign_in_with_password(_credentials(email, password)))
        )

    async def sign_out(self) -> None:
        await _acall(self._session_owner().sign_out)

    async def session(self) -> Session | None:
        if self._fixed_token is not None:
            return None
        current = await _acall(self._gotrue.get_session)
        return None if current is None else session_of(current)

    async def user(self) -> AuthUser | None:
        response = await _acall(lambda: self._gotrue.get_user(self._fixed_token))
        return None if response is None else user_of(response.user)

    async def refresh(self) -> Session:
        return signed_in(await _acall(self._session_owner().refresh_session))
