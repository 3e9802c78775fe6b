"""The daemon end to end with StandX's streams (MARKET_MAKER_PRICE_FEED=ws): the real MarketMaker,
StandXAuth and StandXStreams in wall time against the simulator served on 127.0.0.1, REST and both
WebSocket streams on one port over real sockets.

Each reaction test starts after a regular loop, with a 5 s check interval and the next regular
loop at least the reaction's bound away, so that only a loop woken by a stream can react in time;
it also checks that no regular loop ran in between. The exchange's own records (order times,
request log, metrics) say what happened when. The stop on SIGTERM runs the daemon as a process.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from decimal import Decimal
from typing import Any, Callable, TypeVar

import pytest
import requests
from eth_account import Account

import market_maker as mm
import standx_ws
from standx_auth import StandXAuth
from standx_sim import SimServer, Simulator, SyntheticMarket
from standx_sim.clock import WallClock
from standx_sim.exchange import Order
from standx_sim.simulate import throwaway_key
from standx_sim.streams import API_PATH, MARKET_PATH
from tests.sim_helpers import trade_through
from tests.sim_process import account, start_daemon_process

T = TypeVar("T")

SLOW_INTERVAL = "5"  # a regular loop this rarely: only a woken loop reacts within REACTION_S
REACTION_S = 2.5
REJECTION_REACTION_S = 1.0
VISIBILITY_S = 0.05
PENDING_LONG_S = 1.0  # long enough for the test to move the book under a pending quote
SETTLE_S = 10.0  # start-up, reconnects, a stop: generous bounds, never waited out when all is well
POLL_S = 0.01
PRICE_PATH = "/api/query_symbol_price"
OPEN_ORDERS_PATH = "/api/query_open_orders"
HTTP_TIMEOUT_S = 5.0


def poll(condition: Callable[[], T], timeout_s: float, interval_s: float = POLL_S) -> T | None:
    """condition()'s first truthy value within timeout_s, else None."""
    ends = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() >= ends:
            return value or None
        time.sleep(interval_s)


def quiet_market() -> SyntheticMarket:
    """94999.9 / 95000.1 until a test moves it."""
    return SyntheticMarket(start_ts=time.time(), volatility_bps_per_sqrt_s=0,
                           spread_usd=(Decimal("0.2"), Decimal("0.2")))


def moving_market() -> SyntheticMarket:
    """A seeded walk of 1 bps/sqrt(s): a quote 7.5 bps away leaves the 7-10 bps band within a
    second or two, so quoting two-sided takes requotes all along."""
    return SyntheticMarket(seed=7, start_ts=time.time(), volatility_bps_per_sqrt_s=1.0,
                           spread_usd=(Decimal("0.1"), Decimal("0.3")))


