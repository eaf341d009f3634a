"""The sandbox's subscribers: enough of ``/v1/subscribers/{id_or_email}``
for a plugin to read and tag the subscriber behind an event.

Any well-formed email address names a subscriber, created on first use
with no tags, because the sandbox's generated events name invented readers.
An id names a subscriber only once one exists.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime
from typing import Any

import msgspec

from processor.sandbox.validation import ApiResponse


class SubscriberStore:
    """Subscribers by email address and by id; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_email: dict[str, dict[str, Any]] = {}
        self._by_id: dict[str, dict[str, Any]] = {}

    def find(self, key: str) -> dict[str, Any] | None:
        """Return a copy of the subscriber with id or email ``key``.

        An unknown email address creates the subscriber.
        """
        with self._lock:
            subscriber = self._by_id.get(key) or self._by_email.get(key.lower())
            if subscriber is None and _is_email(key):
                subscriber = self._create(key.lower())
            return None if subscriber is None else _copy(subscriber)

    def update(self, key: str, tags: list[str]) -> dict[str, Any] | None:
        """Replace the subscriber's tags; return it, or None when unknown."""
        with self._lock:
            subscriber = self._by_id.get(key) or self._by_email.get(key.lower())
            if subscriber is None and _is_email(key):
                subscriber = self._create(key.lower())
            if subscriber is None:
                return None
            subscriber["tags"] = list(dict.fromkeys(tags))
            return _copy(subscriber)

    def _create(self, email: str) -> dict[str, Any]:
        digest = hashlib.sha256(email.encode()).hexdigest()[:26]
        subscriber: dict[str, Any] = {
            "id": f"sub_{digest}",
            "email_address": email,
            "tags": [],
            "type": "regular",
            "creation_date": datetime(2024, 3, 1, tzinfo=UTC).isoformat(),
        }
        self._by_email[email] = subscriber
        self._by_id[subscriber["id"]] = subscriber
        return subscriber


def _is_email(key: str) -> bool:
    name, at, domain = key.partition("@")
    return bool(name and at and "." in domain)


def _copy(subscriber: dict[str, Any]) -> dict[str, Any]:
    return {**subscriber, "tags": list(subscriber["tags"])}


class _Patch(msgspec.Struct):
    tags: list[str] | None = None


def handle_subscriber(
    store: SubscriberStore, method: str, key: str, body: bytes
) -> ApiResponse:
    """Return the response to a GET or PATCH of one subscriber."""
    if method == "GET":
        subscriber = store.find(key)
    elif method == "PATCH":
        try:
            patch = msgspec.json.decode(body or b"{}", type=_Patch)
        except msgspec.ValidationError as error:
            detail = [{"type": "invalid", "loc": ["body"], "msg": str(error)}]
            return ApiResponse(422, {"detail": detail})
        except msgspec.DecodeError:
            return ApiResponse(400, {"detail": "The body is not valid JSON."})
        if patch.tags is None:
            subscriber = store.find(key)
        else:
            subscriber = store.update(key, patch.tags)
    else:
        return ApiResponse(
            405, {"detail": f'Method "{method}" not allowed.'}, {"Allow": "GET, PATCH"}
        )

    if subscriber is None:
        return ApiResponse(404, {"detail": "Not found."})
    return ApiResponse(200, subscriber)
