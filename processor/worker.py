"""Entry module for ``dramatiq processor.worker``: a worker on Redis.

Importing it reads the settings from the environment, connects the Redis
broker and declares the pipeline's actors, which is what the dramatiq
command needs to find them.
"""

from __future__ import annotations

from processor.app import App
from processor.config import Settings
from processor.errors import ConfigurationError
from processor.logs import configure_logging
from processor.sentry import init_sentry

settings = Settings.from_env()
if settings.redis_url is None:
    raise ConfigurationError(
        "REDIS_URL is not set; a worker process needs the Redis broker. Set "
        "REDIS_URL (for example redis://127.0.0.1:6379/0), or use "
        "`processor run` to run the pipeline on the embedded broker."
    )

configure_logging()
init_sentry(settings)
app = App(settings)
broker = app.broker
