"""The summary plugin: counts events by email and type, and writes a report.

At the end of each run it writes ``summary-RUN_ID.json`` into the directory
set by ``dir`` in its configuration (``PROCESSOR_PLUGIN_SUMMARY_DIR``),
``.processor/summaries`` by default::

    {"run_id": "run_...", "export_id": "exp_...", "events": 10000,
     "by_type": {"delivered": 5952, "opened": 2457},
     "by_email": {"em_...": {"delivered": 1190, "opened": 491}}}

Events without an email id are counted under ``"none"``. The counts are
returned from ``checkpoint``, so a run that resumes after a crash counts
each event once.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from processor.events import Event
from processor.plugins import Handler, RunInfo

logger = logging.getLogger(__name__)

DEFAULT_DIRECTORY = Path(".processor") / "summaries"
NO_EMAIL = "none"


class Report(msgspec.Struct):
    """The report file of one run."""

    run_id: str
    export_id: str | None
    events: int
    by_type: dict[str, int]
    by_email: dict[str, dict[str, int]]


class SummaryHandler(Handler):
    """Counts events by email id and event type."""

    name = "summary"

    def __init__(self) -> None:
        self.directory = DEFAULT_DIRECTORY
        self.run: RunInfo | None = None
        self.counts: dict[str, Counter[str]] = {}

    def setup(self, run: RunInfo) -> None:
        value = str(run.config.get("dir") or "").strip()
        self.directory = Path(value).expanduser() if value else DEFAULT_DIRECTORY
        self.run = run
        self.counts = {}
        if run.resume is not None:
            self.counts = {email: Counter(types) for email, types in run.resume.items()}

    def handle(self, event: Event) -> None:
        email = event.email_id or NO_EMAIL
        counter = self.counts.get(email)
        if counter is None:
            counter = self.counts[email] = Counter()
        counter[event.event_type] += 1

    def checkpoint(self) -> Any:
        return {email: dict(types) for email, types in self.counts.items()}

    def teardown(self) -> None:
        assert self.run is not None, "setup() must run before teardown()"
        by_type: Counter[str] = Counter()
        for types in self.counts.values():
            by_type.update(types)

        report = Report(
            run_id=self.run.run_id,
            export_id=self.run.export_id,
            events=sum(by_type.values()),
            by_type=dict(by_type.most_common()),
            by_email={
                email: dict(types.most_common())
                for email, types in sorted(self.counts.items())
            },
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"summary-{self.run.run_id}.json"
        partial = path.with_suffix(".partial")
        partial.write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
        os.replace(partial, path)
        logger.info("Summary of run %s written to %s.", self.run.run_id, path)
