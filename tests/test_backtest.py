"""The backtest: the engine's reward scoring, the CLI report, and the benchmark script."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from market_maker import replay_config
from rewards import HOUR_S, PROGRAMMES
from standx_sim.backtest import SIM_URL, throwaway_private_key
from tests.sim_helpers import START_TS, flat_sim, in_process_client

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO.parent / "shared" / "market_data"
CALM_HOUR = DATA_DIR / "BTC-USD_2026-01-06_00"
needs_data = pytest.mark.skipif(not (DATA_DIR / "BTC-USD_2026-01-06_00.bbo.csv.gz").is_file(),
                                reason="recorded market data (../shared/market_data) is absent")
REPORT_KEYS = {"uptime_pct", "maker_hours", "maker_hours_per_hour", "tier_1x_hours", "tier_half_hours", "fills", "fills_per_hour", "orders_placed",
               "requotes", "requests", "requests_per_s", "pnl", "fees", "max_orders_per_side",
               "sim_seconds", "wall_s", "speedup", "partial_fills", "post_only_rejects", "rejected_in_matching",
               "rate_limited", "partial_fills_per_hour", "post_only_rejects_per_hour"}
DELAY_S = 0.25
QTY = Decimal("0.0010")
CMY, UPTIME = PROGRAMMES["cmy-2026-08"], PROGRAMMES["uptime-2026-01"]


# ---- the engine's scoring at every change (rewards.py holds the rules' own cases) ---------------

def quoting(buy: str | None = "94990.0", sell: str | None = "95010.0", programme=CMY):
    """A flat market (mark 95000.0, band 94905..95095); our quotes go live at START_TS + DELAY_S."""
    sim = flat_sim(visibility_delay_s=DELAY_S, reward_programme=programme)
    client = in_process_client(sim)
    for side, price in (("buy", buy), ("sell", sell)):
        if price is not None:
            assert client.new_order(side=side, price=price, qty=str(QTY), cl_ord_id=f"q-{side}").status_code == 200
    return sim, client


def tally(sim, client):
    return sim.exchange.reward_meter(client.address).hours[int(START_TS // HOUR_S)]


def test_resting_two_sided_quotes_are_scored_from_the_moment_they_rest():
    sim, client = quoting()
    sim.clock.sleep(20)
    # 10 USD from 95000 is 1.0526 bps: weight 2.0 - 1.2 x 1.0526 / 5 on each side
    weight = 2.0 - 1.2 * (10 / 95000 * 10000) / 5
    hour = tally(sim, client)
    assert hour.two_sided_s == pytest.approx(20 - DELAY_S)
    assert hour.value_s == pytest.approx(weight * float(QTY) / 2 * (20 - DELAY_S))


def test_the_farther_side_sets_the_value():
    sim, client = quoting(buy="94990.0", sell="95050.0")  # 1.05 and 5.26 bps
    sim.clock.sleep(10)
    weight = 0.8 - 0.4 * (50 / 95000 * 10000 - 5) / 5
    assert tally(sim, client).value_s == pytest.approx(weight * float(QTY) / 2 * (10 - DELAY_S))


def test_a_one_sided_quote_scores_nothing():
    sim, client = quoting(sell=None)
    sim.clock.sleep(20)
    assert (tally(sim, client).two_sided_s, tally(sim, client).value_s) == (0, 0)


def test_a_quote_outside_10_bps_scores_nothing():
    sim, client = quoting(buy="94904.9")
    sim.clock.sleep(10)
    assert tally(sim, client).two_sided_s == 0


def test_a_cancel_ends_the_score_at_the_moment_it_takes_effect():
    sim, client = quoting(programme=UPTIME)
    sim.clock.sleep(5)
    client.post_signed("/api/cancel_order", {"cl_ord_id": "q-sell"})  # effective at +5.25 s
    sim.clock.sleep(5)  # one jump over all of it
    hour = tally(sim, client)
    assert hour.two_sided_s == pytest.approx(5.0)
    [(value, seconds)] = hour.seconds_at.items()
    assert (value, seconds) == (pytest.approx(float(QTY) / 2), pytest.approx(5.0))


def test_without_a_programme_nothing_is_scored():
    sim, client = quoting(programme=None)
    sim.clock.sleep(5)
    assert sim.exchange.reward_meter(client.address) is None


# ---- configuration ----------------------------------------------------------------------------

def test_the_environment_wins_over_the_env_file_and_the_simulator_is_forced(tmp_path):
    env_file = tmp_path / "bt.env"
    env_file.write_text("MARKET_MAKER_QTY=0.002\nMARKET_MAKER_TARGET_BPS=8\n"
                        "STANDX_PERPS_BASE_URL=https://perps.standx.com\nWALLET_PRIVATE_KEY=abc\n")
    config = replay_config({"MARKET_MAKER_QTY": "0.003", "MARKET_MAKER_REQUOTE": "replace"},
                           str(env_file), "cancel_first", SIM_URL, throwaway_private_key())
    assert config.qty == Decimal("0.003") and config.band.target_bps == Decimal(8)
    assert config.perps_base_url == config.auth_base_url == "http://standx.sim"
    assert config.private_key.removeprefix("0x") == throwaway_private_key()
    assert config.requote_mode == "cancel_first"


# ---- the command line -------------------------------------------------------------------------

def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without strategy settings, plus extra."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MARKET_MAKER_", "STANDX_", "WALLET_", "LOG_LEVEL"))}
    return {**env, **extra}


def backtest(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "standx_sim", "backtest", *args], cwd=cwd,
                          env=env or clean_env(), capture_output=True, text=True, timeout=120)


def fresh_clone(tmp_path: Path) -> Path:
    """The project's files as a clone has them (tracked and new, nothing ignored), with no
    ../shared beside them."""
    root = tmp_path / "clone"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        if (REPO / name).is_file():  # (a tracked file deleted in the work tree is not)
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    assert not (tmp_path / "shared").exists()
    return root


def without_timing(report: dict) -> dict:
    for figures in report["hours"] + [report["total"]]:
        figures.pop("wall_s")
        figures.pop("speedup")
    return report


@needs_data
def test_a_short_backtest_reports_every_figure_and_repeats_exactly(tmp_path):
    reports = []
    for run in (1, 2):
        out = tmp_path / f"out{run}.json"
        result = backtest("--market-data", str(CALM_HOUR), "--max-seconds", "120", "--json", str(out))
        assert result.returncode == 0, result.stderr
        reports.append(json.loads(out.read_text()))
    report = reports[0]
    assert "wall_s and speedup" in report["note"]
    [hour] = report["hours"]
    for figures in (hour, report["total"]):
        assert REPORT_KEYS <= figures.keys()
        assert 0 < figures["uptime_pct"] <= 100
        assert figures["requests"] > 0 and figures["max_orders_per_side"] >= 1
        assert figures["sim_seconds"] >= 120 and figures["exit_code"] == 0
    assert hour["hour"] == "BTC-USD_2026-01-06_00" and hour["maker_hours"] > 0
    assert report["settings"]["reward_programme"] == "cmy-2026-08"
    assert "uptime_pct" in result.stdout
    assert without_timing(reports[0]) == without_timing(reports[1])


def test_a_fresh_clone_backtests_a_synthetic_calm_hour_labelled_so_and_repeats_exactly(tmp_path):
    clone = fresh_clone(tmp_path)
    reports = []
    for run in (1, 2):
        out = tmp_path / f"out{run}.json"
        result = backtest("--max-seconds", "60", "--json", str(out), cwd=clone)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("market: synthetic calm market (not a recording)")
        reports.append(json.loads(out.read_text()))
    report = reports[0]
    assert report["settings"]["market"].startswith("synthetic calm market (not a recording)")
    [hour] = report["hours"]
    assert hour["hour"] == "synthetic-calm-seed0" and hour["exit_code"] == 0 and hour["uptime_pct"] > 0
    assert without_timing(reports[0]) == without_timing(reports[1])


def test_synthetic_hours_take_consecutive_seeds_from_the_one_given(tmp_path):
    out = tmp_path / "out.json"
    result = backtest("--preset", "volatile", "--hours", "2", "--seed", "5", "--max-seconds", "20", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert [h["hour"] for h in json.loads(out.read_text())["hours"]] == ["synthetic-volatile-seed5",
                                                                         "synthetic-volatile-seed6"]


def test_seeds_and_hours_do_not_apply_to_recorded_data():
    result = backtest("--market-data", str(CALM_HOUR), "--seed", "3")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--seed" in result.stderr


def test_a_bad_setting_exits_2_naming_the_variable():
    result = backtest("--market-data", str(CALM_HOUR), env=clean_env(MARKET_MAKER_QTY="lots"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "MARKET_MAKER_QTY" in result.stderr


def test_a_missing_data_prefix_exits_2_with_one_line(tmp_path):
    result = backtest("--market-data", str(tmp_path / "BTC-USD_nowhere"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "BTC-USD_nowhere" in result.stderr


# ---- the benchmark ----------------------------------------------------------------------------

def test_the_benchmark_imports_without_running(capsys):
    spec = importlib.util.spec_from_file_location("bench_uptime", REPO / "bench" / "uptime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main)
    assert capsys.readouterr() == ("", "")


def test_the_benchmark_on_a_fresh_clone_runs_both_presets_labelled_synthetic(tmp_path):
    clone = fresh_clone(tmp_path)
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "bench/uptime.py", "--hours", "1", "--max-seconds", "30",
                             "--json", str(out)], cwd=clone, env=clean_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Backtest of the market maker on SYNTHETIC markets, not recordings")
    assert "| synthetic-calm-seed0 " in result.stdout and "| synthetic-volatile-seed0 " in result.stdout
    report = json.loads(out.read_text())
    assert report["market"].startswith("SYNTHETIC")
    assert set(report["columns"]) == {f"{market}/{feed}/{mark}/{mode}" for market in ("calm", "volatile")
                                      for feed in ("ws", "rest") for mark in ("standx", "mid")
                                      for mode in ("replace", "cancel_first")}
    assert "| ws/replace | rest/replace | ws/cancel_first | rest/cancel_first |" in " ".join(
        result.stdout.split())  # ws beside rest, in one table per market and mark model
    assert "targets of issue 12 on the volatile hours" in result.stdout and len(report["targets"]) == 3


def test_the_benchmark_asked_for_recordings_that_are_absent_exits_2_naming_the_file(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "uptime.py"), "--data-dir", str(tmp_path / "none")],
                            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "none/BTC-USD_2026-01-06_00.bbo.csv.gz" in result.stderr
