"""Issue 9: the ways the daemon could still lose money or leave orders behind, each driven
through the real daemon against the simulator's fault injection, in virtual time.

Every run must leave nothing lost (tests/fault_harness.assert_nothing_lost: exit code, no
order of ours, no position, at most two live orders a side, |position| never above one quote,
no quote on the side that grows a seen position, no order sent twice, no secret shown) and no
order of ours may appear after the stop. Then each test checks what its defect needs.
"""
from __future__ import annotations

import json
from decimal import Decimal
from email.utils import formatdate

import pytest

import market_maker as mm
from tests.fault_harness import (QTY, START_TS, Run, assert_nothing_arrives_late, assert_nothing_lost,
                                 flat_market, run_daemon)
from tests.sim_helpers import trade_through

FLAT_MID = Decimal("95000")  # fault_harness.flat_market: 94999.9 / 95000.1
READS = ("/api/query_positions", "/api/query_symbol_price", "/api/query_open_orders",
         "/api/query_balance")


def quotes(run: Run, since: float = 0.0, until: float = float("inf"), side: str | None = None):
    return [r for r in run.sent("/api/new_order", since, until)
            if r.body.get("order_type") == "limit" and side in (None, r.body.get("side"))]


def closes(run: Run, since: float = 0.0):
    return [r for r in run.sent("/api/new_order", since) if r.body.get("order_type") == "market"]


def two_sided_at_the_end(run: Run) -> None:
    assert run.sides_before_stop == ["buy", "sell"]


def finish(run: Run, code: int = mm.EXIT_OK, double_s: float = 3.0) -> None:
    assert_nothing_lost(run, code, double_s)
    assert_nothing_arrives_late(run)


def shift(bps: float):
    return lambda run: run.sim.exchange.shift_bps(bps)


def sell_into_our_bid(run: Run) -> None:
    """A seller takes whatever bid of ours rests (a fill of one quote)."""
    bids = [o for o in run.our_resting() if o.side == "buy"]
    if bids:
        trade_through(run.sim, bids[0], QTY)


# ---- 1. a learned clock offset goes away again ---------------------------------------------------

def test_signing_offset_returns_to_zero_after_the_clock_is_fixed_and_quoting_goes_on(monkeypatch):
    run = run_daemon(40, market=flat_market(), monkeypatch=monkeypatch, actions=[
        (5, lambda run: run.sim.set_clock_skew(45)), (6, shift(3)),
        (15, lambda run: run.sim.set_clock_skew(0)), (16, shift(-3)), (25, sell_into_our_bid)])
    assert run.maker.auth.time_offset_s == 0.0
    assert "our clock agrees with the exchange's again" in run.logs
    after_fix = run.sent("/api/new_order", run.t(16))
    assert after_fix and all(r.status == 200 for r in after_fix)  # quotes and the close signed right
    assert closes(run, run.t(25))
    two_sided_at_the_end(run)
    finish(run)


# ---- 2. failing cancels never pile orders up ----------------------------------------------------

def whipsaw(start: float, end: float, bps: float = 3.0, every_s: float = 1.5):
    return [(t, shift(bps if i % 2 == 0 else -bps))
            for i, t in enumerate(x / 10 for x in range(int(start * 10), int(end * 10), int(every_s * 10)))]


def test_failing_cancels_in_a_moving_market_never_pile_orders_up(monkeypatch):
    run = run_daemon(40, market=flat_market(), monkeypatch=monkeypatch,
                     setup=lambda run: run.sim.faults.add("error", path="/api/cancel_orders",
                                                          after_s=5, for_s=20),
                     actions=whipsaw(5, 25))
    assert quotes(run, run.t(5.5), run.t(25)) == []  # no new order beside one we cannot cancel
    failed = [r for r in run.sent("/api/cancel_orders") if r.status == 500]
    retried = run.sent("/api/cancel_orders", run.t(25))
    assert failed and retried  # the cancels kept failing, and were retried once they could work
    two_sided_at_the_end(run)
    finish(run)


# ---- 3. a step of the system clock never freezes the loop ---------------------------------------

