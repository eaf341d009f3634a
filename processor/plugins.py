"""Plugin handlers: the API, the loader and the dispatcher.

A plugin is an entry point in the group ``processor.handlers`` that resolves
to a ``Handler`` subclass (or any callable returning a handler). The
dispatcher hands each parsed event to every loaded handler that wants its
type. A handler that raises is logged and counted as failed for that event,
and the run goes on with the other handlers and the next event.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import Any, ClassVar

import msgspec

from processor.events import Event

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "processor.handlers"

# Failures per plugin beyond this many in a run are counted but not logged.
MAX_LOGGED_FAILURES = 10


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The run details a handler receives in ``setup``.

    ``resume`` is ``None`` on a fresh start. When a step resumes after a
    crash, it is what this handler's ``checkpoint`` returned at the last
    committed checkpoint, and the events up to that checkpoint are not
    handed over again.
    """

    run_id: str
    export_id: str | None = None
    resume: Any = None

    def idempotency_key(self, event: Event) -> str:
        """Return a key that is the same each time ``event`` is handed over.

        Use it for external writes: an event after the last checkpoint is
        handed over again when a crashed run resumes.
        """
        return f"{self.export_id or self.run_id}:{event.id}"


class Handler:
    """Base class for plugin handlers.

    Subclasses set ``name`` and override ``handle``; ``setup`` and
    ``teardown`` are optional.
    """

    name: ClassVar[str] = ""
    event_types: ClassVar[frozenset[str] | None] = None
    """The event types this handler receives; ``None`` means all of them."""

    def setup(self, run: RunInfo) -> None:
        """Prepare for a run, before its first event."""

    def handle(self, event: Event) -> None:
        """React to one event."""
        raise NotImplementedError

    def checkpoint(self) -> Any:
        """Make the effects of every event so far durable, and return state.

        Called before the first event and then every half second while a
        file is processed, just before the progress is committed. The return
        value (JSON-serialisable, or ``None``) comes back as
        ``RunInfo.resume`` if the run resumes, so a handler can undo effects
        after this point, such as by truncating a file, and see each event
        exactly once.
        """
        return None

    def teardown(self) -> None:
        """Release what ``setup`` acquired, after the run's last event."""


class Checkpoint(msgspec.Struct, kw_only=True):
    """One plugin's committed progress through a run's file.

    ``position`` counts the file's events, in order, that the plugin is done
    with; ``state`` is what its handler's ``checkpoint`` returned.
    """

    position: int = 0
    handled: int = 0
    failed: int = 0
    state: Any = None


class PluginCounts(msgspec.Struct, kw_only=True, omit_defaults=True):
    """How many events one plugin handled, and how many failed.

    ``error`` is set when the plugin failed as a whole, in ``setup`` or
    ``teardown``; events it would have received while broken count as
    failed.
    """

    handled: int = 0
    failed: int = 0
    error: str | None = None


@dataclasses.dataclass
class Plugin:
    """A loaded plugin, or one that failed to load (``error`` is set)."""

    name: str
    distribution: str | None
    version: str | None
    handler: Handler | None = None
    error: str | None = None


def load_plugins(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
) -> list[Plugin]:
    """Load every handler in the ``processor.handlers`` entry-point group.

    A plugin that fails to load is returned with its ``error`` set and logged;
    it never stops the others from loading.
    """
    if entry_points is None:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)

    plugins: list[Plugin] = []
    seen: set[tuple[str, str | None]] = set()
    for entry_point in entry_points:
        dist = entry_point.dist
        key = (entry_point.name, dist.name if dist else None)
        if key in seen:
            # The same distribution can sit twice on sys.path.
            continue
        seen.add(key)
        plugins.append(_load_one(entry_point))

    return sorted(plugins, key=lambda plugin: plugin.name)


def _load_one(entry_point: metadata.EntryPoint) -> Plugin:
    dist = entry_point.dist
    plugin = Plugin(
        name=entry_point.name,
        distribution=dist.name if dist else None,
        version=dist.version if dist else None,
    )

    try:
        factory = entry_point.load()
        handler = factory()
    except Exception as error:
        plugin.error = f"{type(error).__name__}: {error}"
        logger.error(
            "Plugin %r (%s) failed to load: %s",
            plugin.name,
            entry_point.value,
            plugin.error,
        )
        return plugin

    if not callable(getattr(handler, "handle", None)):
        plugin.error = (
            f"{entry_point.value} returned {type(handler).__name__}, "
            "which has no handle() method"
        )
        logger.error("Plugin %r failed to load: %s", plugin.name, plugin.error)
        return plugin

    plugin.handler = handler
    return plugin


