"""`mycelium dev` driven as a person would, in a real subprocess, on a stack of its own."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from cli import keys
from cli.dev.postgres import socket_folder
from cli.dev.processes import free_port_base, pid_alive, port_open, read_pid
from cli.dev.stack import STACKS_HOME, LocalStack, StackSettings
from cli.dev.versions import VERSIONS, auth_build_dir
from tests.support import loads, stack_folder


def mycelium(
    *args: str, env: dict[str, str] | None = None, answer: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        input=answer,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def dev_dir() -> Iterator[Path]:
    folder = stack_folder("mycelium-dev-")
    yield folder / "stack"
    mycelium("dev", "down", "--dir", str(folder / "stack"))
    shutil.rmtree(folder, ignore_errors=True)


# What `./run setup` left when it could not build Auth, with what would break the gateway's nginx
# config (`'`, `$`, `\`) or its JSON (`"`, `\`) if it went into the 503 unchanged.
AUTH_REASON = """the proxy said "no" to $host's {request} \\ (403 Forbidden)"""
AUTH_REASON_AS_SERVED = "the proxy said no to host s request (403 Forbidden)"


@pytest.fixture(scope="module")
def auth_cache(dev_dir: Path) -> dict[str, str]:
    """The environment of a cache where `./run setup` recorded AUTH_REASON."""
    env = {"XDG_CACHE_HOME": str(dev_dir.parent / "cache")}
    auth_build_dir(env).mkdir(parents=True)
    (auth_build_dir(env) / "unavailable.txt").write_text(AUTH_REASON + "\n")
    return env


@pytest.fixture(scope="module")
def running(dev_dir: Path, auth_cache: dict[str, str]) -> dict[str, str]:
    """`dev up` on free ports (Auth unavailable for AUTH_REASON); returns `dev env --json`."""
    up = mycelium(
        "dev", "up", "--dir", str(dev_dir), "--port-base", str(free_port_base(start=47000)), env=auth_cache
    )
    assert up.returncode == 0, up.stderr
    assert "The local stack is up" in up.stdout
    env = mycelium("dev", "env", "--dir", str(dev_dir), "--json")
    assert env.returncode == 0, env.stderr
    values: dict[str, str] = json.loads(env.stdout)
    return values


def test_env_prints_the_supabase_settings_and_the_keys_verify(running: dict[str, str], dev_dir: Path) -> None:
    assert set(running) == {
        "SUPABASE_URL",
        "SUPABASE_ANON_KEY",
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_JWT_SECRET",
        "MYCELIUM_DB_URL",
    }
    secret = running["SUPABASE_JWT_SECRET"]
    anon = keys.decode(running["SUPABASE_ANON_KEY"], secret)
    service = keys.decode(running["SUPABASE_SERVICE_ROLE_KEY"], secret)
    assert (anon["role"], anon["iss"], service["role"], service["iss"]) == (
        "anon",
        "supabase",
        "service_role",
        "supabase",
    )
    assert anon["exp"] > anon["iat"]

    lines = mycelium("dev", "env", "--dir", str(dev_dir)).stdout.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == list(running)
    assert running["MYCELIUM_DB_URL"].startswith("postgresql://postgres:")


def test_the_gateway_serves_postgrest_at_rest_v1_with_kongs_key_check(running: dict[str, str]) -> None:
    url, anon = running["SUPABASE_URL"], running["SUPABASE_ANON_KEY"]
    listed = httpx.get(f"{url}/rest/v1/", headers={"apikey": anon})
    assert listed.status_code == 200 and "swagger" in listed.text
    missing = httpx.get(f"{url}/rest/v1/")
    assert missing.status_code == 401 and missing.json() == {"message": "No API key found in request"}
    wrong = httpx.get(
        f"{url}/rest/v1/",
        headers={"apikey": keys.api_key("not-the-secret-not-the-secret-not-the-secret", "anon")},
    )
    assert wrong.status_code == 401 and wrong.json() == {"message": "Invalid authentication credentials"}
    forged = httpx.get(
        f"{url}/rest/v1/credit_config",
        headers={
            "apikey": anon,
            "Authorization": "Bearer "
            + keys.api_key("forged-secret-forged-secret-forged-secret", "service_role"),
        },
    )
    assert forged.status_code == 401  # PostgREST rejects a token signed with another secret


