"""Turn the values of one export row into a typed ``Event``.

CSV and JSON exports name their columns in more than one way: the
dashboard's CSV has ``subscriber__email`` and ``timestamp``, while the API's
event objects have ``subscriber_id`` and ``creation_date``. ``COLUMN_NAMES``
maps every accepted name to an ``Event`` field, and ``build_event`` checks
and converts the values.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from processor.errors import ParseError
from processor.events import EVENT_COLUMNS, Event, MetadataValue
from processor.metadata import parse_metadata

# The values ``build_event`` takes, in its argument order.
FIELDS = (
    "id",
    "token",
    "email_id",
    "subscriber_email",
    "subscriber_id",
    "event_type",
    "timestamp",
    "metadata",
)

# Accepted column names (compared in lower case) and the field each fills.
COLUMN_NAMES = {
    "id": "id",
    "token": "token",
    "email_id": "email_id",
    "subscriber__email": "subscriber_email",
    "subscriber_email": "subscriber_email",
    "subscriber_id": "subscriber_id",
    "event_type": "event_type",
    "timestamp": "timestamp",
    "creation_date": "timestamp",
    "metadata": "metadata",
}

REQUIRED_FIELDS = ("id", "event_type", "timestamp")
SUBSCRIBER_FIELDS = ("subscriber_email", "subscriber_id")

_fromisoformat = datetime.fromisoformat


@dataclasses.dataclass
class ParseStats:
    """Counts kept while a file is parsed."""

    events: int = 0
    rejected: int = 0


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 date and time, such as ``2024-03-13 00:16:58+00:00``.

    ``T`` or a space may separate date and time, the offset may be ``Z``,
    ``+00:00`` or ``+0000``, and fractions of a second are kept to the
    microsecond. A timestamp without an offset is read as UTC. A date
    without a time of day raises ``ValueError``.
    """
    try:
        value = _fromisoformat(text)
    except ValueError:
        value = None

    # fromisoformat also reads a bare date as midnight, which is a guess.
    if value is None or len(text) <= 10:
        raise ValueError(
            f"timestamp {text[:60]!r} is not an ISO 8601 date and time such as "
            "2024-03-13 00:16:58+00:00"
        )

    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if not 1 < value.year < 9999:
        # At the ends of datetime's range the time in UTC may not exist.
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError(
                f"timestamp {text[:60]!r} is out of range once converted to UTC"
            ) from None
    return value


def build_event(
    event_id: str,
    token: str,
    email_id: str,
    subscriber_email: str,
    subscriber_id: str,
    event_type: str,
    timestamp: str,
    metadata: str | dict[str, MetadataValue],
) -> Event:
    """Return the event for one row's values, raising ``ValueError`` with why.

    Empty strings in the optional fields become ``None`` (``token`` stays
    ``""``). ``metadata`` is a cell to parse or an already decoded object.
    """
    if not event_id:
        raise ValueError("id is missing or empty")
    if not event_type:
        raise ValueError("event_type is missing or empty")

    return Event(
        id=event_id,
        token=token,
        email_id=email_id or None,
        subscriber_email=subscriber_email or None,
        subscriber_id=subscriber_id or None,
        event_type=event_type,
        timestamp=parse_timestamp(timestamp),
        metadata=(metadata if isinstance(metadata, dict) else parse_metadata(metadata)),
    )


class Columns:
    """The positions of the event fields in one CSV header.

    ``values(fields)`` returns a row's values in ``FIELDS`` order, with
    ``""`` for a column the header lacks. ``standard`` is true when the
    header is exactly the dashboard's, which the parser reads faster.
    Raises ``ParseError`` when a required column is missing.
    """

    def __init__(self, header: Sequence[str], source: str) -> None:
        names = [name.strip().lstrip("\ufeff").lower() for name in header]
        positions: dict[str, int] = {}
        for index, name in enumerate(names):
            field = COLUMN_NAMES.get(name)
            if field is not None and field not in positions:
                positions[field] = index

        check_fields(positions, source, f"its header is {','.join(header)[:300]!r}")

        self.width = len(names)
        self.standard = tuple(names) == EVENT_COLUMNS
        self.complete = len(positions) == len(FIELDS)
        # A missing column reads the "" that ``values`` appends to the row.
        getter = operator.itemgetter(
            *(positions.get(field, self.width) for field in FIELDS)
        )
        self._getter: Callable[[list[str]], tuple[str, ...]] = getter

    def values(self, fields: list[str]) -> tuple[str, ...]:
        """Return the row's values in ``FIELDS`` order."""
        if not self.complete:
            fields.append("")
        return self._getter(fields)


def check_fields(present: Any, source: str, found: str) -> None:
    """Raise ``ParseError`` unless ``present`` has the required fields."""
    missing = [field for field in REQUIRED_FIELDS if field not in present]
    if not any(field in present for field in SUBSCRIBER_FIELDS):
        missing.append("subscriber__email or subscriber_id")
    if missing:
        raise ParseError(
            f"{source} has no column for {', '.join(missing)}; {found}. An "
            f"events export has the columns {','.join(EVENT_COLUMNS)}."
        )
