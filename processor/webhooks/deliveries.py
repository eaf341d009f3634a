"""Webhook deliveries: the body Buttondown POSTs, decoded and checked.

A delivery is ``{"id": "ext_evt_...", "event_type": "...", "data": {...}}``.
``data`` varies by event type and is not documented field by field, so the
helpers here accept each name seen for the same value (``export_id``, an
``export`` string or object, or ``id``) and return None when none is there.
"""

from __future__ import annotations

from typing import Any

import msgspec

from processor.errors import WebhookRejected

EMAIL_SENT = "email.sent"
EXPORT_COMPLETED = "export.completed"
EXPORT_FAILED = "export.failed"
ROUTED_TYPES = frozenset({EMAIL_SENT, EXPORT_COMPLETED, EXPORT_FAILED})

# Ids end up in Redis keys and log lines, so they are short printable ASCII.
MAX_ID_LENGTH = 200
MAX_REASON_LENGTH = 500


class DeliveryData(msgspec.Struct, frozen=True):
    """The fields of a delivery's ``data`` that the processor reads.

    Every other field is skipped while decoding, so a large ``data`` object
    costs no memory beyond the body itself.
    """

    id: Any = None
    export_id: Any = None
    export: Any = None
    email_id: Any = None
    email: Any = None
    newsletter_id: Any = None
    newsletter: Any = None
    error: Any = None
    reason: Any = None
    detail: Any = None
    message: Any = None


class Delivery(msgspec.Struct, frozen=True):
    """One webhook delivery as Buttondown sends it."""

    id: str
    event_type: str
    data: DeliveryData


_decoder = msgspec.json.Decoder(Delivery)


def parse_delivery(body: bytes | bytearray) -> Delivery:
    """Decode and check a delivery; raise ``WebhookRejected`` when it is invalid."""
    try:
        delivery = _decoder.decode(body)
    except msgspec.ValidationError as error:
        raise WebhookRejected(422, f"invalid delivery: {error}") from None
    except msgspec.DecodeError:
        raise WebhookRejected(400, "body is not valid JSON") from None
    except RecursionError:
        raise WebhookRejected(400, "body is nested too deeply") from None

    for field, value in (("id", delivery.id), ("event_type", delivery.event_type)):
        if not is_plain_id(value):
            raise WebhookRejected(
                422,
                f"invalid delivery: `{field}` must be 1 to {MAX_ID_LENGTH} "
                "printable ASCII characters without spaces",
            )
    return delivery


def is_plain_id(value: object) -> bool:
    """Return whether ``value`` is a short printable ASCII string without spaces."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and all("!" <= character <= "~" for character in value)
    )


def export_id(data: DeliveryData) -> str | None:
    """Return the export id of an ``export.*`` delivery's data, or None."""
    return _object_id(data.export_id, data.export, data.id)


def email_id(data: DeliveryData) -> str | None:
    """Return the email id of an ``email.*`` delivery's data, or None."""
    return _object_id(data.email_id, data.email, data.id)


def newsletter_id(data: DeliveryData) -> str | None:
    """Return the newsletter id that multi-newsletter accounts add, or None."""
    return _object_id(data.newsletter_id, data.newsletter, None)


def failure_reason(data: DeliveryData) -> str | None:
    """Return the reason an ``export.failed`` delivery gives, cut to 500 characters."""
    for value in (data.error, data.reason, data.detail, data.message):
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())[:MAX_REASON_LENGTH]
    return None


def _object_id(named_id: Any, named: Any, fallback: Any) -> str | None:
    """Return the first id among ``named_id``, ``named`` or its ``id``, and
    ``fallback``, that is a plain id."""
    value = named_id if named_id is not None else named
    if isinstance(value, dict):
        value = value.get("id")
    if value is None:
        value = fallback
    return value if is_plain_id(value) else None
