"""Benchmark: backtest speed on one core, requests' own Session against the lean InProcessSession.

    python bench/backtest_speed.py [--max-seconds 900] [--market-data PREFIX ...] [--repeat 3]
                                   [--latency-ms 150] [--env-file PATH]

Replays each hour (default: the first synthetic hour of the calm and of the volatile preset;
with --market-data, recorded hours instead) in this one process, through requests' own Session
(plain) and through the InProcessSession (lean), alternately, --repeat times, and prints a
markdown table: for each hour the simulated seconds per wall-clock second of each (the best of
the repeats, the run least disturbed by other work on the machine), their ratio, and whether
every figure but the timing was identical in every run. Exit 0; 1 when the figures differ (the
lean path must not change what is measured); 2 for a bad setting or missing data. Strategy
settings come from the environment (and --env-file) as for `python -m standx_sim backtest`.
"""
from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESETS_RUN = ("calm", "volatile")  # presets of standx_sim/presets.py, seed 0 each
MAX_SECONDS = 900.0
REPEAT = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS,
                        help=f"simulated seconds of each hour (default {MAX_SECONDS:g})")
    parser.add_argument("--market-data", nargs="+", metavar="PREFIX", default=None,
                        help="recorded hours (PREFIX.bbo.csv.gz + PREFIX.trades.csv.gz) instead of synthetic ones")
    parser.add_argument("--repeat", type=int, default=REPEAT, help=f"runs of each session per hour (default {REPEAT})")
    parser.add_argument("--latency-ms", type=float, default=150.0, help="round-trip latency per request (default 150)")
    parser.add_argument("--env-file", metavar="PATH", help="settings file; the environment wins")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def alternate_runs(run_hour, repeat: int) -> dict[bool, list[dict]]:
    """run_hour(lean) for each Session `repeat` times, taking turns, so that both meet the same
    load of the machine; keyed by lean."""
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(repeat):
        for lean in runs:
            runs[lean].append(run_hour(lean=lean))
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import market_maker as mm
    from standx_sim import backtest

    try:
        config = mm.replay_config(os.environ, args.env_file, None, backtest.SIM_URL, backtest.throwaway_private_key())
        for prefix in args.market_data or []:
            backtest.check_prefix(prefix)
    except mm.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except backtest.DataError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    sources = args.market_data or [backtest.SyntheticHour(preset, 0) for preset in PRESETS_RUN]
    daemon = partial(mm.daemon_on, config, run_id=backtest.RUN_ID)

    def measured(hour: dict) -> dict:
        return {k: v for k, v in backtest.plain(hour).items() if k not in backtest.TIMING_FIELDS}

    rows, all_identical = [], True
    for source in sources:
        runs = alternate_runs(partial(backtest.run_hour, source, daemon, config.qty, args.latency_ms,
                                      args.max_seconds), args.repeat)
        identical = all(measured(hour) == measured(runs[False][0]) for hours in runs.values() for hour in hours)
        plain_speed, lean_speed = (max(hour["speedup"] for hour in runs[lean]) for lean in (False, True))
        rows.append((runs[True][0]["hour"], [plain_speed, lean_speed, lean_speed / plain_speed,
                                             "identical" if identical else "differ"]))
        all_identical &= identical
    print(f"Backtest speed on one core, best of {args.repeat} runs of {args.max_seconds:g} simulated s per hour, "
          f"latency {args.latency_ms:g} ms: plain = requests.Session, lean = InProcessSession.\n")
    print(backtest.table(rows, ["hour", "plain sim s per wall s", "lean sim s per wall s", "lean / plain",
                                "figures"]))
    return 0 if all_identical else 1


if __name__ == "__main__":
    sys.exit(main())
