"""Keeping credentials out of log lines and error reports.

A presigned download URL carries its credential in the query string, and
the HTTP libraries log URLs and response headers (a redirect's
``Location``) at INFO and DEBUG. ``install_log_redaction`` puts a filter on
those libraries' loggers that replaces the credential parameters with
``[Filtered]`` before any handler receives the record.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

FILTERED = "[Filtered]"

# Query parameters of presigned URLs that grant access to the file: S3 (both
# signature versions), Google Cloud Storage, Azure SAS and CloudFront.
_PRESIGNED = re.compile(
    r"(?<![\w-])(X-Amz-[A-Za-z-]+|X-Goog-[A-Za-z-]+|Signature|AWSAccessKeyId|GoogleAccessId"
    r"|sig|Policy|Key-Pair-Id)"
    r"=[^&\s'\"\\]+",
    re.IGNORECASE,
)
_TOKEN_HEADER = re.compile(r"Token\s+[A-Za-z0-9._~+/=-]+")

# httpcore logs from child loggers, and a logger's filters do not apply to
# records of its children, so each one is named.
_HTTP_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
)


def redact_url(url: object) -> str:
    """Return ``url`` with its query string and user info removed."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    suffix = "?..." if parts.query else ""
    return f"{parts.scheme}://{host}{parts.path}{suffix}"


def scrub_credentials(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Return ``text`` with presigned credentials, tokens and ``secrets`` filtered."""
    for secret in secrets:
        text = text.replace(secret, FILTERED)
    text = _TOKEN_HEADER.sub(f"Token {FILTERED}", text)
    return _PRESIGNED.sub(lambda match: f"{match.group(1)}={FILTERED}", text)


class CredentialFilter(logging.Filter):
    """Rewrites a log record's message with its credentials filtered."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = scrub_credentials(message)
        if scrubbed != message:
            record.msg = scrubbed
            record.args = None
        return True


_installed = False


def install_log_redaction() -> None:
    """Put a ``CredentialFilter`` on the HTTP libraries' loggers, once."""
    global _installed
    if _installed:
        return

    credential_filter = CredentialFilter()
    for name in _HTTP_LOGGERS:
        logging.getLogger(name).addFilter(credential_filter)
    _installed = True
