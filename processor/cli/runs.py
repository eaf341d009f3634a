"""``processor runs``: the records of recent runs."""

from __future__ import annotations

import click
import msgspec

from processor.cli import cli
from processor.config import Settings
from processor.report import record_text
from processor.state import store_for

# Seconds each Redis command may take, so that a Redis that accepts
# connections but never responds fails the command instead of hanging it.
REDIS_TIMEOUT = 10.0


@cli.group(invoke_without_command=True)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many runs to list.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def runs(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List recent runs, newest first."""
    if ctx.invoked_subcommand is not None:
        return

    recent = store_for(Settings.from_env(), REDIS_TIMEOUT).recent(limit)
    if as_json:
        click.echo(msgspec.json.encode(recent).decode())
        return
    for run in recent:
        click.echo(
            f"{run.run_id}  {run.status:<10}  {run.export_id or '-':<32}  "
            f"{run.events:>10,} events"
        )


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON.")
def runs_show(run_id: str, as_json: bool) -> None:
    """Show one run: status, export id, counts and last error."""
    run = store_for(Settings.from_env(), REDIS_TIMEOUT).get(run_id)
    if run is None:
        raise click.ClickException(
            f"no run has the id {run_id!r}; `processor runs` lists recent ones."
        )
    if as_json:
        click.echo(msgspec.json.encode(run).decode())
    else:
        click.echo(record_text(run))
