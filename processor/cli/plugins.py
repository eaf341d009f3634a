"""``processor plugins`` and ``processor dead-letters``."""

from __future__ import annotations

import sys
from typing import Any

import click
import msgspec

from processor.cli import cli
from processor.config import Settings
from processor.plugins import DeadLetter, Plugin, RunInfo, load_plugins
from processor.plugins.deadletters import DeadLetterStore
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
        if row["status"] != "loaded":
            types = "-"
        else:
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


# Dead letters handed over between rewrites of the list.
RETRY_CHUNK = 256


@dead_letters.command("retry")
@click.argument("plugin_name", metavar="PLUGIN")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def retry(plugin_name: str, as_json: bool) -> None:
    """Hand PLUGIN's dead letters to it again, removing each it handles.

    Letters are handed over in the run they came from (same run id and
    export id, so idempotency keys match). A letter that fails again is
    replaced by one with the new error. A letter the plugin never received
    stays as it was, as when its setup failed or it stalled.
    """
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

    handled = failed = 0
    error: str | None = None
    for (run_id, export_id), group in _by_run(letters).items():
        outcome = _retry_group(settings, found[0], store, run_id, export_id, group)
        handled += outcome[0]
        failed += outcome[1]
        error = error or outcome[2]
        if outcome[2] is not None:
            break

    untouched = len(letters) - handled - failed
    result = {
        "plugin": plugin_name,
        "retried": handled + failed,
        "handled": handled,
        "failed": failed,
        "untouched": untouched,
        "error": error,
    }
    if as_json:
        click.echo(msgspec.json.encode(result).decode())
    else:
        click.echo(
            f"Retried {handled + failed} dead letter(s) of {plugin_name}: "
            f"{handled} handled, {failed} failed again, {untouched} untouched."
        )
        if error:
            click.echo(f"Error: {error}", err=True)
    sys.exit(0 if failed == 0 and error is None else 1)


def _by_run(
    letters: list[DeadLetter],
) -> dict[tuple[str, str | None], list[DeadLetter]]:
    groups: dict[tuple[str, str | None], list[DeadLetter]] = {}
    for letter in letters:
        groups.setdefault((letter.run_id, letter.export_id), []).append(letter)
    return groups


def _retry_group(
    settings: Settings,
    plugin: Plugin,
    store: DeadLetterStore,
    run_id: str,
    export_id: str | None,
    letters: list[DeadLetter],
) -> tuple[int, int, str | None]:
    """Hand one run's letters over again; return handled, failed and error."""
    dispatcher = build_dispatcher(settings, plugins=[plugin])
    counts = dispatcher.counts[plugin.name]
    dispatcher.setup(RunInfo(run_id=run_id, export_id=export_id))
    handled = failed = 0
    try:
        for start in range(0, len(letters), RETRY_CHUNK):
            done: list[DeadLetter] = []
            for letter in letters[start : start + RETRY_CHUNK]:
                if counts.error is not None:
                    break
                before = (counts.handled, dispatcher.dead_lettered)
                dispatcher.dispatch(letter.event)
                if counts.handled > before[0]:
                    handled += 1
                    done.append(letter)
                elif dispatcher.dead_lettered > before[1]:
                    # Its new letter, with the new error, is on the list.
                    failed += 1
                    done.append(letter)
            store.remove(plugin.name, done)
            if counts.error is not None:
                break
    finally:
        dispatcher.teardown()
    return handled, failed, counts.error
