"""Mark price models: MidMark (the rounded mid) and MarkModel (StandX's lagging median mark)."""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from standx_sim import RecordedMarket, SyntheticMarket
from standx_sim.mark import MarkModel, MarkParams, MidMark, mark_model, replay
from tests.test_sim_market import tiny_prefix

REPO = Path(__file__).resolve().parents[1]
MARKET_DATA = REPO.parent / "shared" / "market_data"
VOLATILE_HOUR = MARKET_DATA / "BTC-USD_2026-01-06_14"
needs_volatile_hour = pytest.mark.skipif(not Path(f"{VOLATILE_HOUR}.bbo.csv.gz").exists(),
                                         reason="recorded market data not available")
# 14:49:31-14:49:45 UTC: the mid rises from 93630 to 93774.75, 15 bps in 14 seconds
FAST_RISE = (1767710971.0, 1767710985.0)

TICK = Decimal("0.01")
SPREAD = Decimal("0.02")
# an index that stays at the first mid (its lag is longer than any test), a basis that is the
# whole of mid - index at once, no funding, a pin too wide to matter: P1 = index, P2 = mid,
# P3 = the last trade (or the index when idle)
FROZEN_INDEX = MarkParams(index_lag_s=1e6, index_smoothing_s=0, basis_window_s=0, trade_idle_s=10,
                          cadence_s=1, pin_band_bps=1000, funding_rate=0)


def book_at_mid(model, t: float, mid: str) -> bool:
    m = Decimal(mid)
    return model.on_book(t, m - SPREAD / 2, m + SPREAD / 2)


def tick_until(model, t: float) -> None:
    """Run every cadence tick up to t, as the engine schedules them."""
    while model.next_update() <= t:
        model.update(model.next_update())


def bps(a: Decimal, b: Decimal) -> float:
    return float(abs(a - b) / b) * 10000


# ---- MidMark ------------------------------------------------------------------------------

@pytest.mark.parametrize("bid, ask, mark", [
    ("100.0", "100.1", "100.0"),  # mid 100.05: half-even rounds to the even tick
    ("100.1", "100.2", "100.2"),  # mid 100.15
    ("100.0", "100.3", "100.2"),  # mid 100.15
    ("100.2", "100.2", "100.2"),  # a locked book
    ("100.3", "100.0", "100.2"),  # a crossed book, as recordings have
])
def test_mid_mark_is_the_mid_rounded_half_even_to_the_tick(bid, ask, mark):
    model = MidMark(Decimal("0.1"))
    model.on_book(5.0, Decimal(bid), Decimal(ask))
    assert model.mark == Decimal(mark)
    assert model.index == model.mark


def test_mid_mark_changes_at_each_book_change_and_never_on_its_own():
    model = MidMark(Decimal("0.1"))
    assert model.on_book(0.0, Decimal("100.0"), Decimal("100.2")) is True
    assert model.on_book(1.0, Decimal("99.9"), Decimal("100.3")) is False  # the same mid
    model.on_trade(1.5, Decimal("105"))
    assert model.mark == Decimal("100.1")
    assert model.on_book(2.0, Decimal("100.4"), Decimal("100.6")) is True
    assert model.mark == Decimal("100.5")
    assert model.next_update() == math.inf
    assert model.update(10.0) is False


# ---- MarkModel: start and cadence -----------------------------------------------------------

def test_the_mark_starts_at_the_first_mid_and_is_unknown_before():
    model = MarkModel(TICK)
    with pytest.raises(RuntimeError):
        _ = model.mark
    assert model.next_update() == math.inf
    assert book_at_mid(model, 0.3, "100000.013") is True  # the first book sets the mark at once
    assert model.mark == Decimal("100000.01")  # on the tick grid
    assert model.index == Decimal("100000.01")


def test_the_mark_changes_only_at_cadence_ticks():
    model = MarkModel(TICK, MarkParams(index_lag_s=0, index_smoothing_s=0, basis_window_s=0, cadence_s=2))
    book_at_mid(model, 0.3, "100000")
    assert model.next_update() == 2.0  # ticks fall on multiples of the cadence
    assert book_at_mid(model, 0.5, "100100") is False  # a book never moves the mark itself
    assert model.update(1.9) is False  # before the tick nothing happens
    assert model.mark == Decimal("100000")
    assert model.update(2.0) is True
    assert model.mark == Decimal("100100")
    assert model.next_update() == 4.0
    assert model.update(4.0) is False  # nothing moved
    book_at_mid(model, 4.5, "100200")
    assert model.update(9.3) is True  # a late call catches up, the next tick stays on the grid
    assert model.mark == Decimal("100200")
    assert model.next_update() == 10.0


