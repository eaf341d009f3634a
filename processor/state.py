"""Run state: one record per run, in Redis or in local files.

A run record contains the run id, the export id, the status, the counts and
the last error. ``RedisRunStore`` keeps records in Redis for workers on a
Redis broker. ``FileRunStore`` keeps them as JSON files for the embedded
mode, so that a later command on the same machine can read them. Both apply
updates atomically: ``update`` reads, changes and writes a record under a
lock (a file lock, or Redis ``WATCH``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast

import msgspec
import redis

from processor.config import Settings
from processor.errors import ConfigurationError
from processor.plugins import Checkpoint, PluginCounts
from processor.processing import Summary

QUEUED = "queued"
EXPORTING = "exporting"
WAITING = "waiting"
PROCESSING = "processing"
SUCCEEDED = "succeeded"
FAILED = "failed"
FINISHED_STATUSES = frozenset({SUCCEEDED, FAILED})

# A waiting run is updated at least once per poll (at most a minute apart by
# default) and a processing run every half second, so a run silent for this
# long has lost its messages.
# NOTE: a run that sits queued this long because no worker is running also
# counts as abandoned, and a second trigger then starts another run.
ABANDONED_AFTER = timedelta(minutes=15)

# How long Redis keeps the link from an export id to its run: a week, which
# outlasts every wait on an export unless PROCESSOR_POLL_DEADLINE is raised
# past it.
EXPORT_LINK_SECONDS = 7 * 24 * 3600
# Runs the file store searches, newest first, for the one with an export id.
EXPORT_SEARCH_LIMIT = 1000


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    """Return a new run id that sorts by creation time.

    The form is ``run_20261204T153012_1a2b3c``: UTC time, then 24 random bits.
    """
    return f"run_{utc_now():%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"


class Run(msgspec.Struct, kw_only=True):
    """The state of one run of the pipeline."""

    run_id: str
    status: str = QUEUED
    collection: str = "events"
    parameters: dict[str, Any] | None = None
    export_id: str | None = None
    export_status: str | None = None
    polls: int = 0
    retries: int = 0
    poll_attempt: int = 0
    redrives: int = 0
    lease: str | None = None
    lease_until: float = 0.0
    created_at: datetime = msgspec.field(default_factory=utc_now)
    updated_at: datetime = msgspec.field(default_factory=utc_now)
    finished_at: datetime | None = None
    events: int = 0
    rejected: int = 0
    rejects_file: str | None = None
    event_types: dict[str, int] = msgspec.field(default_factory=dict)
    plugins: dict[str, PluginCounts] = msgspec.field(default_factory=dict)
    checkpoints: dict[str, Checkpoint] = msgspec.field(default_factory=dict)
    error: str | None = None
    # What started the run, such as a command or a webhook delivery.
    started_by: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the run has succeeded or failed."""
        return self.status in FINISHED_STATUSES

    def in_flight(self) -> bool:
        """Return whether the run is unfinished and was updated recently.

        A run that has not changed for ``ABANDONED_AFTER`` lost its messages
        (its process died, say), so it no longer blocks a new run.
        """
        if self.finished:
            return False
        return utc_now() - self.updated_at < ABANDONED_AFTER

    def claim(self, token: str, seconds: float) -> float:
        """Take the lease for ``seconds`` under ``token``.

        Returns 0 when the lease is taken, or the seconds left on another
        holder's lease. A lease marks the run as being worked on by one copy
        of a step's message, so that a duplicated or redelivered copy does
        not do the same work twice.
        """
        now = time.time()
        if self.lease is not None and self.lease != token and self.lease_until > now:
            return self.lease_until - now
        self.lease = token
        self.lease_until = now + seconds
        return 0.0

    def release(self, token: str) -> None:
        """Give up the lease if ``token`` holds it."""
        if self.lease == token:
            self.lease = None
            self.lease_until = 0.0

    def fail(self, reason: str) -> None:
        """Mark the run failed with ``reason``."""
        self.lease = None
        self.status = FAILED
        self.error = reason
        self.finished_at = utc_now()

    def record_counts(self, summary: Summary) -> None:
        """Copy the event and plugin counts of ``summary`` into the run."""
        self.events = summary.events
        self.rejected = summary.rejected
        self.rejects_file = summary.rejects_file
        self.event_types = summary.event_types
        self.plugins = summary.plugins
        if summary.checkpoints:
            self.checkpoints = summary.checkpoints

    def succeed(self) -> None:
        """Mark the run succeeded."""
        self.lease = None
        self.status = SUCCEEDED
        self.finished_at = utc_now()


