"""Read events exports in JSON: an array of objects, or one object per line.

Buttondown does not document its JSON events export, so a record is read
whether it has the dashboard CSV's keys (``subscriber__email``,
``timestamp``) or the API event object's (``subscriber_id``,
``creation_date``). Ids may be strings or integers and are kept as strings.
``metadata`` may be an object, a string containing a dict literal or JSON,
or null.

A record that is valid JSON but not a valid event is rejected and parsing
goes on. In JSON lines a line that is not valid JSON is rejected too, but in
an array a syntax error leaves no safe place to resume, so it raises
``ParseError``.
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from typing import BinaryIO, NoReturn

import msgspec

from processor.errors import LimitExceeded, ParseError
from processor.events import Event, MetadataValue
from processor.limits import ParseLimits
from processor.rejects import Rejects
from processor.rows import ParseStats, build_event

# Characters decoded from the text at a time.
READ_CHARS = 1024 * 1024

_BOM = "\ufeff"
_WHITESPACE = re.compile(r"[ \t\r\n]*")
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class JsonRecord(msgspec.Struct):
    """The keys of a JSON event record that are read; others are ignored."""

    id: str | int | None = None
    token: str | None = None
    email_id: str | int | None = None
    # UNSET marks a missing key, which differs from a null. A record needs
    # one of these keys, as a CSV needs one of the columns, but it may be null.
    subscriber__email: str | msgspec.UnsetType | None = msgspec.UNSET
    subscriber_email: str | msgspec.UnsetType | None = msgspec.UNSET
    subscriber_id: str | int | msgspec.UnsetType | None = msgspec.UNSET
    event_type: str | None = None
    timestamp: str | None = None
    creation_date: str | None = None
    metadata: dict[str, MetadataValue] | str | None = None


def record_event(record: JsonRecord) -> Event:
    """Return the event for one JSON record, raising ``ValueError`` with why."""
    keys = (record.subscriber__email, record.subscriber_email, record.subscriber_id)
    if all(value is msgspec.UNSET for value in keys):
        raise ValueError("the record has no subscriber__email or subscriber_id key")
    email = record.subscriber__email or record.subscriber_email or ""
    subscriber_id = _text(record.subscriber_id)

    return build_event(
        _text(record.id),
        record.token or "",
        _text(record.email_id),
        email,
        subscriber_id,
        record.event_type or "",
        record.timestamp or record.creation_date or "",
        record.metadata if record.metadata is not None else "",
    )


def _text(value: str | int | msgspec.UnsetType | None) -> str:
    if value is None or value is msgspec.UNSET:
        return ""
    return str(value)


def iter_json_lines(
    stream: BinaryIO,
    member: str,
    stats: ParseStats,
    rejects: Rejects,
    limits: ParseLimits,
) -> Iterator[Event]:
    """Yield the events of a JSON lines stream, one object per line."""
    decoder = msgspec.json.Decoder(JsonRecord)
    limit = limits.max_record_size
    readline = functools.partial(stream.readline, limit + 1)

    number = 0
    skipping = False
    for piece in iter(readline, b""):
        if skipping:
            # The rest of an over-long line, already rejected.
            skipping = not piece.endswith(b"\n")
            continue

        number += 1
        if len(piece) > limit:
            _reject(
                stats,
                rejects,
                member,
                number,
                f"line is longer than {limit:,} bytes",
                piece[:1000],
            )
            skipping = not piece.endswith(b"\n")
            continue
        if number == 1:
            piece = piece.removeprefix(b"\xef\xbb\xbf")
        if not piece.strip():
            continue

        result = _event_or_reason(functools.partial(decoder.decode, piece))
        if isinstance(result, str):
            _reject(stats, rejects, member, number, result, piece)
            continue

        stats.events += 1
        yield result


def iter_json_array(
    stream: BinaryIO,
    member: str,
    stats: ParseStats,
    rejects: Rejects,
    limits: ParseLimits,
) -> Iterator[Event]:
    """Yield the events of a JSON array of objects, one element at a time."""
    text = io.TextIOWrapper(
        stream, encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    elements = _ArrayElements(text, member, limits.max_record_size)

    limit = limits.max_record_size
    for line, raw, value in elements:
        if len(raw) > limit:
            reason = f"the record is longer than {limit:,} characters"
            _reject(stats, rejects, member, line, reason, raw[:1000])
            continue
        if _UNDECODABLE.search(raw):
            reason = "the record contains bytes that are not valid UTF-8"
            _reject(stats, rejects, member, line, reason, raw)
            continue
        if not isinstance(value, dict):
            reason = f"the array element is a {type(value).__name__}, not an object"
            _reject(stats, rejects, member, line, reason, raw)
            continue

        result = _event_or_reason(functools.partial(msgspec.convert, value, JsonRecord))
        if isinstance(result, str):
            _reject(stats, rejects, member, line, result, raw)
            continue

        stats.events += 1
        yield result


def _event_or_reason(decode: Callable[[], JsonRecord]) -> Event | str:
    """Return the event of one decoded record, or the reason to reject it."""
    try:
        return record_event(decode())
    except msgspec.DecodeError as error:
        # ValidationError, a subclass, names the path, such as `$.metadata`.
        return f"invalid JSON record: {error}"
    except ValueError as error:
        return str(error)
    except RecursionError:
        return "invalid JSON record: it is nested too deeply"


def _reject(
    stats: ParseStats,
    rejects: Rejects,
    member: str,
    line: int,
    reason: str,
    raw: bytes | str,
) -> None:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "surrogateescape")
    stats.rejected += 1
    rejects.add(member, line, reason, raw.rstrip("\r\n"))


class _Unrepresentable:
    """A number too large, infinite or NaN, read from a JSON array."""

    def __repr__(self) -> str:
        return "an unrepresentable number"


_UNREPRESENTABLE = _Unrepresentable()

# Python's own limit on the digits of an int read from text.
_MAX_INT_DIGITS = 4300


def _bounded_int(text: str) -> int | _Unrepresentable:
    if len(text) > _MAX_INT_DIGITS:
        return _UNREPRESENTABLE
    return int(text)


def _finite_float(text: str) -> float | _Unrepresentable:
    value = float(text)
    return value if math.isfinite(value) else _UNREPRESENTABLE


def _unrepresentable(text: str) -> _Unrepresentable:
    return _UNREPRESENTABLE


class _ArrayElements:
    """Iterates over ``(line, raw text, value)`` for each element of an array.

    The text is read in blocks, and ``json``'s decoder finds where each
    element ends, so memory holds one block and one element at most.
    """

    def __init__(self, text: io.TextIOWrapper, member: str, limit: int) -> None:
        self._text = text
        self._member = member
        self._limit = limit
        # Numbers JSON cannot represent faithfully become a marker that no
        # record field accepts, so their record is rejected on its own.
        self._decoder = json.JSONDecoder(
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_unrepresentable,
        )
        self._buffer = ""
        self._position = 0
        self._eof = False
        # The line number at _counted_to, which trails _position.
        self._line = 1
        self._counted_to = 0

    def __iter__(self) -> Iterator[tuple[int, str, object]]:
        self._skip_whitespace()
        if self._peek() == _BOM:
            self._position += 1
            self._skip_whitespace()
        self._expect("[")

        self._skip_whitespace()
        if self._peek() == "]":
            self._position += 1
            self._expect_end()
            return

        while True:
            yield self._element()

            self._skip_whitespace()
            separator = self._peek()
            self._position += 1
            if separator == "]":
                self._expect_end()
                return
            if separator != ",":
                self._position -= 1
                self._fail("expected ',' or ']' after an element")
            self._skip_whitespace()

    def _element(self) -> tuple[int, str, object]:
        while True:
            start = self._position
            try:
                value, end = self._decoder.raw_decode(self._buffer, start)
            except json.JSONDecodeError as error:
                if self._eof:
                    self._fail(f"invalid JSON ({error.msg})", error.pos)
                self._fill_element(start)
                continue
            except RecursionError:
                self._fail("an element is nested too deeply to read", start)

            # A number at the end of the block may go on in the next block.
            if end == len(self._buffer) and not self._eof:
                self._fill_element(start)
                continue

            line = self._line_at(start)
            self._position = end
            return line, self._buffer[start:end], value

    def _skip_whitespace(self) -> None:
        while True:
            match = _WHITESPACE.match(self._buffer, self._position)
            assert match is not None
            self._position = match.end()
            if self._position < len(self._buffer) or self._eof:
                return
            self._fill()

    def _peek(self) -> str:
        return self._buffer[self._position : self._position + 1]

    def _expect(self, character: str) -> None:
        if self._peek() != character:
            self._fail(f"expected {character!r}")
        self._position += 1

    def _expect_end(self) -> None:
        self._skip_whitespace()
        if self._position < len(self._buffer):
            self._fail("unexpected data after the closing ']'")

    def _fill_element(self, start: int) -> None:
        """Read more of an element that is not complete in the buffer.

        Each read is as large as the element so far, so an element of n
        characters is decoded O(log n) times, not once per block.
        """
        size = len(self._buffer) - start
        if size > self._limit:
            raise LimitExceeded(
                f"{self._member} has an array element at line "
                f"{self._line_at(start)} longer than {self._limit:,} characters. "
                "Raise PROCESSOR_MAX_FIELD_SIZE if the file is trusted."
            )
        self._fill(max(READ_CHARS, size))

    def _fill(self, size: int = READ_CHARS) -> None:
        block = self._text.read(size)
        if not block:
            self._eof = True
            return

        # Drop the text already read, keeping the line count in step.
        self._line_at(self._position)
        self._buffer = self._buffer[self._position :] + block
        self._counted_to -= self._position
        self._position = 0

    def _line_at(self, position: int) -> int:
        self._line += self._buffer.count("\n", self._counted_to, position)
        self._counted_to = position
        return self._line

    def _fail(self, reason: str, position: int | None = None) -> NoReturn:
        position = self._position if position is None else position
        line = self._line_at(max(position, self._counted_to))
        found = self._buffer[position : position + 40]
        if not found and self._eof:
            raise ParseError(
                f"{self._member} ends at line {line} in the middle of its JSON "
                f"array ({reason}), so it was cut short. Download the export again."
            )
        raise ParseError(
            f"{self._member} is not a valid JSON array at line {line}: {reason}, "
            f"found {found!r}."
        )