def test_ticks_stay_on_the_grid_whatever_float_error_the_cadence_carries():
    model = MarkModel(TICK, MarkParams(cadence_s=0.1))
    book_at_mid(model, 0.0, "100000")
    ticks = []
    while model.next_update() <= 10.0:
        ticks.append(model.next_update())
        model.update(ticks[-1])
    assert ticks == [k * 0.1 for k in range(1, 101)]


# ---- MarkModel: the index --------------------------------------------------------------------

@pytest.mark.parametrize("lag_s, smoothing_s", [(5.0, 10.0), (2.0, 0.0), (0.0, 3.0)])
def test_the_index_follows_a_step_of_the_mid_with_the_configured_lag_and_smoothing(lag_s, smoothing_s):
    model = MarkModel(TICK, MarkParams(index_lag_s=lag_s, index_smoothing_s=smoothing_s))
    book_at_mid(model, 0.0, "100000")
    book_at_mid(model, 10.5, "100100")
    reached = math.ceil(10.5 + lag_s)  # the first tick that sees the step
    for t in range(1, 40):
        tick_until(model, t)
        seen_for = t - reached + 1  # ticks since the index started to move, one second each
        share = 0.0 if seen_for <= 0 else (1.0 if smoothing_s == 0 else 1 - math.exp(-seen_for / smoothing_s))
        assert model.index == (Decimal(100000) + 100 * Decimal(share)).quantize(TICK), t


# ---- MarkModel: the median of three ----------------------------------------------------------

@pytest.mark.parametrize("mid, trade, mark", [
    ("100300", "100050", "100100"),  # P3 < P1 < P2: the funding-adjusted index
    ("100150", "100300", "100150"),  # P1 < P2 < P3: index + basis
    ("100300", "100200", "100200"),  # P1 < P3 < P2: the last trade
])
def test_the_mark_is_the_middle_of_its_three_prices(mid, trade, mark):
    # P1 = index * (1 + 0.001 * remaining share of a very long funding interval) = 100100
    model = MarkModel(TICK, dataclasses.replace(FROZEN_INDEX, funding_rate=0.001, funding_interval_s=1e12))
    book_at_mid(model, 0.0, "100000")
    book_at_mid(model, 1.0, mid)
    model.on_trade(1.0, Decimal(trade))
    tick_until(model, 2.0)
    assert model.index == Decimal("100000")
    assert model.mark == Decimal(mark)


def test_the_funding_adjustment_shrinks_over_the_funding_interval():
    # the mid above and a trade below P1 make the funding-adjusted index the middle price
    model = MarkModel(TICK, dataclasses.replace(FROZEN_INDEX, funding_rate=0.001, funding_interval_s=100,
                                                    trade_idle_s=1e6))
    book_at_mid(model, 0.0, "100000")
    book_at_mid(model, 0.5, "101000")
    model.on_trade(0.5, Decimal("99000"))
    tick_until(model, 20.0)
    assert model.mark == Decimal("100080")  # 80 % of the interval left
    tick_until(model, 50.0)
    assert model.mark == Decimal("100050")
    tick_until(model, 120.0)
    assert model.mark == Decimal("100080")  # the next interval


def test_the_last_trade_gives_way_to_the_index_after_the_idle_time():
    model = MarkModel(TICK, FROZEN_INDEX)
    book_at_mid(model, 0.0, "100000")
    book_at_mid(model, 0.5, "100200")
    model.on_trade(1.0, Decimal("100100"))
    tick_until(model, 11.0)  # the trade is 10 s old: it still counts
    assert model.mark == Decimal("100100")
    tick_until(model, 12.0)  # idle: median(index, index + basis, index) = the index
    assert model.mark == Decimal("100000")
    model.on_trade(12.5, Decimal("100150"))
    tick_until(model, 13.0)
    assert model.mark == Decimal("100150")


# ---- MarkModel: the pin ----------------------------------------------------------------------

@pytest.mark.parametrize("mid, mark", [("100049", "100049"), ("100051", "100000"), ("99951", "99951"),
                                       ("99949", "100000")])
def test_a_mark_beyond_the_pin_band_is_pinned_to_the_index(mid, mark):
    model = MarkModel(TICK, dataclasses.replace(FROZEN_INDEX, pin_band_bps=5))
    book_at_mid(model, 0.0, "100000")
    book_at_mid(model, 0.5, mid)
    model.on_trade(0.5, Decimal(mid))
    tick_until(model, 1.0)
    assert model.mark == Decimal(mark)
    assert bps(model.mark, model.index) <= 5


# ---- the factory, the parameters, the replay order -------------------------------------------

