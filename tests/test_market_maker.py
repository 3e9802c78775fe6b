"""MarketMaker decisions, against an in-memory exchange (tests/fake_api.py)."""
from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

import market_maker as mm
from standx_auth import RealClock, StandXError, UnknownOutcomeError
from tests.exchange_fakes import START_TIME as START, FakeClock
from tests.fake_api import FakeApi, FakeAuth

KEY = "0x" + "11" * 32


@pytest.fixture
def exchange(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi(mark="100")
    monkeypatch.setattr(mm, "api", fake)
    return fake


def make_maker(exchange: FakeApi, **env: str) -> mm.MarketMaker:
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY, **env})
    clock = FakeClock()
    maker = mm.MarketMaker(config, FakeAuth(clock), clock=clock, run_id="abc123")
    maker.start()
    return maker


@pytest.fixture
def maker(exchange: FakeApi) -> mm.MarketMaker:
    return make_maker(exchange)


def step(maker: mm.MarketMaker, seconds: float = 0.5) -> None:
    maker.clock.sleep(seconds)
    maker.run_once()


def placed(exchange: FakeApi) -> list[dict]:
    return exchange.calls_of("new_limit_order")


# ---- prices and bands -------------------------------------------------------------------

def test_initial_quotes_sit_at_target_bps_around_the_mark(maker, exchange):
    maker.run_once()
    prices = {c["side"]: c["price"] for c in placed(exchange)}
    assert prices == {"buy": Decimal("99.925"), "sell": Decimal("100.075")}


def test_quotes_are_post_only_with_our_prefix_and_configured_qty(maker, exchange):
    maker.run_once()
    for call in placed(exchange):
        assert call["time_in_force"] == "alo"
        assert call["reduce_only"] is False
        assert call["qty"] == Decimal("0.005")
        assert call["cl_ord_id"].startswith(mm.CL_ORD_ID_PREFIX)
        assert len(call["cl_ord_id"]) <= 32


def test_every_order_gets_a_unique_client_id(maker):
    ids = {maker.new_cl_ord_id(side) for side in ("buy", "sell") * 500}
    assert len(ids) == 1000


@pytest.mark.parametrize("side, expected", [("buy", Decimal("95123.7")), ("sell", Decimal("95133.3"))])
def test_prices_round_to_the_tick_away_from_the_mark(side, expected):
    # 0.5 bps of 95128.5 is 4.756425: 95123.743575 rounds down, 95133.256425 up.
    price = mm.quote_price(side, Decimal("95128.5"), Decimal("0.5"), Decimal("0.1"))
    assert price == expected


def test_buy_quote_stays_below_the_best_ask_when_mark_is_above_the_book():
    price = mm.quote_price("buy", Decimal("100"), Decimal("7.5"), Decimal("0.001"),
                           best_bid=Decimal("99.8"), best_ask=Decimal("99.9"))
    assert price == Decimal("99.899")


def test_sell_quote_stays_above_the_best_bid_when_mark_is_below_the_book():
    price = mm.quote_price("sell", Decimal("100"), Decimal("7.5"), Decimal("0.001"),
                           best_bid=Decimal("100.2"), best_ask=Decimal("100.3"))
    assert price == Decimal("100.201")


@pytest.mark.parametrize("side, expected", [
    # the mark (100) trails a book that rose to 100.05 / 100.07: a sell 7.5 bps over the mark
    # (100.075) would rest 0.9 bps over the mid; it goes 7 bps over the mid instead
    ("sell", Decimal("100.131")),
    ("buy", Decimal("99.925")),  # the buy, 12.5 bps under the mid already, is the mark's
])
def test_no_quote_comes_nearer_the_books_mid_than_the_gap_when_the_mark_trails_the_book(side, expected):
    price = mm.quote_price(side, Decimal("100"), Decimal("7.5"), Decimal("0.001"),
                           best_bid=Decimal("100.05"), best_ask=Decimal("100.07"), book_gap_bps=Decimal(7))
    assert price == expected


def test_with_the_mark_at_the_mid_the_gap_changes_nothing():
    for side in ("buy", "sell"):
        assert mm.quote_price(side, Decimal("100"), Decimal("7.5"), Decimal("0.001"), best_bid=Decimal("99.99"),
                              best_ask=Decimal("100.01"), book_gap_bps=Decimal(7)) == \
            mm.quote_price(side, Decimal("100"), Decimal("7.5"), Decimal("0.001"))


@pytest.mark.parametrize("side, price, inside", [
    ("buy", "99.93", True),    # 7.0 bps: the lower edge counts
    ("buy", "99.90", True),    # 10 bps: the upper edge counts
    ("buy", "99.931", False),  # 6.9 bps: too close, may fill
    ("buy", "99.899", False),  # 10.1 bps: out of the reward band
    ("sell", "100.07", True),
    ("sell", "100.101", False),
    ("buy", "100.05", False),  # a buy above the mark is on the wrong side
])
def test_band_check(side, price, inside):
    band = mm.Band(Decimal("7.5"), Decimal("7.0"), Decimal("10"))
    assert mm.in_band(side, Decimal(price), Decimal("100"), band) is inside


# ---- modes ------------------------------------------------------------------------------

@pytest.mark.parametrize("balance, mode", [
    ("1000", "normal"), ("100", "normal"), ("99.99", "degraded_1"),
    ("50", "degraded_1"), ("49.99", "degraded_2"), ("0", "degraded_2"),
])
def test_mode_for_balance_boundaries(balance, mode):
    assert mm.mode_for_balance(Decimal(balance), Decimal("100"), Decimal("50")) == mode


