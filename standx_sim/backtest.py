"""Backtest: a daemon against recorded or synthetic StandX hours, in virtual time.

An hour is a recorded data PREFIX or a SyntheticHour, one seeded hour of a preset's synthetic
market (presets.py: figures measured from recorded hours; what a fresh clone, which has no
recordings, replays). Each hour runs on its own: a fresh VirtualClock at the data's first
book, a fresh Simulator replaying that hour, and the daemon to run, built by the caller's
DaemonFactory on a requests Session whose ``http://standx.sim`` prefix is served in-process
(signing, JSON and error handling run for real; every request pays the modelled latency on the
virtual clock), then ``daemon.run(duration_s)`` until the end of the UTC hour (or
``max_seconds``), followed by the daemon's own clean stop. That Session is a
transport.InProcessSession, which builds the same requests as requests' own Session in less
time (``lean=False`` runs the latter, to show the figures do not change). Since each hour
depends on nothing but its source, run_hours may run them on several processes (``--jobs``)
with the same figures. This module never imports the daemon: the entry points (``python -m
standx_sim backtest``, bench/) hand it in. The figures come from the simulator (exchange
truth), except ``requotes``, which only the daemon knows.

Report keys (per hour and in total):
    uptime_pct           time with a live buy and a live sell, each >= qty and within 10 bps of
                         the mark, as % of the time from the daemon's login to the end of its stop
                         (total: time-weighted)
    maker_hours          the reward programme's score of the hour (rewards.py; second-hand
                         rules), scored by the simulator at every change: weighted two-sided
                         size-time in Maker Hours (with --max-seconds: the hour's projected score
                         for the part simulated)
    maker_hours_per_hour  maker_hours per hour simulated
    tier_1x_hours, tier_half_hours  1 when the hour's two-sided time reached the 1.0x (0.5x) tier
    fills, fills_per_hour  fills of our quotes (maker fills); taker_fills = our closing orders
    partial_fills(_per_hour)  maker fills that left part of the order resting
    orders_placed        orders the exchange accepted (quotes and closes)
    post_only_rejects(_per_hour)  our alo quotes rejected in matching for crossing the book
                         (the lagging mark sits away from the book in fast moves)
    rejected_in_matching orders rejected in matching for no reason of ours (delays.py)
    requotes             the daemon's requote counter
    requests, requests_per_s  every request the simulator answered (public, login, private)
    rate_limited         requests of ours refused with 429 (StandX's rate limits)
    pnl                  realized + unrealized PnL at the end, before fees (USD)
    fees                 fees paid (USD)
    max_orders_per_side  most orders of ours resting on one side at once
    sim_seconds          virtual seconds simulated (login to the end of the stop)
    wall_s, speedup      wall-clock seconds, and sim_seconds per wall second
    exit_code            the daemon's exit code (0 = clean stop); total: the worst

The report's settings.market, also the first line printed, says what was replayed: a synthetic
preset (named as such, and never to be taken for a recording) or the recorded prefixes.

Same inputs, same report: only ``wall_s`` and ``speedup`` depend on timing; every other field
is byte-identical across runs (the daemon's Ed25519 key and request ids are random, but they
only travel inside signatures, never into time or figures).
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import signal
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import requests

from rewards import DEFAULT_PROGRAMME, PROGRAMMES, Programme

from .clock import Clock, VirtualClock
from .figures import reward_figures, run_figures
from .market import Market, RecordedMarket
from .presets import PRESETS
from .simulator import Simulator
from .streams import VirtualFeed
from .transport import InProcessAdapter, InProcessSession

SIM_URL = "http://standx.sim"
RUN_ID = "bt0001"
HOUR_S = 3600
SYNTHETIC_START_TS = 1_767_657_600.0  # 2026-01-06 00:00 UTC, where seed 0's synthetic hour starts
TIMING_FIELDS = ("wall_s", "speedup")
TIMING_NOTE = "wall_s and speedup are the only timing-dependent fields; all others are identical for the same inputs"
DECIMALS = 6

FIGURES = ("uptime_pct", "maker_hours", "maker_hours_per_hour", "tier_1x_hours", "tier_half_hours", "fills",
           "fills_per_hour", "partial_fills",
           "taker_fills", "orders_placed", "post_only_rejects", "rejected_in_matching", "requotes", "requests",
           "requests_per_s", "rate_limited", "pnl", "fees", "max_orders_per_side", "sim_seconds", "wall_s",
           "speedup", "exit_code")


class DataError(Exception):
    """A market data prefix that cannot be replayed (missing or malformed files)."""


class Daemon(Protocol):
    """What the backtest runs: a daemon that quotes until duration_s has passed on its clock,
    stops cleanly and answers its exit code, and counts its requotes."""
    requotes: int

    def run(self, duration_s: float | None = None) -> int: ...


# Builds the daemon to replay on this requests Session (its base URLs at SIM_URL), clock and
# stream feed (the simulator's streams in virtual time, for a daemon that listens to them): the
# daemon and the wallet address it logs in with.
DaemonFactory = Callable[[requests.Session, Clock, VirtualFeed], tuple[Daemon, str]]


# ---- configuration --------------------------------------------------------------------------

def throwaway_private_key() -> str:
    """A fixed wallet key for simulated accounts, derived at runtime (it never holds funds)."""
    return hashlib.sha256(b"standx_sim backtest throwaway wallet").hexdigest()


def check_prefix(prefix: str) -> None:
    for suffix in (".bbo.csv.gz", ".trades.csv.gz"):
        if not os.path.isfile(prefix + suffix):
            raise DataError(f"market data file not found: {prefix}{suffix}")


# ---- one hour -------------------------------------------------------------------------------

def hour_end(start_ts: float) -> float:
    """The end of the UTC hour the data starts in (a PREFIX holds one recorded hour, a synthetic
    hour starts on the hour)."""
    return (math.floor(start_ts / HOUR_S) + 1) * HOUR_S


class SyntheticHour(NamedTuple):
    """One hour of a preset's synthetic market. The seed picks the path, and the hour of data
    time it starts at, so that each seed also has its own snapshot moments."""
    preset: str
    seed: int

    @property
    def name(self) -> str:
        return f"synthetic-{self.preset}-seed{self.seed}"

    def market(self) -> Market:
        return PRESETS[self.preset].figures.market(self.seed, SYNTHETIC_START_TS + self.seed * HOUR_S)


def load_hour(source: str | SyntheticHour) -> tuple[str, Market]:
    """The name and the market of one hour: a recorded PREFIX or a synthetic hour."""
    if isinstance(source, SyntheticHour):
        return source.name, source.market()
    check_prefix(source)
    try:
        return Path(source).name, RecordedMarket([source])
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load market data {source}: {exc}") from None


def replay_session(adapter: InProcessAdapter, lean: bool = True) -> requests.Session:
    """The daemon's Session with SIM_URL served by `adapter`: an InProcessSession (lean), or
    requests' own Session, which builds the same requests more slowly (to prove just that)."""
    session = InProcessSession() if lean else requests.Session()
    session.trust_env = False  # (as InProcessSession has it) no proxy or netrc look-ups per request
    session.mount(SIM_URL, adapter)
    return session


