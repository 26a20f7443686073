"""A real HTTP server on 127.0.0.1 that answers from a script, for tests where urllib3 must really run."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted answer, sent after ``delay`` s; ``chunks`` are sent chunked, ``chunk_delay`` s apart."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] | Sequence[tuple[str, str]] = field(default_factory=dict)
    chunks: Sequence[bytes] = ()
    chunk_delay: float = 0.0
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    """A request as the server saw it (header names lower-cased), with the monotonic time it arrived.

    ``client_port`` tells connections apart: requests on one kept-alive connection share it.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    client_port: int = 0


def completion(content: str = "hello") -> Reply:
    """A 200 carrying an OpenAI-style chat completion whose text is ``content``."""
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }
    return Reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})


def rate_limited(headers: dict[str, str] | None = None, message: str = "Rate limit reached") -> Reply:
    """A 429 with an OpenAI-style error body."""
    body = {"error": {"message": message, "type": "requests", "code": "rate_limit_exceeded"}}
    return Reply(429, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})})


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a test's timeout) is expected, not an error to print."""


class ScriptedServer:
    """Answers the n-th request with ``script[n]``, repeating the last reply once the script runs out.

    With ``tls``, a server-side SSL context, it speaks HTTPS.
    """

    def __init__(self, script: Sequence[Reply], tls: ssl.SSLContext | None = None) -> None:
        self.script = list(script)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), self._handler_class())
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def _next_reply(self, received: Received) -> Reply:
        with self._lock:
            self.received.append(received)
            return self.script[min(len(self.received), len(self.script)) - 1]

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                reply = server._next_reply(
                    Received(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        time.monotonic(),
                        self.client_address[1],
                    )
                )
                time.sleep(reply.delay)
                self.send_response(reply.status)
                headers = reply.headers.items() if isinstance(reply.headers, dict) else reply.headers
                for name, value in headers:
                    self.send_header(name, value)
                if reply.chunks:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in reply.chunks:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                        time.sleep(reply.chunk_delay)
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815 - http.server names

        return Handler

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def start(self) -> ScriptedServer:
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextmanager
def scripted_server(*script: Reply, tls: ssl.SSLContext | None = None) -> Iterator[ScriptedServer]:
    """Run a :class:`ScriptedServer` for the ``with`` block."""
    server = ScriptedServer(script, tls).start()
    try:
        yield server
    finally:
        server.stop()