def test_up_on_a_running_stack_changes_nothing(running: dict[str, str], dev_dir: Path) -> None:
    pid_before = read_pid(dev_dir / "run" / "postgrest.pid")
    again = mycelium("dev", "up", "--dir", str(dev_dir))
    assert again.returncode == 0 and "already running" in again.stdout
    assert read_pid(dev_dir / "run" / "postgrest.pid") == pid_before
    assert json.loads(mycelium("dev", "env", "--dir", str(dev_dir), "--json").stdout) == running

    status = mycelium("dev", "status", "--dir", str(dev_dir), "--json")
    assert status.returncode == 0  # Auth, which the stack does not start, is shown but not counted
    assert {row["name"]: row["running"] for row in json.loads(status.stdout)} == {
        "postgres": True,
        "postgrest": True,
        "gateway": True,
        "auth": False,
    }


def test_without_auth_the_gateway_and_status_say_why(
    running: dict[str, str], dev_dir: Path, auth_cache: dict[str, str]
) -> None:
    answer = httpx.get(f"{running['SUPABASE_URL']}/auth/v1/token", params={"grant_type": "password"})
    assert answer.status_code == 503
    assert answer.json() == {
        "message": f"Supabase Auth (GoTrue) {VERSIONS.auth_version} is not part of the local stack "
        f"({AUTH_REASON_AS_SERVED}); set auth_upstream in the stack to the URL of a running server"
    }

    status = mycelium("dev", "status", "--dir", str(dev_dir), "--json", env=auth_cache)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [sorted(row) for row in rows] == [["address", "detail", "name", "running", "version"]] * 4
    assert rows[-1] == {
        "name": "auth",
        "running": False,
        "address": "",
        "version": VERSIONS.auth_version,
        "detail": AUTH_REASON,
    }
    shown = mycelium("dev", "status", "--dir", str(dev_dir), env={**auth_cache, "COLUMNS": "300"})
    (auth_line,) = [line for line in shown.stdout.splitlines() if line.lstrip("│ ").startswith("auth ")]
    assert VERSIONS.auth_version in auth_line and f"not running: {AUTH_REASON}" in auth_line


def test_status_shows_the_auth_upstream_and_whether_it_answers(
    running: dict[str, str], dev_dir: Path
) -> None:
    stack = LocalStack(dev_dir)
    try:
        stack.set_upstreams(auth=running["SUPABASE_URL"], realtime=None)  # any HTTP server answers
        assert (stack.auth_status().running, stack.auth_status().address) == (True, running["SUPABASE_URL"])
        silent = f"http://127.0.0.1:{free_port_base(start=56000) + 1}"
        stack.set_upstreams(auth=silent, realtime=None)
        assert stack.auth_status().state == "not running: auth_upstream does not answer"
    finally:
        stack.set_upstreams(auth=None, realtime=None)


def test_user_create_inserts_like_gotrue_and_its_token_works_through_postgrest(
    running: dict[str, str], dev_dir: Path
) -> None:
    created = mycelium(
        "dev", "user", "create", "Dev.User@Example.test", "--role", "farmer", "--dir", str(dev_dir), "--json"
    )
    assert created.returncode == 0, created.stderr
    user = json.loads(created.stdout)
    assert user["email"] == "dev.user@example.test"
    claims = keys.decode(user["access_token"], running["SUPABASE_JWT_SECRET"])
    assert (claims["sub"], claims["role"], claims["aud"]) == (user["id"], "authenticated", "authenticated")

    minted = mycelium("dev", "token", "dev.user@example.test", "--dir", str(dev_dir))
    assert minted.returncode == 0
    headers = {"apikey": running["SUPABASE_ANON_KEY"], "Authorization": f"Bearer {minted.stdout.strip()}"}
    roles = httpx.get(
        f"{running['SUPABASE_URL']}/rest/v1/user_roles", params={"select": "user_id,role"}, headers=headers
    )
    assert roles.status_code == 200, roles.text
    assert loads(roles.text) == [{"user_id": user["id"], "role": "farmer"}]

    duplicate = mycelium("dev", "user", "create", "dev.user@example.test", "--dir", str(dev_dir))
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr


