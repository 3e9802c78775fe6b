"""The daemon's stream client (standx_ws): frame handling, URLs, connection budget and backoff
as units; then the client against the simulator's served streams on 127.0.0.1."""
from __future__ import annotations

import itertools
import json
import random
import socket
import threading
import time
import uuid
from decimal import Decimal

import pytest
import websockets.sync.client
import websockets.sync.server

import standx_api as api
import standx_ws as ws
from standx_auth import StandXAuth
from standx_sim.simulate import throwaway_key
from tests.exchange_fakes import FakeClock
from tests.sim_helpers import served_quiet_sim

SYMBOL = "BTC-USD"
PRICE_SEQ = itertools.count(1)  # each price frame numbered after the one before, as a socket does


def price_frame(mark="95000.0", bid="94999.9", ask="95000.1", symbol=SYMBOL, **fields) -> str:
    data = {"base": "BTC", "quote": "DUSD", "index_price": "95001.0", "mark_price": mark,
            "last_price": "95000.0", "mid_price": "95000.0", "spread": [bid, ask],
            "time": "2026-01-06T00:00:00Z", **fields}
    return json.dumps({"seq": next(PRICE_SEQ), "channel": "price", "symbol": symbol, "data": data})


def user_frame(channel: str, **data) -> str:
    return json.dumps({"seq": 2, "channel": channel, "data": data})


def order_row(status="open", symbol=SYMBOL, **fields) -> dict:
    return {"id": 7, "cl_ord_id": "mm-1", "symbol": symbol, "side": "buy", "status": status,
            "qty": "0.005", "fill_qty": "0", "price": "94928.7", **fields}


def auth_frame(code=200) -> str:
    return json.dumps({"seq": 3, "channel": "auth", "data": {"code": code, "msg": "success" if code == 200 else "invalid token"}})


@pytest.fixture
def state() -> ws.StreamState:
    return ws.StreamState(FakeClock(), SYMBOL)


def wait_for(condition, timeout_s: float) -> bool:
    """Poll `condition` until it holds or `timeout_s` passes."""
    ends = time.monotonic() + timeout_s
    while time.monotonic() < ends:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def woke(state: ws.StreamState) -> bool:
    """Whether the state asked the loop to run, clearing the request."""
    was_set = state.wake.is_set()
    state.wake.clear()
    return was_set


# ---- URLs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("base, expected", [
    ("https://perps.standx.com", ("wss://perps.standx.com/ws-stream/v1", "wss://perps.standx.com/ws-api/v1")),
    ("http://127.0.0.1:8080/", ("ws://127.0.0.1:8080/ws-stream/v1", "ws://127.0.0.1:8080/ws-api/v1")),
    ("https://proxy.example:8443/standx", ("wss://proxy.example:8443/standx/ws-stream/v1",
                                           "wss://proxy.example:8443/standx/ws-api/v1")),
])
def test_stream_urls_follow_the_rest_base_url(base, expected):
    assert ws.stream_urls(base) == expected


