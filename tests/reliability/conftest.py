"""The reliability tests: a stack of their own (they kill its servers, so never the session's),
sized by `--bank-size` (when this folder is named on the command line) or MYCELIUM_BANK_SIZE:
`small` (the default, bounded for CI) or `big` (long, by hand). Their reports are printed as they
run (`-s` shows them) and again in pytest's closing summary."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from cli.dev.processes import free_port_base
from cli.dev.stack import LocalStack
from tests.support import stack_folder
from tests.support.bank import SIZES, BankSize

REPORTS = pytest.StashKey[list[str]]()
SETUP_AND_CHECKS_SECONDS = 300


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bank-size",
        choices=sorted(SIZES),
        default=None,
        help="size of the bank test under faults (default: $MYCELIUM_BANK_SIZE, else small)",
    )


def chosen_size(config: pytest.Config) -> BankSize:
    # The option exists only where this conftest was loaded before the command line was read.
    name = config.getoption("bank_size", default=None) or os.environ.get("MYCELIUM_BANK_SIZE", "small")
    if name not in SIZES:
        raise pytest.UsageError(f"MYCELIUM_BANK_SIZE must be one of {', '.join(sorted(SIZES))}, not {name!r}")
    return SIZES[name]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A bank test's time limit follows its size: its own deadline, plus setting up and checking."""
    limit = pytest.mark.timeout(chosen_size(config).deadline_seconds + SETUP_AND_CHECKS_SECONDS)
    for item in items:
        if "bank_size" in getattr(item, "fixturenames", ()):
            item.add_marker(limit)


@pytest.fixture(scope="module")
def bank_size(request: pytest.FixtureRequest) -> BankSize:
    return chosen_size(request.config)


@pytest.fixture(scope="module")
def own_stack() -> Iterator[LocalStack]:
    folder = stack_folder("mycelium-reliability-")
    local = LocalStack(folder / "stack")
    try:
        local.up(port_base=free_port_base())
        yield local
    finally:
        local.destroy()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a report now and keep it for the closing summary (shown without `-s` too)."""

    def add(text: str) -> None:
        print(f"\n{text}")
        request.config.stash.setdefault(REPORTS, []).append(text)

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    for text in config.stash.get(REPORTS, []):
        terminalreporter.write_sep("-", "reliability")
        terminalreporter.write_line(text)