@pytest.mark.parametrize("step_s", [-60, 60])
def test_a_wall_clock_step_neither_stops_the_loop_nor_delays_a_close(step_s, monkeypatch):
    run = run_daemon(25, market=flat_market(), monkeypatch=monkeypatch, actions=[
        (5, lambda run: run.clock.step_wall(step_s)), (6, sell_into_our_bid)])
    reads = run.sent("/api/query_positions", run.t(5))
    gaps = [b.t - a.t for a, b in zip(reads, reads[1:])]
    assert max(gaps) < 1.5  # the loop went on every 0.5 s
    close = closes(run, run.t(6))
    assert close and close[0].t - run.t(6) < 1.5 and close[0].status == 200
    two_sided_at_the_end(run)
    finish(run)


# ---- 4. a fill the position answer does not show yet is never re-quoted -------------------------

def test_a_fill_the_position_answer_lags_is_not_quoted_again_on_that_side(monkeypatch):
    def lag(run: Run) -> None:
        run.sim.set_position_lag(3)
        run.position_lag_s = 3
    fills = [(6 + 0.6 * i, sell_into_our_bid) for i in range(6)]  # a seller keeps hitting bids
    run = run_daemon(25, market=flat_market(), monkeypatch=monkeypatch, setup=lag, actions=fills)
    assert run.metrics()["maker_fills"] == 1
    assert run.max_abs_position == QTY
    two_sided_at_the_end(run)
    finish(run)


# ---- 5. a failed early renewal keeps the valid token --------------------------------------------

def test_a_failed_token_renewal_does_not_stop_a_fill_being_closed(monkeypatch):
    def short_tokens(run: Run) -> None:
        run.sim.set_max_token_lifetime(600)  # renewal due at 540 s
        run.sim.faults.add("error", path="/v1/offchain/prepare-signin", after_s=530, for_s=40)
    run = run_daemon(580, market=flat_market(), monkeypatch=monkeypatch, setup=short_tokens,
                     actions=[(550, sell_into_our_bid)])
    assert "token renewal failed" in run.logs
    close = closes(run, run.t(550))
    assert close and close[0].t - run.t(550) < 1.5 and close[0].status == 200
    private = [r for r in run.requests if r.t >= run.t(540) and r.path.startswith("/api/")
               and r.path not in ("/api/query_symbol_price", "/api/query_symbol_info")]
    assert all(r.status != 401 for r in private)
    assert len(run.sent("/v1/offchain/login")) == 2  # renewed once the login worked again
    two_sided_at_the_end(run)
    finish(run)


# ---- 6. the stop logs in afresh, whatever the backoff -------------------------------------------

def test_the_stop_logs_in_at_once_after_the_exchange_recovers_from_failing_logins(monkeypatch):
    def outage(run: Run) -> None:
        run.sim.faults.add("error", path="/v1/offchain/prepare-signin", after_s=5, for_s=60)
    run = run_daemon(68, market=flat_market(), monkeypatch=monkeypatch, setup=outage,
                     actions=[(5, lambda run: run.sim.expire_tokens())])
    assert "login failed (" in run.logs
    assert run.sides_before_stop == ["buy", "sell"]  # our quotes rested through the outage
    stop_logins = run.sent("/v1/offchain/login", run.stop_requested_at)
    assert stop_logins and stop_logins[0].t - run.stop_requested_at < 2
    finish(run)


# ---- 7. compressed answers ----------------------------------------------------------------------

def test_compressed_answers_are_decoded_from_login_to_stop(monkeypatch):
    encodings = []

    def record_encoding(run: Run) -> None:
        handle = run.sim.handle

        def handle_and_note(method, path, query, headers, body):
            answer = handle(method, path, query, headers, body)
            encodings.append(answer[1].get("Content-Encoding"))
            return answer
        run.sim.handle = handle_and_note
    run = run_daemon(10, market=flat_market(), monkeypatch=monkeypatch, setup=record_encoding)
    assert "gzip" in encodings and run.sim.compress
    assert len(run.sent("/v1/offchain/login")) == 1
    two_sided_at_the_end(run)
    finish(run)


# ---- 8. a server that sends its headers slowly ----------------------------------------------------

def test_headers_that_trickle_in_cost_one_request_limit_and_the_loop_goes_on(monkeypatch):
    run = run_daemon(30, market=flat_market(), monkeypatch=monkeypatch, setup=lambda run: run.sim.faults.add(
        "slow_headers", path="/api/query_positions", after_s=5, count=1, stall_s=30))
    slow = run.sent("/api/query_positions", run.t(5), run.t(6))[0]
    after = run.sent("/api/query_positions", slow.t + 0.01)
    assert after and after[0].t - slow.t <= 8.5  # REQUEST_TOTAL_S, not the 30 s of headers
    two_sided_at_the_end(run)
    finish(run)


