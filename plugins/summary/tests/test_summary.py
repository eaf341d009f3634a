from __future__ import annotations

import json
from pathlib import Path

from processor_summary import SummaryHandler

from processor.testing import make_event, run_handler


def read_report(directory: Path, run_id: str = "run_test") -> dict[str, object]:
    report: dict[str, object] = json.loads(
        (directory / f"summary-{run_id}.json").read_text()
    )
    return report


def test_counts_by_email_and_type(tmp_path: Path) -> None:
    events = [
        make_event(email_id="em_1", event_type="delivered"),
        make_event(email_id="em_1", event_type="opened"),
        make_event(email_id="em_1", event_type="opened"),
        make_event(email_id="em_2", event_type="bounced"),
        make_event(email_id=None, event_type="sent"),
    ]

    result = run_handler(SummaryHandler(), events, config={"dir": str(tmp_path)})

    assert result.handled == 5
    assert read_report(tmp_path) == {
        "run_id": "run_test",
        "export_id": "exp_test",
        "events": 5,
        "by_type": {"opened": 2, "delivered": 1, "bounced": 1, "sent": 1},
        "by_email": {
            "em_1": {"opened": 2, "delivered": 1},
            "em_2": {"bounced": 1},
            "none": {"sent": 1},
        },
    }


def test_resume_continues_counts(tmp_path: Path) -> None:
    first = run_handler(
        SummaryHandler(),
        [make_event(email_id="em_1", event_type="opened")],
        config={"dir": str(tmp_path)},
    )
    assert first.checkpoint is not None

    run_handler(
        SummaryHandler(),
        [make_event(email_id="em_1", event_type="opened")],
        config={"dir": str(tmp_path)},
        resume=first.checkpoint.state,
    )

    assert read_report(tmp_path)["by_email"] == {"em_1": {"opened": 2}}
