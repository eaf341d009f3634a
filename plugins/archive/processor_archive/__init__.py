"""Archive plugin: every event as one JSON line, in one file per day.

Events go to ``events-YYYY-MM-DD.jsonl`` files (the UTC day of each event's
timestamp) in the directory named by ``PROCESSOR_ARCHIVE_DIR``, by default
``.processor/archive``. Each line is an object with the event's fields plus
the ``run_id`` and ``export_id`` of the run that handled it, ready for a
warehouse's JSON-lines loader. Files are opened for appending, so runs add
to what earlier runs wrote.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC
from pathlib import Path
from typing import IO

import msgspec

from processor.events import Event, MetadataValue
from processor.plugins import Handler, RunInfo

logger = logging.getLogger(__name__)

DEFAULT_DIRECTORY = Path(".processor/archive")

# Day files kept open at once; well under the usual limit of 1,024 file
# descriptors per process.
MAX_OPEN_FILES = 64


class ArchivedEvent(msgspec.Struct, kw_only=True):
    """One line of an archive file."""

    id: str
    token: str
    email_id: str | None
    subscriber_email: str
    event_type: str
    timestamp: str
    metadata: dict[str, MetadataValue]
    run_id: str
    export_id: str | None


class ArchiveHandler(Handler):
    """Appends each event to the archive file of its day."""

    name = "archive"

    def __init__(self) -> None:
        self.directory = DEFAULT_DIRECTORY
        self._run: RunInfo | None = None
        self._files: dict[str, IO[bytes]] = {}
        self._encoder = msgspec.json.Encoder()
        self._written = 0

    def setup(self, run: RunInfo) -> None:
        value = os.environ.get("PROCESSOR_ARCHIVE_DIR", "").strip()
        self.directory = Path(value).expanduser() if value else DEFAULT_DIRECTORY
        self.directory.mkdir(parents=True, exist_ok=True)
        self._run = run
        self._written = 0

    def handle(self, event: Event) -> None:
        assert self._run is not None, "setup() must run before handle()"
        timestamp = event.timestamp.astimezone(UTC)
        day = timestamp.date().isoformat()

        file = self._files.pop(day, None)
        if file is None:
            file = self._open(day)
        # Re-inserting keeps the dict in least-recently-used order.
        self._files[day] = file

        record = ArchivedEvent(
            id=event.id,
            token=event.token,
            email_id=event.email_id,
            subscriber_email=event.subscriber_email,
            event_type=event.event_type,
            timestamp=timestamp.isoformat(),
            metadata=event.metadata,
            run_id=self._run.run_id,
            export_id=self._run.export_id,
        )
        file.write(self._encoder.encode(record) + b"\n")
        self._written += 1

    def _open(self, day: str) -> IO[bytes]:
        # An export that spans years touches more days than a process may
        # keep files open, so the least recently used file is closed first.
        if len(self._files) >= MAX_OPEN_FILES:
            oldest = next(iter(self._files))
            self._files.pop(oldest).close()
        return (self.directory / f"events-{day}.jsonl").open("ab")

    def teardown(self) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()
        logger.info("Archived %d events to %s.", self._written, self.directory)
