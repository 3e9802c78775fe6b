"""The simulator's WebSocket streams (standx_sim/streams.py): served on the REST port over real
sockets on 127.0.0.1, and carried in virtual time by VirtualFeed for the backtest."""
from __future__ import annotations

import json
import socket
import time
import uuid
from datetime import datetime
from decimal import Decimal

import pytest
import requests
from eth_account import Account
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from standx_sim import Simulator, SyntheticMarket, VirtualClock
from standx_sim.exchange import CancelDone, OrderChange
from standx_sim.streams import (API_PATH, LIFETIME_REASON, MARKET_PATH, PONG_TIMEOUT_CODE, PONG_TIMEOUT_REASON,
                                VirtualFeed)
from tests.sim_helpers import (BASE_URL, START_TS, SimClient, compact, flat_sim, in_process_client,
                               served_quiet_sim)

TIMEOUT_S = 5.0
SYMBOL = "BTC-USD"
QUIET_BID, QUIET_ASK = Decimal("94999.9"), Decimal("95000.1")
FAST_PINGS = {"ping_interval_s": 0.05}


def subscribe(channel: str, symbol: str = SYMBOL) -> str:
    return json.dumps({"subscribe": {"channel": channel, "symbol": symbol}})


def auth(token: str, *channels: str) -> str:
    request = {"token": token}
    if channels:
        request["streams"] = [{"channel": c} for c in channels]
    return json.dumps({"auth": request})


def login_request(token: str, session_id: str, request_id: str = "login-1") -> str:
    return json.dumps({"session_id": session_id, "request_id": request_id, "method": "auth:login",
                       "params": json.dumps({"token": token})})


