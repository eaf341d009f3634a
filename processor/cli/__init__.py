"""The ``processor`` command line.

Each command lives in the submodule for its area: ``pipeline`` (run,
replay), ``workers`` (trigger, worker), ``runs`` (run records), ``plugins``
(plugins, dead-letters), ``web`` (web, webhooks) and ``sandbox``.
"""

from __future__ import annotations

import sys

import click
import redis

from processor.errors import ConfigurationError
from processor.logs import configure_logging


def main() -> None:
    """Run the command line, turning configuration errors into exit code 2."""
    try:
        cli(standalone_mode=True)
    except ConfigurationError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(2)
    except redis.TimeoutError as error:
        click.echo(
            f"Error: Redis at REDIS_URL did not respond within the timeout "
            f"({error}); check that REDIS_URL names a Redis server and that it "
            "is not overloaded.",
            err=True,
        )
        sys.exit(1)
    except redis.ConnectionError as error:
        click.echo(
            f"Error: Redis at REDIS_URL is unreachable ({error}); start it, fix "
            "REDIS_URL, or unset REDIS_URL to run on the embedded broker.",
            err=True,
        )
        sys.exit(1)


@click.group()
@click.version_option(package_name="buttondown-processor")
@click.option(
    "--log-level",
    default=None,
    help="Log level: DEBUG, INFO, WARNING or ERROR. "
    "[default: PROCESSOR_LOG_LEVEL or INFO]",
)
def cli(log_level: str | None) -> None:
    """Process Buttondown email events: export, poll, download, parse, dispatch."""
    configure_logging(log_level)


# The submodules register their commands on `cli` when imported.
from processor.cli import pipeline, plugins, runs, sandbox, web, workers  # noqa: E402

__all__ = ["cli", "main", "pipeline", "plugins", "runs", "sandbox", "web", "workers"]
