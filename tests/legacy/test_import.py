"""`mycelium legacy import`: the old JSON user files (amounts in TFP) into PostgreSQL, as an
operator runs it, against the session's stack; claims proven through PostgREST."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow
from typer.testing import CliRunner, Result

from cli.dev.stack import LocalStack
from cli.dev.users import create_user
from cli.keys import access_token
from cli.main import app
from tests.support import SHARED, Api, User, body

SAMPLE = SHARED / "legacy" / "sample"
Import = Callable[..., Result]
Conn = psycopg.Connection[TupleRow]


@pytest.fixture
def legacy_import(stack: LocalStack) -> Import:
    def run(folder: Path, *args: str, rate: str = "0.1") -> Result:
        command = ["legacy", "import", str(folder), "--tfp-usd-rate", rate, "--db-url", stack.db_url, *args]
        return CliRunner().invoke(app, command)

    return run


def summary(result: Result) -> dict[str, Any]:
    return json.loads(result.stdout, parse_float=Decimal)  # type: ignore[no-any-return]


class Folder:
    """An old `user_data` folder written by the test, with addresses unique to the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.user_data = root / "user_data"
        self.user_data.mkdir()
        self.tag = uuid.uuid4().hex[:10]

    def email(self, who: str) -> str:
        return f"{who}-{self.tag}@legacy.test"

    def user(self, who: str, balance: object = "10", **fields: object) -> str:
        """Writes `<who>.json`; returns the address."""
        document = {"user_email": self.email(who), "wallet_balance": balance, **fields}
        self.write(f"{who}.json", json.dumps(document, default=str))
        return self.email(who)

    def write(self, file: str, text: str) -> None:
        (self.user_data / file).write_text(text)


@pytest.fixture
def folder(tmp_path: Path) -> Folder:
    return Folder(tmp_path)


def rows(db: Conn, sql: str, *params: object) -> list[TupleRow]:
    return db.execute(sql, params).fetchall()


def footprint(db: Conn) -> TupleRow:
    """Everything an import writes, counted."""
    row = db.execute(
        """select (select count(*) from mycelium_private.legacy_import_runs),
                  (select count(*) from mycelium_private.legacy_accounts),
                  (select count(*) from public.legacy_transactions),
                  (select count(*) from mycelium_private.legacy_products),
                  (select count(*) from mycelium_private.transfers where kind = 'legacy_migration')"""
    ).fetchone()
    assert row is not None
    return row


def confirm(db: Conn, email: str) -> None:
    db.execute("update auth.users set email_confirmed_at = now() where email = %s", (email,))


def balance(db: Conn, email: str) -> object:
    return db.execute(
        "select a.balance from public.credit_accounts a join auth.users u on u.id = a.user_id"
        " where u.email = %s",
        (email,),
    ).fetchone()


