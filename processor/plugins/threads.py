"""A thread per plugin, so that a plugin that hangs cannot hold up the run.

Every call into a plugin (``setup``, each batch, ``checkpoint``,
``teardown``) runs on that plugin's own thread, always the same one, so a
handler may keep thread-bound resources such as a sqlite3 connection. The
dispatcher starts a batch on every plugin's thread, then waits for each. A
plugin that finishes no event for ``stall_after`` seconds is stalled: its
thread is abandoned (Python cannot stop a thread) and the run goes on
without it.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Seconds between checks of a running call's progress.
POLL_SECONDS = 1.0


class PluginStalled(Exception):
    """A plugin finished no event within the stall limit."""


class PluginExited(Exception):
    """A plugin raised SystemExit or KeyboardInterrupt on its thread.

    Wrapped so that it counts as the plugin's failure, like any other
    exception, and never ends the run or the process.
    """


class PluginThread:
    """Runs the calls into one plugin on a thread of its own.

    The running call adds 1 to ``progress`` for each finished event, and
    ``wait`` raises ``PluginStalled`` when ``stall_after`` seconds pass
    without one.
    """

    def __init__(self, name: str, stall_after: float) -> None:
        self.name = name
        self.stall_after = stall_after
        self.progress = 0
        self.stalled: str | None = None
        # A daemon thread, unlike a ThreadPoolExecutor's, lets the process
        # exit while a stalled plugin still hangs in it.
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._work, name=f"plugin-{name}", daemon=True
        )
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, function, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = function(*args)
            except Exception as error:
                future.set_exception(error)
            except BaseException as error:
                wrapped = PluginExited(f"{type(error).__name__}: {error}")
                future.set_exception(wrapped)
            else:
                future.set_result(result)

    def left_behind(self) -> bool:
        """Return whether the dispatcher gave up on this plugin.

        A method, not the attribute, because another thread sets it while
        the plugin's thread runs.
        """
        return self.stalled is not None

    def start(
        self, function: Callable[..., T], *args: Any
    ) -> concurrent.futures.Future[T]:
        """Start ``function(*args)`` on the plugin's thread."""
        if self.stalled is not None:
            raise PluginStalled(self.stalled)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((future, function, args))
        return future

    def wait(self, future: concurrent.futures.Future[T], call_name: str) -> T:
        """Return the result of ``future``, raising what the call raised.

        Raises ``PluginStalled`` when no event finishes for ``stall_after``
        seconds; ``call_name`` names the call in the message.
        """
        seen = self.progress
        deadline = time.monotonic() + self.stall_after
        while True:
            remaining = deadline - time.monotonic()
            try:
                return future.result(timeout=max(0.0, min(POLL_SECONDS, remaining)))
            except concurrent.futures.TimeoutError:
                pass

            if self.progress != seen:
                seen = self.progress
                deadline = time.monotonic() + self.stall_after
            elif time.monotonic() >= deadline:
                self.stalled = (
                    f"stalled: {call_name} made no progress for {self.stall_after:g} s"
                )
                raise PluginStalled(self.stalled)

    def call(self, function: Callable[..., T], *args: Any, call_name: str) -> T:
        """Run ``function(*args)`` on the plugin's thread and wait for it."""
        return self.wait(self.start(function, *args), call_name)

    def close(self) -> None:
        """Let the thread end; a stalled one is left to finish on its own."""
        self._jobs.put(None)
        if self.stalled is None:
            self._thread.join()