@pytest.mark.parametrize("base, problem", [
    ("ftp://perps.standx.com", "not an http(s) URL"), ("perps.standx.com", "not an http(s) URL"),
    ("wss://perps.standx.com", "not an http(s) URL"), ("https://", "no host"),
    ("https://perps.standx.com/?x=1", "query or fragment"),
])
def test_stream_urls_refuse_other_urls_naming_the_problem(base, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        ws.stream_urls(base)


# ---- price frames ------------------------------------------------------------------------------

def test_a_price_frame_is_kept_and_wakes_the_loop(state):
    state.clock.advance(3)
    state.handle_stream_frame(price_frame())
    price = state.latest_price()
    assert price == ws.PriceUpdate(mark=Decimal("95000.0"), index=Decimal("95001.0"), last=Decimal("95000.0"),
                                   mid=Decimal("95000.0"), best_bid=Decimal("94999.9"),
                                   best_ask=Decimal("95000.1"), received_at=state.clock.monotonic())
    assert woke(state)


def test_only_a_changed_mark_or_best_price_wakes_the_loop(state):
    state.handle_stream_frame(price_frame())
    woke(state)
    state.clock.advance(1)
    state.handle_stream_frame(price_frame(index_price="95003.0", last_price="95002.0"))
    assert not woke(state)
    assert state.latest_price().index == Decimal("95003.0")  # still the latest, and fresh
    assert state.latest_price().received_at == state.clock.monotonic()
    for frame in (price_frame(mark="95001.0"), price_frame(mark="95001.0", bid="95000.0"),
                  price_frame(mark="95001.0", bid="95000.0", ask="95000.2")):
        state.handle_stream_frame(frame)
        assert woke(state)


def test_null_prices_are_none(state):
    state.handle_stream_frame(price_frame(bid=None, ask=None, last_price=None, mid_price=None))
    price = state.latest_price()
    assert (price.mark, price.last, price.mid, price.best_bid, price.best_ask) == \
        (Decimal("95000.0"), None, None, None, None)
    state.handle_stream_frame(json.dumps({"channel": "price", "symbol": SYMBOL, "data": {"mark_price": "95000.5"}}))
    assert state.latest_price().mark == Decimal("95000.5") and state.latest_price().best_bid is None


@pytest.mark.parametrize("frame", [
    price_frame(symbol="ETH-USD"),
    price_frame(mark="abc"), price_frame(mark="0"), price_frame(mark="-95000"), price_frame(mark=95000.5),
    price_frame(mark="NaN"), price_frame(mark="Infinity"), price_frame(mark="1e999999"), price_frame(mark=None),
    price_frame(mark="1" * 60), price_frame(bid="x"), price_frame(ask="-1"), price_frame(index_price="0"),
    price_frame(spread="94999.9"), price_frame(spread=["94999.9"]),
    json.dumps({"channel": "price", "symbol": SYMBOL, "data": {"index_price": "95000.0"}}),
])
def test_a_price_frame_with_a_malformed_number_or_another_symbol_is_ignored(state, frame):
    state.handle_stream_frame(price_frame())
    before = state.latest_price()
    woke(state)
    state.handle_stream_frame(frame)
    assert state.latest_price() is before
    assert not woke(state)


@pytest.mark.parametrize("text", [
    "not json", "", "[]", "null", "42", '"price"', "{", json.dumps({"channel": "weird", "data": {}}),
    json.dumps({"channel": "price", "symbol": SYMBOL, "data": "95000"}), json.dumps({"seq": 1}),
    json.dumps({"channel": "depth_book", "symbol": SYMBOL, "data": {"asks": [], "bids": []}}),
    json.dumps({"code": 400, "message": "invalid request payload"}), json.dumps({"channel": None, "data": None}),
])
def test_garbage_on_the_market_stream_is_ignored(state, text):
    state.handle_stream_frame(text)
    assert state.latest_price() is None and state.drain_orders() == [] and state.latest_position() is None
    assert not woke(state) and state.resyncs == 0


# ---- user frames -------------------------------------------------------------------------------

def test_order_events_of_our_symbol_are_queued_oldest_first(state):
    state.handle_stream_frame(user_frame("order", **order_row("new")))
    assert woke(state)
    state.handle_stream_frame(user_frame("order", **order_row("open")))
    state.handle_stream_frame(user_frame("order", **order_row("open", symbol="ETH-USD")))
    state.handle_stream_frame(user_frame("order", **order_row(status=None)))
    state.handle_stream_frame(user_frame("order", **order_row(id=None, cl_ord_id=None)))
    state.handle_stream_frame(user_frame("order", **order_row("filled", fill_qty="0.005")))
    assert [row["status"] for row in state.drain_orders()] == ["new", "open", "filled"]
    assert state.drain_orders() == []


def test_undrained_events_are_bounded_and_the_loop_told_to_resync(state, monkeypatch):
    monkeypatch.setattr(ws, "MAX_QUEUED_EVENTS", 3)
    for n in range(5):
        state.handle_stream_frame(user_frame("order", **order_row(cl_ord_id=f"mm-{n}")))
    assert [row["cl_ord_id"] for row in state.drain_orders()] == ["mm-2", "mm-3", "mm-4"]
    assert state.resyncs == 2


@pytest.mark.parametrize("row, expected", [
    ({"qty": "0.01", "side": "short"}, Decimal("-0.01")), ({"qty": "-0.01", "side": "sell"}, Decimal("-0.01")),
    ({"qty": "-0.01", "side": "long"}, Decimal("0.01")), ({"qty": "0.01", "side": "buy"}, Decimal("0.01")),
    ({"qty": "-0.01"}, Decimal("-0.01")), ({"qty": "0.01", "side": None}, Decimal("0.01")),
    ({"qty": "0"}, Decimal(0)),
])
def test_a_position_is_signed_from_its_side_else_its_qty(state, row, expected):
    state.clock.advance(5)
    state.handle_stream_frame(user_frame("position", symbol=SYMBOL, **row))
    assert state.latest_position() == (expected, state.clock.monotonic())
    assert woke(state)


@pytest.mark.parametrize("row", [
    {"symbol": "ETH-USD", "qty": "1"}, {"symbol": SYMBOL, "qty": "lots"}, {"symbol": SYMBOL},
    {"symbol": SYMBOL, "qty": 0.01}, {"symbol": SYMBOL, "qty": "1e999999"},
])
def test_a_position_of_another_symbol_or_malformed_is_ignored(state, row):
    state.handle_stream_frame(user_frame("position", **row))
    assert state.latest_position() is None and not woke(state)


def test_the_balance_is_the_latest_dict_and_does_not_wake(state):
    balance = {"account_type": "perps", "token": "DUSD", "free": "990", "locked": "10", "total": "1000",
               "occupied": "10"}
    state.handle_stream_frame(user_frame("balance", **balance))
    state.handle_stream_frame(user_frame("balance", **{**balance, "free": "980"}))
    assert state.latest_balance() == {**balance, "free": "980"}
    assert not woke(state)


def test_auth_success_turns_the_user_channels_on_and_counts_one_resync_per_connection(state):
    state.set_connected("market", True)
    state.handle_stream_frame(auth_frame(200))
    assert state.connected("user") and state.resyncs == 1 and woke(state)
    state.handle_stream_frame(auth_frame(200))  # a re-auth on the same socket (new token)
    assert state.resyncs == 1 and not woke(state)
    state.set_connected("market", False)
    assert not state.connected("user") and not state.connected("market") and woke(state)
    state.set_connected("market", True)
    assert not woke(state)
    state.handle_stream_frame(auth_frame(200))
    assert state.resyncs == 2 and woke(state)


def test_a_refused_token_leaves_the_user_channels_off(state):
    state.set_connected("market", True)
    state.handle_stream_frame(auth_frame(401))
    assert not state.connected("user") and state.resyncs == 0 and not woke(state)
    state.handle_stream_frame(auth_frame(200))
    state.handle_stream_frame(auth_frame(401))  # a later token refused: the loop hears of it
    assert not state.connected("user") and woke(state)


def test_set_connected_knows_only_the_three_streams(state):
    with pytest.raises(ValueError):
        state.set_connected("orders", True)


# ---- order response stream frames ---------------------------------------------------------------

def test_the_login_answer_is_not_an_outcome(state):
    state.login_sent("login-1")
    state.handle_api_frame(json.dumps({"code": 0, "message": "success", "request_id": "login-1"}))
    assert state.connected("api") and state.drain_outcomes() == []
    state.handle_api_frame(json.dumps({"code": 401, "message": "invalid token", "request_id": "login-1"}))
    assert not state.connected("api") and state.drain_outcomes() == [] and woke(state)


def test_order_outcomes_are_queued_and_a_rejection_wakes_the_loop(state):
    state.login_sent("login-1")
    accepted = {"code": 0, "status": "accepted", "request_id": "r1"}
    success = {"code": 0, "message": "success", "request_id": "r1"}
    rejected = {"code": 400, "message": "alo order rejected", "request_id": "r2"}
    state.handle_api_frame(json.dumps(accepted))
    state.handle_api_frame(json.dumps(success))
    assert not woke(state)
    state.handle_api_frame(json.dumps({**rejected, "extra": {"nested": 1}}))
    assert woke(state)
    assert state.drain_outcomes() == [accepted, success, rejected]
    assert state.drain_outcomes() == []


@pytest.mark.parametrize("text", [
    "not json", "[]", json.dumps({"code": "0", "request_id": "r"}), json.dumps({"code": True, "request_id": "r"}),
    json.dumps({"code": 400, "message": "invalid request payload"}), json.dumps({"code": 0, "request_id": 5}),
])
def test_garbage_on_the_order_response_stream_is_ignored(state, text):
    state.handle_api_frame(text)
    assert state.drain_outcomes() == [] and not woke(state)


# ---- what the daemon sends ----------------------------------------------------------------------

def test_the_market_conversation_subscribes_then_authenticates_each_new_token():
    talk = ws.MarketConversation(SYMBOL)
    subscribe = {"subscribe": {"channel": "price", "symbol": SYMBOL}}
    assert [json.loads(f) for f in talk.opening(None)] == [subscribe]
    assert talk.on_token(None) == []
    auth = [json.loads(f) for f in talk.on_token("tok-1")]
    assert auth == [{"auth": {"token": "tok-1", "streams": [{"channel": "order"}, {"channel": "position"},
                                                            {"channel": "balance"}]}}]
    assert talk.on_token("tok-1") == []
    assert json.loads(talk.on_token("tok-2")[0])["auth"]["token"] == "tok-2"
    assert [json.loads(f) for f in talk.opening("tok-2")] == [subscribe, {**auth[0], "auth": {
        **auth[0]["auth"], "token": "tok-2"}}]  # a fresh socket authenticates again


def test_the_api_conversation_logs_in_within_our_session(state):
    talk = ws.ApiConversation("session-1", state)
    assert talk.opening(None) == []
    first, = talk.opening("tok-1")
    login = json.loads(first)
    assert login["session_id"] == "session-1" and login["method"] == "auth:login"
    assert json.loads(login["params"]) == {"token": "tok-1"}  # a JSON-encoded string
    uuid.UUID(login["request_id"])
    state.handle_api_frame(json.dumps({"code": 0, "message": "success", "request_id": login["request_id"]}))
    assert state.connected("api")
    relogin = json.loads(talk.on_token("tok-2")[0])
    assert relogin["request_id"] != login["request_id"] and json.loads(relogin["params"]) == {"token": "tok-2"}


# ---- budget and backoff --------------------------------------------------------------------------

def test_the_budget_allows_30_new_connections_in_any_rolling_minute():
    clock = FakeClock()
    budget = ws.ConnectionBudget(clock, max_open=100)
    for _ in range(20):
        assert budget.try_open() == 0.0
    clock.advance(30)
    for _ in range(10):
        assert budget.try_open() == 0.0
    assert budget.try_open() == pytest.approx(30.0)  # the first 20 leave the window in 30 s
    clock.advance(30)
    assert budget.try_open() == 0.0
    assert budget.open_count == 31


def test_the_budget_holds_at_most_two_sockets_open():
    budget = ws.ConnectionBudget(FakeClock())
    assert budget.try_open() == 0.0 and budget.try_open() == 0.0
    assert budget.try_open() > 0
    budget.closed()
    assert budget.try_open() == 0.0


def test_backoff_doubles_from_1_s_to_60_s_with_jitter_and_resets():
    backoff = ws.Backoff(random.Random(7))
    delays = [backoff.next_delay() for _ in range(9)]
    for delay, step in zip(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]):
        assert step / 2 <= delay <= step
    assert len(set(delays)) == len(delays)  # jittered
    again = ws.Backoff(random.Random(7))
    assert [again.next_delay() for _ in range(9)] == delays  # deterministic with the rng
    backoff.reset()
    assert backoff.next_delay() <= 1


