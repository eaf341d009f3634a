"""Error reporting to Sentry, on when ``SENTRY_DSN`` is set.

Events and breadcrumbs pass through ``scrub`` before they leave the process:
it replaces the API key and the credentials of presigned download URLs with
``[Filtered]`` wherever they occur.
"""

from __future__ import annotations

import re
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.dramatiq import DramatiqIntegration

from processor import __version__
from processor.config import Settings

FILTERED = "[Filtered]"

# Query parameters of S3 presigned URLs, which grant access to the file.
_PRESIGNED = re.compile(r"(X-Amz-[A-Za-z-]+|Signature|AWSAccessKeyId)=[^&\s'\"]+")
_TOKEN_HEADER = re.compile(r"Token\s+[A-Za-z0-9._~+/=-]+")


def init_sentry(settings: Settings) -> bool:
    """Start sentry-sdk when ``SENTRY_DSN`` is set; return whether it did."""
    if not settings.sentry_dsn:
        return False

    secrets = [value for value in (settings.api_key,) if value]

    def before_send(event: Any, hint: Any) -> Any:
        return scrub(event, secrets)

    def before_breadcrumb(crumb: Any, hint: Any) -> Any:
        return scrub(crumb, secrets)

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        release=f"buttondown-processor@{__version__}",
        integrations=[DramatiqIntegration()],
        send_default_pii=False,
        before_send=before_send,
        before_breadcrumb=before_breadcrumb,
    )
    return True


def scrub(value: Any, secrets: list[str]) -> Any:
    """Return ``value`` with every secret and presigned credential replaced."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, FILTERED)
        value = _TOKEN_HEADER.sub(f"Token {FILTERED}", value)
        return _PRESIGNED.sub(lambda match: f"{match.group(1)}={FILTERED}", value)
    if isinstance(value, dict):
        return {key: scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub(item, secrets) for item in value)
    return value
