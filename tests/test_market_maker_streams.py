"""MarketMaker with StandX's streams: what it takes from them, what it still reads by REST, and
what it never decides on a stream's word alone. The streams are a real standx_ws.StreamState fed
frames by hand; the exchange is the in-memory FakeApi."""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Callable

import pytest

import market_maker as mm
from standx_ws import StreamState
from tests.exchange_fakes import FakeClock
from tests.fake_api import FakeApi, FakeAuth
from tests.test_market_maker import KEY, placed

ISO_BASE = "2026-01-06T00:00:{:06.3f}Z"


class FakeStreams:
    """What MarketMaker needs of standx_ws.StandXStreams, driven by the test."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.state = StreamState(clock, "BTC-USD")
        self.session_id = "session-1"
        self.ready = True
        self.started = self.stopped = False
        self.stop_requested_at: float | None = None
        self.stop_timeout_s: float | None = None
        self.seq = 0
        self.mark = "100"
        self.flowing = True  # a price frame before every regular loop, as a live stream sends

    def start(self) -> None:
        self.started = True

    def request_stop(self) -> None:
        self.stop_requested_at = self.clock.monotonic()

    def stop(self, timeout_s: float = 2.0) -> None:
        self.stopped = True
        self.stop_timeout_s = timeout_s

    def api_ready(self) -> bool:
        return self.ready

    def wait_until(self, deadline: float, stop: Callable[[], bool]) -> None:
        self.clock.sleep(max(0.0, deadline - self.clock.monotonic()))

    # -- test controls --

    def connect(self, user: bool = True) -> None:
        self.state.set_connected("market", True)
        self.state.set_connected("user", user)

    def frame(self, channel: str, data: dict[str, Any], symbol: str | None = "BTC-USD") -> None:
        self.seq += 1
        message = {"seq": self.seq, "channel": channel, "data": data}
        if symbol is not None and channel == "price":
            message["symbol"] = symbol
        self.state.handle_stream_frame(json.dumps(message))

    def echo_cancels(self, exchange: FakeApi) -> None:
        """The order stream shows each cancel the exchange carries out, as StandX's does."""
        cancel_orders = exchange.cancel_orders

        def cancel_and_tell(auth: Any, order_ids: Any = None, cl_ord_ids: Any = None) -> Any:
            answer = cancel_orders(auth, order_ids=order_ids, cl_ord_ids=cl_ord_ids)
            for cid in cl_ord_ids or []:
                if exchange.final.get(cid) == "canceled":
                    self.frame("order", {"cl_ord_id": cid, "symbol": "BTC-USD", "status": "canceled",
                                         "fill_qty": "0", "updated_at": ISO_BASE.format(8)}, symbol=None)
            return answer

        exchange.cancel_orders = cancel_and_tell

    def price(self, mark: str, bid: str | None = None, ask: str | None = None) -> None:
        self.mark = mark
        self.frame("price", {"base": "BTC", "quote": "DUSD", "mark_price": mark, "index_price": mark,
                             "last_price": mark, "mid_price": mark, "spread": [bid or mark, ask or mark],
                             "time": "2026-01-06T00:00:00Z"})


@pytest.fixture
def exchange(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi(mark="100")
    monkeypatch.setattr(mm, "api", fake)
    return fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def streams(clock: FakeClock) -> FakeStreams:
    return FakeStreams(clock)


@pytest.fixture
def maker(exchange: FakeApi, clock: FakeClock, streams: FakeStreams) -> mm.MarketMaker:
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY})
    maker = mm.MarketMaker(config, FakeAuth(clock), clock=clock, run_id="abc123", streams=streams)
    maker.start()
    exchange.calls.clear()  # the start's reads (the margin check reads the price) are not the loop's
    streams.connect()
    streams.price("100")
    return maker


def regular(maker: mm.MarketMaker, seconds: float = 0.5) -> None:
    maker.clock.sleep(seconds)
    if maker.streams.flowing:
        maker.streams.price(maker.streams.mark)
    maker.run_once()


def woken(maker: mm.MarketMaker, seconds: float = 0.05) -> None:
    maker.clock.sleep(seconds)
    maker.run_once(regular=False)


def reads_of(exchange: FakeApi, name: str) -> int:
    return len(exchange.calls_of(name))


def settle_quotes(maker: mm.MarketMaker, exchange: FakeApi, streams: FakeStreams) -> dict[str, dict]:
    """The first quotes placed and shown resting by the order stream."""
    maker.run_once()
    ours = {o["side"]: o for o in exchange.ours()}
    for row in ours.values():
        streams.frame("order", {**row, "status": "open", "updated_at": ISO_BASE.format(1)}, symbol=None)
    woken(maker)
    return ours


