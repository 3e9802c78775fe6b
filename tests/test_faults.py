"""The fault suite: the real daemon against the simulator's fault injection, in virtual time.

Every row must leave nothing lost (tests/fault_harness.assert_nothing_lost): the expected exit
code, no order of ours open, no position, no duplicate order on a side, no order sent twice, no
decision on a failed read, no secret in the output. Each row then checks what its fault needs.
"""
from __future__ import annotations

import signal
import time
from decimal import Decimal

import pytest
import requests
from eth_account import Account

import market_maker as mm
from standx_auth import AuthError
from standx_sim.faults import FOREIGN_ADDRESS
from standx_sim.simulate import throwaway_key
from tests.fault_harness import (QTY, Run, assert_no_secret, assert_nothing_arrives_late,
                                 assert_nothing_lost, flat_market, run_daemon)
from tests.sim_helpers import trade_through
from tests.sim_process import account, start_daemon_process, wait_until

READS = ("/api/query_positions", "/api/query_symbol_price", "/api/query_open_orders", "/api/query_balance")
EVERY_PATH = None


def add_fault(kind: str, path: str | None = EVERY_PATH, **rule):
    return lambda run: run.sim.faults.add(kind, path=path, **rule)


def shift(bps: float):
    return lambda run: run.sim.exchange.shift_bps(bps)


def fill_our_buy(run: Run) -> None:
    """A seller takes our resting bid."""
    buy = run.our_resting_buy()
    trade_through(run.sim, buy, Decimal("0.01"))


def two_sided_at_the_end(run: Run) -> None:
    assert run.sides_before_stop == ["buy", "sell"]


def both(*checks):
    def check(run: Run) -> None:
        for one in checks:
            one(run)
    return check


# ---- row checks ---------------------------------------------------------------------------------

def keeps_quoting_through_failed_reads(run: Run) -> None:
    assert run.failed_read_loops  # the fault did bite
    # This market requotes every few seconds (each leaves its side bare while the old quote is
    # confirmed gone): about 85% without faults; a stall on failed reads would fall far below.
    assert run.metrics()["two_sided_uptime"] > 0.75
    two_sided_at_the_end(run)


def html_logged_as_unavailable_in_one_line(run: Run) -> None:
    assert "exchange unavailable (HTML error page)" in run.logs
    assert "<html" not in run.logs.lower() and "nginx" not in run.logs
    two_sided_at_the_end(run)


def no_order_while_prices_or_positions_are_garbled(run: Run) -> None:
    for start, end in ((5, 8), (10, 13), (15, 18)):
        assert run.sent("/api/new_order", run.t(start + 0.1), run.t(end)) == []
    assert "malformed" in run.logs
    two_sided_at_the_end(run)


def waits_out_retry_after_without_a_burst(run: Run) -> None:
    limited = [r for r in run.requests if r.status == 429]
    assert len(limited) == 1
    after = [r for r in run.requests if r.t > limited[0].t]
    assert after[0].t >= limited[0].t + 3 - 0.1  # Retry-After: 3, less the in-flight round trip
    resumed = after[0].t
    # Two normal loops per second (3 reads, 2 quotes, 1 cancel each), not a released backlog.
    assert len([r for r in after if r.t < resumed + 1]) <= 12
    two_sided_at_the_end(run)


def loop_goes_on_after_a_stalled_read(run: Run) -> None:
    assert "ReadTimeout" in run.logs or "timed out" in run.logs
    assert run.sent("/api/query_symbol_price", run.t(20), run.t(30))  # the loop went on
    two_sided_at_the_end(run)


def unknown_outcome_is_found_not_resent(run: Run) -> None:
    assert "outcome unknown" in run.logs
    assert "never became visible" not in run.logs  # it was found by its cl_ord_id
    assert max(run.metrics()["max_live_orders"].values()) <= 2
    two_sided_at_the_end(run)


def rejected_quote_is_replaced_without_a_tight_loop(run: Run) -> None:
    assert "was rejected by the exchange" in run.logs
    buys = [r for r in run.sent("/api/new_order", run.t(5), run.t(11)) if r.body.get("side") == "buy"]
    assert 2 <= len(buys) <= 6  # re-placed about once a second, not on every 0.5 s loop
    two_sided_at_the_end(run)


def filled_order_is_closed_once(run: Run) -> None:
    closes = [r for r in run.sent("/api/new_order") if r.body.get("order_type") == "market"]
    assert len(closes) == 1 and closes[0].body["reduce_only"] is True
    assert run.metrics()["maker_fills"] == 1
    assert len(run.sent("/api/cancel_orders")) <= 6  # no error spiral
    two_sided_at_the_end(run)


