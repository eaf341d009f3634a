"""processor plugins, processor dead-letters, plugin configuration and stores."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from processor.config import Settings
from processor.errors import ConfigurationError
from processor.events import Event
from processor.plugins import DeadLetter
from processor.plugins.deadletters import FileDeadLetters, RedisDeadLetters
from processor.plugins.wiring import plugin_configs
from tests.test_cli import last_json, processor, tagged

REPOSITORY = Path(__file__).resolve().parent.parent


def write_distribution(site: Path, name: str, entry_points: dict[str, str]) -> None:
    """Install a fake distribution on ``site`` that only declares entry points."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n"
    )
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[processor.handlers]\n{lines}")


def make_letter(event_id: str, plugin: str = "archive") -> DeadLetter:
    return DeadLetter(
        plugin=plugin,
        run_id="run_1",
        export_id="exp_1",
        event=Event(
            id=event_id,
            token="",
            email_id=None,
            subscriber_email="reader@example.com",
            event_type="bounced",
            timestamp=datetime(2024, 3, 13, tzinfo=UTC),
            metadata={"reason": "550"},
        ),
        error="RuntimeError: warehouse down",
        attempts=4,
    )


def test_plugins_lists_broken_plugin(tmp_path: Path) -> None:
    site = tmp_path / "site"
    write_distribution(site, "broken_plugin", {"broken": "no_such_module:Handler"})

    result = processor("plugins", "--json", cwd=tmp_path, PYTHONPATH=str(site))

    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout.splitlines()[-1])}
    assert rows["archive"]["status"] == "loaded"
    assert rows["summary"]["status"] == "loaded"
    assert rows["deliverability"]["status"] == "loaded"
    assert rows["deliverability"]["event_types"] == ["bounced", "complained"]
    assert rows["archive"]["distribution"] == "processor-archive"
    assert rows["broken"]["status"] == "failed"
    assert rows["broken"]["distribution"] == "broken_plugin"
    assert "ModuleNotFoundError" in rows["broken"]["error"]


