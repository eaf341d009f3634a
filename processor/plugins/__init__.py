"""Plugin handlers: the API (``api``), the loader and the dispatcher.

The names below are the handler API, version ``API_VERSION``; the guide for
plugin authors, docs/plugins.md, documents each of them.
"""

from processor.plugins.api import (
    API_VERSION,
    Checkpoint,
    Handler,
    PluginCounts,
    RetryLater,
    RunInfo,
)
from processor.plugins.deadletters import DeadLetter
from processor.plugins.dispatch import Dispatcher, RetryPolicy
from processor.plugins.loader import (
    ENTRY_POINT_GROUP,
    Plugin,
    PluginSelection,
    load_plugins,
)

__all__ = [
    "API_VERSION",
    "ENTRY_POINT_GROUP",
    "Checkpoint",
    "DeadLetter",
    "Dispatcher",
    "Handler",
    "Plugin",
    "PluginCounts",
    "PluginSelection",
    "RetryLater",
    "RetryPolicy",
    "RunInfo",
    "load_plugins",
]
