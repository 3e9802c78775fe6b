"""Benchmark: several accounts behind one IP address under StandX's rate limits.

    python bench/accounts.py [--accounts 1 4 8 12] [--seconds 60] [--latency-ms 150] [--env-file PATH]

For each N of --accounts, serves one simulator on 127.0.0.1 (real time, its rate limits on: per
account 20 requests at once and ~22/s, 50 requests/s per client IP, standx_sim/ratelimit.py) and
runs N daemons against it side by side, in threads, for --seconds each: every daemon is the real
MarketMaker with its own throwaway wallet (eth_account) and its own StandXAuth on the host's
clock. All of them connect from 127.0.0.1, so they share one IP's budget. It prints, per account,
the requests it sent per second and the 429s it got, and for the IP the requests per second of
all of them together (mean and busiest second) and the 429s the simulator gave, beside the budget.
--latency-ms is added to every request by the server (default 150, as the backtest). Strategy
settings come from the environment (and --env-file) as for a live run. The figures depend on the
host's speed and timing: they are a measurement, not a reproducible result.
"""
from __future__ import annotations

import argparse
import bisect
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = (1, 4, 8, 12)
SECONDS = 60.0
LATENCY_MS = 150.0
TOO_MANY_REQUESTS = 429


@dataclass
class Answers:
    """When each answer of one daemon's session arrived (monotonic seconds), and its 429s."""

    times: list[float] = field(default_factory=list)
    rate_limited: int = 0

    def note(self, response: requests.Response, *args, **kwargs) -> None:
        """A requests response hook."""
        self.times.append(time.monotonic())
        self.rate_limited += response.status_code == TOO_MANY_REQUESTS


def busiest_second(times: list[float]) -> int:
    """The most of these moments that fall within any one second."""
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered)), default=0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, nargs="+", default=list(ACCOUNTS),
                        help=f"numbers of daemons to run side by side, one run each (default {ACCOUNTS})")
    parser.add_argument("--seconds", type=float, default=SECONDS, help=f"length of each run (default {SECONDS:g})")
    parser.add_argument("--latency-ms", type=float, default=LATENCY_MS,
                        help=f"latency the server adds to every request (default {LATENCY_MS:g})")
    parser.add_argument("--env-file", metavar="PATH", help="settings file; the environment wins")
    args = parser.parse_args(argv)
    if min(args.accounts) < 1 or args.seconds <= 0 or args.latency_ms < 0:
        parser.error("--accounts must be >= 1, --seconds > 0 and --latency-ms >= 0")
    return args


def run_accounts(n: int, seconds: float, latency_ms: float, env_file: str | None) -> list[str]:
    """N daemons against one served simulator for `seconds`: the report's lines."""
    import market_maker as mm
    from standx_auth import RealClock
    from standx_sim.clock import WallClock
    from standx_sim.ratelimit import DEFAULT_RATE_LIMITS
    from standx_sim.server import SimServer
    from standx_sim.simulate import throwaway_key
    from standx_sim.simulator import Simulator

    sim = Simulator(WallClock())
    server = SimServer(sim, latency_s=latency_ms / 1000)
    url = server.start()
    daemons = []
    for _ in range(n):
        session = requests.Session()
        session.trust_env = False
        answers = Answers()
        session.hooks["response"].append(answers.note)
        config = mm.replay_config(os.environ, env_file, None, url, throwaway_key())
        maker, address = mm.daemon_on(config, session, RealClock())
        daemons.append((maker, address, answers))
    threads = [threading.Thread(target=maker.run, kwargs={"duration_s": seconds}, name=f"daemon-{i}")
               for i, (maker, _, _) in enumerate(daemons)]
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)  # short joins: Ctrl-C reaches this thread
    except KeyboardInterrupt:
        for maker, _, _ in daemons:
            maker.request_stop("interrupted")
        for thread in threads:
            thread.join()
        raise
    finally:
        wall_s = time.monotonic() - started
        server.stop()
    p = DEFAULT_RATE_LIMITS
    lines = [f"{n} account(s) behind 127.0.0.1 for {wall_s:.1f} s (each daemon {seconds:g} s and its stop):"]
    for maker, address, answers in daemons:
        lines.append(f"  {address}  {len(answers.times) / wall_s:6.2f} requests/s  {answers.rate_limited:5d} x 429 "
                     f"({sim.rate_limited(address)} of them on requests of its account, the rest public)")
    every = [t for _, _, answers in daemons for t in answers.times]
    lines.append(f"  per IP: {len(every) / wall_s:.2f} requests/s on average, {busiest_second(every)} in the "
                 f"busiest second; budget {p.ip_requests_per_s:g}/s (burst {p.ip_burst_requests:g}); "
                 f"{sim.rate_limited()} x 429 in all")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from market_maker import ConfigError

    # The daemons log every 429 as a warning; their counts are in the report instead.
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    for n in args.accounts:
        try:
            lines = run_accounts(n, args.seconds, args.latency_ms, args.env_file)
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