def push_position(streams: FakeStreams, qty: str, second: int) -> None:
    """The stream pushes our BTC-USD position row: qty, stamped at ISO_BASE's `second`."""
    streams.frame("position", {"symbol": "BTC-USD", "qty": qty, "updated_at": ISO_BASE.format(second)}, symbol=None)


def test_a_fresh_stream_price_replaces_the_rest_price_read(maker, exchange, streams):
    maker.run_once()
    assert reads_of(exchange, "query_symbol_price") == 0
    assert sorted(Decimal(c["price"]) for c in placed(exchange)) == [Decimal("99.925"), Decimal("100.075")]


def test_a_stream_price_older_than_the_limit_is_read_by_rest_instead(maker, exchange, streams):
    maker.clock.sleep(mm.STREAM_PRICE_MAX_AGE_S + 0.1)
    maker.run_once()
    assert reads_of(exchange, "query_symbol_price") == 1


def test_a_disconnected_market_stream_falls_back_to_the_rest_price(maker, exchange, streams):
    streams.state.set_connected("market", False)
    maker.run_once()
    assert reads_of(exchange, "query_symbol_price") == 1


def test_a_mark_move_on_the_stream_is_requoted_in_a_woken_loop_without_rest_reads(maker, exchange, streams):
    old = settle_quotes(maker, exchange, streams)
    streams.echo_cancels(exchange)
    before = len(exchange.calls)
    streams.price("100.05")  # buy now 12.5 bps away, sell 2.5 bps: both out of the band
    woken(maker)
    names = exchange.names()[before:]
    assert "query_positions" not in names and "query_symbol_price" not in names
    assert names[0] == "cancel_orders"
    assert exchange.calls_of("cancel_orders")[-1]["cl_ord_ids"] == [old["buy"]["cl_ord_id"], old["sell"]["cl_ord_id"]]
    assert {c["side"]: Decimal(c["price"]) for c in placed(exchange)[2:]} == {
        "buy": Decimal("99.974"), "sell": Decimal("100.126")}
    assert "query_order" not in names  # the order stream showed the old quotes over


def test_a_cancel_the_order_stream_does_not_show_is_left_to_the_loop(maker, exchange, streams):
    settle_quotes(maker, exchange, streams)
    started = maker.clock.monotonic()
    streams.price("100.05")
    woken(maker)
    assert len(placed(exchange)) == 2  # not replaced while the old quotes may still rest
    assert maker.clock.monotonic() - started <= mm.CANCEL_CONFIRM_S + 0.1  # waited a second at most
    for _ in range(3):
        regular(maker)  # confirmed by REST (gone from the list, then their status: no fill)
    assert exchange.calls_of("query_open_orders") and exchange.calls_of("query_order")
    assert sorted(c["side"] for c in placed(exchange)[2:]) == ["buy", "sell"]


def test_orders_confirmed_by_the_stream_need_no_rest_list(maker, exchange, streams):
    settle_quotes(maker, exchange, streams)
    lists = reads_of(exchange, "query_open_orders")
    for _ in range(int(mm.STREAM_AUDIT_EVERY_S / 0.5) - 2):
        regular(maker)
    assert reads_of(exchange, "query_open_orders") == lists
    regular(maker, 1.0)
    assert reads_of(exchange, "query_open_orders") == lists + 1  # the lower-cadence audit


def test_a_stream_gone_quiet_is_not_trusted_with_our_orders(maker, exchange, streams):
    settle_quotes(maker, exchange, streams)
    streams.flowing = False  # connected, but nothing arrives (a stalled socket)
    lists, positions = reads_of(exchange, "query_open_orders"), reads_of(exchange, "query_positions")
    regular(maker, mm.STREAM_PRICE_MAX_AGE_S + 0.1)
    assert reads_of(exchange, "query_open_orders") == lists + 1  # the audit at its REST cadence
    regular(maker)
    regular(maker)
    assert reads_of(exchange, "query_positions") == positions + 3  # the position every loop again
    assert reads_of(exchange, "query_symbol_price") == 3  # and the price


def test_an_order_the_stream_does_not_confirm_in_time_is_confirmed_by_rest(maker, exchange, streams):
    maker.run_once()
    lists = reads_of(exchange, "query_open_orders")
    regular(maker)
    assert reads_of(exchange, "query_open_orders") == lists  # the stream has its grace period
    regular(maker, mm.STREAM_CONFIRM_S)
    assert reads_of(exchange, "query_open_orders") == lists + 1


