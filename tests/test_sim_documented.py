"""The REST surface accepts what StandX's documentation allows, refuses what it forbids, and where
the documentation is silent accepts and logs a warning (standx_api.md Part 1 and section 4)."""
from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from standx_sim.api import BLOCK_EPOCH_TS, BLOCKS_PER_S
from tests.sim_helpers import FLAT_ASK, FLAT_BID, flat_sim, in_process_client


@pytest.fixture
def warnings(caplog):
    """The standx_sim.api warnings of the test, as text lines."""
    caplog.set_level(logging.WARNING, logger="standx_sim.api")
    return lambda: [r.getMessage() for r in caplog.records
                    if r.name == "standx_sim.api" and r.levelno == logging.WARNING]


def setup():
    """A flat market with a fixed 0.2 s visibility delay and no rate limits: these tests are about
    request shapes, not timing."""
    sim = flat_sim(visibility_delay_s=0.2, rate_limits=None)
    return sim, in_process_client(sim)


def placed(sim, client, **fields) -> dict:
    """Place an order, let it become visible, return it as query_order shows it."""
    payload = client.order_payload(**fields)
    response = client.post_signed("/api/new_order", payload)
    assert response.status_code == 200, response.text
    sim.clock.sleep(0.25)
    return client.order(payload["cl_ord_id"]).json()


def orders(client, **params) -> dict:
    response = client.get("/api/query_orders", **params)
    assert response.status_code == 200, response.text
    return response.json()


def ids(page: dict) -> list[int]:
    return [row["id"] for row in page["result"]]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


# ---- cancel_order / query_order: at least one of order_id and cl_ord_id ------------------------------

def test_cancel_order_with_both_ids_of_one_order_cancels_it_without_a_warning(warnings):
    sim, client = setup()
    order = placed(sim, client, cl_ord_id="both-1")
    response = client.post_signed("/api/cancel_order", {"order_id": order["id"], "cl_ord_id": "both-1"})
    assert response.status_code == 200, response.text
    sim.clock.sleep(1)
    assert client.order("both-1").json()["status"] == "canceled"
    assert warnings() == []


def test_cancel_order_with_ids_of_two_orders_cancels_the_order_id_one_and_warns(warnings):
    sim, client = setup()
    first = placed(sim, client, cl_ord_id="first", price="94990.0")
    placed(sim, client, cl_ord_id="second", price="94980.0")
    response = client.post_signed("/api/cancel_order", {"order_id": first["id"], "cl_ord_id": "second"})
    assert response.status_code == 200, response.text
    sim.clock.sleep(1)
    assert [client.order(c).json()["status"] for c in ("first", "second")] == ["canceled", "new"]
    assert len(warnings()) == 1
    assert "/api/cancel_order" in warnings()[0] and "different orders" in warnings()[0]


def test_cancel_order_with_neither_id_is_refused():
    _, client = setup()
    response = client.post_signed("/api/cancel_order", {})
    assert response.status_code == 400 and "order_id" in response.json()["message"]


def test_query_order_with_both_ids_answers_the_order_id_one_and_warns_if_they_differ(warnings):
    sim, client = setup()
    first = placed(sim, client, cl_ord_id="first", price="94990.0")
    second = placed(sim, client, cl_ord_id="second", price="94980.0")
    same = client.get("/api/query_order", order_id=second["id"], cl_ord_id="second")
    assert same.json()["cl_ord_id"] == "second" and warnings() == []
    mixed = client.get("/api/query_order", order_id=first["id"], cl_ord_id="second")
    assert mixed.status_code == 200 and mixed.json()["cl_ord_id"] == "first"
    assert len(warnings()) == 1 and "/api/query_order" in warnings()[0]


def test_query_order_with_neither_id_is_refused():
    _, client = setup()
    assert client.get("/api/query_order").status_code == 400


# ---- new_order: documented optional fields and a market order with a price --------------------------

def test_tp_and_sl_prices_are_accepted_with_a_warning_that_no_tp_sl_order_is_made(warnings):
    sim, client = setup()
    order = placed(sim, client, cl_ord_id="tpsl", tp_price="95100.0", sl_price="94900.0")
    assert order["status"] == "new"
    assert [o["cl_ord_id"] for o in client.open_orders()] == ["tpsl"]  # no TP/SL order of its own
    lines = warnings()
    assert any("tp_price" in line for line in lines) and any("sl_price" in line for line in lines)
    assert all("/api/new_order" in line for line in lines)


