"""`mycelium credits` and `mycelium config` driven as an operator would (typer's runner and real
subprocesses), against the session's stack through the gateway and PostgREST."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import typer
from psycopg.rows import TupleRow
from typer.testing import CliRunner, Result

from cli.dev.stack import LocalStack
from cli.main import app
from tests.support import User

CONFIG_VARIABLES = (
    "TFC_USD_RATE",
    "MYCELIUM_CREDIT_CODE",
    "MYCELIUM_CREDIT_NAME",
    "MYCELIUM_CREDIT_SYMBOL",
    "MYCELIUM_PLATFORM_FEE_PERCENT",
    "MYCELIUM_MAX_PENDING_ORDERS",
    "MYCELIUM_MAX_PENDING_CAPACITY_PERCENT",
    "MYCELIUM_CONFIG_FILE",
)
Run = Callable[..., Result]


@pytest.fixture
def stack_env(stack: LocalStack) -> dict[str, str | None]:
    """The test stack's settings, as `mycelium dev env` would give them; no configuration overrides."""
    return {**stack.env(), **dict.fromkeys(CONFIG_VARIABLES)}


@pytest.fixture
def run(stack_env: dict[str, str | None]) -> Run:
    def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
        return CliRunner().invoke(app, list(args), env={**stack_env, **(env or {})})

    return invoke


def data(result: Result) -> Any:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout, parse_float=Decimal)


@pytest.fixture
def funded(make_user: Callable[..., User], run: Run) -> User:
    user = make_user()
    assert (
        run("credits", "purchase", user.email, "--usd", "100", "--payment-ref", f"t-{uuid.uuid4()}").exit_code
        == 0
    )
    return user


def test_balance_by_email_in_any_case_or_by_id(
    funded: User, run: Run, db: psycopg.Connection[TupleRow]
) -> None:
    by_email = data(run("credits", "balance", funded.email.upper(), "--json"))
    by_id = data(run("credits", "balance", funded.id, "--json"))
    assert by_email["balance"] == by_id["balance"] == "100"
    rate = db.execute("select tfc_to_usd_rate from public.credit_config").fetchone()
    assert rate is not None and Decimal(by_email["balance_usd"]) == 100 * rate[0]
    table = run("credits", "balance", funded.email)
    assert "100.00 TFC" in table.stdout


def test_grant_purchase_and_history(funded: User, run: Run) -> None:
    granted = data(
        run(
            "credits", "grant", funded.email, "2.5", "--reason", "launch", "--expires", "2099-01-01", "--json"
        )
    )
    assert granted["balance_after"] == "102.5" and granted["expires_at"].startswith("2099-01-01")
    account = data(run("credits", "balance", funded.id, "--json"))
    assert (account["balance"], account["expiring"]) == ("102.5", "2.5")
    reference = f"pay-{uuid.uuid4()}"
    first = data(
        run("credits", "purchase", funded.id, "--usd", "10.25", "--payment-ref", reference, "--json")
    )
    replay = data(
        run("credits", "purchase", funded.id, "--usd", "10.25", "--payment-ref", reference, "--json")
    )
    assert first == replay and first["amount"] == "10.25"
    history = data(run("credits", "history", funded.email, "--limit", "2", "--json"))
    assert [row["kind"] for row in history] == ["purchase", "grant"]
    assert data(run("credits", "history", funded.email, "--since", "2099-01-01", "--json")) == []


