"""Parse an export file and hand its events to the plugins.

The process actor and ``processor replay`` both call ``process_file``, so a
downloaded export and a local file go through the same steps.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import msgspec

from processor.limits import ParseLimits
from processor.parser import DEFAULT_LIMITS, ParseStats, iter_events
from processor.plugins import Checkpoint, Dispatcher, PluginCounts, RunInfo
from processor.rejects import Rejects

logger = logging.getLogger(__name__)

# Seconds between progress callbacks (and checkpoints) while parsing.
PROGRESS_INTERVAL = 0.5

# Events handed to the dispatcher at a time. Each batch costs a hand-over to
# every plugin's thread (about 1 ms measured on a 2-core VM), and progress is
# checked between batches.
BATCH_SIZE = 2048

_event_type = operator.attrgetter("event_type")

T = TypeVar("T")


class Summary(msgspec.Struct, kw_only=True):
    """Counts of one pass over an export file."""

    events: int = 0
    rejected: int = 0
    rejects_file: str | None = None
    event_types: dict[str, int] = msgspec.field(default_factory=dict)
    plugins: dict[str, PluginCounts] = msgspec.field(default_factory=dict)
    checkpoints: dict[str, Checkpoint] = msgspec.field(default_factory=dict)


ProgressCallback = Callable[[Summary], None]


def process_file(
    path: Path,
    dispatcher: Dispatcher,
    run: RunInfo,
    on_progress: ProgressCallback | None = None,
    *,
    limits: ParseLimits = DEFAULT_LIMITS,
    rejects_path: Path | None = None,
) -> Summary:
    """Parse ``path`` and dispatch each event; return the counts.

    Rejected rows are written to ``rejects_path`` (created only if a row is
    rejected). Raises ``ParseError`` when the file cannot be read, after
    dispatching every event read before the fault, and passes on whatever
    ``on_progress`` raises, which is how a caller stops a run. Handlers are
    set up before the first event and torn down after the last, also when
    parsing stops with an error.
    """
    stats = ParseStats()
    event_types: Counter[str] = Counter()
    rejects = Rejects(rejects_path)
    next_report = time.monotonic() + PROGRESS_INTERVAL

    def summarize() -> Summary:
        dispatcher.flush()
        summary = _summary(stats, event_types, dispatcher)
        if rejects.count and rejects_path is not None:
            summary.rejects_file = str(rejects_path)
        return summary

    dispatcher.setup(run)
    try:
        if on_progress is not None:
            # A checkpoint before the first event: a crash before the next
            # one resumes here, so a plugin can undo what it wrote meanwhile.
            summary = summarize()
            summary.checkpoints = dispatcher.checkpoint()
            on_progress(summary)

        events = iter_events(path, stats, limits=limits, rejects=rejects)
        for batch in _batches(events, BATCH_SIZE):
            event_types.update(map(_event_type, batch))
            dispatcher.dispatch_batch(batch)

            if on_progress is not None and time.monotonic() >= next_report:
                summary = summarize()
                summary.checkpoints = dispatcher.checkpoint()
                on_progress(summary)
                next_report = time.monotonic() + PROGRESS_INTERVAL
    except BaseException:
        # Record what was dispatched before the fault, so the run's counts
        # match what the plugins saw.
        if on_progress is not None:
            with contextlib.suppress(Exception):
                on_progress(summarize())
        raise
    finally:
        rejects.close()
        dispatcher.teardown()

    summary = summarize()
    logger.info(
        "Processed %d events (%d rejected) from %s for run %s.",
        summary.events,
        summary.rejected,
        path.name,
        run.run_id,
    )
    return summary


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Yield lists of up to ``size`` items.

    When ``items`` raises, the items read before the fault are yielded first
    and the exception is raised after them.
    """
    batch: list[T] = []
    try:
        for item in items:
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
    except Exception:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def _summary(
    stats: ParseStats, event_types: Counter[str], dispatcher: Dispatcher
) -> Summary:
    return Summary(
        events=stats.events,
        rejected=stats.rejected,
        event_types=dict(event_types),
        plugins={
            name: msgspec.structs.replace(counts)
            for name, counts in dispatcher.counts.items()
        },
    )