def test_mark_model_builds_either_model_by_name():
    standx = mark_model("standx", TICK)
    assert isinstance(standx, MarkModel) and standx.params == MarkParams()
    assert mark_model("standx", TICK, FROZEN_INDEX).params == FROZEN_INDEX
    assert isinstance(mark_model("mid", TICK), MidMark)
    with pytest.raises(ValueError):
        mark_model("mid", TICK, FROZEN_INDEX)
    with pytest.raises(ValueError):
        mark_model("binance", TICK)


@pytest.mark.parametrize("field, value", [("cadence_s", 0), ("funding_interval_s", 0), ("index_lag_s", -1),
                                          ("pin_band_bps", -1)])
def test_mark_params_refuse_what_has_no_meaning(field, value):
    with pytest.raises(ValueError):
        MarkParams(**{field: value})


def test_replay_applies_trades_then_books_then_the_tick_of_one_instant(tmp_path):
    prefix = tiny_prefix(tmp_path, "instant", books=["0,100000,100000.02,1,1", "2000,100100,100100.02,1,1"],
                         trades=["2000,100300,0.1,buy"])
    market = RecordedMarket([prefix])
    params = MarkParams(index_lag_s=0, index_smoothing_s=0, basis_window_s=0, funding_rate=0)
    states = list(replay(MarkModel(TICK, params), market, 0.0, 3.0))
    assert [s.t for s in states] == [0.0, 1.0, 2.0, 2.0, 2.0, 3.0]
    trade_state, book_state, tick_state = states[2:5]
    assert trade_state.ask == Decimal("100000.02")  # the trade came first
    assert book_state.mark == Decimal("100000.01")  # the book alone does not move the mark
    # the tick sees both: median(index 100100.01, index + basis 100100.01, trade 100300)
    assert tick_state.mark == Decimal("100100.01")


def test_the_same_market_gives_the_same_marks():
    def marks():
        market = SyntheticMarket(seed=7, start_ts=1000.0, volatility_bps_per_sqrt_s=2.0, jumps_per_hour=60,
                                 jump_mean_bps=6.0, trades_per_s=2.0)
        return list(replay(mark_model("standx", Decimal("0.1")), market, 1000.0, 1600.0))
    first = marks()
    assert len({s.mark for s in first}) > 10  # the mark moved: the comparison means something
    assert marks() == first


# ---- calibration on the recorded volatile hour -------------------------------------------------

@pytest.fixture(scope="module")
def volatile_hour():
    market = RecordedMarket([str(VOLATILE_HOUR)])
    return market, market.book_changes_between(market.start_ts, math.inf)[-1].ts


@needs_volatile_hour
def test_in_a_fast_move_the_mark_trails_the_book_by_several_bps(volatile_hour):
    market, end = volatile_hour
    states = list(replay(mark_model("standx", Decimal("0.1")), market, market.start_ts, end))
    divergence = [bps(s.mark, (s.bid + s.ask) / 2) for s in states]
    assert 5 <= max(divergence) <= 15  # several bps in fast moves, about the 11.6 bps seen live
    rise = [s for s in states if FAST_RISE[0] <= s.t <= FAST_RISE[1]]
    assert all(s.mark < (s.bid + s.ask) / 2 for s in rise)  # lagging below the rising mid
    assert max(bps(s.mark, (s.bid + s.ask) / 2) for s in rise) >= 5


@needs_volatile_hour
def test_the_mid_mark_never_leaves_the_rounded_mid(volatile_hour):
    market, end = volatile_hour
    tick = Decimal("0.1")
    assert all(abs(s.mark - (s.bid + s.ask) / 2) <= tick / 2
               for s in replay(mark_model("mid", tick), market, market.start_ts, end))


@needs_volatile_hour
def test_the_measuring_script_reports_every_recorded_hour():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "measure_mark.py"), "--data-dir", str(MARKET_DATA)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    hours = [line.split()[0] for line in result.stdout.splitlines() if "quote crosses" in line]
    assert hours == [f"BTC-USD_2026-01-06_{h}" for h in ("00", "01", "02", "03", "04", "05", "14", "15")]
    assert "largest divergence: BTC-USD_2026-01-06_14" in result.stdout


def test_the_measuring_script_names_a_missing_file_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "measure_mark.py"), "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "BTC-USD_2026-01-06_00.bbo.csv.gz" in result.stderr


# ---- the mark in the engine -------------------------------------------------------------------

def lagging_sim(**kwargs):
    """A flat market with StandX's mark; nothing else random (fixed delays, no rate limits)."""
    from tests.sim_helpers import FIXED_MECHANICS, flat_sim
    return flat_sim(**{**FIXED_MECHANICS, "mark": "standx", **kwargs})


