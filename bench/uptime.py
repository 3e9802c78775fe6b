"""Benchmark: the market maker on a calm and a volatile market, with StandX's lagging mark and
with mark = mid, in both requote modes, side by side in one run.

    python bench/uptime.py [--hours 3] [--seed 0] [--data-dir DIR] [--latency-ms 150] [--json PATH]
                           [--env-file PATH] [--max-seconds S] [--jobs N]

By default it replays synthetic markets, so that it runs on a fresh clone and gives the same
figures on every machine: the presets calm and volatile of standx_sim/presets.py (seeded random
walks whose statistics were measured from recorded StandX BTC-USD hours), --hours hours of each
with seeds --seed, --seed + 1, ... Its output says "SYNTHETIC": these are not figures of real
hours. With --data-dir DIR it replays instead the recorded hours the presets were measured from
(calm BTC-USD_2026-01-06_00 .. _05, volatile _14, _15: DIR/PREFIX.bbo.csv.gz and
DIR/PREFIX.trades.csv.gz each), for example ../shared/market_data; a missing file is an error
(exit 2).

Every hour runs four times: the simulator's mark model standx (StandX's formula, which trails
the book: the default, as hard as the exchange) and mid (the rounded mid at once: what the
simulator modelled before), each with MARKET_MAKER_REQUOTE=replace and =cancel_first; one hour
per task on a pool of --jobs processes (default: the core count). It prints a line naming the
market replayed, one markdown table per market (columns standx/replace, standx/cancel_first,
mid/replace, mid/cancel_first) and the per-hour detail. Strategy settings come from the
environment (and --env-file) as for a live run. wall_s and speedup are the only figures that
depend on timing.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("calm", "volatile")  # presets of standx_sim/presets.py
MARKS = ("standx", "mid")  # the simulator's mark models
MODES = ("replace", "cancel_first")
JOBS = os.cpu_count() or 1
HOURS = 3
HOUR_S = 3600


Column = tuple[str, str]  # (mark model, requote mode)


def columns() -> list[Column]:
    return [(mark, mode) for mark in MARKS for mode in MODES]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=int, default=None, help=f"synthetic hours per preset (default {HOURS})")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first synthetic hour (default 0)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="replay the recorded hours in DIR instead of synthetic markets")
    parser.add_argument("--latency-ms", type=float, default=150.0, help="round-trip latency per request (default 150)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    parser.add_argument("--env-file", metavar="PATH", help="settings file; the environment wins")
    parser.add_argument("--max-seconds", type=float, help="simulate at most this many seconds per hour")
    parser.add_argument("--jobs", type=int, default=JOBS, help=f"processes (default: the core count, {JOBS})")
    args = parser.parse_args(argv)
    if args.data_dir is not None and (args.hours is not None or args.seed is not None):
        parser.error("--hours and --seed choose synthetic hours; they do not apply to --data-dir")
    if args.hours is not None and args.hours < 1:
        parser.error("--hours must be at least 1")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def summary_rows(results: dict[Column, dict]) -> list[tuple[str, list]]:
    """The figures of one market's columns (mark/mode), from the totals of its hours."""
    cols = [results[c]["total"] for c in columns()]

    def hourly(t: dict, key: str) -> float:
        return t[key] * HOUR_S / t["sim_seconds"] if t["sim_seconds"] else 0.0

    return [
        ("uptime_pct (two-sided, time-weighted)", [t["uptime_pct"] for t in cols]),
        ("hours in the 1.0x tier", [f'{t["boosted_hours"]}/{t["hours"]}' for t in cols]),
        ("maker_hours (sum)", [t["maker_hours"] for t in cols]),
        ("fills_per_hour", [t["fills_per_hour"] for t in cols]),
        ("partial_fills_per_hour", [t["partial_fills_per_hour"] for t in cols]),
        ("post_only_rejects_per_hour", [t["post_only_rejects_per_hour"] for t in cols]),
        ("rejected_in_matching (sum)", [t["rejected_in_matching"] for t in cols]),
        ("429s (sum)", [t["rate_limited"] for t in cols]),
        ("requests_per_s", [t["requests_per_s"] for t in cols]),
        ("orders_per_hour", [hourly(t, "orders_placed") for t in cols]),
        ("requotes_per_hour", [hourly(t, "requotes") for t in cols]),
        ("pnl (sum, before fees)", [t["pnl"] for t in cols]),
        ("fees (sum)", [t["fees"] for t in cols]),
        ("max_orders_per_side", [t["max_orders_per_side"] for t in cols]),
        ("wall_s per hour (mean)", [t["wall_s"] / t["hours"] for t in cols]),
        ("speedup (sim s / wall s)", [t["speedup"] for t in cols]),
    ]