class RunNotFound(KeyError):
    """No run has the requested id."""


def flight_key(newsletter_id: str | None, collection: str, parameters: Any) -> str:
    """Return the key that identifies runs doing the same work.

    Two runs for the same newsletter, collection and parameters would ask
    Buttondown for the same export, so only one may be in flight at a time.
    """
    identity = [newsletter_id, collection, parameters]
    return hashlib.sha256(msgspec.json.encode(identity, order="sorted")).hexdigest()


class RunStore(Protocol):
    """Storage for run records."""

    def create(self, run: Run) -> None: ...

    def create_single(self, run: Run, key: str) -> Run:
        """Create ``run`` unless an unfinished run owns ``key``.

        Returns ``run`` itself when it was created, or else the run that
        owns ``key``. When a run with the id of ``run`` exists already, that
        run is returned and nothing changes.
        """
        ...

    def get(self, run_id: str) -> Run | None: ...

    def link_export(self, export_id: str, run_id: str) -> None:
        """Record that run ``run_id`` waits on export ``export_id``."""
        ...

    def run_for_export(self, export_id: str) -> Run | None:
        """Return the run that requested export ``export_id``, or None."""
        ...

    def update(self, run_id: str, change: Callable[[Run], None]) -> Run: ...

    def recent(self, limit: int = 20) -> list[Run]: ...


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Run)
_flight_decoder = msgspec.json.Decoder(dict[str, str])


