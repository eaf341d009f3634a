"""Presigned download URLs of the sandbox, in the manner of S3's query signing.

A URL looks like an S3 SigV4 presigned URL::

    /downloads/<id>/export.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256
        &X-Amz-Credential=SANDBOX%2F20240101%2Fus-east-1%2Fs3%2Faws4_request
        &X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host
        &x-sandbox-nonce=1&X-Amz-Signature=<hex>

The signature is an HMAC-SHA256 of the path and of the raw query without the
``X-Amz-Signature`` item, byte for byte as sent. A client that decodes and
re-encodes the URL, for example turning ``%2F`` into ``/``, or reorders its
parameters, fails the check. ``x-sandbox-nonce`` counts signings, so that two
URLs for the same export always differ.

Unlike S3, the sandbox does not check ``X-Amz-Date`` and ``X-Amz-Expires``.
A URL expires only through the ``expire`` fault.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EXPIRES_SECONDS = 3600
REGION = "us-east-1"
SIGNATURE_PARAMETER = "X-Amz-Signature"


class UrlSigner:
    """Signs and checks the download URLs of one sandbox server.

    ``base_url`` is the server's root URL, such as ``http://127.0.0.1:8000``.
    """

    def __init__(self, key: bytes, base_url: str) -> None:
        self.base_url = base_url
        self._key = key
        self._lock = threading.Lock()
        self._signings = 0

    def sign(self, export_id: str) -> str:
        """Return a new presigned URL of the export's ZIP file."""
        with self._lock:
            self._signings += 1
            nonce = self._signings

        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        credential = quote(f"SANDBOX/{stamp[:8]}/{REGION}/s3/aws4_request", safe="")
        query = (
            f"X-Amz-Algorithm={ALGORITHM}&X-Amz-Credential={credential}"
            f"&X-Amz-Date={stamp}&X-Amz-Expires={EXPIRES_SECONDS}"
            f"&X-Amz-SignedHeaders=host&x-sandbox-nonce={nonce}"
        )

        path = download_path(export_id)
        signature = self._signature(path, query)
        return f"{self.base_url}{path}?{query}&{SIGNATURE_PARAMETER}={signature}"

    def verify(self, export_id: str, query: str) -> bool:
        """Check the signature in a raw query string against the export's path."""
        signature = query_signature(query)
        unsigned = "&".join(
            item
            for item in query.split("&")
            if _parameter_name(item) != SIGNATURE_PARAMETER
        )
        expected = self._signature(download_path(export_id), unsigned)
        return hmac.compare_digest(signature.encode(), expected.encode())

    def _signature(self, path: str, query: str) -> str:
        message = f"{path}?{query}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


def download_path(export_id: str) -> str:
    """Return the signed path of the export's ZIP file."""
    return f"/downloads/{export_id}/export.zip"


def query_signature(query: str) -> str:
    """Return the last ``X-Amz-Signature`` value of a raw query, or ``""``."""
    signature = ""
    for item in query.split("&"):
        if _parameter_name(item) == SIGNATURE_PARAMETER:
            signature = item.partition("=")[2]
    return signature


def _parameter_name(item: str) -> str:
    return item.partition("=")[0]