def test_without_our_account_on_the_stream_orders_are_confirmed_by_rest_every_loop(maker, exchange, streams):
    streams.state.set_connected("user", False)
    maker.run_once()
    lists = reads_of(exchange, "query_open_orders")
    regular(maker)
    assert reads_of(exchange, "query_open_orders") == lists + 1
    assert reads_of(exchange, "query_positions") >= 2  # and the position every loop


def test_the_position_is_read_at_the_lower_cadence_while_the_streams_vouch_for_it(maker, exchange, streams):
    settle_quotes(maker, exchange, streams)
    reads = reads_of(exchange, "query_positions")
    regular(maker)
    regular(maker)
    assert reads_of(exchange, "query_positions") == reads
    regular(maker, mm.STREAM_POSITION_EVERY_S)
    assert reads_of(exchange, "query_positions") == reads + 1


def test_a_fill_is_closed_from_the_position_event_at_once(maker, exchange, streams):
    ours = settle_quotes(maker, exchange, streams)
    exchange.open.remove(ours["buy"])
    exchange.position = Decimal("0.005")
    streams.frame("position", {"symbol": "BTC-USD", "qty": "0.005", "entry_price": "99.925",
                               "updated_at": ISO_BASE.format(5)}, symbol=None)
    woken(maker)
    close = exchange.calls_of("new_market_order")
    assert close and close[-1]["side"] == "sell" and close[-1]["reduce_only"] is True
    assert maker.position == Decimal("0.005")
    assert not maker.side_may_quote("buy")  # the side that grew the position waits


def test_a_streamed_position_older_than_the_rest_read_is_ignored(maker, exchange, streams):
    settle_quotes(maker, exchange, streams)
    maker.position_updated_at = mm.exchange_time(ISO_BASE.format(9))
    push_position(streams, "0.005", 5)
    woken(maker)
    assert exchange.calls_of("new_market_order") == []
    assert maker.position == 0


def test_a_streamed_flat_position_does_not_unblock_a_side_before_rest_confirms(maker, exchange, streams):
    settle_quotes(maker, exchange, streams)
    exchange.position = Decimal("0.005")
    regular(maker, mm.STREAM_POSITION_EVERY_S)  # REST shows the position: closing
    assert maker.position == Decimal("0.005")
    push_position(streams, "0", 30)
    woken(maker)
    assert maker.position == Decimal("0.005")


def test_an_alo_rejection_pushed_on_the_order_stream_is_placed_again_at_once(maker, exchange, streams):
    maker.run_once()
    buy = next(o for o in maker.our.tracked if o.side == "buy")
    assert buy.request_id
    exchange.open = [o for o in exchange.open if o["cl_ord_id"] != buy.cl_ord_id]  # rejected in matching
    streams.state.handle_api_frame(json.dumps({"code": 400, "message": "alo order rejected",
                                               "request_id": buy.request_id}))
    woken(maker)
    assert buy not in maker.our.tracked
    again = placed(exchange)[-1]
    assert again["side"] == "buy" and again["cl_ord_id"] != buy.cl_ord_id
    assert "query_order" not in exchange.names()  # no lookup needed: the stream said it


def test_quotes_carry_the_order_stream_session_only_while_it_is_ready(maker, exchange, streams):
    seen: list[Any] = []
    original = exchange.new_limit_order

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("session_id"))
        return original(*args, **kwargs)

    exchange.new_limit_order = recording
    maker.run_once()
    assert seen == ["session-1", "session-1"]
    streams.ready = False
    for order in list(maker.our.tracked):
        exchange.open = [o for o in exchange.open if o["cl_ord_id"] != order.cl_ord_id]
        streams.frame("order", {"cl_ord_id": order.cl_ord_id, "status": "canceled", "fill_qty": "0",
                                "symbol": "BTC-USD", "updated_at": ISO_BASE.format(2)}, symbol=None)
    woken(maker)
    assert seen[2:] == [None, None]


def test_an_order_over_on_the_stream_without_a_fill_frees_its_side(maker, exchange, streams):
    ours = settle_quotes(maker, exchange, streams)
    exchange.open.remove(ours["sell"])
    streams.frame("order", {**ours["sell"], "status": "canceled", "fill_qty": "0",
                            "updated_at": ISO_BASE.format(3)}, symbol=None)
    woken(maker)
    assert placed(exchange)[-1]["side"] == "sell"


