"""The dispatcher: hands each event to every plugin that wants it.

A handler's exception never stops another plugin or the run. ``RetryLater``
hands the event over again after a backoff, up to ``RetryPolicy.attempts``
attempts. Any other exception, or the last ``RetryLater``, counts the event
as failed for that plugin and puts it on the plugin's dead-letter list.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from processor.errors import ProcessorError
from processor.events import Event
from processor.plugins.api import (
    Checkpoint,
    Handler,
    PluginCounts,
    RetryLater,
    RunInfo,
    uses_batches,
)
from processor.plugins.deadletters import DeadLetter, DeadLetterStore
from processor.plugins.loader import Plugin
from processor.plugins.threads import PluginStalled, PluginThread

if TYPE_CHECKING:
    from concurrent.futures import Future

logger = logging.getLogger(__name__)

# Failures per plugin beyond this many in a run are counted but not logged.
MAX_LOGGED_FAILURES = 10


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a handler's ``RetryLater`` is retried.

    The delay before attempt n + 1 is ``min_delay * 2 ** (n - 1)``, or the
    ``after`` the handler asked for, and at most ``max_delay`` seconds. With
    the defaults one event can hold its plugin for at most 0.5 + 1 + 2 = 3.5
    seconds of waiting.
    """

    attempts: int = 4
    min_delay: float = 0.5
    max_delay: float = 10.0

    def delay(self, attempt: int, requested: float | None) -> float:
        """Return the seconds to wait after failed attempt ``attempt``."""
        wanted = self.min_delay * 2 ** (attempt - 1) if requested is None else requested
        return max(0.0, min(wanted, self.max_delay))