# ---- 9. orders that become visible late are not doubled -----------------------------------------

def test_orders_visible_only_after_four_seconds_cost_no_churn_and_no_duplicate(monkeypatch):
    run = run_daemon(30, market=flat_market(), monkeypatch=monkeypatch,
                     setup=lambda run: run.sim.set_visibility_delay(4))
    assert len(quotes(run)) == 2  # one quote a side, kept while it became visible
    assert run.sent("/api/cancel_orders", until=run.stop_requested_at) == []  # no stray, no churn
    two_sided_at_the_end(run)
    finish(run)


def test_a_stop_right_after_a_requote_waits_for_the_late_orders_and_cancels_them(monkeypatch):
    def slow_then_move(run: Run) -> None:
        run.sim.set_visibility_delay(4)
        run.sim.exchange.shift_bps(3)

    def stop(run: Run) -> None:
        run.maker.request_stop("SIGTERM")
    # the requote must follow the move at once: the mid mark (StandX's lags by seconds)
    run = run_daemon(30, market=flat_market(), monkeypatch=monkeypatch, mark="mid",
                     actions=[(5, slow_then_move), (5.8, stop)])
    assert quotes(run, run.t(5))  # the requote went out just before the stop
    finish(run)  # and nothing of ours rests, now or ten seconds later


# ---- 10. a stop during start-up goes through the clean stop -------------------------------------

def test_a_stop_during_start_up_cancels_the_orders_an_earlier_run_left(monkeypatch):
    def leftover_and_no_rules(run: Run) -> None:
        run.sim.exchange.submit_order(run.address, side="buy", order_type="limit", qty=QTY,
                                      time_in_force="alo", reduce_only=False,
                                      price=Decimal("94000"), cl_ord_id="sxmmbleft1")
        run.sim.faults.add("error", path="/api/query_symbol_info")  # start cannot finish

    run = run_daemon(30, market=flat_market(), monkeypatch=monkeypatch,
                     setup=together(leftover_and_no_rules, stop_at(4)))
    assert "cannot start yet" in run.logs
    assert run.sim.exchange.find_order(run.address, cl_ord_id="sxmmbleft1").status == "canceled"
    assert quotes(run) == []
    finish(run)


def together(*setups):
    def setup(run: Run) -> None:
        for one in setups:
            one(run)
    return setup


def stop_at(seconds: float):
    """SIGTERM `seconds` into the run, wherever the daemon is (start-up retries included)."""
    def install(run: Run) -> None:
        sleep = run.clock.sleep

        def sleep_then_stop(pause: float) -> None:
            sleep(pause)
            if run.clock.now() >= run.t(seconds) and not run.maker.stop_requested:
                run.maker.request_stop("SIGTERM")
        run.clock.sleep = sleep_then_stop
    return install


# ---- also closed: lot grid, 200 with a code, old prices ------------------------------------------

def test_a_position_with_more_decimals_than_the_lot_is_closed_in_one_order(monkeypatch):
    def odd_fill(run: Run) -> None:
        bid = next(o for o in run.our_resting() if o.side == "buy")
        run.sim.exchange.fill_resting(run.address, bid.cl_ord_id, Decimal("0.00123457"))
    run = run_daemon(20, market=flat_market(), monkeypatch=monkeypatch, actions=[(5, odd_fill)])
    close = closes(run, run.t(5))
    assert close[0].body["qty"] == "0.0013" and close[0].status == 200
    assert len(close) == 1
    two_sided_at_the_end(run)
    finish(run)


def test_an_order_answered_200_with_an_error_code_is_not_taken_as_placed(monkeypatch):
    run = run_daemon(20, market=flat_market(), monkeypatch=monkeypatch, setup=lambda run: run.sim.faults.add(
        "body", path="/api/new_order", after_s=5, count=1, body={"code": 400, "message": "qty too small"}),
        actions=[(5, shift(3))])
    assert "refused (code 400): qty too small" in run.logs
    two_sided_at_the_end(run)
    finish(run)


