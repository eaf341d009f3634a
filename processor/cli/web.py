"""``processor web`` and ``processor webhooks``: Buttondown's webhooks on Redis."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, cast

import click
import msgspec

from processor.app import App
from processor.cli import cli
from processor.cli.workers import _redis_settings
from processor.config import check_signing_key
from processor.errors import ConfigurationError
from processor.webhooks.app import HEALTH_PATH, WEBHOOK_PATH, WebhookApp
from processor.webhooks.receiver import OUTCOMES_KEY, TYPES_KEY, Receiver
from processor.webhooks.schedule import format_delay

logger = logging.getLogger(__name__)

# Seconds each Redis command of the web process may take, so a request while
# Redis is unreachable gets its 503 quickly.
WEB_REDIS_TIMEOUT = 2.0
# Seconds each Redis command of a one-off command may take before it fails.
COMMAND_REDIS_TIMEOUT = 10.0


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 listens on every interface.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    envvar="PORT",
    help="TCP port to listen on; the PORT variable sets it too.",
)
@click.option(
    "--allow-unsigned",
    is_flag=True,
    help="Accept deliveries without checking signatures when "
    "BUTTONDOWN_WEBHOOK_SIGNING_KEY is unset. Anyone who can reach the URL can "
    "then start runs, so use it only on a private network.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=None,
    help="Answer requests with 503 while this many connections, the "
    "request's own included, are open. [default: no limit but the process's "
    "file descriptors]",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds a connection has to send a request's headers, after it "
    "opens or after its last response, before it is closed.",
)
def web(
    host: str,
    port: int,
    allow_unsigned: bool,
    max_connections: int | None,
    header_timeout: float,
) -> None:
    """Serve the webhook endpoint that starts runs from Buttondown's events."""
    from processor.sentry import init_sentry
    from processor.webhooks.server import serve

    settings = _redis_settings("web")
    key = settings.webhook_signing_key
    if key is not None:
        check_signing_key(key)
    elif not allow_unsigned:
        raise ConfigurationError(
            "BUTTONDOWN_WEBHOOK_SIGNING_KEY is not set, so deliveries cannot be "
            "verified; copy the signing key of the webhook from Buttondown's "
            "settings into it, or pass --allow-unsigned to accept unsigned "
            "deliveries on a private network."
        )
    init_sentry(settings)

    app = App(settings, redis_timeout=WEB_REDIS_TIMEOUT)
    assert app.redis is not None and app.webhooks is not None
    receiver = Receiver(settings, app.redis, app.webhooks.route, key)
    if key is None:
        logger.warning(
            "Accepting unsigned webhook deliveries (--allow-unsigned); anyone "
            "who can reach this server can start runs."
        )
    logger.info(
        "Receiving webhooks at http://%s:%d%s (health check at %s).",
        host,
        port,
        WEBHOOK_PATH,
        HEALTH_PATH,
    )

    try:
        serve(
            WebhookApp(receiver),
            host,
            port,
            max_connections=max_connections,
            header_timeout=header_timeout,
        )
    finally:
        app.close()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def webhooks(as_json: bool) -> None:
    """Show the runs scheduled by email.sent and the delivery counts."""
    settings = _redis_settings("webhooks")
    with App(settings, redis_timeout=COMMAND_REDIS_TIMEOUT) as app:
        assert app.redis is not None and app.webhooks is not None
        slots = app.webhooks.schedule.pending()
        types = _counts(app.redis.hgetall(TYPES_KEY))
        outcomes = _counts(app.redis.hgetall(OUTCOMES_KEY))

    if as_json:
        report = {
            "scheduled": [msgspec.structs.asdict(slot) for slot in slots],
            "event_types": types,
            "outcomes": outcomes,
        }
        click.echo(msgspec.json.encode(report).decode())
        return

    click.echo(f"Scheduled runs: {len(slots)}")
    now = time.time()
    for slot in slots:
        due = datetime.fromtimestamp(slot.due, UTC).isoformat(timespec="seconds")
        deliveries = "delivery" if slot.deliveries == 1 else "deliveries"
        line = (
            f"  {slot.slot_id}  due {due} (in {max(slot.due - now, 0):,.0f} s), "
            f"{format_delay(slot.delay)} after the send, {slot.deliveries} {deliveries}"
        )
        if slot.run_id:
            line += f"; run {slot.run_id} starts once the run in flight finishes"
        click.echo(line)
    click.echo("Deliveries by outcome: " + _listing(outcomes))
    click.echo("Deliveries by event type: " + _listing(types))


def _counts(raw: Any) -> dict[str, int]:
    counts = cast(dict[bytes, bytes], raw)
    return {name.decode(): int(value) for name, value in sorted(counts.items())}


def _listing(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in counts.items()) or "none"
