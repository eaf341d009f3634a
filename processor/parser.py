"""Streaming parser for events exports.

``iter_events`` reads an events export and yields one typed ``Event`` per
record. It accepts every form Buttondown and its users produce, detected
from the bytes and never from the file name:

- a ZIP archive with one or more members, of which it reads the events
  member (see ``processor.containers``);
- a bare CSV, a JSON array of objects, or JSON lines;
- any of these compressed with gzip.

The file is read as a stream, so memory stays flat however many events it
holds. A compressed file is decompressed once and checked whole before the
first event is yielded. A row that cannot be read goes to the rejects file
with its reason, and parsing goes on. A fault that leaves the rest of the
file unreadable raises ``ParseError`` with the number of events read before
it.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from processor.containers import ZIP_MAGIC, Source, open_source
from processor.errors import DamagedFile, ParseError
from processor.events import Event
from processor.inflate import GZIP_MAGIC
from processor.jsonrecords import iter_json_array, iter_json_lines
from processor.limits import ParseLimits
from processor.metadata import parse_metadata
from processor.rejects import Rejects
from processor.rows import Columns, ParseStats, build_event

__all__ = ["DEFAULT_LIMITS", "ParseStats", "detect_format", "iter_events"]

Format = Literal["csv", "json", "jsonl"]

DEFAULT_LIMITS = ParseLimits()

# Rows between updates of ParseStats.events while a CSV is read.
STATS_INTERVAL = 1024

# Bytes read from the decompressed stream at a time.
READ_SIZE = 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"
# Characters that mark a NUL byte or, decoded with surrogateescape, a byte
# that is not valid UTF-8.
_BAD_TEXT = re.compile("[\x00\udc80-\udcff]")


def iter_events(
    path: Path,
    stats: ParseStats | None = None,
    *,
    limits: ParseLimits = DEFAULT_LIMITS,
    rejects: Rejects | None = None,
) -> Iterator[Event]:
    """Yield the events of the export file at ``path``, counting into ``stats``.

    Rejected rows go to ``rejects`` (counted and logged only, when None).
    Raises ``ParseError`` (or its ``DamagedFile`` and ``LimitExceeded``) when
    the file cannot be read. Raised after the first event, its message gives
    the number of events read before the fault, as does its ``events``.
    """
    stats = stats if stats is not None else ParseStats()
    rejects = rejects if rejects is not None else Rejects()

    source = open_source(path, limits)
    with source.open() as raw:
        checked = _TextCheck(raw)
        stream = io.BufferedReader(checked, READ_SIZE)
        kind = detect_format(stream.peek(READ_SIZE), source.name)
        if kind == "json" and not source.verified:
            _check_array_end(path)

        try:
            if kind == "csv":
                yield from _iter_csv(stream, checked, source, stats, rejects, limits)
            elif kind == "json":
                yield from iter_json_array(stream, source.name, stats, rejects, limits)
            else:
                yield from iter_json_lines(stream, source.name, stats, rejects, limits)
        except ParseError as error:
            if stats.events == 0:
                raise
            wrapped = type(error)(
                f"{error} {stats.events:,} events were read before this fault."
            )
            wrapped.events = stats.events
            raise wrapped from error


def detect_format(head: bytes, name: str) -> Format:
    """Return the format of decompressed export data from its first bytes.

    Raises ``ParseError``, naming what was found, when the data is not CSV,
    a JSON array or JSON lines.
    """
    text = head.removeprefix(_BOM).lstrip(_WHITESPACE)
    if not text:
        state = "empty" if not head else "blank"
        raise ParseError(
            f"{name} is {state}; an events export starts with a header row or "
            "a JSON array."
        )

    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ParseError(
            f"{name} is UTF-16 text; save it as UTF-8 (for example with iconv "
            "-f UTF-16 -t UTF-8) and pass it again."
        )
    first = text[:1]
    if first == b"[":
        return "json"
    if first == b"{":
        return "jsonl"
    if text.startswith(ZIP_MAGIC) or text.startswith(GZIP_MAGIC):
        raise ParseError(
            f"{name} contains another ZIP or gzip file ({text[:4]!r}); only one "
            "level of compression is read. Decompress the outer layer first."
        )
    if first == b"<":
        raise ParseError(
            f"{name} is an HTML or XML document ({text[:40]!r}), perhaps an "
            "error page saved in place of the export. Download the export again."
        )
    if not _is_text_line(text[:4096].split(b"\n", 1)[0]):
        raise ParseError(
            f"{name} is binary data starting with {text[:16]!r}, not CSV or "
            "JSON. Pass an events export as downloaded from Buttondown."
        )
    return "csv"


def _is_text_line(line: bytes) -> bool:
    """Return whether a header line is UTF-8 text without control characters.

    Only the first line is checked, so a NUL byte or bad byte in a later row
    rejects that row instead of the file.
    """
    if any(byte < 0x20 and byte not in _WHITESPACE for byte in line):
        return False
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as error:
        # A character cut off by the sample's end is not an error.
        return error.reason == "unexpected end of data" and error.end == len(line)
    return True


def _check_array_end(path: Path) -> None:
    """Raise ``DamagedFile`` unless a plain JSON file ends with ``]``."""
    with path.open("rb") as file:
        size = file.seek(0, io.SEEK_END)
        file.seek(max(0, size - 4096))
        tail = file.read().rstrip(_WHITESPACE)

    if not tail.endswith(b"]"):
        raise DamagedFile(
            f"{path.name} is a JSON array that ends without its closing ']' "
            f"(it ends with {tail[-20:]!r}), so it was cut short. Download the "
            "export again."
        )


class _TextCheck(io.RawIOBase):
    """Passes bytes through and notes whether any are NUL or invalid UTF-8.

    Until ``suspect`` turns true, rows need no check of their own.
    """

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._tail = b""
        self.suspect = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        size: int = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if size and not self.suspect:
            self._scan(bytes(memoryview(buffer)[:size]))
        return size

    def _scan(self, data: bytes) -> None:
        data = self._tail + data
        self._tail = b""
        if b"\x00" in data:
            self.suspect = True
            return
        if data.isascii():
            return

        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            # A character cut by the read boundary is checked with the next read.
            if error.reason == "unexpected end of data" and len(data) - error.start < 4:
                self._tail = data[error.start :]
            else:
                self.suspect = True


def _iter_csv(
    stream: BinaryIO,
    checked: _TextCheck,
    source: Source,
    stats: ParseStats,
    rejects: Rejects,
    limits: ParseLimits,
) -> Iterator[Event]:
    # NOTE: the csv module's field limit is process-wide, so threads that
    # parse with different limits at once share the last one set.
    csv.field_size_limit(limits.max_field_size)

    # Invalid UTF-8 becomes lone surrogates, so a bad byte rejects its row
    # instead of stopping the file.
    text = io.TextIOWrapper(
        stream, encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    # readline with a limit keeps a line without an end from filling memory.
    lines = iter(functools.partial(text.readline, limits.max_record_size), "")
    reader = csv.reader(lines)

    try:
        header = next(reader)
    except StopIteration:
        raise ParseError(
            f"{source.name} is empty; an events export starts with a header."
        ) from None
    except csv.Error as error:
        raise ParseError(f"{source.name} has an unreadable header: {error}") from None

    columns = Columns(header, source.name)
    rows = _CsvRows(reader, checked, columns, source.name, stats, rejects)
    while True:
        try:
            yield from rows.events()
            return
        except csv.Error as error:
            # The reader starts afresh on the next line after an error.
            rows.reject(f"invalid CSV ({error})", [])


class _CsvRows:
    """The rows of one CSV after its header, turned into events.

    ``events`` reads rows in the dashboard's column order through a fast
    path that checks nothing twice. A row that fails there, any row of
    another header, and every row once the stream held a NUL byte or invalid
    UTF-8 go through ``_event``, which finds and records the reason.
    """

    def __init__(
        self,
        reader: Any,
        checked: _TextCheck,
        columns: Columns,
        member: str,
        stats: ParseStats,
        rejects: Rejects,
    ) -> None:
        self.reader = reader
        self.checked = checked
        self.columns = columns
        self.member = member
        self.stats = stats
        self.rejects = rejects
        # The first line of the row being read.
        self.start_line = reader.line_num + 1

    def events(self) -> Iterator[Event]:
        reader = self.reader
        checked = self.checked
        fast = self.columns.standard
        fromisoformat = datetime.fromisoformat
        make_event = Event
        # Counted in a local and stored every STATS_INTERVAL rows and at the
        # end, because this loop runs once per event.
        count = self.stats.events

        try:
            for fields in reader:
                if fast and not checked.suspect:
                    # The checks of build_event, inlined. A row that fails
                    # any of them is read again by _event, which records why.
                    try:
                        (
                            event_id,
                            token,
                            email_id,
                            email,
                            event_type,
                            timestamp,
                            metadata,
                        ) = fields
                        moment = fromisoformat(timestamp)
                        if moment.tzinfo is None:
                            moment = moment.replace(tzinfo=UTC)
                        if (
                            event_id
                            and event_type
                            and len(timestamp) > 10
                            and 1 < moment.year < 9999
                        ):
                            event = make_event(
                                id=event_id,
                                token=token,
                                email_id=email_id or None,
                                subscriber_email=email or None,
                                event_type=event_type,
                                timestamp=moment,
                                metadata=(
                                    {} if metadata == "{}" else parse_metadata(metadata)
                                ),
                            )
                            count += 1
                            if not count % STATS_INTERVAL:
                                self.stats.events = count
                            yield event
                            self.start_line = reader.line_num + 1
                            continue
                    except ValueError:
                        pass

                slow_event = self._event(fields)
                self.start_line = reader.line_num + 1
                if slow_event is not None:
                    count += 1
                    yield slow_event
        finally:
            self.stats.events = count

    def _event(self, fields: list[str]) -> Event | None:
        """Return the row's event, or record why it is rejected (or blank)."""
        width = self.columns.width
        if len(fields) != width:
            if fields and "".join(fields).strip():
                self.reject(f"expected {width} fields, found {len(fields)}", fields)
            return None

        if self.checked.suspect and (reason := _bad_text(fields)):
            self.reject(reason, fields)
            return None

        try:
            return build_event(*self.columns.values(fields))
        except ValueError as error:
            self.reject(str(error), fields)
            return None

    def reject(self, reason: str, fields: list[str]) -> None:
        self.stats.rejected += 1
        # Columns.values appends a "" to a row of a header that lacks columns.
        raw = _as_csv(fields[: self.columns.width])
        self.rejects.add(self.member, self.start_line, reason, raw)
        self.start_line = self.reader.line_num + 1


def _bad_text(fields: list[str]) -> str | None:
    for field in fields:
        match = _BAD_TEXT.search(field)
        if match is None:
            continue
        if match.group() == "\x00":
            return "the row contains a NUL byte"
        return "the row contains bytes that are not valid UTF-8"
    return None


def _as_csv(fields: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)
    return buffer.getvalue()
