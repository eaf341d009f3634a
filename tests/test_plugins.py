from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from processor.events import Event
from processor.plugins import (
    ENTRY_POINT_GROUP,
    Dispatcher,
    Plugin,
    PluginSelection,
    RunInfo,
    load_plugins,
)
from processor.plugins.deadletters import FileDeadLetters
from tests import sample_plugins
from tests.sample_plugins import BatchRecorder, ConfigRecorder, RecordingHandler


def entry_point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def make_event(event_id: str, event_type: str = "opened") -> Event:
    return Event(
        id=event_id,
        token="",
        email_id=None,
        subscriber_email="reader@example.com",
        event_type=event_type,
        timestamp=datetime(2024, 3, 13, tzinfo=UTC),
        metadata={},
    )


def loaded(*pairs: tuple[str, str]) -> dict[str, Plugin]:
    plugins = load_plugins([entry_point(name, value) for name, value in pairs])
    return {plugin.name: plugin for plugin in plugins}


def test_import_error_reported_others_load() -> None:
    plugins = loaded(
        ("missing", "tests.no_such_module:Handler"),
        ("recording", "tests.sample_plugins:RecordingHandler"),
    )

    assert plugins["missing"].handler is None
    assert "ModuleNotFoundError" in str(plugins["missing"].error)
    assert plugins["recording"].error is None


def test_missing_attribute_reported() -> None:
    plugins = loaded(("typo", "tests.sample_plugins:NoSuchHandler"))

    assert "AttributeError" in str(plugins["typo"].error)


def test_object_without_handle_reported() -> None:
    plugins = loaded(("odd", "tests.sample_plugins:not_a_handler"))

    assert "no handle() method" in str(plugins["odd"].error)


def test_duplicate_entry_point_loads_once() -> None:
    plugins = load_plugins(
        [
            entry_point("recording", "tests.sample_plugins:RecordingHandler"),
            entry_point("recording", "tests.sample_plugins:RecordingHandler"),
        ]
    )

    assert len(plugins) == 1


def test_raising_handler_counted_others_continue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugins = load_plugins(
        [
            entry_point("raising", "tests.sample_plugins:RaisingHandler"),
            entry_point("recording", "tests.sample_plugins:RecordingHandler"),
        ]
    )
    dispatcher = Dispatcher(plugins)
    dispatcher.setup(RunInfo(run_id="run_1"))
    for n in range(30):
        dispatcher.dispatch(make_event(f"evt_{n}"))
    dispatcher.teardown()

    assert dispatcher.counts["raising"].failed == 30
    assert dispatcher.counts["raising"].handled == 0
    assert dispatcher.counts["recording"].handled == 30
    logged = [
        record for record in caplog.records if "failed on event" in record.getMessage()
    ]
    assert len(logged) == 10


def test_event_types_filter() -> None:
    plugins = loaded(("bounces", "tests.sample_plugins:BouncesOnly"))
    dispatcher = Dispatcher(plugins.values())
    dispatcher.setup(RunInfo(run_id="run_1"))
    for event_type in ("opened", "bounced", "clicked", "complained"):
        dispatcher.dispatch(make_event(event_type, event_type))

    handler = plugins["bounces"].handler
    assert isinstance(handler, RecordingHandler)
    assert handler.seen == ["bounced", "complained"]
    assert dispatcher.counts["bounces"].handled == 2


def test_failing_setup_skips_plugin() -> None:
    plugins = loaded(
        ("failing-setup", "tests.sample_plugins:FailingSetup"),
        ("recording", "tests.sample_plugins:RecordingHandler"),
    )
    dispatcher = Dispatcher(plugins.values())
    dispatcher.setup(RunInfo(run_id="run_1"))
    dispatcher.dispatch(make_event("evt_1"))

    assert dispatcher.counts["failing-setup"].handled == 0
    assert dispatcher.counts["failing-setup"].failed == 1
    assert dispatcher.counts["recording"].handled == 1
    assert "setup failed: OSError" in str(dispatcher.counts["failing-setup"].error)


def test_other_api_version_fails_to_load() -> None:
    plugins = loaded(("future", "tests.sample_plugins:FutureApi"))

    assert plugins["future"].status == "failed"
    assert "handler API version 2" in str(plugins["future"].error)
    assert "provides version 1" in str(plugins["future"].error)


def test_event_types_string_fails_to_load() -> None:
    plugins = loaded(("odd-types", "tests.sample_plugins:BadEventTypes"))

    assert plugins["odd-types"].status == "failed"
    assert "event_types 'bounced'" in str(plugins["odd-types"].error)


