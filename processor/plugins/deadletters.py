"""Dead-letter lists: the events a plugin failed on, kept for a re-run.

An event goes on its plugin's list when the handler raises anything but
``RetryLater``, or still raises ``RetryLater`` after its last attempt.
``processor dead-letters`` lists the entries and ``processor dead-letters
retry PLUGIN`` hands them to the plugin again, removing each one it handles
and replacing each one that fails again with its new error.

With ``REDIS_URL`` set, the lists are Redis lists shared by every worker;
otherwise they are JSON-lines files under ``PROCESSOR_STATE_DIR``, locked
while written.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

import msgspec

from processor.events import Event

if TYPE_CHECKING:
    # Imported by the caller that builds a RedisDeadLetters; importing redis
    # here would add about 14 MiB to every process that parses a file.
    import redis

KEY_PREFIX = "processor:dead-letters:"
PLUGINS_KEY = "processor:dead-letters"


def utc_now() -> datetime:
    return datetime.now(UTC)


class DeadLetter(msgspec.Struct, kw_only=True):
    """One event a plugin failed on.

    Fields:
        plugin: the plugin's entry point name.
        run_id: the run that handed the event over.
        export_id: the run's export, or ``None`` for a replay.
        event: the event as the plugin received it.
        error: the exception's type and message.
        attempts: how many times the plugin was handed the event.
        failed_at: when the last attempt failed.
    """

    plugin: str
    run_id: str
    export_id: str | None
    event: Event
    error: str
    attempts: int
    failed_at: datetime = msgspec.field(default_factory=utc_now)


class DeadLetterStore(Protocol):
    """The storage of dead-letter lists."""

    def add(self, letter: DeadLetter) -> None:
        """Append ``letter`` to its plugin's list."""

    def plugins(self) -> list[str]:
        """Return the names of the plugins with a list, sorted."""

    def letters(self, plugin: str) -> list[DeadLetter]:
        """Return the plugin's list, oldest first."""

    def remove(self, plugin: str, letters: Sequence[DeadLetter]) -> None:
        """Remove one entry equal to each of ``letters`` from the plugin's list."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DeadLetter)


class FileDeadLetters:
    """Dead-letter lists as ``DIRECTORY/PLUGIN.jsonl`` files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, plugin: str) -> Path:
        # Entry point names are Python identifiers or dotted/dashed names, so
        # they are safe file names; anything else is refused.
        if not plugin or "/" in plugin or plugin.startswith("."):
            raise ValueError(f"plugin name {plugin!r} is not a valid file name")
        return self.directory / f"{plugin}.jsonl"

    @contextlib.contextmanager
    def _locked(self, plugin: str, mode: str) -> Iterator[IO[bytes]]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._path(plugin).open(mode) as file:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX)
            try:
                yield file
            finally:
                fcntl.flock(file.fileno(), fcntl.LOCK_UN)

    def add(self, letter: DeadLetter) -> None:
        with self._locked(letter.plugin, "ab") as file:
            file.write(_encoder.encode(letter) + b"\n")

    def plugins(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(
            path.stem
            for path in self.directory.glob("*.jsonl")
            if path.stat().st_size > 0
        )

    def letters(self, plugin: str) -> list[DeadLetter]:
        path = self._path(plugin)
        if not path.exists():
            return []
        with self._locked(plugin, "rb") as file:
            return [_decoder.decode(line) for line in file if line.strip()]

    def remove(self, plugin: str, letters: Sequence[DeadLetter]) -> None:
        if not letters or not self._path(plugin).exists():
            return
        # The encoding is deterministic, so equal letters have equal lines.
        pending = Counter(_encoder.encode(letter) for letter in letters)
        with self._locked(plugin, "r+b") as file:
            remaining = []
            for line in file:
                body = line.rstrip(b"\n")
                if pending[body] > 0:
                    pending[body] -= 1
                elif body:
                    remaining.append(body + b"\n")
            file.seek(0)
            file.truncate()
            file.writelines(remaining)


class RedisDeadLetters:
    """Dead-letter lists as Redis lists, one key per plugin."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def add(self, letter: DeadLetter) -> None:
        with self.client.pipeline() as pipe:
            pipe.rpush(KEY_PREFIX + letter.plugin, _encoder.encode(letter))
            pipe.sadd(PLUGINS_KEY, letter.plugin)
            pipe.execute()

    def plugins(self) -> list[str]:
        names = [
            name.decode() if isinstance(name, bytes) else str(name)
            for name in self.client.smembers(PLUGINS_KEY)
        ]
        return sorted(name for name in names if self.client.llen(KEY_PREFIX + name))

    def letters(self, plugin: str) -> list[DeadLetter]:
        return [
            _decoder.decode(item)
            for item in self.client.lrange(KEY_PREFIX + plugin, 0, -1)
        ]

    def remove(self, plugin: str, letters: Sequence[DeadLetter]) -> None:
        # The encoding is deterministic, so it matches the stored bytes.
        with self.client.pipeline() as pipe:
            for letter in letters:
                encoded = _encoder.encode(letter)
                pipe.lrem(KEY_PREFIX + plugin, 1, encoded)  # type: ignore[arg-type]
            pipe.execute()


class MemoryDeadLetters:
    """Dead-letter lists in memory, for tests and ``processor.testing``."""

    def __init__(self) -> None:
        self.lists: dict[str, list[DeadLetter]] = {}

    def add(self, letter: DeadLetter) -> None:
        self.lists.setdefault(letter.plugin, []).append(letter)

    def plugins(self) -> list[str]:
        return sorted(name for name, letters in self.lists.items() if letters)

    def letters(self, plugin: str) -> list[DeadLetter]:
        return list(self.lists.get(plugin, []))

    def remove(self, plugin: str, letters: Sequence[DeadLetter]) -> None:
        stored = self.lists.get(plugin, [])
        for letter in letters:
            if letter in stored:
                stored.remove(letter)
