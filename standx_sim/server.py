"""The simulator over real HTTP, on the loopback interface only.

One lock serialises every call into the simulator (the engine is not thread-safe); modelled
latency and stall faults sleep outside the lock, so a stalled request does not hold up others.
Answers are compressed when the simulator's compression is on (Simulator.handle does it).
Paths under /_sim/ go to the test-control endpoints (control.py); everything else to the
StandX handler.

WebSocket streams (streams.py) share the port: a GET of /ws-stream/v1 or /ws-api/v1 with
``Upgrade: websocket`` becomes a socket of its own, its framing done by websockets' Sans-I/O
ServerProtocol and its messages by a StreamSession of ``sim.streams``, on the request's thread.
The handshake is refused with HTTP 429 beyond the per-IP limits (StreamLimits: open sockets,
new ones per rolling minute). Each socket pings every ping_interval_s; a ping unanswered for
pong_timeout_s closes it with 4008, and it is closed normally (1000) after lifetime_s. While a
socket is open a ticker advances the exchange every TICK_S, so prices and fills flow without
REST traffic. stop() closes every socket (1001) before it returns.
"""
from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import CLOSED, OPEN, SEND_EOF
from websockets.server import ServerProtocol

from .control import Control
from .faults import DROP_HEADER, SLOW_HEADERS_HEADER, STALL_HEADER
from .streams import DROP, LIFETIME_REASON, PATHS, PONG_TIMEOUT_CODE, PONG_TIMEOUT_REASON, SocketBudget, StreamSession

