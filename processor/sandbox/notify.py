"""Signed webhook deliveries from the sandbox, as Buttondown sends them.

When an export of a sandbox with a webhook URL finishes, ``WebhookNotifier``
POSTs ``export.completed`` (or ``export.failed``) to that URL, signed with
the signing key in ``X-Buttondown-Signature``. Like Buttondown, it tries
again after a failure, up to 5 retries, but 1 second apart instead of 5
minutes. The URL must point at a loopback address.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from processor.sandbox.generate import encode_typeid, uuid7_int
from processor.sandbox.store import Export
from processor.webhooks.signature import SIGNATURE_HEADER, sign

logger = logging.getLogger(__name__)

RETRIES = 5
RETRY_DELAY = 1.0


class WebhookNotifier:
    """Sends signed deliveries about sandbox exports to one loopback URL."""

    def __init__(self, url: str, key: str, retry_delay: float = RETRY_DELAY) -> None:
        check_loopback_url(url)
        self.url = url
        self.key = key
        self.retry_delay = retry_delay

    def export_finished(self, export: Export) -> None:
        """Send ``export.completed``, or ``export.failed`` for a failed export."""
        data: dict[str, Any] = {"export_id": export.id, "status": export.status}
        if export.status == "ready":
            self.send("export.completed", data)
        else:
            data["error"] = "The sandbox could not write the export file."
            self.send("export.failed", data)

    def send(self, event_type: str, data: dict[str, Any]) -> bool:
        """POST one signed delivery; return whether a 2xx came back."""
        delivery_id = encode_typeid(
            "ext_evt", uuid7_int(int(time.time() * 1000), secrets.randbits(74))
        )
        body = msgspec.json.encode(
            {"id": delivery_id, "event_type": event_type, "data": data}
        )
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, self.key),
        }

        for attempt in range(RETRIES + 1):
            if attempt:
                time.sleep(self.retry_delay)
            try:
                response = httpx.post(
                    self.url, content=body, headers=headers, timeout=10
                )
            except httpx.HTTPError as error:
                outcome = f"failed ({error})"
            else:
                if response.is_success:
                    logger.info(
                        "Sandbox sent webhook %s (%s): %d.",
                        delivery_id,
                        event_type,
                        response.status_code,
                    )
                    return True
                outcome = f"got {response.status_code}"
            logger.warning(
                "Sandbox webhook %s (%s) %s; attempt %d of %d.",
                delivery_id,
                event_type,
                outcome,
                attempt + 1,
                RETRIES + 1,
            )
        return False


def check_loopback_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an http URL on a loopback address."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "http" or not loopback:
        raise ValueError(
            f"webhook URL {url!r} is not an http URL on a loopback address; the "
            "sandbox sends webhooks only to this machine, such as "
            "http://127.0.0.1:8000/webhooks/buttondown"
        )
