"""The bank test under faults (Jepsen's bank workload), through the gateway with the real client.

Users hold issued credits; concurrent tellers do random transfers, purchases (payments delivered
again, as payment webhooks are), orders, cancels, fulfilments and refunds, each retried with its
idempotency key until answered. Meanwhile, each automatic and bounded: connections cut between the
clients and the gateway mid-request, PostgREST killed with SIGKILL and restarted, PostgreSQL
stopped in immediate mode and restarted (crash recovery), a transfer held behind a lock past its
statement timeout. Afterwards the ledger is held to the log of what clients asked and were told:
the audit finds nothing, the accounts sum to what was issued, no balance is below zero, every
acknowledged operation is in the ledger exactly once, every retried key had one effect, nothing
is there that no client asked for. The test prints what it did as tables.

`pytest tests/reliability --bank-size=big` (or MYCELIUM_BANK_SIZE=big) runs a long one; a run's
seed is printed, and MYCELIUM_BANK_SEED replays its choices (not its timing)."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg
import pytest
from psycopg.rows import TupleRow

from cli.dev.processes import wait_until
from cli.dev.stack import LocalStack
from cli.dev.users import create_user
from cli.keys import access_token
from mycelium_client import MyceliumClient, ProductCategory, ProductUnit
from mycelium_client.models import Movement, Order
from tests.support.bank import (
    STATEMENT_TIMEOUT,
    Bank,
    BankSize,
    Kind,
    Member,
    Op,
    Outcome,
    Teller,
    new_key,
    table,
)
from tests.support.faults import (
    RECOVERY_SECONDS,
    CuttingProxy,
    account_locked,
    blocked_by,
    crash_postgres,
    kill_postgrest,
)

D = Decimal
FUNDING_USD = D("20")
PRODUCT_PRICES = [D("1.5"), D("2.25"), D("3")]
DOWNTIME_SECONDS = 0.5
# What the business rules may answer, and nothing else: a transfer or an order beyond the
# balance, an order past the buyer's bound on pending orders; a cancel, fulfilment or refund of
# an order that moved on meanwhile; a refund beyond what is left to refund, or beyond what the
# provider holds now (insufficient_credits, or provider_funds_short where refunds say so).
ALLOWED_REJECTIONS = {
    Kind.TRANSFER: {"insufficient_credits"},
    Kind.PURCHASE: set(),
    Kind.PLACE: {"insufficient_credits", "too_many_pending_orders"},
    Kind.CANCEL: {"invalid_transition"},
    Kind.FULFIL: {"invalid_transition"},
    Kind.REFUND: {
        "invalid_transition",
        "refund_exceeds_paid",
        "insufficient_credits",
        "provider_funds_short",
    },
}
# Effects several operations share: every delivery of one payment, every cancel (or fulfilment)
# of one order.
SHARED_EFFECT = {Kind.PURCHASE, Kind.CANCEL, Kind.FULFIL}

CUT, KILL, TIMEOUT, CRASH = (
    "connections cut mid-request",
    "PostgREST killed (SIGKILL)",
    "transfer past its statement timeout",
    "PostgreSQL crashed (immediate stop)",
)
ONE_ROUND = [CUT, KILL, CUT, TIMEOUT, CUT, CRASH]


@dataclass
class FaultLog:
    injected: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


# -- the bank's users -------------------------------------------------------------------------
def open_bank(stack: LocalStack, size: BankSize) -> Bank:
    """Users (the first `providers` of them farmers with a product each), every one funded by a
    purchase; the authenticated role's statement timeout short (see STATEMENT_TIMEOUT)."""
    members: dict[str, Member] = {}
    with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
        conn.execute(f"alter role authenticated set statement_timeout = '{STATEMENT_TIMEOUT}'")
        conn.execute("notify pgrst, 'reload config'")
        for number in range(size.users):
            roles = ("farmer",) if number < size.providers else ()
            user = create_user(conn, f"bank-{number}-{uuid.uuid4().hex[:8]}@example.test", roles=roles)
            members[str(user.id)] = Member(str(user.id), user.email, access_token(stack.jwt_secret, user.id))
    setup = []
    with MyceliumClient(stack.api_url, stack.service_role_key) as service:
        for number, member in enumerate(members.values()):
            if number < size.providers:
                with MyceliumClient(stack.api_url, stack.anon_key, access_token=member.token) as provider:
                    product = provider.marketplace.create_product(
                        ProductCategory.COMPUTE,
                        f"bank slice {number}",
                        PRODUCT_PRICES[number % len(PRODUCT_PRICES)],
                        ProductUnit.MONTH,
                        description="4 vCPU slice",
                        attributes={"cpu": 4, "memory_gb": 8, "location": "BE"},
                    )
                member.product_id = str(product.id)
            funding = Op(Kind.PURCHASE, member.id, new_key("funding"), amount=FUNDING_USD)
            funding.result = service.admin.purchase_credits(member.id, FUNDING_USD, str(funding.key))
            funding.outcome, funding.tries = Outcome.ACKNOWLEDGED, 1
            setup.append(funding)
    return Bank(size, members, setup)