@pytest.mark.parametrize("mode, band", [
    ("degraded_1", ("25", "20", "29.5")), ("degraded_2", ("80", "70", "95")),
])
def test_degraded_modes_use_their_fixed_bands(mode, band):
    configured = mm.Band(Decimal("7.5"), Decimal("7"), Decimal("10"))
    assert mm.band_for_mode(mode, configured) == mm.Band(*map(Decimal, band))


def test_normal_mode_uses_the_configured_band():
    configured = mm.Band(Decimal("5"), Decimal("4"), Decimal("6"))
    assert mm.band_for_mode("normal", configured) == configured


def test_start_in_degraded_mode_quotes_at_25_bps(exchange):
    exchange.balance = {"balance": "75"}
    maker = make_maker(exchange)
    maker.run_once()
    prices = {c["side"]: c["price"] for c in placed(exchange)}
    assert maker.mode == "degraded_1"
    assert prices == {"buy": Decimal("99.75"), "sell": Decimal("100.25")}


def test_balance_falls_back_to_equity(exchange):
    exchange.balance = {"equity": "30"}
    assert make_maker(exchange).mode == "degraded_2"


def test_mode_change_requotes_both_sides_at_once(maker, exchange):
    maker.run_once()
    exchange.balance = {"balance": "40"}
    for _ in range(mm.BALANCE_CHECK_EVERY_LOOPS - 1):
        step(maker)
    assert maker.mode == "degraded_2"
    step(maker)  # the next decision requotes both sides
    new = placed(exchange)[2:]
    assert {(c["side"], c["price"]) for c in new} == {("buy", Decimal("99.2")), ("sell", Decimal("100.8"))}
    assert len(exchange.ours()) == 2


def test_failed_balance_read_keeps_the_current_mode(maker, exchange):
    exchange.fail("query_balance")
    for _ in range(mm.BALANCE_CHECK_EVERY_LOOPS):
        step(maker)
    assert maker.mode == "normal"
    assert exchange.calls_of("query_balance")[-1] == {}


def test_balance_is_read_every_tenth_loop(maker, exchange):
    before = len(exchange.calls_of("query_balance"))
    for _ in range(20):
        step(maker)
    assert len(exchange.calls_of("query_balance")) - before == 2


def test_unfunded_account_is_refused_at_start_saying_what_margin_is_missing(exchange):
    exchange.balance = {"balance": "0", "equity": "0"}
    with pytest.raises(mm.ConfigError, match="need 0.02 DUSD of margin at 40x leverage, and 0.00 DUSD is available: deposit more"):
        make_maker(exchange)
    assert placed(exchange) == []


@pytest.mark.parametrize("available, leverage, starts", [
    ("0.03", 40, True),    # 2 x 0.005 x 100 / 40 = 0.025 needed
    ("0.02", 40, False),
    ("0.05", 20, True),    # 0.05 needed at 20x
    ("0.049", 20, False),
])
def test_margin_for_both_quotes_is_checked_before_the_first_quote(exchange, available, leverage, starts):
    exchange.balance = {"balance": "1000", "cross_available": available}
    exchange.leverage = leverage
    if starts:
        make_maker(exchange)
    else:
        with pytest.raises(mm.ConfigError, match="cannot carry both quotes"):
            make_maker(exchange)


def test_margin_of_a_leftover_position_counts_as_available_since_it_is_closed_at_once(exchange):
    exchange.position = Decimal("0.005")  # 0.005 x 100 / 40 = 0.0125 of margin comes back
    exchange.balance = {"balance": "1000", "cross_available": "0.02"}
    make_maker(exchange)


def test_margin_held_by_our_leftovers_counts_as_available(exchange):
    exchange.add_open("sxmmbold1", "buy", "99")  # 0.005 x 99 / 40 = 0.0124 held
    exchange.balance = {"balance": "1000", "cross_available": "0.02"}
    make_maker(exchange)  # 0.0324 with the leftover's margin: enough for 0.025


# ---- requote decisions --------------------------------------------------------------------

def test_in_band_quotes_are_left_alone(maker, exchange):
    maker.run_once()
    for _ in range(5):
        step(maker)
    assert len(placed(exchange)) == 2
    assert exchange.calls_of("cancel_orders") == []


def test_only_the_side_that_left_the_band_is_requoted(maker, exchange):
    maker.run_once()
    step(maker)
    exchange.prices["mark_price"] = "100.006"  # sell now 6.9 bps away (too close); buy 8.1, in band
    step(maker)
    assert [c["side"] for c in placed(exchange)[2:]] == ["sell"]
    assert {o["price"] for o in exchange.ours()} == {"99.925", "100.082"}


def test_reads_overlap_in_one_round_trip_and_quotes_follow_them(maker, exchange, monkeypatch):
    batches = []
    gather = maker.clock.gather

    def recording_gather(calls):
        before = len(exchange.calls)
        results = gather(calls)
        batches.append(exchange.names()[before:])
        return results

    monkeypatch.setattr(maker.clock, "gather", recording_gather)
    maker.run_once()  # the first loop audits our orders too
    assert batches[0] == ["query_positions", "query_open_orders", "query_symbol_price"]
    assert batches[1] == ["new_limit_order", "new_limit_order"]  # the two quotes go out together
    step(maker)  # the quotes await confirmation: their read joins the same round trip
    assert batches[2] == ["query_positions", "query_open_orders", "query_symbol_price"]
    step(maker)  # nothing to confirm, no audit due
    assert batches[3] == ["query_positions", "query_symbol_price"]
    for _ in range(mm.BALANCE_CHECK_EVERY_LOOPS - 3):
        step(maker)
    last = batches[-1]  # the 10th loop: the balance read joins the round trip
    assert last[0] == "query_positions" and last[-1] == "query_symbol_price" and "query_balance" in last


