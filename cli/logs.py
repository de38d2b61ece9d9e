"""The command's logs: every logger under `mycelium` (the client's calls, the jobs, the exporter)
on stderr, so that stdout stays the command's output (`--json`). As text for a terminal, or one
JSON object per line for a log shipper (`--log-format json`, MYCELIUM_LOG_FORMAT=json): its
`time`, `level`, `logger` and `message`, then the event's own fields (`event`, `rpc`, `outcome`,
`reason`, `duration_ms`, `idempotency_key`, `trace_id`, ...).

No event carries a header, a body or a key; every line is still scrubbed of anything shaped like
a JSON Web Token (API keys and access tokens are), should an error message ever quote one."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from enum import StrEnum

from mycelium_client._observe import FIELDS
from mycelium_client._tracing import current_trace_id

ROOT_LOGGER = "mycelium"
JWT = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*")
REDACTED = "[redacted]"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def scrubbed(line: str) -> str:
    return JWT.sub(REDACTED, line)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        key: value for key, value in getattr(record, FIELDS, {}).items() if value is not None
    }
    if "trace_id" not in fields:
        trace_id = current_trace_id()
        if trace_id is not None:
            fields["trace_id"] = trace_id
    return fields


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Amounts are Decimals: as their exact text, never through float.
        return scrubbed(json.dumps(entry, default=str))


class Text(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return scrubbed(super().format(record))


class _CommandHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler the command installed (replaced, not added to, when configured again)."""


# Above every level: no record passes.
SILENT = logging.CRITICAL + 1


def reset() -> None:
    """Takes the command's handler away again (for a command run inside another program, such
    as the tests: the next records go where that program's logging sends them)."""
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _CommandHandler)]:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def configure(log_format: LogFormat, level: LogLevel | None) -> None:
    """Sends the `mycelium` loggers' records at `level` and above to stderr, in `log_format`.
    Without a level: INFO for JSON (a service's log), and nothing for text: a person reads the
    command's own output, whose errors the logs would only repeat."""
    reset()
    logger = logging.getLogger(ROOT_LOGGER)
    handler = _CommandHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format is LogFormat.JSON else Text())
    logger.addHandler(handler)
    if level is not None:
        logger.setLevel(level.upper())
    else:
        logger.setLevel(logging.INFO if log_format is LogFormat.JSON else SILENT)
    logger.propagate = False
