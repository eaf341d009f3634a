"""Building a dispatcher from the settings: selection, configuration, dead letters.

Each plugin's configuration is a dict of keys and values. It comes from the
``[plugins.NAME]`` table of the TOML file named by ``PROCESSOR_PLUGIN_CONFIG``,
overridden by ``PROCESSOR_PLUGIN_<NAME>_<KEY>`` variables, where ``NAME`` is
the plugin's name in upper case with ``-`` and ``.`` as ``_``, and ``KEY`` is
the key in lower case. Values from variables are strings.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from processor.config import Settings
from processor.errors import ConfigurationError
from processor.plugins.api import Checkpoint, PluginCounts
from processor.plugins.deadletters import (
    DeadLetterStore,
    FileDeadLetters,
    RedisDeadLetters,
)
from processor.plugins.dispatch import Dispatcher, RetryPolicy
from processor.plugins.loader import FAILED, Plugin, PluginSelection, load_plugins

VARIABLE_PREFIX = "PROCESSOR_PLUGIN_"


def selection(settings: Settings) -> PluginSelection:
    """Return the allow and deny lists of ``settings``."""
    return PluginSelection(
        enabled=settings.plugins_enabled, disabled=settings.plugins_disabled
    )


def plugin_configs(
    settings: Settings,
    names: Iterable[str],
    environ: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Return the configuration of each plugin in ``names``."""
    env = os.environ if environ is None else environ
    tables = _file_tables(settings)

    configs: dict[str, dict[str, Any]] = {}
    for name in names:
        config = dict(tables.get(name, {}))
        prefix = (
            VARIABLE_PREFIX + name.upper().replace("-", "_").replace(".", "_") + "_"
        )
        for variable, value in env.items():
            if variable.startswith(prefix) and len(variable) > len(prefix):
                config[variable[len(prefix) :].lower()] = value
        configs[name] = config
    return configs


def _file_tables(settings: Settings) -> dict[str, dict[str, Any]]:
    path = settings.plugin_config_file
    if path is None:
        return {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigurationError(
            f"PROCESSOR_PLUGIN_CONFIG file {path} could not be read: {error}. "
            "Fix the file, or unset PROCESSOR_PLUGIN_CONFIG."
        ) from None

    tables = document.get("plugins", {})
    if not isinstance(tables, dict) or not all(
        isinstance(table, dict) for table in tables.values()
    ):
        raise ConfigurationError(
            f"PROCESSOR_PLUGIN_CONFIG file {path} must contain one [plugins.NAME] "
            "table per plugin."
        )
    return tables


def dead_letter_store(settings: Settings) -> DeadLetterStore:
    """Return the dead-letter store ``settings`` select: Redis, or local files."""
    if settings.redis_url is None:
        return FileDeadLetters(settings.state_dir / "dead-letters")
    return RedisDeadLetters(redis.Redis.from_url(settings.redis_url))


def build_dispatcher(
    settings: Settings,
    resume: dict[str, Checkpoint] | None = None,
    plugins: list[Plugin] | None = None,
) -> Dispatcher:
    """Load the selected plugins and return a dispatcher for one run."""
    if plugins is None:
        plugins = load_plugins(selection=selection(settings))
    loaded = [plugin for plugin in plugins if plugin.handler is not None]
    dispatcher = Dispatcher(
        loaded,
        resume=resume,
        configs=plugin_configs(settings, (plugin.name for plugin in loaded)),
        dead_letters=dead_letter_store(settings),
        retry=RetryPolicy(attempts=settings.plugin_attempts),
        stall_after=settings.plugin_stall_after,
    )
    # A plugin that failed to load shows in the run's summary with its error.
    for plugin in plugins:
        if plugin.status == FAILED and plugin.name not in dispatcher.counts:
            dispatcher.counts[plugin.name] = PluginCounts(
                error=f"failed to load: {plugin.error}"
            )
    return dispatcher
