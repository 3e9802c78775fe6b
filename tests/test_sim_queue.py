"""Fills from the market: fill records, queue position, partial fills, the fill report, and
bounded memory over long runs (the fill model in exchange.py)."""
from __future__ import annotations

from decimal import Decimal

import pytest

from standx_sim import Exchange, RecordedMarket, Simulator, SyntheticMarket, VirtualClock
from standx_sim.exchange import FINAL_KEPT, FINAL_RETENTION_S, Order
from standx_sim.market import KEEP_BEHIND_S
from tests.sim_helpers import FLAT_ASK, FLAT_BID, START_TS, flat_sim, in_process_client
from tests.test_sim_market import tiny_prefix
from tests.test_sim_matching import placed

ADDRESS = "0x" + "ab" * 20


# ---- fill records ------------------------------------------------------------------------------

def test_every_fill_is_recorded_newest_first_with_its_fee_and_realized_pnl():
    sim = flat_sim()
    client = in_process_client(sim)
    bid = placed(sim, client, side="buy", price="94990.0", qty="0.0010")
    sim.exchange.fill_resting(client.address, bid, Decimal("0.0004"))
    sim.clock.sleep(1)
    client.market_order("sell", "0.0004", cl_ord_id="close")
    sim.clock.sleep(0.25)
    opening, closing = reversed(sim.exchange.trades(client.address))
    order_id = client.order(bid).json()["id"]
    assert (opening.order_id, opening.side, opening.price, opening.qty) == (order_id, "buy", Decimal("94990.0"),
                                                                           Decimal("0.0004"))
    assert opening.value == Decimal("0.0004") * Decimal("94990.0")
    assert opening.fee == opening.value * Decimal("0.0001")  # maker
    assert opening.pnl == 0 and opening.fee_asset == "DUSD" and opening.symbol == "BTC-USD"
    assert closing.order_id == client.order("close").json()["id"]
    assert (closing.side, closing.price, closing.qty) == ("sell", FLAT_BID, Decimal("0.0004"))
    assert closing.fee == Decimal("0.0004") * FLAT_BID * Decimal("0.0004")  # taker
    assert closing.pnl == Decimal("0.0004") * (FLAT_BID - Decimal("94990.0"))
    assert closing.id > opening.id
    assert closing.created_at - opening.created_at == pytest.approx(1.2)  # the close activated 0.2 s after it was sent


def test_fill_ids_increase_across_accounts():
    sim = flat_sim()
    first, second = in_process_client(sim), in_process_client(sim)
    first.market_order("buy", "0.0010")
    second.market_order("buy", "0.0010")
    sim.clock.sleep(0.25)
    (a,), (b,) = sim.exchange.trades(first.address), sim.exchange.trades(second.address)
    assert b.id == a.id + 1
    assert a.price == b.price == FLAT_ASK


def test_an_account_without_fills_has_no_trades():
    sim = flat_sim()
    client = in_process_client(sim)
    placed(sim, client)
    assert sim.exchange.trades(client.address) == []


# ---- the sizes at the best levels -------------------------------------------------------------

def test_recorded_book_changes_carry_the_sizes_at_the_best_levels(tmp_path):
    market = RecordedMarket([tiny_prefix(tmp_path, "h", ["1000,100.0,100.2,0.5,0.7", "2000,100.1,100.2,0.05,0.7"], [])])
    assert [change[1:] for change in market.book_changes_between(0, 3)] == [
        (Decimal("100.0"), Decimal("100.2"), Decimal("0.5"), Decimal("0.7")),
        (Decimal("100.1"), Decimal("100.2"), Decimal("0.05"), Decimal("0.7"))]


def test_synthetic_level_sizes_never_change_the_prices_or_trades_of_a_seed():
    small, large = SyntheticMarket(seed=9), SyntheticMarket(seed=9, level_size_btc=1.0)
    small_books, large_books = small.book_changes_between(-1, 600), large.book_changes_between(-1, 600)
    assert [b[:3] for b in small_books] == [b[:3] for b in large_books]
    assert small.trades_between(-1, 600) == large.trades_between(-1, 600)
    assert [b.bid_qty for b in small_books] != [b.bid_qty for b in large_books]