# ---- waiting for the loop ------------------------------------------------------------------------

class TokenHolder:
    """An auth whose current token the test sets (a re-login, as StandXAuth would show it)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def current_token(self) -> str | None:
        return self.token


def idle_streams() -> ws.StandXStreams:
    return ws.StandXStreams(TokenHolder(), SYMBOL, "ws://127.0.0.1:9/ws-stream/v1", "ws://127.0.0.1:9/ws-api/v1")


def test_wait_until_returns_at_the_deadline_early_on_a_wake_or_on_stop():
    streams = idle_streams()
    clock = streams.clock
    started = clock.monotonic()
    streams.wait_until(started + 0.05, lambda: False)
    assert clock.monotonic() >= started + 0.05
    threading.Timer(0.05, streams.state.wake.set).start()
    streams.wait_until(clock.monotonic() + 30, lambda: False)
    assert not streams.state.wake.is_set()  # cleared for the next wait
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    streams.wait_until(clock.monotonic() + 30, stop.is_set)
    assert clock.monotonic() - started < 10


# ---- against a server that never finishes the handshake ------------------------------------------

def test_stop_is_bounded_while_a_handshake_hangs():
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    url = f"ws://127.0.0.1:{listener.getsockname()[1]}"
    streams = ws.StandXStreams(TokenHolder(), SYMBOL, url + ws.STREAM_PATH, url + ws.API_PATH)
    try:
        streams.start()
        assert wait_for(lambda: accepted, 5)
        started = time.monotonic()
        streams.stop(timeout_s=0.5)
        assert time.monotonic() - started < 2
        assert not streams.state.connected("market")
    finally:
        listener.close()
        for sock in accepted:
            sock.close()
    # The handshakes fail once the server is gone, and the threads, told to stop, end.
    assert wait_for(lambda: not any(link.thread.is_alive() for link in streams._links), 5)


# ---- against a server that answers nothing, or refuses our token once ---------------------------

class Scripted:
    """A WebSocket server on 127.0.0.1 that pings (so the socket never looks silent) and answers
    each frame with `answer(path, text, nth)`'s frames (none: it ignores the frame)."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.connections: list[str] = []
        self.received: list[tuple[str, str]] = []
        self.server = websockets.sync.server.serve(self._serve, "127.0.0.1", 0, ping_interval=0.2)
        self.url = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _serve(self, connection) -> None:
        path = connection.request.path
        self.connections.append(path)
        for text in connection:
            self.received.append((path, text))
            nth = sum(p == path for p, _ in self.received)
            for reply in self.answer(path, text, nth):
                connection.send(reply)

    def close(self) -> None:
        self.server.shutdown()