def test_allow_list_disables_others() -> None:
    plugins = load_plugins(
        [
            entry_point("recording", "tests.sample_plugins:RecordingHandler"),
            entry_point("bounces", "tests.sample_plugins:BouncesOnly"),
        ],
        PluginSelection(enabled=frozenset({"bounces"})),
    )
    by_name = {plugin.name: plugin for plugin in plugins}

    assert by_name["bounces"].status == "loaded"
    assert by_name["recording"].status == "disabled"
    assert by_name["recording"].handler is None


def test_deny_list_wins_over_allow_list() -> None:
    plugins = load_plugins(
        [entry_point("recording", "tests.sample_plugins:RecordingHandler")],
        PluginSelection(
            enabled=frozenset({"recording"}), disabled=frozenset({"recording"})
        ),
    )

    assert plugins[0].status == "disabled"


def dispatcher_for(
    *pairs: tuple[str, str], store: FileDeadLetters | None = None
) -> tuple[Dispatcher, dict[str, Plugin], list[float]]:
    plugins = loaded(*pairs)
    waits: list[float] = []
    dispatcher = Dispatcher(plugins.values(), dead_letters=store, sleep=waits.append)
    dispatcher.setup(RunInfo(run_id="run_1", export_id="exp_1"))
    return dispatcher, plugins, waits


def test_retry_later_then_success(tmp_path: Path) -> None:
    store = FileDeadLetters(tmp_path)
    dispatcher, plugins, waits = dispatcher_for(
        ("flaky", "tests.sample_plugins:FlakyHandler"), store=store
    )

    dispatcher.dispatch_batch([make_event("evt_1"), make_event("evt_2")])
    dispatcher.flush()

    handler = plugins["flaky"].handler
    assert isinstance(handler, RecordingHandler)
    assert handler.seen == ["evt_1", "evt_2"]
    assert dispatcher.counts["flaky"].handled == 2
    assert dispatcher.counts["flaky"].failed == 0
    assert waits == [0.25, 0.25, 0.25, 0.25]
    assert store.plugins() == []


def test_retry_later_exhausted_dead_letter(tmp_path: Path) -> None:
    store = FileDeadLetters(tmp_path)
    dispatcher, _, waits = dispatcher_for(
        ("busy", "tests.sample_plugins:AlwaysBusy"),
        ("recording", "tests.sample_plugins:RecordingHandler"),
        store=store,
    )

    dispatcher.dispatch(make_event("evt_1"))

    [letter] = store.letters("busy")
    assert letter.event.id == "evt_1"
    assert letter.attempts == 4
    assert letter.error == "RetryLater: still busy"
    assert letter.run_id == "run_1"
    assert letter.export_id == "exp_1"
    assert waits == [0.5, 1.0, 2.0]
    assert dispatcher.counts["busy"].failed == 1
    assert dispatcher.counts["recording"].handled == 1


def test_raising_plugin_dead_letters_each_event(tmp_path: Path) -> None:
    store = FileDeadLetters(tmp_path)
    dispatcher, _, waits = dispatcher_for(
        ("raising", "tests.sample_plugins:RaisingHandler"), store=store
    )

    dispatcher.dispatch_batch([make_event("evt_1"), make_event("evt_2")])
    dispatcher.flush()

    letters = store.letters("raising")
    assert [letter.event.id for letter in letters] == ["evt_1", "evt_2"]
    assert letters[0].error == "RuntimeError: cannot handle evt_1"
    assert letters[0].attempts == 1
    assert waits == []


def test_batch_handler_gets_whole_batches(tmp_path: Path) -> None:
    store = FileDeadLetters(tmp_path)
    dispatcher, plugins, _ = dispatcher_for(
        ("batch", "tests.sample_plugins:BatchRecorder"), store=store
    )

    dispatcher.dispatch_batch([make_event(f"evt_{n}") for n in range(3)])
    dispatcher.dispatch_batch([make_event("poison"), make_event("evt_9")])
    dispatcher.flush()

    handler = plugins["batch"].handler
    assert isinstance(handler, BatchRecorder)
    assert handler.batches == [["evt_0", "evt_1", "evt_2"]]
    assert dispatcher.counts["batch"].handled == 3
    assert dispatcher.counts["batch"].failed == 2
    assert [letter.event.id for letter in store.letters("batch")] == [
        "poison",
        "evt_9",
    ]


def test_config_reaches_setup() -> None:
    plugins = loaded(("configured", "tests.sample_plugins:ConfigRecorder"))
    dispatcher = Dispatcher(
        plugins.values(), configs={"configured": {"table": "events"}}
    )

    dispatcher.setup(RunInfo(run_id="run_1"))

    handler = plugins["configured"].handler
    assert isinstance(handler, ConfigRecorder)
    assert handler.config == {"table": "events"}


