"""Memory over a long run: does a simulator serving for a day keep its memory flat?

    python bench/memory.py [--hours 24] [--rate 2] [--seed 0]

Drives a Simulator (synthetic market, StandX-like delays and queue) on a virtual clock for
--hours simulated hours with one client, the daemon's own StandX client (standx_auth and
standx_api over the in-process adapter): about --rate requests a second, alternately placing a
post-only order a few bps from the mark on one side (some fill) and cancelling the previous one.
After each simulated hour it prints the process's resident memory (VmRSS from /proc/self/status)
and the sizes of the structures that could grow: orders and fill records the exchange
remembers, the market's kept series, the engine's pending events. The target: the RSS of the
last hour within a few MB of the first. Linux only (reads /proc). Deterministic but for RSS and
wall time.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from decimal import Decimal
from pathlib import Path

import requests
from eth_account import Account

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_URL = "http://standx.sim"
START_TS = 1_767_657_600.0  # 2026-01-06 00:00 UTC
HOUR_S = 3600
QTY = Decimal("0.0001")
MAX_DISTANCE_BPS = 10  # quotes are placed 0 to this many bps from the mark (the nearer ones fill)


def rss_kib() -> int:
    """The resident set size of this process in KiB (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def sizes(sim, address: str) -> dict[str, int]:
    """How many items the structures that could grow hold now."""
    acct = sim.exchange.account(address)
    market = sim.market
    return {"orders": len(acct.orders), "cl_ord_ids": len(acct.by_cl_ord_id), "fills": len(acct.fills),
            "books": len(market._book_ts), "trades": len(market._trade_ts), "pending": len(sim.exchange._pending)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=int, default=24, help="simulated hours (default 24)")
    parser.add_argument("--rate", type=float, default=2.0, help="requests per simulated second (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the market, the delays and the quotes")
    args = parser.parse_args(argv)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import standx_api
    from standx_auth import StandXAuth, StandXError
    from standx_sim import Simulator, VirtualClock

    clock = VirtualClock(START_TS)
    sim = Simulator(clock, default_balance=Decimal("1000000"), seed=args.seed)
    session = requests.Session()
    session.trust_env = False
    session.mount(BASE_URL, sim.adapter())
    auth = StandXAuth(Account.create().key.hex(), auth_base_url=BASE_URL, perps_base_url=BASE_URL,
                      clock=clock, session=session)
    rng = random.Random(args.seed)
    step_s = 2 / args.rate  # one placement and one cancel per step
    previous: str | None = None
    started = time.perf_counter()
    print("hour  rss_mib  wall_s  " + "  ".join(sizes(sim, auth.address)), flush=True)
    for hour in range(1, args.hours + 1):
        for n in range(int(HOUR_S / step_s)):
            side = "buy" if n % 2 else "sell"
            mark = sim.exchange.mark_price()
            offset = mark * Decimal(rng.uniform(0, MAX_DISTANCE_BPS)) / 10000
            price = (mark - offset if side == "buy" else mark + offset).quantize(Decimal("0.1"))
            cl_ord_id = f"mem-{hour}-{n}"
            try:
                standx_api.new_limit_order(auth, "BTC-USD", side, QTY, price, "alo", cl_ord_id=cl_ord_id)
                if previous is not None:
                    standx_api.cancel_order(auth, cl_ord_id=previous)
            except StandXError as exc:  # a 404 for an order already gone, a 429: keep going
                print(f"  {exc}", file=sys.stderr)
            previous = cl_ord_id
            clock.sleep(step_s)
        counts = "  ".join(f"{v:>{len(k)}}" for k, v in sizes(sim, auth.address).items())
        print(f"{hour:>4}  {rss_kib() / 1024:7.1f}  {time.perf_counter() - started:6.0f}  {counts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