@pytest.mark.parametrize("tp_price", ["95100.05", 95100.0, "1e5"])
def test_a_tp_price_off_the_tick_or_not_a_decimal_string_is_refused(tp_price):
    sim, client = setup()
    assert client.new_order(tp_price=tp_price).status_code == 400
    sim.clock.sleep(1)
    assert orders(client)["total"] == 0


def test_a_market_order_with_a_price_is_accepted_fills_at_the_touch_and_warns(warnings):
    sim, client = setup()
    assert client.new_order(order_type="market", time_in_force="ioc", price="90000.0",
                            cl_ord_id="mkt").status_code == 200
    sim.clock.sleep(1)
    order = client.order("mkt").json()
    assert order["status"] == "filled" and Decimal(order["fill_avg_price"]) == FLAT_ASK
    assert len(warnings()) == 1 and "price" in warnings()[0] and "/api/new_order" in warnings()[0]


# ---- fields and parameters the documentation does not list -----------------------------------------

def test_an_unknown_body_field_is_accepted_ignored_and_warned_about(warnings):
    sim, client = setup()
    order = placed(sim, client, cl_ord_id="extra", post_only=True)
    assert order["status"] == "new"
    lines = warnings()
    assert len(lines) == 1 and "post_only" in lines[0] and "/api/new_order" in lines[0]


def test_a_misspelled_required_field_is_refused_as_missing(warnings):
    sim, client = setup()
    response = client.new_order(reduce_only=None, reduceOnly=False)
    assert response.status_code == 400 and response.json()["message"] == "missing field: reduce_only"
    assert any("reduceOnly" in line for line in warnings())


def test_a_misspelled_optional_field_is_ignored_so_the_default_applies(warnings):
    sim, client = setup()
    assert client.new_order(cl_ord_id=None, clOrdId="mine").status_code == 200
    sim.clock.sleep(1)
    rows = orders(client)["result"]
    assert len(rows) == 1 and rows[0]["cl_ord_id"] != "mine"
    assert any("clOrdId" in line for line in warnings())


def test_cancel_order_with_an_extra_symbol_field_is_accepted(warnings):
    sim, client = setup()
    placed(sim, client, cl_ord_id="sym")
    assert client.post_signed("/api/cancel_order", {"cl_ord_id": "sym", "symbol": "BTC-USD"}).status_code == 200
    sim.clock.sleep(1)
    assert client.order("sym").json()["status"] == "canceled"
    assert any("symbol" in line and "/api/cancel_order" in line for line in warnings())


def test_an_unknown_query_parameter_is_accepted_and_warned_about(warnings):
    _, client = setup()
    response = client.get("/api/query_open_orders", symbol="BTC-USD", depth="5")
    assert response.status_code == 200
    assert len(warnings()) == 1 and "depth" in warnings()[0] and "/api/query_open_orders" in warnings()[0]


def test_documented_parameters_raise_no_warning(warnings):
    sim, client = setup()
    placed(sim, client)
    client.get("/api/query_orders", symbol="BTC-USD", status="new", order_type="limit", limit="10", last_id="99",
               start=iso(sim.clock.now() - 60), end=iso(sim.clock.now()))
    client.get("/api/query_open_orders", symbol="BTC-USD", limit="10")
    client.get("/api/query_positions", symbol="BTC-USD")
    assert warnings() == []


def test_cancel_orders_with_both_lists_cancels_every_order_named():
    sim, client = setup()
    first = placed(sim, client, cl_ord_id="a", price="94990.0")
    placed(sim, client, cl_ord_id="b", price="94980.0")
    placed(sim, client, cl_ord_id="c", price="94970.0")
    response = client.post_signed("/api/cancel_orders", {"order_id_list": [first["id"]], "cl_ord_id_list": ["b"]})
    assert response.status_code == 200, response.text
    sim.clock.sleep(1)
    assert [client.order(c).json()["status"] for c in "abc"] == ["canceled", "canceled", "new"]


def test_cancel_orders_with_neither_list_is_refused():
    _, client = setup()
    assert client.post_signed("/api/cancel_orders", {}).status_code == 400


# ---- query_orders: status open, filters, pagination -----------------------------------------------

