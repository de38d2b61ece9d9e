"""What the deployment tests share: where things are, YAML loading, the gateway's config, image
pins, and a small offline `kustomize build`.

Nothing here needs Docker, Kubernetes or the network: the compose file and the manifests are
checked against the real schemas and against each other, and the parts that can run here (the
gateway's config rendering, the database bootstrap SQL) are run.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.dev.gateway import (
    BODY_LIMIT_MIB,
    FILTER_OPERATORS,
    LISTED_PATTERN_OPERATORS,
    PATTERN_OPERATORS,
    Limits,
    filter_too_complex_message,
)
from tests.support import REPO, SHARED

# CI lays shared/ beside the repository's clone; it is read-only reference material.

COMPOSE_FILE = REPO / "docker-compose.supabase.yml"
ENV_EXAMPLE = REPO / "supabase" / ".env.example"
KONG_CONFIG = REPO / "supabase" / "kong.yml"
K3S_DIR = REPO / "deploy" / "k3s"
MONITORING_DIR = REPO / "deploy" / "monitoring"
MIGRATE_DOCKERFILE = REPO / "deploy" / "migrate.Dockerfile"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
# The single node's base backups and point-in-time restores (the backup drill runs them), and the
# folders the compose file mounts for them in the database's containers.
BACKUP_SCRIPT = REPO / "supabase" / "db" / "backup.sh"
RESTORE_SCRIPT = REPO / "supabase" / "db" / "restore.sh"
WAL_ARCHIVE_IN_CONTAINERS = "/wal-archive"
BACKUPS_IN_CONTAINERS = "/backups"

# The image with the `mycelium` command and sql/ (deploy/migrate.Dockerfile), tagged with the
# package version, and where that image keeps the migrations.
MIGRATE_IMAGE = "ghcr.io/threefoldtech/mycelium-migrate"
SQL_DIR_IN_IMAGE = "/app/sql"

# The paths Supabase serves its APIs under, behind one gateway (supabase-py builds them).
KONG_API_PATHS = ("/rest/v1/", "/auth/v1/", "/realtime/v1/")
# The only shell variables kong.yml may contain: the container's environment fills them in.
KONG_KEY_VARIABLES = ("SUPABASE_ANON_KEY", "SUPABASE_SERVICE_KEY")

# A JWT in clear (header and payload both start with `{"`): an API key committed by mistake.
JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")


def shared_file(relative: str) -> Path:
    """A file of ../shared, or skip the test that needs it (a clone without shared/ beside it)."""
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(f"{path} is missing: the deployment schemas come from ../shared beside the clone")
    return path


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def package_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as file:
        version: str = tomllib.load(file)["project"]["version"]
    return version


def image_tag(image: str) -> str | None:
    """The tag of `name[:tag][@digest]`, None when there is none (a port in the registry host
    is not a tag)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def is_pinned(image: str) -> bool:
    """Pinned: a digest, or an explicit tag that is not a moving one."""
    if "@sha256:" in image:
        return True
    tag = image_tag(image)
    return tag is not None and tag not in {"latest", "stable", "main", "master", "edge"}


def walk_strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML or JSON document (keys excluded)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_strings(item)


def postgres_settings(command: list[str]) -> dict[str, str]:
    """The `-c name=value` settings of a `postgres` command line."""
    return dict(value.split("=", 1) for option, value in itertools.pairwise(command) if option == "-c")


def option_value(args: list[str], option: str) -> str:
    """The value of `option` in an argument list, following it (`--dir /app/sql`) or joined to it
    (`--config.file=/etc/prometheus/prometheus.yml`)."""
    joined = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"{option}=")]
    if joined:
        (value,) = joined
        return value
    assert option in args, f"{option} missing from {args}"
    return args[args.index(option) + 1]


# ---------------------------------------------------------------------------------------------
# The gateway
# ---------------------------------------------------------------------------------------------


