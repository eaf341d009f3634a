"""Handlers for the plugin loader and dispatcher tests."""

from __future__ import annotations

from processor.events import Event
from processor.plugins import Handler


class RecordingHandler(Handler):
    name = "recording"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def handle(self, event: Event) -> None:
        self.seen.append(event.id)


class RaisingHandler(Handler):
    name = "raising"

    def handle(self, event: Event) -> None:
        raise RuntimeError(f"cannot handle {event.id}")


class BouncesOnly(RecordingHandler):
    name = "bounces"
    event_types = frozenset({"bounced", "complained"})


class FailingSetup(RecordingHandler):
    name = "failing-setup"

    def setup(self, run: object) -> None:
        raise OSError("archive directory is read-only")


def not_a_handler() -> object:
    return object()
