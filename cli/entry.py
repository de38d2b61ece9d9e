"""The `mycelium` console script. The command's dependencies are the `cli` extra, which a service
that installs only the client does not have: without them the command says in one line what to
install, rather than ending in a traceback. Nothing here may import them."""

from __future__ import annotations

import sys

from cli.errors import EXIT_USAGE


def main() -> None:
    try:
        from cli.main import app
    except ModuleNotFoundError as missing:
        # Whichever it is (an extra's module, or a base dependency removed since), installing the
        # extra brings it back.
        print(
            f"error: the mycelium command needs {missing.name}: pip install 'mycelium[cli]'",
            file=sys.stderr,
        )
        sys.exit(EXIT_USAGE)
    app()
