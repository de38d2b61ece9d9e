"""The local stack's PostgreSQL cluster: its data under the stack folder, listening on 127.0.0.1
only, with `supabase_admin` as the superuser, as on a Supabase database."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cli.dev.processes import RunAs, ServiceFailed, find_program, log_tail, wait_until
from cli.errors import UsageError

SUPERUSER = "supabase_admin"
DATABASE = "postgres"
# pg_ctl's shutdown modes.
StopMode = Literal["smart", "fast", "immediate"]

# Loopback, plus a Unix socket where the stack has one (`Cluster.socket_dir`, given at each start);
# logical WAL so that a database feed can decode changes, and WAL flush times in pg_stat_wal (the
# commit flush is what bounds transfers into one account; bench/ledger.py reports it).
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "200",
    "wal_level": "logical",
    "shared_buffers": "256MB",
    "log_min_messages": "warning",
    "timezone": "'UTC'",
    "track_wal_io_timing": "on",
}


def server_binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres (Debian keeps them off PATH)."""
    candidates = [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    initdb = find_program(
        "initdb",
        extra=[folder / "initdb" for folder in candidates],
        env_var="MYCELIUM_PG_INITDB",
        install_hint="install the PostgreSQL 15 server (Debian: apt-get install postgresql-15), "
        "or set MYCELIUM_PG_INITDB to its initdb",
    )
    return initdb.parent


# Who may log in, and how: passwords always, over loopback and the local socket; the superuser may
# also stream a base backup over loopback (`pg_basebackup`, as in docs/deploy.md's backups). Written
# at every start, so that a cluster made before a line existed accepts it too.
PG_HBA = f"""# mycelium dev: password logins over loopback and the local Unix socket only
host all all 127.0.0.1/32 scram-sha-256
local all all scram-sha-256
host replication {SUPERUSER} 127.0.0.1/32 scram-sha-256
"""

# postmaster.pid's line of the server's status (LOCK_FILE_LINE_PM_STATUS, counted from 0), and how
# long a restored cluster may take to replay its archived WAL.
PID_FILE_STATUS_LINE = 7
RECOVERY_TIMEOUT_SECONDS = 600

# A Unix socket's path (folder + "/.s.PGSQL.<port>") must fit in sockaddr_un's 108 bytes, and the
# folder goes through a shell (pg_ctl) and a comma- and space-separated list (the server's setting).
SOCKET_PATH_MAX = 107
SOCKET_FOLDER_UNSAFE = re.compile(r"[\s'\",\\]")


def socket_folder(candidate: Path, port: int) -> Path | None:
    """`candidate` when a socket there is possible, else None (the cluster then listens on TCP only)."""
    too_long = len(os.fsencode(candidate / f".s.PGSQL.{port}")) > SOCKET_PATH_MAX
    return None if too_long or SOCKET_FOLDER_UNSAFE.search(str(candidate)) else candidate


@dataclass(frozen=True)
class Cluster:
    data: Path
    log: Path
    port: int
    run_as: RunAs
    socket_dir: Path | None = None

    @property
    def pg_ctl(self) -> Path:
        return server_binaries() / "pg_ctl"

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def initialise(self, superuser_password: str) -> None:
        self.data.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.run_as.own(self.data)
        password_file = self.data.parent / ".initdb-password"
        password_file.write_text(superuser_password)
        self.run_as.own(password_file)
        try:
            result = self.run_as.run(
                [
                    server_binaries() / "initdb",
                    "-D",
                    self.data,
                    "-U",
                    SUPERUSER,
                    f"--pwfile={password_file}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            )
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ServiceFailed(f"initdb failed: {(result.stderr or result.stdout).strip().splitlines()[-1]}")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# mycelium dev\n")
            for key, value in SETTINGS.items():
                conf.write(f"{key} = {value}\n")
            conf.write(f"port = {self.port}\n")

    def running(self) -> bool:
        if not self.initialised():
            return False
        return self.run_as.run([self.pg_ctl, "status", "-D", self.data]).returncode == 0

    def start(self) -> None:
        if not self.initialised():
            raise UsageError(f"no database cluster in {self.data}")
        hba = self.data / "pg_hba.conf"
        hba.write_text(PG_HBA)
        self.run_as.own(hba)
        # `-k` names the socket's folder, quoted for the shell pg_ctl starts the server through
        # (socket_folder refuses the characters this quoting could not carry).
        options = f"-p {self.port}"
        if self.socket_dir is not None:
            options += f" -k '{self.socket_dir}'"
        result = self.run_as.run(
            [self.pg_ctl, "start", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", options]
        )
        if result.returncode != 0:
            raise ServiceFailed(f"PostgreSQL did not start on port {self.port}: {log_tail(self.log)}")
        # pg_ctl reports a cluster restored from a backup as started once it replays the WAL; it
        # takes connections once the replay is over (docs/deploy.md's restores turn hot standby off).
        wait_until(
            lambda: self.server_status() not in ("starting", "standby"), timeout=RECOVERY_TIMEOUT_SECONDS
        )
        if self.server_status() != "ready":
            raise ServiceFailed(f"PostgreSQL did not finish its recovery: {log_tail(self.log)}")

    def server_status(self) -> str | None:
        """What the server says of itself in postmaster.pid (`starting`, `standby`, `ready`,
        `stopping`), None when it is not running."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        return lines[PID_FILE_STATUS_LINE].strip() if len(lines) > PID_FILE_STATUS_LINE else "starting"

    def stop(self, *, mode: StopMode = "fast") -> None:
        """`fast`: roll back open transactions and shut down cleanly; `immediate`: end every
        process at once, as a crash would, so that the next start runs crash recovery."""
        if self.running():
            self.run_as.run([self.pg_ctl, "stop", "-D", self.data, "-m", mode, "-w", "-t", "60"])
