"""``processor trigger``, ``worker`` and ``watchdog``: runs on Redis."""

from __future__ import annotations

import logging
import os
import sys
import time

import click
import msgspec
import redis

from processor.app import App
from processor.cli import cli
from processor.config import Settings
from processor.errors import ConfigurationError
from processor.watchdog import sweep, sweep_slots

logger = logging.getLogger(__name__)


def _redis_settings(command: str) -> Settings:
    settings = Settings.from_env()
    if settings.redis_url is None:
        raise ConfigurationError(
            f"processor {command} needs the Redis broker, and REDIS_URL is not "
            "set. Set REDIS_URL (such as redis://127.0.0.1:6379/0), or use "
            "`processor run` to run the pipeline in this process."
        )
    return settings


@cli.command()
@click.option("--json", "as_json", is_flag=True, help='Print {"run_id": ...} as JSON.')
def trigger(as_json: bool) -> None:
    """Enqueue a run for the workers and print its run id."""
    settings = _redis_settings("trigger")

    # A Redis that accepts connections but never responds fails the command
    # after this many seconds per request instead of hanging it.
    with App(settings, redis_timeout=10.0) as app:
        run = app.actors.start_run(started_by="processor trigger")

    if as_json:
        click.echo(msgspec.json.encode({"run_id": run.run_id}).decode())
    else:
        click.echo(run.run_id)


@cli.command()
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Worker processes to start.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Worker threads in each process.",
)
def worker(processes: int, threads: int) -> None:
    """Start dramatiq workers for the pipeline's actors on Redis.

    The settings are checked here first, so a bad value ends with one clear
    line instead of a traceback from each worker process.
    """
    _redis_settings("worker")

    command = [
        sys.executable,
        "-m",
        "dramatiq",
        "processor.worker",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]
    # dramatiq takes over this process, so signals reach it directly.
    os.execv(sys.executable, command)


@cli.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds between sweeps.",
)
@click.option("--once", is_flag=True, help="Sweep once and exit.")
def watchdog(interval: float, once: bool) -> None:
    """Drive again, or fail, runs stuck past PROCESSOR_STUCK_AFTER seconds.

    Scheduled runs overdue by that long get their start message again too.
    """
    settings = _redis_settings("watchdog")

    with App(settings) as app:
        while True:
            try:
                stuck = sweep(app.store, app.actors, settings.stuck_after)
                assert app.webhooks is not None
                sweep_slots(app.webhooks, settings.stuck_after)
            except redis.RedisError as error:
                if once:
                    raise
                # Redis restarts are what the watchdog is there to outlive.
                logger.warning("Watchdog sweep failed: %s; trying again.", error)
            else:
                logger.info("Watchdog sweep found %d stuck runs.", len(stuck))
            if once:
                return
            time.sleep(interval)