def test_no_quote_is_priced_off_a_price_read_that_took_seconds(monkeypatch):
    run = run_daemon(20, market=flat_market(), monkeypatch=monkeypatch, setup=lambda run: run.sim.faults.add(
        "stall", path="/api/query_symbol_price", after_s=5, count=1, stall_s=3),
        actions=[(5, shift(3))])
    assert "s old: no quote decision on it" in run.logs
    slow, fresh = run.sent("/api/query_symbol_price", run.t(5))[:2]
    assert fresh.t - slow.t >= 3
    assert quotes(run, slow.t, fresh.t) == []  # nothing on the 3 s old price
    two_sided_at_the_end(run)
    finish(run)


# ---- found by the adversarial review of this work --------------------------------------------------

def test_a_bid_filled_just_before_its_replacement_is_never_joined_by_a_second_bid(monkeypatch):
    """A seller takes our bid and the price drops after the loop's position read was answered:
    the bid looks too close, is 'replaced', and its cancel is accepted though it had filled."""
    def fill_then_drop_during_the_price_read(run: Run) -> None:
        handle, done = run.sim.handle, []

        def handle_and_hit(method, path, query, headers, body):
            if path == "/api/query_symbol_price" and not done and run.clock.now() >= run.t(8):
                done.append(True)
                sell_into_our_bid(run)
                run.sim.exchange.shift_bps(-3)
            return handle(method, path, query, headers, body)
        run.sim.handle = handle_and_hit
    run = run_daemon(20, market=flat_market(), monkeypatch=monkeypatch, setup=fill_then_drop_during_the_price_read,
                     actions=[(8.5 + 0.1 * i, sell_into_our_bid) for i in range(10)])
    assert run.metrics()["maker_fills"] == 1
    finish(run)


@pytest.mark.parametrize("lag_s", [1.0, 5.0])
def test_a_fill_during_the_stop_is_closed_though_the_position_answer_lags(lag_s, monkeypatch):
    def lag(run: Run) -> None:
        run.sim.set_position_lag(lag_s)
        run.position_lag_s = lag_s

    def stop_and_fill(run: Run) -> None:
        run.maker.request_stop("SIGTERM")
        sell_into_our_bid(run)
    run = run_daemon(30, market=flat_market(), monkeypatch=monkeypatch, setup=lag, actions=[(10, stop_and_fill)])
    assert closes(run, run.t(10))
    finish(run)  # exit 0 only once flat, and flat it is


def test_a_cancel_accepted_but_never_carried_out_gets_no_replacement_beside_it(monkeypatch):
    run = run_daemon(30, market=flat_market(), monkeypatch=monkeypatch, setup=lambda run: run.sim.faults.add(
        "body", path="/api/cancel_orders", after_s=5, for_s=10, body={"code": 0, "message": "success"}),
        actions=[(5, shift(3))] + [(6 + i, sell_into_our_bid) for i in range(8)])
    assert run.max_abs_position <= QTY
    assert max(run.metrics()["max_live_orders"].values()) == 1  # never the old and a new together
    two_sided_at_the_end(run)
    finish(run)


def test_an_accepted_order_that_shows_only_after_30_s_is_not_left_behind_by_the_stop(monkeypatch):
    def slow_then_move(run: Run) -> None:
        run.sim.set_visibility_delay(30)
        run.sim.exchange.shift_bps(3)
    # the requote must follow the move at once: the mid mark (StandX's lags by seconds)
    run = run_daemon(20, market=flat_market(), monkeypatch=monkeypatch, mark="mid",
                     actions=[(5, slow_then_move), (6, lambda run: run.sim.set_visibility_delay(0.2))])
    assert run.code == mm.EXIT_ERROR and "could not confirm" in run.logs  # it cannot be ruled out
    run.clock.sleep(20)
    assert run.metrics()["orders_placed"] == len(run.sent("/api/new_order", until=run.t(21)))


def test_a_known_fill_the_position_shows_20_s_late_keeps_its_side_waiting(monkeypatch):
    def lag(run: Run) -> None:
        run.sim.set_position_lag(20)
        run.position_lag_s = 20
    run = run_daemon(40, market=flat_market(), monkeypatch=monkeypatch, setup=lag,
                     actions=[(6, sell_into_our_bid), (18, sell_into_our_bid)])
    assert quotes(run, run.t(6.5), run.t(26), side="buy") == []
    assert run.max_abs_position == QTY
    finish(run)