@pytest.fixture
def release_hung_threads() -> Iterator[None]:
    sample_plugins.RELEASE.clear()
    yield
    sample_plugins.RELEASE.set()


def test_hanging_plugin_left_behind(tmp_path: Path, release_hung_threads: None) -> None:
    store = FileDeadLetters(tmp_path)
    plugins = loaded(
        ("hanging", "tests.sample_plugins:HangingHandler"),
        ("recording", "tests.sample_plugins:RecordingHandler"),
    )
    dispatcher = Dispatcher(plugins.values(), dead_letters=store, stall_after=0.5)
    dispatcher.setup(RunInfo(run_id="run_1"))
    started = time.monotonic()

    dispatcher.dispatch_batch(
        [make_event("evt_1"), make_event("hang"), make_event("evt_3")]
    )
    dispatcher.dispatch_batch([make_event("evt_4"), make_event("evt_5")])
    dispatcher.flush()
    points = dispatcher.checkpoint()
    dispatcher.teardown()
    elapsed = time.monotonic() - started

    recording = plugins["recording"].handler
    assert isinstance(recording, RecordingHandler)
    assert recording.seen == ["evt_1", "hang", "evt_3", "evt_4", "evt_5"]
    counts = dispatcher.counts["hanging"]
    assert counts.handled == 1
    assert counts.failed == 4
    assert "stalled: a batch of 3 events made no progress for 0.5 s" in str(
        counts.error
    )
    letters = store.letters("hanging")
    assert [letter.event.id for letter in letters] == ["hang", "evt_3"]
    assert "hanging" not in points
    assert elapsed < 5


def test_slow_plugin_not_stalled() -> None:
    plugins = loaded(("slow", "tests.sample_plugins:SlowHandler"))
    dispatcher = Dispatcher(plugins.values(), stall_after=0.5)
    dispatcher.setup(RunInfo(run_id="run_1"))

    dispatcher.dispatch_batch([make_event(f"evt_{n}") for n in range(5)])
    dispatcher.flush()
    dispatcher.teardown()

    assert dispatcher.counts["slow"].handled == 5
    assert dispatcher.counts["slow"].error is None


def test_handler_calls_on_one_thread() -> None:
    plugins = loaded(("recording", "tests.sample_plugins:RecordingHandler"))
    handler = plugins["recording"].handler
    assert handler is not None
    names: list[str] = []
    handler.setup = lambda run: names.append(threading.current_thread().name)  # type: ignore[method-assign]
    handler.handle = lambda event: names.append(threading.current_thread().name)  # type: ignore[method-assign]
    dispatcher = Dispatcher(plugins.values())

    dispatcher.setup(RunInfo(run_id="run_1"))
    dispatcher.dispatch(make_event("evt_1"))
    dispatcher.teardown()

    assert names == ["plugin-recording", "plugin-recording"]


def test_sys_exit_in_handle_is_plugin_failure(tmp_path: Path) -> None:
    store = FileDeadLetters(tmp_path)
    dispatcher, _, _ = dispatcher_for(
        ("exiting", "tests.sample_plugins:ExitingHandler"),
        ("recording", "tests.sample_plugins:RecordingHandler"),
        store=store,
    )

    dispatcher.dispatch_batch([make_event("evt_1"), make_event("exit")])
    dispatcher.flush()

    assert dispatcher.counts["exiting"].handled == 1
    assert dispatcher.counts["exiting"].failed == 1
    assert dispatcher.counts["recording"].handled == 2
    [letter] = store.letters("exiting")
    assert letter.error == "SystemExit: 3"


def test_unencodable_checkpoint_keeps_previous() -> None:
    plugins = loaded(("opaque", "tests.sample_plugins:OpaqueCheckpoint"))
    dispatcher = Dispatcher(plugins.values())
    dispatcher.setup(RunInfo(run_id="run_1"))
    dispatcher.dispatch(make_event("evt_1"))

    points = dispatcher.checkpoint()
    dispatcher.teardown()

    assert "opaque" not in points
    assert dispatcher.counts["opaque"].handled == 1


def test_allow_list_unknown_name_warned(caplog: pytest.LogCaptureFixture) -> None:
    load_plugins(
        [entry_point("recording", "tests.sample_plugins:RecordingHandler")],
        PluginSelection(enabled=frozenset({"recordng"})),
    )

    assert "PROCESSOR_PLUGINS names recordng" in caplog.text