def test_postgrest_reaches_the_database_through_a_unix_socket_that_still_wants_a_password(
    running: dict[str, str], dev_dir: Path
) -> None:
    stack = LocalStack(dev_dir)
    assert stack.socket_dir == (dev_dir / "run").resolve()
    assert (stack.socket_dir / f".s.PGSQL.{stack.db_port}").is_socket()
    assert "host=" in (dev_dir / "run" / "postgrest.conf").read_text()

    with psycopg.connect(stack.superuser_db_url) as conn:
        pooled = conn.execute(
            "select count(*), count(client_addr) from pg_stat_activity where usename = 'authenticator'"
        ).fetchone()
    assert pooled is not None and pooled[0] > 0 and pooled[1] == 0  # no client address: the socket

    with psycopg.connect(stack.local_db_url()) as conn:
        row = conn.execute("select current_user, inet_client_addr()").fetchone()
    assert row == ("postgres", None)
    without_password = f"host={stack.socket_dir} port={stack.db_port} dbname=postgres user=postgres"
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(without_password, connect_timeout=5)


def test_a_stack_folder_that_cannot_hold_a_socket_uses_loopback_only(tmp_path: Path) -> None:
    assert socket_folder(Path("/srv/stack/run"), 54322) == Path("/srv/stack/run")
    assert socket_folder(Path("/srv/" + "x" * 90 + "/run"), 54322) is None  # longer than a socket path may be
    for unsafe in ("/srv/my stack/run", "/srv/a,b/run", "/srv/it's/run"):
        assert socket_folder(Path(unsafe), 54322) is None

    stack = LocalStack(tmp_path / ("deep-" * 20) / "stack")
    stack._save(StackSettings.generate(54320))
    assert stack.socket_dir is None
    assert stack.local_db_url() == stack.db_url
    assert stack.local_db_url().startswith("postgresql://postgres:") and "@127.0.0.1:54322/" in stack.db_url


def test_keys_generates_a_matching_secret_and_keys() -> None:
    generated = json.loads(mycelium("dev", "keys", "--json").stdout)
    assert keys.decode(generated["ANON_KEY"], generated["JWT_SECRET"])["role"] == "anon"
    assert keys.decode(generated["SERVICE_ROLE_KEY"], generated["JWT_SECRET"])["role"] == "service_role"


