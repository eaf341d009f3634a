"""The parser against the corpus of quirky export files in tests/corpus."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from processor.cli import cli
from processor.rejects import read_rejects
from tests.corpus.make_corpus import ENTRIES, write_corpus
from tests.test_cli import last_json, processor

CORPUS = Path(__file__).parent / "corpus"
FILES = CORPUS / "files"
EXPECTED: dict[str, dict[str, Any]] = json.loads(
    (CORPUS / "expected.json").read_text(encoding="utf-8")
)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo the logging set-up that each in-process command applies.

    The command sets the levels of noisy loggers such as httpx, which later
    tests in the same process read from their log records.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {
        name: logger.level
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger):
            logger.setLevel(levels.get(name, logging.NOTSET))


def replay(path: Path) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["replay", str(path), "--json"])
    return result.exit_code, json.loads(result.output.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_replay_reports_expected_counts(name: str) -> None:
    expected = EXPECTED[name]

    exit_code, summary = replay(FILES / name)

    assert summary["events"] == expected["events"]
    assert summary["rejected"] == expected["rejected"]
    assert summary["plugins"]["archive"]["handled"] == expected["events"]
    if expected["error"] is None:
        assert exit_code == 0
        assert summary["status"] == "succeeded"
    else:
        assert exit_code == 1
        assert summary["status"] == "failed"
        assert expected["error"] in summary["error"]


def test_rejects_file_lists_each_rejected_row() -> None:
    _, summary = replay(FILES / "bad-rows.csv")

    rows = read_rejects(Path(summary["rejects_file"]))

    assert [row.line for row in rows] == [3, 5, 6, 7]
    assert {row.member for row in rows} == {"bad-rows.csv"}
    assert rows[0].reason == "id is missing or empty"
    assert rows[1].reason == "expected 7 fields, found 5"
    assert rows[0].raw.startswith(",tok-1,em_01,reader1@example.com,opened,")


def test_rejects_file_shows_undecodable_bytes() -> None:
    _, summary = replay(FILES / "invalid-utf8.csv")

    [row] = read_rejects(Path(summary["rejects_file"]))

    assert row.reason == "the row contains bytes that are not valid UTF-8"
    assert "CAF\\xe9" in row.raw
    assert row.line == 5


def test_rejects_file_line_of_multiline_row() -> None:
    _, summary = replay(FILES / "lines.jsonl")

    rows = read_rejects(Path(summary["rejects_file"]))

    assert [row.line for row in rows] == [3, 7]
    assert rows[0].raw == '{"id": "ext_evt_broken", "event_type": '


def test_clean_file_writes_no_rejects_file() -> None:
    _, summary = replay(FILES / "dashboard.csv")

    assert summary["rejects_file"] is None
    assert not Path(".processor/rejects").exists()


def test_unknown_types_counted_in_summary() -> None:
    _, summary = replay(FILES / "unknown-types.csv")

    assert summary["unknown_event_types"] == {
        "attempted": 1,
        "deferred": 1,
        "sent": 1,
        "survey_answered": 1,
    }
    assert summary["event_types"]["opened"] == 1


def test_hostile_member_name_writes_nothing_outside(tmp_path: Path) -> None:
    before = set(Path("/tmp").iterdir())

    exit_code, summary = replay(FILES / "hostile-name.zip")

    assert exit_code == 0
    assert summary["events"] == 3
    assert set(Path("/tmp").iterdir()) - before == set()
    assert not (tmp_path.parent / "events.csv").exists()


def test_corpus_matches_its_script(tmp_path: Path) -> None:
    expected = write_corpus(tmp_path)

    assert expected == EXPECTED
    for entry in ENTRIES:
        committed = (FILES / entry.name).read_bytes()
        assert committed == (tmp_path / entry.name).read_bytes(), entry.name


@pytest.mark.parametrize(
    "name", ["export.zip", "events.jsonl.gz", "metadata.csv", "bomb.gz"]
)
def test_processor_command_replays_corpus(tmp_path: Path, name: str) -> None:
    expected = EXPECTED[name]

    result = processor("replay", str(FILES / name), "--json", cwd=tmp_path)

    summary = last_json(result)
    assert summary["events"] == expected["events"]
    assert summary["rejected"] == expected["rejected"]
    assert result.returncode == (0 if expected["error"] is None else 1)
    assert "Traceback" not in result.stderr


def test_limit_setting_reaches_parser(tmp_path: Path) -> None:
    result = processor(
        "replay",
        str(FILES / "collections.zip"),
        "--json",
        cwd=tmp_path,
        PROCESSOR_MAX_ARCHIVE_MEMBERS="2",
    )

    summary = last_json(result)
    assert result.returncode == 1
    assert "lists 3 entries" in str(summary["error"])
    assert "PROCESSOR_MAX_ARCHIVE_MEMBERS" in str(summary["error"])