def test_a_socket_whose_subscribe_is_never_answered_is_replaced():
    server = Scripted(lambda path, text, nth: [])
    streams = ws.StandXStreams(TokenHolder(), SYMBOL, server.url + ws.STREAM_PATH, server.url + ws.API_PATH,
                               rng=random.Random(1), answer_timeout_s=0.5)
    try:
        streams.start()
        assert wait_for(lambda: server.connections.count(ws.STREAM_PATH) >= 2, 10)
        assert not streams.state.connected("user")
    finally:
        streams.stop()
        server.close()


def test_a_refused_token_is_offered_again_after_a_pause():
    def answer(path, text, nth):
        message = json.loads(text)
        if path == ws.STREAM_PATH and "subscribe" in message:
            return [price_frame()]
        if path == ws.STREAM_PATH and "auth" in message:
            auths = sum(1 for p, t in server.received if p == path and "auth" in json.loads(t))
            return [auth_frame(401 if auths == 1 else 200)]
        return [json.dumps({"code": 0, "message": "success", "request_id": message.get("request_id")})]

    server = Scripted(answer)
    streams = ws.StandXStreams(TokenHolder("token-1"), SYMBOL, server.url + ws.STREAM_PATH,
                               server.url + ws.API_PATH, rng=random.Random(1), auth_retry_s=0.5)
    try:
        streams.start()
        assert wait_for(lambda: streams.state.refused_at or streams.state.connected("user"), 5)
        assert wait_for(lambda: streams.state.connected("user"), 5)  # the same token, offered again
        assert server.connections.count(ws.STREAM_PATH) == 1  # on the same socket
    finally:
        streams.stop()
        server.close()


