"""The bank workload (Jepsen's bank test, over credits and orders): users holding issued credits,
concurrent clients ("tellers") doing transfers, purchases (payments delivered more than once),
orders, cancels, fulfilments and refunds through the gateway with the real client, each operation
retried with its idempotency key until it gets an answer. Every operation is logged with what it
asked, its answer and how many requests it took, so that the ledger can be held to the log."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

import httpx

from mycelium_client import MyceliumClient, RetryPolicy
from mycelium_client.errors import MyceliumError, ServiceUnavailable
from mycelium_client.models import Movement, Order
from tests.support.faults import CountingTransport

D = Decimal


@dataclass(frozen=True)
class BankSize:
    name: str
    users: int
    providers: int  # of the users: farmers, each with one product on sale
    clients: int  # concurrent tellers
    operations: int  # at least this many, and on until every fault was injected
    fault_rounds: int  # each round injects every kind of fault once
    cuts_per_fault: int  # connections cut at each connection fault
    patience_seconds: float  # how long one operation is retried before it counts as unanswered
    deadline_seconds: float  # no operation starts after this (a bound, not a goal)


SIZES = {
    "small": BankSize("small", 12, 3, 16, 500, 1, 4, 60, 150),
    "big": BankSize("big", 48, 8, 16, 20000, 6, 12, 120, 3600),
}

# Supabase's statement timeout for the authenticated role is 8 s; the bank's stack sets a short
# one, so that a statement held behind a lock times out within the run (PostgREST applies the
# role's setting to every request, as on Supabase).
STATEMENT_TIMEOUT = "1s"
# How the client names a statement cancelled at its timeout: PostgREST passes on SQLSTATE 57014
# (query_canceled), which the client reads as `query_timeout` (as the SQLSTATE itself before).
STATEMENT_TIMED_OUT = {"query_timeout", "57014"}
# The tellers' client retries like a service's, a little more patiently: faults last seconds.
RETRY = RetryPolicy(attempts=5, backoff=0.05, max_backoff=0.5)
# Between two tries of an operation that got no answer (the client's retries exhausted).
RETRY_PAUSE_SECONDS = 0.2
# Rate limited by the gateway: wait about as long as its burst takes to drain.
RATE_LIMITED_PAUSE_SECONDS = 1.0

TRANSFER_AMOUNTS = [D("0.5"), D("1"), D("2.25"), D("3.000001"), D("5")]
PAYMENTS_USD = [D("1"), D("2.5"), D("10")]
REFUND_AMOUNTS: list[Decimal | None] = [None, D("0.5"), D("1")]
REDELIVERY_SHARE = 0.4  # of purchases, the share that delivers a payment seen before again


class Kind(StrEnum):
    TRANSFER = "transfer"
    PURCHASE = "purchase"
    PLACE = "place order"
    CANCEL = "cancel"
    FULFIL = "fulfil"
    REFUND = "refund"


KIND_WEIGHTS = {
    Kind.TRANSFER: 35,
    Kind.PURCHASE: 15,
    Kind.PLACE: 20,
    Kind.CANCEL: 8,
    Kind.FULFIL: 14,
    Kind.REFUND: 8,
}


class Outcome(StrEnum):
    ACKNOWLEDGED = "acknowledged"
    REJECTED = "rejected"  # a business rule said no, and nothing moved
    UNANSWERED = "unanswered"  # still no answer when patience ran out


@dataclass
class Member:
    id: str
    email: str
    token: str
    product_id: str | None = None  # a provider's product


@dataclass
class Op:
    """One operation a client asked for, with everything needed to find its effect."""

    kind: Kind
    actor: str  # who acts (the buyer of credits, for a purchase, which the service makes)
    key: str | None = None  # the idempotency key or payment reference; None for cancel and fulfil
    counterparty: str | None = None  # a transfer's recipient; an order's provider
    order_id: str | None = None
    product_id: str | None = None
    quantity: int = 0
    amount: Decimal | None = None  # credits moved, a payment's USD, a refund (None: the rest)
    tries: int = 0  # requests sent, the client's own retries included
    timed_out: int = 0  # answers that were a statement timeout
    outcome: Outcome = Outcome.UNANSWERED
    reason: str | None = None  # the rejection's (or the last failure's) reason
    message: str | None = None  # and its message
    result: Movement | Order | None = None

    @property
    def retried(self) -> bool:
        return self.tries > 1


def new_key(kind: str) -> str:
    return f"bank-{kind}-{uuid.uuid4()}"


class Teller:
    """One client thread: its own connections (counted), a service client and, per user, the
    user's client over them."""

    def __init__(self, url: str, anon_key: str, service_role_key: str, members: dict[str, Member]) -> None:
        self.transport = CountingTransport()
        self.http = httpx.Client(transport=self.transport, timeout=30)
        self.anon = MyceliumClient(url, anon_key, http_client=self.http, retry=RETRY)
        self.service = MyceliumClient(url, service_role_key, http_client=self.http, retry=RETRY)
        self.members = members
        self._as_user: dict[str, MyceliumClient] = {}

    def user(self, user_id: str) -> MyceliumClient:
        if user_id not in self._as_user:
            self._as_user[user_id] = self.anon.as_user(self.members[user_id].token)
        return self._as_user[user_id]

    def _call(self, op: Op) -> Callable[[], Movement | Order]:
        user = self.user(op.actor) if op.kind is not Kind.PURCHASE else self.service
        match op.kind:
            case Kind.TRANSFER:
                assert op.counterparty is not None and op.amount is not None
                recipient, amount = op.counterparty, op.amount
                return lambda: user.credits.transfer(recipient, amount, idempotency_key=op.key)
            case Kind.PURCHASE:
                assert op.key is not None and op.amount is not None
                reference, usd = op.key, op.amount
                return lambda: user.admin.purchase_credits(op.actor, usd, reference)
            case Kind.PLACE:
                assert op.product_id is not None
                items = [(op.product_id, op.quantity)]
                return lambda: user.orders.place(items, idempotency_key=op.key)
            case Kind.CANCEL:
                assert op.order_id is not None
                order_id = op.order_id
                return lambda: user.orders.cancel(order_id)
            case Kind.FULFIL:
                assert op.order_id is not None
                order_id = op.order_id
                return lambda: user.orders.fulfil(order_id)
            case Kind.REFUND:
                assert op.order_id is not None
                order_id = op.order_id
                return lambda: user.orders.refund(order_id, "bank test", op.amount, idempotency_key=op.key)

    def perform(self, op: Op, patience_seconds: float) -> None:
        """Until an answer or `patience_seconds`: the same call again, with the same key, after
        every failure that is not an answer (no response, a server error, a statement timeout)."""
        call = self._call(op)
        deadline = time.monotonic() + patience_seconds
        while True:
            before = self.transport.sent
            try:
                op.result = call()
                op.outcome, op.reason = Outcome.ACKNOWLEDGED, None
                return
            except ServiceUnavailable as failure:
                op.reason, op.message = failure.reason, failure.message
                op.timed_out += failure.reason in STATEMENT_TIMED_OUT
                if time.monotonic() >= deadline:
                    return
                time.sleep(RETRY_PAUSE_SECONDS)
            except MyceliumError as answer:
                if answer.status == 429 and time.monotonic() < deadline:
                    time.sleep(RATE_LIMITED_PAUSE_SECONDS)
                    continue
                op.outcome, op.reason, op.message = Outcome.REJECTED, answer.reason, answer.message
                return
            finally:
                op.tries += self.transport.sent - before

    def close(self) -> None:
        for client in (*self._as_user.values(), self.anon, self.service):
            client.close()
        self.http.close()


