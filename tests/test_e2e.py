"""The real daemon end to end against the simulator: in-process on a virtual clock, and as
subprocesses over HTTP (`python market_maker.py` against `python -m standx_sim serve`)."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal

import pytest
import requests
from eth_account import Account

import market_maker as mm
from standx_auth import StandXAuth
from standx_sim.figures import run_figures
from standx_sim.simulate import throwaway_key
from tests.sim_helpers import BASE_URL, FLAT_MARK, realistic_flat_sim, trade_through
from tests.sim_process import REPO, account, clean_env, start_daemon_process, wait_until



# ---- in-process, virtual time ----------------------------------------------------------------

def start_daemon(sim, **env: str) -> mm.MarketMaker:
    """The real MarketMaker and StandXAuth on the simulator's clock, through the adapter."""
    config = mm.load_config({"WALLET_PRIVATE_KEY": throwaway_key(), "STANDX_AUTH_BASE_URL": BASE_URL,
                             "STANDX_PERPS_BASE_URL": BASE_URL, **env})
    session = requests.Session()
    session.trust_env = False
    session.mount(BASE_URL, sim.adapter(latency_s=0.02))
    auth = StandXAuth(config.private_key, auth_base_url=BASE_URL, perps_base_url=BASE_URL,
                      clock=sim.clock, session=session)
    maker = mm.MarketMaker(config, auth, clock=sim.clock)
    maker.start()
    return maker


def run_for(maker: mm.MarketMaker, seconds: float) -> None:
    ends = maker.clock.now() + seconds
    while maker.clock.now() < ends:
        maker.run_once()
        maker.clock.sleep(maker.config.check_interval_s)


def resting(sim, maker: mm.MarketMaker, side: str | None = None) -> list:
    return [o for o in sim.exchange.open_orders(maker.auth.address.lower())
            if side is None or o.side == side]


def distance(order, mark: Decimal) -> Decimal:
    return mm.distance_bps(order.side, order.price, mark)


def test_login_then_two_sided_post_only_quotes_within_the_band():
    sim = realistic_flat_sim()
    maker = start_daemon(sim)
    run_for(maker, 2)
    orders = resting(sim, maker)
    assert sorted(o.side for o in orders) == ["buy", "sell"]
    for order in orders:
        assert order.time_in_force == "alo" and not order.reduce_only
        assert order.qty == Decimal("0.005")
        assert order.cl_ord_id.startswith(mm.CL_ORD_ID_PREFIX)
        assert Decimal(7) <= distance(order, FLAT_MARK) <= Decimal(10)


def test_price_move_is_followed_by_a_requote_back_into_the_band():
    sim = realistic_flat_sim()
    maker = start_daemon(sim)
    run_for(maker, 2)
    before = {o.cl_ord_id for o in resting(sim, maker)}
    sim.exchange.shift_bps(3)  # once the mark follows: buy 10.5 bps away, sell 4.5 bps, both out of band
    run_for(maker, 20)  # StandX's mark trails the book by seconds (standx_sim/mark.py)
    mark = sim.exchange.mark_price()
    assert mark - FLAT_MARK > FLAT_MARK * Decimal("2.5") / 10000
    after = resting(sim, maker)
    assert {o.cl_ord_id for o in after}.isdisjoint(before)
    assert sorted(o.side for o in after) == ["buy", "sell"]
    assert all(Decimal(7) <= distance(o, mark) <= Decimal(10) for o in after)


def test_fill_is_closed_reduce_only_and_the_side_is_placed_again():
    sim = realistic_flat_sim()
    maker = start_daemon(sim)
    run_for(maker, 2)
    buy = resting(sim, maker, "buy")[0]
    trade_through(sim, buy, Decimal("0.01"))  # a seller sweeps through our bid
    run_for(maker, 4)
    address = maker.auth.address.lower()
    closes = [o for o in sim.exchange.orders(address) if o.order_type == "market"]
    assert [(o.side, o.reduce_only, o.time_in_force, o.status) for o in closes] == \
        [("sell", True, "ioc", "filled")]
    assert sim.exchange.metrics(address)["position_qty"] == 0
    assert sorted(o.side for o in resting(sim, maker)) == ["buy", "sell"]
    assert maker.fills == 1
    # Reports count our quotes filled as fills, our closing orders apart.
    figures = run_figures(sim, address, 6.0, maker.requotes)
    assert (figures["fills"], figures["taker_fills"]) == (1, 1)


@pytest.mark.parametrize("balance, mode, target_bps", [
    ("1000", "normal", Decimal("7.5")), ("75", "degraded_1", Decimal(25)), ("40", "degraded_2", Decimal(80)),
])
def test_each_balance_mode_quotes_at_its_distance(balance, mode, target_bps):
    sim = realistic_flat_sim()
    maker = start_daemon(sim)
    run_for(maker, 1)
    sim.exchange.set_balance(maker.auth.address.lower(), Decimal(balance))
    run_for(maker, 10 * maker.config.check_interval_s + 3)
    assert maker.mode == mode
    orders = resting(sim, maker)
    assert sorted(o.side for o in orders) == ["buy", "sell"]
    for order in orders:
        assert abs(distance(order, FLAT_MARK) - target_bps) < Decimal("0.1")