def detail_rows(results: dict[Column, dict]) -> list[tuple[str, list]]:
    """One row per hour of one market: uptime, fills and post-only rejects in each column."""
    rows = []
    for n, hour in enumerate(results[columns()[0]]["hours"]):
        figures = []
        for column in columns():
            h = results[column]["hours"][n]
            figures += [h["uptime_pct"], h["fills"], h["post_only_rejects"]]
        rows.append((hour["hour"], figures))
    return rows


def run_task(source, config, latency_ms: float, max_seconds: float | None, mark: str) -> dict | str:
    """One hour (a recorded prefix or a backtest.SyntheticHour) in a worker: its figures, or the
    one-line configuration error it hit."""
    import market_maker as mm
    from standx_sim import backtest
    try:
        return backtest.run_hour(source, partial(mm.daemon_on, config, run_id=backtest.RUN_ID), config.qty,
                                 latency_ms, max_seconds, mark=mark)
    except mm.ConfigError as exc:  # (it does not survive pickling back to the parent)
        return f"configuration error: {exc}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from market_maker import ConfigError, replay_config
    from standx_sim import backtest
    from standx_sim.presets import PRESETS

    try:
        configs = {mode: replay_config(os.environ, args.env_file, mode, backtest.SIM_URL,
                                       backtest.throwaway_private_key()) for mode in MODES}
        if args.data_dir is None:
            seed, hours = args.seed or 0, args.hours or HOURS
            sources = {group: [backtest.SyntheticHour(group, seed + k) for k in range(hours)] for group in GROUPS}
            market = (f"SYNTHETIC markets, not recordings: the presets calm and volatile (seeded random walks "
                      f"with the statistics of recorded StandX BTC-USD hours, standx_sim/presets.py), {hours} h "
                      f"each, seeds {seed} to {seed + hours - 1}")
        else:
            sources = {group: [str(args.data_dir / hour) for hour in PRESETS[group].recordings] for group in GROUPS}
            for prefix in sources["calm"] + sources["volatile"]:
                backtest.check_prefix(prefix)
            market = (f"recorded StandX BTC-USD hours in {args.data_dir} (calm: {len(sources['calm'])} h, "
                      f"volatile: {len(sources['volatile'])} h)")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except backtest.DataError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2

    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {(group, mark, mode): [pool.submit(run_task, source, configs[mode], args.latency_ms,
                                                     args.max_seconds, mark)
                                         for source in sources[group]]
                   for group in GROUPS for mark, mode in columns()}
        outcomes = {key: [task.result() for task in tasks] for key, tasks in futures.items()}
    errors = [hour for hours in outcomes.values() for hour in hours if isinstance(hour, str)]
    if errors:
        print(errors[0], file=sys.stderr)
        return 2
    results = {group: {(mark, mode): backtest.plain({"hours": outcomes[(group, mark, mode)],
                                                     "total": backtest.totals(outcomes[(group, mark, mode)])})
                       for mark, mode in columns()}
               for group in GROUPS}

    print(f"Backtest of the market maker on {market}; latency {args.latency_ms:g} ms "
          "(wall_s and speedup depend on the machine, every other figure is reproducible).")
    header = ["figure"] + [f"{mark}/{mode}" for mark, mode in columns()]
    detail_header = ["hour"] + [f"{mark}/{mode} {figure}" for mark, mode in columns()
                                for figure in ("uptime", "fills", "rejects")]
    for group in GROUPS:
        print(f"\n{group} (mark model / requote mode):\n")
        print(backtest.table(summary_rows(results[group]), header))
        print(f"\n{group}, per hour (uptime_pct, fills, post-only rejects):\n")
        print(backtest.table(detail_rows(results[group]), detail_header))
    if args.json:
        data = {"note": backtest.TIMING_NOTE, "market": market, "latency_ms": args.latency_ms,
                "max_seconds": args.max_seconds,
                "columns": {f"{group}/{mark}/{mode}": results[group][(mark, mode)]
                            for group in GROUPS for mark, mode in columns()}}
        Path(args.json).write_text(backtest.report_json(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
