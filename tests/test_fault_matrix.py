"""The fault matrix: the real daemon against every fault kind the simulator can inject, one at
a time and two at a time where they interact, in a market that moves and fills our quotes.

Every run is held to the same invariants (tests/fault_harness): at most two live orders of
ours on a side, |position| never above one quote, no quote on the side that grows a position
the daemon could have seen, no order sent twice, no decision on a failed read, a clean stop
within its deadline with none of our orders left (not even one arriving late), no secret in
the output.
"""
from __future__ import annotations

from decimal import Decimal
from itertools import chain
from typing import Callable

import pytest

import market_maker as mm
from tests.fault_harness import (QTY, Run, assert_nothing_arrives_late, assert_nothing_lost,
                                 flat_market, run_daemon)
from tests.sim_helpers import trade_through

RUN_S = 40
FAULT_AT_S = 5
FAULT_FOR_S = 20
Fault = Callable[[Run], None]


def rule(kind: str, path: str | None = None, **options) -> Fault:
    return lambda run: run.sim.faults.add(kind, path=path, for_s=options.pop("for_s", FAULT_FOR_S), **options)


def position_lag(run: Run) -> None:
    run.sim.set_position_lag(2)
    run.position_lag_s = 2


def odd_partial_fill(run: Run) -> None:
    bids = [o for o in run.our_resting() if o.side == "buy"]
    if bids:
        run.sim.exchange.fill_resting(run.address, bids[0].cl_ord_id, Decimal("0.00123457"))


def expired_token_and_failing_logins(run: Run) -> None:
    run.sim.faults.add("error", path="/v1/offchain/prepare-signin", for_s=8)
    run.sim.expire_tokens()


FAULTS: dict[str, Fault] = {
    "5xx on reads": rule("error", "/api/query_positions", probability=0.3),
    "HTML 502 pages": rule("html", probability=0.3),
    "malformed JSON": rule("malformed", "/api/query_open_orders", probability=0.3),
    "429 with Retry-After": rule("rate_limit", "/api/query_symbol_price", count=2, retry_after_s=2),
    "dropped connections": rule("drop", probability=0.2),
    "stalled answers": rule("stall", "/api/query_positions", count=2, stall_s=6),
    "orders accepted then 504": rule("accept_then_504", "/api/new_order", probability=0.5),
    "failing cancels": rule("error", "/api/cancel_orders"),
    "headers sent slowly": rule("slow_headers", "/api/query_open_orders", count=2, stall_s=20),
    "exchange clock 45 s ahead, then fixed": lambda run: run.sim.set_clock_skew(45),
    "system clock stepped back 60 s": lambda run: run.clock.step_wall(-60),
    "position answers lag fills": position_lag,
    "short tokens and failing logins": lambda run: (run.sim.set_max_token_lifetime(30),
                                                    expired_token_and_failing_logins(run)),
    "orders visible after 4 s": lambda run: run.sim.set_visibility_delay(4),
    "partial fill with odd decimals": odd_partial_fill,
    "compression off": lambda run: run.sim.set_compress(False),
    # The streams (feed="ws" only): a silent socket, prices that stop while the socket lives, junk.
    "streams silent": lambda run: run.sim.streams.silence(FAULT_FOR_S),
    "stream prices paused": lambda run: run.sim.streams.pause_data(FAULT_FOR_S),
    "garbage stream frames": lambda run: [run.sim.streams.send_garbage(text) for text in
                                          ("not json", '{"channel": "nope", "data": {}}',
                                           '{"seq": 1, "channel": "price", "symbol": "BTC-USD", "data": {"mark_price": "-1"}}',
                                           '{"seq": 2, "channel": "position", "data": {"symbol": "BTC-USD", "qty": "1e999"}}')],
}
STREAM_FAULTS = ("streams silent", "stream prices paused", "garbage stream frames")
# Pairs that interact: each makes the other's recovery harder.
PAIRS = [
    ("failing cancels", "orders visible after 4 s"),
    ("failing cancels", "position answers lag fills"),
    ("position answers lag fills", "partial fill with odd decimals"),
    ("headers sent slowly", "system clock stepped back 60 s"),
    ("exchange clock 45 s ahead, then fixed", "short tokens and failing logins"),
    ("orders accepted then 504", "orders visible after 4 s"),
    ("dropped connections", "failing cancels"),
    ("streams silent", "position answers lag fills"),
    ("stream prices paused", "orders visible after 4 s"),
]


def sell_into_our_bid(run: Run) -> None:
    bids = [o for o in run.our_resting() if o.side == "buy"]
    if bids:
        trade_through(run.sim, bids[0], QTY)


def buy_into_our_ask(run: Run) -> None:
    asks = [o for o in run.our_resting() if o.side == "sell"]
    if asks:
        trade_through(run.sim, asks[0], QTY)


def fast_market() -> list[tuple[float, Fault]]:
    """The market swings 3 bps every 1.5 s while the faults last, and takes our quotes twice."""
    swings = [(FAULT_AT_S + 1.5 * i, (lambda bps: lambda run: run.sim.exchange.shift_bps(bps))(3 if i % 2 else -3))
              for i in range(int(FAULT_FOR_S / 1.5))]
    return swings + [(9.2, sell_into_our_bid), (17.3, buy_into_our_ask)]


def clear_faults(run: Run) -> None:
    """The faults end: the exchange behaves again, so the stop can be held to a clean exit."""
    run.sim.faults.clear()
    run.sim.set_clock_skew(0)
    run.sim.set_visibility_delay(0.2)
    run.sim.set_position_lag(0)
    run.sim.set_compress(True)


@pytest.mark.parametrize("feed", ["rest", "ws"])
@pytest.mark.parametrize("names", [(name,) for name in FAULTS] + PAIRS, ids=" + ".join)
def test_every_fault_and_pair_keeps_the_invariants(names, feed, monkeypatch):
    if feed == "rest" and any(name in STREAM_FAULTS for name in names):
        pytest.skip("a stream fault means nothing to a daemon that does not listen to the streams")
    faults = [(FAULT_AT_S, FAULTS[name]) for name in names]
    run = run_daemon(RUN_S, market=flat_market(), monkeypatch=monkeypatch, feed=feed,
                     actions=list(chain(faults, fast_market(), [(FAULT_AT_S + FAULT_FOR_S, clear_faults)])))
    assert_nothing_lost(run, mm.EXIT_OK, double_s=FAULT_FOR_S + 2)
    assert run.ended_at - run.stop_requested_at <= mm.STOP_DEADLINE_S + 1
    assert run.sides_before_stop == ["buy", "sell"]  # back to quoting both sides once it cleared
    assert_nothing_arrives_late(run)


def test_failing_logins_during_the_stop_still_end_clean_once_the_exchange_answers(monkeypatch):
    def logins_fail_across_the_stop(run: Run) -> None:
        run.sim.faults.add("error", path="/v1/offchain/prepare-signin", for_s=6)
        run.sim.expire_tokens()
    run = run_daemon(20, market=flat_market(), monkeypatch=monkeypatch,
                     actions=[(17, logins_fail_across_the_stop), (17.5, sell_into_our_bid)])
    assert_nothing_lost(run, mm.EXIT_OK)
    assert run.ended_at - run.stop_requested_at <= mm.STOP_DEADLINE_S + 1
    assert_nothing_arrives_late(run)
