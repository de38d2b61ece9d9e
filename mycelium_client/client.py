"""`MyceliumClient` and `AsyncMyceliumClient`: one project, its REST, Auth and Realtime.

Both are built the same ways (url + key, an existing supabase-py client, or the environment) and
offer the same namespaces; only the I/O differs.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any, Self

import httpx
import supabase
from supabase.lib.client_options import AsyncClientOptions, SyncClientOptions
from supabase_auth.types import AuthChangeEvent, Subscription
from supabase_auth.types import Session as GoTrueSession

from mycelium_client._auth_http import async_auth_http, auth_http
from mycelium_client._http import AsyncTransport, Credentials, RetryPolicy, SyncTransport
from mycelium_client._identity import Identity, Project
from mycelium_client._realtime import WatchSettings
from mycelium_client.admin import Admin, AsyncAdmin
from mycelium_client.auth import AsyncAuth, Auth
from mycelium_client.credits import AsyncCredits, Credits
from mycelium_client.errors import ConfigurationError
from mycelium_client.marketplace import AsyncMarketplace, Marketplace
from mycelium_client.orders import AsyncOrders, Orders
from mycelium_client.subscriptions import AsyncSubscriptions, Subscriptions

DEFAULT_TIMEOUT_SECONDS = 30.0


def _environment(service_role: bool) -> tuple[str, str]:
    key_name = "SUPABASE_SERVICE_ROLE_KEY" if service_role else "SUPABASE_ANON_KEY"
    url, key = os.environ.get("SUPABASE_URL"), os.environ.get(key_name)
    missing = [name for name, value in (("SUPABASE_URL", url), (key_name, key)) if not value]
    if missing:
        raise ConfigurationError(f"set {' and '.join(missing)} in the environment", reason="missing_setting")
    assert url is not None and key is not None
    return url, key


def _token_in(headers: dict[str, str], key: str) -> str | None:
    """The user access token a supabase-py client currently sends, if any."""
    bearer = headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bearer if bearer and bearer != key else None


class _Core:
    """What both clients share: the project, who they act as, retries and watch settings."""

    def __init__(
        self, project: Project, identity: Identity, retry: RetryPolicy, watch: WatchSettings
    ) -> None:
        self.project, self.identity, self.retry, self.watch = project, identity, retry, watch

    def credentials(self) -> Credentials:
        return Credentials(self.project.key, self.identity.bearer)

    def follow_session(self, event: AuthChangeEvent, session: GoTrueSession | None) -> None:
        # Every event but SIGNED_OUT carries the current session (a refresh carries the new token).
        self.identity.access_token = session.access_token if session else None

    @classmethod
    def create(
        cls,
        url: str,
        key: str,
        access_token: str | None,
        retry: RetryPolicy | None,
        watch: WatchSettings | None,
    ) -> _Core:
        return cls(
            Project(url, key), Identity(key, access_token), retry or RetryPolicy(), watch or WatchSettings()
        )

    @classmethod
    def of_supabase(
        cls,
        client: supabase.Client | supabase.AsyncClient,
        retry: RetryPolicy | None,
        watch: WatchSettings | None,
    ) -> _Core:
        """The project, key and current user token of an existing supabase-py client."""
        key = client.supabase_key
        url = str(client.supabase_url).rstrip("/")
        return cls.create(url, key, _token_in(client.options.headers, key), retry, watch)

    def derived(self, access_token: str) -> _Core:
        return _Core(self.project, Identity(self.project.key, access_token), self.retry, self.watch)


class _FollowsSession:
    """Both clients: their subscription to the auth client's session changes, ended by close()."""

    _following: Subscription | None

    def _stop_following(self) -> None:
        if self._following is not None:
            self._following.unsubscribe()
            self._following = None


