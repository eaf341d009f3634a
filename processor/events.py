"""Typed email event records, as parsed from an events export."""

from __future__ import annotations

from datetime import datetime

import msgspec

# Event types Buttondown emits today. Others (older data has `sent`,
# `attempted`, `deferred` and more) pass through as their string.
KNOWN_EVENT_TYPES = frozenset(
    {
        "bounced",
        "clicked",
        "complained",
        "delivered",
        "opened",
        "rejected",
        "replied",
        "unsubscribed",
    }
)

# Columns of an events export, in the order Buttondown's dashboard writes them.
EVENT_COLUMNS = (
    "id",
    "token",
    "email_id",
    "subscriber__email",
    "event_type",
    "timestamp",
    "metadata",
)

MetadataValue = str | int | float | bool | None


# gc=False leaves events out of the cyclic garbage collector, which a run's
# millions of them would otherwise keep busy. An event refers to no object
# that could refer back to it, so it can be in no reference cycle.
class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One email event: a delivery, open, click, bounce and so on.

    Fields:
        id: Buttondown's event id, such as ``ext_evt_...``; unique per event.
        token: the export's ``token`` column, kept as given, or ``""`` when
            the export has none.
        email_id: the email (newsletter issue) the event belongs to, or
            ``None`` when the export left it empty.
        subscriber_email: the subscriber's address (``subscriber__email``),
            or ``None`` when the export has only subscriber ids.
        event_type: ``delivered``, ``opened``, ``clicked`` and so on; types
            outside ``KNOWN_EVENT_TYPES`` are kept as given.
        timestamp: when the event happened, always timezone-aware; a value
            without an offset is read as UTC.
        metadata: the event's details, such as ``client_name`` or ``url``.
        subscriber_id: the subscriber's id, present in exports shaped like
            the API's event objects and ``None`` in the dashboard's CSV.

    Every id is a string as written in the export, never a number.
    """

    id: str
    token: str
    email_id: str | None
    subscriber_email: str | None
    event_type: str
    timestamp: datetime
    # NOTE: every plugin receives the same dict. One that changes it in place
    # changes it for the others; msgspec cannot encode a read-only mapping.
    metadata: dict[str, MetadataValue]
    subscriber_id: str | None = None
