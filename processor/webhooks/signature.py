"""HMAC-SHA256 signatures of webhook deliveries.

Buttondown signs each delivery with the webhook's signing key and sends
``X-Buttondown-Signature: sha256=<hex>``, where ``<hex>`` is the HMAC-SHA256
of the raw request body. The header carries no timestamp, so a captured
delivery stays valid. The receiver's deduplication by delivery id keeps a
replay from doing anything twice.
"""

from __future__ import annotations

import hashlib
import hmac
import string

from processor.errors import WebhookRejected

SIGNATURE_HEADER = "X-Buttondown-Signature"
SCHEME = "sha256="
_HEX_DIGITS = frozenset(string.hexdigits)
_HEX_LENGTH = hashlib.sha256().digest_size * 2


def sign(body: bytes | bytearray, key: str) -> str:
    """Return the ``X-Buttondown-Signature`` value for ``body`` under ``key``."""
    digest = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    return f"{SCHEME}{digest}"


def verify(body: bytes | bytearray, header: bytes | None, key: str) -> None:
    """Raise ``WebhookRejected`` (401) unless ``header`` signs ``body``.

    ``header`` contains the raw bytes of the header, as the server received
    them. The digest is compared in constant time.
    """
    if header is None:
        raise WebhookRejected(401, f"missing {SIGNATURE_HEADER} header")

    try:
        text = header.decode("ascii").strip()
    except UnicodeDecodeError:
        raise WebhookRejected(401, "signature header is not ASCII") from None

    digest = text[len(SCHEME) :].lower()
    well_formed = (
        text[: len(SCHEME)].lower() == SCHEME
        and len(digest) == _HEX_LENGTH
        and all(character in _HEX_DIGITS for character in digest)
    )
    if not well_formed:
        raise WebhookRejected(
            401, f"malformed signature; expected {SCHEME}<64 hex digits>"
        )

    expected = sign(body, key)[len(SCHEME) :]
    if not hmac.compare_digest(digest.encode(), expected.encode()):
        raise WebhookRejected(401, "signature does not match the body")