def test_synthetic_level_sizes_are_lots_kept_while_their_price_stays_and_near_the_recorded_median():
    books = SyntheticMarket(seed=9).book_changes_between(-1, 900)
    sizes = [b.bid_qty for b in books] + [b.ask_qty for b in books]
    assert all(Decimal("0.0001") <= q <= 3 and q % Decimal("0.0001") == 0 for q in sizes)
    assert Decimal("0.02") <= sorted(sizes)[len(sizes) // 2] <= Decimal("0.12")  # recorded: 0.05 to 0.075
    for before, after in zip(books, books[1:]):
        if after.bid == before.bid:
            assert after.bid_qty == before.bid_qty
        if after.ask == before.ask:
            assert after.ask_qty == before.ask_qty


def test_synthetic_market_read_as_the_engine_reads_it_forgets_the_past_but_not_the_present():
    read, fresh = SyntheticMarket(seed=2, moves_per_s=2), SyntheticMarket(seed=2, moves_per_s=2)
    for t in range(0, 7200, 5):
        read.book_changes_between(t, t + 5)
        read.trades_between(t, t + 5)
    recent = read.book_changes_between(7000, 7200), read.trades_between(7000, 7200)
    assert recent == (fresh.book_changes_between(7000, 7200), fresh.trades_between(7000, 7200))
    assert len(read._book_ts) <= 4 * KEEP_BEHIND_S * 2  # 2 moves a second; generated: about 14400
    assert read.start_ts == 0.0
    assert read.book_at(0.0) == read.book_at(read._book_ts[0])  # before what is kept: the oldest kept book


# ---- queue position and partial fills from the market ------------------------------------------

START_MS = 1_000_000  # the tiny recorded markets below start at data time 1000 s


def exchange_on(tmp_path, *books: str, queue: bool = True) -> tuple[VirtualClock, Exchange]:
    """An exchange replaying recorded book rows "ms_after_start,bid,ask,bid_qty,ask_qty" (no
    trades: the tests print them), with a fixed 0.1 s visibility delay."""
    rows = [f"{START_MS + int(row.split(',', 1)[0])},{row.split(',', 1)[1]}" for row in books]
    market = RecordedMarket([tiny_prefix(tmp_path, "h", rows, [])])
    clock = VirtualClock(market.start_ts)
    return clock, Exchange(clock, market, visibility_delay_s=0.1, queue=queue)


def rest(clock: VirtualClock, exchange: Exchange, side: str, price: str) -> Order:
    """A post-only order of 0.3 that is resting once this returns."""
    order = exchange.submit_order(ADDRESS, side=side, order_type="limit", qty=Decimal("0.3"), time_in_force="alo",
                                  reduce_only=False, price=Decimal(price), cl_ord_id="q")
    clock.sleep(0.1)
    exchange.advance()
    assert order.status == "new"
    return order


def fill_qtys(exchange: Exchange) -> list[Decimal]:
    return [f.qty for f in reversed(exchange.trades(ADDRESS))]


def test_order_joining_the_best_bid_fills_only_after_the_recorded_size_ahead_has_traded(tmp_path):
    clock, ex = exchange_on(tmp_path, "0,100.0,100.2,0.5,0.7")
    order = rest(clock, ex, "buy", "100.0")
    ex.add_trade(Decimal("100.0"), Decimal("0.4"), "sell")  # 0.1 of the 0.5 ahead is left
    ex.add_trade(Decimal("100.0"), Decimal("1"), "buy")  # a buyer taking the ask: not our side
    assert order.status == "new" and fill_qtys(ex) == []
    ex.add_trade(Decimal("100.0"), Decimal("0.2"), "sell")  # 0.1 ahead, then 0.1 of ours
    assert order.status == "partially_filled" and order.fill_qty == Decimal("0.1")
    assert ex.open_orders(ADDRESS) == [order]
    ex.add_trade(Decimal("100.0"), Decimal("0.5"), "sell")  # the remaining 0.2, and more
    assert order.status == "filled" and fill_qtys(ex) == [Decimal("0.1"), Decimal("0.2")]
    assert all(f.price == Decimal("100.0") and f.fee == f.value * ex.spec.maker_fee for f in ex.trades(ADDRESS))


def test_order_joining_the_best_ask_waits_for_buyer_takers_there(tmp_path):
    clock, ex = exchange_on(tmp_path, "0,100.0,100.2,0.5,0.7")
    order = rest(clock, ex, "sell", "100.2")
    ex.add_trade(Decimal("100.2"), Decimal("5"), "sell")  # a seller taking the bid side: not our side
    ex.add_trade(Decimal("100.2"), Decimal("0.8"), "buy")  # 0.7 ahead, then 0.1 of ours
    assert order.status == "partially_filled" and order.fill_qty == Decimal("0.1")
    assert ex.position(ADDRESS).qty == Decimal("-0.1")


def test_order_inside_the_spread_has_nothing_ahead(tmp_path):
    clock, ex = exchange_on(tmp_path, "0,100.0,100.2,0.5,0.7")
    order = rest(clock, ex, "buy", "100.1")
    ex.add_trade(Decimal("100.1"), Decimal("0.1"), "sell")
    assert order.status == "partially_filled" and order.fill_qty == Decimal("0.1")


def test_order_behind_the_best_is_not_reached_by_a_print_at_its_price(tmp_path):
    clock, ex = exchange_on(tmp_path, "0,100.0,100.2,0.5,0.7")
    order = rest(clock, ex, "buy", "99.8")
    ex.add_trade(Decimal("99.8"), Decimal("5"), "sell")  # the size at 99.8 is unknown: others came first
    assert order.status == "new" and order.queue_ahead is None and fill_qtys(ex) == []


def test_order_behind_the_best_takes_the_recorded_size_when_its_level_becomes_the_best(tmp_path):
    clock, ex = exchange_on(tmp_path, "0,100.0,100.2,0.5,0.7", "1000,99.8,100.0,0.2,0.4")
    order = rest(clock, ex, "buy", "99.8")
    clock.sleep(1)
    ex.add_trade(Decimal("99.8"), Decimal("0.25"), "sell")  # 0.2 ahead, then 0.05 of ours
    assert order.fill_qty == Decimal("0.05") and order.status == "partially_filled"


def test_cancels_ahead_shrink_the_queue_and_joiners_behind_do_not_grow_it(tmp_path):
    clock, ex = exchange_on(tmp_path, "0,100.0,100.2,0.5,0.7", "1000,100.0,100.2,0.1,0.7", "2000,100.0,100.2,0.9,0.7")
    order = rest(clock, ex, "buy", "100.0")
    clock.sleep(2)  # 0.5 ahead, then 0.1 (cancels), then 0.9 at the level (joiners behind)
    ex.add_trade(Decimal("100.0"), Decimal("0.15"), "sell")
    assert order.fill_qty == Decimal("0.05")


def test_best_bid_dropping_below_the_order_leaves_nobody_ahead_of_it(tmp_path):
    clock, ex = exchange_on(tmp_path, "0,100.0,100.2,0.5,0.7", "1000,99.9,100.2,0.8,0.7", "2000,100.0,100.2,0.9,0.7")
    order = rest(clock, ex, "buy", "100.0")
    clock.sleep(2)  # alone at 100.0 for a second, then others join behind it
    ex.add_trade(Decimal("100.0"), Decimal("0.1"), "sell")
    assert order.fill_qty == Decimal("0.1")


def test_print_through_the_price_fills_everything_whatever_its_qty(tmp_path):
    clock, ex = exchange_on(tmp_path, "0,100.0,100.2,0.5,0.7")
    order = rest(clock, ex, "buy", "100.0")
    ex.add_trade(Decimal("99.9"), Decimal("0.0001"), "sell")
    assert order.status == "filled" and fill_qtys(ex) == [Decimal("0.3")]


def test_book_reaching_the_order_fills_everything_at_its_price(tmp_path):
    clock, ex = exchange_on(tmp_path, "0,100.0,100.2,0.5,0.7", "1000,99.8,100.0,0.5,0.7")
    order = rest(clock, ex, "buy", "100.0")
    clock.sleep(1)
    ex.advance()
    assert order.status == "filled" and order.fill_avg_price == Decimal("100.0")


def test_without_the_queue_a_touch_fills_everything(tmp_path):
    clock, ex = exchange_on(tmp_path, "0,100.0,100.2,0.5,0.7", queue=False)
    order = rest(clock, ex, "buy", "99.8")
    ex.add_trade(Decimal("99.8"), Decimal("0.0001"), "sell")
    assert order.status == "filled" and fill_qtys(ex) == [Decimal("0.3")]


def test_partial_fill_from_the_market_can_be_cancelled_keeping_what_filled(tmp_path):
    clock, ex = exchange_on(tmp_path, "0,100.0,100.2,0.5,0.7")
    order = rest(clock, ex, "buy", "100.1")
    ex.add_trade(Decimal("100.1"), Decimal("0.1"), "sell")
    ex.request_cancel(ADDRESS, cl_ord_id="q")
    clock.sleep(0.1)
    ex.advance()
    assert order.status == "canceled" and order.fill_qty == Decimal("0.1")
    assert ex.position(ADDRESS).qty == Decimal("0.1")


def test_simulator_queues_by_default():
    sim = Simulator(VirtualClock(START_TS), flat_sim().market, visibility_delay_s=0.2)
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price=str(FLAT_BID))  # behind the recorded size at the bid
    sim.exchange.add_trade(FLAT_BID, Decimal("0.0001"), "sell")
    assert client.order(cl_ord_id).json()["status"] == "new"