class Dispatcher:
    """Hands events to handlers and counts the outcome per plugin."""

    def __init__(
        self,
        plugins: Iterable[Plugin],
        resume: dict[str, Checkpoint] | None = None,
    ) -> None:
        self.plugins = [plugin for plugin in plugins if plugin.handler is not None]
        self.resume = resume or {}
        self.counts = {
            plugin.name: PluginCounts(
                handled=self.resume.get(plugin.name, Checkpoint()).handled,
                failed=self.resume.get(plugin.name, Checkpoint()).failed,
            )
            for plugin in self.plugins
        }
        self.position = 0
        self._skip = {name: point.position for name, point in self.resume.items()}
        self._points: dict[str, Checkpoint] = dict(self.resume)
        self._active: list[tuple[str, Handler, frozenset[str] | None]] = []
        self._broken: list[tuple[str, frozenset[str] | None]] = []

    def setup(self, run: RunInfo) -> None:
        """Call each handler's ``setup``.

        A handler whose setup raises receives no events, and each event it
        would have received counts as failed for it.
        """
        for plugin in self.plugins:
            handler = plugin.handler
            assert handler is not None
            event_types = getattr(handler, "event_types", None)
            resume = self.resume.get(plugin.name)
            state = resume.state if resume is not None else None
            try:
                handler.setup(msgspec.structs.replace(run, resume=state))
            except Exception as error:
                logger.exception(
                    "Plugin %r failed in setup for run %s; its events count as failed.",
                    plugin.name,
                    run.run_id,
                )
                reason = f"setup failed: {type(error).__name__}: {error}"
                self.counts[plugin.name].error = reason
                self._broken.append((plugin.name, event_types))
                continue
            self._active.append((plugin.name, handler, event_types))

    def dispatch(self, event: Event) -> None:
        """Hand ``event`` to every handler that wants its type."""
        self.dispatch_batch([event])

    def dispatch_batch(self, events: Sequence[Event]) -> None:
        """Hand ``events``, in order, to every handler that wants their type.

        Each handler receives the whole batch before the next one starts. A
        handler resumed from a checkpoint skips the events up to it.
        """
        start = self.position
        self.position += len(events)

        for name, event_types in self._broken:
            wanted = _wanted(events, event_types)
            self.counts[name].failed += len(wanted)

        for name, handler, event_types in self._active:
            skip = self._skip.get(name, 0) - start
            pending = events[skip:] if skip > 0 else events
            self._deliver(name, handler, _wanted(pending, event_types))

    def _deliver(self, name: str, handler: Handler, events: Sequence[Event]) -> None:
        counts = self.counts[name]
        handle = handler.handle
        handled = 0
        try:
            for event in events:
                try:
                    handle(event)
                except Exception:
                    counts.failed += 1
                    if counts.failed <= MAX_LOGGED_FAILURES:
                        logger.exception(
                            "Plugin %r failed on event %s.", name, event.id
                        )
                    if counts.failed == MAX_LOGGED_FAILURES:
                        logger.warning(
                            "Further failures of plugin %r are counted but not logged.",
                            name,
                        )
                    continue
                handled += 1
        finally:
            counts.handled += handled

    def checkpoint(self) -> dict[str, Checkpoint]:
        """Ask each handler to make its effects durable; return the progress.

        A handler whose ``checkpoint`` raises keeps its previous checkpoint,
        so a resume hands it the events since then again.
        """
        for name, handler, _ in self._active:
            try:
                state = handler.checkpoint()
            except Exception:
                logger.exception("Plugin %r failed to checkpoint.", name)
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
        """Call each active handler's ``teardown``, logging any failure."""
        for name, handler, _ in self._active:
            try:
                handler.teardown()
            except Exception as error:
                logger.exception("Plugin %r failed in teardown.", name)
                reason = f"teardown failed: {type(error).__name__}: {error}"
                self.counts[name].error = reason
        self._active.clear()


def _wanted(
    events: Sequence[Event], event_types: frozenset[str] | None
) -> Sequence[Event]:
    if event_types is None:
        return events
    return [event for event in events if event.event_type in event_types]
