"""The figures of one run of the daemon against the simulator, shared by --simulate and the
backtest so that a word means the same in both reports."""
from __future__ import annotations

from typing import Any

from rewards import HOUR_S

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


def reward_figures(sim: Simulator, address: str, since: float, until: float, sim_seconds: float) -> dict[str, Any]:
    """The run's reward under the simulator's programme (rewards.py), scored at every change of
    the account's orders or the mark, over the clock hours from the one holding `since` to the
    last that starts before `until`: Maker Hours earned (an hour still under way counts its
    projected score for the part simulated), per simulated hour, and the hours whose two-sided
    time reached (or is on track for) the 1.0x and the 0.5x tier."""
    meter = sim.exchange.reward_meter(address)
    if meter is None:  # the programme has no rules for the symbol: no figure, rather than a 0
        return {"maker_hours": None, "maker_hours_per_hour": None, "tier_1x_hours": None, "tier_half_hours": None}
    now = sim.clock.now()
    earned = meter.earned_between(since, until, now)
    scores = [meter.projected_score(hour, now) for hour in meter.hours_between(since, until)]
    multipliers = [score.tier.multiplier for score in scores if score is not None and score.tier is not None]
    return {"maker_hours": earned,
            "maker_hours_per_hour": earned * HOUR_S / sim_seconds if sim_seconds > 0 else 0.0,
            "tier_1x_hours": sum(m >= 1.0 for m in multipliers),
            "tier_half_hours": sum(0 < m < 1.0 for m in multipliers)}