def test_a_price_numbered_before_the_one_held_is_ignored_until_the_socket_changes(state):
    def numbered(seq: int, mark: str) -> str:
        frame = json.loads(price_frame(mark=mark))
        return json.dumps({**frame, "seq": seq})
    state.handle_stream_frame(numbered(7, "95000.0"))
    state.handle_stream_frame(numbered(6, "94000.0"))
    assert state.latest_price().mark == Decimal("95000.0")
    state.set_connected("market", False)  # a new socket numbers afresh
    state.handle_stream_frame(numbered(1, "94500.0"))
    assert state.latest_price().mark == Decimal("94500.0")


# ---- against the simulator's served streams ---------------------------------------------------------

class Served:
    """A simulator served on 127.0.0.1 (flat market, mark = mid, quick visibility), logged-in
    accounts on it, and the daemon's streams under test, counting their connection attempts."""

    def __init__(self) -> None:
        self.sim, self.server, self.url = served_quiet_sim()
        self.attempts: list[str] = []
        self.streams: ws.StandXStreams | None = None

    def account(self) -> StandXAuth:
        auth = StandXAuth(throwaway_key(), auth_base_url=self.url, perps_base_url=self.url)
        auth.authenticate()
        return auth

    def connect(self, url: str, **kwargs):
        self.attempts.append(url)
        return websockets.sync.client.connect(url, **kwargs)

    def start_streams(self, auth, **kwargs) -> ws.StandXStreams:
        stream_url, api_url = ws.stream_urls(self.url)
        self.streams = ws.StandXStreams(auth, SYMBOL, stream_url, api_url, connect=self.connect,
                                        rng=random.Random(1), **kwargs)
        self.streams.start()
        return self.streams

    def hub(self, fault: str, *args, **kwargs):
        """A stream fault or control of the simulator's hub, under the server's lock."""
        with self.server.lock:
            return getattr(self.sim.streams, fault)(*args, **kwargs)

    def exchange(self, action: str, *args):
        with self.server.lock:
            return getattr(self.sim.exchange, action)(*args)

    def open_sockets(self) -> int:
        with self.server.lock:
            return len(self.sim.streams.sessions())

    def close(self) -> None:
        if self.streams is not None:
            self.streams.stop()
        self.server.stop()


