"""Handlers for the plugin loader and dispatcher tests."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence

from processor.events import Event
from processor.plugins import Handler, RetryLater, RunInfo


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


class FlakyHandler(RecordingHandler):
    """Raises RetryLater on the first two attempts at each event."""

    name = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.attempts: dict[str, int] = {}

    def handle(self, event: Event) -> None:
        self.attempts[event.id] = self.attempts.get(event.id, 0) + 1
        if self.attempts[event.id] <= 2:
            raise RetryLater("warehouse busy", after=0.25)
        super().handle(event)


class QuickFlaky(FlakyHandler):
    """FlakyHandler without the wait between attempts."""

    name = "quick-flaky"

    def handle(self, event: Event) -> None:
        try:
            super().handle(event)
        except RetryLater as error:
            raise RetryLater(str(error), after=0) from None


class AlwaysBusy(Handler):
    name = "busy"

    def handle(self, event: Event) -> None:
        raise RetryLater("still busy")


class BatchRecorder(Handler):
    """A bulk sink: records the size of each batch it receives."""

    name = "batch"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def handle_batch(self, events: Sequence[Event]) -> None:
        if any(event.id == "poison" for event in events):
            raise ValueError("bulk insert failed")
        self.batches.append([event.id for event in events])


class FutureApi(RecordingHandler):
    api_version = 2


class BadEventTypes(RecordingHandler):
    event_types = "bounced"  # type: ignore[assignment]


class ConfigRecorder(RecordingHandler):
    name = "configured"

    def setup(self, run: RunInfo) -> None:
        self.config = dict(run.config)


# Set by the tests to release HangingHandler's thread when they finish.
RELEASE = threading.Event()


class HangingHandler(RecordingHandler):
    """Hangs on the event with id ``hang`` until RELEASE is set."""

    name = "hanging"

    def handle(self, event: Event) -> None:
        if event.id == "hang":
            RELEASE.wait(timeout=30)
        super().handle(event)


class SlowHandler(RecordingHandler):
    """Takes 0.2 s per event, but always makes progress."""

    name = "slow"

    def handle(self, event: Event) -> None:
        time.sleep(0.2)
        super().handle(event)


class ExitingHandler(RecordingHandler):
    """Calls sys.exit on the event with id ``exit``."""

    name = "exiting"

    def handle(self, event: Event) -> None:
        if event.id == "exit":
            sys.exit(3)
        super().handle(event)


class OpaqueCheckpoint(RecordingHandler):
    """Returns checkpoint state that JSON cannot encode."""

    name = "opaque"

    def checkpoint(self) -> object:
        return {"state": object()}
