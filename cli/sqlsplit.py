"""Split a migration file into statements, keeping the line each one starts on.

Running a file statement by statement lets a failure name the line it happened on, even for
errors that Postgres reports without a position. The splitter understands what can hide a
semicolon: quoted strings (standard, E'' and identifiers), dollar quotes and both comment forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


@dataclass(frozen=True)
class Statement:
    text: str
    offset: int  # where `text` starts in the file, in characters
    line: int  # 1-based line of the first character of `text`


def _skip_quoted(sql: str, i: int, quote: str, backslash_escapes: bool) -> int:
    """Return the index just past the quoted run that starts at `sql[i] == quote`."""
    i += 1
    while i < len(sql):
        char = sql[i]
        if backslash_escapes and char == "\\":
            i += 2
            continue
        if char == quote:
            if i + 1 < len(sql) and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return i


def _skip_block_comment(sql: str, i: int) -> int:
    depth = 0
    while i < len(sql):
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return i


def _skip_noise(text: str, i: int = 0) -> int:
    """The index of the first character from `i` on that is neither white space nor comment."""
    while i < len(text):
        if text[i].isspace():
            i += 1
        elif text.startswith("--", i):
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline + 1
        elif text.startswith("/*", i):
            i = _skip_block_comment(text, i)
        else:
            return i
    return i


def split_statements(sql: str) -> list[Statement]:
    """The non-empty statements of `sql`, each without its terminating semicolon."""
    statements: list[Statement] = []
    start = 0
    i = 0

    def close(end: int) -> None:
        offset = _skip_noise(sql[:end], start)
        if offset < end:
            statements.append(Statement(sql[offset:end].rstrip(), offset, sql.count("\n", 0, offset) + 1))

    while i < len(sql):
        char = sql[i]
        if char == "'":
            escapes = (
                i > 0 and sql[i - 1] in "eE" and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            )
            i = _skip_quoted(sql, i, "'", escapes)
        elif char == '"':
            i = _skip_quoted(sql, i, '"', False)
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = len(sql) if newline < 0 else newline + 1
        elif sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif char == "$" and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            tag = _DOLLAR_TAG.match(sql, i)
            if tag:
                end = sql.find(tag.group(0), tag.end())
                i = len(sql) if end < 0 else end + len(tag.group(0))
            else:
                i += 1
        elif char == ";":
            close(i)
            i += 1
            start = i
        else:
            i += 1
    close(len(sql))
    return statements
