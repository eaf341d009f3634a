"""Runs scheduled after ``email.sent``: one slot per delay, bursts coalesced.

An ``email.sent`` delivery received at time t requests a run at t + d for
each delay d in ``PROCESSOR_WEBHOOK_RUN_DELAYS``. A request joins the open
slot of its delay while it falls within ``PROCESSOR_WEBHOOK_COALESCE_WINDOW``
of the slot's first request, and the slot is due at the latest time its
requests asked for. So a burst of deliveries yields one run per delay, and
every email still gets a run at least d after its send. A request outside
the window opens a new slot; the older slot keeps its own due time.

The slots live in Redis:

    processor:webhook:open:<delay>     id of the slot that accepts requests
    processor:webhook:slot:<slot id>   the slot as JSON, kept a week once fired
    processor:webhook:due              ids of slots whose run has not started,
                                       scored by due time
    processor:webhook:routed:<id>      marks a delivery as scheduled, with the
                                       ids of the slots it opened

Every change is one Redis transaction, so a request and the firing of the
slot it joins never interleave: the request either joins before the slot
fires or opens a new slot.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from typing import Any, cast

import msgspec
import redis

from processor import state

OPEN_PREFIX = "processor:webhook:open:"
SLOT_PREFIX = "processor:webhook:slot:"
DUE_KEY = "processor:webhook:due"
ROUTED_PREFIX = "processor:webhook:routed:"

# A slot is fired when it is due within this many seconds.
DUE_TOLERANCE = 0.5
# How long a fired slot stays readable, so a redelivered fire message finds
# the run id the slot chose.
FIRED_SLOT_SECONDS = 7 * 24 * 3600


class Slot(msgspec.Struct, kw_only=True):
    """The requests for one run at one delay after ``email.sent``."""

    slot_id: str
    delay: float
    first_due: float
    due: float
    deliveries: int = 1
    # Set when the slot fires: the id chosen for its run, and when.
    run_id: str | None = None
    fired_at: float | None = None


class JoinResult(msgspec.Struct):
    """The outcome of ``Schedule.join`` for one delivery."""

    first_time: bool
    # Slots that need a fire message: those the delivery opened.
    opened: list[Slot] = msgspec.field(default_factory=list)


class FireDecision(msgspec.Struct):
    """The action a fire message takes for a slot: drop, wait, or start a run."""

    action: str  # "drop", "wait" or "start"
    slot: Slot | None = None
    wait: float = 0.0


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Slot)


def format_delay(seconds: float) -> str:
    """Return ``seconds`` in the largest whole unit: ``3600`` becomes ``1h``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