# -- faults -----------------------------------------------------------------------------------
def statement_timeout_mid_transfer(stack: LocalStack, bank: Bank, log: FaultLog) -> None:
    """Another session locks the richest user's account; a transfer from that user starts, waits
    for the lock and is cancelled by its statement timeout; once the lock is gone the client
    sends it again with the same key."""
    with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
        richest = conn.execute(
            "select user_id::text from public.credit_accounts order by balance desc limit 2"
        ).fetchall()
    (victim,), (recipient,) = richest
    op = bank.log(Op(Kind.TRANSFER, victim, new_key("transfer"), recipient, amount=D("0.01")))
    teller = Teller(stack.api_url, stack.anon_key, stack.service_role_key, bank.members)
    try:
        with account_locked(stack.superuser_db_url, victim) as blocker, ThreadPoolExecutor(1) as side:
            first_try = side.submit(teller.perform, op, 0)
            waited = wait_until(
                lambda: blocked_by(stack.superuser_db_url, blocker) > 0, timeout=RECOVERY_SECONDS
            )
            first_try.result(timeout=RECOVERY_SECONDS)
        timed_out = op.timed_out > 0
        teller.perform(op, bank.size.patience_seconds)
    finally:
        teller.close()
    bank.settle(op)
    if waited and timed_out:
        log.injected[TIMEOUT] += 1
    else:
        log.problems.append(
            f"a transfer held behind a lock did not time out (a session waited for the lock: {waited}): "
            f"{op.outcome} after {op.tries} requests, last failure {op.reason}: {op.message}"
        )


def inject_faults(stack: LocalStack, proxy: CuttingProxy, bank: Bank, log: FaultLog) -> None:
    """Every fault of the schedule in turn, spread over the run's operations."""
    schedule = ONE_ROUND * bank.size.fault_rounds
    step = bank.size.operations // (len(schedule) + 1)
    try:
        for number, fault in enumerate(schedule, 1):
            bank.wait_for_answers(number * step)
            if bank.finished():
                log.problems.append(f"the run's deadline passed before fault {number} of {len(schedule)}")
                return
            if fault == CUT:
                cut = proxy.cut(bank.size.cuts_per_fault)
                if cut < bank.size.cuts_per_fault:
                    log.problems.append(f"only {cut} of {bank.size.cuts_per_fault} connections were cut")
            elif fault == KILL:
                kill_postgrest(stack, downtime=DOWNTIME_SECONDS)
                log.injected[KILL] += 1
            elif fault == CRASH:
                crash_postgres(stack, downtime=DOWNTIME_SECONDS)
                log.injected[CRASH] += 1
            else:
                statement_timeout_mid_transfer(stack, bank, log)
    finally:
        log.injected[CUT] = proxy.cuts
        bank.faults_done.set()


# -- the ledger against the log ---------------------------------------------------------------
@dataclass
class Transfer:
    id: str
    kind: str
    to_user: str | None
    amount: Decimal
    reference: str | None
    retry_key: str | None


