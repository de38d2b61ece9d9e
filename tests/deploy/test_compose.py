"""docker-compose.supabase.yml and supabase/: the single-node Supabase, checked without Docker.

Against the Compose specification's own JSON schema, against the files it references, against
supabase/.env.example, and against the gateway config rendered here by the very shell step the
Kong container runs.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import jwt
import psycopg
import pytest

from cli.api import parse_duration
from cli.dev.gateway import Limits
from cli.dev.postgrest import MAX_ROWS, TRACE_HEADER
from cli.keys import API_KEY_LIFETIME_SECONDS, ApiKeys, decode
from cli.migrations import bundled_sql_dir
from tests.support import REPO
from tests.support.deploy import (
    BACKUP_SCRIPT,
    BACKUPS_IN_CONTAINERS,
    COMPOSE_FILE,
    DEPLOY_DOC,
    ENV_EXAMPLE,
    JWT_LIKE,
    KONG_CONFIG,
    KONG_KEY_VARIABLES,
    MIGRATE_DOCKERFILE,
    MIGRATE_IMAGE,
    RESTORE_SCRIPT,
    SQL_DIR_IN_IMAGE,
    WAL_ARCHIVE_IN_CONTAINERS,
    assert_kong_limits,
    assert_kong_serves_supabase_paths,
    image_tag,
    is_pinned,
    kong_plugins,
    kong_script_from_compose_entrypoint,
    kong_upstreams,
    load_yaml,
    option_value,
    package_version,
    postgres_settings,
    render_kong_config,
    scratch_postgres,
    shared_file,
    walk_strings,
)
from tests.support.gateway_queries import (
    ANON_ALLOWED,
    ANON_REFUSED,
    JSON_MEDIA_TYPES,
    NOT_UTF8,
    OTHER_MEDIA_TYPES,
)

# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error},
# ${VAR:+alt} and $VAR; $$ is a literal dollar sign.
INTERPOLATION = re.compile(
    r"\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)

# Services whose image cannot run a healthcheck, and why; everything else must have one.
NO_HEALTHCHECK = {
    "rest": "postgrest/postgrest ships the binary alone: no shell, no HTTP client",
    "migrate": "a one-shot job: others wait for it to complete, not to be healthy",
    "upkeep": "nothing depends on it, and each round logs its outcome (a failed one is retried)",
    "backup": "a one-shot job run from cron: its exit status is its outcome",
    "loki": "nothing waits for it: the shipper retries its pushes, Grafana its queries",
    "alloy": "nothing depends on it, and Loki's own metrics show its pushes",
    "jaeger": "nothing waits for it: OpenTelemetry exporters drop or retry their spans",
}
# Everything published to the host, and on which address (None: all interfaces).
PUBLISHED = {"kong": None, "studio": "127.0.0.1"}
PUBLISHED_WITH_PROFILE = {
    "metrics": "127.0.0.1",
    "prometheus": "127.0.0.1",
    "jaeger": "127.0.0.1",
    "grafana": "127.0.0.1",
}
# Host paths the compose file mounts, besides the repository's files.
HOST_PATHS = {"/var/run/docker.sock": "the log shipper reads the containers' logs through Docker"}
# The `observability` profile's services.
OBSERVABILITY = {"prometheus", "loki", "alloy", "jaeger", "grafana"}
# Secrets .env.example must leave empty: the operator generates them.
SECRET_VARIABLES = {
    "POSTGRES_PASSWORD",
    "JWT_SECRET",
    "ANON_KEY",
    "SERVICE_ROLE_KEY",
    "SECRET_KEY_BASE",
    "REALTIME_DB_ENC_KEY",
    "PG_META_CRYPTO_KEY",
    "SMTP_PASS",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def used_variables(node: Any) -> set[str]:
    found = set()
    for text in walk_strings(node):
        for match in INTERPOLATION.finditer(text.replace("$$", "")):
            found.add(match["braced"] or match["bare"])
    return found


def documented_variables() -> dict[str, tuple[str, list[str]]]:
    """Each variable of .env.example with its value and the comment lines right above it."""
    found: dict[str, tuple[str, list[str]]] = {}
    comments: list[str] = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            comments.append(line.lstrip("# ").strip())
        elif "=" in line:
            name, value = line.split("=", 1)
            assert name not in found, f"{name} is defined twice in .env.example"
            found[name] = (value, [c for c in comments if c and not c.startswith("###")])
            comments = []
        else:
            comments = []
    return found


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host source, container target) of the service's bind mounts (short syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


# ---------------------------------------------------------------------------------------------
# The file itself
# ---------------------------------------------------------------------------------------------


def compose_validator() -> jsonschema.Draft7Validator:
    # The specification's schema is draft 7; its $schema URL lacks the trailing `#` that
    # jsonschema uses to recognise the draft, so name the draft here.
    schema = json.loads(shared_file("schemas/compose-spec.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_validates_against_the_compose_specification(compose: dict[str, Any]) -> None:
    errors = sorted(compose_validator().iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_broken_file(compose: dict[str, Any]) -> None:
    """The validation above is live: a misspelt key and a wrong depends_on condition fail it."""
    validator = compose_validator()
    broken = json.loads(json.dumps(compose))
    broken["services"]["db"]["helthcheck"] = broken["services"]["db"].pop("healthcheck")
    broken["services"]["auth"]["depends_on"]["db"]["condition"] = "service_ready"
    paths = {"/".join(map(str, e.absolute_path)) for e in validator.iter_errors(broken)}
    assert "services/db" in paths
    assert any(path.startswith("services/auth/depends_on") for path in paths)


def test_the_stack_has_the_services_mycelium_uses(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {
        "db",
        "auth",
        "rest",
        "realtime",
        "kong",
        "meta",
        "studio",
        "migrate",
        "metrics",
        "upkeep",
        "backup",
        *OBSERVABILITY,
    }
    assert services["db"]["image"].startswith("supabase/postgres:15.")
    assert services["rest"]["image"].startswith("postgrest/postgrest:v12.")
    assert services["auth"]["image"].split(":")[0] in {"supabase/gotrue", "supabase/auth"}


def test_every_file_the_compose_file_references_exists(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for source, _ in bind_mounts(service):
            if source in HOST_PATHS:
                continue
            assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
        if build := service.get("build"):
            context = REPO / build["context"]
            assert context.is_dir(), f"{name}: build context {context} missing"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
        for env_file in service.get("env_file", []):
            assert (REPO / env_file).is_file(), f"{name}: env_file {env_file} missing"


def test_every_image_is_pinned_to_a_version(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service["image"]
        assert "$" not in image, f"{name}: the image must not depend on the environment"
        assert is_pinned(image), f"{name}: {image} is not pinned to a version"
    base_images = re.findall(r"^FROM\s+(\S+)", MIGRATE_DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert base_images and all(is_pinned(image) for image in base_images), base_images


def test_the_mycelium_image_is_tagged_with_the_package_version(services: dict[str, dict[str, Any]]) -> None:
    for name in ("migrate", "metrics", "upkeep"):
        image = services[name]["image"]
        assert image.rsplit(":", 1)[0] == MIGRATE_IMAGE
        assert image_tag(image) == package_version(), f"{name}: bump the image tag with pyproject.toml"
        # Built from this checkout, never pulled: a dev stack runs the code it sits next to.
        assert services[name]["pull_policy"] == "build"


# ---------------------------------------------------------------------------------------------
# Variables and secrets
# ---------------------------------------------------------------------------------------------


def test_every_variable_the_compose_file_uses_is_documented(compose: dict[str, Any]) -> None:
    documented = documented_variables()
    used = used_variables(compose)
    assert used - set(documented) == set(), "used by the compose file but missing from .env.example"
    assert set(documented) - used == set(), "in .env.example but used by nothing"
    for name, (_, comments) in documented.items():
        assert comments, f"{name} has no comment above it in .env.example"


def test_the_env_example_commits_no_secret() -> None:
    documented = documented_variables()
    for name in SECRET_VARIABLES:
        assert documented[name][0] == "", f"{name} must be empty in .env.example (generate it)"
    for path in (ENV_EXAMPLE, COMPOSE_FILE, KONG_CONFIG):
        assert not JWT_LIKE.search(path.read_text(encoding="utf-8")), f"{path} holds what looks like a JWT"
    assert ".env" in (REPO / "supabase" / ".gitignore").read_text(encoding="utf-8").split()


def test_the_stack_refuses_to_start_without_its_secrets(compose: dict[str, Any]) -> None:
    """Each generated secret is required (${VAR:?...}) somewhere, so compose stops with a message
    instead of starting a stack with an empty JWT secret or password."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for name in SECRET_VARIABLES - {"SMTP_PASS"}:
        required = re.search(r"\$\{" + name + r":\?[^}]+\}", text)
        assert required, f"{name} is never required with ${{{name}:?...}}"