def test_orders_are_read_only_to_confirm_or_audit(maker, exchange):
    maker.run_once()  # quotes sent: the next loop confirms them
    step(maker)
    reads = len(exchange.calls_of("query_open_orders"))
    step(maker)
    step(maker)
    assert len(exchange.calls_of("query_open_orders")) == reads  # nothing to confirm
    step(maker, mm.AUDIT_EVERY_S)
    assert len(exchange.calls_of("query_open_orders")) == reads + 1  # the audit


def test_a_quote_that_disappeared_is_replaced_once_its_status_says_no_fill(maker, exchange):
    maker.run_once()
    step(maker)
    buy = exchange.ours("buy")[0]
    exchange.open.remove(buy)
    exchange.final[buy["cl_ord_id"]] = "canceled"  # cancelled by the exchange, nothing filled
    step(maker, mm.AUDIT_EVERY_S)  # the audit finds it gone: it may have filled
    assert [c["side"] for c in placed(exchange)][2:] == []
    step(maker)  # its status says no fill, and a position read sent since shows none
    assert exchange.calls_of("query_order")[-1] == {"cl_ord_id": buy["cl_ord_id"]}
    assert [c["side"] for c in placed(exchange)][2:] == ["buy"]


def test_a_filled_quote_whose_fill_the_position_does_not_show_yet_gets_no_new_quote(maker, exchange):
    maker.run_once()
    step(maker)
    buy = exchange.ours("buy")[0]
    exchange.open.remove(buy)  # filled, but the position answer lags the fill
    exchange.final[buy["cl_ord_id"]], exchange.filled[buy["cl_ord_id"]] = "filled", "0.005"
    for _ in range(6):
        step(maker, mm.AUDIT_EVERY_S / 2)
    assert [c["side"] for c in placed(exchange)][2:] == []
    exchange.position = Decimal("0.005")  # the fill shows: closed at once, still no new buy
    step(maker)
    assert exchange.calls_of("new_market_order")[-1]["side"] == "sell"
    assert [c["side"] for c in placed(exchange)][2:] == []
    step(maker)  # flat again, the fill seen and closed: the buy side quotes again
    assert [c["side"] for c in placed(exchange)][2:] == ["buy"]


def test_a_vanished_quote_of_unknown_status_waits_for_the_fill_check_limit(maker, exchange):
    maker.run_once()
    step(maker)
    buy = exchange.ours("buy")[0]
    exchange.open.remove(buy)
    exchange.fail("query_order")
    step(maker, mm.AUDIT_EVERY_S)
    found_gone_at = maker.clock.now()
    while maker.clock.now() < found_gone_at + mm.FILL_CHECK_MAX_S:
        assert [c["side"] for c in placed(exchange)][2:] == []
        step(maker)
    step(maker)
    step(maker)
    assert [c["side"] for c in placed(exchange)][2:] == ["buy"]


def calls_after_last(exchange: FakeApi, name: str) -> list[str]:
    names = exchange.names()
    return names[len(names) - names[::-1].index(name):]


def test_price_move_out_of_band_places_new_quotes_once_the_old_are_seen_cancelled(maker, exchange):
    maker.run_once()
    old = {o["side"]: o["cl_ord_id"] for o in exchange.ours()}
    exchange.prices["mark_price"] = "100.05"  # buy now 12.5 bps away, sell 2.5 bps
    step(maker)
    assert calls_after_last(exchange, "query_symbol_price") == \
        ["cancel_orders", "query_order", "query_order", "new_limit_order", "new_limit_order"]
    assert set(exchange.calls_of("cancel_orders")[-1]["cl_ord_ids"]) == set(old.values())
    # 100.05 -/+ 7.5 bps = 99.97496 / 100.12504, rounded away from the mark.
    assert {o["price"] for o in exchange.ours()} == {"99.974", "100.126"}


def test_no_replacement_joins_a_quote_whose_cancel_failed(maker, exchange):
    maker.run_once()
    step(maker)
    exchange.fail("cancel_orders")
    exchange.prices["mark_price"] = "100.05"
    for _ in range(10):
        step(maker)
    assert len(placed(exchange)) == 2  # the old quotes stay, alone, while they cannot be cancelled
    exchange.heal("cancel_orders")
    step(maker, mm.CANCEL_RETRY_S)  # the cancel is retried and accepted...
    step(maker)  # ...the old quotes are seen gone; their status says they did not fill...
    step(maker)  # ...and both sides are quoted again
    assert len(exchange.ours()) == 2 and len(placed(exchange)) == 4
    assert {o["price"] for o in exchange.ours()} == {"99.974", "100.126"}


def test_side_with_no_order_needs_a_quote(maker):
    assert maker.side_needs_requote("buy", mm.Market(Decimal("100"), None, None, 0.0)) is True


