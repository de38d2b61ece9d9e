"""The Supabase servers' versions, pinned once in `supabase/versions.env`, and the Supabase Auth
that `./run setup` built from that pin (or why it could not); likewise the tests' Jaeger."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# In a checkout, the file itself; an installed wheel carries a copy beside this module
# (pyproject.toml force-includes it, as it does sql/).
_CANDIDATES = (PROJECT_ROOT / "supabase" / "versions.env", Path(__file__).with_name("versions.env"))
# What bash and this parser read alike: no quotes, spaces or `$` that `source` would interpret.
_KEY = re.compile(r"[A-Z][A-Z0-9_]*")
_VALUE = re.compile(r"[A-Za-z0-9._/@+-]+")

AUTH_NOT_BUILT = "not built yet: run ./run setup"
JAEGER_NOT_BUILT = "not built yet: run ./run setup-jaeger"


@dataclass(frozen=True)
class ServerVersions:
    """One field for each key of versions.env, named after it in lower case."""

    postgrest_version: str
    postgrest_npm: str
    auth_version: str
    auth_module: str
    auth_commit: str
    realtime_version: str
    jaeger_module: str
    jaeger_version: str

    @property
    def auth_cache_name(self) -> str:
        """The name of the cache folder `./run setup` builds this Auth into."""
        return f"{self.auth_version}-{self.auth_commit[:12]}"


def versions_file() -> Path:
    for candidate in _CANDIDATES:
        if candidate.is_file():
            return candidate
    return _CANDIDATES[0]  # missing: reading it names the file a checkout should have


def load(path: Path | None = None) -> ServerVersions:
    path = path or versions_file()
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            raise ValueError(f"{path}:{number}: expected KEY=value without quotes or spaces, got {line!r}")
        values[key.lower()] = value
    expected = {field.name for field in fields(ServerVersions)}
    if set(values) != expected:
        raise ValueError(
            f"{path}: missing {sorted(expected - set(values))}, unknown {sorted(set(values) - expected)}"
        )
    return ServerVersions(**values)


VERSIONS = load()


def auth_build_dir(environ: Mapping[str, str] = os.environ, versions: ServerVersions = VERSIONS) -> Path:
    """Where `./run setup` keeps the Auth it builds: outside the work tree (a build takes minutes
    and every clone shares it), one folder per pinned version and commit."""
    cache = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mycelium" / "auth" / versions.auth_cache_name


def auth_build(environ: Mapping[str, str] = os.environ) -> Path | str:
    """The Auth binary `./run setup` built for the pinned commit, or why there is none: the reason
    setup recorded when it could not build it, else that setup has not tried."""
    return _built(auth_build_dir(environ) / "auth", AUTH_NOT_BUILT)


def jaeger_build(environ: Mapping[str, str] = os.environ, versions: ServerVersions = VERSIONS) -> Path | str:
    """The Jaeger binary `./run test` built for the tracing test, or why there is none."""
    cache = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    folder = Path(cache) / "mycelium" / "jaeger" / versions.jaeger_version
    return _built(folder / "jaeger", JAEGER_NOT_BUILT)


def _built(binary: Path, not_built: str) -> Path | str:
    """`binary` if it is there, else the reason the build left beside it (unavailable.txt)."""
    if os.access(binary, os.X_OK):
        return binary
    try:
        recorded = (binary.parent / "unavailable.txt").read_text(encoding="utf-8").strip()
    except OSError:
        recorded = ""
    return recorded or not_built


def auth_absent_because(environ: Mapping[str, str] = os.environ) -> str:
    """Why the local stack has no Auth server, in words for the gateway's 503 and `dev status`."""
    found = auth_build(environ)
    if isinstance(found, Path):
        return f"built at {found}, but the local stack does not start it"
    return found
