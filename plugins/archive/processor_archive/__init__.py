"""Archive plugin: every event as one JSON line, in one file per day and run.

Events go to ``events-YYYY-MM-DD.RUN_ID.jsonl`` files (the UTC day of each
event's timestamp, and the run that handled it) in the directory named by
``PROCESSOR_ARCHIVE_DIR``, by default ``.processor/archive``. Each line is
an object with the event's fields plus the ``run_id`` and ``export_id``,
ready for a warehouse's JSON-lines loader.

Each event is archived exactly once per run, crashes included: at every
checkpoint the files are flushed to disk and their sizes recorded, and a
resumed run first cuts its files back to those sizes.
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
    subscriber_email: str | None
    subscriber_id: str | None
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
        self._sizes: dict[str, int] = {}
        self._encoder = msgspec.json.Encoder()
        self._written = 0

    def setup(self, run: RunInfo) -> None:
        # PROCESSOR_PLUGIN_ARCHIVE_DIR (or "dir" in the config file) sets
        # run.config["dir"]; PROCESSOR_ARCHIVE_DIR is the older name.
        value = str(run.config.get("dir") or "").strip()
        value = value or os.environ.get("PROCESSOR_ARCHIVE_DIR", "").strip()
        self.directory = Path(value).expanduser() if value else DEFAULT_DIRECTORY
        self.directory.mkdir(parents=True, exist_ok=True)
        self._run = run
        self._written = 0
        self._sizes = {}
        if run.resume is not None:
            self._rewind(run.run_id, run.resume)

    def _rewind(self, run_id: str, sizes: dict[str, int]) -> None:
        # Lines written after the last checkpoint are handed over again, so
        # they are cut off here, and files begun after it are removed.
        for path in self.directory.glob(f"events-*.{run_id}.jsonl"):
            size = sizes.get(path.name)
            if size is None:
                path.unlink()
            else:
                os.truncate(path, size)
        self._sizes = dict(sizes)
        logger.info("Archive of run %s rewound to its last checkpoint.", run_id)

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
            subscriber_id=event.subscriber_id,
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
            oldest = self._files.pop(next(iter(self._files)))
            oldest.flush()
            os.fsync(oldest.fileno())
            self._sizes[Path(oldest.name).name] = oldest.tell()
            oldest.close()
        assert self._run is not None
        name = f"events-{day}.{self._run.run_id}.jsonl"
        return (self.directory / name).open("ab")

    def checkpoint(self) -> dict[str, int]:
        """Flush every file to disk; return the size of each file of the run."""
        for file in self._files.values():
            file.flush()
            os.fsync(file.fileno())
            self._sizes[Path(file.name).name] = file.tell()
        return dict(self._sizes)

    def teardown(self) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()
        logger.info("Archived %d events to %s.", self._written, self.directory)
