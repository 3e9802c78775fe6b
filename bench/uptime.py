"""Benchmark: the market maker on a calm and a volatile market, both requote modes.

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

Every hour runs with MARKET_MAKER_REQUOTE=replace and =cancel_first, one hour per task on a pool
of --jobs processes (default: the core count); it prints a line naming the market replayed, a
markdown table (columns calm/replace, calm/cancel_first, volatile/replace, volatile/cancel_first)
and the per-hour detail. Strategy settings come from the environment (and --env-file) as for a
live run. wall_s and speedup are the only figures that depend on timing.
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
MODES = ("replace", "cancel_first")
JOBS = os.cpu_count() or 1
HOURS = 3
HOUR_S = 3600


def columns() -> list[tuple[str, str]]:
    return [(group, mode) for group in GROUPS for mode in MODES]


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


def summary_rows(results: dict[tuple[str, str], dict]) -> list[tuple[str, list]]:
    """The figures of each column (group/mode), from the totals of its hours."""
    cols = [results[c]["total"] for c in columns()]

    def hourly(t: dict, key: str) -> float:
        return t[key] * HOUR_S / t["sim_seconds"] if t["sim_seconds"] else 0.0

    return [
        ("uptime_pct (time-weighted)", [t["uptime_pct"] for t in cols]),
        ("maker_hours (sum)", [t["maker_hours"] for t in cols]),
        ("boosted_hours", [f'{t["boosted_hours"]}/{t["hours"]}' for t in cols]),
        ("fills_per_hour", [t["fills_per_hour"] for t in cols]),
        ("orders_per_hour", [hourly(t, "orders_placed") for t in cols]),
        ("requotes_per_hour", [hourly(t, "requotes") for t in cols]),
        ("requests_per_s", [t["requests_per_s"] for t in cols]),
        ("pnl (sum, before fees)", [t["pnl"] for t in cols]),
        ("fees (sum)", [t["fees"] for t in cols]),
        ("max_orders_per_side", [t["max_orders_per_side"] for t in cols]),
        ("wall_s per hour (mean)", [t["wall_s"] / t["hours"] for t in cols]),
        ("speedup (sim s / wall s)", [t["speedup"] for t in cols]),
    ]


def detail_rows(results: dict[tuple[str, str], dict]) -> list[tuple[str, list]]:
    """One row per hour: uptime, maker hours, fills, requotes and wall time in each mode."""
    rows = []
    for group in GROUPS:
        for n, hour in enumerate(results[(group, MODES[0])]["hours"]):
            figures = []
            for mode in MODES:
                h = results[(group, mode)]["hours"][n]
                figures += [h["uptime_pct"], h["maker_hours"], h["fills"], h["requotes"], h["wall_s"]]
            rows.append((hour["hour"], figures))
    return rows


def run_task(source, config, latency_ms: float, max_seconds: float | None) -> dict | str:
    """One hour (a recorded prefix or a backtest.SyntheticHour) in a worker: its figures, or the
    one-line configuration error it hit."""
    import market_maker as mm
    from standx_sim import backtest
    try:
        return backtest.run_hour(source, partial(mm.daemon_on, config, run_id=backtest.RUN_ID), config.qty,
                                 latency_ms, max_seconds)
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
        futures = {(group, mode): [pool.submit(run_task, source, configs[mode], args.latency_ms, args.max_seconds)
                                   for source in sources[group]]
                   for group in GROUPS for mode in MODES}
        outcomes = {key: [task.result() for task in tasks] for key, tasks in futures.items()}
    errors = [hour for hours in outcomes.values() for hour in hours if isinstance(hour, str)]
    if errors:
        print(errors[0], file=sys.stderr)
        return 2
    results = {key: backtest.plain({"hours": hours, "total": backtest.totals(hours)})
               for key, hours in outcomes.items()}

    header = ["figure"] + [f"{group}/{mode}" for group, mode in columns()]
    print(f"Backtest of the market maker on {market}; latency {args.latency_ms:g} ms "
          "(wall_s and speedup depend on the machine, every other figure is reproducible).\n")
    print(backtest.table(summary_rows(results), header))
    print("\nPer hour (uptime_pct, maker_hours, fills, requotes, wall_s) for replace, then cancel_first:\n")
    detail_header = ["hour"] + [f"{mode} {figure}" for mode in MODES
                                for figure in ("uptime", "mh", "fills", "requotes", "wall_s")]
    print(backtest.table(detail_rows(results), detail_header))
    if args.json:
        data = {"note": backtest.TIMING_NOTE, "market": market, "latency_ms": args.latency_ms,
                "max_seconds": args.max_seconds,
                "columns": {f"{group}/{mode}": results[(group, mode)] for group, mode in columns()}}
        Path(args.json).write_text(backtest.report_json(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
