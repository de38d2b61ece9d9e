"""Metrics, logs and traces wired together, checked without Docker: the `observability` profile of
docker-compose.supabase.yml (Prometheus, Loki, Grafana Alloy, Jaeger, Grafana), the log
shipper's configuration for compose and k3s, the scrape jobs, the dashboard, and the links from
every alert to its runbook, dashboard, logs and traces.

Prometheus' configuration goes through the real `promtool check config`. No Alloy binary can be
had here (its module is not served by the Go module proxy), so its configuration is checked for
what the other files rely on: components that exist where they are referenced, the files it
reads mounted where it reads them, and a `level` rule for every service that logs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO
from tests.support.deploy import (
    COMPOSE_FILE,
    DEPLOY_DOC,
    K3S_DIR,
    MONITORING_DIR,
    by_kind,
    kustomize_build,
    load_yaml,
    option_value,
    postgres_settings,
)
from tests.support.monitoring import alert_jobs, alert_rules

ALLOY_DIR = MONITORING_DIR / "alloy"
SCRAPE_CONFIG = MONITORING_DIR / "prometheus-scrape.yml"
DASHBOARD = MONITORING_DIR / "grafana-dashboard.json"
GRAFANA_PROVISIONING = MONITORING_DIR / "grafana" / "provisioning"
OBSERVABILITY = {"prometheus", "loki", "alloy", "jaeger", "grafana"}
# The services whose logs the issue names: PostgreSQL, PostgREST, Auth, Realtime, the gateway,
# and the mycelium commands (migrate, upkeep, the exporter).
LOGGING_SERVICES = {"db", "rest", "auth", "realtime", "kong", "migrate", "upkeep", "metrics"}
# Grafana data source uids, which the alerts' links and the dashboard name.
DATASOURCES = {"prometheus": "prometheus", "loki": "loki", "jaeger": "jaeger"}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load_yaml(COMPOSE_FILE)["services"]
    return found


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host source (a repository path, a host path or a named volume)."""
    return {volume.split(":")[1]: volume.split(":")[0] for volume in service.get("volumes", [])}


def repository_file(source: str) -> Path:
    return (REPO / source).resolve()


# ---------------------------------------------------------------------------------------------
# The compose profile
# ---------------------------------------------------------------------------------------------