def test_generated_keys_verify_with_their_secret_and_carry_supabases_claims() -> None:
    keys = ApiKeys.generate()
    assert len(keys.jwt_secret) >= 32
    for token, role in ((keys.anon_key, "anon"), (keys.service_role_key, "service_role")):
        assert jwt.get_unverified_header(token)["alg"] == "HS256"
        claims = jwt.decode(token, keys.jwt_secret, algorithms=["HS256"])
        assert set(claims) == {"role", "iss", "iat", "exp"}
        assert claims["role"] == role
        assert claims["iss"] == "supabase"
        assert isinstance(claims["iat"], int)
        assert claims["exp"] - claims["iat"] == API_KEY_LIFETIME_SECONDS
        assert decode(token, keys.jwt_secret) == claims
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(token, ApiKeys.generate().jwt_secret, algorithms=["HS256"])
    # A fresh secret each time, unless one is given: then the keys are reproducible for it.
    assert ApiKeys.generate().jwt_secret != keys.jwt_secret
    again = ApiKeys.generate(keys.jwt_secret)
    assert jwt.decode(again.anon_key, keys.jwt_secret, algorithms=["HS256"])["role"] == "anon"


# ---------------------------------------------------------------------------------------------
# Start order, health, exposure, storage
# ---------------------------------------------------------------------------------------------


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    without = {name for name, service in services.items() if "healthcheck" not in service}
    assert without == set(NO_HEALTHCHECK)


