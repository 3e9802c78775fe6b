"""Measure how far the simulator's mark models sit from the book on recorded StandX hours.

    python bench/measure_mark.py [--data-dir DIR] [--model standx|mid] [--param NAME=VALUE ...]

Replays each recorded hour (DIR/PREFIX.bbo.csv.gz + DIR/PREFIX.trades.csv.gz; default
../shared/market_data beside the repository) through a fresh mark model (standx_sim.mark.replay)
and prints, weighted by time: the median, mean, p90, p99 and max of |mark - mid| in bps, and the share of
time a quote 7.5 bps from the mark (a buy rounded down, a sell rounded up to the tick, as the
daemon prices them) would cross the book on either side. Then, for the hour with the largest
divergence, the mid, index and mark around that moment. --param overrides a MarkParams default
(for calibrating). The same files always give the same output. Exit 2 if a file is missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "market_data"
HOURS = {"calm": [f"BTC-USD_2026-01-06_{h:02d}" for h in range(6)],
         "volatile": ["BTC-USD_2026-01-06_14", "BTC-USD_2026-01-06_15"]}
TICK = Decimal("0.1")
QUOTE_BPS = Decimal("7.5")
TRACE_S = (-10, -5, -2, 0, 2, 5, 10, 20, 30)


@dataclasses.dataclass
class HourFigures:
    median_bps: float
    mean_bps: float
    p90_bps: float
    p99_bps: float
    max_bps: float
    max_at: float
    cross_share: float


def weighted_percentile(samples: list[tuple[float, float]], q: float) -> float:
    """The value below which a share q of the total weight lies; samples are (value, weight)."""
    ordered = sorted(samples)
    target = q * sum(w for _, w in ordered)
    seen = 0.0
    for value, weight in ordered:
        seen += weight
        if seen >= target:
            return value
    return ordered[-1][0]


def quote_crosses(state) -> bool:
    off = state.mark * QUOTE_BPS / 10000
    buy = ((state.mark - off) / TICK).to_integral_value(ROUND_FLOOR) * TICK
    sell = ((state.mark + off) / TICK).to_integral_value(ROUND_CEILING) * TICK
    return buy >= state.ask or sell <= state.bid


def divergence_bps(state) -> float:
    mid = (state.bid + state.ask) / 2
    return float(abs(state.mark - mid) / mid) * 10000


def measure_hour(states: list) -> HourFigures:
    samples, crossing, worst = [], 0.0, (0.0, states[0].t)
    for state, following in zip(states, states[1:]):
        held = following.t - state.t
        d = divergence_bps(state)
        samples.append((d, held))
        crossing += held if quote_crosses(state) else 0.0
        worst = max(worst, (d, state.t))
    total = states[-1].t - states[0].t
    return HourFigures(weighted_percentile(samples, 0.5), sum(d * held for d, held in samples) / total,
                       weighted_percentile(samples, 0.9), weighted_percentile(samples, 0.99), worst[0], worst[1],
                       crossing / total)


def trace(states: list, around: float) -> list[str]:
    """mid, index and mark in force at a few moments around a time."""
    lines, k = [], 0
    for offset in TRACE_S:
        while k + 1 < len(states) and states[k + 1].t <= around + offset:
            k += 1
        s = states[k]
        mid = (s.bid + s.ask) / 2
        lines.append(f"    t{offset:+4d}s  mid {mid}  index {s.index}  mark {s.mark}  "
                     f"({float((s.mark - mid) / mid) * 10000:+.1f} bps)")
    return lines


def parse_params(pairs: list[str]):
    from standx_sim.mark import MarkParams
    values = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        values[name] = float(value)
    return MarkParams(**values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"recorded hours (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--model", choices=("standx", "mid"), default="standx")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override a MarkParams default (standx model)")
    args = parser.parse_args(argv)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from standx_sim.market import RecordedMarket
    from standx_sim.mark import mark_model, replay

    params = parse_params(args.param) if args.model == "standx" else None
    if params:
        print(f"{params}")
    worst = None
    for character, hours in HOURS.items():
        for hour in hours:
            try:
                market = RecordedMarket([str(args.data_dir / hour)])
            except FileNotFoundError as exc:
                print(f"measure_mark: market data file not found: {exc.filename}", file=sys.stderr)
                return 2
            end = market.book_changes_between(market.start_ts, float("inf"))[-1].ts
            states = list(replay(mark_model(args.model, TICK, params), market, market.start_ts, end))
            f = measure_hour(states)
            print(f"{hour} ({character}): |mark - mid| bps median {f.median_bps:.2f} mean {f.mean_bps:.2f} "
                  f"p90 {f.p90_bps:.2f} p99 {f.p99_bps:.2f} max {f.max_bps:.2f}; "
                  f"a 7.5 bps quote crosses {f.cross_share:.2%} of the time")
            if worst is None or f.max_bps > worst[0]:
                worst = (f.max_bps, hour, f.max_at, states)
    _, hour, at, states = worst
    print(f"largest divergence: {hour} at {at:.3f}")
    print("\n".join(trace(states, at)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
