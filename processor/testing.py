"""Helpers for testing a plugin handler offline, without a run or a network.

``make_event`` builds a valid event with defaults for every field, and
``run_handler`` feeds events to a handler through the real dispatcher, with
its setup, batches, retries, dead letters, checkpoints and teardown, and
returns what happened::

    from processor.testing import make_event, run_handler

    def test_counts_bounces():
        handler = CountBounces()
        result = run_handler(handler, [make_event(event_type="bounced")])
        assert result.handled == 1
        assert handler.bounces == 1
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from processor.events import Event, MetadataValue
from processor.plugins.api import Checkpoint, Handler, RunInfo
from processor.plugins.deadletters import DeadLetter, MemoryDeadLetters
from processor.plugins.dispatch import Dispatcher, RetryPolicy
from processor.plugins.loader import Plugin
from processor.processing import BATCH_SIZE

__all__ = ["HandlerResult", "make_event", "run_handler"]

_numbers = itertools.count(1)


def make_event(
    *,
    id: str | None = None,
    event_type: str = "delivered",
    subscriber_email: str | None = "reader@example.com",
    subscriber_id: str | None = None,
    email_id: str | None = "em_test",
    token: str = "",
    timestamp: datetime | None = None,
    metadata: dict[str, MetadataValue] | None = None,
) -> Event:
    """Return an event with the given fields and defaults for the rest.

    Each call without ``id`` gets a new id, ``ext_evt_test_1`` and so on.
    """
    return Event(
        id=id or f"ext_evt_test_{next(_numbers)}",
        token=token,
        email_id=email_id,
        subscriber_email=subscriber_email,
        subscriber_id=subscriber_id,
        event_type=event_type,
        timestamp=timestamp or datetime(2024, 3, 13, tzinfo=UTC),
        metadata=metadata or {},
    )


@dataclasses.dataclass
class HandlerResult:
    """The outcome of ``run_handler``.

    Fields:
        handled: events the handler handled.
        failed: events that failed, after any retries.
        error: the reason the handler failed as a whole (in ``setup`` or
            ``teardown``), or ``None``.
        dead_letters: the failed events with their errors, in order.
        checkpoint: the last checkpoint, with what ``checkpoint`` returned.
    """

    handled: int
    failed: int
    error: str | None
    dead_letters: list[DeadLetter]
    checkpoint: Checkpoint | None


def run_handler(
    handler: Handler,
    events: Iterable[Event],
    *,
    config: dict[str, Any] | None = None,
    name: str = "plugin-under-test",
    resume: Any = None,
    retry: RetryPolicy | None = None,
    sleep: Callable[[float], None] | None = None,
) -> HandlerResult:
    """Feed ``events`` to ``handler`` as a run would, and return the outcome.

    ``config`` becomes ``RunInfo.config``. ``resume``, when not ``None``, is
    handed over as ``RunInfo.resume``, as when a run resumes after a crash
    at a checkpoint whose ``checkpoint`` returned it. Retries do not sleep
    unless ``sleep`` is given (such as ``time.sleep``, for a handler whose
    ``RetryLater`` waits for real time to pass), so most tests run at once.
    """
    store = MemoryDeadLetters()
    dispatcher = Dispatcher(
        [Plugin(name=name, distribution=None, version=None, handler=handler)],
        resume=None if resume is None else {name: Checkpoint(state=resume)},
        configs={name: config or {}},
        dead_letters=store,
        retry=retry,
        sleep=sleep or (lambda seconds: None),
    )

    dispatcher.setup(RunInfo(run_id="run_test", export_id="exp_test"))
    try:
        batch: list[Event] = []
        for event in events:
            batch.append(event)
            if len(batch) == BATCH_SIZE:
                dispatcher.dispatch_batch(batch)
                batch = []
        if batch:
            dispatcher.dispatch_batch(batch)
        points = dispatcher.checkpoint()
    finally:
        dispatcher.teardown()

    counts = dispatcher.counts[name]
    return HandlerResult(
        handled=counts.handled,
        failed=counts.failed,
        error=counts.error,
        dead_letters=store.letters(name),
        checkpoint=points.get(name),
    )
