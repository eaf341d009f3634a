"""Streaming download of a ready export's file.

The file lives on a storage host (S3 in production) behind a presigned URL.
The request carries no ``Authorization`` header and no API key, because the
URL carries its own signature and presigned requests reject a second
credential. The URL is requested exactly as given, its percent-escapes
untouched, because the signature covers them. Its query string is a
credential too, so it never appears in a log line or an error message.

A download either returns the path of a complete file or raises a branch of
``DownloadError`` and leaves nothing behind, so a partial file is never
parsed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx

from processor.errors import (
    DownloadExpired,
    DownloadRejected,
    IncompleteDownload,
)
from processor.redact import install_log_redaction, redact_url, scrub_credentials

logger = logging.getLogger(__name__)


install_log_redaction()

MAX_REDIRECTS = 5


@dataclasses.dataclass(frozen=True)
class DownloadLimits:
    """Bounds on one download: per-operation timeouts, total time and size."""

    timeouts: httpx.Timeout = dataclasses.field(
        default_factory=lambda: httpx.Timeout(30.0)
    )
    deadline: float = 3600.0
    max_bytes: int = 10 * 1024**3


def check_download_url(url: str | httpx.URL) -> None:
    """Raise ``DownloadRejected`` unless ``url`` is https, or http on loopback."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""

    if parts.username is not None or parts.password is not None:
        # httpx would turn them into an Authorization header, which presigned
        # storage rejects and which must never carry a credential there.
        raise DownloadRejected(
            f"export URL {redact_url(url)} contains a user name or password; "
            "request a new export to get a presigned URL."
        )
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and _is_loopback(host):
        return

    raise DownloadRejected(
        f"export URL {redact_url(url)} is not downloadable: only https URLs "
        "(and http on a loopback address) are fetched. Buttondown hands out "
        "https URLs for ready exports; if this export shows another kind, "
        "request a new export."
    )


def download(
    url: str,
    directory: Path,
    limits: DownloadLimits | None = None,
    prefix: str = "export-",
) -> Path:
    """Stream ``url`` into a new file in ``directory`` and return its path."""
    limits = limits or DownloadLimits()
    check_download_url(url)
    directory.mkdir(parents=True, exist_ok=True)
    safe_url = redact_url(url)

    handle, name = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=directory)
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            size = _stream_to(url, file, safe_url, limits)
    except BaseException:
        path.unlink(missing_ok=True)
        raise

    final = path.with_suffix(".download")
    path.replace(final)
    logger.info("Downloaded %d bytes from %s", size, safe_url)
    return final


def _stream_to(url: str, file: IO[bytes], safe_url: str, limits: DownloadLimits) -> int:
    started = time.monotonic()

    # Every request of the redirect chain is checked, so a redirect cannot
    # lead to plain http on a public host or to another scheme.
    # NOTE: the deadline is checked between body reads only. A server that
    # trickles its headers is bounded by the read timeout per byte, and httpx
    # reads a redirect's body whole, outside the size limit.
    with httpx.Client(
        timeout=limits.timeouts,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        event_hooks={"request": [lambda request: check_download_url(request.url)]},
    ) as client:
        try:
            with client.stream("GET", httpx.URL(url)) as response:
                _check_response(response, safe_url, limits)
                size = 0
                # The chunks are the file itself, with any Content-Encoding
                # undone. Each read is handled as it arrives, so the deadline
                # is checked even while a server trickles bytes.
                for chunk in _decoded_chunks(response, safe_url):
                    file.write(chunk)
                    size += len(chunk)
                    _check_progress(size, started, safe_url, limits)
                received = response.num_bytes_downloaded
                expected = _content_length(response)
        except httpx.TooManyRedirects:
            raise DownloadRejected(
                f"GET {safe_url} redirected more than {MAX_REDIRECTS} times."
            ) from None
        except httpx.TimeoutException as error:
            raise IncompleteDownload(
                f"GET {safe_url} timed out ({type(error).__name__})."
            ) from None
        except httpx.HTTPError as error:
            reason = scrub_credentials(str(error))
            raise IncompleteDownload(
                f"GET {safe_url} failed: {type(error).__name__}: {reason}.",
                url=safe_url,
            ) from None

    if expected is not None and received != expected:
        raise IncompleteDownload(
            f"GET {safe_url} ended after {received} of {expected} bytes; the "
            "download is incomplete."
        )
    return size


def _decoded_chunks(response: httpx.Response, safe_url: str) -> Iterator[bytes]:
    if response.headers.get("Content-Encoding", "").strip().lower() != "gzip":
        yield from response.iter_bytes()
        return

    # httpx's own gzip decoder accepts a stream that stops early, so a body
    # cut short without a Content-Length would pass as whole. Decoding here
    # checks that the gzip stream reached its end.
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        for raw in response.iter_raw():
            yield decoder.decompress(raw)
        yield decoder.flush()
    except zlib.error as error:
        raise IncompleteDownload(
            f"GET {safe_url} sent a damaged gzip body ({error})."
        ) from None
    if not decoder.eof:
        raise IncompleteDownload(
            f"GET {safe_url} ended inside its gzip stream; the download is incomplete."
        )


def _check_response(
    response: httpx.Response, safe_url: str, limits: DownloadLimits
) -> None:
    status = response.status_code
    if status in (403, 404, 410):
        raise DownloadExpired(
            f"GET {safe_url} returned {status}; the download URL has expired "
            "or was revoked.",
            url=safe_url,
            status=status,
        )
    if status in (408, 429) or status >= 500:
        raise IncompleteDownload(
            f"GET {safe_url} returned {status}.", url=safe_url, status=status
        )
    if not response.is_success:
        raise DownloadRejected(
            f"GET {safe_url} returned {status}.", url=safe_url, status=status
        )

    expected = _content_length(response)
    if expected is not None and expected > limits.max_bytes:
        raise DownloadRejected(
            f"GET {safe_url} is {expected} bytes, over the limit of "
            f"{limits.max_bytes}; raise PROCESSOR_MAX_DOWNLOAD_BYTES to accept it."
        )


def _check_progress(
    size: int, started: float, safe_url: str, limits: DownloadLimits
) -> None:
    if size > limits.max_bytes:
        raise DownloadRejected(
            f"GET {safe_url} passed the limit of {limits.max_bytes} bytes; raise "
            "PROCESSOR_MAX_DOWNLOAD_BYTES to accept it."
        )

    elapsed = time.monotonic() - started
    if elapsed > limits.deadline:
        raise IncompleteDownload(
            f"GET {safe_url} did not finish within {limits.deadline:g} seconds "
            f"({size} bytes received); raise PROCESSOR_DOWNLOAD_DEADLINE for "
            "slow storage."
        )


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