if TYPE_CHECKING:
    from .simulator import Simulator

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
CONTROL_PREFIX = "/_sim/"
SLOW_PIECE_BYTES = 4  # slow headers go out this many bytes at a time
TICK_S = 0.05  # while a socket is open, the exchange is advanced this often
CLOSE_TIMEOUT_S = 2.0  # a closing socket waits this long for the client's side of the close
SEND_TIMEOUT_S = 5.0  # a client that reads nothing for this long is cut off
MAX_WAIT_S = 1.0  # a socket looks at its timers at least this often
SILENCE_POLL_S = 0.05  # and this often during a silence fault (its end wakes nobody)
STOP_WAIT_S = 3.0  # stop() waits this long for the sockets to close before cutting them
SHUTDOWN_CLOSE = (1001, "server shutting down")
RECV_BYTES = 65536


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real exchange's clients expect
    server_version = "standx-sim"
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would hold the body ~40 ms

    def do_GET(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.close_connection = True  # after a WebSocket, the connection is over
            self.server.sim_server.serve_socket(self)
            return
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    do_PUT = do_DELETE = do_PATCH = do_POST

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


class _ServedSocket:
    """One WebSocket of the server, run on its request's thread: the client's text frames go to
    its StreamSession (under the server's lock), the session's frames go out, pings, pong
    timeout and lifetime are kept here on the monotonic clock, and faults end it as the session
    asks (session.ending)."""

    def __init__(self, server: "SimServer", sock: socket.socket, protocol: ServerProtocol,
                 session: StreamSession) -> None:
        self.session = session
        self._server = server
        self._hub = server.sim.streams
        self._sock = sock
        self._protocol = protocol
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._partial: bytes | None = None  # a fragmented text message so far
        self._opened = self._last_ping = time.monotonic()
        self._unanswered_since: float | None = None  # when the oldest unanswered ping went out
        self._closing_since: float | None = None
        session.on_output = self.wake

    def wake(self) -> None:
        """Something to send, or a fault to act on: the socket's loop looks now."""
        try:
            self._wake_w.send(b"\0")
        except OSError:  # a wake-up is pending already (buffer full), or the socket is gone
            pass

    def cut(self) -> None:
        """End at once from another thread (the server's stop, when a close takes too long)."""
        self.session.end(DROP)

    def run(self, received: bytes) -> None:
        """Serve until the connection is over; `received`: bytes read past the handshake."""
        try:
            if received:
                self._receive(received)
            while self._turn():
                pass
        except OSError as e:  # reset by the client, or a send that timed out
            log.debug("stream socket of %s ended: %s", self.session.client, e)
        finally:
            self._wake_r.close()
            self._wake_w.close()

    def _turn(self) -> bool:
        """Send, keep alive, close when asked, then wait for something to happen; False once
        the connection is over."""
        protocol, now = self._protocol, time.monotonic()
        ending, silent = self.session.ending, self._hub.silenced()
        if ending == DROP:
            self._reset()
            return False
        if silent:  # nothing is pinged or read in a silence: the pong timeout counts from after it
            self._unanswered_since = None
        if protocol.state is OPEN and not silent:
            self._send_queued()
            self._keep_alive(now)
        if protocol.state is OPEN and ending is not None:
            protocol.send_close(*ending)
        self._flush()
        if protocol.state is CLOSED:
            return False
        if protocol.close_expected():
            if self._closing_since is None:
                self._closing_since = now
            elif now - self._closing_since >= CLOSE_TIMEOUT_S:
                return False  # the client never finished the close: the connection ends here
        self._wait(now, silent)
        return True

    def _send_queued(self) -> None:
        outbox = self.session.outbox
        while outbox:
            self._protocol.send_text(outbox.popleft().text.encode())

    def _keep_alive(self, now: float) -> None:
        """Ping on time; close on a pong overdue or at the end of the socket's lifetime."""
        limits = self._hub.limits
        if self._unanswered_since is not None and now - self._unanswered_since >= limits.pong_timeout_s:
            log.info("stream socket of %s: no pong for %.0f s, closing", self.session.client, limits.pong_timeout_s)
            self._protocol.send_close(PONG_TIMEOUT_CODE, PONG_TIMEOUT_REASON)
        elif now - self._opened >= limits.lifetime_s:
            log.info("stream socket of %s: lifetime of %.0f s reached, closing", self.session.client,
                     limits.lifetime_s)
            self._protocol.send_close(1000, LIFETIME_REASON)
        elif now - self._last_ping >= limits.ping_interval_s:
            self._protocol.send_ping(b"")
            self._last_ping = now
            if self._unanswered_since is None:
                self._unanswered_since = now

    def _flush(self) -> None:
        for data in self._protocol.data_to_send():
            if data == SEND_EOF:
                self._sock.shutdown(socket.SHUT_WR)
            else:
                self._sock.sendall(data)

    def _wait(self, now: float, silent: bool) -> None:
        """Until the next timer, a wake-up, or (unless silenced) the client sends something."""
        limits = self._hub.limits
        deadlines = [self._last_ping + limits.ping_interval_s, self._opened + limits.lifetime_s]
        if self._unanswered_since is not None:
            deadlines.append(self._unanswered_since + limits.pong_timeout_s)
        if self._closing_since is not None:
            deadlines.append(self._closing_since + CLOSE_TIMEOUT_S)
        timeout = min(max(min(deadlines) - now, 0.0), SILENCE_POLL_S if silent else MAX_WAIT_S)
        watched = [self._wake_r] if silent else [self._sock, self._wake_r]
        readable, _, _ = select.select(watched, [], [], timeout)
        if self._wake_r in readable:
            self._wake_r.recv(RECV_BYTES)
        if self._sock in readable:
            data = self._sock.recv(RECV_BYTES)
            if data:
                self._receive(data)
            else:
                self._protocol.receive_eof()

    def _receive(self, data: bytes) -> None:
        self._protocol.receive_data(data)
        for frame in self._protocol.events_received():
            if frame.opcode is Opcode.PONG:
                self._unanswered_since = None
            text = self._text_of(frame)
            if text is not None:
                with self._server.lock:
                    self.session.receive(text)

    def _text_of(self, frame: Frame) -> str | None:
        """The text of a whole text message once its last fragment is in, else None."""
        if frame.opcode is Opcode.TEXT:
            self._partial = frame.data
        elif frame.opcode is Opcode.CONT and self._partial is not None:
            self._partial += frame.data
        else:
            return None  # control frames; binary messages are not part of the contract
        if not frame.fin:
            return None
        text, self._partial = self._partial.decode("utf-8", "replace"), None
        return text

    def _reset(self) -> None:
        """The drop fault: the TCP connection is reset, no close frame."""
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._sock.close()


class SimServer:
    """Serves a Simulator on http://127.0.0.1:<port> (port 0 = a free port) from a background thread."""

    def __init__(self, sim: "Simulator", host: str = "127.0.0.1", port: int = 0, latency_s: float = 0.0) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ValueError("the simulator serves on the loopback interface only")
        self._sim = sim
        self._control = Control(sim)
        self._address = (host, port)
        self._latency_s = latency_s
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._budget = SocketBudget()
        self._sockets: set[_ServedSocket] = set()
        self._sockets_closed = threading.Condition(self.lock)
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None

    @property
    def sim(self) -> "Simulator":
        return self._sim

    def serve(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
              body: bytes, client: str) -> tuple[int, dict[str, str], bytes]:
        """One request from the IP address `client` (the socket's peer: the rate limits count
        per IP) through the lock; the latency is slept outside it."""
        if path.startswith(CONTROL_PREFIX):
            with self.lock:
                return self._control.handle(method, path, query, body)
        time.sleep(self._latency_s)
        with self.lock:
            return self._sim.handle(method, path, query, headers, body, client)

    def serve_socket(self, handler: BaseHTTPRequestHandler) -> None:
        """A WebSocket handshake on this handler's connection, then the socket until it ends."""
        path, client = urlsplit(handler.path).path, handler.client_address[0]
        handshake = ServerProtocol()  # the request is already parsed: this one only answers it
        with self.lock:
            refusal = self._refusal(path, client)
        admitted = refusal is None
        if refusal is not None:
            response = handshake.reject(*refusal)
        else:
            response = handshake.accept(Request(handler.path, Headers(handler.headers.items())))
        handshake.send_response(response)
        sock = handler.connection
        try:
            for data in handshake.data_to_send():
                if data != SEND_EOF:
                    sock.sendall(data)
            if response.status_code == 101:  # frames from here on, with no extension negotiated
                self._run_socket(sock, ServerProtocol(state=OPEN), path, client, self._read_ahead(handler))
        except OSError as e:
            log.debug("stream handshake of %s failed: %s", client, e)
        finally:
            if admitted:
                with self.lock:
                    self._budget.release(client)

    def _refusal(self, path: str, client: str) -> tuple[HTTPStatus, str] | None:
        """Why a handshake is refused (status, text), or None when the socket is admitted (and
        counted against the client's limits)."""
        if path not in PATHS:
            return HTTPStatus.NOT_FOUND, "not found\n"
        if self._stopping.is_set():
            return HTTPStatus.SERVICE_UNAVAILABLE, "server shutting down\n"
        if not self._budget.admit(client, time.monotonic(), self._sim.streams.limits):
            log.info("stream handshake of %s refused: over the connection limits", client)
            return HTTPStatus.TOO_MANY_REQUESTS, "too many connections\n"
        return None

    @staticmethod
    def _read_ahead(handler: BaseHTTPRequestHandler) -> bytes:
        """What the request's buffered reader already holds past the handshake (a client may
        send frames before it reads the answer); the socket is read directly from now on."""
        sock = handler.connection
        sock.settimeout(0)
        try:
            return handler.rfile.peek(0)
        finally:
            sock.settimeout(SEND_TIMEOUT_S)

    def _run_socket(self, sock: socket.socket, protocol: ServerProtocol, path: str, client: str,
                    received: bytes) -> None:
        with self.lock:
            session = self._sim.streams.open(path, client)
            served = _ServedSocket(self, sock, protocol, session)
            self._sockets.add(served)
        log.info("stream socket open: %s from %s", path, client)
        try:
            served.run(received)
        finally:
            with self.lock:
                self._sim.streams.close(session)
                self._sockets.discard(served)
                self._sockets_closed.notify_all()
            log.info("stream socket closed: %s from %s", path, client)

    def _tick(self) -> None:
        """While a socket is open, advance the exchange so that its events reach the sockets."""
        while not self._stopping.wait(TICK_S):
            if self._sockets:
                with self.lock:
                    self._sim.exchange.advance()

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
        self._stopping.clear()
        self._ticker = threading.Thread(target=self._tick, name="standx-sim-ticker", daemon=True)
        self._ticker.start()
        log.info("simulator listening on %s", self.url)
        return self.url

    def stop(self) -> None:
        """Stop accepting, close every stream socket (1001; cut after STOP_WAIT_S), stop serving."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._close_sockets()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._ticker.join(timeout=5)
        self._httpd = None
        log.info("simulator stopped")

    def _close_sockets(self) -> None:
        deadline = time.monotonic() + STOP_WAIT_S
        with self.lock:
            for served in self._sockets:
                served.session.end(SHUTDOWN_CLOSE)
            while self._sockets and self._sockets_closed.wait(max(deadline - time.monotonic(), 0)):
                pass
            for served in self._sockets:  # the clients did not finish the close in time
                served.cut()
            while self._sockets and self._sockets_closed.wait(1.0):
                pass