# ---- the fill report --------------------------------------------------------------------------

def test_metrics_report_full_and_partial_fills_and_what_became_of_the_remainders():
    sim = flat_sim()
    client = in_process_client(sim)
    filled, cancelled, resting = (placed(sim, client, price=p) for p in ("94990.0", "94980.0", "94970.0"))
    for cl_ord_id in (filled, cancelled, resting, resting):
        sim.exchange.fill_resting(client.address, cl_ord_id, Decimal("0.0002"))
    sim.exchange.fill_resting(client.address, filled, Decimal("0.0008"))
    client.post_signed("/api/cancel_order", {"cl_ord_id": cancelled})
    client.market_order("buy", "0.0010")  # filled at once
    placed(sim, client, side="buy", price=str(FLAT_ASK))  # post-only, would cross
    metrics = sim.exchange.metrics(client.address)
    assert metrics["orders_filled"] == 2 and metrics["partial_fills"] == 4
    assert (metrics["filled_after_partial"], metrics["cancelled_after_partial"], metrics["resting_after_partial"]) \
        == (1, 1, 1)
    assert (metrics["alo_rejections"], metrics["rejected_in_matching"], metrics["orders_rejected"]) == (1, 0, 1)


def test_a_few_accepted_orders_are_rejected_in_matching_and_counted():
    clock = VirtualClock(START_TS)
    ex = Exchange(clock, flat_sim().market)  # StandX-like timing
    for n in range(3000):  # ioc orders that do not cross: cancelled at activation, unless rejected
        ex.submit_order(ADDRESS, side="buy", order_type="limit", qty=Decimal("0.001"), time_in_force="ioc",
                        reduce_only=False, price=Decimal("94000"), cl_ord_id=f"ioc-{n}")
    clock.sleep(10)
    metrics = ex.metrics(ADDRESS)
    assert 1 <= metrics["rejected_in_matching"] <= 15  # 0.2 % of 3000 is 6
    assert metrics["orders_rejected"] == metrics["rejected_in_matching"]
    assert metrics["orders_cancelled"] == 3000 - metrics["rejected_in_matching"]
    rejected = ex.orders(ADDRESS, "rejected")  # the newest FINAL_KEPT orders are still remembered
    assert rejected and all(o.remark == "rejected in matching" for o in rejected)


