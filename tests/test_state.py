import threading
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis

from processor.plugins import PluginCounts
from processor.state import (
    ABANDONED_AFTER,
    FAILED,
    SUCCEEDED,
    FileRunStore,
    RedisRunStore,
    Run,
    RunNotFound,
    RunStore,
    flight_key,
    new_run_id,
)


@pytest.fixture(params=["file", "fakeredis", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunStore]:
    if request.param == "file":
        yield FileRunStore(tmp_path / "runs")
    elif request.param == "fakeredis":
        yield RedisRunStore(fakeredis.FakeRedis())
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        yield RedisRunStore(client)
        client.close()


def test_create_and_get(store: RunStore) -> None:
    run = Run(run_id=new_run_id(), parameters={"date": ["2024-12-03", None]})
    store.create(run)

    loaded = store.get(run.run_id)

    assert loaded == run


def test_get_unknown_is_none(store: RunStore) -> None:
    assert store.get("run_20200101T000000_000000") is None


def test_update_unknown_raises(store: RunStore) -> None:
    with pytest.raises(RunNotFound):
        store.update("run_20200101T000000_000000", lambda run: None)


def test_update_persists(store: RunStore) -> None:
    run = Run(run_id=new_run_id())
    store.create(run)

    def finish(current: Run) -> None:
        current.events = 7
        current.plugins = {"archive": PluginCounts(handled=7)}
        current.succeed()

    store.update(run.run_id, finish)
    loaded = store.get(run.run_id)

    assert loaded is not None
    assert loaded.status == SUCCEEDED
    assert loaded.events == 7
    assert loaded.plugins["archive"].handled == 7
    assert loaded.finished_at is not None


def test_concurrent_updates_not_lost(store: RunStore) -> None:
    run = Run(run_id=new_run_id())
    store.create(run)

    def increment() -> None:
        for _ in range(25):
            store.update(
                run.run_id, lambda current: setattr(current, "polls", current.polls + 1)
            )

    threads = [threading.Thread(target=increment) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    loaded = store.get(run.run_id)
    assert loaded is not None
    assert loaded.polls == 100


def test_recent_newest_first(store: RunStore) -> None:
    runs = [Run(run_id=f"run_2026120{day}T000000_aaaaaa") for day in range(1, 4)]
    for day, run in enumerate(runs, start=1):
        run.created_at = run.created_at.replace(year=2026, month=12, day=day)
        store.create(run)

    recent = store.recent(2)

    assert [run.run_id for run in recent] == [runs[2].run_id, runs[1].run_id]


def test_fail_records_reason(store: RunStore) -> None:
    run = Run(run_id=new_run_id())
    store.create(run)

    store.update(run.run_id, lambda current: current.fail("export exp_1 failed"))
    loaded = store.get(run.run_id)

    assert loaded is not None
    assert loaded.status == FAILED
    assert loaded.error == "export exp_1 failed"


def test_file_store_rejects_path_in_run_id(tmp_path: Path) -> None:
    store = FileRunStore(tmp_path / "runs")

    with pytest.raises(RunNotFound):
        store.update("run_../../etc/passwd", lambda run: None)


def test_create_single_returns_run_in_flight(store: RunStore) -> None:
    first = store.create_single(Run(run_id=new_run_id()), "key")

    second = store.create_single(Run(run_id="run_20990101T000000_bbbbbb"), "key")

    assert second.run_id == first.run_id
    assert store.get("run_20990101T000000_bbbbbb") is None


def test_create_single_after_finish_starts_new(store: RunStore) -> None:
    first = store.create_single(Run(run_id=new_run_id()), "key")
    store.update(first.run_id, lambda run: run.succeed())

    second = store.create_single(Run(run_id="run_20990101T000000_cccccc"), "key")

    assert second.run_id == "run_20990101T000000_cccccc"


def test_create_single_other_key_independent(store: RunStore) -> None:
    first = store.create_single(Run(run_id=new_run_id()), "key-a")

    second = store.create_single(Run(run_id="run_20990101T000000_dddddd"), "key-b")

    assert second.run_id != first.run_id


def test_create_single_abandoned_run_replaced(store: RunStore) -> None:
    first = store.create_single(Run(run_id=new_run_id()), "key")
    stale = store.get(first.run_id)
    assert stale is not None
    stale.updated_at -= ABANDONED_AFTER
    store.create(stale)

    second = store.create_single(Run(run_id="run_20990101T000000_eeeeee"), "key")

    assert second.run_id == "run_20990101T000000_eeeeee"


def test_create_single_concurrent_one_run(store: RunStore) -> None:
    winners: list[str] = []
    barrier = threading.Barrier(6)

    def trigger(index: int) -> None:
        barrier.wait()
        run = Run(run_id=f"run_20990101T000000_{index:06d}")
        winners.append(store.create_single(run, "key").run_id)

    threads = [threading.Thread(target=trigger, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(winners)) == 1
    assert len(store.recent(10)) == 1


def test_flight_key_ignores_parameter_order() -> None:
    first = flight_key("nl_1", "events", {"a": 1, "b": 2})
    second = flight_key("nl_1", "events", {"b": 2, "a": 1})

    assert first == second
    assert flight_key("nl_2", "events", {"a": 1, "b": 2}) != first


def test_create_single_keeps_existing_id(store: RunStore) -> None:
    first = Run(run_id=new_run_id(), started_by="first")
    store.create_single(first, flight_key(None, "events", None))
    store.update(first.run_id, lambda run: run.succeed())

    again = store.create_single(
        Run(run_id=first.run_id, started_by="second"), flight_key(None, "events", None)
    )

    assert again.started_by == "first"
    assert again.status == SUCCEEDED


def test_run_for_export_finds_linked_run(store: RunStore) -> None:
    run = Run(run_id=new_run_id(), export_id="exp_linked")
    store.create(run)
    store.link_export("exp_linked", run.run_id)

    found = store.run_for_export("exp_linked")

    assert found is not None
    assert found.run_id == run.run_id
    assert store.run_for_export("exp_other") is None