# -- the shared samples ------------------------------------------------------------------------
def test_the_sample_folder_imports_with_its_warnings(legacy_import: Import, tmp_path: Path) -> None:
    if not SAMPLE.is_dir():
        pytest.skip(f"the legacy samples are not at {SAMPLE} (the `shared` folder beside the repo clone)")
    # A copy: the samples' fixed addresses may already be imported by an earlier run on this stack.
    copy = tmp_path / "old"
    shutil.copytree(SAMPLE, copy)
    result = legacy_import(copy, "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    report = summary(result)
    assert report["files"] == 3 and report["problems"] == [] and report["written"] is False
    assert report["settings"] == {"platform_fee_percent": "5"}
    warned = {(w["file"], w["field"].split(" ")[0]) for w in report["warnings"]}
    assert ("bob_farmer.json", "wallet_balance") in warned  # 4020.25 stated, 249.5 completed
    assert ("marketplace.config", "currency_display") in warned
    if report["already_imported"] == 0:
        assert report["credits"] == "527.075"  # (1250.50 + 4020.25 + 0) x 0.1 / 1
        assert report["products"] == 3 and report["transactions"] == 4


# -- a folder of valid files -------------------------------------------------------------------
def test_import_converts_once_waits_for_confirmation_and_reruns_write_nothing(
    legacy_import: Import, folder: Folder, db: Conn, stack: LocalStack
) -> None:
    ada = folder.user(
        "ada",
        "12.34",
        name="Ada",
        roles=["user", "farmer"],
        transactions=[
            {
                "id": "t1",
                "transaction_type": "Purchase",
                "amount": "12.34",
                "status": "Completed",
                "timestamp": "2025-05-01T09:00:00Z",
                "counterparty": None,
                "memo": "top-up",
            },
        ],
        products=[
            {
                "id": "p1",
                "name": "Slice",
                "category": "compute",
                "price_tfp": "2.5",
                "unit": "month",
                "attributes": {"cpu": 4},
                "active": True,
            }
        ],
    )
    # Written by hand: the float 10.1 as a JSON number, the address in capitals.
    shouted = folder.email("zed").upper()
    folder.write(
        "zed.json",
        '{"user_email": "' + shouted + '", "wallet_balance": 10.1, "roles": ["app_provider"], "products": '
        '[{"id": "a1", "name": "Nextcloud", "category": "app", "price_tfp": 12.75, "unit": "month"}]}',
    )
    zed = folder.email("zed")
    before = footprint(db)
    dry = summary(legacy_import(folder.root, "--dry-run", "--json"))
    assert (dry["users"], dry["credits"], dry["written"]) == (2, "2.244", False)
    assert footprint(db) == before

    done = legacy_import(folder.root, "--json")
    assert done.exit_code == 0, done.stderr
    report = summary(done)
    # 12.34 x 0.1 = 1.234; the float 10.1 read exactly as 10.1 -> 1.01.
    counts = (report["users"], report["credits"], report["products"], report["transactions"])
    assert counts == (2, "2.244", 2, 1)
    assert report["claimed"] == 0 and report["written"] is True

    again = summary(legacy_import(folder.user_data, "--json"))  # DIR may be user_data itself
    assert (again["users"], again["already_imported"], again["written"]) == (0, 2, False)
    assert footprint(db)[0] == before[0] + 1  # one run record, not two

    # Ada signs up but has not confirmed her address: nothing is hers yet.
    unconfirmed = create_user(db, ada, confirmed=False)
    token = access_token(stack.jwt_secret, unconfirmed.id, email=unconfirmed.email)
    as_ada = Api(stack.api_url, stack.anon_key, token)
    try:
        # What she sees through PostgREST, as an attacker signing up with her address would.
        assert body(as_ada.get("/credit_accounts", select="balance")) == [{"balance": 0}]
        assert body(as_ada.get("/legacy_transactions")) == []
        assert rows(db, "select role from public.user_roles where user_id = %s", unconfirmed.id) == []
        confirm(db, ada)
        assert body(as_ada.get("/credit_accounts", select="balance")) == [{"balance": Decimal("1.234")}]
        assert [row["legacy_id"] for row in body(as_ada.get("/legacy_transactions"))] == ["t1"]
    finally:
        as_ada.close()
    assert rows(db, "select role from public.user_roles where user_id = %s", unconfirmed.id) == [("farmer",)]
    # Zed was confirmed from the start (an INSERT with the address confirmed).
    signed_up = create_user(db, zed)
    assert balance(db, zed) == (Decimal("1.01"),)
    assert rows(db, "select name, price from public.products where provider_id = %s", signed_up.id) == [
        ("Nextcloud", Decimal("1.275"))
    ]
    entry = rows(
        db,
        "select e.kind, e.amount, t.from_system from public.credit_transactions e "
        "join mycelium_private.transfers t on t.id = e.transfer_id join auth.users u on u.id = e.user_id "
        "where u.email = %s",
        zed,
    )
    assert entry == [("legacy_migration", Decimal("1.01"), "issuance")]
    audit = db.execute("select count(*) from mycelium_private.audit_ledger()").fetchone()
    assert audit == (0,)

    # Confirming again, or a second import, never credits twice.
    confirm(db, ada)
    assert balance(db, ada) == (Decimal("1.234"),)

    # Her old listing is now her product, priced in credits (2.5 x 0.1), readable by anyone.
    anon = Api(stack.api_url, stack.anon_key)
    try:
        listed = body(
            anon.get("/products", provider_id=f"eq.{unconfirmed.id}", select="name,price,unit,category")
        )
    finally:
        anon.close()
    assert listed == [{"name": "Slice", "price": Decimal("0.25"), "unit": "month", "category": "compute"}]


def test_users_confirmed_before_the_import_are_credited_at_once(
    legacy_import: Import, folder: Folder, db: Conn
) -> None:
    email = folder.email("early")
    create_user(db, email)
    folder.user("early", "50", roles=["service_provider"])
    report = summary(legacy_import(folder.root, "--json"))
    assert report["claimed"] == 1
    assert balance(db, email) == (Decimal(5),)


def test_legacy_records_are_only_their_owners_through_postgrest(
    legacy_import: Import, folder: Folder, db: Conn, stack: LocalStack, make_user: Callable[..., User]
) -> None:
    email = folder.user(
        "owner",
        "1",
        transactions=[
            {"id": "t1", "amount": "1", "status": "Completed", "timestamp": "2025-01-01T00:00:00Z"}
        ],
    )
    folder.user("waiting", "1", transactions=[{"id": "w1", "amount": "1", "status": "Completed"}])
    assert legacy_import(folder.root).exit_code == 0
    owner = create_user(db, email)
    as_owner = Api(stack.api_url, stack.anon_key, access_token(stack.jwt_secret, owner.id, email=owner.email))
    anon = Api(stack.api_url, stack.anon_key)
    stranger = make_user()
    try:
        mine = body(as_owner.get("/legacy_transactions", select="legacy_id,amount,legacy_amount"))
        assert mine == [{"legacy_id": "t1", "amount": Decimal("0.1"), "legacy_amount": 1}]
        assert body(stranger.api.get("/legacy_transactions")) == []  # not Owner's, not the unclaimed
        assert anon.get("/legacy_transactions").status_code in (401, 403)
        for private in ("legacy_accounts", "legacy_products", "legacy_import_runs"):
            assert anon.get(f"/{private}").status_code == 404  # not exposed at all
            assert stranger.api.get(f"/{private}").status_code == 404
        refused = stranger.api.rpc("legacy_import", p_source="x")
        assert refused.status_code == 404
        assert stranger.api.post("/legacy_transactions", {"email": email, "legacy_id": "x"}).status_code in (
            401,
            403,
        )
    finally:
        as_owner.close()
        anon.close()


# -- invalid files ------------------------------------------------------------------------------
def write_broken_files(folder: Folder) -> None:
    folder.user("good", "1")
    folder.write("not-json.json", "{ this is not json")
    folder.write("no-email.json", '{"wallet_balance": "1"}')
    folder.user("negative", "-5")
    folder.user("twice", "1")
    folder.write("twice-again.json", json.dumps({"user_email": folder.email("TWICE"), "wallet_balance": 2}))
    folder.user(
        "bad-amounts", "abc", transactions=[{"id": "t1", "amount": True}, {"id": "t1", "amount": "1"}]
    )
    folder.user("too-precise", "0.0000001")
    folder.user("bad-role", "1", roles=["emperor"])
    folder.user(
        "bad-products",
        "1",
        roles=["user"],
        products=[
            {"id": "p1", "name": "Node", "category": "node", "price_tfp": "10", "unit": "month"},
            {"id": "p2", "name": "Free", "category": "app", "price_tfp": "0", "unit": "fortnight"},
        ],
    )


EXPECTED_PROBLEMS = {
    ("not-json.json", "(file)"),
    ("no-email.json", "user_email"),
    ("negative.json", "wallet_balance"),
    ("twice.json", "user_email"),
    ("twice-again.json", "user_email"),
    ("bad-amounts.json", "wallet_balance"),
    ("bad-amounts.json", "transactions[0].amount"),
    ("bad-amounts.json", "transactions[1].id"),
    ("too-precise.json", "wallet_balance"),
    ("bad-role.json", "roles"),
    ("bad-products.json", "products[0].category"),  # a node needs the farmer role
    ("bad-products.json", "products[1].price_tfp"),
    ("bad-products.json", "products[1].category"),
    ("bad-products.json", "products[1].unit"),
}


def test_any_invalid_file_stops_the_import_and_writes_nothing(
    legacy_import: Import, folder: Folder, db: Conn
) -> None:
    write_broken_files(folder)
    before = footprint(db)
    result = legacy_import(folder.root, "--json")
    assert result.exit_code == 1
    report = summary(result)
    assert {(p["file"], p["field"]) for p in report["problems"]} == EXPECTED_PROBLEMS
    assert report["written"] is False and report["users"] == 0
    assert footprint(db) == before
    precise = next(p for p in report["problems"] if p["file"] == "too-precise.json")
    assert "0.0000001 TFP converts to 0.00000001 credits: more than 6 decimal places" in precise["message"]

    human = legacy_import(folder.root)
    assert human.exit_code == 1 and "Nothing imported" in human.stdout and "no-email.json" in human.stdout


def test_skip_invalid_imports_the_valid_files_and_reports_the_rest(
    legacy_import: Import, folder: Folder, db: Conn
) -> None:
    write_broken_files(folder)
    result = legacy_import(folder.root, "--skip-invalid", "--json")
    assert result.exit_code == 0, result.stderr
    report = summary(result)
    assert report["users"] == 1 and report["credits"] == "0.1"
    assert {(p["file"], p["field"]) for p in report["problems"]} == EXPECTED_PROBLEMS
    assert rows(
        db, "select email from mycelium_private.legacy_accounts where email like %s", f"%{folder.tag}%"
    ) == [(folder.email("good"),)]


def test_excess_precision_is_truncated_only_when_asked_and_then_reported(
    legacy_import: Import, folder: Folder
) -> None:
    folder.user("precise", "1.23456789")
    refused = legacy_import(folder.root, "--json", rate="1")
    assert refused.exit_code == 1
    cut = summary(legacy_import(folder.root, "--json", "--truncate-excess", rate="1"))
    assert cut["credits"] == "1.234567"
    assert [w["message"] for w in cut["warnings"]] == ["1.23456789 TFP truncated to 1.234567 credits"]


def test_bad_arguments_are_usage_errors(legacy_import: Import, folder: Folder, tmp_path: Path) -> None:
    assert legacy_import(tmp_path / "missing").exit_code == 2
    zero = legacy_import(folder.root, rate="0")
    assert zero.exit_code == 2 and "--tfp-usd-rate must be greater than zero" in zero.stderr
    assert legacy_import(folder.root, rate="lots").exit_code == 2


def test_a_real_subprocess_shows_the_summary_table(folder: Folder, stack: LocalStack) -> None:
    folder.user("table", "3")
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "legacy",
            "import",
            str(folder.root),
            "--tfp-usd-rate",
            "0.5",
            "--db-url",
            stack.db_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert "Legacy import" in ran.stdout and "1.5" in ran.stdout


@pytest.fixture
def restored_fee(db: Conn) -> Iterator[None]:
    saved = db.execute("select platform_fee_percent from public.marketplace_config").fetchone()
    yield
    db.execute("update public.marketplace_config set platform_fee_percent = %s", saved)


@pytest.mark.usefixtures("restored_fee")
def test_the_old_platform_fee_comes_along_once(legacy_import: Import, folder: Folder, db: Conn) -> None:
    (folder.root / "marketplace.config").write_text("tfp_to_usd_rate = 0.1\nplatform_fee_percent = 7.5\n")
    folder.user("fee", "1")
    report = summary(legacy_import(folder.root, "--json"))
    assert report["settings_applied"] == {"platform_fee_percent": "7.5"}
    assert db.execute("select platform_fee_percent from public.marketplace_config").fetchone() == (
        Decimal("7.5"),
    )
    assert summary(legacy_import(folder.root, "--json"))["settings_applied"] == {}


def test_a_bad_old_setting_is_a_problem_of_the_config_file(legacy_import: Import, folder: Folder) -> None:
    (folder.root / "marketplace.config").write_text("platform_fee_percent = 150\ntfp_to_usd_rate = 0.2\n")
    folder.user("config", "1")
    result = legacy_import(folder.root, "--json")
    assert result.exit_code == 1
    report = summary(result)
    assert [(p["file"], p["field"]) for p in report["problems"]] == [
        ("marketplace.config", "platform_fee_percent (line 1)")
    ]
    assert "must be a percentage from 0 to 100" in report["problems"][0]["message"]
    assert [w["message"] for w in report["warnings"]] == ["the old rate 0.2 differs from --tfp-usd-rate 0.1"]


# -- claims that must not happen ------------------------------------------------------------------
def change_email(db: Conn, user_id: uuid.UUID, email: str) -> None:
    """Auth confirming a user's new address: the same row, a new e-mail, still confirmed."""
    db.execute("update auth.users set email = %s where id = %s", (email, user_id))


def roles_of(db: Conn, user_id: uuid.UUID) -> list[str]:
    return [
        str(role) for (role,) in rows(db, "select role from public.user_roles where user_id = %s", user_id)
    ]


def legacy_owner(db: Conn, email: str) -> TupleRow | None:
    return db.execute(
        "select user_id, claim_error from mycelium_private.legacy_accounts where email = %s", (email,)
    ).fetchone()


def test_an_email_change_to_a_second_legacy_address_goes_through_and_claims_nothing(
    legacy_import: Import, folder: Folder, db: Conn
) -> None:
    first = folder.user("first", "10", roles=["farmer"])
    second = folder.user(
        "second",
        "20",
        roles=["app_provider"],
        transactions=[{"id": "s1", "amount": "20", "status": "Completed"}],
    )
    assert legacy_import(folder.root).exit_code == 0
    user = create_user(db, first)
    change_email(db, user.id, second)
    assert db.execute("select email from auth.users where id = %s", (user.id,)).fetchone() == (second,)
    assert balance(db, second) == (Decimal(1),)  # the first account's credits, not the second's
    assert roles_of(db, user.id) == ["farmer"]
    assert rows(db, "select user_id from public.legacy_transactions where email = %s", second) == [(None,)]
    assert legacy_owner(db, second) == (
        None,
        f"not claimed by user {user.id}: it already owns the legacy account of {first}",
    )


def test_an_import_never_claims_a_second_account_for_a_user_and_says_so(
    legacy_import: Import, folder: Folder, db: Conn
) -> None:
    first = folder.user("one", "10")
    assert legacy_import(folder.root).exit_code == 0
    user = create_user(db, first)
    second = folder.user("two", "5")  # imported after the user moved to this address
    change_email(db, user.id, second)
    done = legacy_import(folder.root, "--json")
    assert done.exit_code == 0, done.stderr
    report = summary(done)
    reason = f"not claimed by user {user.id}: it already owns the legacy account of {first}"
    assert (report["users"], report["claimed"]) == (1, 0)
    assert report["not_claimed"] == [{"email": second, "reason": reason}]
    assert balance(db, second) == (Decimal(1),)


def test_an_import_and_an_email_change_of_one_user_take_turns(
    legacy_import: Import, folder: Folder, db: Conn, stack: LocalStack
) -> None:
    """The import claims the address the user leaves while Auth confirms the new one."""
    leaving, joining = folder.user("leaving", "10"), folder.user("joining", "20")
    assert legacy_import(folder.root).exit_code == 0
    user = create_user(db, folder.email("elsewhere"))
    with (
        psycopg.connect(stack.superuser_db_url) as importing,
        psycopg.connect(stack.superuser_db_url, autocommit=True) as gotrue,
    ):
        importing.execute("select mycelium_private.claim_legacy_account(%s, %s)", (user.id, leaving))
        with ThreadPoolExecutor(1) as auth:
            confirming = auth.submit(change_email, gotrue, user.id, joining)
            try:
                wait_until_blocked_by(db, importing.info.backend_pid)
            finally:
                importing.commit()  # whatever happened, the waiting e-mail change goes on
            confirming.result()
    assert legacy_owner(db, leaving) == (user.id, None)
    assert legacy_owner(db, joining) == (
        None,
        f"not claimed by user {user.id}: it already owns the legacy account of {leaving}",
    )
    assert balance(db, joining) == (Decimal(1),)


def test_an_address_confirmed_while_an_import_adds_it_is_claimed(db: Conn, stack: LocalStack) -> None:
    """The import has looked at the users (this one not yet confirmed) and not committed yet."""
    email = f"racing-{uuid.uuid4().hex[:10]}@example.test"
    user = create_user(db, email, confirmed=False)
    account = {
        "email": email,
        "source_file": "racing.json",
        "display_name": "Racing",
        "roles": [],
        "opening_credits": "7",
        "legacy_balance": "70",
    }
    with (
        psycopg.connect(stack.superuser_db_url) as importing,
        psycopg.connect(stack.superuser_db_url, autocommit=True) as gotrue,
    ):
        imported = importing.execute(
            "select mycelium_private.legacy_import('racing', 0.1, %s::jsonb, '[]', '[]', '{}')",
            (json.dumps([account]),),
        ).fetchone()
        assert imported is not None and imported[0]["claimed"] == 0
        with ThreadPoolExecutor(1) as auth:
            confirming = auth.submit(
                gotrue.execute, "update auth.users set email_confirmed_at = now() where id = %s", (user.id,)
            )
            try:
                wait_until_blocked_by(db, importing.info.backend_pid)
            finally:
                importing.commit()
            confirming.result()
    assert legacy_owner(db, email) == (user.id, None)
    assert balance(db, email) == (Decimal(7),)


def wait_until_blocked_by(db: Conn, backend: int) -> None:
    """Until some session waits for a lock that `backend` holds (failing after a minute)."""
    deadline = time.monotonic() + 60
    query = "select exists (select 1 from pg_stat_activity a where %s = any (pg_blocking_pids(a.pid)))"
    while db.execute(query, (backend,)).fetchone() != (True,):
        assert time.monotonic() < deadline, "nobody waited for the importing transaction"
        time.sleep(0.01)


def test_admin_from_the_old_files_waits_to_be_granted_explicitly(
    legacy_import: Import, folder: Folder, db: Conn
) -> None:
    boss = folder.user("boss", "1", roles=["admin", "farmer"])
    early = folder.email("early")
    early_user = create_user(db, early)
    folder.user("early", "1", roles=["admin"])

    dry = legacy_import(folder.root, "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    said = " ".join(dry.stdout.split())
    assert "Admin is never granted automatically: 2 imported account(s) had it in the old files" in said
    done = legacy_import(folder.root, "--json")
    assert done.exit_code == 0, done.stderr
    assert summary(done)["admin_not_granted"] == sorted([boss, early])

    assert roles_of(db, early_user.id) == []  # claimed at the import, admin withheld
    user = create_user(db, boss)  # confirmed at sign-up, as with Auth's autoconfirm
    assert roles_of(db, user.id) == ["farmer"]
    waiting = (
        "select email, user_id from mycelium_private.legacy_admin_roles_waiting"
        " where email like %s order by email"
    )
    assert rows(db, waiting, f"%{folder.tag}%") == [(boss, user.id), (early, early_user.id)]

    # The operator, having checked who owns the address, grants it as the database login.
    db.execute("select public.grant_role(%s, 'admin')", (user.id,))
    assert sorted(roles_of(db, user.id)) == ["admin", "farmer"]
    assert rows(db, waiting, f"%{folder.tag}%") == [(early, early_user.id)]


def test_legacy_import_into_a_database_without_the_migrations_says_to_push_them(
    stack: LocalStack, db: Conn, tmp_path: Path
) -> None:
    name = f"bare_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        bare = stack.superuser_db_url.replace("/postgres?", f"/{name}?")
        result = CliRunner().invoke(
            app, ["legacy", "import", str(tmp_path), "--tfp-usd-rate", "0.1", "--db-url", bare]
        )
    finally:
        db.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))
    assert result.exit_code == 2, result.output
    assert "push the migrations (mycelium sql push)" in result.stderr