def test_a_proxy_stamping_a_wrong_date_does_not_lock_out_every_write(monkeypatch):
    def wrong_date(run: Run) -> None:
        handle = run.sim.handle

        def handle_and_restamp(method, path, query, headers, body):
            status, out_headers, out_body = handle(method, path, query, headers, body)
            if run.clock.now() >= run.t(5):
                out_headers = {**out_headers, "Date": formatdate(run.clock.now() + 120, usegmt=True)}
            return status, out_headers, out_body
        run.sim.handle = handle_and_restamp
    run = run_daemon(30, market=flat_market(), monkeypatch=monkeypatch, setup=wrong_date,
                     actions=[(8, sell_into_our_bid)])
    assert "stamping with our own clock" in run.logs
    assert len([r for r in run.requests if r.status == 403]) <= 2
    two_sided_at_the_end(run)
    finish(run)


@pytest.mark.parametrize("path, body", [
    ("/api/query_symbol_price", {"symbol": "BTC-USD", "mark_price": "1e999999", "spread_bid": None,
                                 "spread_ask": None}),
    ("/api/query_positions", [{"symbol": "BTC-USD", "qty": "1e999999", "side": "long"}]),
])
def test_an_absurd_number_in_an_answer_is_a_malformed_read_not_a_crash(path, body, monkeypatch):
    run = run_daemon(20, market=flat_market(), monkeypatch=monkeypatch,
                     setup=lambda run: run.sim.faults.add("body", path=path, after_s=5, count=1, body=body))
    assert "malformed" in run.logs or "no usable mark" in run.logs
    two_sided_at_the_end(run)
    finish(run)


# ---- found by the second review ------------------------------------------------------------------

def buy_into_our_ask(run: Run) -> None:
    asks = [o for o in run.our_resting() if o.side == "sell"]
    if asks:
        trade_through(run.sim, asks[0], QTY)


def lift_our_ask_when_the_close_goes_out(run: Run) -> None:
    """The ordinary round trip: our bid is taken, and before our close reaches the book a buyer
    takes our ask, so the position goes back to flat without ever showing short."""
    handle, done = run.sim.handle, []

    def handle_and_lift(method, path, query, headers, body):
        if path == "/api/new_order" and b'"market"' in body and not done:
            done.append(True)
            buy_into_our_ask(run)
        return handle(method, path, query, headers, body)
    run.sim.handle = handle_and_lift


def lagging_positions(seconds: float):
    def setup(run: Run) -> None:
        run.sim.set_position_lag(seconds)
        run.position_lag_s = seconds
    return setup


def sell_quotes_after(run: Run, seconds: float) -> list:
    return quotes(run, run.t(seconds), side="sell")


def test_after_a_round_trip_that_never_showed_short_the_sell_side_quotes_again(monkeypatch):
    run = run_daemon(30, market=flat_market(), monkeypatch=monkeypatch, setup=lift_our_ask_when_the_close_goes_out,
                     actions=[(6, sell_into_our_bid)])
    asks = sell_quotes_after(run, 6)
    assert asks and asks[0].t - run.t(6) < 3
    two_sided_at_the_end(run)
    finish(run)


@pytest.mark.parametrize("lag_s", [2.0, 5.0])
def test_a_round_trip_then_a_fill_during_the_stop_never_passes_for_flat(lag_s, monkeypatch):
    def stop_and_fill(run: Run) -> None:
        run.maker.request_stop("SIGTERM")
        sell_into_our_bid(run)
    run = run_daemon(60, market=flat_market(), monkeypatch=monkeypatch,
                     setup=together(lagging_positions(lag_s), lift_our_ask_when_the_close_goes_out),
                     actions=[(6, sell_into_our_bid), (30, stop_and_fill)])
    finish(run)


@pytest.mark.parametrize("lag_s", [2.0, 3.0])
def test_a_round_trip_then_more_sellers_never_take_two_bids(lag_s, monkeypatch):
    run = run_daemon(45, market=flat_market(), monkeypatch=monkeypatch,
                     setup=together(lagging_positions(lag_s), lift_our_ask_when_the_close_goes_out),
                     actions=[(6, sell_into_our_bid)] + [(30 + 0.5 * i, sell_into_our_bid) for i in range(8)])
    assert run.max_abs_position == QTY
    finish(run)


