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
from collections.abc import Iterable
from importlib import metadata
from typing import ClassVar

import msgspec

from processor.events import Event

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "processor.handlers"

# Failures per plugin beyond this many in a run are counted but not logged.
MAX_LOGGED_FAILURES = 10


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The run details a handler receives in ``setup``."""

    run_id: str
    export_id: str | None = None


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

    def teardown(self) -> None:
        """Release what ``setup`` acquired, after the run's last event."""


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

    def __init__(self, plugins: Iterable[Plugin]) -> None:
        self.plugins = [plugin for plugin in plugins if plugin.handler is not None]
        self.counts = {plugin.name: PluginCounts() for plugin in self.plugins}
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
            try:
                handler.setup(run)
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
        for name, event_types in self._broken:
            if event_types is None or event.event_type in event_types:
                self.counts[name].failed += 1

        for name, handler, event_types in self._active:
            if event_types is not None and event.event_type not in event_types:
                continue

            counts = self.counts[name]
            try:
                handler.handle(event)
            except Exception:
                counts.failed += 1
                if counts.failed <= MAX_LOGGED_FAILURES:
                    logger.exception("Plugin %r failed on event %s.", name, event.id)
                if counts.failed == MAX_LOGGED_FAILURES:
                    logger.warning(
                        "Further failures of plugin %r are counted but not logged.",
                        name,
                    )
                continue
            counts.handled += 1

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
