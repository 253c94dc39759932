"""Loopback listeners standing for internal services: a tiny HTTP server and a raw TCP
service, each on 127.0.0.1 in a thread, counting what reached them.

    with http_listener({"/secret": (200, {}, b"internal")}) as web: web.url("/secret")
    with tcp_listener() as tcp: tcp.port, tcp.accepted
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = tuple[int, dict[str, str], bytes]
"""status, headers, body"""


@dataclass
class HttpListener:
    """An HTTP server on 127.0.0.1: `routes` by path, 404 elsewhere; `hits` by path."""

    port: int = 0
    routes: dict[str, Route] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://{self.host}{path}"


@contextmanager
def http_listener(routes: dict[str, Route] | None = None) -> Iterator[HttpListener]:
    """A running HttpListener; routes may be added to `.routes` while it runs."""
    listener = HttpListener(routes=dict(routes or {}))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                listener.hits[self.path] += 1
            status, headers, body = listener.routes.get(self.path, (404, {}, b"not found"))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    listener.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class TcpListener:
    """A non-HTTP service on 127.0.0.1 (it greets like SSH and hangs up); `accepted` counts
    connections."""

    port: int = 0
    accepted: int = 0


@contextmanager
def tcp_listener() -> Iterator[TcpListener]:
    listener = TcpListener()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.05)
    listener.port = sock.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            listener.accepted += 1
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()
