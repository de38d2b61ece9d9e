"""The local stack: PostgreSQL + the Supabase bootstrap + `sql push` + PostgREST + gateway.

Everything lives under one folder (`.mycelium` by default) and listens on 127.0.0.1 only:
    port_base + 1  gateway (`/rest/v1/`, `/auth/v1/`, `/realtime/v1/`), the SUPABASE_URL
    port_base + 2  PostgreSQL
    port_base + 3  PostgREST
    port_base + 4  PostgREST's admin server (readiness)
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg

from cli import migrations
from cli.dev.bootstrap import bootstrap
from cli.dev.gateway import Gateway, Limits
from cli.dev.postgres import DATABASE, SUPERUSER, Cluster, socket_folder
from cli.dev.postgrest import PostgREST
from cli.dev.processes import RunAs, port_in_use
from cli.dev.versions import VERSIONS, auth_absent_because
from cli.errors import UsageError
from cli.keys import ApiKeys

DEFAULT_DIR = Path(".mycelium")
# Where a stack goes when the servers' OS user cannot reach the folder asked for (root's clone
# under /root, mode 700): that folder becomes a link to one here.
STACKS_HOME = Path("/var/lib/mycelium/stacks")
DEFAULT_PORT_BASE = 54320
PORT_SPAN = 5

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


SERVICE_USER = "the 'postgres' OS user (it runs the servers when you are root)"


def _unreachable(folder: Path, detail: str = "") -> UsageError:
    return UsageError(
        f"{SERVICE_USER} cannot reach {folder}{detail}: "
        "choose a --dir whose parent folders are world-readable"
    )


@dataclass
class StackSettings:
    """What `up` generated once and every later command reuses (kept in `stack.json`, mode 600)."""

    port_base: int
    jwt_secret: str
    anon_key: str
    service_role_key: str
    passwords: dict[str, str]
    auth_upstream: str | None = None
    realtime_upstream: str | None = None
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def load(cls, text: str) -> StackSettings:
        """From stack.json; a stack made before a setting existed gets its default."""
        values = json.loads(text)
        return cls(**{**values, "limits": Limits(**values.get("limits", {}))})

    @classmethod
    def generate(cls, port_base: int) -> StackSettings:
        keys = ApiKeys.generate()
        return cls(
            port_base=port_base,
            jwt_secret=keys.jwt_secret,
            anon_key=keys.anon_key,
            service_role_key=keys.service_role_key,
            passwords={role: secrets.token_urlsafe(18) for role in (SUPERUSER, "postgres", "authenticator")},
        )


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    running: bool
    address: str
    version: str = ""  # as pinned in supabase/versions.env; "" where the stack runs what it finds
    detail: str = ""  # why a server the stack does not start is not running

    @property
    def state(self) -> str:
        if self.running:
            return "running"
        return f"not running: {self.detail}" if self.detail else "stopped"


@dataclass
class UpReport:
    already_running: bool
    started: list[str] = field(default_factory=list)
    migrations_applied: list[str] = field(default_factory=list)


class LocalStack:
    def __init__(self, directory: Path = DEFAULT_DIR, *, sql_dir: Path | None = None) -> None:
        self.directory = directory.resolve()
        self.sql_dir = sql_dir or migrations.bundled_sql_dir()
        self.run_as = RunAs.for_current_user()
        self._settings: StackSettings | None = None

    # -- settings and addresses ------------------------------------------------------------
    @property
    def settings_file(self) -> Path:
        return self.directory / "stack.json"

    def exists(self) -> bool:
        return self.settings_file.is_file()

    @property
    def settings(self) -> StackSettings:
        if self._settings is None:
            if not self.exists():
                raise UsageError(f"no local stack in {self.directory}: run `mycelium dev up` first")
            self._settings = StackSettings.load(self.settings_file.read_text())
        return self._settings

    def _save(self, settings: StackSettings) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.settings_file.touch(mode=0o600)
        self.settings_file.write_text(json.dumps(asdict(settings), indent=2) + "\n")
        self._settings = settings

    @property
    def gateway_port(self) -> int:
        return self.settings.port_base + 1

    @property
    def db_port(self) -> int:
        return self.settings.port_base + 2

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def anon_key(self) -> str:
        return self.settings.anon_key

    @property
    def service_role_key(self) -> str:
        return self.settings.service_role_key

    @property
    def jwt_secret(self) -> str:
        return self.settings.jwt_secret

    @property
    def socket_dir(self) -> Path | None:
        """The folder of the database's Unix socket; None where the stack's path cannot hold one."""
        return socket_folder((self.directory / "run").resolve(), self.db_port)

    def _db_url(self, role: str) -> str:
        password = self.settings.passwords[role]
        return f"postgresql://{role}:{password}@127.0.0.1:{self.db_port}/{DATABASE}?sslmode=disable"

    def local_db_url(self, role: str = "postgres") -> str:
        """`role`'s URL through the Unix socket where there is one, else over loopback. Processes on
        this machine that talk to the database all the time use it (PostgREST, the benchmarks): a
        round trip through a Unix socket costs less CPU than one through TCP."""
        if self.socket_dir is None:
            return self._db_url(role)
        password = self.settings.passwords[role]
        folder = quote(str(self.socket_dir), safe="/")
        return f"postgresql://{role}:{password}@/{DATABASE}?host={folder}&port={self.db_port}"

    @property
    def db_url(self) -> str:
        """The migration role's URL (`postgres`, not a superuser, as on Supabase)."""
        return self._db_url("postgres")

    @property
    def superuser_db_url(self) -> str:
        return self._db_url(SUPERUSER)

    def env(self) -> dict[str, str]:
        return {
            "SUPABASE_URL": self.api_url,
            "SUPABASE_ANON_KEY": self.anon_key,
            "SUPABASE_SERVICE_ROLE_KEY": self.service_role_key,
            "SUPABASE_JWT_SECRET": self.jwt_secret,
            "MYCELIUM_DB_URL": self.db_url,
        }

    # -- components --------------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.directory / "logs"

    @property
    def cluster(self) -> Cluster:
        data, log = self.directory / "postgres", self.logs / "postgres.log"
        return Cluster(data, log, self.db_port, self.run_as, self.socket_dir)

    @property
    def postgrest(self) -> PostgREST:
        run = self.directory / "run"
        base = self.settings.port_base
        return PostgREST(
            run / "postgrest.conf",
            self.logs / "postgrest.log",
            run / "postgrest.pid",
            base + 3,
            base + 4,
            self.run_as,
        )

    @property
    def gateway(self) -> Gateway:
        return Gateway(self.directory / "gateway", self.logs / "gateway.log", self.gateway_port, self.run_as)

    def status(self) -> list[ComponentStatus]:
        base = self.settings.port_base
        return [
            ComponentStatus("postgres", self.cluster.running(), self._database_address()),
            ComponentStatus(
                "postgrest", self.postgrest.running() and self.postgrest.ready(), f"127.0.0.1:{base + 3}"
            ),
            ComponentStatus("gateway", self.gateway.running() and self.gateway.ready(), self.api_url),
        ]

    def auth_status(self) -> ComponentStatus:
        """Supabase Auth, which the stack does not start: running when `auth_upstream` is set and a
        server answers there (any HTTP answer: a test double has no health check), else why not."""
        upstream = self.settings.auth_upstream
        if not upstream:
            return ComponentStatus("auth", False, "", VERSIONS.auth_version, auth_absent_because())
        try:
            httpx.get(f"{upstream.rstrip('/')}/health", timeout=1)
        except httpx.HTTPError:
            return ComponentStatus(
                "auth", False, upstream, VERSIONS.auth_version, "auth_upstream does not answer"
            )
        return ComponentStatus("auth", True, upstream, VERSIONS.auth_version)

    def _database_address(self) -> str:
        tcp = f"127.0.0.1:{self.db_port}"
        return tcp if self.socket_dir is None else f"{tcp} and {self.socket_dir}/.s.PGSQL.{self.db_port}"

    def running(self) -> bool:
        return self.exists() and all(component.running for component in self.status())

    # -- lifecycle ---------------------------------------------------------------------------
    def up(self, *, port_base: int | None = None, progress: Progress = _quiet) -> UpReport:
        """Start whatever is not running; on a running stack report it and change nothing."""
        if not self.exists():
            self._prepare_directory(progress)  # may find, through a new link, a stack made before
        if self.exists():
            if self.running():
                if port_base is not None and port_base != self.settings.port_base:
                    raise UsageError(
                        f"the stack in {self.directory} already runs on port base {self.settings.port_base}: "
                        "`mycelium dev down` first to move it"
                    )
                return UpReport(already_running=True)
            if port_base is not None and port_base != self.settings.port_base:
                self.settings.port_base = port_base
                self._save(self.settings)
        else:
            self._save(StackSettings.generate(port_base or DEFAULT_PORT_BASE))
        report = UpReport(already_running=False)
        self._start_database(report, progress)
        progress("bootstrapping Supabase roles, grants and schemas")
        with psycopg.connect(self.superuser_db_url, autocommit=True) as conn:
            bootstrap(conn, passwords=self.settings.passwords)
        progress(f"pushing migrations from {self.sql_dir}")
        with migrations.connect(self.db_url) as conn:
            result = migrations.push(conn, migrations.discover(self.sql_dir))
        report.migrations_applied = [f.file_name for f in result.applied]
        self._start_api(report, progress)
        return report

    def _prepare_directory(self, progress: Progress) -> None:
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        if not self._servers_reach(self.directory.parent):
            self._move_to_stacks_home(progress)
        self.directory.mkdir(exist_ok=True)
        if not self._servers_reach(self.directory):
            raise _unreachable(self.directory)

    def _servers_reach(self, folder: Path) -> bool:
        if self.run_as.uid is None:
            return True  # the servers run as you
        return self.run_as.run(["test", "-x", folder, "-a", "-r", folder]).returncode == 0

    def _move_to_stacks_home(self, progress: Progress) -> None:
        """Put the stack under STACKS_HOME, in a folder named after the path asked for, and make
        that path a link to it: commands given the path find the stack, and the servers are given
        the folder they can reach (every path of theirs derives from `self.directory`)."""
        asked_for = self.directory
        if asked_for.is_dir() and any(asked_for.iterdir()):
            raise _unreachable(asked_for, ", which is not empty")
        target = STACKS_HOME / hashlib.sha256(str(asked_for).encode()).hexdigest()[:12]
        for folder in (STACKS_HOME.parent, STACKS_HOME, target):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)
        if asked_for.is_dir():
            asked_for.rmdir()  # empty: left by an attempt from before stacks could move
        asked_for.symlink_to(target, target_is_directory=True)
        progress(f"{asked_for} links to {target}: {SERVICE_USER} cannot reach {asked_for.parent}")
        self.directory = target

    def _ensure_folders(self) -> None:
        for folder in (
            self.directory / "postgres",
            self.logs,
            self.directory / "run",
            self.directory / "gateway",
        ):
            folder.mkdir(parents=True, exist_ok=True)
            self.run_as.own(folder)
        self.directory.chmod(0o755)
        (self.directory / "postgres").chmod(0o700)

    def _check_port(self, port: int, what: str) -> None:
        if port_in_use(port):
            base = self.settings.port_base
            raise UsageError(
                f"port {port} ({what}) is already in use: pass --port-base N to use N+1..N+{PORT_SPAN - 1} "
                f"instead of {base + 1}..{base + PORT_SPAN - 1}"
            )

    def _start_database(self, report: UpReport, progress: Progress) -> None:
        self._ensure_folders()
        cluster = self.cluster
        if not cluster.initialised():
            progress("creating the PostgreSQL cluster")
            cluster.initialise(self.settings.passwords[SUPERUSER])
        if not cluster.running():
            self._check_port(self.db_port, "PostgreSQL")
            progress(f"starting PostgreSQL on 127.0.0.1:{self.db_port}")
            cluster.start()
            report.started.append("postgres")

    def _start_api(self, report: UpReport, progress: Progress) -> None:
        postgrest, gateway, settings = self.postgrest, self.gateway, self.settings
        if not postgrest.running():
            self._check_port(postgrest.port, "PostgREST")
            self._check_port(postgrest.admin_port, "PostgREST admin")
            progress(f"starting PostgREST on 127.0.0.1:{postgrest.port}")
            authenticator = self.local_db_url("authenticator").replace("?sslmode=disable", "")
            postgrest.write_config(db_uri=authenticator, jwt_secret=settings.jwt_secret)
            postgrest.start()
            report.started.append("postgrest")
        if not gateway.running():
            self._check_port(gateway.port, "gateway")
            progress(f"starting the gateway on {self.api_url}")
            gateway.write_config(
                rest_port=postgrest.port,
                anon_key=settings.anon_key,
                service_role_key=settings.service_role_key,
                auth_upstream=settings.auth_upstream,
                realtime_upstream=settings.realtime_upstream,
                limits=settings.limits,
            )
            gateway.start()
            report.started.append("gateway")

    def set_upstreams(self, *, auth: str | None, realtime: str | None) -> None:
        """Route `/auth/v1/` and `/realtime/v1/` to servers of your own (a GoTrue, a Realtime);
        takes effect at the next `up` after a `down`, or at once with `restart_gateway`."""
        self.settings.auth_upstream = auth
        self.settings.realtime_upstream = realtime
        self._save(self.settings)

    def restart_gateway(self) -> None:
        self.gateway.stop()
        self._start_api(UpReport(already_running=False), _quiet)

    def down(self, *, progress: Progress = _quiet) -> list[str]:
        """Stop everything; returns what was running."""
        if not self.exists():
            return []
        stopped = []
        for name, component in (
            ("gateway", self.gateway),
            ("postgrest", self.postgrest),
            ("postgres", self.cluster),
        ):
            if component.running():
                progress(f"stopping {name}")
                component.stop()
                stopped.append(name)
        return stopped

    def reset(self, *, progress: Progress = _quiet) -> UpReport:
        """A fresh database: stop, delete the cluster, start again (same ports and keys)."""
        self.down(progress=progress)
        shutil.rmtree(self.directory / "postgres", ignore_errors=True)
        return self.up(progress=progress)

    def destroy(self) -> None:
        """Stop and delete the whole folder."""
        self.down()
        shutil.rmtree(self.directory, ignore_errors=True)


def default_directory() -> Path:
    return Path(os.environ.get("MYCELIUM_DEV_DIR", str(DEFAULT_DIR)))
