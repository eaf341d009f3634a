"""The handler API that plugins implement: version 1.

A plugin is an entry point in the group ``processor.handlers`` that resolves
to a ``Handler`` subclass, or to any callable returning a handler. These are
the names a plugin may use; they change only with ``API_VERSION``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec

from processor.events import Event

# The names a plugin uses; the guide for plugin authors documents each one.
__all__ = ["API_VERSION", "Handler", "RetryLater", "RunInfo"]

# The version of the handler API. A handler declares the version it was
# built for in ``api_version``; another version fails to load.
API_VERSION = 1


class RetryLater(Exception):
    """Raised by a handler for a transient failure, such as a timeout.

    The dispatcher hands the same event (or batch) over again after a
    backoff, up to ``PROCESSOR_PLUGIN_RETRIES`` attempts in all, and then
    puts it on the plugin's dead-letter list. ``after`` requests a delay in
    seconds before the next attempt. An ``after`` longer than the backoff's
    maximum (10 s) would hold up the run, so such an event goes to the
    dead-letter list at once, for ``processor dead-letters retry``.
    """

    def __init__(self, message: str = "", *, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The run details a handler receives in ``setup``.

    ``resume`` is ``None`` on a fresh start. When a step resumes after a
    crash, it is what this handler's ``checkpoint`` returned at the last
    committed checkpoint, and the events up to that checkpoint are not
    handed over again. ``config`` is this plugin's configuration, from
    ``PROCESSOR_PLUGIN_<NAME>_<KEY>`` variables and the file named by
    ``PROCESSOR_PLUGIN_CONFIG``.
    """

    run_id: str
    export_id: str | None = None
    resume: Any = None
    config: dict[str, Any] = msgspec.field(default_factory=dict)

    def idempotency_key(self, event: Event) -> str:
        """Return a key that is the same each time ``event`` is handed over.

        Use it for external writes: an event after the last checkpoint is
        handed over again when a crashed run resumes.
        """
        return f"{self.export_id or self.run_id}:{event.id}"


class Handler:
    """Base class for plugin handlers.

    Subclasses set ``name`` and override ``handle``, or ``handle_batch`` for
    a bulk sink. ``setup``, ``checkpoint`` and ``teardown`` are optional.
    """

    api_version: ClassVar[int] = API_VERSION
    """The handler API version this handler was built for."""

    name: ClassVar[str] = ""
    event_types: ClassVar[frozenset[str] | None] = None
    """The event types this handler receives; ``None`` means all of them."""

    def setup(self, run: RunInfo) -> None:
        """Prepare for a run, before its first event."""

    def handle(self, event: Event) -> None:
        """React to one event.

        Raise ``RetryLater`` for a transient failure. Any other exception
        puts the event on this plugin's dead-letter list.
        """
        raise NotImplementedError

    def handle_batch(self, events: Sequence[Event]) -> None:
        """React to several events at once, in file order.

        A handler that overrides this method receives batches (of up to 2048
        events, only of its event types) in place of calls to ``handle``.
        ``RetryLater`` hands the whole batch over again; any other exception
        puts every event of the batch on the dead-letter list.
        """
        for event in events:
            self.handle(event)

    def checkpoint(self) -> Any:
        """Make the effects of every event so far durable, and return state.

        Called before the first event and then every half second while a
        file is processed, just before the progress is committed. The return
        value (JSON-serialisable, or ``None``) comes back as
        ``RunInfo.resume`` if the run resumes. A handler that then undoes its
        effects after this point (the archive truncates its files) sees each event
        exactly once.
        """
        return None

    def teardown(self) -> None:
        """Release what ``setup`` acquired, after the run's last event."""


def uses_batches(handler: object) -> bool:
    """Return whether ``handler`` overrides ``Handler.handle_batch``."""
    method = getattr(type(handler), "handle_batch", None)
    return method is not None and method is not Handler.handle_batch


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