def test_an_order_filled_on_the_stream_waits_for_the_position(maker, exchange, streams):
    ours = settle_quotes(maker, exchange, streams)
    exchange.open.remove(ours["sell"])
    streams.frame("order", {**ours["sell"], "status": "filled", "fill_qty": "0.005",
                            "updated_at": ISO_BASE.format(3)}, symbol=None)
    woken(maker)
    assert [c["side"] for c in placed(exchange)] == ["buy", "sell"]  # no new sell yet
    assert "sxmm" in next(iter(maker.our.fill_checks))


def test_a_reconnect_lists_our_orders_and_reads_the_position_at_once(maker, exchange, streams):
    settle_quotes(maker, exchange, streams)
    regular(maker)
    lists, positions = reads_of(exchange, "query_open_orders"), reads_of(exchange, "query_positions")
    streams.state.set_connected("market", False)
    streams.connect()  # back: a resync is due
    assert streams.state.resyncs >= 1
    regular(maker)
    assert reads_of(exchange, "query_open_orders") == lists + 1
    assert reads_of(exchange, "query_positions") == positions + 1


def test_a_stop_closes_the_streams_from_its_start(maker, exchange, streams):
    maker.run_once()
    started = maker.clock.monotonic()
    maker.shutdown()
    assert streams.stop_requested_at == started  # before the first cancel: the stop reads by REST
    assert streams.stopped and streams.stop_timeout_s == mm.STREAMS_STOP_MAX_S


def test_a_stop_that_used_its_budget_waits_for_the_streams_only_until_the_hard_stop(maker, exchange, streams):
    maker.run_once()
    exchange.fail("query_open_orders")  # the stop cannot confirm: it runs to its deadline
    requested = maker.clock.monotonic()
    maker.shutdown()
    left_s = requested + mm.STREAMS_STOP_BY_S - maker.clock.monotonic()
    assert streams.stop_timeout_s == pytest.approx(max(0.0, min(mm.STREAMS_STOP_MAX_S, left_s)))
    assert maker.clock.monotonic() + streams.stop_timeout_s < requested + mm.HARD_STOP_S


def test_rest_feed_builds_no_streams():
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY, "MARKET_MAKER_PRICE_FEED": "rest"})
    assert mm.streams_for(config, FakeAuth(FakeClock())) is None


def test_the_status_line_says_where_prices_come_from(maker, exchange, streams):
    maker.run_once()
    assert " feed=ws " in maker.status_line()
    streams.state.set_connected("market", False)
    assert " feed=ws-fallback " in maker.status_line()
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY, "MARKET_MAKER_PRICE_FEED": "rest"})
    rest = mm.MarketMaker(config, FakeAuth(maker.clock), clock=maker.clock)
    assert " feed=rest " in rest.status_line()


def test_a_streamed_fill_stands_while_the_rest_position_lags_it(maker, exchange, streams):
    """StandX's position answers can lag a fill: REST saying flat with an older timestamp must
    not undo the stream's newer position, nor the same row be taken again (a fill logged,
    alerted and counted once)."""
    ours = settle_quotes(maker, exchange, streams)
    exchange.open.remove(ours["buy"])
    exchange.position_updated_at = ISO_BASE.format(1)  # REST: flat, as of before the fill
    push_position(streams, "0.005", 5)
    woken(maker)
    for _ in range(6):
        regular(maker)
    assert maker.fills == 1
    assert maker.position == Decimal("0.005")
    assert len(exchange.calls_of("new_market_order")) >= 2  # the close is retried, reduce-only
    assert all(c["reduce_only"] for c in exchange.calls_of("new_market_order"))
    exchange.position_updated_at = ISO_BASE.format(6)  # REST catches up: flat after the close
    regular(maker)
    assert maker.position == 0 and maker.fills == 1 and maker.day.fills == 1


def test_a_streamed_position_row_is_taken_once(maker, exchange, streams):
    settle_quotes(maker, exchange, streams)
    push_position(streams, "0.005", 5)
    woken(maker)
    exchange.position = Decimal(0)
    exchange.position_updated_at = ISO_BASE.format(7)  # REST: flat after the close
    regular(maker, mm.CLOSE_SETTLE_S)
    assert maker.position == 0
    for _ in range(4):
        woken(maker)  # the stream's latest row is still the old one
    assert maker.position == 0 and maker.fills == 1


def test_the_rest_position_wins_again_once_the_streamed_one_is_old(maker, exchange, streams):
    settle_quotes(maker, exchange, streams)
    push_position(streams, "0.005", 5)
    woken(maker)
    regular(maker, mm.STREAM_POSITION_TRUST_S + 0.1)  # REST still shows nothing at all
    assert maker.position == 0


