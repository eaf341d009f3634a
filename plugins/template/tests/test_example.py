from __future__ import annotations

from processor_example import ExampleHandler

from processor.testing import make_event, run_handler


def test_counts_bounces_and_complaints() -> None:
    handler = ExampleHandler()
    events = [
        make_event(event_type="bounced", subscriber_email="a@example.com"),
        make_event(event_type="opened", subscriber_email="a@example.com"),
        make_event(event_type="complained", subscriber_email="a@example.com"),
    ]

    result = run_handler(handler, events)

    assert result.handled == 2
    assert result.failed == 0
    assert handler.counts == {"a@example.com": 2}


def test_threshold_from_config() -> None:
    handler = ExampleHandler()

    run_handler(handler, [], config={"threshold": "5"})

    assert handler.threshold == 5