@pytest.fixture
def served():
    served = Served()
    try:
        yield served
    finally:
        served.close()


def ready(streams: ws.StandXStreams) -> bool:
    """Both sockets up, our account authenticated on both."""
    state = streams.state
    return state.connected("market") and state.connected("user") and streams.api_ready()


def place_alo(served: Served, auth: StandXAuth, side: str, price: str, session_id: str | None = None) -> str:
    """A REST post-only order of 0.005; its x-request-id."""
    api.new_limit_order(auth, SYMBOL, side, "0.005", price, "alo", session_id=session_id)
    return auth.last_request_id()


def test_the_price_is_subscribed_at_once_and_user_channels_wait_for_a_token(served):
    holder = TokenHolder()
    streams = served.start_streams(holder)
    assert wait_for(lambda: streams.state.latest_price() is not None, 5)
    price = streams.state.latest_price()
    assert price.mark > 0 and price.best_bid < price.best_ask
    assert streams.state.connected("market") and not streams.state.connected("user") and not streams.api_ready()
    served.exchange("shift_bps", 5)
    assert wait_for(lambda: streams.state.latest_price().mark > price.mark, 5)
    holder.token = served.account().current_token()  # logged in: the user channels follow
    assert wait_for(lambda: ready(streams), 5)
    assert streams.state.resyncs == 1
    assert served.attempts.count(ws.stream_urls(served.url)[0]) == 1 and served.open_sockets() == 2


