"""A tiny HTTP server on 127.0.0.1 that returns canned responses by path."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Canned:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(
        default_factory=lambda: {"Content-Type": "application/json"}
    )


@dataclass
class StubServer:
    url: str
    routes: dict[str, Canned]
    requests: list[tuple[str, str, dict[str, str]]]


@contextmanager
def serve(routes: dict[str, Canned]) -> Iterator[StubServer]:
    """Serve ``routes`` (path with query to response) until the block ends."""
    seen: list[tuple[str, str, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer()

        def _answer(self) -> None:
            seen.append((self.command, self.path, dict(self.headers)))
            canned = routes.get(
                self.path, Canned(status=404, body=b'{"detail": "Not found."}')
            )
            self.send_response(canned.status)
            for name, value in canned.headers.items():
                self.send_header(name, value)
            if "Content-Length" not in canned.headers:
                self.send_header("Content-Length", str(len(canned.body)))
            self.end_headers()
            self.wfile.write(canned.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield StubServer(f"http://127.0.0.1:{server.server_address[1]}", routes, seen)
    finally:
        server.shutdown()
        server.server_close()
