"""An answer that trickles in must not hold a request (or a stop) beyond its time limit."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import standx_auth
from standx_auth import StandXAuth, StandXError, UnknownOutcomeError


class TricklingHandler(BaseHTTPRequestHandler):
    """Sends the headers at once, then the body one byte every 0.1 s; on /slow_headers/...,
    the status line and headers themselves one byte every 0.1 s."""

    def do_GET(self) -> None:
        self._trickle()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._trickle()

    def _trickle(self) -> None:
        body = b'{"code": 0, "message": "success", "padding": "' + b"x" * 100 + b'"}'
        if self.path.startswith("/slow_headers/"):
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"x" * 200
                    + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            self._dribble(head)
            self._dribble(body, 0.0)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._dribble(body)

    def _dribble(self, data: bytes, pause_s: float = 0.1) -> None:
        try:
            for byte in data:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def trickling_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), TricklingHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(params=["body", "headers"])
def auth(request, trickling_url, monkeypatch):
    """A client already holding a token and a signing key (no login goes out), whose server
    trickles in the answer's body, or its status line and headers."""
    monkeypatch.setattr(standx_auth, "REQUEST_TOTAL_S", 0.5)
    perps_url = trickling_url + ("/slow_headers" if request.param == "headers" else "")
    client = StandXAuth("0x" + "11" * 32, auth_base_url=trickling_url, perps_base_url=perps_url)
    client._token, client._token_renew_at, client._token_expires_at = "test-token", float("inf"), float("inf")
    client._signing_key = standx_auth.SigningKey.generate()
    return client


def test_a_read_that_trickles_in_fails_after_the_total_limit(auth):
    started = time.monotonic()
    with pytest.raises(StandXError, match="ReadTimeout"):
        auth.make_api_call("/api/query_positions")
    assert time.monotonic() - started < 3  # 3 attempts of ~0.5 s, not 3 x 10 s or more of trickle


def test_an_order_whose_answer_trickles_in_has_an_unknown_outcome_within_the_limit(auth):
    started = time.monotonic()
    with pytest.raises(UnknownOutcomeError):
        auth.make_api_call("/api/new_order", method="POST", data={"symbol": "BTC-USD"})
    assert time.monotonic() - started < 1.5


def test_a_stop_deadline_cuts_a_trickling_answer_short(auth, monkeypatch):
    monkeypatch.setattr(standx_auth, "REQUEST_TOTAL_S", 60.0)
    auth.deadline = time.monotonic() + 0.5
    started = time.monotonic()
    with pytest.raises(StandXError):
        auth.make_api_call("/api/query_positions")
    assert time.monotonic() - started < 2