def quote_price(mark: Decimal, side: str, bps: str = "7.5") -> str:
    offset = mark * Decimal(bps) / 10000
    price = mark - offset if side == "buy" else mark + offset
    return str(price.quantize(Decimal("0.1"), rounding="ROUND_FLOOR" if side == "buy" else "ROUND_CEILING"))


@pytest.mark.parametrize("side, shift_bps", [("buy", -12), ("sell", 12)])
def test_after_a_fast_move_a_quote_off_the_lagging_mark_crosses_the_book(side, shift_bps):
    from tests.sim_helpers import in_process_client
    sim = lagging_sim()
    client = in_process_client(sim)
    sim.exchange.shift_bps(shift_bps)
    sim.clock.sleep(1.0)  # one cadence tick: the mark has barely moved, the book moved 12 bps
    mark, book = sim.exchange.mark_price(), sim.exchange.book()
    price = quote_price(mark, side)
    assert (Decimal(price) >= book.ask) if side == "buy" else (Decimal(price) <= book.bid)
    alo, gtc = f"alo-{side}", f"gtc-{side}"
    assert client.new_order(side=side, price=price, cl_ord_id=alo).status_code == 200
    assert client.new_order(side=side, price=price, cl_ord_id=gtc, time_in_force="gtc").status_code == 200
    sim.clock.sleep(0.5)
    assert client.order(alo).json()["status"] == "rejected"
    assert client.order(gtc).json()["status"] == "filled"  # taken at once, as a taker
    metrics = sim.exchange.metrics(client.address.lower())
    assert (metrics["alo_rejections"], metrics["taker_fills"]) == (1, 1)


def test_with_the_mid_mark_the_same_quote_rests():
    from tests.sim_helpers import in_process_client
    sim = lagging_sim(mark="mid")
    client = in_process_client(sim)
    sim.exchange.shift_bps(-12)
    sim.clock.sleep(1.0)
    price = quote_price(sim.exchange.mark_price(), "buy")
    assert client.new_order(side="buy", price=price, cl_ord_id="alo-buy").status_code == 200
    sim.clock.sleep(0.5)
    assert client.order("alo-buy").json()["status"] == "new"


def test_the_price_endpoint_shows_the_lagging_mark_and_index_apart_from_the_book():
    from tests.sim_helpers import in_process_client
    sim = lagging_sim()
    client = in_process_client(sim)
    sim.exchange.shift_bps(20)
    sim.clock.sleep(3.0)
    prices = client.get("/api/query_symbol_price", symbol="BTC-USD").json()
    mid = (Decimal(prices["spread_bid"]) + Decimal(prices["spread_ask"])) / 2
    mark, index = Decimal(prices["mark_price"]), Decimal(prices["index_price"])
    assert mark < mid and index < mid  # both still behind a 20 bps jump after 3 s
    assert (mid - mark) / mid * 10000 > 5
    sim.clock.sleep(60)
    prices = client.get("/api/query_symbol_price", symbol="BTC-USD").json()
    assert abs(Decimal(prices["mark_price"]) - mid) / mid * 10000 < 1  # caught up, within the basis


def test_uptime_follows_the_mark_at_its_ticks_not_the_book():
    """A buy 8 bps under the mark leaves the band when the lagging mark has moved up 3 bps, at
    the cadence tick that moves it, not at the book change."""
    from tests.sim_helpers import in_process_client
    sim = lagging_sim()
    client = in_process_client(sim)
    address = client.address.lower()
    mark = sim.exchange.mark_price()
    client.new_order(side="buy", price=quote_price(mark, "buy", "8"), cl_ord_id="b")
    client.new_order(side="sell", price=quote_price(mark, "sell", "8"), cl_ord_id="s")
    sim.clock.sleep(1.0)
    sim.exchange.shift_bps(5)
    in_band_at_move = sim.exchange.metrics(address)["buy_in_band_s"]
    sim.clock.sleep(30)
    after = sim.exchange.metrics(address)
    # the buy stayed in band for a while after the book moved (the mark lags), then left it
    assert 1.0 < after["buy_in_band_s"] - in_band_at_move < 30.0
    assert sim.exchange.mark_price() > mark


def test_a_tick_change_puts_the_engines_mark_on_the_new_grid_at_once():
    from standx_sim.symbols import with_rules
    sim = lagging_sim(mark="standx")
    sim.exchange.set_mid(Decimal("95001.3"))  # a mark with a decimal once it has followed
    sim.clock.sleep(60)
    assert sim.exchange.mark_price() % 1 != 0
    sim.exchange.set_spec(with_rules(sim.exchange.spec, {"price_tick_decimals": 0}))
    assert sim.exchange.mark_price() % 1 == 0
    assert sim.exchange.index_price() % 1 == 0
