"""An example plugin: counts bounces and complaints per subscriber."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from processor.events import Event
from processor.plugins import Handler, RunInfo

logger = logging.getLogger(__name__)


class ExampleHandler(Handler):
    """Counts bounced and complained events per subscriber address."""

    name = "example"
    event_types = frozenset({"bounced", "complained"})

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.threshold = 3

    def setup(self, run: RunInfo) -> None:
        # PROCESSOR_PLUGIN_EXAMPLE_THRESHOLD=5, or threshold = 5 in the
        # [plugins.example] table of the PROCESSOR_PLUGIN_CONFIG file.
        self.threshold = int(run.config.get("threshold", 3))
        self.counts = Counter(run.resume or {})

    def handle(self, event: Event) -> None:
        address = event.subscriber_email or event.subscriber_id or "unknown"
        self.counts[address] += 1
        if self.counts[address] == self.threshold:
            logger.warning(
                "%s reached %d bounces or complaints.", address, self.threshold
            )

    def checkpoint(self) -> Any:
        return dict(self.counts)