def render_kong_config(script: str, template: Path, workdir: Path, keys: dict[str, str]) -> dict[str, Any]:
    """Run, here with bash, the shell step a Kong container runs before starting (it substitutes
    the API keys into kong.yml), and parse what it writes.

    `script` is the container's command with the deployment's own escaping undone. It reads
    `~/temp.yml` (compose) or `/home/kong/temp.yml` (k3s) and writes `kong.yml` beside it; both
    are redirected into `workdir`.
    """
    (workdir / "temp.yml").write_text(template.read_text(encoding="utf-8"), encoding="utf-8")
    script = script.replace("/home/kong/", f"{workdir}/")
    # Only the rendering: the Kong entrypoint that follows it does not exist here.
    script = re.split(r"\n|&&", script)[0]
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), **keys}
    subprocess.run(["bash", "-c", script], check=True, env=environment, timeout=10)
    parsed: dict[str, Any] = yaml.safe_load((workdir / "kong.yml").read_text(encoding="utf-8"))
    return parsed


def kong_script_from_argv(argv: list[str]) -> str:
    """The script of a `bash -c SCRIPT` command line."""
    assert argv[:2] == ["bash", "-c"], f"Kong is expected to start through bash -c, not {argv[:2]}"
    return argv[2]


def kong_script_from_compose_entrypoint(entrypoint: str) -> str:
    # Compose turns $$ into a literal $ before the shell sees it.
    return kong_script_from_argv(shlex.split(entrypoint.replace("$$", "$")))