def test_purchase_with_a_package_adds_its_bonus(
    funded: User, run: Run, db: psycopg.Connection[TupleRow]
) -> None:
    name = f"Bonus {uuid.uuid4().hex[:6]}"
    db.execute(
        "insert into public.credit_packages (name, price_usd, bonus_credits) values (%s, 50, 5)", (name,)
    )
    bought = data(
        run(
            "credits",
            "purchase",
            funded.email,
            "--usd",
            "50",
            "--payment-ref",
            f"p-{uuid.uuid4()}",
            "--package",
            name,
            "--json",
        )
    )
    assert bought["amount"] == "55"
    missing = run(
        "credits", "purchase", funded.email, "--usd", "50", "--payment-ref", "x", "--package", "No such"
    )
    assert missing.exit_code == 2 and "no credit package 'No such'" in missing.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("credits", "balance", "not-an-address"), 2, "neither a user id nor an e-mail address"),
        (("credits", "balance", "nobody-here@example.test"), 1, "no user nobody-here@example.test"),
        (("credits", "grant", "{user}", "abc", "--reason", "r"), 2, "AMOUNT 'abc' is not a decimal number"),
        (("credits", "grant", "{user}", "0", "--reason", "r"), 1, "greater than zero"),
        (("credits", "grant", "{user}", "1.0000001", "--reason", "r"), 1, "more than 6 fractional digits"),
        (("credits", "grant", "{user}", "1", "--reason", "r", "--expires", "soon"), 2, "not an ISO 8601"),
        (("credits", "grant", "{user}", "1", "--reason", "r", "--expires", "2001-01-01"), 1, "in the future"),
        (("credits", "grant", "{user}", "1"), 2, "Missing option '--reason'"),
        (("credits", "purchase", "{user}", "--usd", "NaN", "--payment-ref", "r"), 2, "finite"),
        (("credits", "history", "{user}", "--since", "yesterday"), 2, "not an ISO 8601"),
        (("credits", "report", "--from", "2026-02-01", "--to", "2026-01-01"), 2, "is after --to"),
        (("credits", "report", "--from", "tomorrow"), 2, "not a date"),
    ],
)
def test_bad_input_is_one_readable_line(
    funded: User, run: Run, args: tuple[str, ...], code: int, message: str
) -> None:
    result = run(*(funded.email if arg == "{user}" else arg for arg in args))
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert message in result.stderr
    if code != 2 or "Missing option" not in message:
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_project_is_a_connection_error(run: Run) -> None:
    result = run("credits", "expire", env={"SUPABASE_URL": "http://127.0.0.1:9"})
    assert result.exit_code == 2 and "error:" in result.stderr


def test_expire_and_a_clean_audit(run: Run) -> None:
    swept = data(run("credits", "expire", "--json"))
    assert set(swept) == {"as_of", "lots_expired", "users", "credits_expired"}
    assert data(run("credits", "audit", "--json")) == {"ok": True, "findings": []}
    assert "clean" in run("credits", "audit").stdout


def test_a_broken_ledger_fails_the_audit_with_a_report(
    make_user: Callable[..., User], run: Run, db: psycopg.Connection[TupleRow]
) -> None:
    user = make_user()
    try:
        db.execute("update public.credit_accounts set balance = balance + 1 where user_id = %s", (user.id,))
        broken = run("credits", "audit")
        assert broken.exit_code == 1
        assert "Ledger audit: broken invariants" in broken.stdout
        report = run("credits", "audit", "--json")
        assert report.exit_code == 1
        findings = json.loads(report.stdout)
        assert findings["ok"] is False
        assert {"check_name": "balance_equals_entries", "subject": user.id} in [
            {"check_name": f["check_name"], "subject": f["subject"]} for f in findings["findings"]
        ]
    finally:
        db.execute("update public.credit_accounts set balance = balance - 1 where user_id = %s", (user.id,))


def test_report_tables_json_and_a_self_contained_html_page(funded: User, run: Run, tmp_path: Path) -> None:
    page = tmp_path / "credits.html"
    tables = run("credits", "report", "--html", str(page))
    assert tables.exit_code == 0, tables.stderr
    assert "Top spenders" in tables.stdout and "Per day" in tables.stdout
    html = page.read_text()
    assert html.count("<svg") == 3 and "<polyline" in html and "<table>" in html
    assert "Credits issued, spent and expired per day" in html and "Platform revenue per day" in html
    # Opens with no network: nothing fetched from anywhere, no script.
    assert "http" not in html and "//" not in html.replace("<!DOCTYPE", "") and "<script" not in html
    report = data(run("credits", "report", "--from", "2026-01-01", "--to", "2026-01-03", "--json"))
    assert [day["day"] for day in report["days"]] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert Decimal(report["summary"]["issued"]) >= 100


def leaf_commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command `mycelium` runs (not its groups), with the words that name it."""
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield path, command
        return
    for name, subcommand in subcommands.items():
        yield from leaf_commands(subcommand, (*path, name))


def test_every_command_has_json_and_help_with_an_example() -> None:
    commands = list(leaf_commands(typer.main.get_command(app)))
    assert len(commands) > 20 and (("credits", "grant") in dict(commands))
    for words, command in commands:
        options = {name for parameter in command.params for name in getattr(parameter, "opts", [])}
        assert "--json" in options, words
        result = CliRunner().invoke(app, [*words, "--help"])
        assert result.exit_code == 0 and "Example: " in result.stdout and "mycelium " in result.stdout, words


def groups(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every group `mycelium` has, itself included, with the words that name it."""
    subcommands = getattr(command, "commands", None)
    if subcommands:
        yield path, command
        for name, subcommand in subcommands.items():
            yield from groups(subcommand, (*path, name))