def relogs_in_once_and_quotes_again(run: Run) -> None:
    assert len(run.sent("/v1/offchain/login")) == 2
    assert "token refused (HTTP 401)" in run.logs
    two_sided_at_the_end(run)


def failing_login_backs_off_and_says_why(run: Run) -> None:
    attempts = run.sent("/v1/offchain/prepare-signin", run.t(5), run.t(25))
    assert 2 <= len(attempts) <= 7  # 1, 2, 4, 8 s apart: not one per loop (40 loops)
    assert "login failed (" in run.logs
    two_sided_at_the_end(run)


def clock_skew_is_explained_and_measured(run: Run) -> None:
    assert "exchange clock differs from ours by 45" in run.logs
    assert "timedatectl set-ntp true" in run.logs
    assert run.maker.auth.time_offset_s == pytest.approx(45, abs=1.5)
    assert [r for r in run.sent("/api/new_order", run.t(5)) if r.status == 200]
    two_sided_at_the_end(run)


def close_is_retried_until_flat_while_that_side_waits(run: Run) -> None:
    closes = [r for r in run.sent("/api/new_order") if r.body.get("order_type") == "market"]
    assert len(closes) >= 3 and closes[-1].status == 200
    flat_at = closes[-1].t
    buys_while_long = [r for r in run.sent("/api/new_order", run.t(5), flat_at)
                       if r.body.get("order_type") == "limit" and r.body.get("side") == "buy"]
    assert buys_while_long == []
    two_sided_at_the_end(run)


def starts_once_the_exchange_answers(run: Run) -> None:
    assert "cannot start yet" in run.logs
    two_sided_at_the_end(run)


def resumes_and_cancels_strays(run: Run) -> None:
    stray = run.sim.exchange.find_order(run.address, cl_ord_id="sxmmbstray1")
    assert stray.status == "canceled"
    assert run.sent("/api/new_order", run.t(126))  # quoting resumed after the outage
    two_sided_at_the_end(run)


def plant_stray(run: Run) -> None:
    """An order of ours the daemon does not know (its answer lost in the outage) appears just
    before the exchange is reachable again."""
    run.sim.exchange.submit_order(run.address, side="buy", order_type="limit", qty=QTY,
                                  time_in_force="alo", reduce_only=False, price=Decimal("94000"),
                                  cl_ord_id="sxmmbstray1")


def stopped_cleanly_within_the_deadline(run: Run) -> None:
    assert run.stop_requested_at is not None
    assert run.ended_at - run.stop_requested_at <= 15


def stopped_for_the_balance_floor(run: Run) -> None:
    assert "below MARKET_MAKER_BALANCE_EXIT 500" in run.logs
    assert run.ended_at - run.t(5) < 20


# ---- faults that need to act inside the daemon's own calls ------------------------------------

def fill_around_cancel(before: bool):
    """Our old bid is filled as the daemon cancels it: just before the cancel request reaches
    the exchange, or just after (while the cancel is in flight)."""
    def install(run: Run) -> None:
        send_cancel = run.maker._send_cancel
        done = []

        def wrapped(cl_ord_ids):
            if run.clock.now() < run.t(5) or done:
                return send_cancel(cl_ord_ids)
            done.append(True)
            if before:
                fill_our_buy(run)
            accepted = send_cancel(cl_ord_ids)
            if not before:
                fill_our_buy(run)
            return accepted
        run.maker._send_cancel = wrapped
    return install


def stop_during(method: str):
    """SIGTERM arrives while the daemon is inside `method` (a requote or a close)."""
    def install(run: Run) -> None:
        original = getattr(run.maker, method)

        def wrapped(*args, **kwargs):
            if run.clock.now() >= run.t(5):
                run.maker.request_stop("SIGTERM")
            return original(*args, **kwargs)
        setattr(run.maker, method, wrapped)
    return install


def together(*setups):
    def setup(run: Run) -> None:
        for one in setups:
            one(run)
    return setup


def fill_after_5s_by_trade(run: Run) -> None:
    exchange, maker = run.sim.exchange, run.maker
    sleep = run.clock.sleep

    def sleep_then_fill(seconds, done=[]):
        sleep(seconds)
        if not done and run.clock.now() >= run.t(5) and any(o.side == "buy" for o in run.our_resting()):
            done.append(True)
            fill_our_buy(run)
    run.clock.sleep = sleep_then_fill
    assert exchange and maker


