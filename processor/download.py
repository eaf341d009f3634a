"""Streaming download of a ready export's file.

The file lives on a storage host (S3 in production) behind a presigned URL.
The request carries no ``Authorization`` header and no API key, because the
URL carries its own signature and presigned requests reject a second
credential. The URL's query string is that credential, so it never appears
in a log line or an error message.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import tempfile
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx

from processor.errors import DownloadError

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 16
MAX_REDIRECTS = 5


def redact_url(url: str) -> str:
    """Return ``url`` with its query string and credentials removed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    suffix = "?..." if parts.query else ""
    return f"{parts.scheme}://{host}{parts.path}{suffix}"


def check_download_url(url: str) -> None:
    """Raise ``DownloadError`` unless ``url`` is https, or http on loopback."""
    parts = urlsplit(url)
    host = parts.hostname or ""

    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and _is_loopback(host):
        return

    raise DownloadError(
        f"export URL {redact_url(url)} is not downloadable: only https URLs "
        "(and http on a loopback address) are fetched. Buttondown hands out "
        "https URLs for ready exports; if this export shows another kind, "
        "request a new export."
    )


def download(url: str, directory: Path, *, timeout: float = 30.0) -> Path:
    """Stream ``url`` into a new file in ``directory`` and return its path.

    The file is complete when this returns: a body shorter than its
    ``Content-Length`` raises ``DownloadError`` and the partial file is
    removed.
    """
    check_download_url(url)
    directory.mkdir(parents=True, exist_ok=True)
    safe_url = redact_url(url)

    handle, name = tempfile.mkstemp(prefix="export-", suffix=".part", dir=directory)
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            size = _stream_to(url, file, safe_url, timeout)
    except BaseException:
        path.unlink(missing_ok=True)
        raise

    final = path.with_suffix(".download")
    path.replace(final)
    logger.info("Downloaded %d bytes from %s", size, safe_url)
    return final


def _stream_to(url: str, file: IO[bytes], safe_url: str, timeout: float) -> int:
    # httpx.URL keeps the percent-escapes of a presigned URL as given.
    with httpx.Client(
        timeout=httpx.Timeout(timeout),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
    ) as client:
        try:
            with client.stream("GET", httpx.URL(url)) as response:
                if not response.is_success:
                    raise DownloadError(
                        f"GET {safe_url} returned {response.status_code}; the export "
                        "URL may have expired."
                    )

                expected = _content_length(response)
                size = 0
                # iter_bytes undoes a Content-Encoding such as gzip, so the
                # file on disk is the export itself.
                for chunk in response.iter_bytes(CHUNK_SIZE):
                    file.write(chunk)
                    size += len(chunk)
                received = response.num_bytes_downloaded
        except httpx.HTTPError as error:
            raise DownloadError(
                f"GET {safe_url} failed: {type(error).__name__}."
            ) from None

    if expected is not None and received != expected:
        raise DownloadError(
            f"GET {safe_url} ended after {received} of {expected} bytes; the "
            "download is incomplete."
        )
    return size


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