class FileRunStore:
    """Run records as JSON files in a directory, one file per run."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(
                f"The run directory {directory} cannot be created "
                f"({error.strerror}); set PROCESSOR_STATE_DIR to a writable "
                "directory."
            ) from None

    def create(self, run: Run) -> None:
        with self._locked(run.run_id):
            self._write(run)

    def create_single(self, run: Run, key: str) -> Run:
        flights = self.directory / ".flights.json"
        with self._locked(run.run_id):
            same_id = self.get(run.run_id)
            if same_id is not None:
                return same_id

            owners = (
                _flight_decoder.decode(flights.read_bytes()) if flights.exists() else {}
            )
            existing = self.get(owners.get(key, ""))
            if existing is not None and existing.in_flight():
                return existing

            self._write(run)
            owners[key] = run.run_id
            _write_atomic(flights, _encoder.encode(owners), self.directory)
        return run

    def get(self, run_id: str) -> Run | None:
        if not _valid_run_id(run_id):
            return None
        path = self._path(run_id)
        try:
            return _decoder.decode(path.read_bytes())
        except FileNotFoundError:
            return None

    def update(self, run_id: str, change: Callable[[Run], None]) -> Run:
        with self._locked(run_id):
            run = self.get(run_id)
            if run is None:
                raise RunNotFound(run_id)
            change(run)
            run.updated_at = utc_now()
            self._write(run)
        return run

    def link_export(self, export_id: str, run_id: str) -> None:
        # run_for_export reads the export ids of the run files themselves.
        pass

    def run_for_export(self, export_id: str) -> Run | None:
        for run in self.recent(EXPORT_SEARCH_LIMIT):
            if run.export_id == export_id:
                return run
        return None

    def recent(self, limit: int = 20) -> list[Run]:
        paths = sorted(self.directory.glob("run_*.json"), reverse=True)
        runs = (self.get(path.stem) for path in paths[:limit])
        return [run for run in runs if run is not None]

    def _path(self, run_id: str) -> Path:
        if not _valid_run_id(run_id):
            raise RunNotFound(run_id)
        return self.directory / f"{run_id}.json"

    @contextlib.contextmanager
    def _locked(self, run_id: str) -> Iterator[None]:
        # One lock for the whole directory: updates are a read and a rename,
        # so they queue briefly, and no lock file is left per run.
        self._path(run_id)
        with (self.directory / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, run: Run) -> None:
        _write_atomic(self._path(run.run_id), _encoder.encode(run), self.directory)


class RedisRunStore:
    """Run records as JSON strings in Redis, indexed by creation time."""

    KEY_PREFIX = "processor:run:"
    INDEX_KEY = "processor:runs"
    FLIGHT_PREFIX = "processor:flight:"
    EXPORT_PREFIX = "processor:export:"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def create(self, run: Run) -> None:
        with self.client.pipeline() as pipe:
            pipe.set(self._key(run.run_id), _encoder.encode(run))
            pipe.zadd(self.INDEX_KEY, {run.run_id: run.created_at.timestamp()})
            pipe.execute()

    def create_single(self, run: Run, key: str) -> Run:
        flight = f"{self.FLIGHT_PREFIX}{key}"
        result: list[Run] = []

        def apply(pipe: Any) -> None:
            same_id = pipe.get(self._key(run.run_id))
            if same_id is not None:
                result.append(_decoder.decode(same_id))
                return

            owner = pipe.get(flight)
            raw = pipe.get(self._key(_text(owner))) if owner is not None else None
            existing = _decoder.decode(raw) if raw is not None else None
            if existing is not None and existing.in_flight():
                result.append(existing)
                return

            pipe.multi()
            pipe.set(self._key(run.run_id), _encoder.encode(run))
            pipe.zadd(self.INDEX_KEY, {run.run_id: run.created_at.timestamp()})
            pipe.set(flight, run.run_id)
            result.append(run)

        # WATCH on the flight key makes two triggers at once serialize: the
        # second one's transaction fails, is retried, and finds the first run.
        self.client.transaction(apply, flight, self._key(run.run_id))
        return result[-1]

    def get(self, run_id: str) -> Run | None:
        raw = self.client.get(self._key(run_id))
        if raw is None:
            return None
        return _decoder.decode(raw)

    def update(self, run_id: str, change: Callable[[Run], None]) -> Run:
        key = self._key(run_id)
        updated: list[Run] = []

        def apply(pipe: Any) -> None:
            raw = pipe.get(key)
            if raw is None:
                raise RunNotFound(run_id)
            run = _decoder.decode(raw)
            change(run)
            run.updated_at = utc_now()
            pipe.multi()
            pipe.set(key, _encoder.encode(run))
            updated.append(run)

        self.client.transaction(apply, key)
        return updated[-1]

    def link_export(self, export_id: str, run_id: str) -> None:
        self.client.set(
            f"{self.EXPORT_PREFIX}{export_id}", run_id, ex=EXPORT_LINK_SECONDS
        )

    def run_for_export(self, export_id: str) -> Run | None:
        run_id = self.client.get(f"{self.EXPORT_PREFIX}{export_id}")
        if run_id is None:
            return None
        return self.get(_text(cast(bytes, run_id)))

    def recent(self, limit: int = 20) -> list[Run]:
        run_ids = cast(list[bytes], self.client.zrevrange(self.INDEX_KEY, 0, limit - 1))
        runs = (self.get(_text(run_id)) for run_id in run_ids)
        return [run for run in runs if run is not None]

    def _key(self, run_id: str) -> str:
        return f"{self.KEY_PREFIX}{run_id}"


def _write_atomic(path: Path, data: bytes, directory: Path) -> None:
    # Write to a temporary file and rename it, so a reader never sees a
    # half-written file.
    handle, name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".tmp")
    with os.fdopen(handle, "wb") as file:
        file.write(data)
    os.replace(name, path)


def _valid_run_id(run_id: str) -> bool:
    return run_id.startswith("run_") and "/" not in run_id and os.sep not in run_id


def _text(value: bytes) -> str:
    return value.decode()


def store_for(settings: Settings, redis_timeout: float | None = None) -> RunStore:
    """Return the run store that ``settings`` select: Redis, or local files.

    ``redis_timeout`` bounds each Redis command in seconds.
    """
    if settings.redis_url is None:
        return FileRunStore(settings.state_dir / "runs")
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=redis_timeout,
        socket_connect_timeout=redis_timeout,
    )
    return RedisRunStore(client)
