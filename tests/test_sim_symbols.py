"""Several symbols: the catalogue in symbols.py, one traded symbol per simulator, rule changes mid-run."""
from __future__ import annotations

import dataclasses
import json
from decimal import Decimal

import pytest

from standx_sim import Simulator, SyntheticMarket, VirtualClock
from standx_sim.control import Control
from standx_sim.exchange import SymbolSpec as ReExportedSpec
from standx_sim.symbols import SYMBOLS, SymbolSpec, listed, with_rules
from tests.sim_helpers import START_TS, compact, flat_sim, in_process_client

FIXED = {"visibility_delay_s": 0.2, "rate_limits": None}  # these tests are about rules, not timing
ROW_FIELDS = {"price_tick_decimals": int, "qty_tick_decimals": int, "min_order_qty": str, "max_order_qty": str,
              "max_position_size": str, "def_leverage": str, "max_leverage": str, "maker_fee": str, "taker_fee": str}


def quiet_sim(symbol: str) -> Simulator:
    """A simulator trading `symbol` over a flat market two ticks wide at the symbol's price level."""
    spec = SYMBOLS[symbol]
    market = SyntheticMarket(start_ts=START_TS, start_price=spec.start_price, volatility_bps_per_sqrt_s=0,
                             spread_usd=(2 * spec.tick, 2 * spec.tick), tick=spec.tick, lot=spec.lot)
    return Simulator(VirtualClock(START_TS), market, symbol=symbol, **FIXED)


