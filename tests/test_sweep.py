"""`python -m standx_sim sweep`: the grid, the ranking, the frontier, the plot and the command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal

import pytest

from standx_sim import sweep
from standx_sim.__main__ import main as standx_sim_main
from standx_sim.sweep import DEFAULT_BANDS, DEFAULT_REQUOTES, Setting, SweepError, frontier, grid, ranked
from tests.test_backtest import REPO, clean_env


def test_the_default_grid_has_at_least_12_settings_and_the_original_band():
    settings = grid(DEFAULT_BANDS, ["0.5"], ["ws"], DEFAULT_REQUOTES, ["0.005"])
    assert len(settings) >= 12
    assert Setting(Decimal("7.5"), Decimal(7), Decimal(10), Decimal("0.5"), "ws", "replace", Decimal("0.005")) \
        in settings


def test_the_grid_is_every_combination_in_the_order_given_without_repeats():
    settings = grid(["5/4/6", "7.5/7/10", "5/4/6"], ["0.5", "1"], ["ws"], ["replace"], ["0.005"])
    assert [s.label for s in settings] == ["5/4/6 bps, 0.5 s, ws, replace, 0.005", "5/4/6 bps, 1 s, ws, replace, 0.005",
                                           "7.5/7/10 bps, 0.5 s, ws, replace, 0.005",
                                           "7.5/7/10 bps, 1 s, ws, replace, 0.005"]


def test_a_setting_is_the_daemons_own_settings():
    [setting] = grid(["8.5/8/9.5"], ["1"], ["rest"], ["cancel_first"], ["0.010"])
    assert setting.overrides() == {"MARKET_MAKER_TARGET_BPS": "8.5", "MARKET_MAKER_MIN_BPS": "8",
                                   "MARKET_MAKER_MAX_BPS": "9.5", "MARKET_MAKER_CHECK_INTERVAL": "1",
                                   "MARKET_MAKER_PRICE_FEED": "rest", "MARKET_MAKER_REQUOTE": "cancel_first",
                                   "MARKET_MAKER_QTY": "0.01"}


@pytest.mark.parametrize("bands, sizes, message", [
    (["7/8"], ["0.005"], "--bands: '7/8' is not TARGET/MIN/MAX"),
    (["a/b/c"], ["0.005"], "--bands: 'a' is not a number above 0"),
    (["7.5/7/10"], ["-1"], "--sizes: '-1' is not a number above 0"),
    (["7.5/7/10"], ["1e-13"], "with at most 12 decimals"),
])
def test_a_bad_grid_is_refused_in_one_line(bands, sizes, message):
    with pytest.raises(SweepError, match=message):
        grid(bands, ["0.5"], ["ws"], ["replace"], sizes)


def a_row(name: str, net: float, reward: float, cost: float, current: bool = False) -> dict:
    return {"setting": name, "net_per_hour": net, "maker_hours_per_hour": reward, "cost_per_hour": cost,
            "current": current}


def test_rows_are_ranked_by_net_value_ties_in_grid_order():
    rows = [a_row("a", 0.1, 0, 0), a_row("b", 0.3, 0, 0), a_row("c", 0.1, 0, 0), a_row("d", -1, 0, 0)]
    assert [r["setting"] for r in ranked(rows)] == ["b", "a", "c", "d"]


def test_the_net_value_is_reward_at_the_assumed_rate_plus_pnl_minus_fees():
    hour = {"quoted_s": 3600.0, "two_sided_s": 3000.0, "metered_s": 3600.0, "maker_hours": 0.002,
            "tier_1x_hours": 1, "tier_half_hours": 0, "fills": 2, "partial_fills": 1, "taker_fills": 2,
            "orders_placed": 10, "post_only_rejects": 1, "rejected_in_matching": 0, "requotes": 5, "requests": 3600,
            "rate_limited": 0, "pnl": Decimal("-0.3"), "fees": Decimal("0.5"), "exit_code": 0,
            "max_orders_per_side": 1, "sim_seconds": 3600.0, "wall_s": 1.0}
    [setting] = grid(["7.5/7/10"], ["0.5"], ["ws"], ["replace"], ["0.005"])
    row = sweep.row(setting, [hour], Decimal(100), current=True)
    assert row["reward_value_per_hour"] == pytest.approx(0.2)  # 0.002 MH x 100 DUSD
    assert row["cost_per_hour"] == pytest.approx(0.8)  # fees 0.5 + a loss of 0.3
    assert row["net_per_hour"] == pytest.approx(-0.6)
    assert (row["fills_per_hour"], row["partial_fills_per_hour"]) == (pytest.approx(2), pytest.approx(1))


def test_the_frontier_keeps_what_nothing_beats_on_both_reward_and_cost():
    rows = [a_row("cheap", 0, 0.001, 0.0), a_row("dominated", 0, 0.0009, 0.1), a_row("mid", 0, 0.002, 0.5),
            a_row("same reward dearer", 0, 0.002, 0.7), a_row("best", 0, 0.003, 2.0)]
    assert [r["setting"] for r in frontier(rows)] == ["cheap", "mid", "best"]


def test_each_setting_says_at_which_maker_hour_value_it_beats_the_current_one():
    current = a_row("current", 0, 0.001, 0.1, current=True)
    closer = a_row("closer", 0, 0.002, 0.6)  # +0.001 MH/h for +0.5 DUSD/h: worth it above 500 DUSD/MH
    wider = a_row("wider", 0, 0.0008, 0.0)  # -0.0002 MH/h for -0.1 DUSD/h: below 500
    assert sweep.beats_current_when(closer, current) == "above 500"
    assert sweep.beats_current_when(wider, current) == "below 500"
    assert sweep.beats_current_when(a_row("free", 0, 0.001, 0.05), current) == "always"
    assert sweep.beats_current_when(a_row("dear", 0, 0.0009, 0.2), current) == "never"
    assert sweep.beats_current_when(current, current) == "-"


def test_without_matplotlib_the_plot_installs_it_and_says_so_when_that_fails(monkeypatch, capsys):
    calls = []
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError

    def pip(args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution found for matplotlib\n")

    monkeypatch.setattr(sweep.subprocess, "run", pip)
    with pytest.raises(SweepError, match="cannot install matplotlib for --plot .ERROR: No matching distribution"):
        sweep.load_pyplot()
    assert calls == [[sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"]]
    assert "installing it with pip" in capsys.readouterr().err


def test_the_plot_is_a_png_with_every_setting(tmp_path):
    pytest.importorskip("matplotlib")
    settings = grid(["5/4.5/6.5", "7.5/7/10"], ["0.5"], ["ws"], ["replace", "cancel_first"], ["0.005"])
    rows = [{**s._asdict(), **a_row(s.label, 0, 0.001 * k, 0.1 * k, current=k == 2)} for k, s in enumerate(settings)]
    sweep.plot(rows, str(tmp_path / "sweep.png"), "title", "note")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_sweep(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "standx_sim", "sweep", *args], cwd=REPO, env=env or clean_env(),
                          capture_output=True, text=True, timeout=120)


def test_the_command_ranks_marks_the_current_settings_and_repeats_byte_for_byte(tmp_path):
    args = ("--presets", "volatile", "--bands", "3.5/3/5,8.5/8/9.5", "--requotes", "replace", "--max-seconds", "150",
            "--json", str(tmp_path / "sweep.json"))
    first, second = run_sweep(*args), run_sweep(*args)
    assert first.returncode == 0, first.stderr
    # the current configuration (the defaults, 7.5/7/10) is not in the grid: it is added and marked
    lines = first.stdout.splitlines()
    rows = [line for line in lines if line.startswith("| ") and "bps" in line]
    assert len(rows) == 3 and sum(line.startswith("| * 7.5/7/10 bps") for line in rows) == 1
    nets = [float(line.split("|")[2]) for line in rows]
    assert [line.split("|")[3].strip() for line in rows if line.startswith("| * ")] == ["-"]
    assert nets == sorted(nets, reverse=True)
    assert "cmy-2026-08" in first.stdout and "second-hand" in first.stdout and "an assumption" in first.stdout
    assert lines[-1].startswith("took ")
    assert first.stdout.splitlines()[:-1] == second.stdout.splitlines()[:-1]
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["setting"] for r in report["rows"]] == [line.split("|")[1].strip().removeprefix("* ") for line in rows]


@pytest.mark.parametrize("args, env, message", [
    (("--bands", "7/8"), None, "--bands: '7/8' is not TARGET/MIN/MAX"),
    (("--presets", "stormy"), None, "unknown preset 'stormy'"),
    (("--bands", "5/6/7"), None, "MARKET_MAKER_TARGET_BPS: must be between MIN_BPS and MAX_BPS"),
    ((), {"MARKET_MAKER_QTY": "lots"}, "MARKET_MAKER_QTY"),
])
def test_bad_input_exits_2_with_one_line_before_running_anything(args, env, message, monkeypatch, capsys):
    assert sweep_in_process(args, env, monkeypatch, capsys) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err


def sweep_in_process(args, env, monkeypatch, capsys) -> int:
    """The command in this process (as a user's shell would run it, minus the interpreter's start)."""
    for name in [name for name in os.environ if name.startswith(("MARKET_MAKER_", "STANDX_", "WALLET_"))]:
        monkeypatch.delenv(name)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO)
    return standx_sim_main(["sweep", *args])


@pytest.mark.parametrize("args, message", [
    (("--sizes", "1e9"), "--sizes: '1e9' is not a number above 0 and at most 10000"),
    (("--sizes", "101"), "size 101: BTC-USD takes 0.0001 to 100 in lots of 0.0001"),
    (("--sizes", "0.00015"), "size 0.00015: BTC-USD takes"),
    (("--bands", "7.5/7/1e999999999"), "--bands: '1e999999999' is not a number above 0 and at most 10000"),
    (("--json", "/nonexistent/x.json"), "--json: cannot write to /nonexistent"),
    (("--plot", ""), "--plot: '' is not a file name"),
])
def test_what_cannot_run_or_be_written_is_refused_before_the_sweep_runs(args, message, monkeypatch, capsys):
    assert sweep_in_process(args, None, monkeypatch, capsys) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err


def test_sigterm_ends_the_sweep_and_its_workers_with_one_line(tmp_path):
    import signal
    import time
    sweep_process = subprocess.Popen([sys.executable, "-m", "standx_sim", "sweep", "--jobs", "2"], cwd=REPO,
                                     env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: list[int] = []
    deadline = time.monotonic() + 30
    while len(children) < 2 and time.monotonic() < deadline:  # both workers busy
        time.sleep(0.2)
        listed = subprocess.run(["pgrep", "-P", str(sweep_process.pid)], capture_output=True, text=True).stdout
        children = [int(pid) for pid in listed.split()]
    assert len(children) >= 2
    sweep_process.send_signal(signal.SIGTERM)
    out, err = sweep_process.communicate(timeout=30)
    assert sweep_process.returncode == 143 and out == ""
    assert err.count("\n") == 1 and "sweep interrupted by SIGTERM" in err
    time.sleep(0.5)
    assert not [pid for pid in children if os.path.exists(f"/proc/{pid}")]


def _die(_item: int) -> None:
    os.kill(os.getpid(), 9)  # a worker killed (the OOM killer, kill -9)


def test_a_worker_that_dies_ends_the_run_with_an_error_not_a_hang():
    from concurrent.futures.process import BrokenProcessPool
    from standx_sim.backtest import in_processes
    with pytest.raises(BrokenProcessPool):
        in_processes(_die, [1, 2, 3], 2)


@pytest.mark.parametrize("args, message", [
    (("--seed", "1000000000"), "--seed: must be a number at least 0 and at most 1000000"),
    (("--latency-ms", "1e12"), "--latency-ms: must be a number at least 0 and at most 60000"),
])
def test_replay_inputs_out_of_bounds_are_usage_errors(args, message, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        sweep_in_process(args, None, monkeypatch, capsys)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def _slow_or_failing(item: int) -> int:
    if item == 0:
        import time
        time.sleep(30)  # a long hour
    raise ValueError(f"item {item} cannot run")


def test_an_error_in_one_worker_ends_the_run_without_waiting_for_the_others():
    import time
    from standx_sim.backtest import in_processes
    started = time.monotonic()
    with pytest.raises(ValueError, match="item 1 cannot run"):
        in_processes(_slow_or_failing, [0, 1], 2)
    assert time.monotonic() - started < 20  # not the 30 s of the long hour