def test_a_fill_and_its_close_count_once_while_rest_answers_lag_both(maker, exchange, streams):
    """REST position answers lagging: after the stream showed the fill and then the close, REST
    still answers the position from between them. That older answer is no second fill."""
    settle_quotes(maker, exchange, streams)
    push_position(streams, "0.005", 5)
    woken(maker)
    push_position(streams, "0", 6)
    woken(maker)
    exchange.position, exchange.position_updated_at = Decimal(0), ISO_BASE.format(1)  # before the fill
    regular(maker, mm.STREAM_POSITION_EVERY_S)
    exchange.position, exchange.position_updated_at = Decimal("0.005"), ISO_BASE.format(5)  # between
    regular(maker, mm.STREAM_POSITION_EVERY_S)
    exchange.position, exchange.position_updated_at = Decimal(0), ISO_BASE.format(6)  # caught up
    regular(maker, mm.STREAM_POSITION_EVERY_S)
    assert maker.fills == 1 and maker.day.fills == 1 and maker.position == 0
    assert len(exchange.calls_of("new_market_order")) == 1


def test_woken_passes_do_not_list_our_orders_while_one_is_slow_to_show(maker, exchange, streams):
    settle_quotes(maker, exchange, streams)
    exchange.lost_sides = {"sell"}  # the next sell is slow to show (never, here)
    for order in list(maker.our.tracked):
        if order.side == "sell":
            exchange.open = [o for o in exchange.open if o["cl_ord_id"] != order.cl_ord_id]
            streams.frame("order", {"cl_ord_id": order.cl_ord_id, "symbol": "BTC-USD", "status": "canceled",
                                    "fill_qty": "0", "updated_at": ISO_BASE.format(2)}, symbol=None)
    woken(maker)  # the sell side is free: a new sell goes out, and does not show
    regular(maker, mm.STREAM_CONFIRM_S)  # past the stream's grace: confirmed by REST from now on
    lists = reads_of(exchange, "query_open_orders")
    for _ in range(8):
        streams.price(streams.mark)
        woken(maker, 0.05)  # price frames wake the loop many times a second
    assert reads_of(exchange, "query_open_orders") == lists


def test_a_price_frame_older_on_its_channel_is_ignored_but_a_clock_step_is_not(maker, streams):
    state = streams.state
    state.handle_stream_frame(json.dumps({"seq": 50, "channel": "price", "symbol": "BTC-USD",
                                          "data": {"mark_price": "101", "time": "2026-01-06T00:02:00Z"}}))
    state.handle_stream_frame(json.dumps({"seq": 49, "channel": "price", "symbol": "BTC-USD",
                                          "data": {"mark_price": "90", "time": "2026-01-06T00:01:00Z"}}))
    assert state.latest_price().mark == Decimal("101")  # replayed: an earlier seq
    state.handle_stream_frame(json.dumps({"seq": 51, "channel": "price", "symbol": "BTC-USD",
                                          "data": {"mark_price": "102", "time": "2026-01-06T00:00:30Z"}}))
    assert state.latest_price().mark == Decimal("102")  # the exchange's clock stepped back: still news


def test_a_fill_after_the_exchange_clock_stepped_back_is_closed_at_once(maker, exchange, streams):
    """The stream's flat row is stamped later than a new fill (the exchange's clock stepped
    back): the fill, by REST or by the stream, is news and is closed at once."""
    settle_quotes(maker, exchange, streams)
    push_position(streams, "0.005", 50)
    woken(maker)
    push_position(streams, "0", 51)
    exchange.position, exchange.position_updated_at = Decimal(0), ISO_BASE.format(51)
    regular(maker, mm.CLOSE_SETTLE_S)
    assert maker.position == 0
    closes = len(exchange.calls_of("new_market_order"))
    exchange.position, exchange.position_updated_at = Decimal("-0.005"), ISO_BASE.format(10)  # stepped back
    push_position(streams, "-0.005", 10)
    woken(maker)
    regular(maker)
    assert maker.position == Decimal("-0.005")
    assert len(exchange.calls_of("new_market_order")) == closes + 1
    assert exchange.calls_of("new_market_order")[-1]["side"] == "buy"


def test_a_streamed_row_seen_again_after_a_reconnect_is_not_news(maker, exchange, streams):
    settle_quotes(maker, exchange, streams)
    push_position(streams, "0.005", 5)
    woken(maker)
    exchange.position, exchange.position_updated_at = Decimal(0), ISO_BASE.format(7)
    regular(maker, mm.CLOSE_SETTLE_S)
    assert maker.position == 0 and maker.fills == 1
    streams.state.set_connected("market", False)
    streams.connect()  # the old row is still the state's latest
    woken(maker)
    regular(maker)
    assert maker.position == 0 and maker.fills == 1
