"""The alert rules (deploy/monitoring/alerts.yml) as the monitoring tests read them, and
deploy/monitoring/prometheusrule.yaml, the same rules as the Prometheus Operator's PrometheusRule.

The manifest is generated, never edited: tests/deploy/test_alerts.py fails when it differs from
what this module makes of alerts.yml. After changing the rules, write it anew with
`.venv/bin/python -m tests.support.monitoring`.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.support import REPO

MONITORING = REPO / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"

HEADER = """\
# GENERATED from alerts.yml by `.venv/bin/python -m tests.support.monitoring`; do not edit.
# The alert rules for the Prometheus Operator (kube-prometheus-stack): its rule selector picks up
# PrometheusRules carrying its release label; set it to your Helm release name if it is not
# kube-prometheus-stack (as on the ServiceMonitors).
"""


def alert_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return groups


def alert_rules() -> dict[str, dict[str, Any]]:
    """Each alert's rule, by alert name."""
    return {rule["alert"]: rule for group in alert_groups() for rule in group["rules"]}


def alert_jobs() -> set[str]:
    """The scrape jobs the rules name (`job="..."`)."""
    return {job for rule in alert_rules().values() for job in re.findall(r'job="([^"]+)"', rule["expr"])}


def prometheus_rule() -> str:
    groups = alert_groups()
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "mycelium-alerts", "labels": {"release": "kube-prometheus-stack"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(manifest, sort_keys=False, width=100, allow_unicode=True)


if __name__ == "__main__":
    PROMETHEUS_RULE.write_text(prometheus_rule(), encoding="utf-8")
