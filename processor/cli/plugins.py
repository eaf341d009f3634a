"""``processor plugins`` and ``processor dead-letters``."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click
import msgspec

from processor.cli import cli
from processor.config import Settings
from processor.plugins import Plugin, RunInfo, load_plugins
from processor.plugins.wiring import build_dispatcher, dead_letter_store, selection


def plugin_fields(plugin: Plugin) -> dict[str, Any]:
    """Return one plugin's row of ``processor plugins --json``."""
    event_types = plugin.event_types
    return {
        "name": plugin.name,
        "distribution": plugin.distribution,
        "version": plugin.version,
        "entry_point": plugin.value,
        "event_types": sorted(event_types) if event_types is not None else None,
        "status": plugin.status,
        "error": plugin.error,
    }


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def plugins_command(as_json: bool) -> None:
    """List the installed plugins, their event types and load status."""
    settings = Settings.from_env()
    found = load_plugins(selection=selection(settings))
    rows = [plugin_fields(plugin) for plugin in found]

    if as_json:
        click.echo(msgspec.json.encode(rows).decode())
        return
    if not rows:
        click.echo("No plugins installed in the processor.handlers group.")
        return
    for row in rows:
        types = ", ".join(row["event_types"]) if row["event_types"] else "all"
        origin = f"{row['distribution'] or '?'} {row['version'] or ''}".strip()
        line = f"{row['name']:<16} {row['status']:<9} {origin:<32} events: {types}"
        if row["error"]:
            line += f"\n{'':<16} error: {row['error']}"
        click.echo(line)


@cli.group("dead-letters", invoke_without_command=True)
@click.option("--plugin", "plugin_name", help="Only this plugin's list.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def dead_letters(ctx: click.Context, plugin_name: str | None, as_json: bool) -> None:
    """List the events plugins failed on; `retry PLUGIN` hands them over again."""
    if ctx.invoked_subcommand is not None:
        return

    store = dead_letter_store(Settings.from_env())
    names = [plugin_name] if plugin_name else store.plugins()
    letters = [letter for name in names for letter in store.letters(name)]

    if as_json:
        click.echo(msgspec.json.encode(letters).decode())
        return
    if not letters:
        click.echo("No dead letters.")
        return
    for letter in letters:
        click.echo(
            f"{letter.plugin:<16} {letter.event.id:<34} {letter.event.event_type:<12} "
            f"run {letter.run_id}, {letter.attempts} attempt(s): {letter.error}"
        )


@dead_letters.command("retry")
@click.argument("plugin_name", metavar="PLUGIN")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def retry(plugin_name: str, as_json: bool) -> None:
    """Hand PLUGIN's dead letters to it again, removing each it handles."""
    settings = Settings.from_env()
    store = dead_letter_store(settings)
    letters = store.letters(plugin_name)

    found = [
        plugin
        for plugin in load_plugins(selection=selection(settings))
        if plugin.name == plugin_name
    ]
    if not found or found[0].handler is None:
        reason = found[0].error or found[0].status if found else "not installed"
        click.echo(f"Error: plugin {plugin_name!r} cannot run: {reason}.", err=True)
        sys.exit(1)

    dispatcher = build_dispatcher(settings, plugins=found)
    run_id = "dead-letters-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    dispatcher.setup(RunInfo(run_id=run_id))
    try:
        for letter in letters:
            # A failure goes back on the list, with its new error, through
            # the dispatcher; either way the old entry is removed after.
            dispatcher.dispatch(letter.event)
            store.remove(letter)
    finally:
        dispatcher.teardown()

    counts = dispatcher.counts[plugin_name]
    result = {
        "plugin": plugin_name,
        "retried": len(letters),
        "handled": counts.handled,
        "failed": counts.failed,
        "error": counts.error,
    }
    if as_json:
        click.echo(msgspec.json.encode(result).decode())
    else:
        click.echo(
            f"Retried {len(letters)} dead letter(s) of {plugin_name}: "
            f"{counts.handled} handled, {counts.failed} failed again."
        )
    sys.exit(0 if counts.failed == 0 and counts.error is None else 1)
