"""deploy/k3s and deploy/monitoring: Mycelium highly available on k3s, checked without a cluster.

The kustomizations are built offline, every manifest is validated against the Kubernetes
schemas of K8S_VERSION (strict: unknown fields are errors, as `kubectl apply` reports them) and
the CloudNativePG Cluster against the operator's published CRD schema; then the properties the
high-availability design rests on are asserted, and the database bootstrap SQL is run on a real
PostgreSQL 15 when one is installed.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import psycopg
import pytest
import yaml

from cli.dev.postgrest import MAX_ROWS, TRACE_HEADER
from cli.keys import ApiKeys
from tests.support import REPO
from tests.support.deploy import (
    COMPOSE_FILE,
    DEPLOY_DOC,
    JWT_LIKE,
    K3S_DIR,
    KONG_CONFIG,
    MIGRATE_IMAGE,
    MONITORING_DIR,
    SQL_DIR_IN_IMAGE,
    assert_kong_limits,
    assert_kong_serves_supabase_paths,
    by_kind,
    is_pinned,
    kong_script_from_argv,
    kong_upstreams,
    kustomize_build,
    load_yaml,
    option_value,
    package_version,
    postgres_settings,
    render_kong_config,
    scratch_postgres,
    selector_matches,
    shared_file,
    walk_strings,
)
from tests.support.monitoring import alert_jobs

# k3s follows upstream Kubernetes releases; its current stable channel is v1.34.
K8S_VERSION = "1.34.0"
NAMESPACE = "mycelium"
# The stateless components that must survive the loss of a node.
HA_DEPLOYMENTS = ("rest", "auth", "realtime", "kong")
CLUSTER_API = ("postgresql.cnpg.io/v1", "Cluster")
# Custom resources whose CRD schema is not in ../shared: their wiring is asserted below instead.
CHECKED_BY_HAND = {
    ("postgresql.cnpg.io/v1", "ScheduledBackup"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
# Env var names that carry a secret: they must come from a Secret, never a literal value.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|KEY_BASE|TOKEN|COOKIE|_PASS$")
DATABASE_URL = re.compile(
    r"^postgres(?:ql)?://(?P<user>[^:@/]+):(?P<password>[^@]+)@(?P<host>[^:/]+):(?P<port>\d+)/(?P<db>[^?]+)"
)
# The metrics `mycelium metrics serve` exports, which the dashboard must chart.
CREDIT_METRICS = (
    "mycelium_credits_in_circulation",
    "mycelium_credits_issued_total",
    "mycelium_credits_spent_total",
    "mycelium_credits_expired_total",
    "mycelium_holds_outstanding",
    "mycelium_orders",
    "mycelium_ledger_audit_ok",
    "mycelium_requests_total",
    "mycelium_upkeep_overdue",
)


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return kustomize_build(K3S_DIR)


@pytest.fixture(scope="module")
def deployments(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return by_kind(manifests, "Deployment")


@pytest.fixture(scope="module")
def cluster(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = by_kind(manifests, "Cluster").values()
    return found


@pytest.fixture(scope="module")
def monitoring() -> list[dict[str, Any]]:
    return kustomize_build(MONITORING_DIR)


def strict_schema(schema: Any) -> Any:
    """The CRD's structural schema, with unknown fields rejected where the API server's strict
    field validation rejects them (objects with declared properties and no escape hatch)."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tightened = {key: strict_schema(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        tightened["additionalProperties"] = False
    return tightened


@pytest.fixture(scope="module")
def cluster_validator() -> jsonschema.Draft7Validator:
    crd = load_yaml(shared_file("schemas/cnpg-clusters-crd.yaml"))
    assert crd["spec"]["names"]["kind"] == "Cluster"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


def validation_errors(resource: dict[str, Any], cluster_validator: jsonschema.Draft7Validator) -> list[str]:
    key = (resource["apiVersion"], resource["kind"])
    name = f"{resource['kind']}/{resource['metadata']['name']}"
    if key == CLUSTER_API:
        return [
            f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in cluster_validator.iter_errors(resource)
        ]
    if key in CHECKED_BY_HAND:
        return []
    try:
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{name}: {'.'.join(map(str, error.path))}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{name}: {error.message}"]
    return []