def test_services_wait_for_their_dependencies_to_be_healthy(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            expected = {
                "migrate": "service_completed_successfully",
                "rest": "service_started",
            }.get(dependency, "service_healthy")
            assert rule["condition"] == expected, f"{name} -> {dependency}: expected {expected}"


def test_the_stack_starts_in_order(services: dict[str, dict[str, Any]]) -> None:
    order: list[str] = []
    pending = {name: set(service.get("depends_on", {})) for name, service in services.items()}
    while pending:
        ready = sorted(name for name, needs in pending.items() if needs <= set(order))
        assert ready, f"depends_on has a cycle among {sorted(pending)}"
        order.extend(ready)
        for name in ready:
            del pending[name]
    assert next(name for name in order if not services[name].get("profiles")) == "db"
    # The business rules need the schemas Auth and Realtime create on their first start.
    assert order.index("migrate") > max(order.index("auth"), order.index("realtime"))
    assert order.index("kong") > max(order.index(s) for s in ("auth", "rest", "realtime"))


def test_only_the_gateway_and_studio_are_published_on_configurable_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    default_profile = {name for name in published if not services[name].get("profiles")}
    assert default_profile == set(PUBLISHED)
    assert set(published) - default_profile == set(PUBLISHED_WITH_PROFILE)
    for name, ports in published.items():
        (port,) = ports
        *host_parts, _container = port.split(":")
        host_ip = host_parts[0] if len(host_parts) == 2 else None
        assert host_ip == {**PUBLISHED, **PUBLISHED_WITH_PROFILE}[name], f"{name} published on {port}"
        assert re.fullmatch(r"\$\{[A-Z_]+_PORT\}", host_parts[-1]), f"{name}: host port must be a variable"


def test_the_database_lives_on_a_named_volume(compose: dict[str, Any], services: dict[str, Any]) -> None:
    volumes = {v.split(":")[1]: v.split(":")[0] for v in services["db"]["volumes"]}
    data = volumes["/var/lib/postgresql/data"]
    assert data in compose["volumes"], "the data directory must be a named volume, kept across re-creation"


def test_the_database_init_scripts_are_mounted_where_the_image_runs_them(services: dict[str, Any]) -> None:
    init_scripts = [
        (s, t) for s, t in bind_mounts(services["db"]) if t.startswith("/docker-entrypoint-initdb.d/")
    ]
    assert init_scripts
    for source, _ in init_scripts:
        assert source.endswith(".sql") and (REPO / source).is_file()
    # Besides them, only the restore script (a restore runs in a one-off container of the service).
    others = set(bind_mounts(services["db"])) - set(init_scripts)
    assert {(REPO / source).resolve() for source, _ in others} == {RESTORE_SCRIPT}


# ---------------------------------------------------------------------------------------------
# Backups: WAL archiving, base backups, point-in-time restores (tests/stack/test_backup_drill.py
# runs the same archive_command and scripts against a local stack and restores from them)
# ---------------------------------------------------------------------------------------------


def named_volumes(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (named volume, read-only) of the service's named volumes."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if not source.startswith((".", "/")):
            found[target] = (source, mode == ["ro"])
    return found


def test_the_database_archives_every_wal_segment_to_a_volume_of_its_own(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    db = services["db"]
    settings = postgres_settings(db["command"])
    assert settings["archive_mode"] == "on"
    # Never overwrites a segment already archived; a segment is complete once it has its name.
    command = settings["archive_command"]
    assert command.startswith(f"test ! -f {WAL_ARCHIVE_IN_CONTAINERS}/%f && ")
    assert command.endswith(f"mv {WAL_ARCHIVE_IN_CONTAINERS}/%f.part {WAL_ARCHIVE_IN_CONTAINERS}/%f")
    assert 0 < int(settings["archive_timeout"]) <= 300, "a quiet database archives at least every 5 minutes"
    archive, read_only = named_volumes(db)[WAL_ARCHIVE_IN_CONTAINERS]
    assert archive in compose["volumes"] and not read_only
    assert archive != named_volumes(db)["/var/lib/postgresql/data"][0]
    # The volume is created root's; the wrapper gives it to postgres, then runs the image's own
    # entrypoint with the command, and lets base backups replicate over the stack's network.
    bash, dash_c, wrapper, name = db["entrypoint"]
    assert (bash, dash_c, name) == ("bash", "-c", "docker-entrypoint.sh")
    assert f"install -d -o postgres -g postgres -m 700 {WAL_ARCHIVE_IN_CONTAINERS} &&" in wrapper
    assert wrapper.endswith('exec docker-entrypoint.sh "$$@"')
    assert db["environment"]["BACKUP_HBA"] == "host replication supabase_admin samenet scram-sha-256"
    assert '$$BACKUP_HBA" >> /etc/postgresql/pg_hba.conf' in wrapper


def test_the_database_logs_one_json_object_a_line_to_a_volume_of_its_own(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    """The compose file's log settings, run on a real PostgreSQL 15: the logging collector writes
    jsonlog files the shipper can read, and a refused connection (FATAL, which the compose file
    still logs) is there as JSON with its severity."""
    db = services["db"]
    settings = postgres_settings(db["command"])
    assert (settings["logging_collector"], settings["log_destination"]) == ("on", "jsonlog")
    folder = settings["log_directory"]
    volume, read_only = named_volumes(db)[folder]
    assert volume in compose["volumes"] and not read_only
    assert f"install -d -o postgres -g postgres -m 750 {folder} &&" in db["entrypoint"][2]

    logging = {name: value for name, value in settings.items() if name.startswith("log")}
    # Relative to the scratch server's data folder.
    with scratch_postgres({**logging, "log_directory": "json-logs"}) as (connection, base):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**connection, dbname="no_such_database").close()
        written = base / "data" / "json-logs"
        deadline = time.monotonic() + 30
        records: list[dict[str, Any]] = []
        while not any(r.get("error_severity") == "FATAL" for r in records) and time.monotonic() < deadline:
            time.sleep(0.2)
            lines = [line for path in written.glob("*.json") for line in path.read_text().splitlines()]
            records = [json.loads(line) for line in lines]
    refused = [r for r in records if r.get("error_severity") == "FATAL"]
    assert refused and 'database "no_such_database" does not exist' in refused[0]["message"]
    assert all(record.get("error_severity") for record in records)


def test_the_backup_service_takes_base_backups_next_to_the_archive(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    backup, db = services["backup"], services["db"]
    assert backup["profiles"] == ["backup"] and backup["restart"] == "no"
    assert backup["image"] == db["image"], "pg_basebackup of the server's own version"
    assert backup["depends_on"] == {"db": {"condition": "service_healthy"}}
    mounted = {target: (REPO / source).resolve() for source, target in bind_mounts(backup)}
    (script_path,) = [path for path, source in mounted.items() if source == BACKUP_SCRIPT]
    assert backup["entrypoint"][-1].endswith(f"exec gosu postgres bash {script_path}")
    environment = backup["environment"]
    assert (environment["PGHOST"], environment["PGUSER"]) == ("db", "supabase_admin")
    assert environment["PGPASSWORD"] == "${POSTGRES_PASSWORD}"
    assert int(environment["KEEP_DAYS"]) >= 7
    volumes = named_volumes(backup)
    # The script's defaults are the folders mounted here and in the database's containers.
    script = BACKUP_SCRIPT.read_text(encoding="utf-8")
    assert "${BACKUP_DIR:-" + BACKUPS_IN_CONTAINERS + "}" in script
    assert "${WAL_ARCHIVE:-" + WAL_ARCHIVE_IN_CONTAINERS + "}" in script
    assert volumes[BACKUPS_IN_CONTAINERS] == (named_volumes(db)[BACKUPS_IN_CONTAINERS][0], False)
    assert volumes[WAL_ARCHIVE_IN_CONTAINERS] == (named_volumes(db)[WAL_ARCHIVE_IN_CONTAINERS][0], False)
    assert named_volumes(db)[BACKUPS_IN_CONTAINERS][1], "the database only reads the backups"
    assert volumes[BACKUPS_IN_CONTAINERS][0] in compose["volumes"]


def test_restores_read_what_the_backups_write(services: dict[str, Any]) -> None:
    restore = RESTORE_SCRIPT.read_text(encoding="utf-8")
    assert "${BACKUP_DIR:-" + BACKUPS_IN_CONTAINERS + "}" in restore
    assert "${WAL_ARCHIVE:-" + WAL_ARCHIVE_IN_CONTAINERS + "}" in restore
    assert "${PGDATA:-/var/lib/postgresql/data}" in restore
    # archive_command gzips each segment; restore_command unzips it.
    archive_command = postgres_settings(services["db"]["command"])["archive_command"]
    assert "gzip < %p > " in archive_command
    assert "restore_command = 'gunzip < $archive/%f > %p'" in restore
    for script in (BACKUP_SCRIPT, RESTORE_SCRIPT):
        checked = subprocess.run(["bash", "-n", script], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr
    # The guide runs them where the compose file mounts them.
    guide = DEPLOY_DOC.read_text(encoding="utf-8")
    (restore_path,) = [t for s, t in bind_mounts(services["db"]) if (REPO / s).resolve() == RESTORE_SCRIPT]
    assert f"--entrypoint bash db \\\n  {restore_path} " in guide
    assert "--profile backup run --rm backup" in guide


# ---------------------------------------------------------------------------------------------
# The gateway
# ---------------------------------------------------------------------------------------------


def test_kong_yml_is_safe_for_the_shell_that_renders_it() -> None:
    """The container pushes kong.yml through `eval "echo \\"...\\""`: a double quote, a backquote
    or any other dollar sign would be executed or eaten by that shell."""
    text = KONG_CONFIG.read_text(encoding="utf-8")
    assert '"' not in text and "`" not in text
    variables = set(re.findall(r"\$(\w+)", text))
    assert variables == set(KONG_KEY_VARIABLES)
    assert "$(" not in text and "${" not in text


def test_kong_routes_cover_rest_auth_and_realtime_with_the_key_acls_and_the_limits(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    kong = services["kong"]
    keys = ApiKeys.generate()
    env = {"SUPABASE_ANON_KEY": keys.anon_key, "SUPABASE_SERVICE_KEY": keys.service_role_key}
    # The keys reach Kong from the same variables the rest of the stack uses.
    assert kong["environment"]["SUPABASE_ANON_KEY"] == "${ANON_KEY}"
    assert kong["environment"]["SUPABASE_SERVICE_KEY"].startswith("${SERVICE_ROLE_KEY")
    (source, target) = bind_mounts(kong)[0]
    assert REPO / source == KONG_CONFIG and target == "/home/kong/temp.yml"

    script = kong_script_from_compose_entrypoint(kong["entrypoint"])
    config = render_kong_config(script, KONG_CONFIG, tmp_path, env)
    assert_kong_serves_supabase_paths(config, env)
    assert_kong_limits(config, env, kong["environment"]["KONG_PLUGINS"])
    # Kong's own refusals (its nginx's 400, 413, 414) are JSON, as the local gateway's are.
    assert kong["environment"]["KONG_ERROR_DEFAULT_TYPE"] == "application/json"


# What Kong's PDK gives a pre-function snippet, as far as ours use it: the request's method, path,
# headers and query string, and what the snippet does to the request printed one line per call.
KONG_PDK = """
kong = {
  request = {
    get_header = function(name) return HEADERS[name] end,
    get_raw_query = function() return QUERY end,
    get_method = function() return METHOD end,
    get_path = function() return PATH end,
  },
  service = {
    request = {set_header = function(name, value) print("set_header " .. name .. ": " .. value) end},
  },
  response = {exit = function(status, body) print("exit " .. status .. " " .. body.code) end},
}
"""


def lua_bytes(text: str) -> str:
    """A Lua string literal of `text`, one byte a character (above ASCII: raw bytes)."""
    return '"' + "".join(c if " " <= c <= "~" and c not in '"\\' else f"\\{ord(c):03d}" for c in text) + '"'


def run_kong_lua(
    code: str,
    headers: dict[str, str],
    query: str,
    tmp_path: Path,
    *,
    method: str = "GET",
    path: str = "/rest/v1/products",
) -> list[str]:
    """What `code` does to a `method` request of `path` with `headers` (lower-case names) and
    `query` (one byte a character), run by LuaJIT."""
    luajit = shutil.which("luajit")
    if luajit is None:
        pytest.skip("luajit is not installed (`./run setup` installs it): Kong's Lua cannot run here")
    table = ", ".join(f"[{json.dumps(name)}] = {json.dumps(value)}" for name, value in headers.items())
    script = tmp_path / "snippet.lua"
    script.write_text(
        f"HEADERS = {{{table}}}\nQUERY = {lua_bytes(query)}\nMETHOD = {lua_bytes(method)}\n"
        f"PATH = {lua_bytes(path)}\n{KONG_PDK}\n"
        f"assert(loadstring({json.dumps(code)}))()\n",
        encoding="utf-8",
    )
    ran = subprocess.run([luajit, str(script)], capture_output=True, text=True, timeout=10)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.splitlines()


def test_kongs_lua_makes_a_caller_without_token_anon_and_holds_anon_queries_to_the_allowance(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    keys = ApiKeys.generate()
    env = {"SUPABASE_ANON_KEY": keys.anon_key, "SUPABASE_SERVICE_KEY": keys.service_role_key}
    script = kong_script_from_compose_entrypoint(services["kong"]["entrypoint"])
    config = render_kong_config(script, KONG_CONFIG, tmp_path, env)

    (_encoding, _media, rewrite) = kong_plugins(config)["pre-function"]["rewrite"]
    anon = {"apikey": keys.anon_key}
    assert run_kong_lua(rewrite, anon, "", tmp_path) == [f"set_header authorization: Bearer {keys.anon_key}"]
    for kept in ({**anon, "authorization": "Bearer user-token"}, {"apikey": keys.service_role_key}):
        assert run_kong_lua(rewrite, kept, "", tmp_path) == []

    (anon_route,) = [r for s in config["services"] for r in s["routes"] if r["name"] == "rest-v1-anon"]
    (check,) = kong_plugins(anon_route)["pre-function"]["access"]
    allowance = Limits().anon_query_bytes
    assert run_kong_lua(check, anon, "a" * allowance, tmp_path) == []
    assert run_kong_lua(check, anon, "a" * (allowance + 1), tmp_path) == ["exit 414 query_too_long"]
    body_allowance = Limits().anon_body_bytes
    assert run_kong_lua(check, {**anon, "content-length": str(body_allowance)}, "", tmp_path) == []
    too_long = {**anon, "content-length": str(body_allowance + 1)}
    assert run_kong_lua(check, too_long, "", tmp_path, method="POST") == ["exit 413 body_too_large"]


def test_kongs_lua_refuses_a_body_that_is_not_json_as_the_local_gateway_does(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The media types tests/security/test_bad_requests.py sends through the local stack's nginx,
    on every method that may carry a body; reads and other paths are not judged."""
    keys = ApiKeys.generate()
    env = {"SUPABASE_ANON_KEY": keys.anon_key, "SUPABASE_SERVICE_KEY": keys.service_role_key}
    config = render_kong_config(
        kong_script_from_compose_entrypoint(services["kong"]["entrypoint"]), KONG_CONFIG, tmp_path, env
    )
    (_encoding, media, _rewrite) = kong_plugins(config)["pre-function"]["rewrite"]

    def judged(
        media_type: str | None, method: str = "POST", path: str = "/rest/v1/rpc/tfc_to_usd"
    ) -> list[str]:
        headers = {"apikey": keys.anon_key} | ({"content-type": media_type} if media_type is not None else {})
        return run_kong_lua(media, headers, "", tmp_path, method=method, path=path)

    for method in ("POST", "PATCH", "PUT", "DELETE"):
        for media_type in OTHER_MEDIA_TYPES:
            assert judged(media_type, method) == ["exit 415 unsupported_media_type"], (method, media_type)
        for json_type in JSON_MEDIA_TYPES:
            assert judged(json_type, method) == [], (method, json_type)
    assert judged("text/csv", "GET") == []
    assert judged("application/x-www-form-urlencoded", path="/auth/v1/token") == []


def test_kongs_lua_judges_query_strings_as_the_local_gateway_does(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The cases tests/security/test_bad_requests.py sends through the local stack's nginx: every
    caller's query must be UTF-8, and an anonymous filter stays within the allowance."""
    keys = ApiKeys.generate()
    env = {"SUPABASE_ANON_KEY": keys.anon_key, "SUPABASE_SERVICE_KEY": keys.service_role_key}
    config = render_kong_config(
        kong_script_from_compose_entrypoint(services["kong"]["entrypoint"]), KONG_CONFIG, tmp_path, env
    )
    (encoding, _media, _rewrite) = kong_plugins(config)["pre-function"]["rewrite"]
    (anon_route,) = [r for s in config["services"] for r in s["routes"] if r["name"] == "rest-v1-anon"]
    (anon_check,) = kong_plugins(anon_route)["pre-function"]["access"]
    anon = {"apikey": keys.anon_key, "authorization": f"Bearer {keys.anon_key}"}
    for query in NOT_UTF8:
        assert run_kong_lua(encoding, anon, query, tmp_path) == ["exit 400 invalid_query_encoding"], query
    for query in [*ANON_REFUSED, *ANON_ALLOWED]:
        assert run_kong_lua(encoding, anon, query, tmp_path) == [], query
    for query, reason in ANON_REFUSED.items():
        assert run_kong_lua(anon_check, anon, query, tmp_path) == [f"exit 400 {reason}"], query
    for query in ANON_ALLOWED:
        assert run_kong_lua(anon_check, anon, query, tmp_path) == [], query


def test_kong_upstreams_are_services_of_the_stack(services: dict[str, dict[str, Any]]) -> None:
    reachable = set(services)
    for service in services.values():
        for network in (service.get("networks") or {}).values():
            reachable.update(network.get("aliases", []))
    for host, _port in kong_upstreams(load_yaml(KONG_CONFIG)):
        assert host in reachable, f"Kong sends requests to {host}, which no service answers to"


# ---------------------------------------------------------------------------------------------
# What an API request may make the database do
# ---------------------------------------------------------------------------------------------

STATEMENT_TIMEOUT = re.compile(r"alter role (\w+) set statement_timeout = '(\w+)';")


def test_every_bootstrap_gives_the_api_roles_supabases_statement_timeouts() -> None:
    """As the supabase/postgres image sets them; the dev stack and k3s run their own bootstrap,
    and compose's states them again over the image's."""
    for path in (
        REPO / "supabase" / "db" / "roles.sql",
        REPO / "deploy" / "k3s" / "supabase-init.sql",
        REPO / "cli" / "dev" / "supabase_bootstrap.sql",
    ):
        timeouts = dict(STATEMENT_TIMEOUT.findall(path.read_text(encoding="utf-8")))
        assert timeouts == {"anon": "3s", "authenticated": "8s", "authenticator": "8s"}, path


def test_postgrest_answers_at_most_a_page_of_rows_as_in_the_local_stack(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services["rest"]["environment"]["PGRST_DB_MAX_ROWS"] == str(MAX_ROWS)


def test_postgrest_answers_with_the_trace_context_of_the_request_as_in_the_local_stack(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services["rest"]["environment"]["PGRST_SERVER_TRACE_HEADER"] == TRACE_HEADER


# ---------------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------------


def test_migrate_pushes_the_same_sql_the_tests_push(services: dict[str, dict[str, Any]]) -> None:
    """The local stack of the tests pushes `bundled_sql_dir()`; the migrate service mounts that
    very folder and points `mycelium sql push --dir` at it."""
    migrate = services["migrate"]
    command = migrate["command"] if isinstance(migrate["command"], list) else shlex.split(migrate["command"])
    assert command[:2] == ["sql", "push"]
    pushed = option_value(command, "--dir")
    mounts = {target: (REPO / source).resolve() for source, target in bind_mounts(migrate)}
    assert mounts[pushed] == bundled_sql_dir().resolve()
    assert pushed == SQL_DIR_IN_IMAGE


def test_the_migrate_image_ships_the_same_sql_folder() -> None:
    """Without the mount (k3s), the image's own copy of sql/ is pushed from the same path."""
    dockerfile = MIGRATE_DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^COPY sql/ sql/$", dockerfile, re.MULTILINE)
    assert f"cp -r sql {SQL_DIR_IN_IMAGE}" in dockerfile
    assert f"ENV MYCELIUM_SQL_DIR={SQL_DIR_IN_IMAGE}" in dockerfile
    assert 'ENTRYPOINT ["mycelium"]' in dockerfile
    ignore = (MIGRATE_DOCKERFILE.parent / "migrate.Dockerfile.dockerignore").read_text(encoding="utf-8")
    assert "!sql/" in ignore.split()


def test_upkeep_runs_the_periodic_jobs_through_the_gateway_every_few_minutes(
    services: dict[str, dict[str, Any]],
) -> None:
    upkeep = services["upkeep"]
    command = upkeep["command"]
    assert command[0] == "upkeep"
    # Abandoned orders hold their buyers' credits until a round releases them.
    assert parse_duration(option_value(command, "--every"), "--every") <= timedelta(minutes=15)
    assert upkeep["environment"] == {
        "SUPABASE_URL": "http://kong:8000",
        "SUPABASE_SERVICE_ROLE_KEY": "${SERVICE_ROLE_KEY}",
        "MYCELIUM_LOG_FORMAT": "json",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "${OTEL_EXPORTER_OTLP_ENDPOINT:-}",
    }
    assert upkeep["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert upkeep["restart"] == "unless-stopped"


def test_migrate_connects_as_the_migration_role_to_the_stack_database(services: dict[str, Any]) -> None:
    url = services["migrate"]["environment"]["MYCELIUM_DB_URL"]
    # postgres is the role migrations run as on Supabase (not a superuser); no TLS inside the
    # compose network.
    assert re.fullmatch(r"postgres://postgres:\$\{POSTGRES_PASSWORD\}@db:5432/postgres\?sslmode=disable", url)


def test_auth_and_the_commands_send_their_traces_to_the_same_collector(
    services: dict[str, dict[str, Any]],
) -> None:
    auth = services["auth"]["environment"]
    # Auth refuses to start on an empty boolean: unset or empty is false.
    assert auth["GOTRUE_TRACING_ENABLED"] == "${TRACING_ENABLED:-false}"
    assert auth["GOTRUE_TRACING_EXPORTER"] == "opentelemetry"
    assert auth["OTEL_SERVICE_NAME"] == "auth"
    assert auth["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    for name in ("auth", "upkeep", "metrics"):
        endpoint = services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
        assert endpoint == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}", name
    # Off by default: without the observability profile nothing collects them. Its Jaeger takes
    # OTLP over HTTP on 4318, the address the comment gives.
    documented = documented_variables()
    assert documented["TRACING_ENABLED"][0] == "false"
    assert documented["OTEL_EXPORTER_OTLP_ENDPOINT"][0] == ""
    how = " ".join(documented["TRACING_ENABLED"][1])
    assert "TRACING_ENABLED=true and OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318" in how
    assert "observability" in services["jaeger"]["profiles"]