def test_the_observability_profile_runs_the_five_services_and_the_exporter(
    services: dict[str, dict[str, Any]],
) -> None:
    profiled = {name for name, service in services.items() if "observability" in service.get("profiles", [])}
    assert profiled == OBSERVABILITY | {"metrics"}
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_the_mycelium_commands_log_json_lines(services: dict[str, dict[str, Any]]) -> None:
    for name in ("migrate", "upkeep", "metrics"):
        assert services[name]["environment"]["MYCELIUM_LOG_FORMAT"] == "json", name
    for workload in kustomize_build(K3S_DIR):
        if workload["kind"] not in {"Deployment", "Job", "CronJob"}:
            continue
        spec = workload["spec"]
        pod = (spec["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else spec)["template"]["spec"]
        for container in pod["containers"]:
            if container["image"].startswith("ghcr.io/threefoldtech/mycelium-migrate:"):
                env = {variable["name"]: variable.get("value") for variable in container["env"]}
                assert env["MYCELIUM_LOG_FORMAT"] == "json", workload["metadata"]["name"]


def prometheus_config_with_host_paths(services: dict[str, dict[str, Any]], folder: Path) -> Path:
    """prometheus-scrape.yml with the files it names inside the container replaced by the files
    the compose file mounts there: what the container's Prometheus reads."""
    prometheus = services["prometheus"]
    inside = mounts(prometheus)
    config_path = option_value(prometheus["command"], "--config.file")
    assert repository_file(inside[config_path]) == SCRAPE_CONFIG.resolve()
    config = load_yaml(SCRAPE_CONFIG)
    config["rule_files"] = [str(repository_file(inside[path])) for path in config["rule_files"]]
    written = folder / "prometheus.yml"
    written.write_text(yaml.safe_dump(config))
    return written


def test_prometheus_accepts_its_configuration_and_the_rules_it_loads(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package: `./run setup` installs it)")
    config = prometheus_config_with_host_paths(services, tmp_path)
    assert load_yaml(config)["rule_files"] == [str((MONITORING_DIR / "alerts.yml").resolve())]
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def listening_port(service: str, services: dict[str, dict[str, Any]]) -> int:
    """The port a compose service serves its metrics (or readiness) on, from its own settings."""
    environment = services[service].get("environment", {})
    match service:
        case "metrics":
            return int(option_value(services[service]["command"], "--port"))
        case "rest":
            return int(environment["PGRST_ADMIN_SERVER_PORT"])
        case "auth":
            assert environment["GOTRUE_METRICS_ENABLED"] == "true"
            assert environment["GOTRUE_METRICS_EXPORTER"] == "prometheus"
            return int(environment["OTEL_EXPORTER_PROMETHEUS_PORT"])
        case "kong":
            assert "prometheus" in environment["KONG_PLUGINS"].split(",")
            return int(environment["KONG_STATUS_LISTEN"].rsplit(":", 1)[1])
    raise AssertionError(f"no scrape target expected on {service}")


def test_the_scrape_jobs_reach_the_services_under_the_alerts_job_names(
    services: dict[str, dict[str, Any]],
) -> None:
    jobs = {job["job_name"]: job for job in load_yaml(SCRAPE_CONFIG)["scrape_configs"]}
    assert set(jobs) == {"mycelium", "postgrest", "auth", "kong"}
    assert alert_jobs() <= set(jobs)
    # The ServiceMonitors on k3s name the same jobs.
    monitors = by_kind(kustomize_build(MONITORING_DIR), "ServiceMonitor").values()
    relabelled = {
        r["replacement"] for m in monitors for e in m["spec"]["endpoints"] for r in e["relabelings"]
    }
    assert relabelled == set(jobs)
    for name, job in jobs.items():
        ((target,),) = [group["targets"] for group in job["static_configs"]]
        host, port = target.split(":")
        assert int(port) == listening_port(host, services), f"{name} scrapes {target}"
        assert job.get("metrics_path", "/metrics") == ("/ready" if name == "postgrest" else "/metrics")


# ---------------------------------------------------------------------------------------------
# Logs: PostgreSQL's files, Alloy, Loki
# ---------------------------------------------------------------------------------------------


def alloy_components(text: str) -> set[str]:
    """`kind.name "label"` blocks of an Alloy file, as the `kind.name.label` others refer to."""
    return {
        f"{kind}.{label}"
        for kind, label in re.findall(r'^\s*([a-z_]+(?:\.[a-z_]+)+) "([^"]+)" \{', text, re.M)
    }


def alloy_references(text: str) -> set[str]:
    """The components an Alloy file takes exports from (`kind.name.label.export`)."""
    return set(re.findall(r"\b((?:[a-z_]+\.){2,}[a-z_]+)\.(?:receiver|targets|output|rules)\b", text))


def alloy_selector_services(text: str) -> set[str]:
    """The services the level rules of an Alloy file select (`{service=...}` selectors)."""
    found: set[str] = set()
    for values in re.findall(r'service=~?\\"([^\\]+)\\"', text):
        found |= set(values.split("|"))
    return found


@pytest.mark.parametrize("name", ["compose.alloy", "k3s.alloy"])
def test_every_alloy_component_referenced_is_declared(name: str) -> None:
    text = (ALLOY_DIR / name).read_text(encoding="utf-8")
    levels = (ALLOY_DIR / "levels.alloy").read_text(encoding="utf-8")
    assert text.count("{") == text.count("}") and levels.count("{") == levels.count("}")
    (imported,) = re.findall(r'import\.file "(\w+)" \{\s*filename = "([^"]+)"', text)
    namespace, filename = imported
    assert Path(filename).name == "levels.alloy"
    (declared,) = re.findall(r'^declare "(\w+)"', levels, re.M)
    # The module's component, instantiated once as `logs`.
    assert f'{namespace}.{declared} "logs"' in text
    known = alloy_components(text) | {f"{namespace}.{declared}.logs"}
    assert alloy_references(text) <= known, alloy_references(text) - known
    assert alloy_references(levels) <= alloy_components(levels)
    # Every source ends in the level rules, and those in Loki.
    sources = re.findall(r"forward_to\s*=\s*\[([^\]]+)\]", text)
    assert sources and all(
        target.strip() in {f"{namespace}.{declared}.logs.receiver", "loki.write.loki.receiver"}
        for target in sources
    )


def test_every_service_that_logs_gets_its_level_and_is_shipped(services: dict[str, dict[str, Any]]) -> None:
    levels = (ALLOY_DIR / "levels.alloy").read_text(encoding="utf-8")
    assert alloy_selector_services(levels) >= LOGGING_SERVICES
    assert alloy_selector_services(levels) <= set(services)
    assert 'stage.labels {\n      values = {level = ""}' in levels
    compose_alloy = (ALLOY_DIR / "compose.alloy").read_text(encoding="utf-8")
    # Every container of the stack, by its compose project, labelled by its compose service.
    project = load_yaml(COMPOSE_FILE)["name"]
    assert f'values = ["com.docker.compose.project={project}"]' in compose_alloy
    assert '"__meta_docker_container_label_com_docker_compose_service"]\n    target_label  = "service"' in (
        compose_alloy
    )


def test_the_shipper_reads_the_database_log_files_where_the_database_writes_them(
    services: dict[str, dict[str, Any]],
) -> None:
    alloy, db = services["alloy"], services["db"]
    log_directory = postgres_settings(db["command"])["log_directory"]
    volume = mounts(db)[log_directory]
    assert f"{volume}:{log_directory}:ro" in alloy["volumes"]
    text = (ALLOY_DIR / "compose.alloy").read_text(encoding="utf-8")
    assert f'"__path__" = "{log_directory}/*.json", "service" = "db"' in text
    # The configuration folder, and the file Alloy runs, are the repository's.
    inside = mounts(alloy)
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in alloy["volumes"]
    config_dir = next(
        target for target, source in inside.items() if repository_file(source) == ALLOY_DIR.resolve()
    )
    run_file = alloy["command"][-1]
    assert Path(run_file).parent == Path(config_dir) and (ALLOY_DIR / Path(run_file).name).is_file()
    (filename,) = re.findall(r'filename = "([^"]+)"', text)
    assert Path(filename).parent == Path(config_dir) and (ALLOY_DIR / Path(filename).name).is_file()


def test_the_shipper_pushes_to_the_loki_the_profile_runs(services: dict[str, dict[str, Any]]) -> None:
    loki = services["loki"]
    (flag,) = loki["command"]
    option, config_path = flag.split("=", 1)
    assert option == "-config.file"
    assert repository_file(mounts(loki)[config_path]) == (MONITORING_DIR / "loki.yml").resolve()
    port = load_yaml(MONITORING_DIR / "loki.yml")["server"]["http_listen_port"]
    text = (ALLOY_DIR / "compose.alloy").read_text(encoding="utf-8")
    assert f'url = "http://loki:{port}/loki/api/v1/push"' in text


def test_on_k3s_every_pod_is_labelled_with_its_compose_service(services: dict[str, dict[str, Any]]) -> None:
    text = (ALLOY_DIR / "k3s.alloy").read_text(encoding="utf-8")
    (regex,) = re.findall(
        r'"__meta_kubernetes_pod_label_app_kubernetes_io_name"\]\n    regex         = "([^"]+)"', text
    )
    named = set()
    for workload in kustomize_build(K3S_DIR):
        if workload["kind"] in {"Deployment", "Job", "CronJob"}:
            spec = workload["spec"]
            template = (spec["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else spec)["template"]
            app = template["metadata"]["labels"]["app.kubernetes.io/name"]
            match = re.fullmatch(regex, app)
            assert match, app
            named.add(match[1])
    (cluster,) = by_kind(kustomize_build(K3S_DIR), "Cluster")
    assert f'regex         = "{cluster}"\n    target_label  = "service"\n    replacement   = "db"' in text
    assert LOGGING_SERVICES <= named | {"db"} <= set(services)
    config_map = by_kind(kustomize_build(MONITORING_DIR), "ConfigMap")["mycelium-alloy"]
    assert set(config_map["data"]) == {"k3s.alloy", "levels.alloy"}


# ---------------------------------------------------------------------------------------------
# Grafana, the dashboard, and the alerts' links
# ---------------------------------------------------------------------------------------------


def test_grafana_is_provisioned_with_the_three_data_sources_and_the_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    inside = mounts(grafana)
    assert repository_file(inside["/etc/grafana/provisioning"]) == GRAFANA_PROVISIONING.resolve()
    sources = load_yaml(GRAFANA_PROVISIONING / "datasources" / "mycelium.yml")["datasources"]
    by_type = {source["type"]: source for source in sources}
    assert {t: s["uid"] for t, s in by_type.items()} == DATASOURCES
    ports = {"prometheus": 9090, "loki": 3100, "jaeger": 16686}
    for kind, source in by_type.items():
        assert source["url"] == f"http://{kind}:{ports[kind]}", source["url"]
        assert kind in services
    assert by_type["loki"]["jsonData"]["derivedFields"][0]["datasourceUid"] == "jaeger"
    assert by_type["jaeger"]["jsonData"]["tracesToLogsV2"]["datasourceUid"] == "loki"
    (provider,) = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "mycelium.yml")["providers"]
    dashboards = [t for t, s in inside.items() if repository_file(s) == DASHBOARD.resolve()]
    assert [str(Path(t).parent) for t in dashboards] == [provider["options"]["path"]]


def exported_metrics() -> set[str]:
    """Every metric `mycelium metrics serve` exports, read from its source (counters gain _total)."""
    source = (REPO / "cli" / "metrics.py").read_text(encoding="utf-8")
    names = set(re.findall(r'"(mycelium_[a-z_]+)"', source))
    counters = set(re.findall(r'(?:Counter|CounterMetricFamily)\(\s*"(mycelium_[a-z_]+)"', source))
    return {f"{name}_total" if name in counters else name for name in names}


def test_every_exported_metric_has_a_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    expressions = " ".join(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
    metrics = exported_metrics()
    assert {
        "mycelium_migrations",
        "mycelium_database_connections",
        "mycelium_credits_issued_total",
    } <= metrics
    assert not sorted(m for m in metrics if not re.search(rf"\b{m}\b", expressions))


def explore_pane(url: str) -> dict[str, Any]:
    """The one pane a Grafana Explore link opens."""
    path, _, query = url.partition("?")
    assert path == "/explore"
    panes = json.loads(urllib.parse.parse_qs(query)["panes"][0])
    (pane,) = panes.values()
    return dict(pane)


def logged_services(pane: dict[str, Any]) -> set[str]:
    (query,) = pane["queries"]
    match = re.fullmatch(r'\{service(=~?)"([^"]+)"\}', query["expr"])
    assert match, query["expr"]
    return set(match[2].split("|")) if match[1] == "=~" else {match[2]}


def test_every_alert_links_to_its_runbook_dashboard_logs_and_traces() -> None:
    headings = {
        line[5:].strip()
        for line in DEPLOY_DOC.read_text(encoding="utf-8").splitlines()
        if line.startswith("#### ")
    }
    uid = json.loads(DASHBOARD.read_text(encoding="utf-8"))["uid"]
    for name, rule in alert_rules().items():
        annotations = rule["annotations"]
        # GitHub's anchor of the `#### Name` heading.
        assert annotations["runbook_url"] == f"docs/deploy.md#{name.lower()}" and name in headings
        assert annotations["dashboard_url"] == f"/d/{uid}"
        logs = explore_pane(annotations["logs_url"])
        assert logs["datasource"] == DATASOURCES["loki"]
        assert logged_services(logs) <= LOGGING_SERVICES, name
        if "traces_url" in annotations:
            traces = explore_pane(annotations["traces_url"])
            assert (traces["datasource"], traces["queries"][0]["service"]) == (
                DATASOURCES["jaeger"],
                "mycelium",
            )
    # The commands' alerts lead to their traces.
    assert all(
        "traces_url" in alert_rules()[name]["annotations"]
        for name in ("MyceliumMoneyOperationErrors", "MyceliumUpkeepOverdue", "MyceliumExporterCannotRead")
    )
    for link in json.loads(DASHBOARD.read_text(encoding="utf-8"))["links"]:
        assert explore_pane(link["url"])["datasource"] in {DATASOURCES["loki"], DATASOURCES["jaeger"]}
