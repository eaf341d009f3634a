"""The rejects file: every row the parser could not turn into an event.

Each rejected row becomes one JSON line with the member it came from, its
line number, the reason and the raw row, so that nothing in an export is
lost silently and a bad row can be fixed and replayed. The file is written
afresh on each pass over an export, so a pass that resumes after a crash
leaves one line per bad row, not two.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO

import msgspec

logger = logging.getLogger(__name__)

# Rejected rows beyond this many per pass are written and counted, but not
# logged one by one.
MAX_LOGGED_REJECTS = 20


class RejectedRow(msgspec.Struct):
    """One line of a rejects file.

    Fields:
        member: the file, or ``file:member`` of a ZIP archive, holding the row.
        line: the line number where the row starts, counting from 1.
        reason: why the row was rejected.
        raw: the row as text. A CSV row is written back as CSV from its
            fields, and bytes that are not UTF-8 appear as ``\\xNN``.
    """

    member: str
    line: int
    reason: str
    raw: str


class Rejects:
    """Counts rejected rows, logs the first few and writes them to ``path``.

    With ``path`` set to ``None`` the rows are only counted and logged. The
    file is created on the first rejected row, so a clean pass leaves none.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.count = 0
        self._file: IO[bytes] | None = None
        self._encoder = msgspec.json.Encoder()

    def add(self, member: str, line: int, reason: str, raw: str) -> None:
        """Record one rejected row."""
        self.count += 1
        if self.count <= MAX_LOGGED_REJECTS:
            logger.warning("Rejected %s line %d: %s", member, line, reason)
        if self.count == MAX_LOGGED_REJECTS:
            logger.warning(
                "Further rejected rows are counted%s but not logged.",
                f" and written to {self.path}" if self.path else "",
            )

        if self.path is None:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("wb")

        row = RejectedRow(member=member, line=line, reason=reason, raw=_printable(raw))
        self._file.write(self._encoder.encode(row) + b"\n")

    def close(self) -> None:
        """Flush and close the file, if one was written."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Rejects:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _printable(text: str) -> str:
    """Return ``text`` with undecodable bytes (lone surrogates) as ``\\xNN``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def read_rejects(path: Path) -> list[RejectedRow]:
    """Return the rows of a rejects file, for tools and tests."""
    decoder = msgspec.json.Decoder(RejectedRow)
    with path.open("rb") as file:
        return [decoder.decode(line) for line in file if line.strip()]
