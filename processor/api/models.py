"""msgspec structs for the bodies of the Exports API.

The structs accept what Buttondown sends today and what older API versions
and docs samples show: ``completed`` is read as ``ready``, and fields that
old samples leave out have defaults.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

READY = "ready"
ERROR = "error"
NOT_STARTED = "not_started"
IN_PROGRESS = "in_progress"
KNOWN_STATUSES = frozenset({NOT_STARTED, IN_PROGRESS, READY, ERROR})

# Older docs samples show `completed` where the API now sends `ready`.
_STATUS_ALIASES = {"completed": READY}


class Export(msgspec.Struct, kw_only=True):
    """An export as the API returns it.

    ``status`` keeps the value as sent; ``state`` maps it onto the statuses
    the processor acts on.
    """

    id: str
    status: str
    creation_date: datetime | None = None
    collections: list[str] = msgspec.field(default_factory=list)
    parameters: dict[str, Any] | None = None
    format: str = "csv"
    columns: list[str] | None = None
    url: str | None = None
    completion_date: datetime | None = None

    @property
    def state(self) -> str:
        """The status with legacy names mapped (``completed`` is ``ready``)."""
        return _STATUS_ALIASES.get(self.status, self.status)

    @property
    def is_known_status(self) -> bool:
        """Return whether the processor acts on this status (after aliases)."""
        return self.state in KNOWN_STATUSES


class ExportPage(msgspec.Struct, kw_only=True):
    """One page of ``GET /exports``."""

    results: list[Export]
    count: int | None = None
    next: str | None = None
    previous: str | None = None


class ExportRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The body of ``POST /exports``. The API rejects unknown keys."""

    collections: list[str]
    format: str = "csv"
    parameters: dict[str, Any] | None = None
    columns: list[str] | None = None


class ValidationItem(msgspec.Struct, kw_only=True):
    """One entry of a 422 body's ``detail`` list."""

    loc: list[str | int] = msgspec.field(default_factory=list)
    msg: str = ""
    type: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    """An error body: ``detail`` is a string, or a list for a 422."""

    code: str | None = None
    detail: str | list[ValidationItem] | None = None


class Subscriber(msgspec.Struct, kw_only=True):
    """The fields of a subscriber that plugins read; others are ignored."""

    id: str
    email_address: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    type: str | None = None
