"""Order lifecycle, matching, positions, fees and PnL (the fill model in exchange.py), with
flat_sim's fixed 0.2 s delays and touch fills (queue=False); queue position is in test_sim_queue.py."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tests.sim_helpers import FLAT_ASK, FLAT_BID, flat_sim, in_process_client

QTY = Decimal("0.0010")


def placed(sim, client, **fields) -> str:
    """Place an order, let it become visible, return its cl_ord_id."""
    payload = client.order_payload(**fields)
    assert client.post_signed("/api/new_order", payload).status_code == 200
    sim.clock.sleep(0.25)
    return payload["cl_ord_id"]


def status(client, cl_ord_id: str) -> str:
    return client.order(cl_ord_id).json()["status"]


def test_order_is_invisible_before_the_delay_and_visible_after():
    sim = flat_sim(visibility_delay_s=0.2)
    client = in_process_client(sim)
    client.new_order(cl_ord_id="mm-1")
    sim.clock.sleep(0.19)
    assert client.order("mm-1").status_code == 404
    assert client.open_orders() == []
    sim.clock.sleep(0.02)
    assert client.order("mm-1").json()["status"] == "new"
    assert [o["cl_ord_id"] for o in client.open_orders()] == ["mm-1"]


def test_order_object_carries_strings_for_decimals():
    sim = flat_sim()
    client = in_process_client(sim)
    order = client.order(placed(sim, client, price="94990.0", qty="0.0010")).json()
    assert order["price"] == "94990.0" and order["qty"] == "0.0010" and order["fill_qty"] == "0.0000"
    assert isinstance(order["id"], int) and order["reduce_only"] is False
    assert order["side"] == "buy" and order["order_type"] == "limit" and order["time_in_force"] == "alo"


def test_order_ids_increase():
    sim = flat_sim()
    client = in_process_client(sim)
    first = client.order(placed(sim, client)).json()["id"]
    second = client.order(placed(sim, client, price="94980.0")).json()["id"]
    assert second > first


def test_cancel_takes_effect_after_the_delay():
    sim = flat_sim(visibility_delay_s=0.2)
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client)
    assert client.post_signed("/api/cancel_order", {"cl_ord_id": cl_ord_id}).status_code == 200
    sim.clock.sleep(0.19)
    assert status(client, cl_ord_id) == "new"
    sim.clock.sleep(0.02)
    assert status(client, cl_ord_id) == "canceled"
    assert client.open_orders() == []


def test_batch_cancel_by_order_id_cancels_every_listed_order():
    sim = flat_sim()
    client = in_process_client(sim)
    ids = [client.order(placed(sim, client, price=p)).json()["id"] for p in ("94990.0", "94980.0")]
    assert client.post_signed("/api/cancel_orders", {"order_id_list": ids}).status_code == 200
    sim.clock.sleep(0.25)
    assert client.open_orders() == []


def test_alo_order_that_would_cross_is_rejected_and_never_rests():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price=str(FLAT_ASK))
    assert status(client, cl_ord_id) == "rejected"
    assert client.open_orders() == []
    assert client.position_qty() == 0


def test_gtc_order_that_crosses_fills_at_the_touch_as_taker():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price="95010.0", time_in_force="gtc")
    order = client.order(cl_ord_id).json()
    assert order["status"] == "filled"
    assert Decimal(order["fill_avg_price"]) == FLAT_ASK
    assert sim.exchange.metrics(client.address)["taker_fills"] == 1


def test_ioc_limit_order_that_does_not_cross_is_cancelled():
    sim = flat_sim()
    client = in_process_client(sim)
    assert status(client, placed(sim, client, time_in_force="ioc")) == "canceled"


def test_resting_buy_fills_when_the_ask_reaches_its_price():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price="94990.0")
    sim.exchange.set_mid(Decimal("94990.5"))  # ask 94990.6: not yet
    assert status(client, cl_ord_id) == "new"
    sim.exchange.set_mid(Decimal("94989.9"))  # ask 94990.0: reaches the buy
    order = client.order(cl_ord_id).json()
    assert order["status"] == "filled"
    assert order["fill_avg_price"] == "94990"
    assert client.position_qty() == QTY


def test_resting_buy_fills_when_a_seller_taker_trade_prints_through_it():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price="94990.0")
    sim.exchange.add_trade(Decimal("94989.0"), Decimal("0.5"), "sell")
    assert status(client, cl_ord_id) == "filled"
    assert client.position_qty() == QTY


def test_resting_buy_fills_on_a_seller_taker_trade_at_its_price():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price="94990.0")
    sim.exchange.add_trade(Decimal("94990.0"), Decimal("0.0001"), "sell")
    assert status(client, cl_ord_id) == "filled"


def test_buyer_taker_trade_below_a_resting_buy_does_not_fill_it():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price="94990.0")
    sim.exchange.add_trade(Decimal("94980.0"), Decimal("0.5"), "buy")
    assert status(client, cl_ord_id) == "new"


def test_resting_sell_fills_when_a_buyer_taker_trade_prints_through_it():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="sell", price="95010.0")
    sim.exchange.add_trade(Decimal("95011.0"), Decimal("0.5"), "buy")
    assert status(client, cl_ord_id) == "filled"
    assert client.position_qty() == -QTY


def test_resting_sell_fills_when_the_bid_reaches_its_price():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="sell", price="95010.0")
    sim.exchange.shift_bps(2)  # mid 95019.0, bid 95018.9
    assert status(client, cl_ord_id) == "filled"


def test_order_can_fill_while_its_cancel_is_in_flight():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price="94990.0")
    client.post_signed("/api/cancel_order", {"cl_ord_id": cl_ord_id})
    sim.exchange.add_trade(Decimal("94989.0"), Decimal("0.5"), "sell")
    sim.clock.sleep(0.25)
    assert status(client, cl_ord_id) == "filled"


def test_query_positions_is_empty_before_any_trade():
    client = in_process_client(flat_sim())
    assert client.get("/api/query_positions", symbol="BTC-USD").json() == []


def test_position_qty_is_negative_for_a_short():
    sim = flat_sim()
    client = in_process_client(sim)
    client.market_order("sell", "0.0020")
    sim.clock.sleep(0.25)
    row = client.get("/api/query_positions", symbol="BTC-USD").json()[0]
    assert row["qty"] == "-0.0020"
    assert Decimal(row["entry_price"]) == FLAT_BID


def test_reduce_only_market_close_flattens_the_position():
    sim = flat_sim()
    client = in_process_client(sim)
    client.market_order("buy", "0.0020")
    sim.clock.sleep(0.25)
    client.market_order("sell", "0.0020", reduce_only=True)
    sim.clock.sleep(0.25)
    rows = client.get("/api/query_positions", symbol="BTC-USD").json()
    assert rows[0]["qty"] == "0.0000"


def test_reduce_only_close_larger_than_the_position_cannot_flip_it():
    sim = flat_sim()
    client = in_process_client(sim)
    client.market_order("buy", "0.0020")
    sim.clock.sleep(0.25)
    client.market_order("sell", "0.0050", reduce_only=True, cl_ord_id="close-1")
    sim.clock.sleep(0.25)
    assert client.position_qty() == 0
    assert client.order("close-1").json()["fill_qty"] == "0.0020"


def test_reduce_only_order_that_would_increase_the_position_is_rejected():
    sim = flat_sim()
    client = in_process_client(sim)
    client.market_order("buy", "0.0020")
    sim.clock.sleep(0.25)
    client.market_order("buy", "0.0010", reduce_only=True, cl_ord_id="wrong-way")
    sim.clock.sleep(0.25)
    assert status(client, "wrong-way") == "rejected"
    assert client.position_qty() == Decimal("0.0020")


def test_reduce_only_order_with_no_position_is_rejected():
    sim = flat_sim()
    client = in_process_client(sim)
    client.market_order("sell", "0.0010", reduce_only=True, cl_ord_id="nothing")
    sim.clock.sleep(0.25)
    assert status(client, "nothing") == "rejected"
    assert client.get("/api/query_positions").json() == []


def test_maker_fill_pays_the_maker_fee():
    sim = flat_sim()
    client = in_process_client(sim)
    placed(sim, client, side="buy", price="94990.0", qty="0.0100")
    sim.exchange.add_trade(Decimal("94990.0"), Decimal("1"), "sell")
    assert client.balance() == Decimal("1000") - Decimal("0.0100") * Decimal("94990.0") * Decimal("0.0001")


def test_taker_close_realizes_pnl_and_pays_the_taker_fee():
    sim = flat_sim()
    client = in_process_client(sim)
    placed(sim, client, side="buy", price="94990.0", qty="0.0100")
    sim.exchange.add_trade(Decimal("94990.0"), Decimal("1"), "sell")
    sim.exchange.set_mid(Decimal("95100.0"))  # bid 95099.9
    client.market_order("sell", "0.0100", reduce_only=True)
    sim.clock.sleep(0.25)
    pnl = Decimal("0.0100") * (Decimal("95099.9") - Decimal("94990.0"))
    fees = Decimal("0.0100") * (Decimal("94990.0") * Decimal("0.0001") + Decimal("95099.9") * Decimal("0.0004"))
    assert Decimal(client.get("/api/query_positions").json()[0]["realized_pnl"]) == pnl
    assert client.balance() == Decimal("1000") + pnl - fees
    metrics = sim.exchange.metrics(client.address)
    assert metrics["realized_pnl"] == pnl and metrics["fees"] == fees


def test_average_entry_price_weights_each_fill_by_its_qty():
    sim = flat_sim()
    client = in_process_client(sim)
    client.market_order("buy", "0.0010")  # at 95000.1
    sim.clock.sleep(0.25)
    sim.exchange.set_mid(Decimal("95100.0"))
    client.market_order("buy", "0.0030")  # at 95100.1
    sim.clock.sleep(0.25)
    entry = Decimal(client.get("/api/query_positions").json()[0]["entry_price"])
    assert entry == (Decimal("95000.1") + 3 * Decimal("95100.1")) / 4


def test_unfunded_account_balance_is_404_user_balance_not_found():
    client = in_process_client(flat_sim(default_balance=None))
    response = client.get("/api/query_balance")
    assert response.status_code == 404
    assert response.json() == {"code": 404, "message": "user balance not found"}


def test_unfunded_account_order_is_rejected_for_margin():
    sim = flat_sim(default_balance=None)
    client = in_process_client(sim)
    assert status(client, placed(sim, client)) == "rejected"


def test_set_balance_funds_an_account():
    sim = flat_sim(default_balance=None)
    client = in_process_client(sim)
    sim.exchange.set_balance(client.address, Decimal("250.5"))
    assert client.balance() == Decimal("250.5")


def test_symbol_info_has_the_contract_fields():
    client = in_process_client(flat_sim(), login=False)
    rows = client.http.get(f"{client.base}/api/query_symbol_info", params={"symbol": "BTC-USD"}).json()
    assert len(rows) == 1
    row = rows[0]
    assert row["price_tick_decimals"] == 1 and row["qty_tick_decimals"] == 4
    assert row["min_order_qty"] == "0.0001"
    assert row["maker_fee"] == "0.0001" and row["taker_fee"] == "0.0004"


def test_symbol_price_marks_the_mid_of_the_book():
    client = in_process_client(flat_sim(), login=False)
    price = client.http.get(f"{client.base}/api/query_symbol_price", params={"symbol": "BTC-USD"}).json()
    assert price["mark_price"] == "95000.0"
    assert price["spread_bid"] == str(FLAT_BID) and price["spread_ask"] == str(FLAT_ASK)
    assert price["last_price"] is None


def test_query_orders_lists_finished_orders_by_status():
    sim = flat_sim()
    client = in_process_client(sim)
    placed(sim, client, side="buy", price=str(FLAT_ASK))  # rejected
    placed(sim, client, price="94990.0")  # resting
    result = client.get("/api/query_orders", symbol="BTC-USD", status="rejected").json()["result"]
    assert [o["status"] for o in result] == ["rejected"]


# ---- partial fills (Exchange.fill_resting) ----------------------------------------------------

def test_partial_fill_leaves_the_order_resting_partially_filled_with_the_remainder():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price="94990.0", qty="0.0010")
    sim.exchange.fill_resting(client.address, cl_ord_id, Decimal("0.0004"))
    order = client.order(cl_ord_id).json()
    assert order["status"] == "partially_filled"
    assert order["fill_qty"] == "0.0004" and order["fill_avg_price"] == "94990"
    assert order["margin"] == "1.42485"  # the remaining 0.0006 * 94990.0 / 40 stays locked
    assert [o["cl_ord_id"] for o in client.open_orders()] == [cl_ord_id]
    assert client.position_qty() == Decimal("0.0004")
    assert client.balance() == Decimal("1000") - Decimal("0.0004") * Decimal("94990.0") * Decimal("0.0001")
    assert sim.exchange.metrics(client.address)["maker_fills"] == 1


def test_partially_filled_order_fills_the_rest_when_the_market_reaches_it():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price="94990.0", qty="0.0010")
    sim.exchange.fill_resting(client.address, cl_ord_id, Decimal("0.0004"))
    sim.exchange.add_trade(Decimal("94989.0"), Decimal("0.5"), "sell")
    order = client.order(cl_ord_id).json()
    assert order["status"] == "filled" and order["fill_qty"] == "0.0010"
    assert client.open_orders() == []
    assert client.position_qty() == QTY


def test_partially_filled_order_can_be_cancelled():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price="94990.0", qty="0.0010")
    sim.exchange.fill_resting(client.address, cl_ord_id, Decimal("0.0004"))
    client.post_signed("/api/cancel_order", {"cl_ord_id": cl_ord_id})
    sim.clock.sleep(0.25)
    assert status(client, cl_ord_id) == "canceled"
    assert client.open_orders() == []
    assert client.position_qty() == Decimal("0.0004")


def test_partially_filled_orders_count_as_live_for_uptime_and_max_live():
    sim = flat_sim()
    client = in_process_client(sim)
    placed(sim, client, side="buy", price="94990.0", cl_ord_id="b1")
    placed(sim, client, side="buy", price="94980.0", cl_ord_id="b2")
    placed(sim, client, side="sell", price="95010.0", cl_ord_id="s1")
    before = sim.exchange.metrics(client.address)["two_sided_s"]
    for cl_ord_id in ("b1", "b2", "s1"):
        sim.exchange.fill_resting(client.address, cl_ord_id, Decimal("0.0001"))
    sim.clock.sleep(10)
    metrics = sim.exchange.metrics(client.address)
    assert metrics["two_sided_s"] == before + 10
    assert metrics["max_live_orders"] == {"buy": 2, "sell": 1}
    assert metrics["max_double_s"]["buy"] >= 10
    assert {o["status"] for o in client.open_orders()} == {"partially_filled"}


def test_partially_filled_remainder_below_meter_qty_stops_counting():
    sim = flat_sim(meter_qty=QTY)
    client = in_process_client(sim)
    placed(sim, client, side="buy", price="94990.0", cl_ord_id="b1")
    placed(sim, client, side="sell", price="95010.0", cl_ord_id="s1")
    sim.exchange.fill_resting(client.address, "b1", Decimal("0.0001"))
    before = sim.exchange.metrics(client.address)["two_sided_s"]
    sim.clock.sleep(10)
    assert sim.exchange.metrics(client.address)["two_sided_s"] == before


def test_fill_with_more_decimals_than_the_lot_shows_them_in_the_position():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price="94990.0", qty="0.0020")
    sim.exchange.fill_resting(client.address, cl_ord_id, Decimal("0.00123457"))
    row = client.get("/api/query_positions", symbol="BTC-USD").json()[0]
    assert row["qty"] == "0.00123457"
    assert client.order(cl_ord_id).json()["fill_qty"] == "0.00123457"


def test_reduce_only_close_rounded_up_to_the_lot_flattens_an_odd_position_exactly():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="buy", price="94990.0", qty="0.0020")
    sim.exchange.fill_resting(client.address, cl_ord_id, Decimal("0.00123457"))
    client.post_signed("/api/cancel_order", {"cl_ord_id": cl_ord_id})
    client.market_order("sell", "0.0013", reduce_only=True, cl_ord_id="close-odd")
    sim.clock.sleep(0.25)
    assert client.get("/api/query_positions", symbol="BTC-USD").json()[0]["qty"] == "0.0000"
    close = client.order("close-odd").json()
    assert close["status"] == "filled" and close["fill_qty"] == "0.00123457"


def test_short_position_with_odd_decimals_is_shown_negative():
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, side="sell", price="95010.0", qty="0.0010")
    sim.exchange.fill_resting(client.address, cl_ord_id, Decimal("0.0000001"))
    assert client.get("/api/query_positions").json()[0]["qty"] == "-0.0000001"  # plain notation, never 1E-7


@pytest.mark.parametrize("qty", ["0", "0.0011", "0.000000001"])
def test_fill_resting_refuses_a_qty_it_cannot_fill(qty):
    sim = flat_sim()
    client = in_process_client(sim)
    cl_ord_id = placed(sim, client, qty="0.0010")
    with pytest.raises(ValueError):
        sim.exchange.fill_resting(client.address, cl_ord_id, Decimal(qty))


def test_fill_resting_refuses_an_order_that_is_not_resting():
    sim = flat_sim()
    client = in_process_client(sim)
    client.new_order(cl_ord_id="still-pending")
    with pytest.raises(ValueError):
        sim.exchange.fill_resting(client.address, "still-pending", Decimal("0.0001"))