class Ledger:
    """The transfers, orders and refunds in the database, indexed the ways operations find
    their effects."""

    def __init__(
        self, transfers: list[Transfer], orders: dict[tuple[str, str], str], refunds: list[tuple[str, str]]
    ) -> None:
        self.transfers = transfers
        self.orders = orders  # (buyer, idempotency key) -> order id; unique in the database
        self.refunds = refunds  # (order, idempotency key)
        self._by_key: dict[str, list[str]] = defaultdict(list)
        self._by_kind_and_reference: dict[tuple[str, str | None], list[str]] = defaultdict(list)
        for t in transfers:
            if t.retry_key is not None:
                self._by_key[t.retry_key].append(t.id)
            self._by_kind_and_reference[t.kind, t.reference].append(t.id)
        self._refunds = Counter(refunds)

    @classmethod
    def read(cls, conn: psycopg.Connection[TupleRow]) -> Ledger:
        transfers = [
            Transfer(*row)
            for row in conn.execute(
                "select id::text, kind, to_user::text, amount, reference, retry_key"
                " from mycelium_private.transfers"
            )
        ]
        orders = {
            (str(buyer), str(key)): str(order)
            for order, buyer, key in conn.execute(
                "select id::text, buyer_id::text, idempotency_key from public.orders"
            )
        }
        refunds = [
            (str(order), str(key))
            for order, key in conn.execute("select order_id::text, idempotency_key from public.order_refunds")
        ]
        return cls(transfers, orders, refunds)

    def effects(self, op: Op) -> list[str]:
        """What the ledger holds of `op`: the transfers its key took, the order it placed, the
        movement its transition made, the refund its key made."""
        match op.kind:
            case Kind.TRANSFER:
                return self._by_key.get(f"transfer:{op.actor}:{op.key}", [])
            case Kind.PURCHASE:
                return self._by_key.get(f"purchase:{op.key}", [])
            case Kind.PLACE:
                order = self.orders.get((op.actor, str(op.key)))
                return [] if order is None else [order]
            case Kind.CANCEL:
                return self._by_kind_and_reference.get(("order_release", op.order_id), [])
            case Kind.FULFIL:
                return self._by_kind_and_reference.get(("provider_earning", op.order_id), [])
            case Kind.REFUND:
                return [f"{op.order_id}:{op.key}"] * self._refunds[(str(op.order_id), str(op.key))]


def group(op: Op) -> tuple[Kind, str]:
    """Operations with one shared effect: deliveries of a payment, transitions of an order."""
    return op.kind, str(op.key if op.kind is Kind.PURCHASE else op.order_id)


def one_effect_each(
    ledger: Ledger, ops: Iterable[Op], acknowledged_groups: set[tuple[Kind, str]]
) -> list[str]:
    """An acknowledged operation: its one effect, the one its answer named. A rejected one:
    none, unless another operation with the same shared effect was acknowledged."""
    problems = []
    by_id = {t.id: t for t in ledger.transfers}
    for op in ops:
        found = ledger.effects(op)
        if op.outcome is Outcome.ACKNOWLEDGED:
            if len(found) != 1:
                problems.append(f"acknowledged {op.kind} {op.key or op.order_id}: {len(found)} effects")
            elif isinstance(op.result, Movement) and found[0] != str(op.result.transfer_id):
                problems.append(
                    f"{op.kind} {op.key} answered {op.result.transfer_id}, the ledger has {found[0]}"
                )
            elif isinstance(op.result, Movement) and op.kind is Kind.TRANSFER:
                moved = by_id[found[0]]
                if (moved.amount, moved.to_user) != (op.amount, op.counterparty):
                    problems.append(
                        f"transfer {op.key} asked {op.amount} to {op.counterparty}, moved {moved}"
                    )
            elif op.kind is Kind.PLACE and isinstance(op.result, Order) and found[0] != str(op.result.id):
                problems.append(f"order {op.key} answered {op.result.id}, the ledger has {found[0]}")
        elif op.outcome is Outcome.REJECTED:
            shared = op.kind in SHARED_EFFECT and group(op) in acknowledged_groups
            if len(found) != (1 if shared else 0):
                problems.append(
                    f"rejected {op.kind} {op.key or op.order_id} ({op.reason}): {len(found)} effects"
                )
    return problems