ROWS = {
    "5xx on 30% of reads": dict(
        seconds=30, setup=together(*[add_fault("error", p, probability=0.3, after_s=5, for_s=20) for p in READS]),
        check=keeps_quoting_through_failed_reads),
    "HTML 502/504 page instead of JSON": dict(
        seconds=25, setup=together(add_fault("html", status=502, after_s=5, for_s=4),
                                   add_fault("html", status=504, after_s=10, for_s=4)),
        check=html_logged_as_unavailable_in_one_line),
    "malformed JSON, missing fields, null prices": dict(
        seconds=25, market=flat_market(), setup=together(
            add_fault("malformed", "/api/query_symbol_price", after_s=5, for_s=3),
            add_fault("body", "/api/query_symbol_price", after_s=10, for_s=3,
                      body={"symbol": "BTC-USD", "mark_price": None, "mid_price": None}),
            add_fault("body", "/api/query_positions", after_s=15, for_s=3, body=[{"symbol": "BTC-USD"}]),
            add_fault("body", "/api/query_open_orders", after_s=15, for_s=3, body={"page_size": 1})),
        actions=[(5, shift(3)), (10, shift(-3)), (15, shift(3))],
        check=no_order_while_prices_or_positions_are_garbled),
    "429 with Retry-After": dict(
        seconds=20, setup=add_fault("rate_limit", "/api/query_positions", after_s=5, count=1, retry_after_s=3),
        check=waits_out_retry_after_without_a_burst),
    "a read that stalls past the timeout": dict(
        seconds=40, setup=add_fault("stall", "/api/query_positions", after_s=5, count=1, stall_s=12),
        check=loop_goes_on_after_a_stalled_read),
    "new_order accepted but answered 504": dict(
        seconds=20, market=flat_market(), setup=add_fault("accept_then_504", "/api/new_order", after_s=5, count=1),
        actions=[(5, shift(3))], check=unknown_outcome_is_found_not_resent),
    "new_order accepted but timed out": dict(
        seconds=40, market=flat_market(),
        setup=add_fault("stall", "/api/new_order", after_s=5, count=1, stall_s=12),
        actions=[(5, shift(3))], check=unknown_outcome_is_found_not_resent),
    "alo order rejected during matching": dict(
        seconds=20, market=flat_market(),
        # A mark 20 bps above the book with no best bid/ask: our buy lands above the ask.
        setup=add_fault("body", "/api/query_symbol_price", after_s=5, for_s=5,
                        body={"symbol": "BTC-USD", "mark_price": "95190.0", "mid_price": None,
                              "spread_bid": None, "spread_ask": None}),
        check=rejected_quote_is_replaced_without_a_tight_loop),
    "cancel_order for an order already filled": dict(
        seconds=20, market=flat_market(), setup=fill_around_cancel(before=True),
        actions=[(5, shift(3))], check=filled_order_is_closed_once),
    "fill while a cancel is in flight": dict(
        seconds=20, market=flat_market(), setup=fill_around_cancel(before=False),
        actions=[(5, shift(3))], check=filled_order_is_closed_once),
    "token expires mid-run (401)": dict(
        seconds=20, actions=[(5, lambda run: run.sim.expire_tokens())], check=relogs_in_once_and_quotes_again),
    "a login that keeps failing": dict(
        seconds=60, setup=add_fault("error", "/v1/offchain/prepare-signin", after_s=5, for_s=20),
        actions=[(5, lambda run: run.sim.expire_tokens())], check=failing_login_backs_off_and_says_why),
    "403 signature expired (clock skew)": dict(
        seconds=20, market=flat_market(),
        actions=[(5, lambda run: run.sim.set_clock_skew(45)), (5, shift(3))],
        check=clock_skew_is_explained_and_measured),
    "open position after a failed close": dict(
        seconds=20, market=flat_market(),
        setup=add_fault("error", "/api/new_order", after_s=5, count=2),
        actions=[(5, fill_our_buy)], check=close_is_retried_until_flat_while_that_side_waits),
    "exchange unreachable at start": dict(
        seconds=40, setup=add_fault("drop", for_s=20), check=starts_once_the_exchange_answers),
    "exchange unreachable for 2 minutes mid-run": dict(
        seconds=150, setup=add_fault("drop", after_s=5, for_s=120),
        actions=[(124, plant_stray)], check=resumes_and_cancels_strays, double_s=3.0),
    "SIGTERM during a requote": dict(
        seconds=30, market=flat_market(), setup=stop_during("place_quotes"), actions=[(5, shift(3))],
        check=stopped_cleanly_within_the_deadline),
    "SIGTERM during a close": dict(
        seconds=30, market=flat_market(), setup=stop_during("close_position"), actions=[(5, fill_our_buy)],
        check=stopped_cleanly_within_the_deadline),
    "balance below MARKET_MAKER_BALANCE_EXIT": dict(
        seconds=60, code=mm.EXIT_BALANCE_FLOOR, env={"MARKET_MAKER_BALANCE_EXIT": "500"},
        actions=[(5, lambda run: run.sim.exchange.set_balance(run.address, Decimal("400")))],
        check=stopped_for_the_balance_floor),
}


