"""Results for scripts: with --json a benchmark prints what it measured as one JSON object on
stdout, and what people read on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from typing import Any, TypeVar

T = TypeVar("T")


def run_benchmark(
    parser: argparse.ArgumentParser, measure: Callable[[argparse.Namespace, dict[str, Any]], T]
) -> T:
    """Parse the benchmark's command line, --json added, and run `measure` with its arguments and
    the results it fills (`results_for_scripts`); returns what `measure` returns."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the results as one JSON object on stdout (what people read goes to stderr)",
    )
    args = parser.parse_args()
    with results_for_scripts(args.json) as results:
        return measure(args, results)


@contextmanager
def results_for_scripts(as_json: bool) -> Iterator[dict[str, Any]]:
    """A dict the benchmark fills with what it measured. With --json, everything printed for people
    goes to stderr meanwhile, and the dict, as JSON, to stdout once the benchmark is done."""
    results: dict[str, Any] = {}
    if not as_json:
        yield results
        return
    with redirect_stdout(sys.stderr):
        yield results
    print(json.dumps(results, indent=2))