class Dispatcher:
    """Hands events to handlers and counts the outcome per plugin.

    ``configs`` gives each plugin's configuration by name, handed over in
    ``RunInfo.config``. Failed events go to ``dead_letters`` when set, and
    are only counted and logged otherwise. ``sleep`` waits between retries.
    Each plugin runs on its own ``PluginThread``, and one that finishes no
    event for ``stall_after`` seconds is left behind (see ``_stalled``).
    """

    def __init__(
        self,
        plugins: Iterable[Plugin],
        resume: dict[str, Checkpoint] | None = None,
        *,
        configs: dict[str, dict[str, Any]] | None = None,
        dead_letters: DeadLetterStore | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        stall_after: float = 60.0,
    ) -> None:
        self.plugins = [plugin for plugin in plugins if plugin.handler is not None]
        self.resume = resume or {}
        self.configs = configs or {}
        self.dead_letters = dead_letters
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self.stall_after = stall_after
        self._threads: dict[str, PluginThread] = {}
        # Dead letters stored so far; the dead-letter re-run reads it.
        self.dead_lettered = 0
        self._in_flight: list[
            tuple[str, Sequence[Event], tuple[int, int], Future[None]]
        ] = []
        self.counts = {
            plugin.name: PluginCounts(
                handled=self.resume.get(plugin.name, Checkpoint()).handled,
                failed=self.resume.get(plugin.name, Checkpoint()).failed,
            )
            for plugin in self.plugins
        }
        self.position = 0
        self._run = RunInfo(run_id="")
        self._skip = {name: point.position for name, point in self.resume.items()}
        self._points: dict[str, Checkpoint] = dict(self.resume)
        self._active: list[tuple[str, Handler, frozenset[str] | None]] = []
        self._broken: list[tuple[str, frozenset[str] | None]] = []

    def setup(self, run: RunInfo) -> None:
        """Call each handler's ``setup`` with its own configuration.

        A handler whose setup raises receives no events, and each event it
        would have received counts as failed for it.
        """
        self._run = run
        for plugin in self.plugins:
            handler = plugin.handler
            assert handler is not None
            event_types = getattr(handler, "event_types", None)
            if event_types is not None:
                event_types = frozenset(event_types)
            resume = self.resume.get(plugin.name)
            state = resume.state if resume is not None else None
            config = self.configs.get(plugin.name, {})
            thread = PluginThread(plugin.name, self.stall_after)
            self._threads[plugin.name] = thread
            plugin_run = msgspec.structs.replace(run, resume=state, config=config)
            try:
                thread.call(handler.setup, plugin_run, call_name="setup")
            except Exception as error:
                # A ProcessorError (a missing setting, say) explains itself, so
                # only an unexpected error gets a traceback.
                logger.error(
                    "Plugin %r failed in setup for run %s; its events count as "
                    "failed: %s",
                    plugin.name,
                    run.run_id,
                    error,
                    exc_info=not isinstance(error, ProcessorError),
                )
                reason = f"setup failed: {type(error).__name__}: {error}"
                self.counts[plugin.name].error = reason
                self._broken.append((plugin.name, event_types))
                continue
            self._active.append((plugin.name, handler, event_types))

    def dispatch(self, event: Event) -> None:
        """Hand ``event`` to every handler that wants its type, and wait."""
        self.dispatch_batch([event])
        self.flush()

    def dispatch_batch(self, events: Sequence[Event]) -> None:
        """Start handing ``events``, in order, to every handler that wants them.

        Returns once every plugin has finished the previous batch and started
        on this one, so the caller reads the next batch while the plugins
        work. ``flush`` waits for this batch too. A handler resumed from a
        checkpoint skips the events up to it.
        """
        self.flush()
        start = self.position
        self.position += len(events)

        for name, event_types in self._broken:
            received = _of_types(events, event_types)
            self.counts[name].failed += len(received)

        # Each plugin starts on the batch on its own thread, so plugins work
        # on it at the same time, and the caller parses the next batch.
        for name, handler, event_types in self._active:
            skip = self._skip.get(name, 0) - start
            pending = _of_types(events[skip:] if skip > 0 else events, event_types)
            thread = self._threads[name]
            if not pending:
                continue
            if thread.stalled is not None:
                self.counts[name].failed += len(pending)
                continue
            deliver = self._deliver_batch if uses_batches(handler) else self._deliver
            before = (thread.progress, self.counts[name].failed)
            future = thread.start(deliver, name, handler, pending, thread)
            self._in_flight.append((name, pending, before, future))

    def flush(self) -> None:
        """Wait until every plugin has finished the batches handed to it."""
        in_flight, self._in_flight = self._in_flight, []
        for name, pending, before, future in in_flight:
            thread = self._threads[name]
            try:
                thread.wait(future, f"a batch of {len(pending)} events")
            except PluginStalled as stall:
                finished = thread.progress - before[0]
                failed = self.counts[name].failed - before[1]
                self.counts[name].handled += finished - failed
                self._stalled(name, pending[finished:], stall)

    def _deliver(
        self,
        name: str,
        handler: Handler,
        events: Sequence[Event],
        thread: PluginThread,
    ) -> None:
        """Hand ``events`` to ``handle`` one by one, on the plugin's thread."""
        handle = handler.handle
        handled = 0
        for event in events:
            if thread.stalled is not None:
                # The dispatcher has failed the rest of the batch.
                return
            try:
                handle(event)
            # This runs on the plugin's thread, so SystemExit or
            # KeyboardInterrupt here came from the plugin and is its failure.
            except BaseException as error:
                if thread.left_behind():
                    return
                call = functools.partial(handle, event)
                if self._retried(name, call, [event], error):
                    handled += 1
            else:
                handled += 1
            # Counted per event, because a stall is a span without any.
            thread.progress += 1

        # A stalled plugin's count was settled by _stalled.
        if thread.stalled is None:
            self.counts[name].handled += handled

    def _deliver_batch(
        self,
        name: str,
        handler: Handler,
        events: Sequence[Event],
        thread: PluginThread,
    ) -> None:
        """Hand ``events`` to ``handle_batch`` at once, on the plugin's thread."""
        call = functools.partial(handler.handle_batch, events)
        try:
            call()
        except BaseException as error:
            # The whole batch is retried, or fails, as one unit.
            handled = self._retried(name, call, events, error)
        else:
            handled = True
        if thread.stalled is None and handled:
            self.counts[name].handled += len(events)
        thread.progress += len(events)

    def _stalled(
        self, name: str, events: Sequence[Event], stall: PluginStalled
    ) -> None:
        """Give up on a stalled plugin for the rest of the run.

        The events it had not finished go to its dead-letter list, and the
        events after them count as failed without a dead letter each, since
        a stall early in a large export would fill the list with millions.
        """
        counts = self.counts[name]
        counts.error = (
            f"{stall}; its later events in this run count as failed. Run the "
            f"export again with PROCESSOR_PLUGINS={name} to hand them over."
        )
        logger.error("Plugin %r %s", name, counts.error)
        if events:
            self._fail(name, events, stall, attempts=1)

    def _retried(
        self,
        name: str,
        call: Callable[[], None],
        events: Sequence[Event],
        error: BaseException,
    ) -> bool:
        """Call ``call`` again while it raises ``RetryLater``, with backoff.

        Returns whether a later attempt succeeded. When none does, or the
        error is not ``RetryLater``, ``events`` fail with the last error.
        """
        attempt = 1
        while isinstance(error, RetryLater) and attempt < self.retry.attempts:
            if error.after is not None and error.after > self.retry.max_delay:
                # Waiting that long would hold up the run and the other
                # plugins, so the event goes to the dead-letter list now.
                break
            delay = self.retry.delay(attempt, error.after)
            logger.info(
                "Plugin %r asked to retry event %s in %.1f s (attempt %d of %d): %s",
                name,
                events[0].id,
                delay,
                attempt,
                self.retry.attempts,
                error,
            )
            self._sleep(delay)
            attempt += 1
            try:
                call()
                return True
            except BaseException as next_error:
                error = next_error

        self._fail(name, events, error, attempt)
        return False

    def _fail(
        self, name: str, events: Sequence[Event], error: BaseException, attempts: int
    ) -> None:
        counts = self.counts[name]
        counts.failed += len(events)
        reason = f"{type(error).__name__}: {error}"
        if counts.failed - len(events) < MAX_LOGGED_FAILURES:
            # A transient failure the plugin announced is expected, so it is
            # a warning; anything else may be a bug and goes to Sentry.
            transient = isinstance(error, RetryLater)
            logger.log(
                logging.WARNING if transient else logging.ERROR,
                "Plugin %r failed on event %s after %d attempt(s): %s",
                name,
                events[0].id,
                attempts,
                reason,
                exc_info=None if transient else error,
            )
            if counts.failed >= MAX_LOGGED_FAILURES:
                logger.warning(
                    "Further failures of plugin %r are counted but not logged.",
                    name,
                )

        if self.dead_letters is None:
            return
        for event in events:
            letter = DeadLetter(
                plugin=name,
                run_id=self._run.run_id,
                export_id=self._run.export_id,
                event=event,
                error=reason,
                attempts=attempts,
            )
            try:
                self.dead_letters.add(letter)
                self.dead_lettered += 1
            except Exception:
                logger.exception(
                    "Could not store a dead letter for plugin %r, event %s.",
                    name,
                    event.id,
                )

    def checkpoint(self) -> dict[str, Checkpoint]:
        """Ask each handler to make its effects durable; return the progress.

        A handler whose ``checkpoint`` raises, or returns state that JSON
        cannot encode, keeps its previous checkpoint, so a resume hands it
        the events since then again.
        """
        self.flush()
        for name, handler, _ in self._active:
            thread = self._threads[name]
            if thread.stalled is not None:
                continue
            try:
                state = thread.call(handler.checkpoint, call_name="checkpoint")
            except PluginStalled as stall:
                self._stalled(name, [], stall)
                continue
            except Exception:
                logger.exception("Plugin %r failed to checkpoint.", name)
                continue
            try:
                msgspec.json.encode(state)
            except (TypeError, ValueError, OverflowError) as error:
                logger.error(
                    "Plugin %r returned checkpoint state that JSON cannot encode "
                    "(%s); its previous checkpoint stays.",
                    name,
                    error,
                )
                continue

            counts = self.counts[name]
            self._points[name] = Checkpoint(
                position=self.position,
                handled=counts.handled,
                failed=counts.failed,
                state=state,
            )
        return dict(self._points)

    def teardown(self) -> None:
        """Call each active handler's ``teardown``, logging any failure.

        A stalled plugin's thread is still busy, so its teardown is skipped.
        """
        self.flush()
        for name, handler, _ in self._active:
            thread = self._threads[name]
            if thread.stalled is not None:
                logger.warning("Plugin %r stalled, so its teardown is skipped.", name)
                continue
            try:
                thread.call(handler.teardown, call_name="teardown")
            except PluginStalled as stall:
                self._stalled(name, [], stall)
            except Exception as error:
                logger.exception("Plugin %r failed in teardown.", name)
                reason = f"teardown failed: {type(error).__name__}: {error}"
                self.counts[name].error = reason
        self._active.clear()

        for thread in self._threads.values():
            thread.close()
        self._threads.clear()


def _of_types(
    events: Sequence[Event], event_types: frozenset[str] | None
) -> Sequence[Event]:
    if event_types is None:
        return events
    return [event for event in events if event.event_type in event_types]