def test_distribution_twice_on_path_loads_once(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for site in (first, second):
        entry = {"twice": "tests.sample_plugins:RecordingHandler"}
        write_distribution(site, "twice", entry)
    path = os.pathsep.join([str(first), str(second), str(REPOSITORY)])

    result = processor("plugins", "--json", cwd=tmp_path, PYTHONPATH=path)

    rows = json.loads(result.stdout.splitlines()[-1])
    twice = [row for row in rows if row["name"] == "twice"]
    assert len(twice) == 1
    assert twice[0]["status"] == "loaded"


def test_same_name_from_two_distributions(tmp_path: Path) -> None:
    site = tmp_path / "site"
    write_distribution(
        site, "impostor", {"summary": "tests.sample_plugins:RecordingHandler"}
    )
    path = f"{site}{os.pathsep}{REPOSITORY}"

    result = processor("plugins", "--json", cwd=tmp_path, PYTHONPATH=path)

    rows = json.loads(result.stdout.splitlines()[-1])
    summaries = [row for row in rows if row["name"] == "summary"]
    assert len(summaries) == 2
    assert [row["status"] for row in summaries].count("loaded") == 1
    failed = next(row for row in summaries if row["status"] == "failed")
    assert "already provides a plugin named 'summary'" in failed["error"]


def test_plugins_deny_list_shown(tmp_path: Path) -> None:
    result = processor(
        "plugins", "--json", cwd=tmp_path, PROCESSOR_DISABLED_PLUGINS="archive"
    )

    rows = {row["name"]: row for row in json.loads(result.stdout.splitlines()[-1])}
    assert rows["archive"]["status"] == "disabled"
    assert rows["summary"]["status"] == "loaded"


def test_run_with_bad_plugins_succeeds(tmp_path: Path) -> None:
    site = tmp_path / "site"
    write_distribution(
        site,
        "bad_plugins",
        {
            "broken": "no_such_module:Handler",
            "raising": "tests.sample_plugins:RaisingHandler",
            "flaky": "tests.sample_plugins:QuickFlaky",
        },
    )
    path = f"{site}{os.pathsep}{REPOSITORY}"

    result = processor(
        "run",
        "--sandbox",
        "--events",
        "300",
        "--json",
        cwd=tmp_path,
        PYTHONPATH=path,
        PROCESSOR_POLL_MIN_DELAY="0.1",
    )
    letters = processor(
        "dead-letters", "--plugin", "raising", "--json", cwd=tmp_path, PYTHONPATH=path
    )

    summary = last_json(result)
    assert result.returncode == 0, result.stderr
    assert summary["status"] == "succeeded"
    assert summary["plugins"] == {
        "archive": {"handled": 300, "failed": 0},
        "broken": {
            "handled": 0,
            "failed": 0,
            "error": "failed to load: ModuleNotFoundError: No module named "
            "'no_such_module'",
        },
        "deliverability": {"handled": tagged(summary), "failed": 0},
        "flaky": {"handled": 300, "failed": 0},
        "raising": {"handled": 0, "failed": 300},
        "summary": {"handled": 300, "failed": 0},
    }
    dead = json.loads(letters.stdout.splitlines()[-1])
    assert len(dead) == 300
    assert dead[0]["error"].startswith("RuntimeError: cannot handle ext_evt_")


def test_dead_letters_listed_and_retried(tmp_path: Path) -> None:
    store = FileDeadLetters(tmp_path / ".processor" / "dead-letters")
    store.add(make_letter("ext_evt_1"))
    store.add(make_letter("ext_evt_2"))

    listed = processor("dead-letters", "--json", cwd=tmp_path)
    retried = processor("dead-letters", "retry", "archive", "--json", cwd=tmp_path)

    letters = json.loads(listed.stdout.splitlines()[-1])
    assert [letter["event"]["id"] for letter in letters] == ["ext_evt_1", "ext_evt_2"]
    assert letters[0]["error"] == "RuntimeError: warehouse down"
    assert retried.returncode == 0, retried.stderr
    assert last_json(retried) == {
        "plugin": "archive",
        "retried": 2,
        "handled": 2,
        "failed": 0,
        "untouched": 0,
        "error": None,
    }
    assert store.letters("archive") == []
    archived = list((tmp_path / ".processor" / "archive").glob("*.jsonl"))
    assert len(archived) == 1
    assert len(archived[0].read_text().splitlines()) == 2


def test_dead_letters_retry_failure_kept(tmp_path: Path) -> None:
    store = FileDeadLetters(tmp_path / ".processor" / "dead-letters")
    store.add(make_letter("ext_evt_1"))
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")

    result = processor(
        "dead-letters",
        "retry",
        "archive",
        "--json",
        cwd=tmp_path,
        PROCESSOR_PLUGIN_ARCHIVE_DIR=str(blocker),
    )

    assert result.returncode == 1
    assert "setup failed" in str(last_json(result)["error"])
    assert last_json(result)["untouched"] == 1
    assert [letter.event.id for letter in store.letters("archive")] == ["ext_evt_1"]


def test_retry_unknown_plugin_fails(tmp_path: Path) -> None:
    result = processor("dead-letters", "retry", "nope", cwd=tmp_path)

    assert result.returncode == 1
    assert "plugin 'nope' cannot run: not installed" in result.stderr


def test_config_from_file_and_variables(tmp_path: Path) -> None:
    config_file = tmp_path / "plugins.toml"
    config_file.write_text(
        '[plugins.warehouse]\ntable = "events"\nbatch = 500\n'
        '[plugins.archive]\ndir = "/data/archive"\n'
    )
    settings = Settings(plugin_config_file=config_file)
    environ = {
        "PROCESSOR_PLUGIN_WAREHOUSE_TABLE": "events_v2",
        "PROCESSOR_PLUGIN_MY_SINK_URL": "http://127.0.0.1:9",
    }

    configs = plugin_configs(settings, ["warehouse", "archive", "my-sink"], environ)

    assert configs["warehouse"] == {"table": "events_v2", "batch": 500}
    assert configs["archive"] == {"dir": "/data/archive"}
    assert configs["my-sink"] == {"url": "http://127.0.0.1:9"}


def test_config_file_invalid_toml(tmp_path: Path) -> None:
    config_file = tmp_path / "plugins.toml"
    config_file.write_text("[plugins.warehouse\n")

    with pytest.raises(ConfigurationError, match="could not be read"):
        plugin_configs(Settings(plugin_config_file=config_file), ["warehouse"], {})


def test_config_file_missing_exits_2(tmp_path: Path) -> None:
    result = processor(
        "plugins", cwd=tmp_path, PROCESSOR_PLUGIN_CONFIG=str(tmp_path / "none.toml")
    )

    assert result.returncode == 2
    assert "PROCESSOR_PLUGIN_CONFIG" in result.stderr


def test_redis_dead_letters(redis_url: str) -> None:
    store = RedisDeadLetters(redis.Redis.from_url(redis_url))
    first, second = make_letter("ext_evt_1"), make_letter("ext_evt_2", "warehouse")

    store.add(first)
    store.add(second)
    store.remove("archive", [first])

    assert store.plugins() == ["warehouse"]
    assert store.letters("warehouse") == [second]
    assert store.letters("archive") == []
