"""Measure the synthetic market presets' figures on recorded StandX hours.

    python bench/measure_presets.py [--data-dir DIR]

For each preset of standx_sim/presets.py, loads its recorded hours (DIR/PREFIX.bbo.csv.gz and
DIR/PREFIX.trades.csv.gz; default ../shared/market_data beside the repository) and prints what
presets.measure finds over them, from the first book to the end of the last hour, rounded to 3
significant figures as presets.py holds them, and whether presets.py holds exactly that. The
same files always give the same output. Exit 2 if a file is missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "market_data"
HOUR_S = 3600


def significant(value: float, digits: int = 3) -> float:
    return round(value, digits - 1 - math.floor(math.log10(abs(value)))) if value else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"recorded hours (default {DEFAULT_DATA_DIR})")
    args = parser.parse_args(argv)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from standx_sim.market import RecordedMarket
    from standx_sim.presets import PRESETS, MarketFigures, measure

    for preset in PRESETS.values():
        try:
            market = RecordedMarket([str(args.data_dir / hour) for hour in preset.recordings])
        except FileNotFoundError as exc:
            print(f"measure_presets: market data file not found: {exc.filename}", file=sys.stderr)
            return 2
        # the recordings are consecutive UTC hours, the first one starting within its hour
        end = (math.floor(market.start_ts / HOUR_S) + len(preset.recordings)) * HOUR_S
        measured = measure(market, market.start_ts, end)
        rounded = MarketFigures(**{field.name: significant(getattr(measured, field.name))
                                   for field in dataclasses.fields(MarketFigures)})
        same = "the same as presets.py" if rounded == preset.figures else f"presets.py has {preset.figures}"
        print(f"{preset.name}: {', '.join(preset.recordings)}\n    {rounded}\n    ({same})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
