"""`client.credits`: the credit's configuration, your balance and history, transfers, packages,
display helpers, and balance changes as they happen."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from decimal import Decimal

from mycelium_client._http import (
    OBJECT,
    AsyncTransport,
    Call,
    SyncTransport,
    async_pages,
    newest_first_after,
    pages,
    rows,
    rpc,
)
from mycelium_client._identity import Identity, Project
from mycelium_client._realtime import BalanceChannel, WatchSettings
from mycelium_client.amounts import AmountLike, amount, exact_product, fraction_digits, to_decimal
from mycelium_client.models import (
    Balance,
    CreditConfig,
    CreditPackage,
    Movement,
    Transaction,
    TransactionKind,
)
from mycelium_client.watch import AsyncBalanceWatch, BalanceWatch, Callback, WarningCallback

UserRef = uuid.UUID | str
DEFAULT_PAGE_SIZE = 500


# -- requests, shared by both namespaces --------------------------------------------------------
def config_call() -> Call[CreditConfig]:
    return Call("GET", "/credit_config", CreditConfig.model_validate, {"select": "*"}, accept=OBJECT)


def balance_call(user: uuid.UUID) -> Call[Balance]:
    params = {
        "select": "user_id,balance,expiring,held,updated_at,burn_rate,runway_hours",
        "user_id": f"eq.{user}",
    }
    return Call("GET", "/credit_balances", Balance.model_validate, params, accept=OBJECT)


def history_call(
    user: uuid.UUID, after: Transaction | None, page_size: int, kinds: Iterable[TransactionKind] | None
) -> Call[list[Transaction]]:
    """One page, newest first, strictly after the last row of the previous page."""
    params = {
        "user_id": f"eq.{user}",
        "order": "created_at.desc,id.desc",
        "limit": str(page_size),
    }
    if kinds is not None:
        params["kind"] = "in.(" + ",".join(TransactionKind(kind).value for kind in kinds) + ")"
    if after is not None:
        params |= newest_first_after(after.created_at, after.id)
    return Call("GET", "/credit_transactions", rows(Transaction), params)


def transfer_call(
    to: UserRef, value: AmountLike, memo: str | None, idempotency_key: str | None
) -> Call[Movement]:
    # The key makes the transfer idempotent, so it is safe to retry with the same body.
    return rpc(
        "transfer_credits",
        Movement.model_validate,
        safe=True,
        recipient=str(to),
        amount=amount(value),
        memo=memo,
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


def packages_call() -> Call[list[CreditPackage]]:
    params = {"select": "*", "active": "is.true", "order": "sort_order,price_usd,name"}
    return Call("GET", "/credit_packages", rows(CreditPackage), params)


def new_idempotency_key() -> str:
    return f"mycelium-client-{uuid.uuid4()}"


def format_amount(value: AmountLike, config: CreditConfig) -> str:
    """`1,250.50 TFC`: thousands separators, at least 2 and at most 6 fractional digits."""
    number = to_decimal(value)
    digits = min(max(2, fraction_digits(number)), 6)
    return f"{number:,.{digits}f} {config.credit_symbol}"


def usd(value: AmountLike, config: CreditConfig) -> Decimal:
    """An amount of credits in USD at the configured rate, exact (for display)."""
    return exact_product(to_decimal(value), config.tfc_to_usd_rate)


class _Display:
    _config: CreditConfig | None = None

    def _remember(self, config: CreditConfig) -> CreditConfig:
        self._config = config
        return config


# -- the namespaces ----------------------------------------------------------------------------
class Credits(_Display):
    def __init__(
        self, transport: SyncTransport, identity: Identity, project: Project, watch_settings: WatchSettings
    ) -> None:
        self._transport, self._identity, self._project = transport, identity, project
        self._watch_settings = watch_settings

    def config(self, *, refresh: bool = False) -> CreditConfig:
        """The credit's USD value, code, name and symbol (cached by the client after the first read)."""
        if self._config is None or refresh:
            return self._remember(self._transport.send(config_call()))
        return self._config

    def balance(self, user_id: UserRef | None = None) -> Balance:
        """Your balance (a service may name any user)."""
        return self._transport.send(balance_call(self._identity.user_or(user_id)))

    def history(
        self,
        *,
        user_id: UserRef | None = None,
        kinds: Iterable[TransactionKind] | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[Transaction]:
        """Your movements, newest first, fetched a keyset page at a time as you iterate."""
        user = self._identity.user_or(user_id)
        kinds = None if kinds is None else list(kinds)
        return pages(lambda last: self._transport.send(history_call(user, last, page_size, kinds)), page_size)

    def transfer(
        self, to: UserRef, amount: AmountLike, memo: str | None = None, idempotency_key: str | None = None
    ) -> Movement:
        """Send credits to another user. Retried safely on network errors: the same
        idempotency key (yours, or one made up here) is sent every time, and the SQL applies
        a key once and replays its first result."""
        return self._transport.send(transfer_call(to, amount, memo, idempotency_key))

    def packages(self) -> list[CreditPackage]:
        """The credit packages on sale."""
        return self._transport.send(packages_call())

    def format(self, amount: AmountLike) -> str:
        """For display: `1,250.50 TFC`."""
        return format_amount(amount, self.config())

    def to_usd(self, amount: AmountLike) -> Decimal:
        """For display: the amount's value in USD at the configured rate."""
        return usd(amount, self.config())

    def watch(
        self,
        callback: Callback | None = None,
        *,
        user_id: UserRef | None = None,
        on_low_balance: WarningCallback | None = None,
    ) -> BalanceWatch:
        """Balance changes as they are committed, over Supabase Realtime:
        `with credits.watch() as changes: for change in changes: ...`; low-balance warnings to
        `on_low_balance`, if given."""
        user = self._identity.user_or(user_id)

        def make_channel() -> BalanceChannel:
            async def resync() -> Balance:
                return await asyncio.to_thread(self.balance, user)

            return BalanceChannel(
                self._project.websocket_url, user, self._identity.bearer, resync, self._watch_settings
            )

        return BalanceWatch(make_channel, callback, on_low_balance)


class AsyncCredits(_Display):
    """The async twin of `Credits`: the same methods, awaited."""

    def __init__(
        self, transport: AsyncTransport, identity: Identity, project: Project, watch_settings: WatchSettings
    ) -> None:
        self._transport, self._identity, self._project = transport, identity, project
        self._watch_settings = watch_settings

    async def config(self, *, refresh: bool = False) -> CreditConfig:
        if self._config is None or refresh:
            return self._remember(await self._transport.send(config_call()))
        return self._config

    async def balance(self, user_id: UserRef | None = None) -> Balance:
        return await self._transport.send(balance_call(self._identity.user_or(user_id)))

    def history(
        self,
        *,
        user_id: UserRef | None = None,
        kinds: Iterable[TransactionKind] | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> AsyncIterator[Transaction]:
        user = self._identity.user_or(user_id)
        kinds = None if kinds is None else list(kinds)
        return async_pages(
            lambda last: self._transport.send(history_call(user, last, page_size, kinds)), page_size
        )

    async def transfer(
        self, to: UserRef, amount: AmountLike, memo: str | None = None, idempotency_key: str | None = None
    ) -> Movement:
        return await self._transport.send(transfer_call(to, amount, memo, idempotency_key))

    async def packages(self) -> list[CreditPackage]:
        return await self._transport.send(packages_call())

    async def format(self, amount: AmountLike) -> str:
        return format_amount(amount, await self.config())

    async def to_usd(self, amount: AmountLike) -> Decimal:
        return usd(amount, await self.config())

    def watch(
        self,
        callback: Callback | None = None,
        *,
        user_id: UserRef | None = None,
        on_low_balance: WarningCallback | None = None,
    ) -> AsyncBalanceWatch:
        """`async with credits.watch() as changes: async for change in changes: ...`; low-balance
        warnings to `on_low_balance`, if given."""
        user = self._identity.user_or(user_id)

        async def resync() -> Balance:
            return await self.balance(user)

        channel = BalanceChannel(
            self._project.websocket_url, user, self._identity.bearer, resync, self._watch_settings
        )
        return AsyncBalanceWatch(channel, callback, on_low_balance)


__all__ = ["AsyncCredits", "Credits"]
