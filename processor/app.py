"""Wiring: the broker, the run store and the actors for one process.

With ``REDIS_URL`` set, messages go through Redis and run records live in
Redis, so that worker processes elsewhere do the work. Without it, an
in-process broker and worker run the same actors in this process and run
records are JSON files under ``PROCESSOR_STATE_DIR``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from processor.actors import PipelineActors
from processor.config import Settings
from processor.state import RedisRunStore, Run, RunStore, store_for
from processor.webhooks.actors import WebhookActors

logger = logging.getLogger(__name__)

# Worker threads of the embedded worker. One run's pipeline uses one thread
# at a time, so a few threads leave room for retries and concurrent runs.
EMBEDDED_WORKER_THREADS = 4
EMBEDDED_WORKER_TIMEOUT_MS = 100
EMBEDDED_STOP_TIMEOUT_MS = 10_000


class App:
    """The broker, store and actors built from one ``Settings``.

    On Redis, ``redis_timeout`` bounds each Redis command in seconds, so a
    process that must respond quickly, such as the web server, fails fast
    while Redis is unreachable. Workers leave it unset.
    """

    def __init__(self, settings: Settings, redis_timeout: float | None = None) -> None:
        self.settings = settings
        self.embedded = settings.redis_url is None

        self.broker: dramatiq.Broker
        self.redis: redis.Redis | None = None
        self.store: RunStore
        if settings.redis_url is None:
            self.broker = StubBroker()
            self.store = store_for(settings)
        else:
            self.redis = redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=redis_timeout,
                socket_connect_timeout=redis_timeout,
            )
            self.broker = RedisBroker(client=self.redis)  # type: ignore[no-untyped-call]
            self.store = RedisRunStore(self.redis)

        dramatiq.set_broker(self.broker)
        self.actors = PipelineActors(self.broker, settings, self.store)
        # Webhook deliveries need Redis to record their ids and slots.
        self.webhooks: WebhookActors | None = None
        if self.redis is not None:
            self.webhooks = WebhookActors(
                self.broker, settings, self.store, self.actors, self.redis
            )
        self._worker: dramatiq.Worker | None = None

    def __enter__(self) -> App:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start_embedded_worker(self) -> None:
        """Start a worker in this process; only for the embedded broker."""
        if not self.embedded:
            raise RuntimeError("the embedded worker runs only without REDIS_URL")
        if self._worker is None:
            # A short consumer timeout lets the worker stop within a fraction
            # of a second once the run is over.
            self._worker = dramatiq.Worker(
                self.broker,
                worker_threads=EMBEDDED_WORKER_THREADS,
                worker_timeout=EMBEDDED_WORKER_TIMEOUT_MS,
            )
            self._worker.start()

    def close(self) -> None:
        """Stop the embedded worker, if any, and close the broker."""
        if self._worker is not None:
            # A step stuck in a slow request should not hold the command
            # for dramatiq's default ten minutes once its run has ended.
            self._worker.stop(timeout=EMBEDDED_STOP_TIMEOUT_MS)
            self._worker = None
        self.broker.close()

    def wait(
        self,
        run_id: str,
        *,
        timeout: float | None = None,
        interval: float = 0.2,
        on_change: Callable[[Run], None] | None = None,
        stop: threading.Event | None = None,
    ) -> Run:
        """Block until run ``run_id`` finishes and return its record.

        Raises ``TimeoutError`` after ``timeout`` seconds, and
        ``KeyboardInterrupt`` once ``stop`` is set.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        stop = stop or threading.Event()
        while True:
            if stop.is_set():
                raise KeyboardInterrupt
            run = self.store.get(run_id)
            if run is None:
                raise KeyError(run_id)
            if on_change is not None:
                on_change(run)
            if run.finished:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"run {run_id} is still {run.status} after {timeout:g} seconds"
                )
            stop.wait(interval)