@pytest.mark.parametrize("sell_price, needs", [
    ("100.079", False),  # 7.9 bps over the mark, 3.9 over the mid: in band and clear of the book
    ("100.074", True),   # 3.4 bps over the mid: within half the band's minimum (3.5) of the book
])
def test_a_resting_quote_is_replaced_once_the_book_comes_within_half_the_minimum(maker, sell_price, needs):
    """The mark (100) trails a book that rose to 100.03 / 100.05 (mid 100.04)."""
    maker.our.tracked = [mm.OurOrder("sxmmsq1", "sell", Decimal(sell_price), 0.0, seen=True)]
    market = mm.Market(Decimal("100"), Decimal("100.03"), Decimal("100.05"), 0.0)
    assert maker.side_needs_requote("sell", market) is needs


def test_a_quote_the_book_keeps_out_of_the_band_is_not_replaced_by_itself(maker):
    """The book rose 12 bps past a lagging mark: the sell sits 7 bps over the mid, out of the
    mark's band; a new quote would go to the same price, so the side keeps it."""
    market = mm.Market(Decimal("100"), Decimal("100.11"), Decimal("100.13"), maker.clock.monotonic())
    price = maker._price_for("sell", market)
    assert price == Decimal("100.191")  # 7 bps over the mid 100.12
    maker.our.tracked = [mm.OurOrder("sxmmsq2", "sell", price, 0.0, seen=True)]
    assert maker.side_needs_requote("sell", market) and maker._already_at_target("sell", market)


def test_side_with_order_in_flight_is_not_quoted_again(maker, exchange):
    maker.run_once()
    exchange.open.clear()  # not visible yet
    step(maker, 0.5)
    assert len(placed(exchange)) == 2


def test_order_with_no_answer_gets_no_duplicate_until_it_is_given_up(maker, exchange):
    exchange.lost_sides = {"sell"}  # the sell request never arrives, and gets no answer
    maker.run_once()
    exchange.lost_sides = set()
    while maker.clock.now() < START + mm.UNSEEN_GIVE_UP_S - 1:
        step(maker)
        assert [c["side"] for c in placed(exchange)] == ["buy", "sell"]
    step(maker, 1.5)
    assert [c["side"] for c in placed(exchange)] == ["buy", "sell", "sell"]


def test_an_accepted_order_is_waited_for_however_late_it_shows(maker, exchange):
    maker.run_once()
    late = [o for o in exchange.open if o["side"] == "sell"][0]
    exchange.open.remove(late)  # accepted, but matching lags
    for _ in range(60):  # 30 s
        step(maker)
    assert [c["side"] for c in placed(exchange)] == ["buy", "sell"]
    exchange.open.append(late)
    step(maker)
    assert maker.quoting_both_sides()


def test_order_that_becomes_visible_after_several_seconds_is_kept_not_doubled(maker, exchange):
    maker.run_once()
    late = [o for o in exchange.open if o["side"] == "sell"][0]
    exchange.open.remove(late)
    for _ in range(8):  # 4 s of not being visible
        step(maker)
    exchange.open.append(late)
    step(maker)
    step(maker)
    assert [c["side"] for c in placed(exchange)] == ["buy", "sell"]
    assert exchange.calls_of("cancel_orders") == []


def test_order_rejected_during_matching_is_known_by_lookup_before_the_timeout(maker, exchange):
    maker.run_once()
    sell = [o for o in exchange.open if o["side"] == "sell"][0]
    exchange.open.remove(sell)
    exchange.final[sell["cl_ord_id"]] = "rejected"  # an alo that would have crossed
    step(maker, mm.LOOKUP_AFTER_S)
    assert exchange.calls_of("query_order") == [{"cl_ord_id": sell["cl_ord_id"]}]
    assert [c["side"] for c in placed(exchange)] == ["buy", "sell", "sell"]


def test_order_not_visible_yet_is_not_looked_up_before_a_second(maker, exchange):
    maker.run_once()
    exchange.open.clear()
    step(maker, 0.5)
    assert exchange.calls_of("query_order") == []


def test_order_given_up_that_shows_up_later_is_cancelled_as_a_stray(maker, exchange):
    exchange.lost_sides = {"sell"}
    maker.run_once()
    exchange.lost_sides = set()
    lost = placed(exchange)[-1]
    step(maker, mm.UNSEEN_GIVE_UP_S + 0.1)
    step(maker)  # the sell side is quoted again
    exchange.add_open(lost["cl_ord_id"], "sell", str(lost["price"]))  # the lost request arrives after all
    step(maker, mm.AUDIT_EVERY_S)
    assert lost["cl_ord_id"] in exchange.calls_of("cancel_orders")[-1]["cl_ord_ids"]
    assert len(exchange.ours("sell")) == 1


def test_cancel_first_mode_cancels_waits_one_second_then_places_both(exchange):
    maker = make_maker(exchange, MARKET_MAKER_REQUOTE="cancel_first")
    maker.run_once()
    exchange.prices["mark_price"] = "100.05"
    maker.clock.sleep(0.5)
    started = maker.clock.now()
    maker.run_once()
    # After the pause, the position and the price are read again before placing.
    assert exchange.names()[-7:] == ["cancel_orders", "query_order", "query_order", "query_positions",
                                     "query_symbol_price", "new_limit_order", "new_limit_order"]
    assert maker.clock.now() - started >= mm.CANCEL_FIRST_PAUSE_S


