"""Benchmark: the market maker on recorded StandX hours, calm and volatile, both requote modes.

    python bench/uptime.py [--latency-ms 150] [--json PATH] [--data-dir DIR] [--env-file PATH]

Runs the backtest (standx_sim.backtest) on the calm hours BTC-USD_2026-01-06_00 .. _05 and the
volatile hours _14, _15 of ../shared/market_data (next to the repository), with
MARKET_MAKER_REQUOTE=replace and =cancel_first, one hour per task on a pool of 2 processes, and
prints a markdown table (columns calm/replace, calm/cancel_first, volatile/replace,
volatile/cancel_first) followed by the per-hour detail. Strategy settings come from the
environment (and --env-file) as for a live run. wall_s and speedup are the only figures that
depend on timing. Without the data folder it says so and exits 0.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "market_data"
GROUPS = {
    "calm": [f"BTC-USD_2026-01-06_{hour:02d}" for hour in range(6)],
    "volatile": ["BTC-USD_2026-01-06_14", "BTC-USD_2026-01-06_15"],
}
MODES = ("replace", "cancel_first")
WORKERS = 2
HOUR_S = 3600


def columns() -> list[tuple[str, str]]:
    return [(group, mode) for group in GROUPS for mode in MODES]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=150.0, help="round-trip latency per request (default 150)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"recorded hours (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--env-file", metavar="PATH", help="settings file; the environment wins")
    parser.add_argument("--max-seconds", type=float, help="simulate at most this many seconds per hour")
    parser.add_argument("--workers", type=int, default=WORKERS, help=f"processes (default {WORKERS})")
    return parser.parse_args(argv)


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
    """One row per recorded hour: uptime, maker hours, fills and wall time in each mode."""
    rows = []
    for group, hours in GROUPS.items():
        for n, hour in enumerate(hours):
            figures = []
            for mode in MODES:
                h = results[(group, mode)]["hours"][n]
                figures += [h["uptime_pct"], h["maker_hours"], h["fills"], h["requotes"], h["wall_s"]]
            rows.append((hour, figures))
    return rows


def run_task(prefix: str, config, latency_ms: float, max_seconds: float | None) -> dict | str:
    """One hour in a worker: its figures, or the one-line configuration error it hit."""
    from market_maker import ConfigError
    from standx_sim import backtest
    try:
        return backtest.run_hour(prefix, config, latency_ms, max_seconds)
    except ConfigError as exc:  # (it does not survive pickling back to the parent)
        return f"configuration error: {exc}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"No recorded market data at {args.data_dir}: nothing to benchmark "
              "(the benchmark needs the shared/market_data folder next to the repository).")
        return 0
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from market_maker import ConfigError
    from standx_sim import backtest

    try:
        configs = {mode: backtest.backtest_config(os.environ, args.env_file, mode) for mode in MODES}
        for hours in GROUPS.values():
            for hour in hours:
                backtest.check_prefix(str(args.data_dir / hour))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except backtest.DataError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2

    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {(group, mode): [pool.submit(run_task, str(args.data_dir / hour), configs[mode],
                                               args.latency_ms, args.max_seconds) for hour in hours]
                   for group, hours in GROUPS.items() for mode in MODES}
        outcomes = {key: [task.result() for task in tasks] for key, tasks in futures.items()}
    errors = [hour for hours in outcomes.values() for hour in hours if isinstance(hour, str)]
    if errors:
        print(errors[0], file=sys.stderr)
        return 2
    results = {key: backtest.plain({"hours": hours, "total": backtest.totals(hours)})
               for key, hours in outcomes.items()}

    header = ["figure"] + [f"{group}/{mode}" for group, mode in columns()]
    print(f"Backtest of the market maker on recorded StandX BTC-USD hours, latency {args.latency_ms:g} ms "
          f"(calm: {len(GROUPS['calm'])} h, volatile: {len(GROUPS['volatile'])} h; "
          "wall_s and speedup depend on the machine, every other figure is reproducible).\n")
    print(backtest.table(summary_rows(results), header))
    print("\nPer hour (uptime_pct, maker_hours, fills, requotes, wall_s) for replace, then cancel_first:\n")
    detail_header = ["hour"] + [f"{mode} {figure}" for mode in MODES
                                for figure in ("uptime", "mh", "fills", "requotes", "wall_s")]
    print(backtest.table(detail_rows(results), detail_header))
    if args.json:
        data = {"note": backtest.TIMING_NOTE, "latency_ms": args.latency_ms, "max_seconds": args.max_seconds,
                "columns": {f"{group}/{mode}": results[(group, mode)] for group, mode in columns()}}
        Path(args.json).write_text(backtest.report_json(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