# ---- bounded memory ---------------------------------------------------------------------------

def market_order(ex: Exchange, n: int) -> None:
    ex.submit_order(ADDRESS, side=("buy", "sell")[n % 2], order_type="market", qty=Decimal("0.001"),
                    time_in_force="ioc", reduce_only=False, price=None, cl_ord_id=f"o-{n}")


def test_only_the_newest_final_orders_and_fills_are_remembered():
    clock = VirtualClock(START_TS)
    ex = Exchange(clock, flat_sim().market, visibility_delay_s=0.1)
    for n in range(FINAL_KEPT + 200):
        market_order(ex, n)
        clock.sleep(0.5)
    acct = ex.account(ADDRESS)
    assert len(acct.orders) == len(acct.by_cl_ord_id) == len(acct.fills) == FINAL_KEPT
    assert ex.find_order(ADDRESS, cl_ord_id="o-199") is None
    assert ex.find_order(ADDRESS, cl_ord_id="o-200").status == "filled"
    assert [f.order_id for f in ex.trades(ADDRESS)] == [o.id for o in ex.orders(ADDRESS)]


def test_final_orders_and_fills_older_than_the_retention_are_forgotten_resting_ones_kept():
    sim = flat_sim()
    client = in_process_client(sim)
    old_fill = placed(sim, client, side="buy", price="94990.0")
    resting = placed(sim, client, side="buy", price="94980.0")
    sim.exchange.fill_resting(client.address, old_fill, Decimal("0.0010"))
    sim.clock.sleep(FINAL_RETENTION_S - 1)
    assert [o.cl_ord_id for o in sim.exchange.orders(client.address)] == [resting, old_fill]
    sim.clock.sleep(2)
    assert [o.cl_ord_id for o in sim.exchange.orders(client.address)] == [resting]
    assert sim.exchange.trades(client.address) == []
    assert client.order(old_fill).status_code == 404