def test_status_open_selects_the_resting_orders_new_and_partially_filled():
    sim, client = setup()
    partial = placed(sim, client, cl_ord_id="partial", price="94990.0")
    resting = placed(sim, client, cl_ord_id="resting", price="94980.0")
    placed(sim, client, cl_ord_id="rejected", price=str(FLAT_ASK))  # an alo buy at the ask
    client.market_order("sell", "0.0010")  # filled: not open
    sim.clock.sleep(0.25)
    sim.exchange.fill_resting(client.address, "partial", Decimal("0.0004"))
    assert ids(orders(client, status="open")) == [resting["id"], partial["id"]]
    assert [r["status"] for r in orders(client, status="new")["result"]] == ["new"]


def test_query_orders_pages_newest_first_by_last_id():
    sim, client = setup()
    made = [placed(sim, client, price=f"9499{k}.0")["id"] for k in range(5)]
    first = orders(client, limit="2")
    assert ids(first) == made[::-1][:2] and first["page_size"] == 2 and first["total"] == 5
    second = orders(client, limit="2", last_id=str(ids(first)[-1]))
    assert ids(second) == made[::-1][2:4] and second["total"] == 3
    third = orders(client, limit="2", last_id=str(ids(second)[-1]))
    assert ids(third) == made[:1] and third["total"] == 1


def test_query_orders_limit_defaults_to_100_and_is_at_most_500():
    sim, client = setup()
    for k in range(101):
        sim.exchange.submit_order(client.address, side="buy", order_type="limit", qty=Decimal("0.001"),
                                  time_in_force="ioc", reduce_only=False, price=FLAT_BID - 10, cl_ord_id=f"ioc-{k}")
    sim.clock.sleep(1)
    page = orders(client)
    assert (page["page_size"], len(page["result"]), page["total"]) == (100, 100, 101)
    assert len(orders(client, limit="500")["result"]) == 101
    assert client.get("/api/query_orders", limit="501").status_code == 400


def test_query_orders_start_and_end_bound_created_at_inclusively():
    sim, client = setup()
    early = placed(sim, client, price="94990.0")
    sim.clock.sleep(10)
    middle = placed(sim, client, price="94980.0")
    sim.clock.sleep(10)
    late = placed(sim, client, price="94970.0")
    window = orders(client, start=middle["created_at"], end=middle["created_at"])
    assert ids(window) == [middle["id"]] and window["total"] == 1
    assert ids(orders(client, start=middle["created_at"])) == [late["id"], middle["id"]]
    assert ids(orders(client, end=middle["created_at"])) == [middle["id"], early["id"]]


