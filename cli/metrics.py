"""`mycelium metrics serve`: a Prometheus exporter for the credits, reading through the gateway
with the service_role key like any other back end. It keeps no state: each scrape asks the
analytics and audit functions, so every replica reports the same numbers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, cast

import httpx
import typer
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cli import traces
from cli.common import ApiSettings, JsonOption, ServiceKeyOption, UrlOption, reported, resolve_api
from cli.errors import UsageError
from cli.migrations import State, bundled_sql_dir, compare, discover
from cli.output import emit_json, say
from mycelium_client import AppliedMigration, MyceliumClient, MyceliumError
from mycelium_client._observe import event

DEFAULT_PORT = 9464
log = logging.getLogger("mycelium.metrics")

app = typer.Typer(help="Export the credit metrics to Prometheus.")


def sample(amount: Decimal) -> float:
    """prometheus_client turns every sample into a binary floating-point number when it exposes it
    (Prometheus keeps float64): the Decimal is handed over as it is, for charts, never for money."""
    return cast(float, amount)


SCRAPE_OK = (
    "mycelium_scrape_ok",
    "1 when this scrape read every number from the project, 0 when a request failed "
    "(the credit metrics are then left out).",
)
AUDIT_OK = (
    "mycelium_ledger_audit_ok",
    "1 when this scrape ran the ledger audit and every invariant holds; 0 when one is broken "
    "or the audit could not run (mycelium_scrape_ok 0).",
)


def flag(metric: tuple[str, str], on: bool) -> GaugeMetricFamily:
    """A gauge that is 1 or 0."""
    name, documentation = metric
    return GaugeMetricFamily(name, documentation, value=1 if on else 0)


class CreditsCollector(Collector):
    def __init__(self, client: MyceliumClient, requests: Counter) -> None:
        self.client, self.requests = client, requests

    def collect(self) -> Iterator[Metric]:
        try:
            # Each scrape a trace of its own, its requests the children.
            with traces.span("mycelium metrics scrape", new_trace=True):
                summary = self.client.admin.credit_summary()
                findings = self.client.admin.audit_ledger()
                orders = self.client.admin.order_status_counts()
                backlog = self.client.admin.upkeep_backlog()
                history = self.client.admin.applied_migrations()
                connections = self.client.admin.database_connections()
        except MyceliumError as error:
            # No numbers rather than stale ones; mycelium_requests_total shows the failures.
            if error.status == 0:
                self.requests.labels(status="error").inc()  # no response came back to count
            event(log, logging.ERROR, "scrape_failed", f"scrape failed: {error}", reason=error.reason)
            yield flag(SCRAPE_OK, False)
            # A ledger nobody could check is not known to be sound: 0, so that the alert on
            # min(mycelium_ledger_audit_ok) < 1 fires rather than going quiet with the series.
            yield flag(AUDIT_OK, False)
            return
        yield flag(SCRAPE_OK, True)
        yield GaugeMetricFamily(
            "mycelium_credits_in_circulation",
            "Credits held by users (spendable and held for orders).",
            value=sample(summary.circulation),
        )
        yield CounterMetricFamily(
            "mycelium_credits_issued",
            "Credits ever issued (purchases, grants, migration).",
            value=sample(summary.issued),
        )
        yield CounterMetricFamily(
            "mycelium_credits_spent", "Credits ever paid for orders.", value=sample(summary.spent)
        )
        yield CounterMetricFamily(
            "mycelium_credits_expired", "Credits ever expired.", value=sample(summary.expired)
        )
        yield GaugeMetricFamily(
            "mycelium_holds_outstanding", "Credits held for open orders.", value=sample(summary.held)
        )
        by_status = GaugeMetricFamily("mycelium_orders", "Orders by status.", labels=["status"])
        for count in orders:
            by_status.add_metric([count.status], count.orders)
        yield by_status
        # Labelled `task`: Prometheus sets `job` itself, to the scrape job's name.
        overdue = GaugeMetricFamily(
            "mycelium_upkeep_overdue",
            "Work a periodic job (`mycelium upkeep`) has left undone for over 15 minutes past its "
            "due time, by task: nonzero when the scheduler is not running or failing, or (days to "
            "roll up) a session holds a transaction open since before a day ended.",
            labels=["task"],
        )
        for job in backlog:
            overdue.add_metric([job.job], job.overdue)
        yield overdue
        yield migration_states(history)
        yield GaugeMetricFamily(
            "mycelium_database_connections",
            "Client connections open on the database server.",
            value=connections.connections,
        )
        yield GaugeMetricFamily(
            "mycelium_database_max_connections",
            "The most client connections the database accepts from the API's roles.",
            value=connections.max_connections,
        )
        yield flag(AUDIT_OK, not findings)


def migration_states(history: list[AppliedMigration]) -> GaugeMetricFamily:
    """The database's migrations against those this install shipped with (the same image runs the
    migrate job and the exporter), counted by state: nonzero pending means the migrate job has not
    run or failed; drifted or missing, that the schema was changed outside `mycelium sql push`."""
    applied = {row.version: (row.name, row.checksum, row.statements) for row in history}
    states = [row.state for row in compare(discover(bundled_sql_dir()), applied)]
    family = GaugeMetricFamily(
        "mycelium_migrations",
        "Migrations by state, against those this exporter shipped with.",
        labels=["state"],
    )
    for state in State:
        family.add_metric([state.value], states.count(state))
    return family


@dataclass
class Exporter:
    """The registry to serve, and the connections its collector reads through."""

    registry: CollectorRegistry
    client: MyceliumClient
    http: httpx.Client

    def close(self) -> None:
        self.client.close()
        self.http.close()


def exporter(api: ApiSettings) -> Exporter:
    """The credit metrics and mycelium_requests_total{status}: the exporter's own API requests by
    HTTP status (or `error` when none came back)."""
    registry = CollectorRegistry()
    requests = Counter("mycelium_requests", "API requests made by the exporter.", ["status"], registry=None)

    def count(response: httpx.Response) -> None:
        requests.labels(status=str(response.status_code)).inc()

    http = httpx.Client(timeout=30, event_hooks={"response": [count]})
    client = MyceliumClient(api.url, api.service_role_key, http_client=http)
    # Collected in this order: a scrape's own requests are already counted in its answer.
    registry.register(CreditsCollector(client, requests))
    registry.register(requests)
    return Exporter(registry, client, http)


@app.command()
@reported
def serve(
    port: Annotated[int, typer.Option(help="Port to serve /metrics on.")] = DEFAULT_PORT,
    address: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Serve the credit metrics to Prometheus until interrupted.

    They are on http://ADDRESS:PORT/metrics; --json prints that address as one JSON object once listening.

    Example: mycelium metrics serve --port 9464
    """
    api = resolve_api(url, service_key)
    served = exporter(api)
    try:
        server, thread = start_http_server(port, addr=address, registry=served.registry)
    except OSError as error:
        served.close()
        raise UsageError(f"cannot listen on {address}:{port}: {error.strerror}") from None
    metrics_url = f"http://{address}:{port}/metrics"
    if as_json:
        emit_json({"metrics_url": metrics_url})
    else:
        say(f"Serving metrics on {metrics_url} (Ctrl-C to stop)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        if not as_json:
            say("Stopped.")
    finally:
        server.shutdown()
        thread.join()
        served.close()