def pod_specs(resources: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod template metadata, pod spec) of every Deployment, Job and CronJob."""
    for resource in resources:
        spec = resource.get("spec", {})
        if resource["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        elif resource["kind"] not in {"Deployment", "Job"}:
            continue
        yield resource["metadata"]["name"], spec["template"]["metadata"], spec["template"]["spec"]


def containers(resources: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for workload, _, spec in pod_specs(resources):
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield f"{workload}/{container['name']}", container


def env_map(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in container.get("env", [])}


# ---------------------------------------------------------------------------------------------
# Build and schemas
# ---------------------------------------------------------------------------------------------


def test_the_kustomization_builds_from_every_manifest_file(manifests: list[dict[str, Any]]) -> None:
    listed = set(load_yaml(K3S_DIR / "kustomization.yaml")["resources"])
    on_disk = {path.name for path in K3S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "a manifest in deploy/k3s is not applied (or a listed one is missing)"
    names = [(r["kind"], r["metadata"]["name"]) for r in manifests]
    assert len(names) == len(set(names)), "two resources share a kind and name"
    assert {r["metadata"].get("namespace") for r in manifests if r["kind"] != "Namespace"} == {NAMESPACE}
    assert all(r["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mycelium" for r in manifests)


@pytest.mark.parametrize("directory", [K3S_DIR, MONITORING_DIR], ids=["k3s", "monitoring"])
def test_the_test_build_matches_the_real_kustomize(directory: Path) -> None:
    """Where kubectl (which embeds kustomize) is installed, its build and ours are identical, so
    everything asserted here holds for what `kubectl apply -k` sends."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed; the Python build stands alone")
    built = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    real = [doc for doc in yaml.safe_load_all(built.stdout) if doc]

    def key(resource: dict[str, Any]) -> tuple[str, str]:
        return resource["kind"], resource["metadata"]["name"]

    assert sorted(real, key=key) == sorted(kustomize_build(directory), key=key)


def test_every_manifest_validates_against_the_kubernetes_and_cnpg_schemas(
    manifests: list[dict[str, Any]],
    monitoring: list[dict[str, Any]],
    cluster_validator: jsonschema.Draft7Validator,
) -> None:
    errors = [
        error
        for resource in manifests + monitoring
        for error in validation_errors(resource, cluster_validator)
    ]
    assert not errors, "\n".join(errors)