def run_hour(source: str | SyntheticHour, daemon: DaemonFactory, meter_qty: Decimal, latency_ms: float = 150.0,
             max_seconds: float | None = None, lean: bool = True, mark: str = "standx",
             feed_latency_ms: float = 50.0, programme: Programme = PROGRAMMES[DEFAULT_PROGRAMME]) -> dict:
    """Replay one hour with the daemon the factory builds; the hour's figures (see the module
    docstring), its reward scored under `programme`. meter_qty: the smallest quote that counts for uptime (the daemon's order size);
    lean: the daemon's Session is an InProcessSession (see replay_session); mark: the
    simulator's mark model ("standx", StandX's lagging mark, or "mid"); feed_latency_ms: how
    long a stream message takes to reach the daemon (streams.VirtualFeed)."""
    wall_started = time.perf_counter()
    name, market = load_hour(source)
    start_ts = market.start_ts
    duration_s = hour_end(start_ts) - start_ts
    if max_seconds is not None:
        duration_s = min(duration_s, max_seconds)
    clock = VirtualClock(start_ts)
    sim = Simulator(clock, market=market, meter_qty=meter_qty, mark=mark, reward_programme=programme)

    feed = VirtualFeed(sim, clock, latency_s=feed_latency_ms / 1000)
    maker, address = daemon(replay_session(sim.adapter(latency_s=latency_ms / 1000), lean), clock, feed)
    exit_code = maker.run(duration_s=duration_s)

    metrics = sim.exchange.metrics(address)
    sim_seconds = clock.now() - start_ts
    figures = run_figures(sim, address, sim_seconds, maker.requotes)
    reward = reward_figures(sim, address, start_ts, start_ts + duration_s, duration_s)
    wall_s = time.perf_counter() - wall_started
    return {
        **figures,
        **reward,
        "hour": name,
        "mark": mark,
        "start_ts": start_ts,
        "exit_code": exit_code,
        "two_sided_s": metrics["two_sided_s"],
        "metered_s": metrics["elapsed_s"],
        "quoted_s": duration_s,
        "fills_per_hour": per_hour(figures["fills"], sim_seconds),
        "partial_fills_per_hour": per_hour(figures["partial_fills"], sim_seconds),
        "post_only_rejects_per_hour": per_hour(figures["post_only_rejects"], sim_seconds),
        "wall_s": wall_s,
        "speedup": sim_seconds / wall_s,
    }


