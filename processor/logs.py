"""Logging set-up for the command line and the workers."""

from __future__ import annotations

import logging
import os

from processor.errors import ConfigurationError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def configure_logging(level: str | None = None) -> None:
    """Send log records to stderr at ``level`` (``PROCESSOR_LOG_LEVEL``, INFO)."""
    name = (level or os.environ.get("PROCESSOR_LOG_LEVEL") or "INFO").strip().upper()
    if name not in LEVELS:
        raise ConfigurationError(
            f"The log level {name!r} is not one of {', '.join(LEVELS)}; set "
            "PROCESSOR_LOG_LEVEL or --log-level to one of them."
        )
    logging.basicConfig(level=getattr(logging, name), format=LOG_FORMAT)

    # httpx logs every request at INFO; the processor's own lines carry more detail.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