@dataclass
class Bank:
    """The shared state of a run: who is who, the operations asked for, the orders they left
    open, and when to stop."""

    size: BankSize
    members: dict[str, Member]
    setup: list[Op]  # the purchases that funded every user before the run
    ops: list[Op] = field(default_factory=list)
    pending: dict[str, tuple[str, str]] = field(default_factory=dict)  # order -> (buyer, provider)
    fulfilled: dict[str, str] = field(default_factory=dict)  # order -> provider
    payments: list[Op] = field(default_factory=list)  # first deliveries, to deliver again
    answered: int = 0
    faults_done: threading.Event = field(default_factory=threading.Event)
    started_at: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def providers(self) -> list[Member]:
        return [m for m in self.members.values() if m.product_id is not None]

    def finished(self) -> bool:
        if time.monotonic() - self.started_at > self.size.deadline_seconds:
            return True
        return self.faults_done.is_set() and len(self.ops) >= self.size.operations

    def log(self, op: Op) -> Op:
        with self._lock:
            self.ops.append(op)
        return op

    def next_op(self, rng: random.Random) -> Op:
        kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
        with self._lock:
            if kind is Kind.REFUND and not self.fulfilled:
                kind = Kind.FULFIL
            if kind in (Kind.CANCEL, Kind.FULFIL) and not self.pending:
                kind = Kind.PLACE
            op = self._draw(kind, rng)
            self.ops.append(op)
        return op

    def _draw(self, kind: Kind, rng: random.Random) -> Op:
        members = list(self.members.values())
        match kind:
            case Kind.TRANSFER:
                sender, recipient = rng.sample(members, 2)
                return Op(
                    kind, sender.id, new_key("transfer"), recipient.id, amount=rng.choice(TRANSFER_AMOUNTS)
                )
            case Kind.PURCHASE:
                if self.payments and rng.random() < REDELIVERY_SHARE:
                    first = rng.choice(self.payments)
                    return Op(kind, first.actor, first.key, amount=first.amount)
                payment = Op(
                    kind, rng.choice(members).id, new_key("payment"), amount=rng.choice(PAYMENTS_USD)
                )
                self.payments.append(payment)
                return payment
            case Kind.PLACE:
                buyer = rng.choice(members)
                seller = rng.choice([p for p in self.providers if p.id != buyer.id])
                return Op(
                    kind,
                    buyer.id,
                    new_key("order"),
                    seller.id,
                    product_id=seller.product_id,
                    quantity=rng.randint(1, 3),
                )
            case Kind.CANCEL | Kind.FULFIL:
                order_id, (buyer_id, provider_id) = rng.choice(list(self.pending.items()))
                actor = buyer_id if kind is Kind.CANCEL else provider_id
                return Op(kind, actor, counterparty=provider_id, order_id=order_id)
            case Kind.REFUND:
                order_id, provider_id = rng.choice(list(self.fulfilled.items()))
                refund = rng.choice(REFUND_AMOUNTS)
                return Op(kind, provider_id, new_key("refund"), provider_id, order_id, amount=refund)

    def settle(self, op: Op) -> None:
        """What an answer changes in the orders open to later operations."""
        with self._lock:
            self.answered += 1
            if op.outcome is not Outcome.ACKNOWLEDGED:
                return
            match op.kind:
                case Kind.PLACE:
                    assert isinstance(op.result, Order) and op.counterparty is not None
                    op.order_id = str(op.result.id)
                    self.pending[op.order_id] = (op.actor, op.counterparty)
                case Kind.CANCEL:
                    self.pending.pop(str(op.order_id), None)
                case Kind.FULFIL:
                    if self.pending.pop(str(op.order_id), None) is not None:
                        self.fulfilled[str(op.order_id)] = op.actor
                case Kind.REFUND:
                    assert isinstance(op.result, Order)
                    if op.result.refunded_amount == op.result.total:
                        self.fulfilled.pop(str(op.order_id), None)

    def work(self, teller: Teller, rng: random.Random) -> None:
        """One teller's loop: draw an operation, perform it until answered, settle it."""
        while not self.finished():
            op = self.next_op(rng)
            teller.perform(op, self.size.patience_seconds)
            self.settle(op)

    def wait_for_answers(self, count: int) -> None:
        """Until `count` operations were answered (or the run's deadline passed)."""
        while self.answered < count and time.monotonic() - self.started_at < self.size.deadline_seconds:
            time.sleep(0.05)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain text columns: the first left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])
