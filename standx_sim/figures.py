"""The figures of one run of the daemon against the simulator, shared by --simulate and the
backtest so that a word means the same in both reports."""
from __future__ import annotations

from typing import Any

from .simulator import Simulator


def run_figures(sim: Simulator, address: str, sim_seconds: float, requotes: int) -> dict[str, Any]:
    """Uptime (time-weighted, from the login), fills of our quotes (maker; partial_fills: those
    that left part of the order resting) and of our closing orders (taker), orders, post-only
    quotes rejected for crossing the book and orders rejected in matching, requotes, every
    request the simulator answered and those it refused with 429, PnL before fees (realized +
    unrealized), fees, and the most orders of ours resting on one side. `requotes` is the
    daemon's own count: only it knows why it replaced an order."""
    metrics = sim.exchange.metrics(address)
    metered_s = metrics["elapsed_s"]
    requests = sum(sim.api.request_counts.values())
    return {
        "uptime_pct": 100.0 * metrics["two_sided_s"] / metered_s if metered_s > 0 else 0.0,
        "fills": metrics["maker_fills"],
        "partial_fills": metrics["partial_fills"],
        "taker_fills": metrics["taker_fills"],
        "orders_placed": metrics["orders_placed"],
        "post_only_rejects": metrics["alo_rejections"],
        "rejected_in_matching": metrics["rejected_in_matching"],
        "requotes": requotes,
        "requests": requests,
        "requests_per_s": requests / sim_seconds if sim_seconds > 0 else 0.0,
        "rate_limited": sim.rate_limited(address),
        "pnl": metrics["realized_pnl"] + metrics["upnl"],
        "fees": metrics["fees"],
        "max_orders_per_side": max(metrics["max_live_orders"].values(), default=0),
        "sim_seconds": sim_seconds,
    }