def test_query_orders_takes_iso_times_with_an_offset_or_none():
    sim, client = setup()
    order = placed(sim, client)
    created = datetime.strptime(order["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert ids(orders(client, start=created.isoformat())) == [order["id"]]  # naive: UTC
    assert ids(orders(client, start=created.replace(tzinfo=timezone.utc).isoformat())) == [order["id"]]


@pytest.mark.parametrize("params", [{"start": "yesterday"}, {"end": "1767657600000"}, {"last_id": "x"},
                                    {"last_id": "-1"}, {"limit": "0"}])
def test_query_orders_refuses_malformed_filters(params):
    _, client = setup()
    assert client.get("/api/query_orders", **params).status_code == 400


def test_query_orders_filters_by_order_type():
    sim, client = setup()
    limit_order = placed(sim, client)
    client.market_order("buy", "0.0010", cl_ord_id="mkt")
    sim.clock.sleep(1)
    market_id = client.order("mkt").json()["id"]
    assert ids(orders(client, order_type="market")) == [market_id]
    assert ids(orders(client, order_type="limit")) == [limit_order["id"]]


# ---- created_block / closed_block -------------------------------------------------------------------

def block_of(iso_text: str) -> int:
    """The documented block model: BLOCKS_PER_S blocks a second since BLOCK_EPOCH_TS."""
    moment = datetime.strptime(iso_text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return math.floor((moment.timestamp() - BLOCK_EPOCH_TS) * BLOCKS_PER_S)


def test_created_block_grows_with_creation_time_and_closed_block_is_0_while_open():
    sim, client = setup()
    first = placed(sim, client, price="94990.0")
    sim.clock.sleep(1.75)
    second = placed(sim, client, price="94980.0")  # created 2 s after the first
    assert all(type(o["created_block"]) is int for o in (first, second))
    assert second["created_block"] - first["created_block"] == 2 * BLOCKS_PER_S
    assert first["created_block"] == block_of(first["created_at"])
    assert first["closed_block"] == second["closed_block"] == 0


def test_closed_block_is_the_block_in_which_the_order_became_final():
    sim, client = setup()
    placed(sim, client, cl_ord_id="closing")
    sim.clock.sleep(3)
    client.post_signed("/api/cancel_order", {"cl_ord_id": "closing"})
    sim.clock.sleep(1)
    closed = client.order("closing").json()
    assert closed["status"] == "canceled"
    assert closed["closed_block"] == block_of(closed["updated_at"]) > closed["created_block"] + 3 * BLOCKS_PER_S


# ---- query_trades: our fills ------------------------------------------------------------------------

def trades(client, **params) -> dict:
    response = client.get("/api/query_trades", **params)
    assert response.status_code == 200, response.text
    return response.json()


def traded(sim, client) -> tuple[dict, dict]:
    """A taker buy of 0.0010 at the ask, then a maker sell of 0.0004 of a resting sell above it:
    the two orders as query_order shows them, oldest first."""
    client.market_order("buy", "0.0010", cl_ord_id="taker")
    sim.clock.sleep(1)
    placed(sim, client, cl_ord_id="maker", side="sell", price="95010.0")
    sim.exchange.fill_resting(client.address, "maker", Decimal("0.0004"))
    return client.order("taker").json(), client.order("maker").json()


def test_query_trades_lists_our_fills_newest_first_with_the_documented_fields():
    sim, client = setup()
    taker, maker = traded(sim, client)
    page = trades(client, symbol="BTC-USD")
    assert (page["page_size"], page["total"]) == (100, 2)
    sell, buy = page["result"]
    assert set(buy) == {"id", "order_id", "symbol", "side", "price", "qty", "value", "fee_qty", "fee_asset", "pnl",
                        "created_at", "updated_at", "user"}
    assert sell["id"] > buy["id"]
    spec = sim.exchange.spec
    assert (buy["order_id"], buy["side"], buy["symbol"]) == (taker["id"], "buy", "BTC-USD")
    assert (Decimal(buy["price"]), buy["qty"]) == (FLAT_ASK, "0.0010")
    assert Decimal(buy["value"]) == FLAT_ASK * Decimal("0.0010")
    assert Decimal(buy["fee_qty"]) == FLAT_ASK * Decimal("0.0010") * spec.taker_fee
    assert (buy["fee_asset"], Decimal(buy["pnl"])) == (spec.quote_asset, 0)
    assert (sell["order_id"], sell["side"], sell["qty"]) == (maker["id"], "sell", "0.0004")
    assert Decimal(sell["fee_qty"]) == Decimal("95010.0") * Decimal("0.0004") * spec.maker_fee
    assert Decimal(sell["pnl"]) == (Decimal("95010.0") - FLAT_ASK) * Decimal("0.0004")
    assert buy["user"] == f"bsc_{client.address.lower()}"
    assert buy["updated_at"] == buy["created_at"]


def test_query_trades_filters_by_side_and_pages_by_last_id():
    sim, client = setup()
    traded(sim, client)
    sell, buy = trades(client)["result"]
    assert [row["id"] for row in trades(client, side="buy")["result"]] == [buy["id"]]
    next_page = trades(client, limit="1", last_id=str(sell["id"]))
    assert [row["id"] for row in next_page["result"]] == [buy["id"]] and next_page["total"] == 1


def test_query_trades_start_and_end_bound_the_fill_time():
    sim, client = setup()
    traded(sim, client)
    sell, buy = trades(client)["result"]
    assert [row["id"] for row in trades(client, start=sell["created_at"])["result"]] == [sell["id"]]
    assert [row["id"] for row in trades(client, end=buy["created_at"])["result"]] == [buy["id"]]


def test_query_trades_of_another_symbol_is_empty():
    sim, client = setup()
    traded(sim, client)
    assert trades(client, symbol="ETH-USD")["result"] == []


@pytest.mark.parametrize("params", [{"side": "long"}, {"limit": "501"}, {"start": "soon"}, {"last_id": "a"}])
def test_query_trades_refuses_malformed_filters(params):
    _, client = setup()
    assert client.get("/api/query_trades", **params).status_code == 400


def test_query_trades_documented_parameters_raise_no_warning(warnings):
    sim, client = setup()
    client.get("/api/query_trades", symbol="BTC-USD", side="buy", limit="5", last_id="9",
               start=iso(sim.clock.now() - 60), end=iso(sim.clock.now()))
    assert warnings() == []
