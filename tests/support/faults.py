"""Faults for the reliability tests, each automatic and bounded: connections cut between clients
and the gateway, PostgREST killed, PostgreSQL crashed, a statement held past its timeout. They act
on a stack of the test's own (never the session's), through the stack's own start and stop."""

from __future__ import annotations

import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg

from cli.dev.processes import wait_until
from cli.dev.stack import LocalStack

# The longest a fault may take to heal before the run is declared broken.
RECOVERY_SECONDS = 60


class CountingTransport(httpx.HTTPTransport):
    """Counts the requests it sends, so that a caller sees how many tries one call took (the
    client's own retries included). One per thread: the count is not locked."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return super().handle_request(request)


# What PostgREST 12 answers when PostgreSQL goes down under a request (an immediate shutdown, a
# crash): libpq's own error, with no SQLSTATE, as HTTP 400. Seen through the gateway during the
# bank test's crashes; this is its body byte for byte.
LOST_DATABASE_BODY = b'{"code":"","details":null,"hint":null,"message":""}'


class LosesDatabase(httpx.BaseTransport):
    """Sends the request for real and then, `times` times (for matching paths), answers what
    PostgREST answers when the database died under the request: whether the request was applied
    depends on whether its commit made it, which the client cannot know."""

    def __init__(self, path: str, times: int) -> None:
        self.inner, self.path, self.times, self.sent = httpx.HTTPTransport(), path, times, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self.path in request.url.path:
            self.sent += 1
            if self.times > 0:
                self.times -= 1
                response.read()
                return httpx.Response(
                    400, content=LOST_DATABASE_BODY, headers={"Content-Type": "application/json"}
                )
        return response


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream_port` (the gateway) that cuts connections on
    demand: after `cut(n)` the next n requests lose their connection with a reset, half of them
    while the request is at the server (applied or not: the client cannot know), half when the
    answer comes back (applied, the answer lost). What a dropped mobile connection or a load
    balancer restarting does to a client."""

    def __init__(self, upstream_port: int, *, seed: int) -> None:
        self.upstream_port = upstream_port
        self.cuts = 0
        self._armed = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        threading.Thread(target=self._accept, name="cutting-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self, requests: int) -> int:
        """Cut the next `requests` requests; returns how many were cut by the time they all were
        (or RECOVERY_SECONDS passed without enough traffic)."""
        with self._lock:
            before = self.cuts
            self._armed += requests
        wait_until(lambda: self.cuts >= before + requests, timeout=RECOVERY_SECONDS, interval=0.01)
        with self._lock:
            self._armed = 0
            return self.cuts - before

    def close(self) -> None:
        self._closed.set()
        self._server.close()

    def _doom(self) -> tuple[bool, float] | None:
        """For a request about to pass: None, or whether to cut at the answer, and else after how
        long at the server."""
        with self._lock:
            if self._armed == 0:
                return None
            self._armed -= 1
            return self._random.random() < 0.5, self._random.uniform(0, 0.02)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            self._reset(client)
            return
        doom: tuple[bool, float] | None = None
        with selectors.DefaultSelector() as sides, client, upstream:
            sides.register(client, selectors.EVENT_READ, upstream)
            sides.register(upstream, selectors.EVENT_READ, client)
            while not self._closed.is_set():
                for key, _ in sides.select(timeout=0.5):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if source is upstream and doom is not None and doom[0]:
                        self._cut(client)
                        return
                    if source is client and doom is None:
                        doom = self._doom()
                    try:
                        key.data.sendall(data)
                    except OSError:
                        return
                    if source is client and doom is not None and not doom[0]:
                        time.sleep(doom[1])
                        self._cut(client)
                        return

    def _cut(self, client: socket.socket) -> None:
        self._reset(client)
        with self._lock:
            self.cuts += 1

    @staticmethod
    def _reset(client: socket.socket) -> None:
        # SO_LINGER 0: close with a reset, not a graceful end the client could read as an answer.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()


def kill_postgrest(stack: LocalStack, *, downtime: float) -> None:
    """SIGKILL PostgREST, leave the gateway without it for `downtime` seconds, start it again."""
    stack.postgrest.kill()
    time.sleep(downtime)
    stack.postgrest.start()


def crash_postgres(stack: LocalStack, *, downtime: float) -> None:
    """Stop PostgreSQL in immediate mode (every backend ends at once, nothing is flushed but the
    WAL), start it again (crash recovery), and wait until PostgREST serves again."""
    stack.cluster.stop(mode="immediate")
    time.sleep(downtime)
    stack.cluster.start()
    if not wait_until(stack.postgrest.ready, timeout=RECOVERY_SECONDS):
        raise AssertionError(
            f"PostgREST did not reconnect within {RECOVERY_SECONDS}s of PostgreSQL's restart"
        )


@contextmanager
def account_locked(db_url: str, user_id: str) -> Iterator[int]:
    """The user's credit account row locked by another session (an operator's open transaction)
    for the block: every movement of that account waits. Yields that session's backend pid."""
    with psycopg.connect(db_url) as conn:
        conn.execute("select 1 from public.credit_accounts where user_id = %s for update", (user_id,))
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row is not None
        try:
            yield int(row[0])
        finally:
            conn.rollback()


def blocked_by(db_url: str, blocker: int) -> int:
    """How many sessions wait for a lock `blocker` holds."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))", (blocker,)
        ).fetchone()
    assert row is not None
    return int(row[0])
