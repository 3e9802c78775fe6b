"""Market data sources: recorded replay, the synthetic walk and its presets, and the engine's replay speed."""
from __future__ import annotations

import dataclasses
import gzip
import math
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from standx_sim import Exchange, RecordedMarket, SyntheticMarket, VirtualClock
from standx_sim.presets import PRESETS, measure

MARKET_DATA = Path(__file__).resolve().parents[2] / "shared" / "market_data"
CALM_HOUR = MARKET_DATA / "BTC-USD_2026-01-06_00"
NEXT_HOUR = MARKET_DATA / "BTC-USD_2026-01-06_01"
needs_market_data = pytest.mark.skipif(not Path(f"{CALM_HOUR}.bbo.csv.gz").exists(),
                                       reason="recorded market data not available")


def first_data_row(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        f.readline()
        return f.readline().strip().split(",")


def write_csv_gz(path: Path, header: str, rows: list[str]) -> None:
    with gzip.open(path, "wt") as f:
        f.write("\n".join([header, *rows]) + "\n")


def tiny_prefix(tmp_path: Path, name: str, books: list[str], trades: list[str]) -> str:
    prefix = tmp_path / name
    write_csv_gz(Path(f"{prefix}.bbo.csv.gz"), "ts_ms,bid,ask,bid_qty,ask_qty", books)
    write_csv_gz(Path(f"{prefix}.trades.csv.gz"), "ts_ms,price,qty,taker_side", trades)
    return str(prefix)


@needs_market_data
def test_recorded_market_starts_at_its_first_book_row():
    ts_ms, *book = first_data_row(Path(f"{CALM_HOUR}.bbo.csv.gz"))
    market = RecordedMarket([str(CALM_HOUR)])
    assert market.start_ts == int(ts_ms) / 1000
    assert market.book_at(market.start_ts) == tuple(Decimal(v) for v in book)  # bid, ask and their sizes


@needs_market_data
def test_recorded_market_replays_every_trade_of_the_hour():
    with gzip.open(f"{CALM_HOUR}.trades.csv.gz", "rt") as f:
        rows = sum(1 for _ in f) - 1
    market = RecordedMarket([str(CALM_HOUR)])
    assert len(market.trades_between(market.start_ts - 1, market.start_ts + 3600)) == rows


@needs_market_data
def test_recorded_prefixes_are_replayed_one_after_the_other():
    market = RecordedMarket([str(CALM_HOUR), str(NEXT_HOUR)])
    ts_ms, bid, ask = first_data_row(Path(f"{NEXT_HOUR}.bbo.csv.gz"))[:3]
    assert market.book_at(int(ts_ms) / 1000)[:2] == (Decimal(bid), Decimal(ask))


@needs_market_data
def test_an_hour_of_recorded_data_replays_in_well_under_a_second():
    market = RecordedMarket([str(MARKET_DATA / "BTC-USD_2026-01-06_14")])  # the volatile hour
    clock = VirtualClock(market.start_ts)
    exchange = Exchange(clock, market)
    address = "0x" + "ab" * 20
    mark = exchange.mark_price()
    for side, price in (("buy", mark - 50), ("sell", mark + 50)):
        exchange.submit_order(address, side=side, order_type="limit", qty=Decimal("0.001"), time_in_force="gtc",
                              reduce_only=False, price=price, cl_ord_id=side)
    started = time.perf_counter()
    for _ in range(7200):  # a 0.5 s loop for an hour
        clock.sleep(0.5)
        exchange.book()
    assert time.perf_counter() - started < 1.0
    assert exchange.metrics(address)["elapsed_s"] == pytest.approx(3600)


def test_recorded_market_holds_the_last_book_after_the_data_ends(tmp_path):
    prefix = tiny_prefix(tmp_path, "h", ["1000,100.0,100.2,1,1", "2000,100.4,100.6,0.5,2"], [])
    market = RecordedMarket([prefix])
    assert market.book_at(5000.0) == (Decimal("100.4"), Decimal("100.6"), Decimal("0.5"), Decimal("2"))


def test_recorded_market_keeps_a_locked_or_crossed_book(tmp_path):
    prefix = tiny_prefix(tmp_path, "h", ["1000,100.0,100.2,1,1", "2000,100.3,100.3,1,1", "3000,100.5,100.4,1,1"], [])
    market = RecordedMarket([prefix])
    assert [(c.bid, c.ask) for c in market.book_changes_between(1.0, 3.0)] == [
        (Decimal("100.3"), Decimal("100.3")), (Decimal("100.5"), Decimal("100.4"))]


def test_recorded_trade_above_the_ask_is_a_buyer_taking_whatever_its_label(tmp_path):
    prefix = tiny_prefix(tmp_path, "h", ["1000,100.0,100.2,1,1"],
                         ["1500,100.2,0.1,sell", "1600,100.0,0.1,sell", "1700,100.1,0.1,sell"])
    market = RecordedMarket([prefix])
    assert [t.taker_side for t in market.trades_between(0, 2)] == ["buy", "sell", "sell"]


def test_recorded_prefixes_out_of_time_order_are_refused(tmp_path):
    late = tiny_prefix(tmp_path, "late", ["5000,100.0,100.2,1,1"], [])
    early = tiny_prefix(tmp_path, "early", ["1000,100.0,100.2,1,1"], [])
    with pytest.raises(ValueError, match="back in time"):
        RecordedMarket([late, early])


def test_missing_recorded_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.bbo.csv.gz"):
        RecordedMarket([str(tmp_path / "nope")])


def test_synthetic_market_is_the_same_for_the_same_seed():
    a, b = SyntheticMarket(seed=7), SyntheticMarket(seed=7)
    assert a.book_changes_between(0, 600) == b.book_changes_between(0, 600)
    assert a.trades_between(0, 600) == b.trades_between(0, 600)


def test_synthetic_market_differs_between_seeds():
    assert SyntheticMarket(seed=1).book_at(600) != SyntheticMarket(seed=2).book_at(600)


def test_synthetic_market_does_not_depend_on_how_it_is_read():
    stepped, jumped = SyntheticMarket(seed=3), SyntheticMarket(seed=3)
    for t in range(1, 301):
        stepped.book_at(float(t))
    assert stepped.book_changes_between(0, 300) == jumped.book_changes_between(0, 300)


def test_synthetic_market_moves_like_btc():
    market = SyntheticMarket(seed=11, volatility_bps_per_sqrt_s=0.9)
    mids = [(lambda b: (b.bid + b.ask) / 2)(market.book_at(float(t))) for t in range(0, 3601, 60)]
    returns_bps = [float((b - a) / a) * 1e4 for a, b in zip(mids, mids[1:])]
    per_minute = (sum(r * r for r in returns_bps) / len(returns_bps)) ** 0.5
    assert 0.9 * 60 ** 0.5 * 0.7 < per_minute < 0.9 * 60 ** 0.5 * 1.3


def test_synthetic_spread_stays_within_its_range():
    market = SyntheticMarket(seed=5)
    spreads = {c.ask - c.bid for c in market.book_changes_between(0, 600)}
    assert min(spreads) >= Decimal("0.1") and max(spreads) <= Decimal("1.0")


def test_zero_volatility_gives_a_flat_market_without_trades():
    market = SyntheticMarket(seed=5, volatility_bps_per_sqrt_s=0)
    assert market.book_changes_between(0, 3600) == []
    assert market.trades_between(0, 3600) == []
    assert market.book_at(3600) == market.book_at(0)


def test_shift_bps_moves_the_whole_book():
    clock = VirtualClock(0.0)
    exchange = Exchange(clock, SyntheticMarket(volatility_bps_per_sqrt_s=0, spread_usd=(Decimal("0.2"),) * 2), mark="mid")
    exchange.shift_bps(10)  # 10 bps of 95000 = 95.0
    assert exchange.book()[:2] == (Decimal("95094.9"), Decimal("95095.1"))
    assert exchange.mark_price() == Decimal("95095.0")


def test_set_mid_moves_the_whole_book_to_the_given_mid():
    clock = VirtualClock(0.0)
    exchange = Exchange(clock, SyntheticMarket(volatility_bps_per_sqrt_s=0, spread_usd=(Decimal("0.2"),) * 2), mark="mid")
    exchange.set_mid(Decimal("90000"))
    assert exchange.book()[:2] == (Decimal("89999.9"), Decimal("90000.1"))


# ---- the presets ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, hours", [("calm", 24), ("volatile", 6)])
def test_a_presets_synthetic_market_measures_as_the_preset(name, hours):
    figures = PRESETS[name].figures
    measured = measure(figures.market(seed=1, start_ts=0.0), 0.0, hours * 3600.0)
    expected_jumps = figures.jumps_per_hour * hours
    for field, value in dataclasses.asdict(figures).items():
        # jumps are rare (the calm preset has about 64 in 24 h): three standard deviations of a
        # Poisson count; trade sizes: the lot floor, applied again to sizes measured with it,
        # moves them by about 7 %
        tolerance = 3 / math.sqrt(expected_jumps) if field == "jumps_per_hour" else 0.1
        assert getattr(measured, field) == pytest.approx(value, rel=tolerance), field


def test_a_presets_market_is_the_same_for_the_same_seed_and_differs_between_seeds():
    figures = PRESETS["volatile"].figures
    a, b, other = (figures.market(seed, start_ts=0.0) for seed in (4, 4, 5))
    assert a.book_changes_between(0, 600) == b.book_changes_between(0, 600)
    assert a.trades_between(0, 600) == b.trades_between(0, 600)
    assert a.book_changes_between(0, 600) != other.book_changes_between(0, 600)


@needs_market_data
def test_the_presets_hold_what_the_measuring_script_finds_in_the_recordings():
    result = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "measure_presets.py"),
                             "--data-dir", str(MARKET_DATA)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(the same as presets.py)") == len(PRESETS)
