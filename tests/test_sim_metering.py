"""Uptime metering (both sides within 10 bps of the mark) and the per-account counters."""
from __future__ import annotations

from decimal import Decimal

from tests.sim_helpers import flat_sim, in_process_client

DELAY_S = 0.25  # binary-exact, so the time integrals below are exact too


def quoting(buy: str | None = "94990.0", sell: str | None = "95010.0", qty: str = "0.0010", **sim_kwargs):
    """A flat market (mark 95000.0, band 94905..95095) with our quotes resting from t = DELAY_S."""
    sim = flat_sim(visibility_delay_s=DELAY_S, **sim_kwargs)
    client = in_process_client(sim)
    for side, price in (("buy", buy), ("sell", sell)):
        if price is not None:
            assert client.new_order(side=side, price=price, qty=qty, cl_ord_id=f"q-{side}").status_code == 200
    return sim, client


def test_two_sided_quotes_in_the_band_count_as_uptime():
    sim, client = quoting()
    sim.clock.sleep(10)
    metrics = sim.exchange.metrics(client.address)
    assert metrics["two_sided_s"] == 10 - DELAY_S
    assert metrics["two_sided_uptime"] == (10 - DELAY_S) / 10


def test_one_sided_quote_does_not_count():
    sim, client = quoting(sell=None)
    sim.clock.sleep(10)
    metrics = sim.exchange.metrics(client.address)
    assert metrics["two_sided_s"] == 0
    assert metrics["buy_in_band_s"] == 10 - DELAY_S


def test_quote_just_outside_10_bps_does_not_count():
    sim, client = quoting(buy="94904.9")
    sim.clock.sleep(10)
    assert sim.exchange.metrics(client.address)["two_sided_s"] == 0


def test_quote_exactly_10_bps_away_counts():
    sim, client = quoting(buy="94905.0", sell="95095.0")
    sim.clock.sleep(10)
    assert sim.exchange.metrics(client.address)["two_sided_s"] == 10 - DELAY_S


def test_quote_smaller_than_meter_qty_does_not_count():
    sim, client = quoting(qty="0.0005", meter_qty=Decimal("0.0010"))
    sim.clock.sleep(10)
    assert sim.exchange.metrics(client.address)["two_sided_s"] == 0


def test_uptime_is_integrated_exactly_over_time():
    sim, client = quoting()
    sim.clock.sleep(10)  # t = 10 s: both sides up since 0.25 s
    client.post_signed("/api/cancel_order", {"cl_ord_id": "q-sell"})  # effective at 10.25 s
    sim.clock.sleep(10)  # t = 20 s
    metrics = sim.exchange.metrics(client.address)
    assert metrics["elapsed_s"] == 20
    assert metrics["two_sided_s"] == 10
    assert metrics["sell_in_band_s"] == 10
    assert metrics["buy_in_band_s"] == 19.75
    assert metrics["two_sided_uptime"] == 0.5


def test_uptime_stops_when_the_mark_moves_the_quotes_out_of_the_band():
    sim, client = quoting(buy="94930.0", sell="95070.0")  # 7.4 bps each side
    sim.clock.sleep(5)
    sim.exchange.shift_bps(3)  # mark 95028.5: the buy is 10.4 bps away, the sell 4.4 bps and unfilled
    sim.clock.sleep(5)
    metrics = sim.exchange.metrics(client.address)
    assert metrics["two_sided_s"] == 5 - DELAY_S
    assert metrics["sell_in_band_s"] == 10 - DELAY_S
    assert metrics["fills"] == 0


def test_filled_quote_stops_the_uptime():
    sim, client = quoting()
    sim.clock.sleep(5)
    sim.exchange.add_trade(Decimal("94990.0"), Decimal("1"), "sell")
    sim.clock.sleep(5)
    assert sim.exchange.metrics(client.address)["two_sided_s"] == 5 - DELAY_S


def test_metrics_count_orders_fills_and_cancels():
    sim, client = quoting()
    sim.clock.sleep(1)
    client.post_signed("/api/cancel_order", {"cl_ord_id": "q-sell"})
    sim.exchange.add_trade(Decimal("94990.0"), Decimal("1"), "sell")
    sim.clock.sleep(1)
    metrics = sim.exchange.metrics(client.address)
    assert metrics["orders_placed"] == 2
    assert metrics["orders_cancelled"] == 1
    assert metrics["cancel_requests"] == 1
    assert metrics["fills"] == 1 and metrics["maker_fills"] == 1
    assert metrics["position_qty"] == Decimal("0.0010")


def test_metrics_count_requests_by_path():
    sim, client = quoting()
    client.open_orders()
    client.open_orders()
    metrics = sim.exchange.metrics(client.address)
    assert metrics["requests"]["/api/query_open_orders"] == 2
    assert metrics["requests"]["/api/new_order"] == 2
    assert metrics["requests"]["/v1/offchain/login"] == 1
    assert metrics["requests_total"] == sum(metrics["requests"].values())


def test_metrics_remember_the_most_live_orders_per_side():
    sim, client = quoting()
    client.new_order(side="buy", price="94980.0")
    client.new_order(side="buy", price="94970.0")
    sim.clock.sleep(1)
    client.post_signed("/api/cancel_orders", {"cl_ord_id_list": [o["cl_ord_id"] for o in client.open_orders()]})
    sim.clock.sleep(1)
    assert sim.exchange.metrics(client.address)["max_live_orders"] == {"buy": 3, "sell": 1}


def test_every_request_is_counted_by_path_even_without_a_token():
    sim, client = quoting()
    client.http.get(f"{client.base}/api/query_symbol_price", params={"symbol": "BTC-USD"})
    assert sim.api.request_counts["/api/query_symbol_price"] == 1
    assert sim.api.request_counts["/api/new_order"] == 2
    assert "/api/query_symbol_price" not in sim.exchange.metrics(client.address)["requests"]


def test_metrics_measure_the_longest_time_with_two_orders_on_a_side():
    sim, client = quoting()
    client.new_order(side="buy", price="94980.0")
    sim.clock.sleep(1.5)  # the second buy shows at 0.25 s, its cancel takes effect at 1.75 s
    second = [o["cl_ord_id"] for o in client.open_orders() if o["price"] == "94980.0"]
    client.post_signed("/api/cancel_orders", {"cl_ord_id_list": second})
    sim.clock.sleep(1)
    assert sim.exchange.metrics(client.address)["max_double_s"] == {"buy": 1.5, "sell": 0.0}
