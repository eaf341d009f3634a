"""Loading plugins from entry points, each on its own.

Every entry point in the group ``processor.handlers`` is loaded separately.
An import error, a missing attribute, an object of the wrong type or a
handler built for another API version is recorded on that plugin with the
reason, and the others load as usual.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Iterable
from importlib import metadata

from processor.plugins.api import API_VERSION, Handler

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "processor.handlers"

LOADED = "loaded"
FAILED = "failed"
DISABLED = "disabled"


@dataclasses.dataclass
class Plugin:
    """A plugin found through its entry point, and what became of it.

    ``status`` is ``loaded`` (``handler`` is set), ``failed`` (``error`` gives
    the reason) or ``disabled`` by the allow or deny list.
    """

    name: str
    distribution: str | None
    version: str | None
    handler: Handler | None = None
    error: str | None = None
    status: str = LOADED
    value: str = ""

    @property
    def event_types(self) -> frozenset[str] | None:
        """The event types the handler receives, or ``None`` for all."""
        if self.handler is None:
            return None
        return self.handler.event_types


@dataclasses.dataclass(frozen=True)
class PluginSelection:
    """The allow and deny lists of plugins, by entry point name.

    ``enabled`` is the allow list (``None`` allows every plugin) and
    ``disabled`` the deny list, which wins over the allow list.
    """

    enabled: frozenset[str] | None = None
    disabled: frozenset[str] = frozenset()

    def allows(self, name: str) -> bool:
        """Return whether the plugin ``name`` may load."""
        if name in self.disabled:
            return False
        return self.enabled is None or name in self.enabled


def load_plugins(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    selection: PluginSelection | None = None,
) -> list[Plugin]:
    """Load every handler in the ``processor.handlers`` entry-point group.

    Returns every plugin found, sorted by name, with its status. A plugin
    that fails to load is logged and never stops the others from loading.
    The same distribution found twice on the path loads once.
    """
    if entry_points is None:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    selection = selection or PluginSelection()

    plugins: list[Plugin] = []
    seen: set[tuple[str, str | None]] = set()
    for entry_point in entry_points:
        dist = entry_point.dist
        key = (entry_point.name, dist.name if dist else None)
        if key in seen:
            # The same distribution can sit twice on sys.path.
            continue
        seen.add(key)

        if any(plugin.name == entry_point.name for plugin in plugins):
            # Counts, configuration and dead letters are kept by name, so
            # a second plugin of the same name would be mixed with the first.
            plugin = _describe(entry_point)
            plugins.append(
                _failed(
                    plugin,
                    f"another distribution already provides a plugin named "
                    f"{entry_point.name!r}; uninstall one of them",
                )
            )
        elif selection.allows(entry_point.name):
            plugins.append(_load_one(entry_point))
        else:
            plugin = _describe(entry_point)
            plugin.status = DISABLED
            plugins.append(plugin)

    if selection.enabled is not None:
        unknown = selection.enabled.difference(plugin.name for plugin in plugins)
        if unknown:
            logger.warning(
                "PROCESSOR_PLUGINS names %s, which no installed plugin provides.",
                ", ".join(sorted(unknown)),
            )
    return sorted(plugins, key=lambda plugin: plugin.name)


def _describe(entry_point: metadata.EntryPoint) -> Plugin:
    dist = entry_point.dist
    return Plugin(
        name=entry_point.name,
        distribution=dist.name if dist else None,
        version=dist.version if dist else None,
        value=entry_point.value,
    )


def _load_one(entry_point: metadata.EntryPoint) -> Plugin:
    plugin = _describe(entry_point)
    try:
        factory = entry_point.load()
        handler = factory()
    # SystemExit too: a plugin that exits on import must not end the process.
    except (Exception, SystemExit) as error:
        return _failed(plugin, f"{type(error).__name__}: {error}")

    try:
        problem = _check_handler(handler, entry_point.value)
    except Exception as error:
        problem = f"{entry_point.value} failed a check: {type(error).__name__}: {error}"
    if problem is not None:
        return _failed(plugin, problem)

    plugin.handler = handler
    return plugin


def _failed(plugin: Plugin, reason: str) -> Plugin:
    plugin.status = FAILED
    plugin.error = reason
    logger.error("Plugin %r (%s) failed to load: %s", plugin.name, plugin.value, reason)
    return plugin


def _check_handler(handler: object, value: str) -> str | None:
    """Return why ``handler`` cannot be used, or ``None`` if it can."""
    if not callable(getattr(handler, "handle", None)):
        return (
            f"{value} returned {type(handler).__name__}, which has no handle() method"
        )

    version = getattr(handler, "api_version", API_VERSION)
    if version != API_VERSION:
        return (
            f"{value} was built for handler API version {version!r}, but this "
            f"processor provides version {API_VERSION}. Install a release of "
            "the plugin made for this version."
        )

    event_types = getattr(handler, "event_types", None)
    if event_types is not None and (
        isinstance(event_types, str)
        or not isinstance(event_types, Collection)
        or not all(isinstance(name, str) for name in event_types)
    ):
        return (
            f"{value} has event_types {event_types!r}; set it to None or a "
            "frozenset of event type names."
        )
    return None