class Schedule:
    """The slots of scheduled runs, in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        delays: Iterable[float],
        window: float,
        routed_seconds: float,
    ) -> None:
        self.client = client
        self.delays = tuple(delays)
        self.window = window
        self.routed_seconds = routed_seconds

    def join(self, delivery_id: str, received_at: float) -> JoinResult:
        """Add an ``email.sent`` request to a slot per delay.

        The result lists the slots that this request opened, which need a
        fire message. For a delivery that was scheduled before, as when a
        worker died before it sent those messages, it lists the slots the
        delivery opened then that have not fired yet.
        """
        routed = f"{ROUTED_PREFIX}{delivery_id}"
        open_keys = [_open_key(delay) for delay in self.delays]
        result = JoinResult(first_time=True)

        def apply(pipe: Any) -> None:
            nonlocal result
            earlier = pipe.get(routed)
            if earlier is not None:
                result = JoinResult(False, self._unfired(pipe, earlier))
                return

            result = JoinResult(first_time=True)
            changed = []
            for delay in self.delays:
                requested = received_at + delay
                slot = _open_slot(pipe, delay)
                if (
                    slot is not None
                    and slot.run_id is None
                    and requested <= slot.first_due + self.window
                ):
                    slot.due = max(slot.due, requested)
                    slot.deliveries += 1
                else:
                    slot = Slot(
                        slot_id=_new_slot_id(delay),
                        delay=delay,
                        first_due=requested,
                        due=requested,
                    )
                    result.opened.append(slot)
                changed.append(slot)

            pipe.multi()
            for slot in changed:
                pipe.set(_slot_key(slot.slot_id), _encoder.encode(slot))
                pipe.zadd(DUE_KEY, {slot.slot_id: slot.due})
            for slot in result.opened:
                pipe.set(_open_key(slot.delay), slot.slot_id)
            opened_ids = " ".join(slot.slot_id for slot in result.opened)
            pipe.set(routed, opened_ids, ex=int(self.routed_seconds))

        self.client.transaction(apply, routed, *open_keys)
        return result

    def _unfired(self, pipe: Any, slot_ids: bytes) -> list[Slot]:
        slots = []
        for slot_id in slot_ids.decode().split():
            raw = pipe.get(_slot_key(slot_id))
            slot = None if raw is None else _decoder.decode(raw)
            if slot is not None and slot.run_id is None:
                slots.append(slot)
        return slots

    def fire(self, slot_id: str, now: float | None = None) -> FireDecision:
        """Close slot ``slot_id`` when it is due, choosing its run id.

        A slot that fired before returns the same run id again, so a
        redelivered fire message starts the same run, not a second one.
        """
        key = _slot_key(slot_id)
        decision = FireDecision("drop")

        def apply(pipe: Any) -> None:
            nonlocal decision
            raw = pipe.get(key)
            if raw is None:
                decision = FireDecision("drop")
                return
            slot = _decoder.decode(raw)
            if slot.run_id is not None:
                decision = FireDecision("start", slot)
                return

            current = time.time() if now is None else now
            if slot.due > current + DUE_TOLERANCE:
                decision = FireDecision("wait", slot, wait=slot.due - current)
                return

            open_key = _open_key(slot.delay)
            pipe.watch(open_key)
            still_open = pipe.get(open_key) == slot_id.encode()
            slot.run_id = state.new_run_id()
            slot.fired_at = current

            pipe.multi()
            pipe.set(key, _encoder.encode(slot), ex=FIRED_SLOT_SECONDS)
            if still_open:
                pipe.delete(open_key)
            decision = FireDecision("start", slot)

        self.client.transaction(apply, key)
        return decision

    def postpone(self, slot_id: str, until: float, now: float | None = None) -> bool:
        """Move the next check of a fired slot to ``until``, if it is due now.

        Returns False when another fire message has already moved it later,
        or the slot's run has started, so that copies of the message for one
        slot stop instead of each checking again forever.
        """
        current = time.time() if now is None else now
        moved = False

        def apply(pipe: Any) -> None:
            nonlocal moved
            score = pipe.zscore(DUE_KEY, slot_id)
            moved = score is not None and score <= current + DUE_TOLERANCE
            if moved:
                pipe.multi()
                pipe.zadd(DUE_KEY, {slot_id: until})

        self.client.transaction(apply, DUE_KEY)
        return moved

    def started(self, slot_id: str) -> None:
        """Record that the run of slot ``slot_id`` exists."""
        self.client.zrem(DUE_KEY, slot_id)

    def pending(self) -> list[Slot]:
        """Return the slots whose run has not started, soonest first."""
        slot_ids = cast(list[bytes], self.client.zrange(DUE_KEY, 0, -1))
        slots = []
        for slot_id in slot_ids:
            raw = self.client.get(_slot_key(slot_id.decode()))
            if raw is not None:
                slots.append(_decoder.decode(raw))
        return slots

    def overdue(self, grace: float) -> list[str]:
        """Return the ids of slots due ``grace`` seconds ago with no run yet."""
        cutoff = time.time() - grace
        slot_ids = cast(list[bytes], self.client.zrangebyscore(DUE_KEY, "-inf", cutoff))
        return [slot_id.decode() for slot_id in slot_ids]


def _open_slot(pipe: Any, delay: float) -> Slot | None:
    slot_id = pipe.get(_open_key(delay))
    if slot_id is None:
        return None
    key = _slot_key(slot_id.decode())
    pipe.watch(key)
    raw = pipe.get(key)
    return None if raw is None else _decoder.decode(raw)


def _new_slot_id(delay: float) -> str:
    """Return an id such as ``slot_1h_20261204T153012_1a2b3c``."""
    opened = state.utc_now()
    return f"slot_{format_delay(delay)}_{opened:%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"


def _open_key(delay: float) -> str:
    return f"{OPEN_PREFIX}{delay:g}"


def _slot_key(slot_id: str) -> str:
    return f"{SLOT_PREFIX}{slot_id}"