def test_cancel_first_places_nothing_when_a_stop_comes_during_its_pause(exchange):
    maker = make_maker(exchange, MARKET_MAKER_REQUOTE="cancel_first")
    maker.run_once()
    exchange.prices["mark_price"] = "100.05"
    sleep = maker.clock.sleep

    def sleep_then_sigterm(seconds):
        sleep(seconds)
        maker.request_stop("SIGTERM")
    maker.clock.sleep = sleep_then_sigterm
    maker.run_once()
    assert len(placed(exchange)) == 2  # only the first pair


def test_gtc_time_in_force_is_passed_through(exchange):
    maker = make_maker(exchange, MARKET_MAKER_TIME_IN_FORCE="gtc")
    maker.run_once()
    assert {c["time_in_force"] for c in placed(exchange)} == {"gtc"}


def test_book_pinned_price_equal_to_the_resting_one_is_not_requoted(maker, exchange):
    exchange.prices.update(mark_price="100", spread_bid="99.94", spread_ask="99.95")
    maker.run_once()  # buy is clamped under the ask at 99.949: 5.1 bps, out of band
    step(maker)
    assert [c["side"] for c in placed(exchange)].count("buy") == 1


# ---- unknown outcomes and failed reads ----------------------------------------------------

def test_order_with_unknown_outcome_is_not_resent_and_is_found_by_client_id(maker, exchange):
    exchange.fail("new_limit_order", UnknownOutcomeError("ReadTimeout"))
    maker.run_once()
    assert len(placed(exchange)) == 2
    exchange.heal("new_limit_order")
    sent = [c["cl_ord_id"] for c in placed(exchange)]
    exchange.add_open(sent[0], "buy", "99.925")  # the exchange did accept the buy
    step(maker)
    assert len(placed(exchange)) == 2  # nothing re-sent while both are in flight
    assert [o for o in maker.our.tracked if o.cl_ord_id == sent[0]][0].seen


def test_refused_order_is_replaced_on_the_next_loop_not_retried_at_once(maker, exchange):
    exchange.fail("new_limit_order", StandXError("alo order rejected", 400))
    maker.run_once()
    assert len(placed(exchange)) == 2
    exchange.heal("new_limit_order")
    step(maker)
    assert len(placed(exchange)) == 4


@pytest.mark.parametrize("read", ["query_positions", "query_symbol_price", "query_open_orders"])
def test_failed_read_sends_no_order(maker, exchange, read):
    exchange.fail(read)
    maker.run_once()
    assert placed(exchange) == []
    assert exchange.calls_of("new_market_order") == []


@pytest.mark.parametrize("prices", [
    {"mark_price": None, "mid_price": None},
    {"mark_price": "abc", "mid_price": None},
    {"mark_price": "-5", "mid_price": None},
])
def test_unusable_price_sends_no_order(maker, exchange, prices):
    exchange.prices.update(prices)
    maker.run_once()
    assert placed(exchange) == []


def test_mid_price_is_used_when_mark_is_missing(maker, exchange):
    exchange.prices.update(mark_price=None, mid_price="200")
    maker.run_once()
    assert {c["price"] for c in placed(exchange)} == {Decimal("199.85"), Decimal("200.15")}


def test_failed_order_refresh_keeps_last_known_orders(maker, exchange):
    maker.run_once()
    step(maker)
    before = [(o.cl_ord_id, o.seen) for o in maker.our.tracked]
    exchange.fail("query_open_orders")
    exchange.prices["mark_price"] = "101"
    step(maker, mm.AUDIT_EVERY_S)
    assert [(o.cl_ord_id, o.seen) for o in maker.our.tracked] == before
    assert len(placed(exchange)) == 2


# ---- positions -----------------------------------------------------------------------------

def test_fill_is_closed_with_a_reduce_only_ioc_market_order(maker, exchange):
    maker.run_once()
    step(maker)
    exchange.fill("buy")
    step(maker)
    close = exchange.calls_of("new_market_order")
    assert close == [{"symbol": "BTC-USD", "side": "sell", "qty": Decimal("0.005"),
                      "reduce_only": True, "time_in_force": "ioc", "cl_ord_id": close[0]["cl_ord_id"]}]
    assert exchange.position == 0
    assert maker.fills == 1


def test_side_that_would_grow_the_position_waits_until_flat(maker, exchange):
    maker.run_once()
    step(maker)
    exchange.fill("buy")
    exchange.fail("new_market_order", StandXError("exchange unavailable", 502))
    step(maker)
    assert [c["side"] for c in placed(exchange)] == ["buy", "sell"]
    exchange.heal("new_market_order")
    step(maker, mm.CLOSE_SETTLE_S)
    step(maker)
    assert [c["side"] for c in placed(exchange)] == ["buy", "sell", "buy"]


def test_short_position_is_closed_with_a_buy(maker, exchange):
    exchange.position = Decimal("-0.01")
    maker.run_once()
    assert exchange.calls_of("new_market_order")[0]["side"] == "buy"
    assert exchange.calls_of("new_market_order")[0]["qty"] == Decimal("0.01")


def test_close_is_not_resent_before_the_position_can_reflect_it(maker, exchange):
    exchange.position = Decimal("0.005")
    exchange.fail("new_market_order", UnknownOutcomeError("ReadTimeout"))
    maker.run_once()
    step(maker, 0.1)
    assert len(exchange.calls_of("new_market_order")) == 1
    step(maker, mm.CLOSE_SETTLE_S)
    assert len(exchange.calls_of("new_market_order")) == 2


