"""Streaming parser for events exports.

``iter_events`` reads a ZIP archive holding an events CSV, or a bare CSV, and
yields one typed ``Event`` per row. It reads the file as a stream, one row at
a time, so memory stays flat however many events the file holds. A row that
cannot be read is counted as rejected and logged, and parsing goes on.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import zipfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from processor.errors import ParseError
from processor.events import EVENT_COLUMNS, Event
from processor.metadata import parse_metadata

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = frozenset({"id", "subscriber__email", "event_type", "timestamp"})

# Rejected rows beyond this many per file are counted but not logged one by one.
MAX_LOGGED_REJECTS = 20

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")

# Exceptions zipfile raises for a damaged member: a CRC mismatch (BadZipFile), a
# cut stream (EOFError), corrupt deflate data (zlib.error), encryption
# (RuntimeError) or an unsupported compression method (NotImplementedError).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    RuntimeError,
    NotImplementedError,
)

# Largest CSV field accepted, in characters. The csv module's default of
# 131,072 is below what a long click URL list in metadata can reach.
MAX_FIELD_SIZE = 16 * 1024 * 1024


@dataclasses.dataclass
class ParseStats:
    """Counts kept while a file is parsed."""

    events: int = 0
    rejected: int = 0


class _Row:
    """Positions of the known columns in one file's header."""

    def __init__(self, header: list[str], source: str) -> None:
        names = [name.strip() for name in header]
        missing = sorted(REQUIRED_COLUMNS.difference(names))
        if missing:
            raise ParseError(
                f"{source} is missing the column(s) {', '.join(missing)}; its "
                f"header is {','.join(names)!r}, and an events export has "
                f"{','.join(EVENT_COLUMNS)!r}."
            )

        self.width = len(names)
        self.positions = {
            name: names.index(name) for name in EVENT_COLUMNS if name in names
        }

    def event(self, fields: list[str]) -> Event:
        if len(fields) != self.width:
            raise ValueError(f"expected {self.width} fields, found {len(fields)}")

        def get(name: str) -> str:
            position = self.positions.get(name)
            return "" if position is None else fields[position].strip()

        event_id = get("id")
        if not event_id:
            raise ValueError("id is empty")
        event_type = get("event_type")
        if not event_type:
            raise ValueError("event_type is empty")

        return Event(
            id=event_id,
            token=get("token"),
            email_id=get("email_id") or None,
            subscriber_email=get("subscriber__email"),
            event_type=event_type,
            timestamp=parse_timestamp(get("timestamp")),
            metadata=parse_metadata(get("metadata")),
        )


def parse_timestamp(text: str) -> datetime:
    """Parse an export timestamp such as ``2024-03-13 00:16:58+00:00``.

    A timestamp without an offset is read as UTC.
    """
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"timestamp {text!r} is not an ISO 8601 date and time"
        ) from None

    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def iter_events(path: Path, stats: ParseStats | None = None) -> Iterator[Event]:
    """Yield the events of the export file at ``path``, counting into ``stats``.

    Raises ``ParseError`` when the file is neither a ZIP holding an events CSV
    nor a CSV with the events header.
    """
    stats = stats if stats is not None else ParseStats()

    with path.open("rb") as file:
        head = file.read(4)

    if head in _ZIP_MAGIC:
        yield from _iter_zip(path, stats)
        return

    if _looks_like_text(head):
        with path.open("rb") as file:
            yield from _iter_csv(file, path.name, stats)
        return

    raise ParseError(
        f"{path.name} is neither a ZIP archive nor a CSV file (it starts with "
        f"{head!r}); pass an events export as downloaded from Buttondown."
    )


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return True
    if head.startswith((b"\x1f\x8b", b"[", b"{")):
        return False
    return all(
        byte >= 0x20 or byte in b"\t\r\n" for byte in head.lstrip(b"\xef\xbb\xbf")
    )


def _iter_zip(path: Path, stats: ParseStats) -> Iterator[Event]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ParseError(
            f"{path.name} is not a readable ZIP archive: {error}"
        ) from error

    with archive:
        member = _events_member(archive, path.name)
        source = f"{path.name}:{member.filename}"
        try:
            with archive.open(member) as stream:
                yield from _iter_csv(stream, source, stats)
        except _ZIP_ERRORS as error:
            # A cut, corrupt or encrypted member surfaces only while reading.
            raise ParseError(
                f"{source} could not be read ({type(error).__name__}: {error}) "
                f"after {stats.events} events; the file is damaged, so download "
                "the export again."
            ) from error


def _events_member(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    candidates = [
        info
        for info in archive.infolist()
        if not info.is_dir()
        and info.filename.lower().endswith(".csv")
        and not info.filename.startswith("__MACOSX/")
    ]
    if len(candidates) == 1:
        return candidates[0]

    named = [
        info for info in candidates if info.filename.rsplit("/", 1)[-1] == "events.csv"
    ]
    if len(named) == 1:
        return named[0]

    found = ", ".join(info.filename for info in archive.infolist()) or "nothing"
    raise ParseError(
        f"{name} contains no events CSV to choose (found {found}); an events export "
        "ZIP contains one CSV file, or one named events.csv."
    )


def _iter_csv(stream: IO[bytes], source: str, stats: ParseStats) -> Iterator[Event]:
    # NOTE: invalid UTF-8 stops the file with a ParseError instead of
    # rejecting just the row that contains it.
    if csv.field_size_limit() < MAX_FIELD_SIZE:
        csv.field_size_limit(MAX_FIELD_SIZE)

    with io.TextIOWrapper(stream, encoding="utf-8-sig", newline="") as text:
        yield from _iter_rows(csv.reader(text), source, stats)


def _iter_rows(reader: Any, source: str, stats: ParseStats) -> Iterator[Event]:
    try:
        header = next(reader)
    except StopIteration:
        raise ParseError(
            f"{source} is empty; an events export starts with a header."
        ) from None
    except (UnicodeDecodeError, csv.Error) as error:
        # The decoder reads ahead, so a bad byte in an early row fails here.
        raise ParseError(
            f"{source} could not be read at its start (the header or the rows "
            f"just after it): {error}"
        ) from error

    row = _Row(header, source)
    try:
        for fields in reader:
            if not fields:
                continue

            try:
                event = row.event(fields)
            except ValueError as error:
                _reject(source, reader.line_num, str(error), stats)
                continue

            stats.events += 1
            yield event
    except (UnicodeDecodeError, csv.Error) as error:
        raise ParseError(
            f"{source} could not be read past line {reader.line_num} "
            f"({stats.events} events read before it): {error}"
        ) from error


def _reject(source: str, line: int, reason: str, stats: ParseStats) -> None:
    stats.rejected += 1
    if stats.rejected <= MAX_LOGGED_REJECTS:
        logger.warning("Rejected %s line %d: %s", source, line, reason)
    if stats.rejected == MAX_LOGGED_REJECTS:
        logger.warning(
            "Further rejected rows in %s are counted but not logged.", source
        )