def nothing_unasked(ledger: Ledger, bank: Bank) -> list[str]:
    """Every transfer, order and refund in the ledger is one that a client asked for."""
    ops = [*bank.setup, *bank.ops]
    asked: dict[Kind, set[str]] = {kind: set() for kind in Kind}
    for op in ops:
        if op.kind is Kind.TRANSFER:
            asked[op.kind].add(f"transfer:{op.actor}:{op.key}")
        elif op.kind is Kind.PURCHASE:
            asked[op.kind].add(f"purchase:{op.key}")
        elif op.kind is Kind.REFUND:
            asked[op.kind].add(f"{op.order_id}:{op.key}")
        else:
            asked[op.kind].add(str(op.order_id))
    placed = {(op.actor, str(op.key)) for op in ops if op.kind is Kind.PLACE}
    order_ids = set(ledger.orders.values())
    refunded_orders = {key.split(":", 1)[0] for key in asked[Kind.REFUND]}
    by_kind: dict[str, Callable[[Transfer], bool]] = {
        "transfer": lambda t: t.retry_key in asked[Kind.TRANSFER],
        "purchase": lambda t: t.retry_key in asked[Kind.PURCHASE],
        "order_hold": lambda t: t.reference in order_ids,
        "order_release": lambda t: t.reference in asked[Kind.CANCEL],
        "provider_earning": lambda t: t.reference in asked[Kind.FULFIL],
        "platform_fee": lambda t: t.reference in asked[Kind.FULFIL],
        "refund": lambda t: t.reference in refunded_orders,
    }
    problems = [
        f"{t.kind} {t.id} ({t.reference})"
        for t in ledger.transfers
        if t.kind not in by_kind or not by_kind[t.kind](t)
    ]
    problems += [
        f"order {order} (key {key})"
        for (buyer, key), order in ledger.orders.items()
        if (buyer, key) not in placed
    ]
    problems += [f"refund {o}:{k}" for o, k in ledger.refunds if f"{o}:{k}" not in asked[Kind.REFUND]]
    return problems


def check_invariants(stack: LocalStack, bank: Bank) -> list[tuple[str, int, list[str]]]:
    """(invariant, how many things it checked, what broke it) for each invariant."""
    ops = bank.ops
    with MyceliumClient(stack.api_url, stack.service_role_key) as service:
        findings = [f"{f.check_name} {f.subject}: {f.detail}" for f in service.admin.audit_ledger()]
    with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
        ledger = Ledger.read(conn)
        accounts = conn.execute("select user_id::text, balance, held from public.credit_accounts").fetchall()
        row = conn.execute(
            """
            select
              coalesce(sum(amount) filter (where to_system in ('platform_revenue', 'expiry')), 0)
                - coalesce(sum(amount) filter (where from_system in ('platform_revenue', 'expiry')), 0),
              coalesce(sum(amount) filter (where from_system = 'issuance'), 0)
                - coalesce(sum(amount) filter (where to_system = 'issuance'), 0)
            from mycelium_private.transfers
            """
        ).fetchone()
    assert row is not None
    system_kept, issued_in_ledger = row
    purchases = {
        op.key: op.result.amount
        for op in [*bank.setup, *ops]
        if op.kind is Kind.PURCHASE and isinstance(op.result, Movement)
    }
    issued = sum(purchases.values(), D(0))
    in_accounts = sum((balance + held for _, balance, held in accounts), D(0)) + system_kept
    sums = []
    if not in_accounts == issued == issued_in_ledger:
        sums.append(f"accounts hold {in_accounts}, clients were told {issued} was issued")
        sums.append(f"the ledger issued {issued_in_ledger}")
    acknowledged = {group(op) for op in ops if op.outcome is Outcome.ACKNOWLEDGED}
    answered = [op for op in ops if op.outcome is not Outcome.UNANSWERED]
    retried = [op for op in answered if op.retried]
    contradictions = [
        f"order {order}: both cancelled and fulfilled for clients"
        for kind, order in acknowledged
        if kind is Kind.CANCEL and (Kind.FULFIL, order) in acknowledged
    ]
    return [
        (
            "every operation got an answer",
            len(ops),
            [f"{op}" for op in ops if op.outcome is Outcome.UNANSWERED],
        ),
        (
            "answers are ones the rules allow",
            len(answered),
            [
                f"{op.kind} answered {op.reason}: {op.message}"
                for op in answered
                if op.outcome is Outcome.REJECTED and op.reason not in ALLOWED_REJECTIONS[op.kind]
            ]
            + contradictions,
        ),
        ("audit_ledger finds nothing", 1, findings),
        ("accounts sum to what was issued", len(accounts), sums),
        (
            "no balance below zero",
            len(accounts),
            [
                f"{user}: balance {balance}, held {held}"
                for user, balance, held in accounts
                if balance < 0 or held < 0
            ],
        ),
        (
            "acknowledged operations in the ledger exactly once",
            sum(op.outcome is Outcome.ACKNOWLEDGED for op in ops),
            one_effect_each(ledger, (op for op in ops if op.outcome is Outcome.ACKNOWLEDGED), acknowledged),
        ),
        (
            "rejected operations moved nothing of their own",
            sum(op.outcome is Outcome.REJECTED for op in ops),
            one_effect_each(ledger, (op for op in ops if op.outcome is Outcome.REJECTED), acknowledged),
        ),
        ("every retried key had one effect", len(retried), one_effect_each(ledger, retried, acknowledged)),
        (
            "nothing that no client asked for",
            len(ledger.transfers) + len(ledger.orders) + len(ledger.refunds),
            nothing_unasked(ledger, bank),
        ),
    ]