def test_a_partial_fill_of_a_quote_does_not_keep_its_side_dark(monkeypatch):
    def bid_taken_and_part_of_the_ask(run: Run) -> None:
        bid = next(o for o in run.our_resting() if o.side == "buy")
        ask = next(o for o in run.our_resting() if o.side == "sell")
        run.sim.exchange.fill_resting(run.address, bid.cl_ord_id, QTY)
        run.sim.exchange.fill_resting(run.address, ask.cl_ord_id, Decimal("0.002"))
    # the requote must follow the move at once: the mid mark (StandX's lags by seconds)
    run = run_daemon(40, market=flat_market(), monkeypatch=monkeypatch, mark="mid",
                     actions=[(6, bid_taken_and_part_of_the_ask), (15, shift(3))])
    asks = sell_quotes_after(run, 15)
    assert asks and asks[0].t - run.t(15) < 3
    two_sided_at_the_end(run)
    finish(run)


@pytest.mark.parametrize("tif", ["alo", "gtc"])
def test_a_replacement_is_not_priced_off_a_read_that_the_cancel_confirmation_made_old(tif, monkeypatch):
    def slow_lookup_while_the_market_falls(run: Run) -> None:
        handle, done = run.sim.handle, []

        def handle_slowly(method, path, query, headers, body):
            if path == "/api/query_order" and run.clock.now() >= run.t(8) and not done:
                done.append(True)
                run.sim.faults.add("stall", path="/api/query_order", count=1, stall_s=6)
                answer = handle(method, path, query, headers, body)
                run.sim.exchange.shift_bps(-8)
                return answer
            return handle(method, path, query, headers, body)
        run.sim.handle = handle_slowly
    run = run_daemon(25, market=flat_market(), monkeypatch=monkeypatch, setup=slow_lookup_while_the_market_falls,
                     actions=[(8, shift(3))], env={"MARKET_MAKER_TIME_IN_FORCE": tif})
    assert run.metrics()["taker_fills"] == 0 and run.max_abs_position == 0
    finish(run)


# ---- found by the third review ---------------------------------------------------------------------

def test_quotes_rejected_in_matching_for_margin_back_off_and_stop_with_exit_5(monkeypatch):
    def broke(run: Run) -> None:
        run.sim.exchange.set_balance(run.address, Decimal("5"))
        run.sim.exchange.shift_bps(4)  # both quotes leave the band: their replacements lack margin
    run = run_daemon(400, market=flat_market(), monkeypatch=monkeypatch, actions=[(10, broke)])
    assert run.code == mm.EXIT_REFUSED
    assert "quote refused by the exchange (insufficient margin)" in run.logs
    assert len(quotes(run, run.t(60), run.t(120))) <= 2 * 3  # a few tries a minute a side, not 240
    assert_nothing_arrives_late(run)


def test_a_round_trip_the_daemon_never_saw_does_not_darken_a_side(monkeypatch):
    def both_taken_within_one_loop(run: Run) -> None:
        sell_into_our_bid(run)
        buy_into_our_ask(run)
    run = run_daemon(20, market=flat_market(), monkeypatch=monkeypatch, actions=[(6.1, both_taken_within_one_loop)])
    assert quotes(run, run.t(6.1), run.t(10), side="buy") and quotes(run, run.t(6.1), run.t(10), side="sell")
    finish(run)


# ---- found by the realistic simulator (issue 11) ------------------------------------------------

def test_a_quote_rejected_in_matching_for_no_lasting_reason_is_placed_again_at_once(monkeypatch):
    """StandX rejects some accepted orders in matching; a side must not go dark for 5 s over one
    such rejection (the refusal backoff is for reasons that repeat, such as margin)."""
    def reject_the_next_two_orders(run: Run) -> None:
        timing = run.sim.exchange._timing
        real, left = timing.order, [2]

        def order():
            drawn = real()
            if left[0]:
                left[0] -= 1
                return drawn._replace(rejected=True)
            return drawn
        monkeypatch.setattr(timing, "order", order)

    # the move must reach the mark at once, so that the requote (and its rejection) is at 5 s
    run = run_daemon(20, market=flat_market(), monkeypatch=monkeypatch, mark="mid",
                     actions=[(5, reject_the_next_two_orders), (5, shift(3))])
    assert run.metrics()["rejected_in_matching"] == 2
    for side in ("buy", "sell"):
        sent = quotes(run, run.t(5), side=side)
        assert len(sent) >= 2 and sent[1].t - sent[0].t < 2.0, side
    assert "quote refused by the exchange" not in run.logs
    two_sided_at_the_end(run)
    finish(run)