def test_validation_rejects_broken_manifests(
    deployments: dict[str, dict[str, Any]],
    cluster: dict[str, Any],
    cluster_validator: jsonschema.Draft7Validator,
) -> None:
    """The validation above is live and strict: a misspelt field, a wrong type, an unknown enum
    value each fail it."""
    deployment = copy.deepcopy(deployments["rest"])
    deployment["spec"]["replica"] = 2
    assert validation_errors(deployment, cluster_validator)
    deployment = copy.deepcopy(deployments["rest"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSeconds"] = "often"
    assert validation_errors(deployment, cluster_validator)
    for field, value in (("instance", 3), ("instances", "three")):
        broken = copy.deepcopy(cluster)
        broken["spec"][field] = value
        assert validation_errors(broken, cluster_validator), field
    broken = copy.deepcopy(cluster)
    broken["spec"]["postgresql"]["synchronous"]["method"] = "all"
    assert validation_errors(broken, cluster_validator)


# ---------------------------------------------------------------------------------------------
# PostgreSQL (CloudNativePG)
# ---------------------------------------------------------------------------------------------


def test_postgres_runs_three_instances_with_synchronous_replication(cluster: dict[str, Any]) -> None:
    spec = cluster["spec"]
    assert spec["instances"] == 3
    synchronous = spec["postgresql"]["synchronous"]
    assert synchronous["method"] in {"any", "first"}
    assert 1 <= synchronous["number"] < spec["instances"]
    assert synchronous["dataDurability"] == "required"
    assert spec["affinity"]["enablePodAntiAffinity"] is True
    assert spec["affinity"]["podAntiAffinityType"] == "required"
    assert spec["affinity"]["topologyKey"] == "kubernetes.io/hostname"
    assert is_pinned(spec["imageName"]) and ":15." in spec["imageName"], (
        "PostgreSQL 15, like supabase/postgres"
    )
    assert spec["postgresql"]["parameters"]["wal_level"] == "logical", "Realtime decodes the WAL"
    assert set(spec["resources"]["requests"]) == set(spec["resources"]["limits"]) == {"cpu", "memory"}


def test_postgres_disruption_budgets_are_the_operators_alone(
    cluster: dict[str, Any], manifests: list[dict[str, Any]], deployments: dict[str, dict[str, Any]]
) -> None:
    """CloudNativePG manages the database's PodDisruptionBudgets; one of ours over the same pods
    would make every `kubectl drain` fail (the eviction API refuses pods under two budgets)."""
    assert cluster["spec"]["enablePDB"] is True
    for name, budget in by_kind(manifests, "PodDisruptionBudget").items():
        selector = budget["spec"]["selector"]["matchLabels"]
        assert not any(key.startswith("cnpg.io/") for key in selector), name
        covered = [
            d
            for d in deployments.values()
            if selector_matches(selector, d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(covered) == 1, f"PodDisruptionBudget {name} must cover exactly one Deployment"


def test_postgres_is_backed_up_to_object_storage(
    cluster: dict[str, Any], manifests: list[dict[str, Any]]
) -> None:
    backup = cluster["spec"]["backup"]
    store = backup["barmanObjectStore"]
    assert store["destinationPath"].startswith("s3://")
    assert set(store["s3Credentials"]) == {"accessKeyId", "secretAccessKey"}
    assert all(set(ref) == {"name", "key"} for ref in store["s3Credentials"].values()), (
        "credentials by Secret"
    )
    assert re.fullmatch(r"\d+[dwm]", backup["retentionPolicy"])
    assert store["wal"]["compression"] and store["data"]["compression"]
    (scheduled,) = by_kind(manifests, "ScheduledBackup").values()
    assert scheduled["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
    assert scheduled["spec"]["method"] == "barmanObjectStore"
    # CloudNativePG's cron format has six fields, seconds first.
    assert len(scheduled["spec"]["schedule"].split()) == 6


def test_postgres_archives_as_often_as_the_single_node(cluster: dict[str, Any]) -> None:
    """The WAL archive bounds what a restore loses in a quiet period, the same on both
    deployments (the backup drill restores from the single node's)."""
    compose_db = load_yaml(COMPOSE_FILE)["services"]["db"]
    single_node = int(postgres_settings(compose_db["command"])["archive_timeout"])
    timeout = cluster["spec"]["postgresql"]["parameters"]["archive_timeout"]
    match = re.fullmatch(r"(\d+)(s|min)", timeout)
    assert match, f"archive_timeout {timeout}: seconds or minutes"
    assert int(match[1]) * (60 if match[2] == "min" else 1) == single_node


def guide_restore_spec() -> dict[str, Any]:
    """The spec fragment docs/deploy.md gives for restoring on k3s."""
    guide = DEPLOY_DOC.read_text(encoding="utf-8")
    section = guide[guide.index("### Backups and restore on k3s") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block, "the k3s restore section has no YAML block"
    spec: dict[str, Any] = yaml.safe_load(block[1])["spec"]
    return spec


def test_the_guides_restore_makes_a_valid_cluster_from_the_backups(
    cluster: dict[str, Any], cluster_validator: jsonschema.Draft7Validator
) -> None:
    fragment = guide_restore_spec()
    recovery = fragment["bootstrap"]["recovery"]
    (source,) = fragment["externalClusters"]
    assert recovery["source"] == source["name"] == cluster["metadata"]["name"]
    # It reads the object store the Cluster archives to, with the same Secrets.
    store = cluster["spec"]["backup"]["barmanObjectStore"]
    for field in ("destinationPath", "endpointURL", "s3Credentials"):
        assert source["barmanObjectStore"][field] == store[field], field
    assert set(recovery["recoveryTarget"]) == {"targetTime"}
    # As the guide says: the rest of database.yaml's spec, without initdb, archiving elsewhere;
    # and with the restore point's name the guide mentions instead of the time.
    for target in (recovery["recoveryTarget"], {"targetName": "before-0.2.0"}):
        restored = copy.deepcopy(cluster)
        restored["metadata"]["name"] = "mycelium-db-restored"
        restored["spec"]["bootstrap"] = {"recovery": {**recovery, "recoveryTarget": target}}
        restored["spec"]["externalClusters"] = fragment["externalClusters"]
        restored["spec"]["backup"]["barmanObjectStore"]["destinationPath"] += "-restored"
        assert validation_errors(restored, cluster_validator) == []
    broken = copy.deepcopy(restored)
    broken["spec"]["bootstrap"]["recovery"]["recoveryTarget"] = {"targetTimestamp": "2025-01-31"}
    assert validation_errors(broken, cluster_validator)


def bootstrap_roles() -> dict[str, set[str]]:
    """The roles supabase-init.sql creates, with their attributes."""
    sql = (K3S_DIR / "supabase-init.sql").read_text(encoding="utf-8")
    return {
        name: set(attributes.split()) for name, attributes in re.findall(r"\('(\w+)',\s*'([a-z ]+)'\)", sql)
    }


def test_managed_roles_match_the_bootstrap_sql(cluster: dict[str, Any]) -> None:
    """The login roles are created by the bootstrap SQL and then kept by the operator, which
    sets their passwords from Secrets: both must agree on every attribute, or the operator
    silently changes what the SQL set."""
    created = bootstrap_roles()
    flags = {
        "login": ("login", "nologin"),
        "inherit": ("inherit", "noinherit"),
        "superuser": ("superuser", "nosuperuser"),
        "createrole": ("createrole", "nocreaterole"),
        "createdb": ("createdb", "nocreatedb"),
        "replication": ("replication", "noreplication"),
        "bypassrls": ("bypassrls", "nobypassrls"),
    }
    # CloudNativePG's defaults for a managed role: only inherit is on.
    defaults = {"inherit": True}
    for role in cluster["spec"]["managed"]["roles"]:
        name = role["name"]
        assert name in created, f"managed role {name} is not created by supabase-init.sql"
        assert role["ensure"] == "present" and role["passwordSecret"]["name"]
        for field, (on, off) in flags.items():
            wanted = role.get(field, defaults.get(field, False))
            # PostgreSQL's own defaults: inherit on, everything else off.
            sql_value = on in created[name] or (field == "inherit" and off not in created[name])
            assert wanted == sql_value, f"{name}: {field} is {wanted} in the Cluster, {sql_value} in the SQL"
        for member_of in role.get("inRoles", []):
            assert member_of in created


def test_the_bootstrap_sql_is_what_the_cluster_runs(
    cluster: dict[str, Any], manifests: list[dict[str, Any]]
) -> None:
    refs = cluster["spec"]["bootstrap"]["initdb"]["postInitApplicationSQLRefs"]["configMapRefs"]
    config_maps = by_kind(manifests, "ConfigMap")
    for ref in refs:
        data = config_maps[ref["name"]]["data"][ref["key"]]
        assert data == (K3S_DIR / ref["key"]).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# The stateless services
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HA_DEPLOYMENTS)
def test_stateless_services_survive_the_loss_of_a_node(
    name: str, deployments: dict[str, dict[str, Any]], manifests: list[dict[str, Any]]
) -> None:
    deployment = deployments[name]
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)

    spec = deployment["spec"]["template"]["spec"]
    terms = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert any(
        term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        and selector_matches(term["podAffinityTerm"]["labelSelector"]["matchLabels"], pod_labels)
        for term in terms
    ), "replicas must be spread across nodes"

    budgets = [
        b
        for b in by_kind(manifests, "PodDisruptionBudget").values()
        if selector_matches(b["spec"]["selector"]["matchLabels"], pod_labels)
    ]
    assert len(budgets) == 1, f"{name} needs one PodDisruptionBudget"
    # Keeps one replica up through voluntary disruptions, yet lets a drain proceed.
    assert 1 <= budgets[0]["spec"]["minAvailable"] < replicas

    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, "a rollout must never go below the replica count"
    for container in spec["containers"]:
        assert "readinessProbe" in container and "livenessProbe" in container, f"{name}/{container['name']}"


def test_every_container_has_resources_and_a_pinned_image(manifests: list[dict[str, Any]]) -> None:
    for name, container in containers(manifests):
        assert is_pinned(container["image"]), f"{name}: {container['image']} is not pinned"
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert set(resources.get(kind, {})) == {"cpu", "memory"}, f"{name}: {kind} for cpu and memory"


def test_probes_and_services_use_ports_the_containers_declare(manifests: list[dict[str, Any]]) -> None:
    declared: dict[str, set[str | int]] = {}
    for workload, _, spec in pod_specs(manifests):
        ports: set[str | int] = set()
        for container in spec["containers"]:
            ports |= {p["name"] for p in container.get("ports", [])} | {
                p["containerPort"] for p in container.get("ports", [])
            }
            for probe_name in ("readinessProbe", "livenessProbe"):
                probe = container.get(probe_name, {})
                handler = probe.get("httpGet") or probe.get("tcpSocket")
                if handler:
                    assert handler["port"] in ports, (
                        f"{workload}: {probe_name} on undeclared port {handler['port']}"
                    )
        declared[workload] = ports
    for name, service in by_kind(manifests, "Service").items():
        selector = service["spec"]["selector"]
        targets = [
            w for w, metadata, _ in pod_specs(manifests) if selector_matches(selector, metadata["labels"])
        ]
        assert targets, f"Service {name} selects no pods"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert all(target in declared[w] for w in targets), f"Service {name}: port {target} not declared"


def test_env_references_resolve_to_variables_defined_before_them(manifests: list[dict[str, Any]]) -> None:
    """Kubernetes expands $(VAR) in env values and arguments only when VAR is defined earlier in
    the same container; otherwise the literal text reaches the program."""
    for name, container in containers(manifests):
        defined: set[str] = set()
        for variable in container.get("env", []):
            for reference in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", variable.get("value", "")):
                assert reference in defined, (
                    f"{name}: {variable['name']} uses $({reference}) before it is defined"
                )
            defined.add(variable["name"])
        for argument in container.get("args", []) + container.get("command", []):
            for reference in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", argument):
                assert reference in defined, f"{name}: argument uses undefined $({reference})"


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------


def secret_sourced(container: dict[str, Any]) -> dict[str, str]:
    """Env var name -> Secret name, for the variables a container takes from Secrets."""
    return {
        name: variable["valueFrom"]["secretKeyRef"]["name"]
        for name, variable in env_map(container).items()
        if "secretKeyRef" in variable.get("valueFrom", {})
    }


def test_no_secret_is_inlined(manifests: list[dict[str, Any]], monitoring: list[dict[str, Any]]) -> None:
    assert not by_kind(manifests + monitoring, "Secret"), "Secrets are created by hand, never committed"
    for name, container in containers(manifests):
        from_secrets = secret_sourced(container)
        for variable in container.get("env", []):
            if SECRET_NAME.search(variable["name"]):
                assert variable["name"] in from_secrets, f"{name}: {variable['name']} must come from a Secret"
            if url := DATABASE_URL.match(variable.get("value", "")):
                password = re.fullmatch(r"\$\((\w+)\)", url["password"])
                assert password and password[1] in from_secrets, (
                    f"{name}: {variable['name']} inlines a password"
                )
    for path in [*K3S_DIR.rglob("*"), *MONITORING_DIR.rglob("*")]:
        if path.is_file():
            assert not JWT_LIKE.search(path.read_text(encoding="utf-8")), (
                f"{path} holds what looks like a JWT"
            )
    assert not (K3S_DIR / "secrets.yaml").exists()


def secret_references(manifests: list[dict[str, Any]], cluster: dict[str, Any]) -> dict[str, set[str]]:
    """Every Secret the manifests read, with the keys they read from it."""
    wanted: dict[str, set[str]] = {}
    for _, container in containers(manifests):
        for variable in container.get("env", []):
            if ref := variable.get("valueFrom", {}).get("secretKeyRef"):
                wanted.setdefault(ref["name"], set()).add(ref["key"])
    spec = cluster["spec"]
    wanted.setdefault(spec["superuserSecret"]["name"], set()).update({"username", "password"})
    for role in spec["managed"]["roles"]:
        wanted.setdefault(role["passwordSecret"]["name"], set()).update({"username", "password"})
    for ref in spec["backup"]["barmanObjectStore"]["s3Credentials"].values():
        wanted.setdefault(ref["name"], set()).add(ref["key"])
    for ingress in by_kind(manifests, "Ingress").values():
        for tls in ingress["spec"]["tls"]:
            wanted.setdefault(tls["secretName"], set()).update({"tls.crt", "tls.key"})
    return wanted


def documented_secrets() -> dict[str, dict[str, Any]]:
    """The Secrets docs/deploy.md tells the operator to create: `kubectl create secret` commands."""
    text = DEPLOY_DOC.read_text(encoding="utf-8").replace("\\\n", " ")
    found: dict[str, dict[str, Any]] = {}
    for kind, name, options in re.findall(r"kubectl .*?create secret (generic|tls) ([\w.-]+)(.*)", text):
        keys = set(re.findall(r"--from-(?:literal|file)=([\w.-]+)=", options))
        if kind == "tls":
            keys = {"tls.crt", "tls.key"}
        username = re.search(r"--from-literal=username=(\w+)", options)
        secret_type = re.search(r"--type=(\S+)", options)
        found[name] = {
            "keys": keys,
            "username": username[1] if username else None,
            "type": secret_type[1] if secret_type else None,
        }
    return found


def test_every_secret_the_manifests_read_is_created_by_the_deploy_guide(
    manifests: list[dict[str, Any]], cluster: dict[str, Any]
) -> None:
    documented = documented_secrets()
    for name, keys in secret_references(manifests, cluster).items():
        assert name in documented, f"docs/deploy.md never creates Secret {name}"
        assert keys <= documented[name]["keys"], (
            f"Secret {name} lacks {sorted(keys - documented[name]['keys'])}"
        )
    # CloudNativePG reads role passwords from basic-auth Secrets whose username is the role.
    spec = cluster["spec"]
    owners = {spec["superuserSecret"]["name"]: "postgres"} | {
        role["passwordSecret"]["name"]: role["name"] for role in spec["managed"]["roles"]
    }
    for secret, role in owners.items():
        assert documented[secret]["type"] == "kubernetes.io/basic-auth", secret
        assert documented[secret]["username"] == role, f"Secret {secret} must hold the username {role}"


def test_database_clients_connect_to_the_primary_with_their_own_role(
    manifests: list[dict[str, Any]], cluster: dict[str, Any]
) -> None:
    """Every component reaches the database through the operator's read-write Service (so a
    failover needs no reconfiguration), in the bootstrap database, as a role whose password
    comes from that role's own Secret."""
    spec = cluster["spec"]
    primary = f"{cluster['metadata']['name']}-rw"
    database = spec["bootstrap"]["initdb"]["database"]
    role_secrets = {spec["superuserSecret"]["name"]: "postgres"} | {
        role["passwordSecret"]["name"]: role["name"] for role in spec["managed"]["roles"]
    }
    connections = 0
    for name, container in containers(manifests):
        env = env_map(container)
        from_secrets = secret_sourced(container)
        for variable in env.values():
            if url := DATABASE_URL.match(variable.get("value", "")):
                connections += 1
                assert (url["host"], url["db"]) == (primary, database), f"{name}: {variable['name']}"
                password_variable = url["password"][2:-1]
                assert role_secrets[from_secrets[password_variable]] == url["user"], f"{name}: wrong Secret"
        if "DB_HOST" in env:  # Realtime takes its connection as separate variables
            connections += 1
            assert (env["DB_HOST"]["value"], env["DB_NAME"]["value"]) == (primary, database)
            assert role_secrets[from_secrets["DB_PASSWORD"]] == env["DB_USER"]["value"]
    assert connections == 4, "PostgREST, Auth, Realtime and the migrate Job"


# ---------------------------------------------------------------------------------------------
# Gateway, Ingress, Realtime clustering
# ---------------------------------------------------------------------------------------------


def test_k3s_kong_config_is_the_compose_one() -> None:
    assert (K3S_DIR / "kong.yml").read_text(encoding="utf-8") == KONG_CONFIG.read_text(encoding="utf-8"), (
        "deploy/k3s/kong.yml must be a copy of supabase/kong.yml: cp supabase/kong.yml deploy/k3s/"
    )


def test_kong_renders_its_routes_with_the_keys_from_secrets(
    deployments: dict[str, dict[str, Any]], manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    (container,) = deployments["kong"]["spec"]["template"]["spec"]["containers"]
    env = env_map(container)
    refs = {
        name: env[name]["valueFrom"]["secretKeyRef"] for name in ("SUPABASE_ANON_KEY", "SUPABASE_SERVICE_KEY")
    }
    assert refs["SUPABASE_ANON_KEY"] == {"name": "mycelium-jwt", "key": "anon-key"}
    assert refs["SUPABASE_SERVICE_KEY"] == {"name": "mycelium-jwt", "key": "service-role-key"}
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/home/kong/temp.yml"
    assert by_kind(manifests, "ConfigMap")["kong-config"]["data"][mount["subPath"]] == KONG_CONFIG.read_text(
        encoding="utf-8"
    )

    keys = ApiKeys.generate()
    values = {"SUPABASE_ANON_KEY": keys.anon_key, "SUPABASE_SERVICE_KEY": keys.service_role_key}
    # Kubernetes turns $$ into a literal $ before the shell sees the command.
    script = kong_script_from_argv([part.replace("$$", "$") for part in container["command"]])
    config = render_kong_config(script, KONG_CONFIG, tmp_path, values)
    assert_kong_serves_supabase_paths(config, values)
    assert_kong_limits(config, values, env["KONG_PLUGINS"]["value"])
    assert env["KONG_ERROR_DEFAULT_TYPE"]["value"] == "application/json"


def test_postgrest_answers_at_most_a_page_of_rows_as_in_the_local_stack(
    deployments: dict[str, dict[str, Any]],
) -> None:
    (container,) = deployments["rest"]["spec"]["template"]["spec"]["containers"]
    assert env_map(container)["PGRST_DB_MAX_ROWS"]["value"] == str(MAX_ROWS)


def test_postgrest_answers_with_the_trace_context_of_the_request_as_in_the_local_stack(
    deployments: dict[str, dict[str, Any]],
) -> None:
    (container,) = deployments["rest"]["spec"]["template"]["spec"]["containers"]
    assert env_map(container)["PGRST_SERVER_TRACE_HEADER"]["value"] == TRACE_HEADER


def test_kong_upstreams_are_services_of_the_namespace(manifests: list[dict[str, Any]]) -> None:
    services = by_kind(manifests, "Service")
    for host, port in kong_upstreams(load_yaml(KONG_CONFIG)):
        assert host in services, f"Kong sends requests to {host}, which is no Service"
        assert port in {p["port"] for p in services[host]["spec"]["ports"]}, f"{host} has no port {port}"


def test_the_ingress_hands_everything_to_the_gateway(manifests: list[dict[str, Any]]) -> None:
    (ingress,) = by_kind(manifests, "Ingress").values()
    kong = by_kind(manifests, "Service")["kong"]
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    backend = path["backend"]["service"]
    assert backend["name"] == "kong"
    assert backend["port"]["name"] in {p["name"] for p in kong["spec"]["ports"]}
    assert rule["host"] in ingress["spec"]["tls"][0]["hosts"], "the gateway is served over TLS"


def test_realtime_replicas_find_each_other(
    deployments: dict[str, dict[str, Any]], manifests: list[dict[str, Any]]
) -> None:
    (container,) = deployments["realtime"]["spec"]["template"]["spec"]["containers"]
    env = env_map(container)
    headless_name, namespace = env["DNS_NODES"]["value"].split(".")[:2]
    assert namespace == NAMESPACE
    headless = by_kind(manifests, "Service")[headless_name]
    assert headless["spec"]["clusterIP"] == "None"
    assert selector_matches(
        headless["spec"]["selector"], deployments["realtime"]["spec"]["template"]["metadata"]["labels"]
    )
    assert "secretKeyRef" in env["RELEASE_COOKIE"]["valueFrom"], "the Erlang cookie is a shared secret"


# ---------------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------------


def test_the_migrate_job_pushes_the_image_sql(manifests: list[dict[str, Any]]) -> None:
    (job,) = by_kind(manifests, "Job").values()
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    (migrate,) = spec["containers"]
    assert migrate["image"] == f"{MIGRATE_IMAGE}:{package_version()}"
    assert migrate["args"][:2] == ["sql", "push"]
    # The path deploy/migrate.Dockerfile copies sql/ to, and the compose service mounts it at.
    assert option_value(migrate["args"], "--dir") == SQL_DIR_IN_IMAGE
    waits = " ".join(walk_strings(spec["initContainers"]))
    assert "http://auth:9999/health" in waits and "realtime-dev" in waits
    for _, container in containers(manifests):
        if container["image"].startswith(MIGRATE_IMAGE):
            assert container["image"] == f"{MIGRATE_IMAGE}:{package_version()}"
    assert (REPO / "deploy" / "migrate.Dockerfile").is_file()


# ---------------------------------------------------------------------------------------------
# Monitoring
# ---------------------------------------------------------------------------------------------


def test_upkeep_runs_every_few_minutes_one_round_at_a_time(manifests: list[dict[str, Any]]) -> None:
    (cron,) = by_kind(manifests, "CronJob").values()
    assert cron["spec"]["schedule"] == "*/5 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    # A round that hangs ends before the next one is due.
    assert job["activeDeadlineSeconds"] < 5 * 60
    (container,) = job["template"]["spec"]["containers"]
    assert container["image"].rsplit(":", 1)[0] == MIGRATE_IMAGE
    assert container["args"][0] == "upkeep" and "--every" not in container["args"]
    env = env_map(container)
    assert env["SUPABASE_URL"]["value"] == "http://kong:8000"
    assert env["SUPABASE_SERVICE_ROLE_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "mycelium-jwt",
        "key": "service-role-key",
    }


def test_the_service_monitors_scrape_every_job_the_alerts_expect(
    manifests: list[dict[str, Any]], monitoring: list[dict[str, Any]], deployments: dict[str, dict[str, Any]]
) -> None:
    """Each ServiceMonitor selects one Service of deploy/k3s, on a port that Service has and its
    pods declare, and names its job as alerts.yml does (the Operator would use the Service's name)."""
    services = by_kind(manifests, "Service")
    jobs = {}
    for name, monitor in by_kind(monitoring, "ServiceMonitor").items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert NAMESPACE in monitor["spec"]["namespaceSelector"]["matchNames"]
        (service,) = [
            s
            for s in services.values()
            if selector_matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        (endpoint,) = monitor["spec"]["endpoints"]
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        (deployment,) = [
            d
            for d in deployments.values()
            if selector_matches(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        pod = deployment["spec"]["template"]["spec"]
        container_ports = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
        assert port["targetPort"] in container_ports, f"{name}: {port['targetPort']} is no container port"
        (job,) = [r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
        jobs[job] = (deployment["metadata"]["name"], endpoint["path"])
    assert jobs == {
        "mycelium": ("mycelium-metrics", "/metrics"),
        "postgrest": ("rest", "/ready"),
        "auth": ("auth", "/metrics"),
        "kong": ("kong", "/metrics"),
    }
    assert alert_jobs() <= set(jobs)
    (exporter,) = deployments["mycelium-metrics"]["spec"]["template"]["spec"]["containers"]
    assert exporter["args"][:2] == ["metrics", "serve"]
    assert int(option_value(exporter["args"], "--port")) == exporter["ports"][0]["containerPort"]


def test_auth_exports_its_metrics_on_the_port_the_monitor_scrapes(
    deployments: dict[str, dict[str, Any]],
) -> None:
    (auth,) = deployments["auth"]["spec"]["template"]["spec"]["containers"]
    env = env_map(auth)
    assert env["GOTRUE_METRICS_ENABLED"]["value"] == "true"
    assert env["GOTRUE_METRICS_EXPORTER"]["value"] == "prometheus"
    ports = {p["name"]: p["containerPort"] for p in auth["ports"]}
    assert int(env["OTEL_EXPORTER_PROMETHEUS_PORT"]["value"]) == ports["metrics"]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (MONITORING_DIR / "grafana-dashboard.json").read_text(encoding="utf-8")
    )
    return loaded


def test_the_dashboard_charts_every_credit_metric(dashboard: dict[str, Any]) -> None:
    panels = dashboard["panels"]
    expressions = [target["expr"] for panel in panels for target in panel["targets"]]
    for metric in CREDIT_METRICS:
        assert any(re.search(rf"\b{metric}\b", expr) for expr in expressions), f"no panel charts {metric}"
    titles = {panel["title"] for panel in panels}
    assert {"Credits in circulation", "Ledger audit", "Orders by status"} <= titles
    assert dashboard["uid"] and dashboard["title"]


def test_the_dashboard_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    (variable,) = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in {"stat", "timeseries", "gauge", "table", "bargauge"}, panel["type"]
        assert panel["datasource"]["uid"] == "${" + variable["name"] + "}"
        assert panel["targets"] and all(t["datasource"] == panel["datasource"] for t in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the dashboard"
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
    ledger = next(panel for panel in panels if panel["title"] == "Ledger audit")
    steps = ledger["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[0]["color"] == "red", "a broken ledger must show red"


def test_grafana_loads_the_dashboard_from_its_config_map(monitoring: list[dict[str, Any]]) -> None:
    config_map = by_kind(monitoring, "ConfigMap")["mycelium-grafana-dashboard"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["grafana-dashboard.json"])["uid"] == "mycelium-credits"


# ---------------------------------------------------------------------------------------------
# The bootstrap SQL, run on a real PostgreSQL 15
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vanilla_postgres() -> Iterator[dict[str, Any]]:
    """A throwaway PostgreSQL 15, the vanilla server CloudNativePG runs, on a Unix socket only."""
    with scratch_postgres() as (connection, _):
        yield connection


def test_the_bootstrap_sql_prepares_a_supabase_compatible_database(vanilla_postgres: dict[str, Any]) -> None:
    sql = (K3S_DIR / "supabase-init.sql").read_text(encoding="utf-8")
    with psycopg.connect(**vanilla_postgres, dbname="postgres", autocommit=True) as server:
        server.execute("create database mycelium")
    with psycopg.connect(**vanilla_postgres, dbname="mycelium", autocommit=True) as db:
        # CloudNativePG runs it once; a second run proves a retried bootstrap cannot fail on it.
        db.execute(sql.encode())
        db.execute(sql.encode())

        attributes = {
            name: {
                "login" if login else "nologin",
                "noinherit" if not inherit else "inherit",
                *(["bypassrls"] if bypassrls else []),
                *(["superuser"] if superuser else []),
                *(["createrole"] if createrole else []),
                *(["createdb"] if createdb else []),
                *(["replication"] if replication else []),
            }
            for name, login, inherit, bypassrls, superuser, createrole, createdb, replication in db.execute(
                "select rolname, rolcanlogin, rolinherit, rolbypassrls, rolsuper, rolcreaterole, rolcreatedb,"
                " rolreplication from pg_roles where rolname = any(%s)",
                (list(bootstrap_roles()),),
            )
        }
        for name, wanted in bootstrap_roles().items():
            assert attributes[name] - {"inherit"} == wanted - {"inherit"}, name
        for api_role in ("anon", "authenticated", "service_role"):
            assert db.execute(
                "select pg_has_role('authenticator', %s, 'member')", (api_role,)
            ).fetchone() == (True,)

        owners = dict(db.execute("select nspname, nspowner::regrole::text from pg_namespace").fetchall())
        assert owners["auth"] == "supabase_auth_admin"
        assert {"extensions", "_realtime", "realtime"} <= set(owners)
        extensions = dict(
            db.execute("select extname, extnamespace::regnamespace::text from pg_extension").fetchall()
        )
        assert extensions["pgcrypto"] == extensions["uuid-ossp"] == "extensions"
        assert db.execute(
            "select count(*) from pg_publication where pubname = 'supabase_realtime'"
        ).fetchone() == (1,)
        timeouts = dict(
            db.execute(
                "select r.rolname, s.setconfig from pg_db_role_setting s join pg_roles r on r.oid = s.setrole"
            ).fetchall()
        )
        assert "statement_timeout=3s" in timeouts["anon"]

        # Supabase's trap, reproduced: what postgres creates in public is open to anon.
        db.execute("create table public.probe (id int)")
        db.execute("create function public.probe_fn() returns int language sql as 'select 1'")
        assert db.execute(
            "select has_table_privilege('anon', 'public.probe', 'select, insert')"
        ).fetchone() == (True,)
        assert db.execute(
            "select has_function_privilege('anon', 'public.probe_fn()', 'execute')"
        ).fetchone() == (True,)
        # What Auth creates in its schema is usable by the service role, not writable by anon.
        db.execute("set role supabase_auth_admin")
        db.execute("create table auth.probe (id int)")
        db.execute("reset role")
        assert db.execute(
            "select has_table_privilege('service_role', 'auth.probe', 'select')"
        ).fetchone() == (True,)
        assert db.execute("select has_table_privilege('anon', 'auth.probe', 'insert')").fetchone() == (False,)


def test_auth_and_the_mycelium_jobs_send_their_traces_to_the_configured_collector(
    manifests: list[dict[str, Any]],
) -> None:
    found = dict(containers(manifests))
    config = next(
        r for r in manifests if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "mycelium-config"
    )
    # Off until the cluster has a collector; Auth's switch a boolean even then.
    assert config["data"]["TRACING_ENABLED"] == "false"
    assert config["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""

    def from_config(variable: dict[str, Any]) -> str:
        return str(variable["valueFrom"]["configMapKeyRef"]["key"])

    auth = env_map(found["auth/gotrue"])
    assert from_config(auth["GOTRUE_TRACING_ENABLED"]) == "TRACING_ENABLED"
    assert auth["GOTRUE_TRACING_EXPORTER"]["value"] == "opentelemetry"
    assert auth["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "http/protobuf"
    for name in ("auth/gotrue", "mycelium-upkeep/upkeep", "mycelium-metrics/exporter"):
        endpoint = env_map(found[name])["OTEL_EXPORTER_OTLP_ENDPOINT"]
        assert from_config(endpoint) == "OTEL_EXPORTER_OTLP_ENDPOINT", name