# -- the report -------------------------------------------------------------------------------
def report_of(
    bank: Bank, seed: int, elapsed: float, log: FaultLog, invariants: list[tuple[str, int, list[str]]]
) -> str:
    size, ops = bank.size, bank.ops

    def counts(chosen: list[Op]) -> list[object]:
        return [
            len(chosen),
            sum(op.outcome is Outcome.ACKNOWLEDGED for op in chosen),
            sum(op.outcome is Outcome.REJECTED for op in chosen),
            sum(op.retried for op in chosen),
            sum(op.outcome is Outcome.UNANSWERED for op in chosen),
        ]

    operations = table(
        ["operation", "tried", "acknowledged", "rejected", "retried", "unanswered"],
        [[kind.value, *counts([op for op in ops if op.kind is kind])] for kind in Kind]
        + [["all", *counts(ops)]],
    )
    reasons = Counter(str(op.reason) for op in ops if op.outcome is Outcome.REJECTED)
    faults = table(
        ["fault", "injected"],
        [[name, log.injected[name]] for name in (CUT, KILL, CRASH, TIMEOUT)]
        + [["all", sum(log.injected.values())]],
    )
    checks = table(
        ["invariant", "checked", "violations"],
        [[name, checked, len(broken)] for name, checked, broken in invariants],
    )
    return "\n\n".join(
        [
            f"bank test ({size.name}, seed {seed}): {len(bank.members)} users, {size.clients} clients, "
            f"{elapsed:.1f} s, {sum(op.tries for op in ops)} requests",
            operations,
            "rejections: " + (", ".join(f"{reason} {n}" for reason, n in reasons.most_common()) or "none"),
            faults,
            f"statement timeouts answered to clients: {sum(op.timed_out for op in ops)}",
            checks,
        ]
    )


@pytest.mark.slow
def test_the_ledger_holds_under_faults(
    own_stack: LocalStack, bank_size: BankSize, report: Callable[[str], None]
) -> None:
    seed = int(os.environ.get("MYCELIUM_BANK_SEED") or random.randrange(1_000_000))
    bank = open_bank(own_stack, bank_size)
    proxy = CuttingProxy(own_stack.gateway_port, seed=seed)
    tellers = [
        Teller(proxy.url, own_stack.anon_key, own_stack.service_role_key, bank.members)
        for _ in range(bank_size.clients)
    ]
    log = FaultLog()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(bank_size.clients + 1) as pool:
            work = [pool.submit(bank.work, t, random.Random(seed + n)) for n, t in enumerate(tellers)]
            faults = pool.submit(inject_faults, own_stack, proxy, bank, log)
            for done in [faults, *work]:
                done.result()
    finally:
        for teller in tellers:
            teller.close()
        proxy.close()
    elapsed = time.monotonic() - started

    invariants = check_invariants(own_stack, bank)
    report(report_of(bank, seed, elapsed, log, invariants))

    assert log.problems == []
    assert {name: broken[:5] for name, _, broken in invariants if broken} == {}
    # The run did what it is for: every kind of operation was acknowledged, some after retries,
    # and every fault of the schedule was injected.
    assert all(
        any(op.kind is kind and op.outcome is Outcome.ACKNOWLEDGED for op in bank.ops) for kind in Kind
    )
    assert any(op.retried and op.outcome is Outcome.ACKNOWLEDGED for op in bank.ops)
    rounds = bank_size.fault_rounds
    assert [log.injected[KILL], log.injected[CRASH], log.injected[TIMEOUT]] == [rounds] * 3
    assert log.injected[CUT] >= 3 * rounds * bank_size.cuts_per_fault