def test_after_the_tick_changes_the_first_refused_quote_makes_the_daemon_read_the_new_rules(monkeypatch):
    """StandX can change a symbol's tick at runtime; a quote on the old grid is refused. The
    refusal must make the daemon read the rules again at once, not after its 5-minute refresh."""
    # the move must reach the mark at once, so that the requote is at 6 s
    run = run_daemon(30, market=flat_market(), monkeypatch=monkeypatch, mark="mid", actions=[
        (5, lambda run: run.sim.set_symbol_rules(price_tick_decimals=0)), (6, shift(3))])
    sent = run.sent("/api/new_order", run.t(6))
    refused = [r for r in sent if r.status == 400]
    on_the_new_grid = [r for r in sent if r.status == 200 and "." not in r.body["price"]]
    assert refused and on_the_new_grid
    assert on_the_new_grid[0].t - refused[0].t < 2.0
    assert len(refused) <= 2  # one per side at most: the rules are read before the next try
    two_sided_at_the_end(run)
    finish(run)


def test_when_the_mark_trails_a_rally_the_sell_keeps_its_distance_from_the_book_and_is_not_filled(monkeypatch):
    """StandX's mark trails the book: after the book jumps 6 bps, a sell 7.5 bps over the mark
    would rest 1.5 bps over the mid and the rally would fill it. It keeps MIN_BPS from the mid,
    and a quote the book keeps out of the band is not replaced by itself loop after loop."""
    def rally(run: Run) -> None:
        run.sim.exchange.shift_bps(6)

    def buyers_lift_near_the_touch(run: Run) -> None:
        book = run.sim.exchange.book()
        run.sim.exchange.add_trade(book.ask * (1 + Decimal("0.0003")), QTY, "buy")  # 3 bps through the ask

    run = run_daemon(30, market=flat_market(), monkeypatch=monkeypatch,
                     actions=[(5, rally), (7, buyers_lift_near_the_touch)])
    assert run.max_abs_position == 0
    sells = quotes(run, run.t(5), side="sell")
    mid_after = FLAT_MID * (1 + Decimal("0.0006"))  # shift_bps rounds to the tick: within 0.1
    assert sells and all(Decimal(r.body["price"]) >= mid_after * (1 + Decimal("0.0007")) - Decimal("0.1")
                         for r in sells)
    assert run.maker.requotes <= 6  # no replacement of a quote by itself every loop
    two_sided_at_the_end(run)
    finish(run)


def test_a_mark_that_stays_off_the_book_does_not_make_the_guarded_side_churn(monkeypatch):
    """Found by review: with StandX's mark 4 bps over the book's mid for a while (the mark
    falls back to the index while no trade prints), the book keeps the buy 11 bps under the mark,
    out of the band. It was replaced by another out-of-band buy each time the mid moved a tick."""
    from standx_sim.presets import PRESETS
    from standx_sim.wire import decompress

    def mark_over_the_mid(bps: str):
        def setup(run: Run) -> None:
            inner = run.sim.handle

            def handle(method, path, query, headers, body):
                status, out_headers, out_body = inner(method, path, query, headers, body)
                if path == "/api/query_symbol_price" and status == 200:
                    prices = json.loads(decompress(out_body, out_headers.get("Content-Encoding")))
                    mid = (Decimal(prices["spread_bid"]) + Decimal(prices["spread_ask"])) / 2
                    prices["mark_price"] = str((mid * (1 + Decimal(bps) / 10000)).quantize(Decimal("0.1")))
                    out_headers = {k: v for k, v in out_headers.items() if k.lower() != "content-encoding"}
                    out_body = json.dumps(prices).encode()
                return status, out_headers, out_body
            run.sim.handle = handle
        return setup

    def calm_market():
        return PRESETS["calm"].figures.market(1, START_TS)
    at_the_mid = run_daemon(900, market=calm_market(), mark="mid", setup=mark_over_the_mid("0"))
    over_the_mid = run_daemon(900, market=calm_market(), mark="mid", setup=mark_over_the_mid("4"))
    assert over_the_mid.maker.requotes <= 2 * at_the_mid.maker.requotes
    finish(over_the_mid)
