"""Synthetic markets like StandX's: the calm and volatile presets, and how their figures are measured.

A fresh clone has no recorded data (published by others, not ours to ship), so the backtest
and the benchmark replay by default a SyntheticMarket built from a preset. Each preset's
figures were measured with ``measure`` on recorded StandX BTC-USD hours by
``python bench/measure_presets.py``; the tests measure the synthetic markets the same way and
find the figures again.

What the presets do not reproduce: over a minute or more the recorded mid moves further than
its moves add up to (it trends: 0.34 bps/sqrt(s) on 60 s returns in the calm hours against
0.17 from the moves, 1.19 against 0.43 in the volatile ones), and its moves come in bursts; a
random walk does neither. The book has no depth, and trades print at the touch, never through
it. Requotes and uptime depend mostly on the small moves and the jumps, which are reproduced:
with the default settings and requote=replace the benchmark's uptime comes within 1.5 points of
the recordings'; cancel_first, whose 1 s pause absorbs a burst of moves in one requote on the
recordings, requotes more often and loses more uptime on the synthetic markets. Slow drifts
through a quote (fills, inventory PnL) are rarer than on the recordings.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from decimal import Decimal

from .market import JUMP_MIN_BPS, MOVE_MIN_BPS, BookChange, Market, SyntheticMarket

HOUR_S = 3600
TICK = Decimal("0.1")  # BTC-USD's price tick, SyntheticMarket's default


@dataclass(frozen=True)
class MarketFigures:
    """The statistics a SyntheticMarket is generated from, as ``measure`` finds them."""
    volatility_bps_per_sqrt_s: float  # of the moves: sqrt(sum of their squares in bps^2 / time)
    moves_per_s: float  # mid changes at one book change of MOVE_MIN_BPS up to JUMP_MIN_BPS
    jumps_per_hour: float  # mid changes at one book change of JUMP_MIN_BPS or more
    jump_mean_bps: float  # mean size of a jump
    spread_usd: float  # ask - bid, time-weighted mean
    trades_per_s: float  # public trades (prints)
    trade_size_btc: float  # geometric mean of the trades' qty
    trade_size_log_sd: float  # standard deviation of ln(qty)

    def market(self, seed: int, start_ts: float) -> SyntheticMarket:
        """The seeded synthetic market: the spread uniform from 0 (a locked book, as the
        recordings often show) to twice the mean, in whole ticks."""
        widest = Decimal(round(2 * self.spread_usd / float(TICK))) * TICK
        return SyntheticMarket(
            seed=seed, start_ts=start_ts, volatility_bps_per_sqrt_s=self.volatility_bps_per_sqrt_s,
            spread_usd=(Decimal(0), widest), trades_per_s=self.trades_per_s, tick=TICK,
            moves_per_s=self.moves_per_s, min_move_bps=MOVE_MIN_BPS, jumps_per_hour=self.jumps_per_hour,
            jump_mean_bps=self.jump_mean_bps, trade_size_btc=self.trade_size_btc,
            trade_size_log_sd=self.trade_size_log_sd)


@dataclass(frozen=True)
class Preset:
    name: str
    recordings: tuple[str, ...]  # the recorded hours measured (data prefixes, consecutive UTC hours)
    figures: MarketFigures

    def description(self) -> str:
        return (f"synthetic {self.name} market (not a recording): a seeded random walk with the figures "
                f"of the recorded StandX BTC-USD hours {self.recordings[0]} to {self.recordings[-1]}")


def measure(market: Market, start: float, end: float) -> MarketFigures:
    """The figures of a market from data time start to end, read through the Market interface."""
    first = market.book_at(start)
    changes = market.book_changes_between(start, end)
    books = [BookChange(start, *first), *changes]
    spread_time = sum(float(book.ask - book.bid) * (until - book.ts)  # USD * s
                      for book, until in zip(books, [c.ts for c in changes] + [end]))
    moves: list[float] = []
    jumps: list[float] = []
    for before, after in zip(books, changes):
        size_bps = abs(1e4 * math.log(float(after.bid + after.ask) / float(before.bid + before.ask)))
        if size_bps >= JUMP_MIN_BPS:
            jumps.append(size_bps)
        elif size_bps >= MOVE_MIN_BPS:
            moves.append(size_bps)
    log_sizes = [math.log(trade.qty) for trade in market.trades_between(start, end)]
    span = end - start
    return MarketFigures(
        volatility_bps_per_sqrt_s=math.sqrt(sum(x * x for x in moves) / span),
        moves_per_s=len(moves) / span,
        jumps_per_hour=len(jumps) * HOUR_S / span,
        jump_mean_bps=statistics.fmean(jumps) if jumps else 0.0,
        spread_usd=spread_time / span,
        trades_per_s=len(log_sizes) / span,
        trade_size_btc=math.exp(statistics.fmean(log_sizes)),
        trade_size_log_sd=statistics.pstdev(log_sizes))


# Measured by `python bench/measure_presets.py` (measure over each preset's recordings, from the
# first book to the end of the last hour, 3 significant figures) on the recorded StandX BTC-USD
# top of book and trades of 2026-01-06 published in github.com/djienne/StandX_Market_Making_Backtest_BTC
# (data/). Calm: the Asian session, 00:00-05:59 UTC; volatile: the US open, 14:00-15:59 UTC.
CALM = Preset("calm", tuple(f"BTC-USD_2026-01-06_{hour:02d}" for hour in range(6)), MarketFigures(
    volatility_bps_per_sqrt_s=0.166, moves_per_s=0.196, jumps_per_hour=2.67, jump_mean_bps=2.54,
    spread_usd=0.556, trades_per_s=2.06, trade_size_btc=0.000991, trade_size_log_sd=1.7))
VOLATILE = Preset("volatile", ("BTC-USD_2026-01-06_14", "BTC-USD_2026-01-06_15"), MarketFigures(
    volatility_bps_per_sqrt_s=0.429, moves_per_s=0.647, jumps_per_hour=60.5, jump_mean_bps=3.07,
    spread_usd=2.46, trades_per_s=3.01, trade_size_btc=0.0019, trade_size_log_sd=2.13))
PRESETS = {preset.name: preset for preset in (CALM, VOLATILE)}