def test_order_position_and_balance_events_on_a_fill(served):
    auth = served.account()
    streams = served.start_streams(auth)
    assert wait_for(lambda: ready(streams), 5)
    bid = streams.state.latest_price().best_bid
    api.new_limit_order(auth, SYMBOL, "buy", "0.005", str(bid - 10), "alo", cl_ord_id="mine-1")
    rows: list[dict] = []

    def seen(*statuses: str) -> bool:
        rows.extend(streams.state.drain_orders())
        return any(row["cl_ord_id"] == "mine-1" and row["status"] in statuses for row in rows)

    assert wait_for(lambda: seen("new", "open"), 5)  # resting (the simulator says "new")
    served.exchange("fill_resting", auth.address.lower(), "mine-1", Decimal("0.005"))
    assert wait_for(lambda: seen("filled"), 5)
    assert wait_for(lambda: (streams.state.latest_position() or (0,))[0] == Decimal("0.005"), 5)
    assert streams.state.latest_position_row()["symbol"] == SYMBOL
    assert streams.state.latest_balance()["token"] == "DUSD"


def test_an_alo_rejection_is_pushed_on_the_order_response_stream(served):
    auth = served.account()
    streams = served.start_streams(auth)
    assert wait_for(lambda: streams.api_ready() and streams.state.latest_price() is not None, 5)
    ask = streams.state.latest_price().best_ask
    streams.state.wake.clear()
    request_id = place_alo(served, auth, "buy", str(ask + 1), streams.session_id)  # crosses: refused in matching
    outcomes: list[dict] = []
    assert wait_for(lambda: outcomes.extend(streams.state.drain_outcomes()) or len(outcomes) >= 2, 5)
    assert outcomes == [{"code": 0, "status": "accepted", "request_id": request_id},
                        {"code": 400, "message": "alo order rejected", "request_id": request_id}]
    assert streams.state.wake.is_set()


def test_pings_are_answered_through_a_long_session(served):
    served.hub("set_limits", ping_interval_s=0.05, pong_timeout_s=0.5)
    streams = served.start_streams(served.account(), silence_s=1.0)
    assert wait_for(lambda: ready(streams), 5)
    time.sleep(1.2)  # two dozen pings, two pong timeouts and more than a silence limit long
    assert ready(streams) and len(served.attempts) == 2 and streams.state.resyncs == 1


def reconnected_after(served: Served, fault: str, *args) -> ws.StandXStreams:
    """The streams up, then the fault; they must come back with a resync, a new price and a
    new login on the order response stream."""
    streams = served.start_streams(served.account())
    assert wait_for(lambda: ready(streams), 5)
    before = streams.state.latest_price().received_at
    served.hub(fault, *args)
    assert wait_for(lambda: not ready(streams), 5)
    assert wait_for(lambda: ready(streams) and streams.state.resyncs == 2, 10)
    assert streams.state.latest_price().received_at > before  # subscribed again: a new snapshot
    assert len(served.attempts) == 4 and served.open_sockets() == 2
    return streams


def test_a_dropped_socket_is_reconnected_subscribed_and_resynced(served):
    reconnected_after(served, "drop_all")


def test_a_normal_close_is_reconnected(served):
    reconnected_after(served, "close_all")


