"""The simulator over real HTTP, on the loopback interface only.

One lock serialises every call into the simulator (the engine is not thread-safe); modelled
latency and stall faults sleep outside the lock, so a stalled request does not hold up others.
Answers are compressed when the simulator's compression is on (Simulator.handle does it).
Paths under /_sim/ go to the test-control endpoints (control.py); everything else to the
StandX handler.
"""
from __future__ import annotations

import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from .control import Control
from .faults import DROP_HEADER, SLOW_HEADERS_HEADER, STALL_HEADER

if TYPE_CHECKING:
    from .simulator import Simulator

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
CONTROL_PREFIX = "/_sim/"
SLOW_PIECE_BYTES = 4  # slow headers go out this many bytes at a time


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real exchange's clients expect
    server_version = "standx-sim"
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would hold the body ~40 ms

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        status, headers, content = self.server.sim_server.serve(self.command, parts.path, query,
                                                                dict(self.headers.items()), body,
                                                                self.client_address[0])
        if headers.pop(DROP_HEADER, None):
            self.close_connection = True  # no answer at all: the client sees the connection close
            return
        time.sleep(float(headers.pop(STALL_HEADER, 0)))
        slow_s = float(headers.pop(SLOW_HEADERS_HEADER, 0))
        # The head is built here rather than with send_header so that slow_headers can trickle it.
        lines = [f"{self.protocol_version} {status} {HTTPStatus(status).phrase}"]
        lines += [f"{name}: {value}" for name, value in {**headers, "Content-Length": str(len(content))}.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if slow_s:
            self._trickle(head, slow_s)
        else:
            self.wfile.write(head)
        self.wfile.write(content)

    def _trickle(self, data: bytes, seconds: float) -> None:
        """Send data a few bytes at a time spread over `seconds`: every read gets something soon,
        yet the whole takes `seconds` (the slow_headers fault)."""
        pieces = [data[i:i + SLOW_PIECE_BYTES] for i in range(0, len(data), SLOW_PIECE_BYTES)]
        for piece in pieces:
            time.sleep(seconds / len(pieces))
            self.wfile.write(piece)

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class SimServer:
    """Serves a Simulator on http://127.0.0.1:<port> (port 0 = a free port) from a background thread."""

    def __init__(self, sim: "Simulator", host: str = "127.0.0.1", port: int = 0, latency_s: float = 0.0) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ValueError("the simulator serves on the loopback interface only")
        self._sim = sim
        self._control = Control(sim)
        self._address = (host, port)
        self._latency_s = latency_s
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
              body: bytes, client: str) -> tuple[int, dict[str, str], bytes]:
        """One request from the IP address `client` (the socket's peer: the rate limits count
        per IP) through the lock; the latency is slept outside it."""
        if path.startswith(CONTROL_PREFIX):
            with self._lock:
                return self._control.handle(method, path, query, body)
        time.sleep(self._latency_s)
        with self._lock:
            return self._sim.handle(method, path, query, headers, body, client)

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        """Start serving in a daemon thread; returns the base URL."""
        self._httpd = ThreadingHTTPServer(self._address, _RequestHandler)
        self._httpd.daemon_threads = True
        self._httpd.sim_server = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="standx-sim-http", daemon=True)
        self._thread.start()
        log.info("simulator listening on %s", self.url)
        return self.url

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = None
        log.info("simulator stopped")