class Served:
    """The simulator served on a free loopback port, with the time and path of every REST
    request it answered (the exchange's view of what the daemon read)."""

    def __init__(self, market: SyntheticMarket) -> None:
        self.sim = Simulator(WallClock(), market, visibility_delay_s=VISIBILITY_S, queue=False, mark="mid")
        self.requests: list[tuple[float, str]] = []
        answer = self.sim.handle

        def recorded(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
            self.requests.append((time.monotonic(), path))  # the server calls in under its lock
            return answer(method, path, *args, **kwargs)
        self.sim.handle = recorded
        self.server = SimServer(self.sim)
        self.url = self.server.start()
        self.http = requests.Session()

    def exchange(self, action: Callable[[Any], T]) -> T:
        """Touch the exchange while it is served: under the server's lock."""
        with self.server.lock:
            return action(self.sim.exchange)

    def orders_of(self, address: str) -> list[Order]:
        """Copies of every order of the account the exchange holds, pending ones included."""
        return self.exchange(lambda ex: [dataclasses.replace(o) for o in ex.account(address).orders.values()])

    def resting(self, address: str) -> list[Order]:
        return self.exchange(lambda ex: [dataclasses.replace(o) for o in ex.open_orders(address)])

    def requests_since(self, path: str, since: float, until: float = float("inf")) -> list[float]:
        with self.server.lock:
            return [t for t, p in self.requests if p == path and since <= t < until]

    def control(self, path: str, payload: dict | None = None) -> dict:
        if payload is None:
            answer = self.http.get(f"{self.url}/_sim/{path}", timeout=HTTP_TIMEOUT_S)
        else:
            answer = self.http.post(f"{self.url}/_sim/{path}", data=json.dumps(payload), timeout=HTTP_TIMEOUT_S)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def stop(self) -> None:
        self.http.close()
        self.server.stop()


@pytest.fixture
def quiet():
    served = Served(quiet_market())
    yield served
    served.stop()


@pytest.fixture
def moving():
    served = Served(moving_market())
    yield served
    served.stop()


class Daemon:
    """The real daemon, built from its configuration as main() builds it (streams_for), running
    MarketMaker.run in a thread; `regular_pass` is set after each regular loop."""

    def __init__(self, served: Served, **env: str) -> None:
        config = mm.load_config({"WALLET_PRIVATE_KEY": throwaway_key(), "STANDX_AUTH_BASE_URL": served.url,
                                 "STANDX_PERPS_BASE_URL": served.url, **env})
        auth = StandXAuth(config.private_key, auth_base_url=served.url, perps_base_url=served.url)
        self.served = served
        self.maker = mm.MarketMaker(config, auth, streams=mm.streams_for(config, auth))
        self.address = auth.address.lower()
        self.regular_pass = threading.Event()
        self.regular_started_at = 0.0
        self.exit_code: int | None = None
        run_once = self.maker.run_once

        def run_once_and_tell(regular: bool = True) -> None:
            if regular:
                self.regular_started_at = time.monotonic()  # the loop's clock: the next is one interval on
            run_once(regular)
            if regular:
                self.regular_pass.set()
        self.maker.run_once = run_once_and_tell
        self.thread = threading.Thread(target=self._run, name="daemon-under-test", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = self.maker.run()

    def two_sided(self) -> list[Order] | None:
        orders = self.served.resting(self.address)
        return orders if sorted(o.side for o in orders) == ["buy", "sell"] else None

    def wait_ready(self) -> list[Order]:
        """Both quotes rest and, with the streams, our account is on both of them."""
        streams = self.maker.streams

        def ready() -> list[Order] | None:
            if streams is not None and not (streams.state.connected("user") and streams.api_ready()):
                return None
            return self.two_sided()
        orders = poll(ready, SETTLE_S)
        assert orders, "the daemon did not come to quote both sides"
        return orders

    def clear_of_regular_loops(self, needed_s: float) -> int:
        """Return once a regular loop has finished and the next one is at least needed_s away
        (waiting for one more if need be); the count of regular loops so far."""
        interval_s = self.maker.config.check_interval_s
        assert self.regular_pass.wait(interval_s + SETTLE_S)
        if self.regular_started_at + interval_s - time.monotonic() < needed_s:
            self.regular_pass.clear()
            assert self.regular_pass.wait(interval_s + SETTLE_S)
        return self.maker.regular_loops

    def stop(self) -> None:
        self.maker.request_stop("test over")
        self.thread.join(SETTLE_S + mm.STOP_DEADLINE_S)
        assert not self.thread.is_alive(), "the daemon did not stop"
        assert self.exit_code == mm.EXIT_OK


@pytest.fixture
def daemons():
    """Start daemons with daemons(served, **env); each is stopped cleanly (exit 0) at the end."""
    started: list[Daemon] = []

    def start(served: Served, **env: str) -> Daemon:
        started.append(Daemon(served, **env))
        return started[-1]
    yield start
    for daemon in started:
        daemon.stop()


def in_band(order: Order, mark: Decimal) -> bool:
    return Decimal(7) <= mm.distance_bps(order.side, order.price, mark) <= Decimal(10)


def mark_of(served: Served) -> Decimal:
    return served.exchange(lambda ex: ex.mark_price())


# ---- a mark move ---------------------------------------------------------------------------

def test_a_mark_move_is_requoted_by_a_woken_loop_well_before_the_next_regular_one(quiet, daemons):
    daemon = daemons(quiet, MARKET_MAKER_CHECK_INTERVAL=SLOW_INTERVAL)
    before = {o.cl_ord_id for o in daemon.wait_ready()}
    loops = daemon.clear_of_regular_loops(REACTION_S + 1)
    # 4 bps up: the buy 11.5 bps from the mark, the sell 3.5 bps: both out of the 7-10 bps band,
    # neither reached by the book (a move past a quote would fill it instead).
    quiet.exchange(lambda ex: ex.shift_bps(4))
    mark = mark_of(quiet)

    def requoted() -> list[Order] | None:
        orders = daemon.two_sided()
        return orders if orders and before.isdisjoint(o.cl_ord_id for o in orders) else None
    orders = poll(requoted, REACTION_S)
    assert orders, f"no requote within {REACTION_S} s of the move"
    assert daemon.maker.regular_loops == loops, "a regular loop ran: the stream did not wake the loop"
    assert all(in_band(o, mark) for o in orders), (mark, [(o.side, o.price) for o in orders])


def test_with_the_rest_feed_the_same_move_waits_for_the_next_regular_loop(quiet, daemons):
    daemon = daemons(quiet, MARKET_MAKER_CHECK_INTERVAL=SLOW_INTERVAL, MARKET_MAKER_PRICE_FEED="rest")
    assert daemon.maker.streams is None
    before = {o.cl_ord_id for o in daemon.wait_ready()}
    daemon.clear_of_regular_loops(REACTION_S + 1)
    quiet.exchange(lambda ex: ex.shift_bps(4))
    poll(lambda: {o.cl_ord_id for o in quiet.orders_of(daemon.address)} - before, REACTION_S)
    assert {o.cl_ord_id for o in quiet.orders_of(daemon.address)} == before


# ---- a fill ----------------------------------------------------------------------------------

def test_a_fill_is_closed_from_the_position_event_without_waiting_for_the_loop(quiet, daemons):
    daemon = daemons(quiet, MARKET_MAKER_CHECK_INTERVAL=SLOW_INTERVAL)
    buy = next(o for o in daemon.wait_ready() if o.side == "buy")
    loops = daemon.clear_of_regular_loops(REACTION_S + 1)
    quiet.exchange(lambda ex: trade_through(quiet.sim, ex.find_order(daemon.address, cl_ord_id=buy.cl_ord_id),
                                            Decimal("0.01")))
    filled_at = time.time()

    def close_order() -> Order | None:
        return next((o for o in quiet.orders_of(daemon.address) if o.order_type == "market"), None)
    close = poll(close_order, REACTION_S)
    assert close is not None, f"no close within {REACTION_S} s of the fill"
    assert daemon.maker.regular_loops == loops, "a regular loop ran: the position event did not wake the loop"
    assert (close.side, close.reduce_only, close.time_in_force) == ("sell", True, "ioc")
    assert close.created_at - filled_at < REACTION_S  # the exchange's own clock is the wall clock here
    assert poll(lambda: quiet.exchange(lambda ex: ex.metrics(daemon.address)["position_qty"] == 0), REACTION_S)


# ---- an alo rejected in matching ----------------------------------------------------------------

def test_an_alo_rejected_in_matching_is_placed_again_at_once(quiet, daemons):
    daemon = daemons(quiet, MARKET_MAKER_CHECK_INTERVAL=SLOW_INTERVAL)
    before = {o.cl_ord_id for o in daemon.wait_ready()}
    loops = daemon.clear_of_regular_loops(REACTION_S + PENDING_LONG_S + REJECTION_REACTION_S)
    quiet.exchange(lambda ex: quiet.sim.set_visibility_delay(PENDING_LONG_S))
    quiet.exchange(lambda ex: ex.shift_bps(4))  # a requote: the new quotes stay pending a while

    def pending_sell() -> Order | None:
        return next((o for o in quiet.orders_of(daemon.address)
                     if o.side == "sell" and o.cl_ord_id not in before and o.status == "pending"), None)
    sell = poll(pending_sell, REACTION_S)
    assert sell is not None, "no new sell quote after the move"
    quiet.exchange(lambda ex: ex.shift_bps(10))  # the book runs through the pending post-only sell
    quiet.exchange(lambda ex: quiet.sim.set_visibility_delay(VISIBILITY_S))

    def replacement() -> Order | None:
        return next((o for o in quiet.orders_of(daemon.address)
                     if o.side == "sell" and o.created_at > sell.created_at), None)
    again = poll(replacement, PENDING_LONG_S + REACTION_S)
    rejected = next(o for o in quiet.orders_of(daemon.address) if o.cl_ord_id == sell.cl_ord_id)
    assert (rejected.status, rejected.remark) == ("rejected", "alo order rejected")
    assert again is not None, "the rejected side got no new quote"
    assert daemon.maker.regular_loops == loops, "a regular loop ran: the rejection did not wake the loop"
    assert again.created_at - rejected.updated_at < REJECTION_REACTION_S


# ---- a dead stream ------------------------------------------------------------------------------

def stream_price_fresh_since(daemon: Daemon, since: float) -> bool:
    price = daemon.maker.streams.state.latest_price()
    return price is not None and price.received_at > since


def test_a_silent_stream_falls_back_to_rest_prices_and_keeps_both_sides_quoted(moving, daemons):
    silence_s, interval_s = 8.0, 0.5
    daemon = daemons(moving, MARKET_MAKER_CHECK_INTERVAL=str(interval_s))
    daemon.wait_ready()
    flowing_from = time.monotonic() + interval_s  # a loop in flight may still have read once
    poll(lambda: time.monotonic() >= flowing_from + 1.5, 2.5)
    assert moving.requests_since(PRICE_PATH, flowing_from) == [], "REST price reads while the stream flows"

    moving.control("streams/silence", {"seconds": silence_s})
    silent_from = time.monotonic()
    # Until the stream's price is STREAM_PRICE_MAX_AGE_S old the daemon trusts it; from the next
    # loop on it reads the price by REST, and must keep both sides in the band on it.
    fallback_from = silent_from + mm.STREAM_PRICE_MAX_AGE_S + interval_s
    poll(lambda: time.monotonic() >= fallback_from, silence_s)
    before = moving.exchange(lambda ex: ex.metrics(daemon.address))
    poll(lambda: time.monotonic() - silent_from >= silence_s, silence_s)
    after = moving.exchange(lambda ex: ex.metrics(daemon.address))
    silent_until = time.monotonic()

    reads = moving.requests_since(PRICE_PATH, fallback_from, silent_until)
    assert len(reads) >= (silent_until - fallback_from) / interval_s / 2, f"{len(reads)} REST price reads"
    share = (after["two_sided_s"] - before["two_sided_s"]) / (after["elapsed_s"] - before["elapsed_s"])
    assert share >= 0.8, f"two-sided {share:.0%} of the time on REST prices"
    assert after["orders_placed"] > before["orders_placed"], "no requote on REST prices: nothing was tested"
    assert after["position_qty"] == 0

    assert poll(lambda: stream_price_fresh_since(daemon, silent_until), SETTLE_S), "the stream did not speak again"
    fresh_from = time.monotonic() + interval_s
    poll(lambda: time.monotonic() >= fresh_from + 1.5, 2.5)
    assert moving.requests_since(PRICE_PATH, fresh_from) == [], "REST price reads go on once the stream is back"
    assert daemon.two_sided()


def our_sockets(served: Served, address: str) -> list[str]:
    return sorted(s["path"] for s in served.control("streams")["sockets"] if s["address"] == address)


def user_channels_up_at(daemon: Daemon) -> list[float]:
    """When our account's channels came up on the market stream, from now on (a spy on the
    daemon's StreamState)."""
    state = daemon.maker.streams.state
    times: list[float] = []
    set_connected = state.set_connected

    def noted(stream: str, up: bool) -> None:
        if stream == "user" and up and not state.connected("user"):
            times.append(time.monotonic())
        set_connected(stream, up)
    state.set_connected = noted
    return times


def test_a_dropped_stream_reconnects_and_the_loop_re_reads_our_orders_by_rest(quiet, daemons):
    daemon = daemons(quiet, MARKET_MAKER_CHECK_INTERVAL=SLOW_INTERVAL)
    daemon.wait_ready()
    assert our_sockets(quiet, daemon.address) == [API_PATH, MARKET_PATH]
    loops = daemon.clear_of_regular_loops(standx_ws.BACKOFF_FIRST_S + REACTION_S)
    resyncs = daemon.maker.streams.state.resyncs
    up_at = user_channels_up_at(daemon)
    assert quiet.control("streams/drop", {}) == {"sockets": 2}

    assert poll(lambda: up_at, standx_ws.BACKOFF_FIRST_S + REACTION_S), "our account is not back on the stream"
    assert poll(lambda: our_sockets(quiet, daemon.address) == [API_PATH, MARKET_PATH], REACTION_S)
    # The loop woken by the reconnect lists our open orders at once (the audit is otherwise
    # seconds away, and the next regular loop further still).
    assert poll(lambda: quiet.requests_since(OPEN_ORDERS_PATH, up_at[0]), REACTION_S), "no re-sync by REST"
    assert daemon.maker.regular_loops == loops, "a regular loop ran: the reconnect did not wake the loop"
    assert daemon.maker.streams.state.resyncs == resyncs + 1
    assert daemon.maker.streams.api_ready()
    assert daemon.two_sided()


# ---- SIGTERM --------------------------------------------------------------------------------------

def sockets_of(url: str, address: str) -> list[str]:
    answer = requests.get(f"{url}/_sim/streams", timeout=HTTP_TIMEOUT_S).json()
    return sorted(s["path"] for s in answer["sockets"] if s["address"] == address)


def test_sigterm_with_the_streams_open_stops_cleanly_and_closes_them(sim_server, tmp_path):
    key = throwaway_key()
    address = Account.from_key(key).address.lower()
    daemon = start_daemon_process(sim_server, key, tmp_path, MARKET_MAKER_PRICE_FEED="ws", LOG_LEVEL="DEBUG")
    try:
        quoting = poll(lambda: len(account(sim_server, address).get("open_orders", [])) == 2, 20, 0.2)
        streams_open = poll(lambda: sockets_of(sim_server, address) == [API_PATH, MARKET_PATH], SETTLE_S, 0.2)
        daemon.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = daemon.wait(timeout=20)
        took_s = time.monotonic() - signalled
        output = daemon.stdout.read()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert quoting and streams_open, output[-3000:]
    assert code == 0 and took_s < 15, output[-3000:]
    assert account(sim_server, address)["open_orders"] == []
    assert poll(lambda: sockets_of(sim_server, address) == [], 3.0, 0.1), "sockets left open"
    assert "streams stopped" in output and "still ending" not in output
    assert "Traceback" not in output
    assert key[2:] not in output and "eyJ" not in output  # neither the wallet key nor a JWT

