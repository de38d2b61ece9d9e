"""The alert rules (deploy/monitoring/alerts.yml) under Prometheus's own tools: `promtool check
rules`, `promtool test rules` (alerts.test.yml: series that fire each alert and series that do
not), and a real Prometheus scraping `mycelium metrics serve` and PostgREST's admin server on a
scratch stack, where breaking the ledger raises the audit alert.

Debian's `prometheus` package (which `./run` installs) provides both binaries."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from cli.dev.processes import free_port_base
from cli.dev.stack import LocalStack
from cli.dev.users import create_user
from tests.support import MYCELIUM, REPO, interruptible, stack_folder
from tests.support.monitoring import MONITORING, PROMETHEUS_RULE, RULES, alert_rules, prometheus_rule


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian's prometheus package: `./run setup` installs it)")
    return found


def test_the_rules_are_valid() -> None:
    checked = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_on_its_series_and_not_on_others() -> None:
    tested = subprocess.run(
        [tool("promtool"), "test", "rules", "alerts.test.yml"], cwd=MONITORING, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Each alert is expected to fire somewhere, and is checked quiet somewhere else.
    tests = yaml.safe_load((MONITORING / "alerts.test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    alerts = set(alert_rules())
    assert {case["alertname"] for case in cases if case.get("exp_alerts")} == alerts
    assert {case["alertname"] for case in cases if not case.get("exp_alerts")} == alerts


def test_every_alert_has_its_runbook_entry() -> None:
    runbook = (REPO / "docs" / "deploy.md").read_text()
    assert not sorted(alert for alert in alert_rules() if f"#### {alert}" not in runbook)


def test_the_prometheus_rule_for_k3s_is_alerts_yml() -> None:
    """The PrometheusRule is generated from alerts.yml: the two cannot drift apart."""
    assert PROMETHEUS_RULE.read_text(encoding="utf-8") == prometheus_rule(), (
        "deploy/monitoring/prometheusrule.yaml is stale: `.venv/bin/python -m tests.support.monitoring`"
    )


@pytest.fixture(scope="module")
def scratch() -> Iterator[LocalStack]:
    """A stack of its own: its ledger gets broken."""
    folder = stack_folder("mycelium-alerts-")
    stack = LocalStack(folder / "stack")
    try:
        stack.up(port_base=free_port_base())
        yield stack
    finally:
        stack.destroy()
        shutil.rmtree(folder, ignore_errors=True)


class Prometheus:
    """A real Prometheus evaluating alerts.yml every second over what it scrapes. A scrape may
    take up to 5 s: the exporter runs the audit on each, and a busy 2-core machine made a 1 s
    scrape time out, reading as a target down."""

    def __init__(self, folder: Path, targets: dict[str, tuple[str, str]]) -> None:
        """`targets`: job name -> (host:port, metrics path)."""
        self.port = free_port_base(span=1, start=48000)
        config = {
            "global": {"scrape_interval": "5s", "scrape_timeout": "5s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [address]}]}
                for job, (address, path) in targets.items()
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(folder / "prometheus.log").open("w"),
        )

    def get(self, path: str) -> Any:
        return httpx.get(f"http://127.0.0.1:{self.port}/api/v1/{path}", timeout=5).json()["data"]

    def wait_for(self, what: str, found: Any, seconds: float = 120) -> Any:
        """Polls until `found()` is true: a wait with a deadline for a server, not a timed assertion."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                value = found()
            except httpx.HTTPError:
                value = None
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"Prometheus never saw {what}; its targets: {self.target_errors()}")

    def alerts(self) -> dict[str, str]:
        return {alert["labels"]["alertname"]: alert["state"] for alert in self.get("alerts")["alerts"]}

    def target_errors(self) -> dict[str, str]:
        try:
            targets = self.get("targets")["activeTargets"]
        except httpx.HTTPError as error:
            return {"prometheus": str(error)}
        return {t["labels"]["job"]: f"{t['health']}: {t['lastError']}" for t in targets}

    def targets_up(self) -> set[str]:
        return {t["labels"]["job"] for t in self.get("targets")["activeTargets"] if t["health"] == "up"}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def test_a_real_prometheus_raises_the_audit_alert_when_the_ledger_breaks(
    scratch: LocalStack, tmp_path: Path
) -> None:
    exporter_port = free_port_base(span=1, start=47500)
    exporter = subprocess.Popen(
        [*MYCELIUM, "metrics", "serve", "--port", str(exporter_port), "--address", "127.0.0.1"],
        env={**os.environ, **scratch.env()},
        preexec_fn=interruptible,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prometheus = Prometheus(
        tmp_path,
        {
            "mycelium": (f"127.0.0.1:{exporter_port}", "/metrics"),
            # PostgREST 12.0 has no metrics: its readiness page is empty while it serves (a valid,
            # empty scrape) and 503 when it cannot reach the database.
            "postgrest": (f"127.0.0.1:{scratch.postgrest.admin_port}", "/ready"),
        },
    )
    try:
        prometheus.wait_for("both targets up", lambda: prometheus.targets_up() == {"mycelium", "postgrest"})
        # A few evaluations over a sound ledger and a serving PostgREST: nothing is raised.
        prometheus.wait_for(
            "the audit's result", lambda: prometheus.get("query?query=mycelium_ledger_audit_ok")["result"]
        )
        time.sleep(3)
        quiet = prometheus.alerts()
        for alert in ("MyceliumLedgerAuditFailing", "MyceliumExporterCannotRead", "PostgRESTDown"):
            assert alert not in quiet, quiet
        with psycopg.connect(scratch.superuser_db_url, autocommit=True) as db:
            user = create_user(db, f"alerts-{uuid.uuid4().hex[:8]}@example.test")
            db.execute(
                "update public.credit_accounts set balance = balance + 1 where user_id = %s", (user.id,)
            )
        # `for: 1m` then makes it fire (alerts.test.yml proves the timing): pending is the rule
        # matching what was really scraped.
        state = prometheus.wait_for(
            "MyceliumLedgerAuditFailing", lambda: prometheus.alerts().get("MyceliumLedgerAuditFailing")
        )
        assert state in ("pending", "firing")
        assert "MyceliumExporterCannotRead" not in prometheus.alerts()
    finally:
        prometheus.stop()
        exporter.terminate()
        exporter.wait(timeout=30)
