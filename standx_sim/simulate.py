"""`python market_maker.py --simulate`: the real daemon against a local StandX over HTTP.

No account, key or .env is needed: a throwaway wallet logs in to a simulator served on a free
loopback port, the daemon runs with the same settings as live (environment / .env) in real
time, and on exit a short summary is printed and a JSON report written.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any

from eth_account import Account

import market_maker as mm
from standx_auth import RealClock, StandXAuth

from .clock import WallClock
from .figures import run_figures
from .market import Market, RecordedMarket
from .server import SimServer
from .simulator import Simulator

log = logging.getLogger(__name__)

# A simulated run shows its status line this often (a live one every minute).
STATUS_EVERY_S = 10.0


def throwaway_key() -> str:
    """A fresh wallet key for one simulated run; it never leaves this process."""
    return "0x" + bytes(Account.create().key).hex()


def load_market(prefixes: list[str] | None) -> Market | None:
    """Recorded hours when given (missing files raise FileNotFoundError), else None (synthetic)."""
    return RecordedMarket(prefixes) if prefixes else None


def run_report(sim: Simulator, maker: mm.MarketMaker, address: str, wall_s: float) -> dict[str, Any]:
    """The run's figures, rounded for reading, plus what is left open at the end."""
    figures = run_figures(sim, maker, address, float(sim.exchange.metrics(address)["elapsed_s"]))
    return {**{key: round(value, 3) if isinstance(value, float) else value for key, value in figures.items()},
            "pnl": str(figures["pnl"]), "fees": str(figures["fees"]),
            "open_orders_at_end": len(sim.exchange.open_orders(address)), "wall_s": round(wall_s, 3)}


def summary(report: dict[str, Any]) -> str:
    return (f"simulated {report['sim_seconds']:.0f} s: two-sided uptime {report['uptime_pct']:.2f}%, "
            f"{report['fills']} fills of our quotes ({report['taker_fills']} closes), "
            f"{report['orders_placed']} orders, {report['requotes']} requotes, "
            f"{report['requests_per_s']:.2f} requests/s, pnl {report['pnl']}, fees {report['fees']}, "
            f"{report['open_orders_at_end']} open orders at the end")


def run_simulation(config: mm.Config, market_data: list[str] | None, duration_s: float | None,
                   report_path: str) -> int:
    """Serve a simulator on 127.0.0.1, run the daemon against it, report. The exit code."""
    sim = Simulator(WallClock(), load_market(market_data), meter_qty=config.qty)
    listed = sim.exchange.spec.symbol
    if config.symbol != listed:
        print(f"the simulator lists only {listed}: set MARKET_MAKER_SYMBOL={listed} to simulate "
              f"(got {config.symbol})", file=sys.stderr)
        return mm.EXIT_CONFIG
    server = SimServer(sim)
    url = server.start()
    config = dataclasses.replace(config, auth_base_url=url, perps_base_url=url)
    auth = StandXAuth(config.private_key, auth_base_url=url, perps_base_url=url, clock=RealClock())
    maker = mm.MarketMaker(config, auth)
    maker.status_every_s = STATUS_EVERY_S  # something to watch
    mm.install_signal_handlers(maker)
    log.info("simulator at %s; %s", url, mm.describe(config))
    started = time.monotonic()
    try:
        code = maker.run(duration_s=duration_s)
        report = run_report(sim, maker, auth.address, time.monotonic() - started)
    finally:
        server.stop()
    write_report(report, report_path)
    print(summary(report))
    print(f"report written to {report_path}")
    return code


def write_report(report: dict[str, Any], path: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")