@pytest.mark.parametrize("rows, expected", [
    ([], "0"),
    ([{"symbol": "BTC-USD", "qty": "0"}], "0"),
    ([{"symbol": "BTC-USD", "qty": "-0.3"}], "-0.3"),
    ([{"symbol": "BTC-USD", "qty": "0.3", "side": "short"}], "-0.3"),
    ([{"symbol": "BTC-USD", "qty": "0.3", "side": "long"}], "0.3"),
    ([{"symbol": "ETH-USD", "qty": "2"}], "0"),
])
def test_signed_position(rows, expected):
    assert mm.signed_position(rows, "BTC-USD") == Decimal(expected)


# ---- start and stop -------------------------------------------------------------------------

def test_start_cancels_only_our_leftover_orders(exchange):
    exchange.add_open("sxmmbold1", "buy", "99")
    exchange.add_open("manual-order", "sell", "101")
    make_maker(exchange)
    assert exchange.calls_of("cancel_orders") == [{"order_ids": None, "cl_ord_ids": ["sxmmbold1"]}]
    assert [o["cl_ord_id"] for o in exchange.open] == ["manual-order"]


def test_qty_below_the_exchange_minimum_is_a_config_error(exchange):
    exchange.symbol_info[0]["min_order_qty"] = "0.01"
    with pytest.raises(mm.ConfigError, match="MARKET_MAKER_QTY"):
        make_maker(exchange)
    assert placed(exchange) == []


@pytest.mark.parametrize("limits, qty, problem", [
    ({"max_order_qty": "0.001"}, "0.005", "above the exchange's largest order 0.001"),
    ({"max_position_size": "0.004"}, "0.005", "above the exchange's largest position 0.004"),
    ({"max_open_orders": "2"}, "0.005", "allows only 2 open orders"),
    ({"enabled": False}, "0.005", "not trading"),
    ({"status": "halted"}, "0.005", "not trading"),
])
def test_every_limit_of_the_symbol_info_is_checked_at_start(exchange, limits, qty, problem):
    exchange.symbol_info[0].update(limits)
    with pytest.raises(mm.ConfigError, match=problem):
        make_maker(exchange, MARKET_MAKER_QTY=qty)
    assert placed(exchange) == []


def test_qty_within_every_limit_starts(exchange):
    exchange.symbol_info[0].update({"max_order_qty": "0.005", "max_position_size": "1",
                                    "max_open_orders": "100", "enabled": True})
    assert make_maker(exchange).qty == Decimal("0.005")


def test_qty_off_the_lot_is_a_config_error(exchange):
    with pytest.raises(mm.ConfigError, match="lot"):
        make_maker(exchange, MARKET_MAKER_QTY="0.00055")


def test_unknown_symbol_is_a_config_error(exchange):
    with pytest.raises(mm.ConfigError, match="ETH-USD is not listed"):
        make_maker(exchange, MARKET_MAKER_SYMBOL="ETH-USD")


def test_shutdown_cancels_our_orders_only_and_confirms(maker, exchange):
    maker.run_once()
    exchange.add_open("manual-order", "buy", "90")
    assert maker.shutdown() is True
    assert [o["cl_ord_id"] for o in exchange.open] == ["manual-order"]
    assert exchange.calls_of("query_open_orders")  # confirmed by reading back


def test_shutdown_closes_a_position_left_by_a_late_fill(maker, exchange):
    maker.run_once()
    exchange.fill("sell")
    assert maker.shutdown() is True
    assert exchange.position == 0
    assert exchange.calls_of("new_market_order")[-1]["reduce_only"] is True


def test_shutdown_reports_failure_when_cancels_cannot_be_confirmed(maker, exchange):
    maker.run_once()
    exchange.fail("query_open_orders")
    started = maker.clock.now()
    assert maker.shutdown() is False
    assert maker.clock.now() - started <= mm.STOP_DEADLINE_S + 1


def test_shutdown_is_not_clean_while_an_accepted_order_may_still_appear(maker, exchange):
    maker.run_once()  # both quotes sent, neither seen yet
    ids = [o.cl_ord_id for o in maker.our.tracked]
    exchange.open.clear()  # cancelled before ever becoming visible...
    exchange.final[ids[0]] = "canceled"  # ...and the exchange knows about only one of them
    assert maker.shutdown() is False
    assert maker.clock.now() >= START + mm.STOP_DEADLINE_S


def test_shutdown_cancels_an_order_that_becomes_visible_late_before_saying_clean(maker, exchange):
    maker.run_once()
    late = [o for o in exchange.open if o["side"] == "sell"][0]
    exchange.open.remove(late)  # accepted, not visible yet
    sleep = maker.clock.sleep

    def sleep_then_show(seconds):
        sleep(seconds)
        if maker.clock.now() >= START + 4 and late not in exchange.open and late["cl_ord_id"] not in exchange.final:
            exchange.open.append(late)
    maker.clock.sleep = sleep_then_show
    assert maker.shutdown() is True
    assert exchange.ours() == []
    assert exchange.final[late["cl_ord_id"]] == "canceled"


def test_shutdown_is_quick_when_every_unseen_order_is_known_to_be_final(maker, exchange):
    maker.run_once()
    exchange.final = {o.cl_ord_id: "canceled" for o in maker.our.tracked}
    exchange.open.clear()
    started = maker.clock.now()
    assert maker.shutdown() is True
    assert maker.clock.now() - started < 1.5


