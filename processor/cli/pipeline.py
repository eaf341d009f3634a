"""``processor run`` and ``processor replay``: one pass of the pipeline."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import click

from processor.app import App
from processor.cli import cli
from processor.config import Settings
from processor.errors import ProcessorError
from processor.report import Progress, summary_json, summary_text
from processor.sandbox.faults import FAULTS
from processor.state import SUCCEEDED, FileRunStore, Run, new_run_id

logger = logging.getLogger(__name__)

DEFAULT_SANDBOX_EVENTS = 10_000


@cli.command()
@click.option(
    "--sandbox",
    is_flag=True,
    help="Start the local sandbox API and run against it. Poll and retry "
    "delays, the HTTP timeout and the download deadline shrink to suit a "
    "local server unless their variables are set.",
)
@click.option(
    "--events",
    type=click.IntRange(min=0),
    default=DEFAULT_SANDBOX_EVENTS,
    show_default=True,
    help="Events in the sandbox's export (with --sandbox).",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    type=click.Choice([*FAULTS, "all"]),
    help="Make the sandbox inject this fault (with --sandbox); repeat the "
    "option for several, or pass 'all'.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds to wait for the run before giving up. "
    "[default: PROCESSOR_POLL_DEADLINE plus an hour]",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the summary as one JSON object on the last line.",
)
def run(
    sandbox: bool,
    events: int,
    faults: tuple[str, ...],
    timeout: float | None,
    as_json: bool,
) -> None:
    """Run the whole pipeline once and wait for it to finish."""
    from processor.sentry import init_sentry

    settings = Settings.from_env()
    init_sentry(settings)

    if faults and not sandbox:
        raise click.UsageError("--fault applies only with --sandbox.")

    faults_on = expand_faults(faults)
    with _sandbox_settings(settings, sandbox, events, faults_on) as settings:
        if settings.redis_url is None:
            logger.info(
                "Running on the embedded broker; run records go to %s.",
                settings.state_dir / "runs",
            )
        else:
            logger.info("Running on the Redis broker; a worker process does the work.")

        settings.require_api_key()
        with App(settings) as app:
            if app.embedded:
                app.start_embedded_worker()
            started = app.actors.start_run(started_by="processor run")
            limit = timeout or settings.poll_deadline + 3600
            finished, exit_code = _wait(app, started.run_id, limit)

    _print_summary(finished, as_json)
    sys.exit(exit_code)


@contextlib.contextmanager
def _sandbox_settings(
    settings: Settings, sandbox: bool, events: int, faults: list[str]
) -> Iterator[Settings]:
    if not sandbox:
        yield settings
        return

    from processor.sandbox import SandboxServer, polls_to_ready_for

    if settings.redis_url is not None:
        logger.warning("--sandbox runs on the embedded broker; REDIS_URL is ignored.")

    polls = polls_to_ready_for(faults)
    with SandboxServer(events=events, faults=faults, polls_to_ready=polls) as server:
        logger.info("Sandbox API serving %d events at %s.", events, server.api_url)
        if faults:
            logger.info("Sandbox faults: %s.", ", ".join(faults))
        api_key = settings.api_key or "sandbox"
        # Plugins that call the API, such as deliverability, read these
        # variables, so for this process they name the sandbox too.
        with _environment(
            BUTTONDOWN_API_URL=server.api_url, BUTTONDOWN_API_KEY=api_key
        ):
            yield settings.replace(
                api_url=server.api_url,
                api_key=api_key,
                redis_url=None,
                **_sandbox_delays(),
            )


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# The sandbox is local and responds at once, so waits and timeouts sized for
# Buttondown would only slow a demo down. With them, the sandbox's slow and
# trickle faults (3 seconds, and a byte every 0.25 seconds) would also take
# minutes to surface. Variables that are set still win.
_SANDBOX_DELAYS = {
    "PROCESSOR_POLL_MIN_DELAY": ("poll_min_delay", 0.2),
    "PROCESSOR_POLL_MAX_DELAY": ("poll_max_delay", 1.0),
    "PROCESSOR_RETRY_MIN_DELAY": ("retry_min_delay", 0.2),
    "PROCESSOR_RETRY_MAX_DELAY": ("retry_max_delay", 2.0),
    "PROCESSOR_HTTP_TIMEOUT": ("http_timeout", 2.0),
    "PROCESSOR_DOWNLOAD_DEADLINE": ("download_deadline", 20.0),
}


def _sandbox_delays() -> dict[str, float]:
    return {
        field: seconds
        for variable, (field, seconds) in _SANDBOX_DELAYS.items()
        if not os.environ.get(variable, "").strip()
    }


def expand_faults(faults: tuple[str, ...]) -> list[str]:
    if "all" in faults:
        return list(FAULTS)
    return list(dict.fromkeys(faults))


def _catch_sigint() -> threading.Event:
    """Turn the first Ctrl-C into an event; a second one stops at once.

    Raising KeyboardInterrupt wherever the main thread happens to be can
    leave a lock held, so the wait loop checks the event instead.
    """
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        interrupted.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, on_sigint)
    return interrupted


def _wait(app: App, run_id: str, timeout: float) -> tuple[Run, int]:
    """Wait for the run; return its record and the command's exit status.

    On the embedded broker the run lives only as long as this process, so
    a timeout or Ctrl-C marks it failed, which also stops its actors at
    their next step. On Redis the workers carry on with it.
    """
    progress = Progress()
    interrupted = _catch_sigint()
    try:
        run = app.wait(
            run_id, timeout=timeout, on_change=progress.show_run, stop=interrupted
        )
        return run, 0 if run.status == SUCCEEDED else 1
    except TimeoutError:
        reason, exit_code = f"No result within {timeout:g} seconds (--timeout)", 1
    except KeyboardInterrupt:
        reason, exit_code = "Interrupted by Ctrl-C", 130
    finally:
        progress.finish()

    if not app.embedded:
        logger.warning(
            "%s; run %s goes on in the workers, and `processor runs show %s` "
            "shows it later. If it never starts, check that a worker is running.",
            reason,
            run_id,
            run_id,
        )
        current = app.store.get(run_id)
        assert current is not None
        return current, exit_code

    def stop(current: Run) -> None:
        if not current.finished:
            current.fail(f"{reason}; the run was stopped.")

    return app.store.update(run_id, stop), exit_code


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the summary as one JSON object on the last line.",
)
def replay(file: Path, as_json: bool) -> None:
    """Run the plugins over a local export FILE, such as a dashboard CSV."""
    from processor.plugins import RunInfo
    from processor.plugins.wiring import build_dispatcher
    from processor.processing import Summary, process_file

    settings = Settings.from_env()
    store = FileRunStore(settings.state_dir / "runs")
    run = Run(
        run_id=new_run_id(), status="processing", started_by=f"processor replay {file}"
    )
    store.create(run)

    progress = Progress()
    reason: str | None = None

    def record(summary: Summary) -> None:
        store.update(run.run_id, lambda current: current.record_counts(summary))
        progress.show_events(summary.events)

    try:
        summary = process_file(
            file,
            build_dispatcher(settings),
            RunInfo(run_id=run.run_id),
            record,
            limits=settings.parse_limits,
            rejects_path=settings.rejects_path(run.run_id),
        )
    except ProcessorError as error:
        reason = str(error)
    except KeyboardInterrupt:
        reason = "Interrupted by Ctrl-C; the replay was stopped."
    except Exception as error:
        logger.exception("Replay of %s hit an unexpected error.", file)
        reason = f"Unexpected {type(error).__name__}: {error}"
    finally:
        progress.finish()

    def finish(current: Run) -> None:
        if reason is None:
            current.record_counts(summary)
            current.succeed()
        else:
            current.fail(reason)

    run = store.update(run.run_id, finish)
    _print_summary(run, as_json)
    sys.exit(0 if run.status == SUCCEEDED else 1)


def _print_summary(run: Run, as_json: bool) -> None:
    click.echo(summary_text(run))
    if as_json:
        click.echo(summary_json(run))
