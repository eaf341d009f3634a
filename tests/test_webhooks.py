"""Webhook parts without a server: signatures, bodies, settings, slots, receiver."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dramatiq
import fakeredis
import msgspec
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from processor.actors import PipelineActors
from processor.config import Settings, check_signing_key
from processor.errors import BrokerUnavailable, ConfigurationError, WebhookRejected
from processor.state import FAILED, PROCESSING, WAITING, FileRunStore, Run, new_run_id
from processor.watchdog import sweep_slots
from processor.webhooks import deliveries, sign, verify
from processor.webhooks.actors import WebhookActors
from processor.webhooks.app import WEBHOOK_PATH, BodyBudget, WebhookApp
from processor.webhooks.receiver import DELIVERY_PREFIX, OUTCOMES_KEY, Receiver
from processor.webhooks.schedule import DUE_KEY, Schedule, format_delay
from processor.webhooks.server import AcceptErrorFilter

KEY = "whsec_test"
BODY = b'{"id":"ext_evt_1","event_type":"email.sent","data":{}}'


# Signatures


def test_signature_accepted() -> None:
    verify(BODY, sign(BODY, KEY).encode(), KEY)


def test_signature_uppercase_hex_accepted() -> None:
    digest = sign(BODY, KEY).removeprefix("sha256=")
    verify(BODY, f"sha256={digest.upper()}".encode(), KEY)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        (b"", "malformed"),
        (b"sha256=", "malformed"),
        (b"sha1=" + b"0" * 40, "malformed"),
        (b"sha256=" + b"z" * 64, "malformed"),
        (b"sha256=" + b"0" * 63, "malformed"),
        (b"sha256=" + b"0" * 64, "does not match"),
        (b"sha256=\xff\xfe" + b"0" * 62, "not ASCII"),
        ("sha256=é".encode(), "not ASCII"),
    ],
)
def test_signature_rejected(header: bytes | None, reason: str) -> None:
    with pytest.raises(WebhookRejected) as caught:
        verify(BODY, header, KEY)

    assert caught.value.status == 401
    assert reason in caught.value.reason


def test_signature_of_changed_body_rejected() -> None:
    header = sign(BODY, KEY).encode()

    with pytest.raises(WebhookRejected, match="does not match"):
        verify(BODY.replace(b"email.sent", b"email.sant"), header, KEY)


def test_signature_with_other_key_rejected() -> None:
    with pytest.raises(WebhookRejected, match="does not match"):
        verify(BODY, sign(BODY, "another key").encode(), KEY)


# Delivery bodies


def test_delivery_parsed() -> None:
    delivery = deliveries.parse_delivery(BODY)

    assert delivery.id == "ext_evt_1"
    assert delivery.event_type == "email.sent"
    assert delivery.data == deliveries.DeliveryData()


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"", 400, "not valid JSON"),
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 422, "Expected `object`"),
        (b'{"event_type": "email.sent", "data": {}}', 422, "`id`"),
        (b'{"id": "e1", "data": {}}', 422, "`event_type`"),
        (b'{"id": "e1", "event_type": "email.sent"}', 422, "`data`"),
        (b'{"id": "e1", "event_type": "email.sent", "data": []}', 422, "$.data"),
        (b'{"id": 7, "event_type": "email.sent", "data": {}}', 422, "$.id"),
        (b'{"id": "", "event_type": "email.sent", "data": {}}', 422, "`id`"),
        (b'{"id": "a b", "event_type": "email.sent", "data": {}}', 422, "`id`"),
        (
            b'{"id": "e1", "event_type": "' + b"x" * 201 + b'", "data": {}}',
            422,
            "`event_type`",
        ),
    ],
)
def test_delivery_rejected(body: bytes, status: int, reason: str) -> None:
    with pytest.raises(WebhookRejected) as caught:
        deliveries.parse_delivery(body)

    assert caught.value.status == status
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    "data",
    [
        {"export_id": "exp_1"},
        {"export": "exp_1"},
        {"export": {"id": "exp_1", "status": "ready"}},
        {"id": "exp_1"},
    ],
)
def test_export_id_variants(data: dict[str, Any]) -> None:
    assert deliveries.export_id(data_of(data)) == "exp_1"


def test_export_id_missing() -> None:
    assert deliveries.export_id(data_of({"status": "ready"})) is None
    assert deliveries.export_id(data_of({"export_id": 12})) is None


def test_newsletter_and_reason() -> None:
    assert deliveries.newsletter_id(data_of({"newsletter": "nl_1"})) == "nl_1"
    assert deliveries.newsletter_id(data_of({"newsletter": {"id": "nl_2"}})) == "nl_2"
    assert deliveries.failure_reason(data_of({"error": " disk\n full "})) == "disk full"
    assert deliveries.failure_reason(data_of({"error": ""})) is None


def data_of(data: dict[str, Any]) -> deliveries.DeliveryData:
    return msgspec.convert(data, deliveries.DeliveryData)


# Settings


def test_webhook_settings_defaults() -> None:
    settings = Settings.from_env({})

    assert settings.webhook_signing_key is None
    assert settings.webhook_run_delays == (3600.0, 86400.0, 259200.0)
    assert settings.webhook_dedupe_window == 86400.0


def test_run_delays_parsed() -> None:
    settings = Settings.from_env(
        {"PROCESSOR_WEBHOOK_RUN_DELAYS": "3d, 1h,90m,45s,10,1h"}
    )

    assert settings.webhook_run_delays == (10.0, 45.0, 3600.0, 5400.0, 259200.0)


@pytest.mark.parametrize("value", ["1x", "1h,,2h", "0s", "-1h", "400d", "nan"])
def test_run_delays_invalid(value: str) -> None:
    with pytest.raises(ConfigurationError, match="PROCESSOR_WEBHOOK_RUN_DELAYS"):
        Settings.from_env({"PROCESSOR_WEBHOOK_RUN_DELAYS": value})


def test_dedupe_window_shorter_than_retries_rejected() -> None:
    with pytest.raises(ConfigurationError, match="25 minutes"):
        Settings.from_env({"PROCESSOR_WEBHOOK_DEDUPE_WINDOW": "600"})


def test_format_delay() -> None:
    assert [format_delay(s) for s in (45, 90, 3600, 5400, 86400)] == [
        "45s",
        "90s",
        "1h",
        "90m",
        "1d",
    ]


# Slots of scheduled runs


@pytest.fixture
def schedule() -> Schedule:
    return Schedule(fakeredis.FakeRedis(), (60.0, 3600.0), 600.0, 86400.0)


def test_burst_coalesced_into_one_slot_per_delay(schedule: Schedule) -> None:
    start = time.time()
    opened = schedule.join("ext_evt_0", start).opened
    for number in range(1, 50):
        assert schedule.join(f"ext_evt_{number}", start + number).opened == []

    pending = schedule.pending()

    assert [slot.delay for slot in opened] == [60.0, 3600.0]
    assert [slot.deliveries for slot in pending] == [50, 50]
    assert [slot.due for slot in pending] == [start + 49 + 60, start + 49 + 3600]


def test_repeated_delivery_joins_once(schedule: Schedule) -> None:
    first = schedule.join("ext_evt_0", time.time())

    again = schedule.join("ext_evt_0", time.time())

    assert first.first_time is True
    assert again.first_time is False
    assert [slot.deliveries for slot in schedule.pending()] == [1, 1]
    assert [slot.slot_id for slot in again.opened] == [
        slot.slot_id for slot in first.opened
    ]


def test_repeated_delivery_skips_fired_slots(schedule: Schedule) -> None:
    start = time.time() - 120
    first = schedule.join("ext_evt_0", start)
    schedule.fire(first.opened[0].slot_id)

    again = schedule.join("ext_evt_0", start)

    assert [slot.delay for slot in again.opened] == [3600.0]


def test_request_outside_window_opens_slot(schedule: Schedule) -> None:
    start = time.time()
    schedule.join("ext_evt_0", start)

    opened = schedule.join("ext_evt_1", start + 601).opened

    assert len(opened) == 2
    assert len(schedule.pending()) == 4


def test_slot_waits_until_due(schedule: Schedule) -> None:
    start = time.time()
    opened = schedule.join("ext_evt_0", start).opened

    decision = schedule.fire(opened[0].slot_id, now=start + 30)

    assert decision.action == "wait"
    assert decision.wait == pytest.approx(30)


def test_slot_fires_once_with_one_run_id(schedule: Schedule) -> None:
    start = time.time()
    opened = schedule.join("ext_evt_0", start).opened
    slot_id = opened[0].slot_id

    first = schedule.fire(slot_id, now=start + 61)
    second = schedule.fire(slot_id, now=start + 62)

    assert first.action == "start"
    assert second.action == "start"
    assert first.slot is not None
    assert second.slot is not None
    assert first.slot.run_id is not None
    assert second.slot.run_id == first.slot.run_id


def test_request_after_firing_opens_slot(schedule: Schedule) -> None:
    start = time.time()
    opened = schedule.join("ext_evt_0", start).opened
    schedule.fire(opened[0].slot_id, now=start + 61)

    later = schedule.join("ext_evt_1", start + 62).opened

    assert later is not None
    assert [slot.delay for slot in later] == [60.0]


def test_started_slot_leaves_due_list(schedule: Schedule) -> None:
    start = time.time() - 120
    opened = schedule.join("ext_evt_0", start).opened
    slot_id = opened[0].slot_id
    schedule.fire(slot_id)

    overdue_before = schedule.overdue(grace=30)
    schedule.started(slot_id)

    assert overdue_before == [slot_id]
    assert schedule.overdue(grace=30) == []
    assert schedule.client.zscore(DUE_KEY, slot_id) is None


def test_postpone_only_once_per_check(schedule: Schedule) -> None:
    start = time.time() - 120
    opened = schedule.join("ext_evt_0", start).opened
    slot_id = opened[0].slot_id
    schedule.fire(slot_id)

    first = schedule.postpone(slot_id, until=time.time() + 60)
    second = schedule.postpone(slot_id, until=time.time() + 60)

    assert first is True
    assert second is False
    assert schedule.overdue(grace=0) == []


def test_unknown_slot_dropped(schedule: Schedule) -> None:
    assert schedule.fire("slot_1h_20260101T000000_000000").action == "drop"


# Receiver, on fakeredis and dramatiq's stub broker


class Recorder:
    """Stands in for the webhook actor and records what was sent."""

    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.error = error

    def send(self, *args: Any) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append(args)


def receiver_for(client: redis.Redis, route: Recorder, **settings: Any) -> Receiver:
    return Receiver(Settings(**settings), client, route, KEY)  # type: ignore[arg-type]


def signed(delivery: dict[str, Any]) -> tuple[bytes, bytes]:
    body = msgspec.json.encode(delivery)
    return body, sign(body, KEY).encode()


def test_receiver_enqueues_routed_types() -> None:
    route = Recorder()
    receiver = receiver_for(fakeredis.FakeRedis(), route)
    cases = [
        ("ext_evt_1", "email.sent", {"email_id": "em_1"}, "em_1", None),
        ("ext_evt_2", "export.completed", {"export_id": "exp_1"}, "exp_1", None),
        (
            "ext_evt_3",
            "export.failed",
            {"export": "exp_2", "error": "no"},
            "exp_2",
            "no",
        ),
    ]

    for delivery_id, event_type, data, subject, detail in cases:
        body, header = signed(
            {"id": delivery_id, "event_type": event_type, "data": data}
        )
        receipt = receiver.receive(body, header)

        assert receipt.status == 202
        assert receipt.outcome == "accepted"
        sent = route.sent[-1]
        assert sent[:2] == (delivery_id, event_type)
        assert sent[3:] == (subject, detail)


def test_receiver_replay_is_duplicate() -> None:
    route = Recorder()
    client = fakeredis.FakeRedis()
    receiver = receiver_for(client, route)
    body, header = signed({"id": "ext_evt_1", "event_type": "email.sent", "data": {}})

    first = receiver.receive(body, header)
    second = receiver.receive(body, header)

    assert (first.status, second.status) == (202, 200)
    assert second.outcome == "duplicate"
    assert len(route.sent) == 1
    ttl = client.ttl(f"{DELIVERY_PREFIX}ext_evt_1")
    assert 86000 < ttl <= 86400


def test_receiver_pending_claim_is_unavailable() -> None:
    route = Recorder()
    client = fakeredis.FakeRedis()
    client.set(f"{DELIVERY_PREFIX}ext_evt_1", "pending", ex=60)
    body, header = signed({"id": "ext_evt_1", "event_type": "email.sent", "data": {}})

    with pytest.raises(BrokerUnavailable) as caught:
        receiver_for(client, route).receive(body, header)

    assert caught.value.status == 503
    assert caught.value.delivery_id == "ext_evt_1"
    assert route.sent == []


@pytest.mark.parametrize(
    ("event_type", "data", "reason"),
    [
        ("subscriber.created", {}, "starts no work"),
        ("export.completed", {"status": "ready"}, "no export id"),
        ("email.sent", {"newsletter": "nl_other"}, "for newsletter nl_other"),
    ],
)
def test_receiver_ignores(event_type: str, data: dict[str, Any], reason: str) -> None:
    route = Recorder()
    client = fakeredis.FakeRedis()
    receiver = receiver_for(client, route, newsletter_id="nl_mine")
    body, header = signed({"id": "ext_evt_1", "event_type": event_type, "data": data})

    receipt = receiver.receive(body, header)

    assert receipt.status == 200
    assert receipt.outcome == "ignored"
    assert receipt.reason is not None
    assert reason in receipt.reason
    assert route.sent == []
    assert client.hget(OUTCOMES_KEY, "ignored") == b"1"


def test_receiver_enqueue_failure_releases_claim() -> None:
    client = fakeredis.FakeRedis()
    failing = Recorder(dramatiq.errors.BrokerError("Redis is down"))
    body, header = signed({"id": "ext_evt_1", "event_type": "email.sent", "data": {}})

    with pytest.raises(BrokerUnavailable):
        receiver_for(client, failing).receive(body, header)
    working = Recorder()
    receipt = receiver_for(client, working).receive(body, header)

    assert receipt.status == 202
    assert len(working.sent) == 1


def test_receiver_redis_down_is_unavailable() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    body, header = signed({"id": "ext_evt_1", "event_type": "email.sent", "data": {}})

    with pytest.raises(BrokerUnavailable) as caught:
        receiver_for(client, Recorder()).receive(body, header)

    assert caught.value.status == 503
    assert not receiver_for(client, Recorder()).healthy()


def test_receiver_with_stub_broker_actor() -> None:
    broker = StubBroker()
    received: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="processor")
    def webhook(delivery_id: str, *rest: Any) -> None:
        received.append(delivery_id)

    receiver = Receiver(Settings(), fakeredis.FakeRedis(), webhook, KEY)
    body, header = signed({"id": "ext_evt_9", "event_type": "email.sent", "data": {}})

    receiver.receive(body, header)

    assert broker.queues["processor"].qsize() == 1


# Webhook actors, on dramatiq's stub broker and fakeredis


@pytest.fixture
def actors(tmp_path: Any) -> Iterator[tuple[WebhookActors, StubBroker]]:
    broker = StubBroker()
    settings = Settings(
        state_dir=tmp_path, webhook_run_delays=(60.0, 3600.0), poll_max_delay=5.0
    )
    store = FileRunStore(tmp_path / "runs")
    pipeline = PipelineActors(broker, settings, store)
    webhooks = WebhookActors(broker, settings, store, pipeline, fakeredis.FakeRedis())
    yield webhooks, broker
    broker.close()


def messages(broker: StubBroker, queue: str) -> list[dramatiq.Message[Any]]:
    """Return the messages waiting in ``queue``, oldest first."""
    waiting = list(broker.queues[queue].queue)
    return [dramatiq.Message.decode(raw) for raw in waiting]


def test_email_sent_sends_fire_messages(
    actors: tuple[WebhookActors, StubBroker],
) -> None:
    webhooks, broker = actors

    webhooks._route("ext_evt_1", "email.sent", time.time(), "em_1", None)
    webhooks._route("ext_evt_2", "email.sent", time.time(), "em_2", None)

    fires = messages(broker, "processor.DQ")
    assert [message.actor_name for message in fires] == ["processor.scheduled_run"] * 2
    delays = [message.options["eta"] - message.message_timestamp for message in fires]
    assert delays[0] == pytest.approx(60_000, abs=1000)
    assert delays[1] == pytest.approx(3_600_000, abs=1000)


def test_due_slot_starts_one_run(actors: tuple[WebhookActors, StubBroker]) -> None:
    webhooks, broker = actors
    webhooks._route("ext_evt_1", "email.sent", time.time() - 120, "em_1", None)
    slot = webhooks.schedule.pending()[0]

    webhooks._fire(slot.slot_id)
    webhooks._fire(slot.slot_id)

    runs = webhooks.store.recent()
    assert len(runs) == 1
    assert runs[0].started_by == "webhook email.sent: 1m after the send, 1 delivery"
    triggers = [
        m for m in messages(broker, "processor") if m.actor_name == "processor.trigger"
    ]
    assert len(triggers) == 1
    assert slot.slot_id not in [s.slot_id for s in webhooks.schedule.pending()]


def test_due_slot_waits_for_run_in_flight(
    actors: tuple[WebhookActors, StubBroker],
) -> None:
    webhooks, broker = actors
    in_flight = webhooks.pipeline.start_run(started_by="processor trigger")

    def requested_earlier(run: Run) -> None:
        run.created_at -= timedelta(seconds=300)

    webhooks.store.update(in_flight.run_id, requested_earlier)
    webhooks._route("ext_evt_1", "email.sent", time.time() - 120, "em_1", None)
    slot = webhooks.schedule.pending()[0]

    webhooks._fire(slot.slot_id)
    webhooks._fire(slot.slot_id)
    rechecks = [
        m for m in messages(broker, "processor.DQ") if m.args == (slot.slot_id,)
    ]
    waiting = [s.slot_id for s in webhooks.schedule.pending()]
    webhooks.store.update(in_flight.run_id, lambda run: run.succeed())
    webhooks._fire(slot.slot_id)

    runs = webhooks.store.recent()
    assert slot.slot_id in waiting
    assert len(rechecks) == 2
    assert sorted(run.started_by or "" for run in runs) == [
        "processor trigger",
        "webhook email.sent: 1m after the send, 1 delivery",
    ]


def waiting_run(webhooks: WebhookActors, export_id: str, status: str) -> Run:
    run = Run(run_id=new_run_id(), status=status, export_id=export_id, poll_attempt=3)
    webhooks.store.create(run)
    webhooks.store.link_export(export_id, run.run_id)
    return run


def test_export_completed_polls_now(actors: tuple[WebhookActors, StubBroker]) -> None:
    webhooks, broker = actors
    run = waiting_run(webhooks, "exp_1", WAITING)

    webhooks._route("ext_evt_1", "export.completed", time.time(), "exp_1", None)

    polls = [
        m for m in messages(broker, "processor") if m.actor_name == "processor.poll"
    ]
    assert [poll.args for poll in polls] == [(run.run_id, 3)]
    assert "eta" not in polls[0].options


def test_export_failed_fails_waiting_run(
    actors: tuple[WebhookActors, StubBroker],
) -> None:
    webhooks, _ = actors
    run = waiting_run(webhooks, "exp_1", WAITING)

    webhooks._route("ext_evt_1", "export.failed", time.time(), "exp_1", "quota")

    failed = webhooks.store.get(run.run_id)
    assert failed is not None
    assert failed.status == FAILED
    assert failed.error == (
        "Buttondown reported export exp_1 as failed in webhook delivery "
        "ext_evt_1: quota"
    )


def test_export_failed_leaves_processing_run(
    actors: tuple[WebhookActors, StubBroker],
) -> None:
    webhooks, _ = actors
    run = waiting_run(webhooks, "exp_1", PROCESSING)

    webhooks._route("ext_evt_1", "export.failed", time.time(), "exp_1", None)

    current = webhooks.store.get(run.run_id)
    assert current is not None
    assert current.status == PROCESSING


def test_watchdog_resends_overdue_slot(
    actors: tuple[WebhookActors, StubBroker],
) -> None:
    webhooks, broker = actors
    webhooks._route("ext_evt_1", "email.sent", time.time() - 1000, "em_1", None)
    broker.flush_all()

    resent = sweep_slots(webhooks, grace=300)

    assert len(resent) == 1
    fires = messages(broker, "processor.DQ")
    assert [message.args for message in fires] == [(resent[0],)]


# The ASGI application, called directly


def call_app(
    app: WebhookApp, messages: list[dict[str, Any]], **scope: Any
) -> dict[str, Any]:
    """Call ``app`` with one HTTP request; return the status and JSON body."""
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    request = {"type": "http", "method": "POST", "path": WEBHOOK_PATH, "headers": []}
    request.update(scope)
    asyncio.run(app(request, receive, send))
    return {
        "status": sent[0]["status"],
        "headers": dict(sent[0]["headers"]),
        "body": json.loads(sent[1]["body"]),
    }


def test_app_slow_body_times_out() -> None:
    app = WebhookApp(receiver_for(fakeredis.FakeRedis(), Recorder()), body_timeout=0.2)

    response = call_app(
        app, [{"type": "http.request", "body": b"{", "more_body": True}]
    )

    assert response["status"] == 408
    assert "0.2 seconds" in response["body"]["error"]
    assert response["headers"][b"connection"] == b"close"


def test_app_streamed_body_over_limit() -> None:
    app = WebhookApp(receiver_for(fakeredis.FakeRedis(), Recorder()), max_body=10)
    chunks = [{"type": "http.request", "body": b"123456", "more_body": True}] * 2

    response = call_app(app, chunks)

    assert response["status"] == 413


def test_app_repeated_signature_header() -> None:
    route = Recorder()
    app = WebhookApp(receiver_for(fakeredis.FakeRedis(), route))
    body, header = signed({"id": "ext_evt_1", "event_type": "email.sent", "data": {}})
    headers = [(b"x-buttondown-signature", header)] * 2

    response = call_app(app, [{"type": "http.request", "body": body}], headers=headers)

    assert response["status"] == 401
    assert "more than one" in response["body"]["error"]
    assert route.sent == []


def test_app_invalid_content_length() -> None:
    app = WebhookApp(receiver_for(fakeredis.FakeRedis(), Recorder()))

    response = call_app(app, [], headers=[(b"content-length", b"ten")])

    assert response["status"] == 400


def test_redelivered_route_resends_fire(
    actors: tuple[WebhookActors, StubBroker],
) -> None:
    webhooks, broker = actors
    received = time.time()
    webhooks._route("ext_evt_1", "email.sent", received, "em_1", None)
    broker.flush_all()

    webhooks._route("ext_evt_1", "email.sent", received, "em_1", None)

    fires = messages(broker, "processor.DQ")
    assert sorted(message.args[0] for message in fires) == sorted(
        slot.slot_id for slot in webhooks.schedule.pending()
    )
    assert [slot.deliveries for slot in webhooks.schedule.pending()] == [1, 1]


def test_slot_covered_by_later_run(actors: tuple[WebhookActors, StubBroker]) -> None:
    webhooks, _ = actors
    webhooks._route("ext_evt_1", "email.sent", time.time() - 120, "em_1", None)
    slot = webhooks.schedule.pending()[0]
    later = webhooks.pipeline.start_run(started_by="processor trigger")

    webhooks._fire(slot.slot_id)

    assert [run.run_id for run in webhooks.store.recent()] == [later.run_id]
    assert slot.slot_id not in [s.slot_id for s in webhooks.schedule.pending()]


def test_signing_key_with_control_character_rejected() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_signing_key("key\x07end")

    assert "BUTTONDOWN_WEBHOOK_SIGNING_KEY" in str(caught.value)
    assert "key\x07end" not in str(caught.value)


def test_signing_key_with_surrogate_rejected() -> None:
    with pytest.raises(ConfigurationError, match="not UTF-8"):
        check_signing_key("key\udcff")


def test_signing_key_checked_only_by_web() -> None:
    settings = Settings.from_env({"BUTTONDOWN_WEBHOOK_SIGNING_KEY": "key\x07end"})

    assert settings.webhook_signing_key == "key\x07end"


def test_deeply_nested_delivery_rejected() -> None:
    data = b"[" * 5000 + b"]" * 5000
    body = b'{"id": "e1", "event_type": "email.sent", "data": {"x": ' + data + b"}}"

    with pytest.raises(WebhookRejected) as caught:
        deliveries.parse_delivery(body)

    assert caught.value.status == 400


def test_app_body_budget_answers_503() -> None:
    route = Recorder()
    receiver = receiver_for(fakeredis.FakeRedis(), route)
    body, header = signed({"id": "ext_evt_1", "event_type": "email.sent", "data": {}})
    request = [{"type": "http.request", "body": body}]
    headers = [(b"x-buttondown-signature", header)]
    full = BodyBudget(small_limit=10, large_limit=10, small_size=5)
    app = WebhookApp(receiver, budget=BodyBudget(small_limit=100))

    over = call_app(WebhookApp(receiver, budget=full), request, headers=headers)
    within = call_app(app, request, headers=headers)

    assert over["status"] == 503
    assert over["body"] == {"error": "server busy; retry later"}
    assert over["headers"][b"retry-after"] == b"60"
    assert over["headers"][b"connection"] == b"close"
    assert within["status"] == 202
    assert (app.budget.small, app.budget.large) == (0, 0)
    assert len(route.sent) == 1


def test_budget_large_bodies_leave_small_pool() -> None:
    budget = BodyBudget(small_limit=100, large_limit=1000, small_size=10)

    stalled = [budget.take(0, 10) and budget.take(10, 490) for _ in range(2)]
    third_large = budget.take(0, 10) and budget.take(10, 490)
    small = budget.take(0, 10)

    assert stalled == [True, True]
    assert third_large is False
    assert small is True
    assert (budget.small, budget.large) == (40, 980)
    budget.give_back(500)
    assert (budget.small, budget.large) == (30, 490)


def test_accept_errors_logged_once_per_interval() -> None:
    accept_filter = AcceptErrorFilter(interval=60)

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, "", 0, message, None, None)

    first = accept_filter.filter(record("socket.accept() out of system resource"))
    repeats = [
        accept_filter.filter(record("socket.accept() out of system resource"))
        for _ in range(100)
    ]
    other = accept_filter.filter(record("Task exception was never retrieved"))

    assert first is True
    assert not any(repeats)
    assert accept_filter.dropped == 100
    assert other is True