def test_stop_request_cuts_the_interrupted_loops_requests_short(maker):
    maker.request_stop("SIGTERM")
    assert maker.stop_requested
    assert maker.auth.deadline == pytest.approx(maker.clock.now() + mm.LOOP_GRACE_S)


def test_shutdown_gets_its_own_budget_after_a_slow_loop(maker, exchange):
    maker.run_once()
    maker.request_stop("SIGTERM")
    stop_at = maker.clock.now()
    maker.clock.sleep(mm.LOOP_GRACE_S + 3)  # the interrupted loop overran its grace period
    assert maker.shutdown() is True
    assert maker.auth.deadline == pytest.approx(stop_at + mm.STOP_DEADLINE_S)
    assert exchange.ours() == []


def test_run_stops_after_duration_with_no_orders_left(exchange, monkeypatch):
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY})
    clock = FakeClock()
    maker = mm.MarketMaker(config, FakeAuth(clock), clock=clock)
    assert maker.run(duration_s=5) == mm.EXIT_OK
    assert exchange.ours() == []
    assert len(exchange.calls_of("query_positions")) >= 10


def test_status_line_shows_mode_distances_and_counters(maker, exchange):
    maker.run_once()
    step(maker)
    line = maker.status_line()
    assert "mode=normal" in line and "mark=100" in line
    assert "buy 7.50bps" in line and "sell 7.50bps" in line
    assert "requotes=0" in line and "fills=0" in line and "req/s=" in line


# ---- review fixes -------------------------------------------------------------------------------

def test_an_unexpected_error_still_cancels_our_orders_and_exits_1(exchange):
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY})
    clock = FakeClock()
    maker = mm.MarketMaker(config, FakeAuth(clock), clock=clock)
    calls = []

    def broken_requote(market):
        calls.append(market)
        if len(calls) == 3:
            raise RuntimeError("a bug")
        return mm.MarketMaker.requote(maker, market)
    maker.requote = broken_requote
    assert maker.run() == mm.EXIT_ERROR
    assert exchange.ours() == []


@pytest.mark.parametrize("answer", [{"balance": "NaN"}, {"balance": "Infinity"}, {"balance": "x"}])
def test_a_balance_that_is_not_a_number_is_a_failed_read(maker, exchange, answer):
    exchange.balance = answer
    for _ in range(mm.BALANCE_CHECK_EVERY_LOOPS):
        step(maker)
    assert maker.mode == "normal" and maker.balance == Decimal("1000")


def test_a_position_that_is_not_a_number_is_a_failed_read():
    with pytest.raises(ValueError):
        mm.signed_position([{"symbol": "BTC-USD", "qty": "NaN"}], "BTC-USD")


def test_orders_on_the_side_that_grows_the_position_are_cancelled(maker, exchange):
    maker.run_once()
    step(maker)
    buy = exchange.ours("buy")[0]
    buy["status"] = "partially_filled"  # part of our bid was taken: we are long, the rest rests
    exchange.position = Decimal("0.002")
    step(maker)
    assert buy["cl_ord_id"] in exchange.calls_of("cancel_orders")[-1]["cl_ord_ids"]
    assert exchange.ours("sell")  # the side that reduces the position stays


@pytest.mark.parametrize("status", [None, "", "pending", "NEW", "Open"])
def test_an_order_with_an_unexpected_status_counts_as_live(status):
    assert mm.is_live({"status": status}) is True


@pytest.mark.parametrize("status", ["filled", "canceled", "cancelled", "REJECTED", "expired"])
def test_only_final_statuses_end_an_order(status):
    assert mm.is_live({"status": status}) is False


def test_an_incomplete_open_orders_page_is_a_failed_read(maker, exchange, monkeypatch):
    full = exchange.query_open_orders
    monkeypatch.setattr(exchange, "query_open_orders",
                        lambda auth, symbol=None, limit=None: {**full(auth, symbol), "total": 5000})
    step(maker, mm.AUDIT_EVERY_S)
    assert placed(exchange) == []


def test_unknown_outcome_gets_its_full_visibility_time_after_a_long_timeout(maker, exchange, monkeypatch):
    send = exchange.new_limit_order

    def slow_timeout(*args, **kwargs):
        maker.clock.sleep(10)  # the request times out after the read timeout...
        send(*args, **kwargs)  # ...although the exchange took it
        raise UnknownOutcomeError("ReadTimeout")
    monkeypatch.setattr(exchange, "new_limit_order", slow_timeout)
    exchange.open.clear()
    maker.run_once()
    monkeypatch.setattr(exchange, "new_limit_order", send)
    exchange.open.clear()  # not visible yet at the next read
    step(maker)
    assert len(maker.our.tracked) == 2  # still looked for, not dropped as lost
    assert len(placed(exchange)) == 2  # the first two only: no second order on either side


def test_symbol_rules_are_read_again_and_the_qty_follows_the_lot(maker, exchange):
    exchange.symbol_info[0]["qty_tick_decimals"] = 3
    step(maker, mm.RULES_REFRESH_S)
    assert maker.rules.lot == Decimal("0.001") and str(maker.qty) == "0.005"


def test_rules_that_no_longer_fit_the_qty_stop_the_daemon_with_exit_2(maker, exchange):
    exchange.symbol_info[0]["min_order_qty"] = "0.01"
    step(maker, mm.RULES_REFRESH_S)
    assert maker.stop_requested and maker.exit_code == mm.EXIT_CONFIG