@pytest.mark.parametrize("name", list(ROWS))
def test_fault_leaves_nothing_lost(name, monkeypatch):
    row = dict(ROWS[name])
    check, code, double_s = row.pop("check"), row.pop("code", mm.EXIT_OK), row.pop("double_s", 1.0)
    run = run_daemon(monkeypatch=monkeypatch, **row)
    assert_nothing_lost(run, code, double_s)
    check(run)
    assert_nothing_arrives_late(run)


@pytest.mark.parametrize("kind", ["stall", "slow_headers"])
def test_stop_during_a_stalled_exchange_still_ends_within_15_s(kind, monkeypatch):
    """Every answer held back, or its status line and headers sent a few bytes at a time."""
    def stall_everything_then_stop(run: Run) -> None:
        run.sim.faults.add(kind, stall_s=30)
        run.maker.request_stop("SIGTERM")
    run = run_daemon(30, actions=[(5, stall_everything_then_stop)], monkeypatch=monkeypatch)
    assert run.ended_at - run.stop_requested_at <= 15
    assert run.code == mm.EXIT_ERROR  # it could not confirm the cancels, and says so
    assert "could not confirm" in run.logs
    assert_no_secret(run)


def test_sign_in_message_for_another_wallet_is_refused_unsigned(monkeypatch):
    run = run_daemon(1, monkeypatch=monkeypatch)  # a normal run, for a logged-in simulator
    run.sim.faults.add("foreign_signin", path="/v1/offchain/prepare-signin")
    logins_before = len(run.sent("/v1/offchain/login"))
    with pytest.raises(AuthError, match="another wallet address; refusing to sign"):
        run.maker.auth._sign_in()
    assert len(run.sent("/v1/offchain/login")) == logins_before
    assert FOREIGN_ADDRESS.lower() != run.address


# ---- host faults: real processes ----------------------------------------------------------------

def test_sigkill_then_a_new_run_cancels_the_orphaned_orders_before_quoting(sim_server, tmp_path):
    key = throwaway_key()
    address = Account.from_key(key).address.lower()
    first = start_daemon_process(sim_server, key, tmp_path)
    try:
        assert wait_until(lambda: len(account(sim_server, address).get("open_orders", [])) == 2, 20)
        orphans = {o["cl_ord_id"] for o in account(sim_server, address)["open_orders"]}
    finally:
        first.kill()
        first.wait()
    second = start_daemon_process(sim_server, key, tmp_path)
    try:
        assert wait_until(lambda: (ids := {o["cl_ord_id"] for o in account(sim_server, address)["open_orders"]})
                          and not ids & orphans and len(ids) == 2, 20)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
        output = second.stdout.read()
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert "cancelling 2 order(s) of ours left by an earlier run" in output
    assert account(sim_server, address)["open_orders"] == []


def test_second_instance_on_the_same_account_and_symbol_is_refused(sim_server, tmp_path):
    key = throwaway_key()
    address = Account.from_key(key).address.lower()
    first = start_daemon_process(sim_server, key, tmp_path)
    started = [first]
    try:
        assert wait_until(lambda: len(account(sim_server, address).get("open_orders", [])) == 2, 20)
        second = start_daemon_process(sim_server, key, tmp_path)
        started.append(second)
        code = second.wait(timeout=30)
        output = second.stdout.read()
        other_symbol = start_daemon_process(sim_server, key, tmp_path, MARKET_MAKER_SYMBOL="DOGE-USD")
        started.append(other_symbol)
        other_code = other_symbol.wait(timeout=30)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert code == mm.EXIT_ALREADY_RUNNING
    assert output.strip().splitlines() == [
        f"already running: another market maker quotes BTC-USD for {Account.from_key(key).address} "
        "on this machine; stop it first"]
    assert other_code == mm.EXIT_CONFIG  # not refused by the lock: DOGE-USD is simply not listed here
    assert key[2:] not in output


def test_sigterm_while_the_exchange_stalls_every_answer_ends_the_process_within_15_s(sim_server, tmp_path):
    key = throwaway_key()
    address = Account.from_key(key).address.lower()
    daemon = start_daemon_process(sim_server, key, tmp_path)
    try:
        assert wait_until(lambda: len(account(sim_server, address).get("open_orders", [])) == 2, 20)
        requests.post(f"{sim_server}/_sim/faults", json={"kind": "stall", "stall_s": 60}, timeout=5)
        time.sleep(1)  # a loop is now waiting on a stalled answer
        daemon.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        code = daemon.wait(timeout=30)
        took_s = time.monotonic() - stopped_at
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert took_s <= 15
    assert code == mm.EXIT_ERROR  # it could not confirm the cancels, and says so