def kong_routes(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each route path of the gateway, with the service that serves it."""
    return {
        path: service
        for service in config["services"]
        for route in service["routes"]
        for path in route["paths"]
    }


def kong_plugins(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {plugin["name"]: plugin.get("config") or {} for plugin in service.get("plugins", [])}


def assert_kong_serves_supabase_paths(config: dict[str, Any], keys: dict[str, str]) -> None:
    """The three API paths are routed, each behind the API key and the anon/admin ACL, and the
    keys belong to the consumers of those groups."""
    routes = kong_routes(config)
    for path in KONG_API_PATHS:
        assert path in routes, f"no gateway route for {path}"
        plugins = kong_plugins(routes[path])
        assert "key-auth" in plugins, f"{path} must require an API key"
        assert set(plugins["acl"]["allow"]) == {"anon", "admin"}, f"{path}: ACL must allow anon and admin"

    consumers = {
        consumer["username"]: [credential["key"] for credential in consumer.get("keyauth_credentials", [])]
        for consumer in config["consumers"]
    }
    assert consumers["anon"] == [keys["SUPABASE_ANON_KEY"]]
    assert consumers["service_role"] == [keys["SUPABASE_SERVICE_KEY"]]
    groups = {acl["consumer"]: acl["group"] for acl in config["acls"]}
    assert groups == {"anon": "anon", "service_role": "admin"}


def kong_plugin_names(config: dict[str, Any]) -> set[str]:
    """Every plugin the gateway's config uses, wherever it is set."""
    return {
        plugin["name"]
        for holder in [config, *config["consumers"], *config["services"]]
        + [route for service in config["services"] for route in service["routes"]]
        for plugin in holder.get("plugins", [])
    }


def assert_kong_limits(config: dict[str, Any], keys: dict[str, str], enabled: str) -> None:
    """Every route counts its callers with the local stack's numbers (`Limits`): the anon routes
    (the anon key as bearer token, the open Auth links, websockets) per address, the others per
    token; the service_role key has a ceiling of its own; anonymous query strings and bodies are
    held to the local stack's sizes. `enabled` is the deployment's KONG_PLUGINS."""
    limits = Limits()
    anon = {"second": limits.anon_burst, "minute": 60 * limits.anon_per_second, "limit_by": "ip"}
    user = {
        "second": limits.user_burst,
        "minute": 60 * limits.user_per_second,
        "limit_by": "header",
        "header_name": "authorization",
    }
    anon_bearer = [f"Bearer {keys['SUPABASE_ANON_KEY']}"]
    counted: dict[str, set[str]] = {}
    for service in config["services"]:
        keyed = "key-auth" in kong_plugins(service)
        for route in service["routes"]:
            plugins = kong_plugins(route)
            assert "rate-limiting" in plugins, f"{route['name']} is not rate limited"
            rate = {name: value for name, value in plugins["rate-limiting"].items() if name != "policy"}
            assert plugins["rate-limiting"]["policy"] == "local", route["name"]
            anonymous = route.get("headers", {}).get("authorization") == anon_bearer
            if anonymous or not keyed or service.get("protocol") == "ws":
                assert rate == anon, f"{route['name']}: anon limits"
            else:
                assert rate == user, f"{route['name']}: per-token limits"
            for path in route["paths"]:
                counted.setdefault(path, set()).add("anon" if anonymous else "token")
            if anonymous and "/rest/v1/" in route["paths"]:
                (check,) = plugins["pre-function"]["access"]
                assert_kong_anon_query_check(check, limits)
                # Chunked bodies declare no length for the check: the plugin holds them.
                assert plugins["request-size-limiting"] == {
                    "allowed_payload_size": limits.anon_body_bytes // 1024,
                    "size_unit": "kilobytes",
                }
    # Where the anon key as bearer has a route of its own, so have all other tokens.
    assert all(kinds == {"token"} or kinds == {"anon", "token"} for kinds in counted.values()), counted
    for path in ("/rest/v1/", "/auth/v1/"):
        assert counted[path] == {"anon", "token"}, path

    (service_role,) = [c for c in config["consumers"] if c["username"] == "service_role"]
    ceiling = kong_plugins(service_role)["rate-limiting"]
    assert ceiling["second"] >= 10 * limits.user_burst and ceiling["policy"] == "local"
    assert kong_plugins(config)["request-size-limiting"] == {
        "allowed_payload_size": BODY_LIMIT_MIB,
        "size_unit": "megabytes",
    }
    (encoding, media, rewrite) = kong_plugins(config)["pre-function"]["rewrite"]
    assert "'invalid_query_encoding'" in encoding
    assert "exit(415" in media and "'unsupported_media_type'" in media
    assert f"'Bearer {keys['SUPABASE_ANON_KEY']}'" in rewrite
    assert kong_plugin_names(config) <= set(enabled.split(",")), "a plugin kong.yml uses is not enabled"


def assert_kong_anon_query_check(check: str, limits: Limits) -> None:
    """The anonymous query check holds Kong to the local stack's numbers and operator lists (what
    it does with them runs on LuaJIT in tests/deploy/test_compose.py)."""
    assert f"#query > {limits.anon_query_bytes} then" in check
    assert f"length > {limits.anon_body_bytes} then" in check
    assert f"an anonymous request body may hold {limits.anon_body_bytes} bytes" in check
    assert "kong.response.exit(414" in check and "query_too_long" in check
    for bound in (
        f"terms > {limits.anon_filter_terms}",
        f"patterns > {limits.anon_pattern_terms}",
        f"wildcards > {limits.anon_wildcards}",
        f"patterns > 0 and #query > {limits.anon_pattern_query_bytes}",
    ):
        assert bound in check, bound
    assert filter_too_complex_message(limits) in check
    lists = dict(re.findall(r"local (\w+) = '([a-z ]+)'", check))
    assert lists["FILTERS"].split() == FILTER_OPERATORS
    assert lists["PATTERNS"].split() == PATTERN_OPERATORS
    assert lists["LISTED_PATTERNS"].split() == LISTED_PATTERN_OPERATORS


def kong_upstreams(config: dict[str, Any]) -> set[tuple[str, int]]:
    """(host, port) of every upstream the gateway sends requests to."""
    found = set()
    for service in config["services"]:
        match = re.match(r"^https?://([^/:]+):(\d+)", service["url"])
        assert match, f"unexpected upstream URL {service['url']}"
        found.add((match[1], int(match[2])))
    return found


# ---------------------------------------------------------------------------------------------
# A small, faithful `kustomize build` for the subset the repository's kustomizations use
# ---------------------------------------------------------------------------------------------

# Kustomization fields this build implements. A kustomization using any other field fails the
# build loudly instead of being built wrongly.
SUPPORTED_KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "configMapGenerator",
    "generatorOptions",
}
# Kinds without a namespace (kustomize leaves their metadata.namespace alone).
CLUSTER_SCOPED_KINDS = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """`kustomize build directory` for kustomizations made of plain resource files, a namespace,
    metadata labels (`labels` without selectors or templates) and ConfigMaps generated from files
    without name hashes."""
    kustomization = load_yaml(directory / "kustomization.yaml")
    unsupported = set(kustomization) - SUPPORTED_KUSTOMIZATION_FIELDS
    assert not unsupported, f"{directory}: the test build does not implement {sorted(unsupported)}"
    assert kustomization.get("generatorOptions", {}).get("disableNameSuffixHash") is True, (
        "generated names must be fixed (the test build adds no hash suffix)"
    )

    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        assert path.is_file(), f"{directory}/kustomization.yaml lists {entry}, which is not a file"
        resources.extend(load_yaml_documents(path))
    for generator in kustomization.get("configMapGenerator", []):
        resources.append(_generated_config_map(directory, generator))

    for label_set in kustomization.get("labels", []):
        assert not label_set.get("includeSelectors") and not label_set.get("includeTemplates"), (
            "the test build applies labels to metadata only"
        )
        for resource in resources:
            resource.setdefault("metadata", {}).setdefault("labels", {}).update(label_set["pairs"])
    if namespace := kustomization.get("namespace"):
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED_KINDS:
                resource["metadata"]["namespace"] = namespace
    return resources


