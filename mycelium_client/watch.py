"""Subscriptions to balance changes: `async for change in watch`, or a callback.

The async one runs the channel as a task on your event loop; the sync one runs it on an event
loop in a background thread. Starting waits until the channel is joined, so a change committed
after `start()` (or entering the `with` block) is delivered. The first change is the balance at
subscription time (source `resync`). The error that ends a watch (its channel's, or its
callback's) is raised once: by the iterator if it gets there first, else by `close()` (and so
when the `with` block ends).

Low-balance warnings (your balance lasts fewer hours than the configured threshold at what your
running subscriptions cost) go to `on_low_balance`, a callback like the other (sync or async,
called where it is: the event loop, or the sync watch's thread; its error ends the watch too),
whether the changes are iterated or passed to a callback (on the private balance topic, or through
Postgres Changes after a fallback). Warnings committed while a watch was disconnected are not
delivered on its return: read them with `client.subscriptions.low_balance_warnings()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any

from mycelium_client._realtime import BalanceChannel, LoopThread
from mycelium_client.errors import ServiceUnavailable
from mycelium_client.models import BalanceChange, LowBalanceWarning

Callback = Callable[[BalanceChange], Any]
WarningCallback = Callable[[LowBalanceWarning], Any]
START_TIMEOUT_SECONDS = 15.0


async def _start(
    channel: BalanceChannel,
    emit: Callable[[BalanceChange], Awaitable[None]],
    warn: Callable[[LowBalanceWarning], Awaitable[None]] | None,
    timeout: float,
) -> asyncio.Task[None]:
    """Run the channel as a task; return once it is subscribed, or raise why it is not."""
    task = asyncio.create_task(channel.run(emit, warn))
    subscribed = asyncio.create_task(channel.subscribed.wait())
    done, _ = await asyncio.wait({task, subscribed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    subscribed.cancel()
    if task in done:
        task.result()  # raises the refusal
    if subscribed not in done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # The channel retries what may pass; say what it was retrying.
        why = f" ({channel.last_failure})" if channel.last_failure is not None else ""
        raise ServiceUnavailable(
            f"Realtime did not subscribe within {timeout:g} s{why}", reason="realtime_timeout"
        ) from channel.last_failure
    return task


_ENDED = object()  # queued once the channel's task is over (and queued again for the next reader)


class _Watch:
    """What both twins share: delivering to the queue or the callback, and telling the end."""

    def __init__(
        self, callback: Callback | None, on_low_balance: WarningCallback | None, put: Callable[[object], None]
    ) -> None:
        self._callback = callback
        self._on_low_balance = on_low_balance
        self._put = put
        self._failure_lock = threading.Lock()  # the sync twin records on its thread, raises on yours
        self._failure: BaseException | None = None
        self._failure_raised = False

    async def _emit(self, change: BalanceChange) -> None:
        if self._callback is None:
            self._put(change)
            return
        await self._call(self._callback, change)

    async def _warn(self, warning: LowBalanceWarning) -> None:
        assert self._on_low_balance is not None  # the channel is given _warn only then
        await self._call(self._on_low_balance, warning)

    async def _call(self, callback: Callable[[Any], Any], item: BalanceChange | LowBalanceWarning) -> None:
        try:
            result = callback(item)
            if inspect.isawaitable(result):
                await result
        except Exception as error:
            # Recorded here too: close() cancels the task, which could otherwise win the race
            # with this error ending it.
            self._failed(error)
            raise

    async def _started_task(self, channel: BalanceChannel, timeout: float) -> asyncio.Task[None]:
        try:
            warn = None if self._on_low_balance is None else self._warn
            task = await _start(channel, self._emit, warn, timeout)
        except BaseException:
            with self._failure_lock:
                self._failure_raised = True  # by start(), which raises this
            raise
        task.add_done_callback(self._task_over)
        return task

    def _task_over(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            self._failed(error)
        self._put(_ENDED)

    def _failed(self, error: BaseException) -> None:
        with self._failure_lock:
            if self._failure is None:
                self._failure = error

    def _raise_failure(self) -> None:
        """Raise the error that ended the watch, unless it was raised already."""
        with self._failure_lock:
            error = None if self._failure_raised else self._failure
            self._failure_raised = self._failure_raised or error is not None
        if error is not None:
            raise error

    def _change_in(self, item: object) -> BalanceChange | None:
        """The change queued, or None at the end of the watch (after raising its error)."""
        if item is _ENDED:
            self._put(_ENDED)
            self._raise_failure()
            return None
        assert isinstance(item, BalanceChange)
        return item


class AsyncBalanceWatch(_Watch):
    """Balance changes on your event loop. Use `async with`, then `async for change in watch`
    (or pass a callback, sync or async, and just keep the block open)."""

    def __init__(
        self,
        channel: BalanceChannel,
        callback: Callback | None = None,
        on_low_balance: WarningCallback | None = None,
    ) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        super().__init__(callback, on_low_balance, self._queue.put_nowait)
        self._channel = channel
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = START_TIMEOUT_SECONDS) -> AsyncBalanceWatch:
        if self._task is None:
            self._task = await self._started_task(self._channel, timeout)
        return self

    async def close(self) -> None:
        """Stop; raises the error that ended the watch, if nothing raised it yet."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        self._raise_failure()

    async def __aenter__(self) -> AsyncBalanceWatch:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[BalanceChange]:
        return self

    async def __anext__(self) -> BalanceChange:
        await self.start()
        change = self._change_in(await self._queue.get())
        if change is None:
            raise StopAsyncIteration
        return change


class BalanceWatch(_Watch):
    """Balance changes in a background thread. Use `with`, then `for change in watch` (or pass a
    callback, called on that thread, and keep the block open)."""

    def __init__(
        self,
        make_channel: Callable[[], BalanceChannel],
        callback: Callback | None = None,
        on_low_balance: WarningCallback | None = None,
    ) -> None:
        self._queue: queue.Queue[object] = queue.Queue()
        super().__init__(callback, on_low_balance, self._queue.put_nowait)
        self._make_channel = make_channel
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: LoopThread | None = None

    async def _main(self, timeout: float) -> None:
        try:
            task = await self._started_task(self._make_channel(), timeout)
        except BaseException as error:
            self._start_error = error
            return
        finally:
            self._started.set()
        await asyncio.wait({task})

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> BalanceWatch:
        if self._thread is None:
            self._thread = LoopThread("mycelium-balance-watch")
            self._thread.start(self._main(timeout))
            self._started.wait()
            if self._start_error is not None:
                raise self._start_error
        return self

    def close(self) -> None:
        """Stop; raises the error that ended the watch, if nothing raised it yet."""
        if self._thread is not None:
            self._thread.stop()
        self._raise_failure()

    def __enter__(self) -> BalanceWatch:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[BalanceChange]:
        self.start()
        while (change := self._change_in(self._queue.get())) is not None:
            yield change

    def get(self, timeout: float | None = None) -> BalanceChange:
        """The next change; raises `TimeoutError` when none arrives in time."""
        self.start()
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no balance change within {timeout} s") from None
        change = self._change_in(item)
        if change is None:
            raise ServiceUnavailable("the balance watch is closed", reason="watch_closed")
        return change
