"""Benchmark: the default sweep's wall time, and that its output repeats byte for byte.

    python bench/sweep_time.py [--runs 2] [--target-s 120] [-- SWEEP OPTIONS...]

Runs `python -m standx_sim sweep` (its default grid on its default market, the synthetic presets,
unless options follow `--`) --runs times, one after the other, with this machine's cores, and
prints a markdown table: the wall time of each run against the target (two minutes on 2 cores),
the settings and hours swept, and whether every run printed the same thing apart from its last
line (the time taken). Exit 0 when every run met the target and the outputs were identical, 1
otherwise, 2 when the sweep itself failed. Strategy settings come from the environment.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 120.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="sweeps to run (default 2: a repeat to compare)")
    parser.add_argument("--target-s", type=float, default=TARGET_S, help=f"wall time target (default {TARGET_S:g})")
    parser.add_argument("sweep_args", nargs="*", help="options for the sweep, after --")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outputs, times = [], []
    for _ in range(args.runs):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "standx_sim", "sweep", *args.sweep_args], cwd=REPO_ROOT,
                                capture_output=True, text=True)
        times.append(time.monotonic() - started)
        if result.returncode != 0:
            print(result.stdout + result.stderr, file=sys.stderr)
            return 2
        outputs.append(result.stdout.splitlines()[:-1])  # the last line is the time taken
    identical = all(output == outputs[0] for output in outputs)
    print(f"{outputs[0][0]}\n")
    print(f"| run | wall s | target s ({os.cpu_count()} cores) | met |")
    print("|:--|--:|--:|:--|")
    for k, seconds in enumerate(times, 1):
        print(f"| {k} | {seconds:.1f} | {args.target_s:g} | {'yes' if seconds < args.target_s else 'NO'} |")
    print(f"\noutput identical apart from the timing line: {'yes' if identical else 'NO'}")
    return 0 if identical and max(times) < args.target_s else 1


if __name__ == "__main__":
    sys.exit(main())