def test_every_summary_is_one_short_sentence_on_its_row_of_the_listing() -> None:
    """A group's --help lists each command with the first paragraph of its help, line breaks kept:
    that paragraph must be one sentence on one line, short enough for its row at 80 columns."""
    broken = []
    for words, group in groups(typer.main.get_command(app)):
        listing = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "80"})
        assert listing.exit_code == 0, words
        rows = listing.stdout.splitlines()
        for name, command in group.commands.items():
            summary = inspect.cleandoc(command.help or "").split("\n\n")[0]
            one_sentence = "\n" not in summary and summary.endswith(".") and ". " not in summary
            row = re.compile(rf"│ {name} +{re.escape(summary)} +│")
            if not (one_sentence and any(row.fullmatch(line) for line in rows)):
                broken.append(" ".join(("mycelium", *words, name)))
    assert not broken, ", ".join(broken)


def test_a_line_break_in_a_help_starts_a_list_item_or_an_example() -> None:
    """typer prints a help's single line breaks as they are, so a paragraph wrapped in the source
    would come out ragged: the lines after a paragraph's first are list items or examples."""
    root = typer.main.get_command(app)
    ragged = []
    for words, command in [*groups(root), *leaf_commands(root)]:
        for paragraph in inspect.cleandoc(command.help or "").split("\n\n"):
            if any(not line.startswith(("  ", "Example: ")) for line in paragraph.splitlines()[1:]):
                ragged.append(" ".join(("mycelium", *words)))
    assert not ragged, ", ".join(ragged)


def test_the_top_level_commands_are_listed_in_panels_operate_migrate_develop() -> None:
    listing = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"})
    panels = re.findall(r"^╭─ (.+?) ─", listing.stdout, re.MULTILINE)
    assert panels == ["Options", "Operate", "Migrate", "Develop"], listing.stdout


