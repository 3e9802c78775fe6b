"""The figures of one run of the daemon against the simulator, shared by --simulate and the
backtest so that a word means the same in both reports."""
from __future__ import annotations

from typing import Any

from .simulator import Simulator


def run_figures(sim: Simulator, address: str, sim_seconds: float, requotes: int) -> dict[str, Any]:
    """Uptime (time-weighted, from the login), fills of our quotes (maker) and of our closing
    orders (taker), orders, requotes, every request the simulator answered, PnL before fees
    (realized + unrealized), fees, and the most orders of ours resting on one side. `requotes`
    is the daemon's own count: only it knows why it replaced an order."""
    metrics = sim.exchange.metrics(address)
    metered_s = metrics["elapsed_s"]
    requests = sum(sim.api.request_counts.values())
    return {
        "uptime_pct": 100.0 * metrics["two_sided_s"] / metered_s if metered_s > 0 else 0.0,
        "fills": metrics["maker_fills"],
        "taker_fills": metrics["taker_fills"],
        "orders_placed": metrics["orders_placed"],
        "requotes": requotes,
        "requests": requests,
        "requests_per_s": requests / sim_seconds if sim_seconds > 0 else 0.0,
        "pnl": metrics["realized_pnl"] + metrics["upnl"],
        "fees": metrics["fees"],
        "max_orders_per_side": max(metrics["max_live_orders"].values(), default=0),
        "sim_seconds": sim_seconds,
    }