def next_frame(ws: ClientConnection, channel: str | None = None) -> dict:
    """The next frame from the server (of `channel`, skipping others), within TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        frame = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
        if channel is None or frame.get("channel") == channel:
            return frame


def closed_by_server(ws: ClientConnection) -> ConnectionClosedOK | ConnectionClosedError:
    """The exception a read raises once the server ended the connection (frames before it skipped)."""
    deadline = time.monotonic() + TIMEOUT_S
    with pytest.raises((ConnectionClosedOK, ConnectionClosedError)) as closed:
        while True:
            ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
    return closed.value


def poll(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Served:
    """A quiet market served on a free loopback port: it moves only when a test moves it."""

    def __init__(self) -> None:
        self.sim, self.server, self.url = served_quiet_sim()
        self.ws_url = self.url.replace("http", "ws", 1)
        self.http = requests.Session()

    def connect(self, path: str = MARKET_PATH, **kwargs) -> ClientConnection:
        return connect(self.ws_url + path, open_timeout=TIMEOUT_S, close_timeout=1, **kwargs)

    def client(self) -> SimClient:
        client = SimClient(self.http, self.sim.clock, self.url)
        client.login()
        return client

    def control(self, path: str, payload: dict | None = None) -> dict:
        if payload is None:
            response = self.http.get(f"{self.url}/_sim/{path}", timeout=TIMEOUT_S)
        else:
            response = self.http.post(f"{self.url}/_sim/{path}", data=compact(payload), timeout=TIMEOUT_S)
        assert response.status_code == 200, response.text
        return response.json()

    def open_sockets(self) -> int:
        return len(self.control("streams")["sockets"])

    def stop(self) -> None:
        self.http.close()
        self.server.stop()


@pytest.fixture
def served():
    served = Served()
    yield served
    served.stop()


class RawClient:
    """A WebSocket client on websockets' Sans-I/O ClientProtocol that sees every frame, pings
    included, and answers pings only when asked to (the library's clients always do)."""

    def __init__(self, url: str, answer_pings: bool = True) -> None:
        uri = parse_uri(url)
        self.answer_pings = answer_pings
        self.frames: list[Frame] = []
        self.protocol = ClientProtocol(uri)
        self.sock = socket.create_connection((uri.host, uri.port), timeout=TIMEOUT_S)
        self.protocol.send_request(self.protocol.connect())
        self._write(self.protocol.data_to_send())
        self.response: Response | None = None
        deadline = time.monotonic() + TIMEOUT_S
        while self.response is None and time.monotonic() < deadline:
            self._read(deadline)

    def send(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self._write(self.protocol.data_to_send())

    def read_until(self, condition, what: str) -> None:
        """Read until condition(frames) holds (within TIMEOUT_S)."""
        deadline = time.monotonic() + TIMEOUT_S
        while not condition(self.frames):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self._read(deadline)

    def read_for(self, seconds: float) -> list[Frame]:
        """Every frame received over the next `seconds` (until the server closes the connection)."""
        start, deadline = len(self.frames), time.monotonic() + seconds
        while time.monotonic() < deadline and not self.protocol.reader.eof:
            self._read(deadline)
        return self.frames[start:]

    def pings(self) -> int:
        return sum(f.opcode is Opcode.PING for f in self.frames)

    def texts(self) -> list[dict]:
        return [json.loads(f.data) for f in self.frames if f.opcode is Opcode.TEXT]

    def close_frame(self) -> Close | None:
        return next((Close.parse(f.data) for f in self.frames if f.opcode is Opcode.CLOSE), None)

    def close(self) -> None:
        self.sock.close()

    def _read(self, deadline: float) -> None:
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self.response = event
            else:
                self.frames.append(event)
        pending = self.protocol.data_to_send()  # pongs, a close reply
        if self.answer_pings or self.protocol.close_rcvd is not None:
            self._write(pending)

    def _write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            if chunk:
                self.sock.sendall(chunk)


def order_with_session(client: SimClient, session_id: str, path: str = "/api/new_order", **fields) -> str:
    """A signed REST order request carrying x-session-id; its x-request-id."""
    payload = fields.pop("payload", None) or client.order_payload(**fields)
    body = compact(payload)
    headers = {**client.auth_headers(), **client.signature_headers(body), "x-session-id": session_id}
    response = client.http.post(f"{client.base}{path}", data=body, headers=headers, timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    return headers["x-request-id"]


# ---- the market stream, served ------------------------------------------------------------------

def test_a_price_subscription_gets_the_snapshot_then_each_mark_move(served):
    with served.connect() as ws:
        ws.send(subscribe("price"))
        snapshot = next_frame(ws)
        assert (snapshot["seq"], snapshot["channel"], snapshot["symbol"]) == (1, "price", SYMBOL)
        data = snapshot["data"]
        assert (data["base"], data["quote"], data["mark_price"], data["index_price"], data["last_price"]) == \
               ("BTC", "DUSD", "95000.0", "95000.0", None)
        assert data["spread"] == [str(QUIET_BID), str(QUIET_ASK)] and data["mid_price"] == "95000.0"
        datetime.fromisoformat(data["time"].replace("Z", "+00:00"))
        served.control("price", {"shift_bps": 5})
        moved = next_frame(ws)
        assert moved["seq"] == 2 and moved["data"]["mark_price"] == "95047.5"


def test_depth_book_gets_the_best_level_with_sizes_and_public_trade_the_prints(served):
    with served.connect() as ws:
        ws.send(subscribe("depth_book"))
        book = next_frame(ws)["data"]
        assert book["bids"][0][0] == str(QUIET_BID) and book["asks"][0][0] == str(QUIET_ASK)
        assert Decimal(book["bids"][0][1]) > 0 and book["symbol"] == SYMBOL
        ws.send(subscribe("public_trade"))
        served.control("trade", {"price": "95000.1", "qty": "0.0123", "taker_side": "buy"})
        trade = next_frame(ws, "public_trade")
        assert trade["symbol"] == SYMBOL
        assert {k: trade["data"][k] for k in ("price", "qty", "taker_side", "symbol")} == \
               {"price": "95000.1", "qty": "0.0123", "taker_side": "buy", "symbol": SYMBOL}


@pytest.mark.parametrize("request_text", [
    subscribe("candles"), subscribe("price", "ETH-USD"), subscribe("price", "DOGE-USD"), "not json", "[1, 2]",
    json.dumps({"subscribe": {"channel": "price"}}), json.dumps({"auth": {"streams": []}}),
    auth("token", "orders"),
])
def test_a_bad_request_is_answered_400_and_the_socket_kept(served, request_text):
    with served.connect() as ws:
        ws.send(request_text)
        assert next_frame(ws) == {"code": 400, "message": "invalid request payload"}
        ws.send(subscribe("price"))
        assert next_frame(ws)["channel"] == "price"


def test_auth_brings_our_order_position_and_balance_on_a_fill(served):
    client = served.client()
    with served.connect() as ws:
        ws.send(auth(client.token, "order", "position", "balance"))
        assert next_frame(ws) == {"seq": 1, "channel": "auth", "data": {"code": 200, "msg": "success"}}
        assert client.new_order(cl_ord_id="fill-me", price="94990.0").status_code == 200
        resting = next_frame(ws, "order")["data"]
        assert (resting["cl_ord_id"], resting["status"], resting["qty"]) == ("fill-me", "new", "0.0010")
        assert "symbol" not in next_frame(ws, "balance")
        with served.server.lock:
            served.sim.exchange.fill_resting(client.address, "fill-me", Decimal("0.0004"))
        position, partial, balance = next_frame(ws), next_frame(ws), next_frame(ws)
        assert [f["channel"] for f in (position, partial, balance)] == ["position", "order", "balance"]
        assert [f["seq"] for f in (partial, balance)] == [position["seq"] + 1, position["seq"] + 2]
        assert position["data"]["qty"] == "0.0004"
        assert (partial["data"]["status"], partial["data"]["fill_qty"]) == ("partially_filled", "0.0004")
        assert set(balance["data"]) == {"account_type", "token", "free", "locked", "total", "occupied"}
        assert Decimal(balance["data"]["occupied"]) > 0 and balance["data"]["token"] == "DUSD"


def test_user_channels_carry_only_the_authenticated_account(served):
    ours, theirs = served.client(), served.client()
    with served.connect() as ws:
        ws.send(auth(ours.token, "order"))
        next_frame(ws, "auth")
        assert theirs.new_order(cl_ord_id="not-ours").status_code == 200
        assert ours.new_order(cl_ord_id="ours").status_code == 200
        assert next_frame(ws, "order")["data"]["cl_ord_id"] == "ours"


def test_only_the_user_channels_asked_for_come(served):
    client = served.client()
    with served.connect() as ws:
        ws.send(auth(client.token, "balance"))
        next_frame(ws, "auth")
        client.new_order(cl_ord_id="b")
        assert next_frame(ws)["channel"] == "balance"


def test_a_bad_or_expired_token_is_refused_and_brings_no_user_data(served):
    client = served.client()
    with served.connect() as ws:
        ws.send(auth("not-a-token"))
        assert next_frame(ws)["data"] == {"code": 401, "msg": "invalid token"}
        served.control("expire_tokens", {})
        ws.send(auth(client.token))
        assert next_frame(ws)["data"] == {"code": 401, "msg": "invalid token"}
        ws.send(subscribe("price"))
        next_frame(ws, "price")
        client.login()
        client.new_order(cl_ord_id="unseen")
        served.control("price", {"shift_bps": 1})
        assert next_frame(ws)["channel"] == "price"  # the order's frames never came before it


def test_auth_again_with_another_token_follows_the_new_account(served):
    first, second = served.client(), served.client()
    with served.connect() as ws:
        ws.send(auth(first.token, "order"))
        next_frame(ws, "auth")
        ws.send(auth(second.token, "order"))
        assert next_frame(ws, "auth")["data"]["code"] == 200
        first.new_order(cl_ord_id="first")
        second.new_order(cl_ord_id="second")
        assert next_frame(ws, "order")["data"]["cl_ord_id"] == "second"


# ---- the order response stream, served ------------------------------------------------------------

def test_ws_api_login_then_an_alo_rejection_is_pushed_with_the_rest_request_id(served):
    client = served.client()
    session_id = str(uuid.uuid4())
    with served.connect(API_PATH) as ws:
        ws.send(login_request(client.token, session_id))
        assert next_frame(ws) == {"code": 0, "message": "success", "request_id": "login-1"}
        request_id = order_with_session(client, session_id, price=str(QUIET_ASK))  # a buy at the ask crosses
        assert next_frame(ws) == {"code": 0, "status": "accepted", "request_id": request_id}
        assert next_frame(ws) == {"code": 400, "message": "alo order rejected", "request_id": request_id}
        resting_id = order_with_session(client, session_id, cl_ord_id="rests")
        assert next_frame(ws)["status"] == "accepted"
        assert next_frame(ws) == {"code": 0, "message": "success", "request_id": resting_id}
        cancel_id = order_with_session(client, session_id, path="/api/cancel_order", payload={"cl_ord_id": "rests"})
        assert next_frame(ws) == {"code": 0, "status": "accepted", "request_id": cancel_id}
        assert next_frame(ws) == {"code": 0, "message": "success", "request_id": cancel_id}


def test_ws_api_refuses_a_bad_token_a_malformed_envelope_and_other_methods(served):
    with served.connect(API_PATH) as ws:
        ws.send(login_request("nope", "s-1", "r-1"))
        assert next_frame(ws) == {"code": 401, "message": "invalid token", "request_id": "r-1"}
        ws.send(json.dumps({"session_id": "s-1", "request_id": "r-2", "method": "auth:login",
                            "params": {"token": "not a string"}}))
        assert next_frame(ws) == {"code": 400, "message": "invalid request payload", "request_id": "r-2"}
        ws.send(json.dumps({"session_id": "s-1", "request_id": "r-3", "method": "order:new", "params": "{}"}))
        assert next_frame(ws) == {"code": 400, "message": "unsupported method", "request_id": "r-3"}
        ws.send("garbage")
        assert next_frame(ws) == {"code": 400, "message": "invalid request payload", "request_id": None}


def test_outcomes_go_only_to_a_session_of_the_same_account(served):
    ours, theirs = served.client(), served.client()
    with served.connect(API_PATH) as ws:
        ws.send(login_request(theirs.token, "their-session"))
        next_frame(ws)
        order_with_session(ours, "their-session")
        order_with_session(ours, "no-such-session")
        mine = order_with_session(theirs, "their-session")
        assert next_frame(ws) == {"code": 0, "status": "accepted", "request_id": mine}


# ---- pings, lifetime, limits ---------------------------------------------------------------------

def test_the_server_pings_on_its_interval(served):
    with served.server.lock:
        served.sim.streams.set_limits(**FAST_PINGS)
    client = RawClient(served.ws_url + MARKET_PATH)
    try:
        client.read_until(lambda frames: client.pings() >= 3, "three pings")
        assert client.close_frame() is None
    finally:
        client.close()


def test_a_client_that_answers_pings_is_kept_past_the_pong_timeout(served):
    with served.server.lock:
        served.sim.streams.set_limits(ping_interval_s=0.02, pong_timeout_s=0.1)
    client = RawClient(served.ws_url + MARKET_PATH)
    try:
        client.read_until(lambda frames: client.pings() >= 15, "pings over several pong timeouts")
        assert client.close_frame() is None
    finally:
        client.close()


def test_no_pong_within_the_timeout_closes_with_4008(served):
    with served.server.lock:
        served.sim.streams.set_limits(ping_interval_s=0.05, pong_timeout_s=0.2)
    client = RawClient(served.ws_url + MARKET_PATH, answer_pings=False)
    try:
        client.read_until(lambda frames: client.close_frame() is not None, "the close")
        assert (client.close_frame().code, client.close_frame().reason) == (PONG_TIMEOUT_CODE, PONG_TIMEOUT_REASON)
    finally:
        client.close()


def test_a_socket_is_closed_normally_at_the_end_of_its_lifetime(served):
    with served.server.lock:
        served.sim.streams.set_limits(lifetime_s=0.2)
    with served.connect() as ws:
        closed = closed_by_server(ws)
    assert (closed.rcvd.code, closed.rcvd.reason) == (1000, LIFETIME_REASON)


def test_over_the_open_sockets_per_ip_the_handshake_is_refused_with_429(served):
    served.control("streams/limits", {"max_sockets_per_ip": 2})
    first, second = served.connect(), served.connect(API_PATH)
    with pytest.raises(InvalidStatus) as refused:
        served.connect()
    assert refused.value.response.status_code == 429
    host, port = served.url.removeprefix("http://").split(":")
    other_host = socket.create_connection((host, int(port)), timeout=TIMEOUT_S, source_address=("127.0.0.2", 0))
    with served.connect(sock=other_host) as elsewhere:  # the limit is per client IP
        elsewhere.send(subscribe("price"))
        next_frame(elsewhere)
    first.close()
    poll(lambda: served.open_sockets() == 1, "the closed socket to be released")
    with served.connect() as third:
        third.send(subscribe("price"))
        next_frame(third)
    second.close()


def test_over_the_new_connections_per_minute_the_handshake_is_refused_with_429(served):
    served.control("streams/limits", {"new_per_minute": 3})
    for _ in range(3):
        served.connect().close()
    poll(lambda: served.open_sockets() == 0, "the sockets to close")
    with pytest.raises(InvalidStatus) as refused:
        served.connect()
    assert refused.value.response.status_code == 429


def test_the_limits_control_refuses_bad_values(served):
    response = served.http.post(f"{served.url}/_sim/streams/limits", data=compact({"ping_interval_s": 0}),
                                timeout=TIMEOUT_S)
    assert response.status_code == 400
    response = served.http.post(f"{served.url}/_sim/streams/limits", data=compact({"pings": 1}), timeout=TIMEOUT_S)
    assert response.status_code == 400


# ---- faults -----------------------------------------------------------------------------------------

def test_drop_ends_every_socket_without_a_close_frame(served):
    with served.connect() as ws, served.connect(API_PATH) as api:
        assert served.control("streams/drop", {}) == {"sockets": 2}
        for socket_ in (ws, api):
            closed = closed_by_server(socket_)
            assert isinstance(closed, ConnectionClosedError) and closed.rcvd is None
    poll(lambda: served.open_sockets() == 0, "the sockets to be gone")


def test_close_ends_every_socket_normally(served):
    with served.connect() as ws:
        assert served.control("streams/close", {}) == {"sockets": 1}
        closed = closed_by_server(ws)
    assert isinstance(closed, ConnectionClosedOK) and closed.rcvd.code == 1000


def test_silence_sends_nothing_not_even_pings_and_loses_what_happened_meanwhile(served):
    served.control("streams/limits", FAST_PINGS)
    client = RawClient(served.ws_url + MARKET_PATH)
    try:
        client.send(subscribe("price"))
        client.read_until(lambda frames: client.texts(), "the snapshot")
        served.control("streams/silence", {"seconds": 1.5})
        served.control("price", {"shift_bps": 5})
        client.read_for(0.2)  # what was on its way when the silence began
        assert client.read_for(0.5) == []
        before = client.pings()
        client.read_until(lambda frames: client.pings() > before, "pings after the silence")
        served.control("price", {"shift_bps": 5})
        client.read_until(lambda frames: len(client.texts()) == 2, "the next price")
        marks = [frame["data"]["mark_price"] for frame in client.texts()]
        assert marks == ["95000.0", "95095.0"]  # the move during the silence never came
    finally:
        client.close()


def test_paused_data_stops_price_frames_while_pings_go_on(served):
    served.control("streams/limits", FAST_PINGS)
    client = RawClient(served.ws_url + MARKET_PATH)
    try:
        client.send(subscribe("price"))
        client.read_until(lambda frames: client.texts(), "the snapshot")
        served.control("streams/pause_data", {"seconds": 1.0})
        served.control("price", {"shift_bps": 5})
        during = client.read_for(0.4)
        assert {f.opcode for f in during} == {Opcode.PING}
        poll(lambda: not served.sim.streams.data_paused(), "the pause to end")
        served.control("price", {"shift_bps": 5})
        client.read_until(lambda frames: len(client.texts()) == 2, "the price after the pause")
        assert client.texts()[-1]["data"]["mark_price"] == "95095.0"
    finally:
        client.close()


def test_a_garbage_frame_reaches_every_socket_as_is(served):
    with served.connect() as ws, served.connect(API_PATH) as api:
        assert served.control("streams/garbage", {"text": "not json"}) == {"sockets": 2}
        assert ws.recv(timeout=TIMEOUT_S) == "not json"
        assert api.recv(timeout=TIMEOUT_S) == "not json"


def test_an_unknown_channel_garbage_frame_is_sent_verbatim(served):
    text = json.dumps({"seq": 99, "channel": "nonsense", "data": {}})
    with served.connect() as ws:
        served.control("streams/garbage", {"text": text})
        assert ws.recv(timeout=TIMEOUT_S) == text


def test_the_streams_control_lists_the_open_sockets_and_their_accounts(served):
    client = served.client()
    with served.connect() as ws:
        ws.send(auth(client.token))
        next_frame(ws, "auth")
        state = served.control("streams")
        assert state["sockets"] == [{"path": MARKET_PATH, "client": "127.0.0.1", "address": client.address.lower()}]
        assert state["limits"]["max_sockets_per_ip"] == 10 and state["limits"]["pong_timeout_s"] == 300


def test_a_socket_to_an_unknown_path_is_refused_with_404(served):
    with pytest.raises(InvalidStatus) as refused:
        served.connect("/ws-other/v1")
    assert refused.value.response.status_code == 404


def test_a_client_that_vanishes_without_a_close_is_released(served):
    client = RawClient(served.ws_url + MARKET_PATH)
    poll(lambda: served.open_sockets() == 1, "the socket to open")
    client.close()
    poll(lambda: served.open_sockets() == 0, "the socket to be released")


def test_stopping_the_server_closes_every_open_socket():
    served = Served()
    ws, api = served.connect(), served.connect(API_PATH)
    served.stop()
    for socket_ in (ws, api):
        closed = closed_by_server(socket_)
        assert isinstance(closed, ConnectionClosedOK) and closed.rcvd.code == 1001


# ---- the exchange's event hook ---------------------------------------------------------------------

def test_the_exchange_tells_listeners_a_fill_as_position_order_balance():
    sim = flat_sim()
    client = in_process_client(sim)
    client.new_order(cl_ord_id="q")
    sim.clock.sleep(0.3)
    sim.exchange.advance()
    told = []
    sim.exchange.add_listener(lambda kind, t, payload: told.append((kind, t, payload)))
    sim.exchange.fill_resting(client.address, "q", Decimal("0.0010"))
    assert [kind for kind, _, _ in told] == ["position", "order", "balance"]
    assert all(t == sim.clock.now() for _, t, _ in told)
    change = told[1][2]
    assert isinstance(change, OrderChange) and change.order.status == "filled" and change.position_id == 1


def test_a_cancel_that_reaches_a_pending_order_is_told_as_without_effect():
    sim = flat_sim()  # cancels take 0.2 s
    client = in_process_client(sim)
    told = []
    sim.exchange.add_listener(lambda kind, t, payload: told.append(payload) if kind == "cancel" else None)
    sim.set_visibility_delay(5.0)
    client.new_order(cl_ord_id="slow")
    client.post_signed("/api/cancel_order", {"cl_ord_id": "slow"})
    sim.clock.sleep(1.0)
    sim.exchange.advance()
    assert len(told) == 1 and isinstance(told[0], CancelDone) and not told[0].took_effect


# ---- VirtualFeed ------------------------------------------------------------------------------------

def frame_time(text: str) -> float:
    """The exchange time a frame was produced at (its data's time), as Unix seconds."""
    return datetime.fromisoformat(json.loads(text)["data"]["time"].replace("Z", "+00:00")).timestamp()


def moving_sim() -> Simulator:
    market = SyntheticMarket(seed=3, start_ts=START_TS, volatility_bps_per_sqrt_s=2.0, trades_per_s=2.0)
    return Simulator(VirtualClock(START_TS), market, seed=3)


def record(clock: VirtualClock, received: list, stop_when=lambda text: False):
    def on_frame(text: str) -> bool:
        received.append((clock.now(), text))
        return stop_when(text)
    return on_frame


def test_the_virtual_feed_delivers_each_frame_latency_after_it_was_produced():
    sim = moving_sim()
    feed = VirtualFeed(sim, sim.clock, latency_s=0.05)
    stream = feed.connect(MARKET_PATH)
    stream.send(subscribe("price"))
    stream.send(subscribe("public_trade"))
    received = []
    stream.wait(START_TS + 20, record(sim.clock, received))
    assert len(received) > 20 and sim.clock.now() == START_TS + 20
    assert received[0][0] == START_TS + 0.05  # the snapshot
    for delivered, text in received:
        assert delivered - frame_time(text) == pytest.approx(0.05, abs=2e-6)  # times carry microseconds
    assert [t for t, _ in received] == sorted(t for t, _ in received)


def test_the_virtual_feed_is_deterministic():
    def run() -> list:
        sim = moving_sim()
        session = requests.Session()
        session.mount(BASE_URL, sim.adapter(latency_s=0.1))
        client = SimClient(session, sim.clock, BASE_URL, wallet=Account.from_key("0x" + "11" * 32))  # same user
        client.login()
        feed = VirtualFeed(sim, sim.clock)
        stream = feed.connect(MARKET_PATH)
        stream.send(subscribe("price"))
        stream.send(subscribe("depth_book"))
        stream.send(auth(client.token))
        received = []
        for k in range(10):
            client.new_order(cl_ord_id=f"o{k}", price="94900.0")
            stream.wait(sim.clock.now() + 1.0, record(sim.clock, received))
        return received

    first = run()
    assert first == run() and any('"channel":"order"' in text for _, text in first)


def test_wait_returns_as_soon_as_on_frame_says_so():
    sim = moving_sim()
    stream = VirtualFeed(sim, sim.clock).connect(MARKET_PATH)
    stream.send(subscribe("price"))
    received = []
    stream.wait(START_TS + 60, record(sim.clock, received, stop_when=lambda text: json.loads(text)["seq"] == 3))
    assert len(received) == 3 and sim.clock.now() == received[-1][0] < START_TS + 60
    more = []
    stream.wait(sim.clock.now() + 1, record(sim.clock, more))
    assert more and json.loads(more[0][1])["seq"] == 4


def test_frames_produced_during_a_rest_call_are_delivered_at_once_when_due():
    sim = flat_sim()
    client = in_process_client(sim)
    stream = VirtualFeed(sim, sim.clock, latency_s=0.05).connect(MARKET_PATH)
    stream.send(auth(client.token, "order"))
    client.new_order(cl_ord_id="q")  # rests 0.2 s after it was accepted
    placed = sim.clock.now()
    sim.clock.sleep(1.0)  # a slow REST call: nobody advanced the exchange meanwhile
    received = []
    stream.wait(sim.clock.now(), record(sim.clock, received))
    assert [json.loads(text)["channel"] for _, text in received] == ["auth", "order"]
    assert received[1][0] == placed + 1.0
    assert frame_time_of_order(received[1][1]) == pytest.approx(placed + 0.2, abs=2e-6)


def frame_time_of_order(text: str) -> float:
    return datetime.fromisoformat(json.loads(text)["data"]["updated_at"].replace("Z", "+00:00")).timestamp()


def test_x_session_id_outcomes_reach_the_virtual_ws_api_connection():
    sim = flat_sim()
    client = in_process_client(sim)
    feed = VirtualFeed(sim, sim.clock, latency_s=0.05)
    api = feed.connect(API_PATH)
    api.send(login_request(client.token, "virtual-session"))
    request_id = order_with_session(client, "virtual-session", price=str(QUIET_ASK))
    sent = sim.clock.now()
    received = []
    feed.wait(sent + 1, lambda connection, text: received.append((sim.clock.now(), text)) or False)
    assert [json.loads(text) for _, text in received] == [
        {"code": 0, "message": "success", "request_id": "login-1"},
        {"code": 0, "status": "accepted", "request_id": request_id},
        {"code": 400, "message": "alo order rejected", "request_id": request_id}]
    assert received[2][0] == pytest.approx(sent + 0.2 + 0.05)  # activation (0.2 s) + the feed's latency


def test_listening_and_stepping_the_feed_leave_the_exchange_figures_unchanged():
    def run(with_feed: bool) -> dict:
        sim = moving_sim()
        client = in_process_client(sim, latency_s=0.1)
        stream = VirtualFeed(sim, sim.clock).connect(MARKET_PATH) if with_feed else None
        if stream is not None:
            stream.send(subscribe("price"))
            stream.send(auth(client.token))
        for k in range(40):
            side = ("buy", "sell")[k % 2]
            price = Decimal(json.loads(client.get("/api/query_symbol_price", symbol=SYMBOL).text)["mark_price"])
            price += Decimal("-5") if side == "buy" else Decimal("5")
            client.new_order(cl_ord_id=f"o{k}", side=side, price=str(price))
            until = sim.clock.now() + 3.0
            if stream is None:
                sim.clock.advance_to(until)
            else:
                stream.wait(until, lambda text: False)
        return sim.exchange.metrics(client.address)

    plain, listened = run(False), run(True)
    assert plain["fills"] > 0 and plain == listened


def test_the_virtual_feed_refuses_a_latency_of_zero():
    sim = flat_sim()
    with pytest.raises(ValueError):
        VirtualFeed(sim, sim.clock, latency_s=0)
