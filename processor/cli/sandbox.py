"""``processor sandbox``: the local stand-in for Buttondown's Exports API."""

from __future__ import annotations

import signal

import click

from processor.cli import cli
from processor.cli.pipeline import DEFAULT_SANDBOX_EVENTS, expand_faults
from processor.sandbox.faults import FAULTS


@cli.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8025,
    show_default=True,
    help="TCP port on 127.0.0.1; 0 picks a free one.",
)
@click.option(
    "--events",
    type=click.IntRange(min=0),
    default=DEFAULT_SANDBOX_EVENTS,
    show_default=True,
    help="Events in each generated export.",
)
@click.option(
    "--polls-to-ready",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Retrieves of an export before it turns ready.",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    type=click.Choice([*FAULTS, "all"]),
    help="Inject this fault; repeat the option for several, or pass 'all'.",
)
@click.option(
    "--api-key",
    default=None,
    help="Accept only this API key. [default: any non-empty key]",
)
@click.option(
    "--ready-after",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds after creation when an export turns ready, whatever the "
    "retrieves; replaces --polls-to-ready.",
)
@click.option(
    "--webhook-url",
    default=None,
    help="Loopback URL to POST a signed export.completed delivery to when an "
    "export turns ready; needs --ready-after.",
)
@click.option(
    "--webhook-key",
    envvar="BUTTONDOWN_WEBHOOK_SIGNING_KEY",
    default=None,
    help="Signing key of the deliveries. [default: BUTTONDOWN_WEBHOOK_SIGNING_KEY]",
)
def sandbox(
    port: int,
    events: int,
    polls_to_ready: int,
    faults: tuple[str, ...],
    api_key: str | None,
    ready_after: float | None,
    webhook_url: str | None,
    webhook_key: str | None,
) -> None:
    """Serve a Buttondown-compatible Exports API on 127.0.0.1."""
    from processor.sandbox import SandboxServer

    try:
        server = SandboxServer(
            port=port,
            events=events,
            polls_to_ready=polls_to_ready,
            api_key=api_key,
            faults=expand_faults(faults),
            ready_after=ready_after,
            webhook_url=webhook_url,
            webhook_key=webhook_key,
        )
    except OSError as error:
        raise click.ClickException(
            f"cannot listen on 127.0.0.1:{port} ({error.strerror}); pick another "
            "--port, or 0 for a free one."
        ) from None
    except ValueError as error:
        raise click.ClickException(str(error)) from None

    click.echo(
        f"Sandbox Exports API at {server.api_url} ({events:,} events per export)."
    )
    click.echo(f"Point the processor at it with BUTTONDOWN_API_URL={server.api_url}")
    if webhook_url:
        click.echo(
            f"Exports turn ready after {ready_after:g} s and notify {webhook_url}"
        )

    # SIGTERM (from a process manager) stops the server like Ctrl-C, so its
    # generated files are removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