def symbol_info(client, **params) -> list[dict]:
    response = client.http.get(f"{client.base}/api/query_symbol_info", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def control(sim, path: str, payload: dict) -> tuple[int, dict]:
    status, _, body = Control(sim).handle("POST", f"/_sim/{path}", {}, compact(payload).encode())
    return status, json.loads(body)


def below_mark(sim, ticks: int) -> Decimal:
    """A buy price `ticks` ticks below the mark, on the traded symbol's grid."""
    return sim.exchange.mark_price() - ticks * sim.exchange.spec.tick


# ---- the catalogue ----------------------------------------------------------------------------

def test_the_catalogue_lists_btc_eth_and_a_coarse_tick_symbol():
    assert {"BTC-USD", "ETH-USD", "XAU-USD"} <= set(SYMBOLS)
    assert SYMBOLS["XAU-USD"].price_tick_decimals == 0  # a one-dollar tick: a few bps of its price


def test_btc_usd_keeps_todays_rules_and_the_default_spec_is_it():
    btc = SYMBOLS["BTC-USD"]
    assert (btc.tick, btc.lot, btc.min_order_qty) == (Decimal("0.1"), Decimal("0.0001"), Decimal("0.0001"))
    assert btc == SymbolSpec() and ReExportedSpec is SymbolSpec


def test_symbols_differ_in_tick_lot_sizes_leverage_and_price_level():
    btc, eth, xau = SYMBOLS["BTC-USD"], SYMBOLS["ETH-USD"], SYMBOLS["XAU-USD"]
    assert len({btc.tick, eth.tick, xau.tick}) == 3 and len({btc.lot, eth.lot, xau.lot}) == 3
    assert len({btc.start_price, eth.start_price, xau.start_price}) == 3
    assert len({btc.max_leverage, eth.max_leverage, xau.max_leverage}) > 1


@pytest.mark.parametrize("spec", list(SYMBOLS.values()), ids=list(SYMBOLS))
def test_each_symbol_is_consistent(spec):
    assert spec.min_order_qty.as_tuple().exponent >= -spec.qty_tick_decimals  # the minimum is on the lot
    assert 0 < spec.min_order_qty <= spec.max_order_qty <= spec.max_position_size
    assert 1 <= spec.def_leverage <= spec.max_leverage
    assert spec.start_price % spec.tick == 0


def test_listed_refuses_an_unknown_symbol():
    assert listed("ETH-USD") is SYMBOLS["ETH-USD"]
    with pytest.raises(ValueError, match="DOGE-USD"):
        listed("DOGE-USD")


def test_a_spec_with_a_minimum_above_the_maximum_is_refused():
    with pytest.raises(ValueError, match="min_order_qty"):
        SymbolSpec(min_order_qty=Decimal("2"), max_order_qty=Decimal("1"))


# ---- query_symbol_info --------------------------------------------------------------------------

def test_symbol_info_without_a_symbol_lists_every_symbol_with_its_fields():
    rows = symbol_info(in_process_client(flat_sim(**FIXED), login=False))
    assert sorted(row["symbol"] for row in rows) == sorted(SYMBOLS)
    for row in rows:
        spec = SYMBOLS[row["symbol"]]
        assert {name: type(row[name]) for name in ROW_FIELDS} == ROW_FIELDS
        assert row["price_tick_decimals"] == spec.price_tick_decimals
        assert row["qty_tick_decimals"] == spec.qty_tick_decimals
        assert Decimal(row["min_order_qty"]) == spec.min_order_qty
        assert Decimal(row["max_order_qty"]) == spec.max_order_qty
        assert Decimal(row["max_leverage"]) == spec.max_leverage
        assert Decimal(row["maker_fee"]) == spec.maker_fee and Decimal(row["taker_fee"]) == spec.taker_fee
        assert row["depth_ticks"].split(",")[0] == format(spec.tick, "f")


def test_symbol_info_with_a_symbol_answers_that_row_even_if_not_traded_here():
    client = in_process_client(flat_sim(**FIXED), login=False)
    rows = symbol_info(client, symbol="ETH-USD")
    assert [row["symbol"] for row in rows] == ["ETH-USD"]
    assert rows[0]["price_tick_decimals"] == SYMBOLS["ETH-USD"].price_tick_decimals


def test_symbol_info_of_an_unknown_symbol_is_empty():
    assert symbol_info(in_process_client(flat_sim(**FIXED), login=False), symbol="DOGE-USD") == []


# ---- one traded symbol per simulator -------------------------------------------------------------

def test_an_unknown_symbol_for_the_simulator_is_refused():
    with pytest.raises(ValueError, match="DOGE-USD"):
        Simulator(VirtualClock(START_TS), symbol="DOGE-USD")


@pytest.mark.parametrize("symbol", list(SYMBOLS))
def test_a_synthetic_market_starts_at_the_symbols_price_level_on_its_tick(symbol):
    sim = Simulator(VirtualClock(START_TS), symbol=symbol, seed=3)
    spec = SYMBOLS[symbol]
    sim.clock.sleep(60)
    book = sim.exchange.book()
    assert book.bid % spec.tick == 0 and book.ask % spec.tick == 0
    assert abs(book.bid / spec.start_price - 1) < Decimal("0.01")  # a minute of walk stays near the start


def test_a_coarse_tick_symbols_synthetic_book_is_one_tick_wide():
    # The widest synthetic spread scales with the price (BTC-USD's one dollar at 95000), so at a
    # one-dollar tick on a 4000 price the book stays one tick wide instead of several bps.
    sim = Simulator(VirtualClock(START_TS), symbol="XAU-USD", seed=3)
    spreads = set()
    for _ in range(60):
        sim.clock.sleep(1)
        book = sim.exchange.book()
        spreads.add(book.ask - book.bid)
    assert spreads == {SYMBOLS["XAU-USD"].tick}


def test_the_default_simulator_trades_btc_usd_on_the_same_market_as_before():
    clock = VirtualClock(START_TS)
    sim = Simulator(clock, seed=5)
    reference = SyntheticMarket(seed=5, start_ts=START_TS)
    clock.sleep(30)
    assert sim.exchange.spec.symbol == "BTC-USD"
    assert sim.market.book_at(START_TS + 30) == reference.book_at(START_TS + 30)


def test_an_eth_simulator_accepts_eth_orders_on_its_tick_and_lot():
    sim = quiet_sim("ETH-USD")
    client = in_process_client(sim)
    price = format(below_mark(sim, 5), "f")
    assert len(price.split(".")[1]) == 2  # two decimals: the 0.01 tick
    response = client.new_order(symbol="ETH-USD", price=price, qty="0.010", cl_ord_id="eth-1")
    assert response.status_code == 200, response.text
    sim.clock.sleep(1)
    order = client.order("eth-1").json()
    assert (order["symbol"], order["status"], order["price"], order["qty"]) == ("ETH-USD", "new", price, "0.010")
    assert client.get("/api/query_open_orders", symbol="ETH-USD").json()["total"] == 1


def test_an_eth_simulator_refuses_a_price_finer_than_its_tick():
    sim = quiet_sim("ETH-USD")
    client = in_process_client(sim)
    price = format(below_mark(sim, 5) + Decimal("0.005"), "f")
    assert client.new_order(symbol="ETH-USD", price=price, qty="0.010").status_code == 400


def test_an_eth_simulator_refuses_btc_orders_as_not_tradable_here():
    sim = quiet_sim("ETH-USD")
    client = in_process_client(sim)
    response = client.new_order(symbol="BTC-USD", price=format(below_mark(sim, 5), "f"), qty="0.010")
    assert response.status_code == 400
    assert response.json()["message"] == "symbol not tradable in this simulation"
    sim.clock.sleep(1)
    assert client.get("/api/query_orders").json()["total"] == 0


def test_a_listed_symbol_not_traded_here_is_refused_by_every_symbol_endpoint():
    client = in_process_client(flat_sim(**FIXED))
    answers = [client.http.get(f"{client.base}/api/query_symbol_price", params={"symbol": "ETH-USD"}),
               client.get("/api/query_position_config", symbol="ETH-USD"),
               client.post_signed("/api/change_leverage", {"symbol": "ETH-USD", "leverage": 10})]
    assert [(a.status_code, a.json()["message"]) for a in answers] == \
           [(400, "symbol not tradable in this simulation")] * 3


def test_an_unlisted_symbol_is_refused_as_invalid():
    client = in_process_client(flat_sim(**FIXED))
    response = client.new_order(symbol="DOGE-USD")
    assert (response.status_code, response.json()["message"]) == (400, "invalid symbol")


def test_a_coarse_tick_symbol_takes_whole_dollar_prices_only():
    sim = quiet_sim("XAU-USD")
    client = in_process_client(sim)
    lot_qty = format(SYMBOLS["XAU-USD"].min_order_qty, "f")
    price = below_mark(sim, 3)
    assert client.new_order(symbol="XAU-USD", price=f"{price}.5", qty=lot_qty).status_code == 400
    assert client.new_order(symbol="XAU-USD", price=format(price, "f"), qty=lot_qty,
                            cl_ord_id="xau-1").status_code == 200
    sim.clock.sleep(1)
    assert client.order("xau-1").json()["price"] == format(price, "f")


# ---- rule changes during a run ---------------------------------------------------------------------

def test_with_rules_changes_rule_fields_and_converts_decimal_text():
    spec = with_rules(SymbolSpec(), {"price_tick_decimals": 0, "min_order_qty": "0.001"})
    assert spec.tick == 1 and spec.min_order_qty == Decimal("0.001")
    assert spec == dataclasses.replace(SymbolSpec(), price_tick_decimals=0, min_order_qty=Decimal("0.001"))


@pytest.mark.parametrize("fields", [{"symbol": "ETH-USD"}, {"start_price": "1"}, {"tick": 1},
                                    {"price_tick_decimals": "1"}, {"price_tick_decimals": True},
                                    {"min_order_qty": "1e-3"}, {"min_order_qty": 0.001}, {"max_order_qty": "-1"},
                                    {"price_tick_decimals": -1}])
def test_with_rules_refuses_what_is_not_a_rule_or_not_a_valid_value(fields):
    with pytest.raises(ValueError):
        with_rules(SymbolSpec(), fields)


def test_a_tick_change_mid_run_refuses_the_old_grid_and_symbol_info_shows_the_new_tick():
    sim = flat_sim(**FIXED)
    client = in_process_client(sim)
    assert client.new_order(price="94990.1").status_code == 200  # on the 0.1 grid
    spec = sim.set_symbol_rules(price_tick_decimals=0)
    assert spec.price_tick_decimals == 0 and sim.exchange.spec == spec
    response = client.new_order(price="94990.1")
    assert response.status_code == 400 and "price" in response.json()["message"]
    assert client.new_order(price="94990").status_code == 200
    assert symbol_info(client, symbol="BTC-USD")[0]["price_tick_decimals"] == 0


def test_an_order_resting_on_the_old_grid_keeps_its_price_after_a_coarser_tick():
    sim = flat_sim(**FIXED)
    client = in_process_client(sim)
    client.new_order(price="94990.1", cl_ord_id="old-grid")
    sim.clock.sleep(1)
    sim.set_symbol_rules(price_tick_decimals=0)
    order = client.order("old-grid").json()
    assert (order["status"], order["price"]) == ("new", "94990.1")


def test_a_lot_and_minimum_change_mid_run_applies_to_new_orders():
    sim = flat_sim(**FIXED)
    client = in_process_client(sim)
    sim.set_symbol_rules(qty_tick_decimals=3, min_order_qty=Decimal("0.002"))
    assert client.new_order(qty="0.0015").status_code == 400  # off the new lot
    assert client.new_order(qty="0.001").status_code == 400  # below the new minimum
    assert client.new_order(qty="0.002").status_code == 200


def test_the_symbol_rules_control_answers_the_new_row():
    sim = flat_sim(**FIXED)
    client = in_process_client(sim)
    status, row = control(sim, "symbol_rules", {"price_tick_decimals": 2, "min_order_qty": "0.001"})
    assert status == 200
    assert (row["symbol"], row["price_tick_decimals"], row["min_order_qty"]) == ("BTC-USD", 2, "0.001")
    assert symbol_info(client, symbol="BTC-USD") == [row]


@pytest.mark.parametrize("payload", [{"price_tick_decimals": "2"}, {"symbol": "ETH-USD"}, {"no_such_rule": 1},
                                     {"min_order_qty": "1000"}])
def test_the_symbol_rules_control_refuses_bad_rules_and_keeps_the_old_ones(payload):
    sim = flat_sim(**FIXED)
    status, body = control(sim, "symbol_rules", payload)
    assert status == 400 and body["message"]
    assert sim.exchange.spec == SymbolSpec()


def test_the_exchange_refuses_the_rules_of_another_symbol():
    sim = flat_sim(**FIXED)
    with pytest.raises(ValueError, match="ETH-USD"):
        sim.exchange.set_spec(SYMBOLS["ETH-USD"])
    assert sim.exchange.spec == SymbolSpec()