def test_ten_seconds_of_quoting_keep_at_most_one_order_per_side_at_rest():
    sim = realistic_flat_sim(meter_qty=Decimal("0.005"))
    maker = start_daemon(sim)
    run_for(maker, 10)
    metrics = sim.exchange.metrics(maker.auth.address.lower())
    assert metrics["max_live_orders"] == {"buy": 1, "sell": 1}
    assert metrics["two_sided_uptime"] > 0.9


def test_shutdown_leaves_no_order_and_spares_manual_ones():
    sim = realistic_flat_sim()
    maker = start_daemon(sim)
    address = maker.auth.address.lower()
    sim.exchange.submit_order(address, side="buy", order_type="limit", qty=Decimal("0.001"),
                              time_in_force="gtc", reduce_only=False, price=Decimal("90000"),
                              cl_ord_id="by-hand-1")
    run_for(maker, 2)
    assert maker.shutdown() is True
    assert [o.cl_ord_id for o in resting(sim, maker)] == ["by-hand-1"]


# ---- subprocesses over HTTP -------------------------------------------------------------------

def test_daemon_process_quotes_then_stops_on_sigterm_with_no_order_left(sim_server, tmp_path):
    key = throwaway_key()
    address = Account.from_key(key).address.lower()
    daemon = start_daemon_process(sim_server, key, tmp_path)
    try:
        two_sided = wait_until(lambda: len(account(sim_server, address).get("open_orders", [])) == 2, 20)
        orders = account(sim_server, address)["open_orders"]
        daemon.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = daemon.wait(timeout=20)
        output = daemon.stdout.read()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert two_sided, output
    assert sorted(o["side"] for o in orders) == ["buy", "sell"]
    assert {o["time_in_force"] for o in orders} == {"alo"}
    assert code == 0 and time.monotonic() - started < 15
    assert account(sim_server, address)["open_orders"] == []
    assert key[2:] not in output and "Traceback" not in output


def test_simulate_runs_without_any_env_shows_its_status_every_10_s_and_writes_its_report(tmp_path):
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "market_maker.py"), "--simulate", "--duration", "10.5",
         "--report-json", str(report)],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(report.read_text())
    for key in ("uptime_pct", "fills", "partial_fills", "taker_fills", "orders_placed", "post_only_rejects",
                "rejected_in_matching", "requotes", "requests", "requests_per_s", "rate_limited", "pnl", "fees",
                "open_orders_at_end", "sim_seconds", "wall_s"):
        assert key in figures
    assert figures["open_orders_at_end"] == 0
    assert figures["orders_placed"] >= 2 and figures["requests"] > 0
    assert 0 < figures["uptime_pct"] <= 100
    assert "two-sided uptime" in result.stdout
    assert result.stdout.count("status mode=normal") == 1  # at 10 s, not once a minute


def test_simulate_with_a_symbol_the_simulator_does_not_list_says_so_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "market_maker.py"), "--simulate"], cwd=tmp_path,
                            env=clean_env(MARKET_MAKER_SYMBOL="DOGE-USD"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "the simulator lists BTC-USD, ETH-USD, XAU-USD: set MARKET_MAKER_SYMBOL to one of them to simulate "
        "(got DOGE-USD)"]


def test_simulate_quotes_the_configured_symbol_on_its_own_tick(tmp_path):
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "market_maker.py"), "--simulate", "--duration", "3", "--report-json", str(report)],
        cwd=tmp_path, env=clean_env(MARKET_MAKER_SYMBOL="ETH-USD", MARKET_MAKER_QTY="0.01"),
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(report.read_text())
    assert figures["orders_placed"] >= 2 and figures["open_orders_at_end"] == 0
    assert "symbol=ETH-USD" in result.stderr + result.stdout


def test_simulate_with_a_missing_market_file_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "market_maker.py"), "--simulate", "--market-data",
         str(tmp_path / "nope")], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"market data not found: {tmp_path / 'nope'}.bbo.csv.gz"]


def test_a_fill_and_its_close_are_logged_with_prices_fees_and_the_days_totals(monkeypatch):
    from tests.fault_harness import run_daemon, flat_market

    def sell_into_our_bid(run):
        bid = next(o for o in run.our_resting() if o.side == "buy")
        trade_through(run.sim, bid, Decimal("0.005"))
    run = run_daemon(15, market=flat_market(), monkeypatch=monkeypatch, actions=[(5, sell_into_our_bid)])
    fill = re.search(r"filled: bought 0\.0050 BTC-USD at (\d+\.\d+); closing", run.logs)
    close = re.search(r"position closed: flat again; closed at (\d+\.\d+): price ([-+]\d+\.\d+), fees "
                      r"(\d+\.\d+), net ([-+]\d+\.\d+); day (\d{4}-\d\d-\d\d): round_trips=1 ", run.logs)
    assert fill and close, run.logs[-2000:]
    entry = Decimal(fill.group(1))
    exit_price, pnl, fees, net = (Decimal(close.group(i)) for i in (1, 2, 3, 4))
    assert pnl == ((exit_price - entry) * Decimal("0.005")).quantize(Decimal("0.0001"))
    assert fees == (Decimal("0.005") * (entry * Decimal("0.0001") + exit_price * Decimal("0.0004"))).quantize(
        Decimal("0.0001"))
    assert net == pnl - fees
    metrics = run.metrics()
    assert Decimal(str(metrics["fees"])).quantize(Decimal("0.0001")) == fees  # what the exchange charged
    assert "day 2026-01-06: round_trips=1" in run.maker.status_line()
