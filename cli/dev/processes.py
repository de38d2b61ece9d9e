"""Running the local stack's servers: as the `postgres` OS user when invoked as root (PostgreSQL
refuses root), as the invoking user otherwise; detached, with pid files, on loopback ports."""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cli.errors import CliError, UsageError

SERVICE_ACCOUNT = "postgres"


@dataclass(frozen=True)
class RunAs:
    """Whom the servers run as: `uid`/`gid` when the caller is root, else the caller itself."""

    uid: int | None
    gid: int | None

    @classmethod
    def for_current_user(cls) -> RunAs:
        if os.geteuid() != 0:
            return cls(None, None)
        try:
            account = pwd.getpwnam(SERVICE_ACCOUNT)
        except KeyError:
            raise UsageError(
                "running as root, the local stack runs its servers as the 'postgres' OS user, which does not "
                "exist: install PostgreSQL (apt-get install postgresql-15) or run as a normal user"
            ) from None
        return cls(account.pw_uid, account.pw_gid)

    @property
    def extra_groups(self) -> list[int] | None:
        """Drop root's supplementary groups when switching user; keep the caller's otherwise."""
        return None if self.uid is None else []

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.uid is not None:
            account = pwd.getpwuid(self.uid)
            env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
        return env

    def own(self, path: Path) -> None:
        """Give `path` to the service account so the servers can write there."""
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def run(self, command: Sequence[str | Path], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(part) for part in command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=self.uid,
            group=self.gid,
            extra_groups=self.extra_groups,
            env=self.environment(),
        )

    def spawn(self, command: Sequence[str | Path], log: Path) -> int:
        """Start a long-running server detached from this process; returns its pid."""
        with log.open("ab") as sink:
            process = subprocess.Popen(
                [str(part) for part in command],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self.uid,
                group=self.gid,
                extra_groups=self.extra_groups,
                env=self.environment(),
            )
        return process.pid


def find_program(
    name: str, *, extra: Sequence[Path] = (), install_hint: str, env_var: str | None = None
) -> Path:
    """Locate a program: `env_var`, then PATH, then the `extra` places; a clear error otherwise."""
    if env_var and (chosen := os.environ.get(env_var)):
        path = Path(chosen)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise UsageError(f"{env_var}={chosen} is not an executable file")
    if found := shutil.which(name):
        return Path(found)
    for candidate in extra:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise UsageError(f"{name} not found: {install_hint}")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours (the spawner exited without reaping) is not alive.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return True
    return status != "Z"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def terminate(pid: int | None, *, timeout: float = 15) -> None:
    """SIGTERM, wait, then SIGKILL: nothing is left running."""
    if not pid_alive(pid):
        return
    assert pid is not None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if wait_until(lambda: not pid_alive(pid), timeout=timeout):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_until(lambda: not pid_alive(pid), timeout=5)


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port_base(span: int = 5, start: int = 42000) -> int:
    """A port base whose next `span` ports are all free on 127.0.0.1. Probing begins a random
    number of steps above `start`: nothing holds the ports between this probe and the servers
    binding them, so runs starting together (parallel CI jobs) must not probe in step."""
    probe = start + span * 7 * random.randrange(64)
    while probe < 64000:
        if not any(port_in_use(probe + offset) for offset in range(1, span)):
            return probe
        probe += span * 7
    raise RuntimeError("no free ports on 127.0.0.1")


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition: Callable[[], bool], *, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def log_tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


class ServiceFailed(CliError):
    """A server of the local stack did not start."""