def test_clear_messages_for_a_missing_postgrest_and_a_busy_port(tmp_path: Path) -> None:
    folder = stack_folder("mycelium-bad-")
    try:
        no_binary = mycelium(
            "dev",
            "up",
            "--dir",
            str(folder / "a"),
            "--port-base",
            str(free_port_base(start=49000)),
            env={"MYCELIUM_POSTGREST_BIN": str(tmp_path / "no-postgrest")},
        )
        assert no_binary.returncode == 2 and "MYCELIUM_POSTGREST_BIN" in no_binary.stderr
        assert "Traceback" not in no_binary.stderr
        mycelium("dev", "down", "--dir", str(folder / "a"))

        no_postgres = mycelium(
            "dev",
            "up",
            "--dir",
            str(folder / "c"),
            "--port-base",
            str(free_port_base(start=50000)),
            env={"MYCELIUM_PG_INITDB": str(tmp_path / "no-initdb")},
        )
        assert no_postgres.returncode == 2 and "MYCELIUM_PG_INITDB" in no_postgres.stderr
        assert "Traceback" not in no_postgres.stderr

        base = free_port_base(start=51000)
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", base + 2))
            squatter.listen()
            busy = mycelium("dev", "up", "--dir", str(folder / "b"), "--port-base", str(base))
        assert busy.returncode == 2
        assert (
            f"port {base + 2} (PostgreSQL) is already in use" in busy.stderr and "--port-base" in busy.stderr
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_down_stops_everything_and_up_brings_the_same_stack_back(
    running: dict[str, str], dev_dir: Path
) -> None:
    pids = [
        read_pid(dev_dir / "run" / "postgrest.pid"),
        read_pid(dev_dir / "gateway" / "nginx.pid"),
        read_pid(dev_dir / "postgres" / "postmaster.pid"),
    ]
    ports = [int(running["SUPABASE_URL"].rsplit(":", 1)[1]) + offset for offset in range(0, 4)]

    down = mycelium("dev", "down", "--dir", str(dev_dir))
    assert down.returncode == 0 and "Stopped: gateway, postgrest, postgres." in down.stdout
    assert not any(pid_alive(pid) for pid in pids)
    assert not any(port_open(port) for port in ports)
    assert mycelium("dev", "status", "--dir", str(dev_dir)).returncode == 1

    up = mycelium("dev", "up", "--dir", str(dev_dir))
    assert up.returncode == 0, up.stderr
    assert json.loads(mycelium("dev", "env", "--dir", str(dev_dir), "--json").stdout) == running
    listed = httpx.get(
        f"{running['SUPABASE_URL']}/rest/v1/", headers={"apikey": running["SUPABASE_ANON_KEY"]}
    )
    assert listed.status_code == 200 and "swagger" in listed.text


def test_reset_gives_a_fresh_database_with_the_same_keys(running: dict[str, str], dev_dir: Path) -> None:
    created = mycelium("dev", "user", "create", "before-reset@example.test", "--dir", str(dev_dir))
    assert created.returncode == 0, created.stderr
    reset = mycelium("dev", "reset", "--yes", "--dir", str(dev_dir))
    assert reset.returncode == 0, reset.stderr
    gone = mycelium("dev", "token", "before-reset@example.test", "--dir", str(dev_dir))
    assert gone.returncode == 1 and "no user before-reset@example.test" in gone.stderr
    assert json.loads(mycelium("dev", "env", "--dir", str(dev_dir), "--json").stdout) == running


def test_user_commands_on_a_stopped_stack_say_in_one_line_that_they_cannot_connect(tmp_path: Path) -> None:
    stopped = LocalStack(tmp_path / "stack")
    stopped._save(StackSettings.generate(free_port_base(start=52000)))  # its settings, no server
    for command in (("user", "create", "nobody@example.test"), ("token", "nobody@example.test")):
        ran = mycelium("dev", *command, "--dir", str(stopped.directory))
        assert ran.returncode == 2, ran.stderr
        said = ran.stderr.strip()
        assert said.startswith("error: cannot connect to the database") and len(said.splitlines()) == 1, said


def test_reset_asks_on_stderr_so_that_json_output_stays_clean(tmp_path: Path) -> None:
    declined = mycelium("dev", "reset", "--json", "--dir", str(tmp_path / "stack"), answer="n\n")
    assert declined.returncode == 1
    assert declined.stdout == ""
    assert "Delete every row of the local database?" in declined.stderr and "Traceback" not in declined.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's stack runs its servers as another OS user")
def test_as_root_a_stack_folder_the_servers_cannot_reach_moves_where_they_can() -> None:
    """A clone under /root (mode 700): `.mycelium` becomes a link to a folder under STACKS_HOME."""
    folder = stack_folder("mycelium-private-")
    clone = folder / "clone"
    clone.mkdir()
    clone.chmod(0o700)
    link = clone / ".mycelium"
    try:
        up = mycelium("dev", "up", "--dir", str(link), "--port-base", str(free_port_base(start=53000)))
        assert up.returncode == 0, up.stderr
        target = link.resolve()
        assert link.is_symlink() and target.parent == STACKS_HOME
        assert stat.S_IMODE(target.stat().st_mode) == 0o755
        assert f"{link} links to {target}" in " ".join(up.stderr.split())
        # The servers were given the folder they can reach, never the path through /root.
        assert f"host={target / 'run'}" in (target / "run" / "postgrest.conf").read_text()
        status = mycelium("dev", "status", "--dir", str(link), "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        again = mycelium("dev", "up", "--dir", str(link))
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        mycelium("dev", "down", "--dir", str(link))
        if link.is_symlink():
            shutil.rmtree(link.resolve(), ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