def _generated_config_map(directory: Path, generator: dict[str, Any]) -> dict[str, Any]:
    assert set(generator) <= {"name", "files", "options"}, f"unsupported generator fields in {generator}"
    data = {}
    for entry in generator["files"]:
        key, _, relative = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
        path = directory / relative
        assert path.is_file(), f"configMapGenerator {generator['name']} reads {relative}, which is missing"
        data[key] = path.read_text(encoding="utf-8")
    metadata: dict[str, Any] = {"name": generator["name"]}
    if labels := generator.get("options", {}).get("labels"):
        metadata["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


# ---------------------------------------------------------------------------------------------
# A throwaway PostgreSQL 15 server
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def scratch_postgres(settings: dict[str, str] | None = None) -> Iterator[tuple[dict[str, Any], Path]]:
    """A throwaway PostgreSQL 15 (the major version of both deployments) on a Unix socket only,
    started with `settings` as `-c name=value` options: its connection parameters and its folder,
    which a setting naming a path may use. Skips where no PostgreSQL 15 server is installed."""
    initdb, pg_ctl, postgres = (shutil.which(name) for name in ("initdb", "pg_ctl", "postgres"))
    if not (initdb and pg_ctl and postgres):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    version = subprocess.run([postgres, "--version"], capture_output=True, text=True, check=True).stdout
    if " 15." not in version:
        pytest.skip(f"needs PostgreSQL 15 like the deployments, found {version.strip()}")
    # Not under pytest's tmp_path: as root, that is a folder the postgres user cannot enter.
    base = Path(tempfile.mkdtemp(prefix="mycelium-postgres-"))
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    # PostgreSQL refuses to run as root: run it as its own OS user when the tests run as root.
    as_owner: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            pytest.skip("running as root, and there is no postgres OS user to run PostgreSQL as")
        as_owner = ["runuser", "-u", "postgres", "--"]
        for path in (base, sockets):
            shutil.chown(path, "postgres")

    def run(*command: str) -> None:
        done = subprocess.run([*as_owner, *command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}{done.stderr}"

    try:
        run(initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
        port = free_port()
        options = [f"-c listen_addresses='' -c fsync=off -k {sockets} -p {port}"]
        options += [f"-c {shlex.quote(f'{name}={value}')}" for name, value in (settings or {}).items()]
        run(pg_ctl, "-D", str(data), "-l", str(base / "log"), "-o", " ".join(options), "-w", "start")
        try:
            yield {"host": str(sockets), "port": port, "user": "postgres"}, base
        finally:
            run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)