def run_hours(sources: Sequence[str | SyntheticHour], daemon: DaemonFactory, meter_qty: Decimal,
              latency_ms: float = 150.0, max_seconds: float | None = None, jobs: int = 1,
              lean: bool = True, mark: str = "standx", feed_latency_ms: float = 50.0,
              programme: Programme = PROGRAMMES[DEFAULT_PROGRAMME]) -> list[dict]:
    """run_hour for each source, the figures in the order of the sources: in this process with
    jobs=1, else on up to `jobs` processes. Each hour starts from nothing but its source, so the
    figures are the same either way; the daemon factory must pickle (a functools.partial of a
    top-level function does)."""
    hour = partial(run_hour, daemon=daemon, meter_qty=meter_qty, latency_ms=latency_ms, max_seconds=max_seconds,
                   lean=lean, mark=mark, feed_latency_ms=feed_latency_ms, programme=programme)
    return in_processes(hour, sources, jobs)


def _leave_signals_to_the_parent() -> None:
    """A worker ignores Ctrl-C (sent to the whole terminal group) and dies of SIGTERM: the
    parent decides, and ends the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def in_processes(func: Callable[[Any], Any], items: Sequence[Any], jobs: int) -> list:
    """func of each item, in their order: in this process with jobs <= 1, else on up to `jobs`
    worker processes. The first failure (an error in func, a worker that died:
    BrokenProcessPool) or an interrupt (KeyboardInterrupt) in this process ends every worker
    at once, then goes on up: nothing is left running."""
    workers = min(jobs, len(items))
    if workers <= 1:
        return [func(item) for item in items]
    others = set(multiprocessing.active_children())  # children that are not the pool's
    pool = ProcessPoolExecutor(workers, initializer=_leave_signals_to_the_parent)
    try:
        futures = [pool.submit(func, item) for item in items]
        pending = set(futures)
        while pending:  # short waits: a signal is handled between them
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            failure = next((future.exception() for future in done if future.exception()), None)
            if failure is not None:
                raise failure
        results = [future.result() for future in futures]
    except BaseException:
        for child in set(multiprocessing.active_children()) - others:  # the pool's workers, busy or not
            child.terminate()
        # waits for the pool's own thread, which would otherwise race the interpreter's exit
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def percent(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole > 0 else 0.0


def per_hour(count: float, seconds: float) -> float:
    return count * HOUR_S / seconds if seconds > 0 else 0.0


# ---- aggregation and output -----------------------------------------------------------------

def totals(hours: list[dict]) -> dict:
    """Sums for counts, time-weighted uptime, rates over the summed time, max for maxima."""
    def total(key: str):
        return sum((h[key] for h in hours), type(hours[0][key])(0)) if hours else 0

    sim_seconds, wall_s = total("sim_seconds"), total("wall_s")
    result = {key: total(key) for key in ("two_sided_s", "metered_s", "quoted_s", "maker_hours", "tier_1x_hours",
                                           "tier_half_hours", "fills", "partial_fills",
                                           "taker_fills", "orders_placed", "post_only_rejects",
                                           "rejected_in_matching", "requotes", "requests", "rate_limited",
                                           "pnl", "fees")}
    result.update({
        "hours": len(hours),
        "exit_code": max((h["exit_code"] for h in hours), default=0),
        "uptime_pct": percent(result["two_sided_s"], result["metered_s"]),
        "maker_hours_per_hour": per_hour(result["maker_hours"], result["quoted_s"]),
        "fills_per_hour": per_hour(result["fills"], sim_seconds),
        "partial_fills_per_hour": per_hour(result["partial_fills"], sim_seconds),
        "post_only_rejects_per_hour": per_hour(result["post_only_rejects"], sim_seconds),
        "requests_per_s": result["requests"] / sim_seconds if sim_seconds > 0 else 0.0,
        "max_orders_per_side": max((h["max_orders_per_side"] for h in hours), default=0),
        "sim_seconds": sim_seconds,
        "wall_s": wall_s,
        "speedup": sim_seconds / wall_s if wall_s > 0 else 0.0,
    })
    return result


def plain(value):
    """JSON-ready with fixed precision: Decimals and floats rounded to DECIMALS places."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, (Decimal, float)):
        return float(round(Decimal(value), DECIMALS)) + 0.0  # + 0.0: no "-0.0"
    return value


def report(hours: list[dict], settings: dict) -> dict:
    return plain({"note": TIMING_NOTE, "settings": settings, "hours": hours, "total": totals(hours)})


def report_json(data: dict) -> str:
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


def format_figure(value) -> str:
    if isinstance(value, float):
        if 0 < abs(value) < 0.01:  # Maker Hours of a small quote keep their digits: 0.001206, not 0.0012
            return f"{value:.6f}"
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.2f}"
    return str(value)


def table(rows: list[tuple[str, list]], header: list[str]) -> str:
    """A markdown table, first column left-aligned, the others right-aligned."""
    cells = [header] + [[name] + [format_figure(v) for v in values] for name, values in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                       for i, (c, w) in enumerate(zip(row, widths))) + " |")
        if n == 0:
            lines.append("|" + "|".join(":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":"
                                        for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def report_table(data: dict) -> str:
    columns = data["hours"] + ([data["total"]] if len(data["hours"]) > 1 else [])
    header = ["figure"] + [h["hour"] for h in data["hours"]] + (["total"] if len(data["hours"]) > 1 else [])
    return table([(key, [c[key] for c in columns]) for key in FIGURES], header)