def test_a_real_subprocess_with_settings_from_the_environment(
    funded: User, stack_env: dict[str, str | None]
) -> None:
    env = {**os.environ, **{k: v for k, v in stack_env.items() if v is not None}}
    ran = subprocess.run(
        [sys.executable, "-m", "cli.main", "credits", "balance", funded.email, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["balance"] == "100"
    flags = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "--debug",
            "credits",
            "balance",
            "x@y.z",
            "--url",
            "http://127.0.0.1:9",
            "--service-key",
            "k",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert flags.returncode != 0 and "Traceback" in flags.stderr  # --debug shows it; the flag beat the env


# -- config -------------------------------------------------------------------------------------
@pytest.fixture
def restored_config(db: psycopg.Connection[TupleRow]) -> Iterator[None]:
    """Config tests change the one credit and marketplace configuration: put them back for the
    rest of the session."""
    saved = db.execute(
        "select tfc_to_usd_rate, credit_currency_code, credit_display_name, credit_symbol"
        " from public.credit_config"
    ).fetchone()
    marketplace = db.execute(
        "select platform_fee_percent, max_pending_orders, max_pending_capacity_percent"
        " from public.marketplace_config"
    ).fetchone()
    yield
    db.execute(
        "update public.credit_config set tfc_to_usd_rate = %s, credit_currency_code = %s, "
        "credit_display_name = %s, credit_symbol = %s",
        saved,
    )
    db.execute(
        "update public.marketplace_config set platform_fee_percent = %s, max_pending_orders = %s, "
        "max_pending_capacity_percent = %s",
        marketplace,
    )


def write_config(folder: Path, text: str) -> Path:
    path = folder / "marketplace.config"
    path.write_text(text)
    return path


@pytest.mark.usefixtures("restored_config")
def test_config_apply_is_idempotent_and_env_overrides_the_file(run: Run, tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "# the credit\ntfc_to_usd_rate = 1.25\ncredit_symbol = TC  # short\n"
        "credit_display_name = Test Credits\nplatform_fee_percent = 2.5\n",
    )
    applied = data(
        run("config", "apply", "--file", str(path), "--json", env={"MYCELIUM_CREDIT_SYMBOL": "T$"})
    )
    changed = {c["key"]: (c["new"], c["origin"]) for c in applied["changed"]}
    assert changed["tfc_to_usd_rate"] == ("1.25", f"{path} line 2")
    assert changed["credit_symbol"] == ("T$", "env MYCELIUM_CREDIT_SYMBOL")
    assert changed["platform_fee_percent"] == ("2.5", f"{path} line 5")
    again = run("config", "apply", "--file", str(path), env={"MYCELIUM_CREDIT_SYMBOL": "T$"})
    assert again.exit_code == 0 and "Nothing to change" in again.stdout
    shown = {row["key"]: row for row in data(run("config", "show", "--file", str(path), "--json"))}
    assert shown["tfc_to_usd_rate"]["database"] == "1.25" and not shown["tfc_to_usd_rate"]["differs"]
    assert shown["credit_symbol"]["file"] == "TC" and shown["credit_symbol"]["differs"]  # env not set now
    assert data(run("config", "set", "tfc_to_usd_rate", "1.5", "--json"))["changed"][0]["old"] == "1.25"
    fee = data(
        run(
            "config", "set", "platform_fee_percent", "3", "--json", env={"MYCELIUM_PLATFORM_FEE_PERCENT": "9"}
        )
    )
    assert fee["changed"] == [{"key": "platform_fee_percent", "old": "2.5", "new": "3", "origin": "argument"}]
    marketplace = {row["key"]: row for row in data(run("config", "show", "--json"))}["platform_fee_percent"]
    assert marketplace["database"] == "3"


@pytest.mark.usefixtures("restored_config")
def test_config_sets_the_bounds_on_what_one_buyer_holds_pending(run: Run, tmp_path: Path) -> None:
    path = write_config(tmp_path, "max_pending_orders = 7\nmax_pending_capacity_percent = 25.5\n")
    applied = data(run("config", "apply", "--file", str(path), "--json"))
    assert {c["key"]: c["new"] for c in applied["changed"]} == {
        "max_pending_orders": "7",
        "max_pending_capacity_percent": "25.5",
    }
    shown = {row["key"]: row for row in data(run("config", "show", "--json"))}
    assert str(shown["max_pending_orders"]["database"]) == "7"
    assert shown["max_pending_capacity_percent"]["database"] == "25.5"
    changed = data(
        run("config", "set", "max_pending_orders", "3", "--json", env={"MYCELIUM_MAX_PENDING_ORDERS": "9"})
    )
    assert [(c["key"], c["new"]) for c in changed["changed"]] == [("max_pending_orders", "3")]


@pytest.mark.usefixtures("restored_config")
@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("tfc_to_usd_rate = 1\ncolour = blue\n", {}, "line 2: unknown key 'colour'"),
        ("tfc_to_usd_rate = one\n", {}, "line 1: tfc_to_usd_rate 'one' is not a decimal number"),
        ("credit_symbol = X\ntfc_to_usd_rate = 0\n", {}, "line 2: tfc_to_usd_rate must be greater than zero"),
        ("tfc_to_usd_rate = -2\n", {}, "line 1: tfc_to_usd_rate must be greater than zero"),
        ("platform_fee_percent = 150\n", {}, "line 1: platform_fee_percent must be a percentage"),
        (
            "max_pending_orders = 2.5\n",
            {},
            "line 1: max_pending_orders must be a whole number from 1 to 10000",
        ),
        (
            "max_pending_capacity_percent = 0\n",
            {},
            "line 1: max_pending_capacity_percent must be a percentage",
        ),
        ("just some words\n", {}, "line 1: expected `key = value`"),
        ("credit_symbol = X\n", {"TFC_USD_RATE": "abc"}, "env TFC_USD_RATE: tfc_to_usd_rate 'abc'"),
    ],
)
def test_bad_config_names_the_line_and_applies_nothing(
    run: Run,
    tmp_path: Path,
    db: psycopg.Connection[TupleRow],
    text: str,
    env: dict[str, str],
    message: str,
) -> None:
    before = db.execute("select to_jsonb(c) from public.credit_config c").fetchone()
    result = run("config", "apply", "--file", str(write_config(tmp_path, text)), env=env)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert db.execute("select to_jsonb(c) from public.credit_config c").fetchone() == before


@pytest.mark.usefixtures("restored_config")
def test_config_set_refuses_what_the_database_refuses(run: Run) -> None:
    assert run("config", "set", "colour", "blue").exit_code == 2
    refused = run("config", "set", "credit_currency_code", "lower case")
    assert refused.exit_code == 1 and "credit_currency_code must be" in refused.stderr
    nothing = run("config", "apply", "--file", "/nonexistent/marketplace.config")
    assert nothing.exit_code == 2 and "nothing to apply" in nothing.stderr
