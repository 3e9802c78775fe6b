"""The pieces of `python market_maker.py --simulate` that belong to the simulator: a throwaway
wallet, the market to serve, and the run's report. The daemon composes them (market_maker.simulate);
nothing here imports it.
"""
from __future__ import annotations

import json
import os
from typing import Any

from eth_account import Account

from .figures import reward_figures, run_figures
from .market import Market, RecordedMarket
from .simulator import Simulator

# A simulated run shows its status line this often (a live one every minute).
STATUS_EVERY_S = 10.0


def throwaway_key() -> str:
    """A fresh wallet key for one simulated run; it never leaves this process."""
    return "0x" + bytes(Account.create().key).hex()


def load_market(prefixes: list[str] | None) -> Market | None:
    """Recorded hours when given (missing files raise FileNotFoundError), else None (synthetic)."""
    return RecordedMarket(prefixes) if prefixes else None


def run_report(sim: Simulator, address: str, requotes: int, wall_s: float, programme: str) -> dict[str, Any]:
    """The run's figures, rounded for reading (its reward, under `programme`, to 6 places), plus
    what is left open at the end."""
    sim_seconds = float(sim.exchange.metrics(address)["elapsed_s"])
    figures = run_figures(sim, address, sim_seconds, requotes)
    now = sim.clock.now()
    reward = reward_figures(sim, address, now - sim_seconds, now, sim_seconds)
    return {**{key: round(value, 3) if isinstance(value, float) else value for key, value in figures.items()},
            **{key: round(value, 6) if isinstance(value, float) else value for key, value in reward.items()},
            "reward_programme": programme, "symbol": sim.exchange.spec.symbol, "pnl": str(figures["pnl"]), "fees": str(figures["fees"]),
            "open_orders_at_end": len(sim.exchange.open_orders(address)), "wall_s": round(wall_s, 3)}


def summary(report: dict[str, Any]) -> str:
    return (f"simulated {report['sim_seconds']:.0f} s: two-sided uptime {report['uptime_pct']:.2f}%, "
            f"{report['fills']} fills of our quotes ({report['partial_fills']} partial; "
            f"{report['taker_fills']} closes), {report['orders_placed']} orders, "
            f"{report['post_only_rejects']} post-only rejects, {report['requotes']} requotes, "
            f"{report['requests_per_s']:.2f} requests/s ({report['rate_limited']} refused with 429), "
            f"pnl {report['pnl']}, fees {report['fees']}, {report['open_orders_at_end']} open orders at the end; "
            f"{reward_text(report)}")


def reward_text(report: dict[str, Any]) -> str:
    head = f"reward under {report['reward_programme']}"
    if report["maker_hours"] is None:
        return f"{head}: none estimated, the programme has no rules for {report['symbol']}"
    return (f"{head} (an estimate: second-hand rules) {report['maker_hours']:.6f} Maker Hours "
            f"({report['maker_hours_per_hour']:.6f} an hour; hours at 1.0x: {report['tier_1x_hours']}, "
            f"at 0.5x: {report['tier_half_hours']})")


def write_report(report: dict[str, Any], path: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
