"""Reading the old `user_data/*.json` files and `marketplace.config`: every problem found, by
file and field, and every TFP amount converted to credits once, exactly.

TFC = TFP x tfp_usd_rate / tfc_to_usd_rate, in exact decimals. Credits carry at most 6 decimal
places: an amount that converts to more is a problem of its file (never rounded silently), unless
the operator asks for truncation, which is then reported amount by amount.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_DOWN, Decimal, localcontext
from pathlib import Path
from typing import Any

from cli.config_commands import key_values, parse_value
from cli.errors import UsageError

CREDIT_PLACES = 6
ROLES = frozenset({"admin", "farmer", "app_provider", "service_provider"})
OLD_ROLES = ROLES | {"user"}  # every old account was a `user`: not a role any more
# Old configuration keys: kept for the marketplace, checked against --tfp-usd-rate, or dropped.
KEPT_SETTINGS = frozenset({"platform_fee_percent"})
# What FORMAT.md allows for products; which role may list a category is the catalogue's rule,
# read from the database (mycelium_private.role_for_category).
CATEGORIES = ("compute", "node", "app", "service", "gateway")
UNITS = ("hour", "month", "once")
DROPPED_SETTINGS = {"currency_display": "credits are the only currency now"}


@dataclass(frozen=True)
class Finding:
    """A problem (the file is invalid) or a warning (imported, but worth a look)."""

    file: str
    field: str
    message: str


@dataclass(frozen=True)
class Converter:
    tfp_usd_rate: Decimal
    tfc_to_usd_rate: Decimal
    truncate: bool

    def credits(self, tfp: Decimal) -> tuple[Decimal, bool]:
        """The amount in credits, and whether it was truncated to CREDIT_PLACES."""
        with localcontext() as exact:
            exact.prec = 60  # far beyond any amount: only the division can be inexact
            value = tfp * self.tfp_usd_rate / self.tfc_to_usd_rate
            kept = value.quantize(Decimal(1).scaleb(-CREDIT_PLACES), rounding=ROUND_DOWN)
        if kept == value:
            return kept.normalize() if kept else Decimal(0), False
        if not self.truncate:
            raise ExcessPrecision(value)
        return kept.normalize() if kept else Decimal(0), True


class ExcessPrecision(Exception):
    def __init__(self, value: Decimal) -> None:
        super().__init__(f"{value:f} credits: more than {CREDIT_PLACES} decimal places")


@dataclass
class UserFile:
    """One valid file, converted; what mycelium_private.legacy_import() takes."""

    account: dict[str, Any]
    transactions: list[dict[str, Any]]
    products: list[dict[str, Any]]


@dataclass
class Reading:
    valid: list[UserFile] = field(default_factory=list)
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    @property
    def invalid_files(self) -> set[str]:
        return {finding.file for finding in self.problems}


class _FileCheck:
    """Checks one parsed file, collecting every problem rather than stopping at the first."""

    def __init__(self, name: str, converter: Converter, reading: Reading) -> None:
        self.name, self.converter, self.reading = name, converter, reading
        self.problems: list[Finding] = []

    def choice(self, value: Any, where: str, allowed: tuple[str, ...]) -> str | None:
        if value not in allowed:
            self.problem(where, f"must be one of {', '.join(allowed)}, got {value!r}")
            return None
        return str(value)

    def problem(self, where: str, message: str) -> None:
        self.problems.append(Finding(self.name, where, message))

    def warn(self, where: str, message: str) -> None:
        self.reading.warnings.append(Finding(self.name, where, message))

    def amount(self, value: Any, where: str, *, signed: bool = False) -> tuple[Decimal, Decimal] | None:
        """(TFP, credits) of a number or decimal string; None after reporting a problem."""
        if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
            self.problem(
                where, f"expected a number or a decimal string, got {json.dumps(value, default=str)}"
            )
            return None
        try:
            tfp = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
        except ArithmeticError:
            self.problem(where, f"{value!r} is not a decimal number")
            return None
        if not tfp.is_finite():
            self.problem(where, f"{value!r} is not a finite number")
            return None
        if tfp < 0 and not signed:
            self.problem(where, f"must not be negative, got {value}")
            return None
        try:
            credits, truncated = self.converter.credits(tfp)
        except ExcessPrecision as excess:
            self.problem(where, f"{value} TFP converts to {excess} (pass --truncate-excess to cut it)")
            return None
        if truncated:
            self.warn(where, f"{value} TFP truncated to {credits} credits")
        return tfp, credits

    def text(self, value: Any, where: str, *, required: bool = False) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, str) or (required and not value.strip()):
            self.problem(
                where, "required text is missing" if value is None else f"expected text, got {value!r}"
            )
            return None
        return value

    def items(self, document: dict[str, Any], key: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """`(where, item)` for each object of an optional list, ids unique within the file."""
        listed = document.get(key)
        if listed is None:
            return
        if not isinstance(listed, list):
            self.problem(key, "expected a list")
            return
        seen: set[str] = set()
        for index, item in enumerate(listed):
            where = f"{key}[{index}]"
            if not isinstance(item, dict):
                self.problem(where, "expected an object")
                continue
            item_id = item.get("id")
            if not isinstance(item_id, str | int) or isinstance(item_id, bool) or str(item_id) == "":
                self.problem(f"{where}.id", "required id is missing")
                continue
            if str(item_id) in seen:
                self.problem(f"{where}.id", f"id {item_id!r} appears twice in the file")
                continue
            seen.add(str(item_id))
            yield where, item


def _when(check: _FileCheck, value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if moment.tzinfo is not None:
                return moment.isoformat()
    check.problem(where, f"expected an RFC 3339 time with a zone, got {value!r}")
    return None


def _check_file(
    name: str, document: Any, converter: Converter, role_for_category: Mapping[str, str], reading: Reading
) -> UserFile | None:
    check = _FileCheck(name, converter, reading)
    if not isinstance(document, dict):
        check.problem("(file)", "expected a JSON object")
        reading.problems.extend(check.problems)
        return None
    email = check.text(document.get("user_email"), "user_email", required=True)
    if email is not None and "@" not in email:
        check.problem("user_email", f"{email!r} is not an e-mail address")
        email = None
    display_name = check.text(document.get("name"), "name")
    roles = document.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        check.problem("roles", "expected a list of role names")
        roles = []
    for role in roles:
        if role not in OLD_ROLES:
            check.problem("roles", f"unknown role {role!r} (known: {', '.join(sorted(OLD_ROLES))})")
    if "wallet_balance" not in document:
        check.problem("wallet_balance", "required balance is missing")
        balance = None
    else:
        balance = check.amount(document["wallet_balance"], "wallet_balance")

    transactions, completed = [], Decimal(0)
    for where, item in check.items(document, "transactions"):
        amount = check.amount(item.get("amount"), f"{where}.amount", signed=True)
        status = check.text(item.get("status"), f"{where}.status")
        if amount is not None and status == "Completed":
            completed += amount[0]
        transactions.append(
            {
                "legacy_id": str(item["id"]),
                "transaction_type": check.text(item.get("transaction_type"), f"{where}.transaction_type"),
                "status": status,
                "legacy_amount": None if amount is None else amount[0],
                "amount": None if amount is None else amount[1],
                "occurred_at": _when(check, item.get("timestamp"), f"{where}.timestamp"),
                "counterparty": check.text(item.get("counterparty"), f"{where}.counterparty"),
                "memo": check.text(item.get("memo"), f"{where}.memo"),
            }
        )
    products = []
    for where, item in check.items(document, "products"):
        price = check.amount(item.get("price_tfp"), f"{where}.price_tfp")
        if price is not None and price[1] <= 0:
            check.problem(
                f"{where}.price_tfp", f"a product's price must be greater than zero, got {price[0]}"
            )
        category = check.choice(item.get("category"), f"{where}.category", CATEGORIES)
        if category is not None and role_for_category[category] not in roles:
            check.problem(
                f"{where}.category",
                f"listing {category} products needs the role {role_for_category[category]}, not in roles",
            )
        attributes = item.get("attributes", {})
        if not isinstance(attributes, dict):
            check.problem(f"{where}.attributes", "expected an object")
        active = item.get("active", True)
        if not isinstance(active, bool):
            check.problem(f"{where}.active", f"expected true or false, got {active!r}")
        products.append(
            {
                "legacy_id": str(item["id"]),
                "name": check.text(item.get("name"), f"{where}.name", required=True),
                "description": check.text(item.get("description"), f"{where}.description"),
                "category": category,
                "unit": check.choice(item.get("unit"), f"{where}.unit", UNITS),
                "legacy_price": None if price is None else price[0],
                "price": None if price is None else price[1],
                "attributes": attributes,
                "active": active,
            }
        )
    if check.problems or email is None or balance is None:
        reading.problems.extend(check.problems)
        return None
    if completed != balance[0] and transactions:
        check.warn(
            "wallet_balance",
            f"{balance[0]} TFP differs from the completed transactions' sum {completed} TFP "
            "(the stated balance is imported)",
        )
    address = email.strip().lower()
    return UserFile(
        {
            "email": address,
            "source_file": name,
            "display_name": display_name,
            "roles": sorted({role for role in roles if role in ROLES}),
            "opening_credits": balance[1],
            "legacy_balance": balance[0],
        },
        [{"email": address, **row} for row in transactions],
        [{"email": address, **row} for row in products],
    )


def read_user_files(
    files: list[Path], converter: Converter, role_for_category: Mapping[str, str], advance: Any = None
) -> Reading:
    """Every file checked; e-mail addresses unique across files, ignoring case (every file that
    repeats an address is invalid, the first one too: which one is right is for a person)."""
    reading = Reading()
    for path in files:
        try:
            document = json.loads(path.read_bytes(), parse_float=Decimal)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            reading.problems.append(Finding(path.name, "(file)", f"not valid JSON: {error}"))
        else:
            user = _check_file(path.name, document, converter, role_for_category, reading)
            if user is not None:
                reading.valid.append(user)
        if advance is not None:
            advance()
    by_email: dict[str, list[UserFile]] = {}
    for user in reading.valid:
        by_email.setdefault(user.account["email"], []).append(user)
    for email, users in by_email.items():
        if len(users) > 1:
            names = ", ".join(user.account["source_file"] for user in users)
            for user in users:
                reading.problems.append(
                    Finding(
                        user.account["source_file"],
                        "user_email",
                        f"{email} appears in several files: {names}",
                    )
                )
    reading.valid = [user for user in reading.valid if len(by_email[user.account["email"]]) == 1]
    return reading


@dataclass(frozen=True)
class Source:
    user_data: Path
    config: Path | None


def locate(directory: Path) -> Source:
    """DIR is the `user_data` folder itself, or the folder holding it and `marketplace.config`."""
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a folder")
    folder = directory / "user_data" if (directory / "user_data").is_dir() else directory
    config = folder.parent / "marketplace.config"
    return Source(folder, config if config.is_file() else None)


def read_old_config(path: Path | None, tfp_usd_rate: Decimal, reading: Reading) -> dict[str, Decimal | str]:
    """The old keys worth keeping, checked as `mycelium config` checks them; the rest is reported
    as dropped."""
    kept: dict[str, Decimal | str] = {}
    if path is None:
        return kept
    try:
        lines = list(key_values(path))
    except UsageError as malformed:
        reading.problems.append(Finding(path.name, "(file)", str(malformed)))
        return kept
    for number, key, value in lines:
        where = f"{key} (line {number})"
        if key in KEPT_SETTINGS:
            try:
                kept[key] = parse_value(key, value, f"{path.name} line {number}").value
            except UsageError as invalid:
                reading.problems.append(Finding(path.name, where, str(invalid)))
        elif key == "tfp_to_usd_rate":
            if _decimal_or_none(value) != tfp_usd_rate:
                reading.warnings.append(
                    Finding(
                        path.name, where, f"the old rate {value} differs from --tfp-usd-rate {tfp_usd_rate}"
                    )
                )
        else:
            why = DROPPED_SETTINGS.get(key, "not a setting any more")
            reading.warnings.append(Finding(path.name, where, f"dropped: {why}"))
    return kept


def _decimal_or_none(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except ArithmeticError:
        return None
