"""Subscriptions to balance changes: `async for change in watch`, or a callback.

The async one runs the channel as a task on your event loop; the sync one runs it on an event
loop in a background thread. Starting waits until the channel is joined, so a change committed
after `start()` (or entering the `with` block) is delivered. The first change is the balance at
subscription time (source `resync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any

from mycelium_client._realtime import BalanceChannel
from mycelium_client.errors import ServiceUnavailable
from mycelium_client.models import BalanceChange

Callback = Callable[[BalanceChange], Any]
START_TIMEOUT_SECONDS = 15.0


async def _start(
    channel: BalanceChannel, emit: Callable[[BalanceChange], Any], timeout: float
) -> asyncio.Task[None]:
    """Run the channel as a task; return once it is subscribed, or raise why it is not."""
    task = asyncio.create_task(channel.run(emit))
    subscribed = asyncio.create_task(channel.subscribed.wait())
    done, _ = await asyncio.wait({task, subscribed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    subscribed.cancel()
    if task in done:
        task.result()  # raises the refusal
    if subscribed not in done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ServiceUnavailable(
            f"Realtime did not subscribe within {timeout:g} s", reason="realtime_timeout"
        )
    return task


class AsyncBalanceWatch:
    """Balance changes on your event loop. Use `async with`, then `async for change in watch`
    (or pass a callback, sync or async, and just keep the block open)."""

    def __init__(self, channel: BalanceChannel, callback: Callback | None = None) -> None:
        self._channel = channel
        self._callback = callback
        self._queue: asyncio.Queue[BalanceChange | BaseException] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _emit(self, change: BalanceChange) -> None:
        if self._callback is None:
            self._queue.put_nowait(change)
            return
        result = self._callback(change)
        if inspect.isawaitable(result):
            await result

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._queue.put_nowait(task.exception())  # type: ignore[arg-type]

    async def start(self, timeout: float = START_TIMEOUT_SECONDS) -> AsyncBalanceWatch:
        if self._task is None:
            self._task = await _start(self._channel, self._emit, timeout)
            self._task.add_done_callback(self._on_done)
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def __aenter__(self) -> AsyncBalanceWatch:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[BalanceChange]:
        return self

    async def __anext__(self) -> BalanceChange:
        await self.start()
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


_CLOSED = object()


class BalanceWatch:
    """Balance changes in a background thread. Use `with`, then `for change in watch` (or pass a
    callback, called on that thread, and keep the block open)."""

    def __init__(self, make_channel: Callable[[], BalanceChannel], callback: Callback | None = None) -> None:
        self._make_channel = make_channel
        self._callback = callback
        self._queue: queue.Queue[object] = queue.Queue()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    async def _emit(self, change: BalanceChange) -> None:
        if self._callback is None:
            self._queue.put(change)
        else:
            self._callback(change)

    async def _main(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._task = await _start(self._make_channel(), self._emit, timeout)
        except BaseException as error:
            self._start_error = error
            return
        finally:
            self._started.set()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        except BaseException as error:
            self._queue.put(error)
        finally:
            self._queue.put(_CLOSED)

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> BalanceWatch:
        if self._thread is None:
            self._thread = threading.Thread(
                target=asyncio.run, args=(self._main(timeout),), name="mycelium-balance-watch", daemon=True
            )
            self._thread.start()
            self._started.wait()
            if self._start_error is not None:
                raise self._start_error
        return self

    def close(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> BalanceWatch:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[BalanceChange]:
        self.start()
        while True:
            item = self._queue.get()
            if item is _CLOSED:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, BalanceChange)
            yield item

    def get(self, timeout: float | None = None) -> BalanceChange:
        """The next change; raises `TimeoutError` when none arrives in time."""
        self.start()
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no balance change within {timeout} s") from None
        if item is _CLOSED:
            raise ServiceUnavailable("the balance watch is closed", reason="watch_closed")
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, BalanceChange)
        return item
