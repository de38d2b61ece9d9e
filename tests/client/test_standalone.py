"""The client stands alone: a service that installs `mycelium` without extras gets
`mycelium_client` and none of the command's dependencies. Checked offline, on what pip would see:
the metadata of the wheel built from this checkout, and a fresh interpreter importing the client
with the command's dependencies made unimportable."""

from __future__ import annotations

import email.parser
import importlib.metadata
import json
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterable, Iterator
from email.message import Message
from pathlib import Path

import pytest
from hatchling.builders.wheel import WheelBuilder
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import REPO
from tests.support.deploy import MIGRATE_DOCKERFILE

PROJECT = "mycelium"
# What only the command needs, by import name: its distribution (PyJWT is left out: the client's
# supabase-auth requires it too).
COMMAND_ONLY = {
    "typer": "typer",
    "rich": "rich",
    "prometheus_client": "prometheus-client",
    "psycopg": "psycopg",
}
# The `otel` extra: the client's spans, the command's export.
OPENTELEMETRY = {"opentelemetry-api", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"}
# httpx tries its optional command line (`httpx[cli]`: click, pygments, rich) whenever those are
# installed, as the dev tools (sqlfluff) install two of them: absent from a plain install.
HTTPX_CLI = {"click": "click", "pygments": "pygments"}

# Run first in a child interpreter: importing any of `absent` fails as if it were not installed.
WITHOUT = """
import sys
from importlib.abc import MetaPathFinder

class Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {absent!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent())
"""


def without(absent: Iterable[str], code: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter where none of the `absent` modules can be imported."""
    program = WITHOUT.format(absent=tuple(absent)) + code
    return subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel hatchling builds from this checkout: what pip would install."""
    directory = tmp_path_factory.mktemp("wheel")
    built = next(iter(WheelBuilder(str(REPO)).build(directory=str(directory), versions=["standard"])))
    with zipfile.ZipFile(built) as archive:
        yield archive


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    return wheel.read(next(path for path in wheel.namelist() if path.endswith(f".dist-info/{name}"))).decode()


@pytest.fixture(scope="module")
def metadata(wheel: zipfile.ZipFile) -> Message:
    return email.parser.Parser().parsestr(dist_info(wheel, "METADATA"))


def wanted(lines: Iterable[str], extra: str) -> list[Requirement]:
    """The requirements among `lines` that apply with `extra` ("" for an install without one);
    those of other extras are left out."""
    found = [Requirement(line) for line in lines]
    return [req for req in found if req.marker is None or req.marker.evaluate({"extra": extra})]


def installed_with(metadata: Message, extra: str) -> set[str]:
    """Every distribution `pip install 'mycelium[extra]'` installs (the project's own requirements
    from the wheel, theirs from what is installed here), by canonical name."""
    seen: set[tuple[str, str]] = set()
    todo = [(PROJECT, extra)]
    while todo:
        name, chosen = todo.pop()
        if (name, chosen) in seen:
            continue
        seen.add((name, chosen))
        ours = name == PROJECT
        lines = metadata.get_all("Requires-Dist", []) if ours else importlib.metadata.requires(name)
        for req in wanted(lines or [], chosen):
            todo += [(canonicalize_name(req.name), each) for each in ("", *req.extras)]
    return {name for name, _ in seen} - {PROJECT}


def test_the_command_s_dependencies_are_an_extra(metadata: Message) -> None:
    base, command = installed_with(metadata, ""), installed_with(metadata, "cli")
    assert not base & set(COMMAND_ONLY.values()), sorted(base & set(COMMAND_ONLY.values()))
    assert command >= set(COMMAND_ONLY.values())
    # The balance feed's driver is an extra of its own, which the command brings.
    assert "psycopg" in installed_with(metadata, "feeds") <= command
    # `./run` installs the dev extra: the command and the test tools.
    assert installed_with(metadata, "dev") >= command | {"pytest", "hatchling"}


def test_opentelemetry_is_an_extra_of_its_own(metadata: Message) -> None:
    base, command = installed_with(metadata, ""), installed_with(metadata, "cli")
    assert not (base | command) & OPENTELEMETRY, sorted((base | command) & OPENTELEMETRY)
    assert installed_with(metadata, "otel") >= OPENTELEMETRY
    assert installed_with(metadata, "dev") >= OPENTELEMETRY  # the tests' in-memory spans


def test_without_opentelemetry_the_client_still_calls_and_logs() -> None:
    ran = without(
        ["opentelemetry"],
        """
import logging
from mycelium_client import MyceliumClient, RetryPolicy, ServiceUnavailable, _tracing

assert _tracing.observer() is None and _tracing.current_trace_id() is None
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
with MyceliumClient("http://127.0.0.1:9", "key", retry=RetryPolicy(attempts=1)) as client:
    try:
        client.admin.audit_ledger()
    except ServiceUnavailable as error:
        print(error.reason)
""",
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "network_error"
    assert "mycelium.client rpc audit_ledger: error network_error" in ran.stderr


def owners() -> dict[Path, str]:
    """The distribution each installed file belongs to (by canonical name)."""
    return {
        Path(str(dist.locate_file(file))).resolve(): canonicalize_name(dist.metadata["Name"])
        for dist in importlib.metadata.distributions()
        for file in dist.files or []
    }


def test_importing_the_client_loads_only_what_its_dependencies_install(metadata: Message) -> None:
    loaded = without(
        {**COMMAND_ONLY, **HTTPX_CLI},
        """
import importlib, json, pkgutil
before = set(sys.modules)
import mycelium_client
for module in pkgutil.walk_packages(mycelium_client.__path__, "mycelium_client."):
    if module.name != "mycelium_client.feeds":  # the `feeds` extra
        importlib.import_module(module.name)
# Modules without a file (built in, or made by an extension module) come with their importer's.
files = {getattr(sys.modules[name], "__file__", None) for name in set(sys.modules) - before}
print(json.dumps(sorted(file for file in files if file)))
""",
    )
    assert loaded.returncode == 0, loaded.stderr
    stdlib, ours = Path(sysconfig.get_paths()["stdlib"]).resolve(), (REPO / "mycelium_client").resolve()
    found = [Path(file).resolve() for file in json.loads(loaded.stdout)]
    assert any(file.is_relative_to(ours) for file in found)
    owner, base = owners(), installed_with(metadata, "")
    strays = sorted(
        {
            owner.get(file, f"{file} (no distribution)")
            for file in found
            if not file.is_relative_to(ours)
            and owner.get(file) not in base
            and not (file not in owner and file.is_relative_to(stdlib))  # the standard library's
        }
    )
    assert not strays, f"imported, but not installed by `pip install {PROJECT}`: {strays}"


def test_the_feed_names_its_extra_when_psycopg_is_missing() -> None:
    imported = without(["psycopg"], "import mycelium_client.feeds")
    assert imported.returncode == 1
    assert "psycopg: pip install 'mycelium[feeds]'" in imported.stderr.splitlines()[-1]


def test_the_console_script_guards_the_command(wheel: zipfile.ZipFile) -> None:
    assert "mycelium = cli.entry:main" in dist_info(wheel, "entry_points.txt").splitlines()
    # The image whose entry point is the command installs the command's extra, and the traces'.
    assert "pip install --constraint constraints.txt '.[cli,otel]'" in MIGRATE_DOCKERFILE.read_text(
        encoding="utf-8"
    )


@pytest.mark.parametrize("module", COMMAND_ONLY)
def test_the_command_names_its_extra_when_a_dependency_is_missing(module: str) -> None:
    ran = without([module], "from cli.entry import main\nmain()")
    assert ran.returncode == 2, ran.stderr
    said = ran.stderr.strip()
    assert "\n" not in said and f"needs {module}: pip install 'mycelium[cli]'" in said, said