def test_a_cl_ord_id_is_refused_while_remembered_and_accepted_once_forgotten():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price="94990.0")
    client.post_signed("/api/cancel_order", {"cl_ord_id": cl_ord_id})
    sim.clock.sleep(1)
    assert client.new_order(cl_ord_id=cl_ord_id).json()["message"] == "duplicate cl_ord_id"
    sim.clock.sleep(FINAL_RETENTION_S)
    assert client.new_order(cl_ord_id=cl_ord_id).status_code == 200


def test_structures_stay_bounded_over_a_long_virtual_run():
    clock = VirtualClock(START_TS)
    market = SyntheticMarket(seed=4, start_ts=START_TS, moves_per_s=2, volatility_bps_per_sqrt_s=0.5,
                             trades_per_s=0.5)
    ex = Exchange(clock, market)
    counts = []
    for n in range(4 * 3600):  # four hours, an order every second
        market_order(ex, n)
        if n % 2:
            ex.request_cancel(ADDRESS, cl_ord_id=f"o-{n - 1}")
        clock.sleep(1)
        if n % 600 == 0:
            acct = ex.account(ADDRESS)
            counts.append((len(acct.orders), len(acct.fills), len(market._book_ts), len(market._trade_ts),
                           len(ex._pending)))
    second_half = counts[len(counts) // 2:]
    assert max(c[0] for c in second_half) <= FINAL_KEPT + 10 and max(c[1] for c in second_half) <= FINAL_KEPT
    events_kept = 4 * KEEP_BEHIND_S * (2 + 0.5)  # twice the window's events, and twice that for the batching
    assert max(c[2] + c[3] for c in second_half) <= events_kept
    assert max(c[4] for c in second_half) <= 20
