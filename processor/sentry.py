"""Error reporting to Sentry, on when ``SENTRY_DSN`` is set.

Events and breadcrumbs pass through ``scrub`` before they leave the process:
it replaces the API key and the credentials of presigned download URLs with
``[Filtered]`` wherever they occur.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.dramatiq import DramatiqIntegration

from processor import __version__
from processor.config import Settings
from processor.redact import scrub_credentials


def init_sentry(settings: Settings) -> bool:
    """Start sentry-sdk when ``SENTRY_DSN`` is set; return whether it did."""
    if not settings.sentry_dsn:
        return False

    known = (settings.api_key, settings.webhook_signing_key)
    secrets = secret_forms(value for value in known if value)

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


def secret_forms(secrets: Iterable[str]) -> tuple[str, ...]:
    """Return each secret as written and as ``repr`` and JSON escape it.

    Sentry sends local variables as their ``repr``, so a key with a
    backslash or a quote appears escaped and must be filtered in that form.
    """
    forms: list[str] = []
    for secret in secrets:
        for form in (secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]):
            if form not in forms:
                forms.append(form)
    # The longest form first, so a shorter one never splits a longer match.
    return tuple(sorted(forms, key=len, reverse=True))


def scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    """Return ``value`` with every secret and presigned credential replaced."""
    if isinstance(value, str):
        return scrub_credentials(value, secrets)
    if isinstance(value, dict):
        return {key: scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub(item, secrets) for item in value)
    return value