def test_a_silent_socket_is_declared_dead_and_replaced(served, caplog):
    served.hub("set_limits", ping_interval_s=0.2)
    streams = served.start_streams(served.account(), silence_s=1.0)
    assert wait_for(lambda: ready(streams), 5)
    with caplog.at_level("INFO", logger="standx_ws"):
        served.hub("silence", 1.5)
        assert wait_for(lambda: not streams.state.connected("market"), 5)
        assert wait_for(lambda: ready(streams), 10)
    assert "taken as dead" in caplog.text
    assert streams.state.resyncs >= 2


def test_garbage_frames_are_ignored_and_the_socket_kept(served):
    streams = served.start_streams(served.account())
    assert wait_for(lambda: ready(streams), 5)
    for text in ("not json", '{"channel": "weird", "data": {}}', price_frame(mark="oops"),
                 price_frame(symbol="ETH-USD", mark="1"), '{"code": 0, "request_id": 42}'):
        served.hub("send_garbage", text)
    price = streams.state.latest_price()
    served.exchange("shift_bps", 3)
    assert wait_for(lambda: streams.state.latest_price().mark > price.mark, 5)
    assert ready(streams) and len(served.attempts) == 2 and streams.state.drain_outcomes() == []


def test_a_refused_handshake_backs_off_without_a_storm(served, caplog):
    served.hub("set_limits", max_sockets_per_ip=1)
    with caplog.at_level("INFO", logger="standx_ws"):
        served.start_streams(TokenHolder())
        time.sleep(2.5)
        refused = caplog.text.count("HTTP 429")
    assert 2 <= refused <= 3  # after waits of 0.5-1 s, then 1-2 s: not a retry every slice
    assert served.open_sockets() == 1 and len(served.attempts) == 1 + refused  # one got in


def test_the_local_budget_caps_new_connections_a_minute(served, caplog):
    budget = ws.ConnectionBudget(ws.RealClock(), per_minute=3)
    with caplog.at_level("INFO", logger="standx_ws"):
        served.start_streams(served.account(), max_age_s=0.3, budget=budget)  # replaced every 0.3 s
        time.sleep(1.2)
    assert len(served.attempts) == 3  # two, then one replacement; the next waits for the minute
    assert "connection budget spent" in caplog.text


def test_the_sockets_follow_a_new_token(served):
    first, second = served.account(), served.account()
    holder = TokenHolder(first.current_token())
    streams = served.start_streams(holder)
    assert wait_for(lambda: ready(streams), 5)
    holder.token = second.current_token()  # a re-login: the user channels follow the new token
    time.sleep(0.5)
    ask = streams.state.latest_price().best_ask
    request_id = place_alo(served, second, "buy", str(ask + 1), streams.session_id)
    outcomes: list[dict] = []
    assert wait_for(lambda: outcomes.extend(streams.state.drain_outcomes()) or len(outcomes) >= 2, 5)
    assert outcomes[-1] == {"code": 400, "message": "alo order rejected", "request_id": request_id}
    bid = streams.state.latest_price().best_bid
    api.new_limit_order(second, SYMBOL, "buy", "0.005", str(bid - 10), "alo", cl_ord_id="second-1")
    assert wait_for(lambda: any(row["cl_ord_id"] == "second-1" for row in streams.state.drain_orders()), 5)
    assert len(served.attempts) == 2 and streams.state.resyncs == 1  # the same sockets


def test_a_socket_is_replaced_before_its_age_limit(served):
    streams = served.start_streams(served.account(), max_age_s=1.0)
    assert wait_for(lambda: ready(streams), 5)
    assert wait_for(lambda: len(served.attempts) >= 4 and ready(streams), 5)
    assert streams.state.resyncs >= 2 and served.open_sockets() <= 2


def test_stop_closes_open_sockets_normally_and_is_bounded(served):
    streams = served.start_streams(served.account())
    assert wait_for(lambda: ready(streams), 5)
    started = time.monotonic()
    streams.stop(timeout_s=2)
    assert time.monotonic() - started < 3
    assert not any(link.thread.is_alive() for link in streams._links)
    assert wait_for(lambda: served.open_sockets() == 0, 5)
    assert not streams.api_ready() and not streams.state.connected("market")