def test_a_stop_request_cuts_the_loop_sleep_short(exchange):
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY, "MARKET_MAKER_CHECK_INTERVAL": "60"})
    clock = FakeClock()
    maker = mm.MarketMaker(config, FakeAuth(clock), clock=clock)
    sleep = clock.sleep

    def sleep_then_stop(seconds):
        sleep(seconds)
        if clock.now() - maker.started_at > 5:
            maker.request_stop("SIGTERM")
    clock.sleep = sleep_then_stop
    started = clock.now()
    maker.run()
    assert clock.now() - started < 15


def test_quotes_being_replaced_still_count_as_resting_until_seen_gone(maker, exchange):
    maker.run_once()
    step(maker)  # both quotes seen
    assert maker.quoting_both_sides()
    exchange.prices["mark_price"] = "100.006"  # the sell drifts to 6.9 bps: both are re-centred
    exchange.fail("query_order")  # the exchange does not show the cancels done yet
    step(maker)
    assert maker.requotes == 1
    assert maker.quoting_both_sides()  # the old pair rests, within 10 bps, until the cancels land
    assert "buy 8.10bps" in maker.status_line() and "sell 6.90bps" in maker.status_line()


def test_no_new_quote_once_a_stop_is_requested(maker, exchange):
    maker.request_stop("SIGTERM")
    maker.run_once()
    assert placed(exchange) == []


# ---- time: a step of the system clock -------------------------------------------------------------

@pytest.mark.parametrize("step_s", [-60, 60])
def test_a_step_of_the_system_clock_neither_pauses_the_loop_nor_ends_it_early(exchange, monkeypatch, step_s):
    real_time = time.time
    stepped_after = real_time() + 0.3
    monkeypatch.setattr(time, "time", lambda: real_time() + (step_s if real_time() > stepped_after else 0))
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY, "MARKET_MAKER_CHECK_INTERVAL": "0.1"})
    clock = RealClock()
    maker = mm.MarketMaker(config, FakeAuth(clock), clock=clock)
    codes = []
    runner = threading.Thread(target=lambda: codes.append(maker.run(duration_s=1.0)), daemon=True)
    started = time.monotonic()
    runner.start()
    runner.join(6)
    assert codes == [mm.EXIT_OK]  # finished, and cleanly
    assert time.monotonic() - started >= 1.0  # the run's duration was not cut short either
    loops = len(exchange.calls_of("query_positions"))
    assert 8 <= loops <= 20  # about one every 0.1 s throughout: no pause, no spin


# ---- quotes the exchange keeps refusing -----------------------------------------------------------

def test_a_lasting_refusal_backs_the_side_off_to_a_few_tries_a_minute(maker, exchange, caplog):
    exchange.fail("new_limit_order", StandXError("insufficient margin", 400, 400))
    for _ in range(240):  # two minutes of loops
        step(maker)
    tries = len(placed(exchange))
    assert 2 * 4 <= tries <= 2 * 9  # both sides: 5, 10, 20, 30, 30 ... s apart, not 240 tries each
    assert "buy quote refused by the exchange (insufficient margin): next buy quote in 30 s" in caplog.text
    assert maker.alerter  # the "refused" condition is reported each loop (tests/test_alerts.py)
    exchange.heal("new_limit_order")
    step(maker, 30)  # both quotes go out...
    step(maker)  # ...and are seen resting: the refusals are over
    assert len(exchange.ours()) == 2 and maker.refusals == {} and maker.refused_since is None


def test_every_quote_refused_for_five_minutes_stops_cleanly_with_exit_5(exchange):
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY})
    clock = FakeClock()
    maker = mm.MarketMaker(config, FakeAuth(clock), clock=clock)
    exchange.fail("new_limit_order", StandXError("symbol is not trading", 400, 400))
    assert maker.run(duration_s=3600) == mm.EXIT_REFUSED
    assert mm.REFUSED_STOP_S <= clock.now() - START < mm.REFUSED_STOP_S + 60
    assert "every quote refused for 5 minutes (last: symbol is not trading)" in maker.stop_reason


def test_a_passing_refusal_is_not_backed_off(maker, exchange):
    exchange.fail("new_limit_order", StandXError("exchange unavailable (HTML error page)", 502))
    step(maker)
    exchange.heal("new_limit_order")
    step(maker)
    assert len(exchange.ours()) == 2


def test_refusals_end_when_a_quote_is_found_resting_by_its_lookup(maker, exchange, monkeypatch):
    """A quote that shows up late is found resting by its own lookup before the list shows it
    (StandX's visibility delay has a tail): that ends its side's refusals too, as the list does."""
    exchange.fail("new_limit_order", StandXError("insufficient margin", 400, 400))
    step(maker)
    assert set(maker.refusals) == {"buy", "sell"}
    exchange.heal("new_limit_order")
    listed = exchange.query_open_orders
    monkeypatch.setattr(exchange, "query_open_orders",
                        lambda auth, symbol=None, limit=None: {"page_size": 0, "result": [], "total": 0})
    step(maker, 30)  # both quotes go out; the list does not show them yet
    while not all(o.seen for o in maker.our.tracked):
        step(maker)  # after a second, their lookups find them resting
    monkeypatch.setattr(exchange, "query_open_orders", listed)
    step(maker)
    assert len(maker.our.tracked) == 2 and maker.refusals == {} and maker.refused_since is None
