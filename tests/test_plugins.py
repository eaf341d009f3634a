from __future__ import annotations

from datetime import UTC, datetime
from importlib.metadata import EntryPoint

import pytest

from processor.events import Event
from processor.plugins import (
    ENTRY_POINT_GROUP,
    Dispatcher,
    Plugin,
    RunInfo,
    load_plugins,
)
from tests.sample_plugins import RecordingHandler


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
