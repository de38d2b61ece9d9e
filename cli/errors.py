"""Errors the command reports as one readable line, each with the exit code it documents."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DRIFT = 3


class CliError(Exception):
    """A failure explained to the operator in one line; `exit_code` follows the README's table."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CliError):
    """Bad arguments, a missing folder or file, an unreachable database."""

    exit_code = EXIT_USAGE