class MyceliumClient(_FollowsSession):
    """The sync client. `with MyceliumClient(url, key) as client: client.credits.balance()`."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        access_token: str | None = None,
        http_client: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
        watch: WatchSettings | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        """`key` is the project's anon key (users sign in) or service_role key (trusted services);
        `access_token` makes the client act for that user, as `as_user` does."""
        # Auth's calls through an HTTP client that reports them, as the REST calls are reported.
        options = SyncClientOptions(headers={}, persist_session=False, httpx_client=auth_http(timeout))
        self._build(
            _Core.create(url, key, access_token, retry, watch),
            supabase.Client(url, key, options),
            http_client or httpx.Client(timeout=timeout),
            owns_http=http_client is None,
            owns_supabase=True,
        )

    def _build(
        self,
        core: _Core,
        client: supabase.Client,
        http: httpx.Client,
        *,
        owns_http: bool,
        owns_supabase: bool,
        fixed_token: bool = False,
    ) -> None:
        self._core, self._supabase, self._http = core, client, http
        self._owns_http, self._owns_supabase = owns_http, owns_supabase
        transport = SyncTransport(http, core.project.rest_url, core.credentials(), core.retry)
        self.auth = Auth(client.auth, fixed_token=core.identity.access_token if fixed_token else None)
        self.credits = Credits(transport, core.identity, core.project, core.watch)
        self.marketplace = Marketplace(transport, core.identity)
        self.orders = Orders(transport, core.identity)
        self.subscriptions = Subscriptions(transport, core.identity, core.project, core.watch)
        self.admin = Admin(transport)
        # Following the auth client's session, until closed: a client made per request over a
        # long-lived supabase client must not leave a subscriber behind.
        self._following = None if fixed_token else client.auth.on_auth_state_change(core.follow_session)

    @classmethod
    def from_supabase(
        cls, client: supabase.Client, *, retry: RetryPolicy | None = None, watch: WatchSettings | None = None
    ) -> Self:
        """Over an existing supabase-py client: its project, key and auth session (which it keeps
        owning: closing this client does not close it)."""
        core = _Core.of_supabase(client, retry, watch)
        self = cls.__new__(cls)
        http = client.options.httpx_client
        self._build(
            core,
            client,
            http or httpx.Client(timeout=DEFAULT_TIMEOUT_SECONDS),
            owns_http=http is None,
            owns_supabase=False,
        )
        return self

    @classmethod
    def from_env(cls, *, service_role: bool = False, **options: Any) -> Self:
        """From `SUPABASE_URL` and `SUPABASE_ANON_KEY` (or `SUPABASE_SERVICE_ROLE_KEY`)."""
        url, key = _environment(service_role)
        return cls(url, key, **options)

    def as_user(self, access_token: str) -> MyceliumClient:
        """A client acting for the user of `access_token` (a service serving that user's request).
        It shares this client's connections and is closed with it."""
        derived = MyceliumClient.__new__(MyceliumClient)
        derived._build(
            self._core.derived(access_token),
            self._supabase,
            self._http,
            owns_http=False,
            owns_supabase=False,
            fixed_token=True,
        )
        return derived

    def close(self) -> None:
        self._stop_following()
        if self._owns_http:
            self._http.close()
        if self._owns_supabase:
            self._supabase.auth.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class AsyncMyceliumClient(_FollowsSession):
    """The async client: `async with AsyncMyceliumClient(url, key) as client: ...`, calls awaited."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        access_token: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        watch: WatchSettings | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        options = AsyncClientOptions(headers={}, persist_session=False, httpx_client=async_auth_http(timeout))
        self._build(
            _Core.create(url, key, access_token, retry, watch),
            supabase.AsyncClient(url, key, options),
            http_client or httpx.AsyncClient(timeout=timeout),
            owns_http=http_client is None,
            owns_supabase=True,
        )

    def _build(
        self,
        core: _Core,
        client: supabase.AsyncClient,
        http: httpx.AsyncClient,
        *,
        owns_http: bool,
        owns_supabase: bool,
        fixed_token: bool = False,
    ) -> None:
        self._core, self._supabase, self._http = core, client, http
        self._owns_http, self._owns_supabase = owns_http, owns_supabase
        transport = AsyncTransport(http, core.project.rest_url, core.credentials(), core.retry)
        self.auth = AsyncAuth(client.auth, fixed_token=core.identity.access_token if fixed_token else None)
        self.credits = AsyncCredits(transport, core.identity, core.project, core.watch)
        self.marketplace = AsyncMarketplace(transport, core.identity)
        self.orders = AsyncOrders(transport, core.identity)
        self.subscriptions = AsyncSubscriptions(transport, core.identity, core.project, core.watch)
        self.admin = AsyncAdmin(transport)
        # Following the auth client's session, until closed: a client made per request over a
        # long-lived supabase client must not leave a subscriber behind.
        self._following = None if fixed_token else client.auth.on_auth_state_change(core.follow_session)

    @classmethod
    def from_supabase(
        cls,
        client: supabase.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
        watch: WatchSettings | None = None,
    ) -> Self:
        core = _Core.of_supabase(client, retry, watch)
        self = cls.__new__(cls)
        http = client.options.httpx_client
        self._build(
            core,
            client,
            http or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT_SECONDS),
            owns_http=http is None,
            owns_supabase=False,
        )
        return self

    @classmethod
    def from_env(cls, *, service_role: bool = False, **options: Any) -> Self:
        url, key = _environment(service_role)
        return cls(url, key, **options)

    def as_user(self, access_token: str) -> AsyncMyceliumClient:
        derived = AsyncMyceliumClient.__new__(AsyncMyceliumClient)
        derived._build(
            self._core.derived(access_token),
            self._supabase,
            self._http,
            owns_http=False,
            owns_supabase=False,
            fixed_token=True,
        )
        return derived

    async def close(self) -> None:
        self._stop_following()
        if self._owns_http:
            await self._http.aclose()
        if self._owns_supabase:
            await self._supabase.auth.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()
