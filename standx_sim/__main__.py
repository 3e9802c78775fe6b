"""Command line: ``python -m standx_sim serve ...`` runs the simulator over HTTP on 127.0.0.1, with
StandX's rate limits per account and per client IP unless ``--no-rate-limits``;
``python -m standx_sim backtest ...`` runs the daemon on synthetic or recorded hours in virtual time;
``python -m standx_sim record ...`` records StandX's public market stream into the recorded-data format.

This entry point is the one place in standx_sim that knows the daemon: the backtest command
composes market_maker's daemon with the replay in backtest.py (serve never loads the daemon's
strategy; it borrows only the command line's number parser)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, Callable

from market_maker import number_argument
from rewards import DEFAULT_PROGRAMME, PROGRAMMES
from . import record
from .clock import WallClock

from .exchange import SymbolSpec
from .mark import MARK_MODELS
from .market import Market, RecordedMarket
from .presets import PRESETS
from .ratelimit import DEFAULT_RATE_LIMITS
from .server import SimServer
from .simulator import Simulator, synthetic_market
from .symbols import SYMBOLS


def _balance(text: str) -> Decimal | None:
    """A starting balance, or 'none' for an unfunded account."""
    return None if text.lower() == "none" else number_argument(Decimal)(text)


SERVE_MODELS = """\
what it models, by default (docs/simulator.md has the details):
  - every check of the REST contract; what StandX's documentation allows is accepted, what it
    does not mention is accepted with a warning in the log, what it forbids is refused
  - StandX's mark price: a median of three prices around an index that trails the book by ~5 s,
    recomputed every second, so a quote priced off the mark can cross the book (--mark mid: the
    rounded mid at once)
  - rate limits: ~22 requests/s per account (burst 20) and 50/s per client address, then 429
    with Retry-After (--no-rate-limits)
  - orders visible after a random delay (median 200 ms, ~5% over 1 s, ~0.5% over 3 s), 0.2%
    rejected in matching; post-only quotes that would cross rejected
  - a queue at each price: the recorded size ahead of an order trades first; partial fills
  - BTC-USD, ETH-USD, XAU-USD (one per instance; rules can change during a run), gzip answers,
    injectable faults (POST /_sim/faults), flat memory over days
  - StandX's WebSocket streams on the same port: ws://HOST:PORT/ws-stream/v1 (price, depth_book,
    public_trade; after auth our order, position and balance) and /ws-api/v1 (outcomes of REST
    orders sent with x-session-id); pings every 10 s, 10 sockets and 30 new connections a minute
    per client address; drops, silences, paused prices and garbage frames as faults
    (POST /_sim/streams/...)
not modelled: depth beyond the best level, our orders moving the book, funding payments,
liquidation, TP/SL orders, placing orders over the order response stream, several symbols at once
"""


# Bounds of a replay's inputs, beyond which a value is a typo: a synthetic hour's seed also sets
# its date (an hour per seed; some 70 million would pass the year 9999), and a latency beyond a
# minute is not a network the daemon can quote over.
MAX_SEED = 1_000_000
MAX_LATENCY_MS = 60_000.0
MAX_HOURS = 1000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m standx_sim", description="A local StandX Perps simulator.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the StandX API over HTTP on 127.0.0.1",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SERVE_MODELS)
    serve.add_argument("--port", type=number_argument(int), default=0, help="TCP port (default 0: a free port)")
    serve.add_argument("--market-data", nargs="+", metavar="PREFIX", default=None,
                       help="replay PREFIX.bbo.csv.gz + PREFIX.trades.csv.gz (in order) instead of a synthetic market")
    serve.add_argument("--latency-ms", type=number_argument(float), default=0.0, help="added latency per request")
    serve.add_argument("--balance", type=_balance, default=Decimal("1000"),
                       help="starting balance of every new account (default 1000; 'none' = unfunded)")
    serve.add_argument("--visibility-delay-ms", type=number_argument(float), default=None,
                       help="a fixed delay before every order or cancel takes effect (default: StandX-like "
                            "random delays seeded by --seed: orders median ~200 ms, 5%% over 1 s, 0.5%% over "
                            "3 s, at most 6 s, and 0.2%% rejected in matching; cancels shorter; see "
                            "standx_sim/delays.py)")
    serve.add_argument("--volatility-bps", type=number_argument(float), default=0.9,
                       help="synthetic market volatility in bps per sqrt(second) (default 0.9; "
                            "ignored with --market-data)")
    serve.add_argument("--symbol", choices=sorted(SYMBOLS), default="BTC-USD",
                       help="the symbol traded (default BTC-USD); --market-data must be recordings of it")
    serve.add_argument("--mark", choices=MARK_MODELS, default="standx",
                       help="mark price model: standx (StandX's formula, lagging the book; default) or mid")
    serve.add_argument("--seed", type=int, default=0, help="seed of the synthetic market, faults and delays")
    serve.add_argument("--meter-qty", type=number_argument(Decimal), default=Decimal("0"),
                       help="minimum order qty that counts for uptime metering")
    serve.add_argument("--no-rate-limits", action="store_true",
                       help="answer every request: no 429s for going over StandX's limits (by default 20 "
                            "requests at once and ~22/s per account, 50/s per client IP)")
    serve.set_defaults(run=serve_command)

    backtest = commands.add_parser(
        "backtest", help="run the market maker on synthetic or recorded hours in virtual time and report its figures",
        description="Each hour (a seeded hour of a synthetic preset, or a recorded PREFIX) is replayed on its "
                    "own with the real MarketMaker; strategy settings come from the environment and --env-file "
                    "as for a live run. Without --market-data it replays a synthetic market, labelled so. "
                    "wall_s and speedup are the only timing-dependent figures.")
    market = backtest.add_mutually_exclusive_group()
    market.add_argument("--preset", choices=sorted(PRESETS), default="calm",
                        help="synthetic market whose figures were measured from recorded StandX hours "
                             "(default calm; see standx_sim/presets.py)")
    market.add_argument("--market-data", nargs="+", metavar="PREFIX", default=None,
                        help="recorded hours instead: PREFIX.bbo.csv.gz + PREFIX.trades.csv.gz each")
    backtest.add_argument("--hours", type=number_argument(int, inclusive=False, maximum=MAX_HOURS), default=None,
                          help="synthetic hours to run, each with its own seed (default 1)")
    backtest.add_argument("--seed", type=number_argument(int, maximum=MAX_SEED), default=None,
                          help="seed of the first synthetic hour; the next ones take the following seeds (default 0)")
    backtest.add_argument("--latency-ms", type=number_argument(float, maximum=MAX_LATENCY_MS), default=150.0,
                          help="round-trip latency of every request, on the virtual clock (default 150)")
    backtest.add_argument("--price-feed", choices=("ws", "rest"), default=None,
                          help="overrides MARKET_MAKER_PRICE_FEED: ws (default) listens to the streams, rest "
                               "reads everything by REST")
    backtest.add_argument("--feed-latency-ms", type=number_argument(float, inclusive=False, maximum=MAX_LATENCY_MS), default=50.0,
                          help="how long a stream message takes to reach the daemon, on the virtual clock "
                               "(default 50)")
    backtest.add_argument("--mark", choices=MARK_MODELS, default="standx",
                          help="the simulator's mark price: standx (StandX's formula, lagging the book; the "
                               "default) or mid (the rounded mid at once: gentler than StandX)")
    backtest.add_argument("--requote", choices=("replace", "cancel_first"), default=None,
                          help="override MARKET_MAKER_REQUOTE")
    backtest.add_argument("--programme", choices=sorted(PROGRAMMES), default=None,
                          help="overrides MARKET_MAKER_REWARD_PROGRAMME: the reward programme the figures "
                               f"score (default {DEFAULT_PROGRAMME}; rewards.py, second-hand rules)")
    backtest.add_argument("--json", metavar="PATH", default=None, help="also write the report as JSON here")
    backtest.add_argument("--env-file", metavar="PATH", default=None,
                          help="settings file; fills in what the environment does not set")
    backtest.add_argument("--max-seconds", type=number_argument(float, inclusive=False), default=None,
                          help="simulate at most this many seconds of each hour")
    cores = os.cpu_count() or 1
    backtest.add_argument("--jobs", type=number_argument(int, 1), default=cores,
                          help=f"hours run at once, each in its own process (default: the core count, {cores}); "
                               "1 runs them in this process; the figures are the same")
    backtest.add_argument("--verbose", action="store_true", help="show the daemon's INFO log on stderr")
    backtest.set_defaults(run=backtest_command)
    add_record_command(commands)
    add_sweep_command(commands)
    return parser


def add_record_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "record", help="record StandX's public market stream (best bid/ask, trades) into replayable files",
        description="Subscribes to depth_book and public_trade of SYMBOL on the public market stream (no login) "
                    "and writes PREFIX.bbo.csv.gz and PREFIX.trades.csv.gz, the format --market-data replays. "
                    "Reconnects after a drop; stops after --minutes or on Ctrl-C/SIGTERM, the files complete.")
    parser.add_argument("--symbol", required=True, help="the symbol to record, e.g. BTC-USD")
    parser.add_argument("--minutes", type=number_argument(float, inclusive=False), required=True,
                        help="how long to record")
    parser.add_argument("--out", required=True, metavar="PREFIX", help="write PREFIX.bbo.csv.gz and PREFIX.trades.csv.gz")
    parser.add_argument("--url", default=record.DEFAULT_URL, help=f"the market stream (default {record.DEFAULT_URL})")
    parser.set_defaults(run=record_command)


def add_sweep_command(commands: argparse._SubParsersAction) -> None:
    from .sweep import DEFAULT_BANDS, DEFAULT_MAKER_HOUR_VALUE, DEFAULT_REQUOTES
    parser = commands.add_parser(
        "sweep", help="backtest a grid of settings and rank them by reward net of costs",
        description="Runs the backtest for every combination of the settings listed (bands x intervals x feeds x "
                    "requote modes x sizes) on every hour of the market, in parallel processes, and prints one row "
                    "per setting, sorted by net value an hour: Maker Hours x --maker-hour-value + PnL - fees. "
                    "Settings not listed come from the environment and --env-file, as for a live run; * marks "
                    "that current configuration (added to the grid if the grid lacks it). The output is the "
                    "same from run to run except its last line (the time taken).")
    market = parser.add_mutually_exclusive_group()
    market.add_argument("--presets", type=comma_list, default=["calm", "volatile"], metavar="LIST",
                        help=f"synthetic presets to replay, one hour each per --hours (default calm,volatile; "
                             f"known: {','.join(sorted(PRESETS))})")
    market.add_argument("--market-data", nargs="+", metavar="PREFIX", default=None,
                        help="recorded hours instead: PREFIX.bbo.csv.gz + PREFIX.trades.csv.gz each")
    parser.add_argument("--hours", type=number_argument(int, inclusive=False, maximum=MAX_HOURS), default=1,
                        help="synthetic hours of each preset, each with its own seed (default 1)")
    parser.add_argument("--seed", type=number_argument(int, maximum=MAX_SEED), default=0, help="seed of the first synthetic hour (default 0)")
    parser.add_argument("--bands", type=comma_list, default=list(DEFAULT_BANDS), metavar="LIST",
                        help=f"TARGET/MIN/MAX bps each (default {','.join(DEFAULT_BANDS)})")
    parser.add_argument("--intervals", type=comma_list, default=None, metavar="LIST",
                        help="check intervals in seconds (default: MARKET_MAKER_CHECK_INTERVAL's)")
    parser.add_argument("--feeds", type=comma_list, default=None, metavar="LIST",
                        help="price feeds, ws and/or rest (default: MARKET_MAKER_PRICE_FEED's)")
    parser.add_argument("--requotes", type=comma_list, default=list(DEFAULT_REQUOTES), metavar="LIST",
                        help=f"requote modes (default {','.join(DEFAULT_REQUOTES)})")
    parser.add_argument("--sizes", type=comma_list, default=None, metavar="LIST",
                        help="quote sizes (default: MARKET_MAKER_QTY's)")
    parser.add_argument("--programme", choices=sorted(PROGRAMMES), default=None,
                        help="overrides MARKET_MAKER_REWARD_PROGRAMME: the reward programme scored "
                             f"(default {DEFAULT_PROGRAMME}; rewards.py, second-hand rules)")
    parser.add_argument("--maker-hour-value", type=number_argument(Decimal), default=DEFAULT_MAKER_HOUR_VALUE,
                        metavar="DUSD", help=f"what one Maker Hour is worth to you, for the net value (default "
                                             f"{DEFAULT_MAKER_HOUR_VALUE}, an assumption: StandX publishes no rate)")
    parser.add_argument("--latency-ms", type=number_argument(float, maximum=MAX_LATENCY_MS), default=150.0,
                        help="round-trip latency of every request, on the virtual clock (default 150)")
    parser.add_argument("--feed-latency-ms", type=number_argument(float, inclusive=False, maximum=MAX_LATENCY_MS), default=50.0,
                        help="how long a stream message takes to reach the daemon (default 50)")
    parser.add_argument("--mark", choices=MARK_MODELS, default="standx", help="the simulator's mark price model")
    parser.add_argument("--max-seconds", type=number_argument(float, inclusive=False), default=None,
                        help="simulate at most this many seconds of each hour (its figures projected to the hour)")
    cores = os.cpu_count() or 1
    parser.add_argument("--jobs", type=number_argument(int, 1), default=cores,
                        help=f"hours run at once, each in its own process (default: the core count, {cores})")
    parser.add_argument("--env-file", metavar="PATH", default=None,
                        help="settings file; fills in what the environment does not set")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the rows as JSON here")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="also draw reward against cost as a PNG here (installs matplotlib if missing)")
    parser.set_defaults(run=sweep_command)


def comma_list(value: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def sweep_command(args: argparse.Namespace) -> int:
    """`python -m standx_sim sweep`: exit 0, 1 (a daemon stop was not clean, or the plot failed)
    or 2 (bad input)."""
    import market_maker as mm  # the daemon, only for this command
    from . import backtest as bt
    from . import sweep
    logging.getLogger().setLevel(logging.WARNING)
    started = time.monotonic()
    problem = output_problem("--json", args.json) or output_problem("--plot", args.plot)
    if problem:
        print(f"standx_sim: {problem}", file=sys.stderr)
        return 2
    try:
        sources, market = sweep_sources(args)
        base = mm.replay_config(os.environ, args.env_file, None, bt.SIM_URL, bt.throwaway_private_key(),
                                overrides=programme_override(args.programme))
        if base.symbol != SymbolSpec.symbol:
            raise mm.ConfigError("MARKET_MAKER_SYMBOL", f"the backtest's markets are {SymbolSpec.symbol} only "
                                                        f"(got {base.symbol})")
        current = sweep.Setting(base.band.target_bps, base.band.min_bps, base.band.max_bps,
                                Decimal(str(base.check_interval_s)), base.price_feed, base.requote_mode, base.qty)
        settings = sweep.grid(args.bands, args.intervals or [sweep.text(current.interval_s)],
                              args.feeds or [current.feed], args.requotes, args.sizes or [sweep.text(current.qty)])
        if current not in settings:
            settings.append(current)
        check_sizes(settings)
        configs = [mm.replay_config(os.environ, args.env_file, None, bt.SIM_URL, bt.throwaway_private_key(),
                                    overrides={**setting.overrides(), **programme_override(args.programme)})
                   for setting in settings]
        factories = [partial(mm.daemon_on, config, run_id=bt.RUN_ID) for config in configs]
        programme = PROGRAMMES[base.reward_programme]
        hours = sweep.run_sweep(factories, [c.qty for c in configs], sources, args.jobs, programme,
                                latency_ms=args.latency_ms, max_seconds=args.max_seconds, mark=args.mark,
                                feed_latency_ms=args.feed_latency_ms)
    except mm.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (bt.DataError, sweep.SweepError) as exc:
        print(f"standx_sim: {exc}", file=sys.stderr)
        return 2
    rows = sweep.ranked([sweep.row(setting, runs, args.maker_hour_value, setting == current)
                         for setting, runs in zip(settings, hours)])
    value_note = f"1 Maker Hour valued at {sweep.text(args.maker_hour_value)} DUSD (--maker-hour-value; an assumption)"
    print(f"sweep: {len(settings)} settings x {len(sources)} hour{'s' if len(sources) != 1 else ''}; market: {market}")
    print(f"reward: {programme.name}, {programme.title}: {programme.source}; an estimate")
    print(f"net/h = reward/h + pnl/h - fees/h, in DUSD, with {value_note}; * = the current configuration\n")
    warn_of_short_hours(hours[0])
    print(sweep.sweep_table(rows))
    code = 1 if any(r["exit_code"] for r in rows) else 0
    if args.json and not write_output("--json", args.json, bt.report_json(bt.plain(
            {"market": market, "programme": programme.name, "maker_hour_value": args.maker_hour_value,
             "rows": rows}))):
        code = 1
    if args.plot:
        try:
            sweep.plot(rows, args.plot, f"{short_market(sources, market)}\n{programme.name}: reward against cost, "
                                        f"{len(settings)} settings",
                       f"{programme.name}, second-hand rules")
        except sweep.SweepError as exc:
            print(f"standx_sim: {exc}", file=sys.stderr)
            code = 1
    processes = min(args.jobs, len(settings) * len(sources))
    print(f"\ntook {time.monotonic() - started:.1f} s with {processes} processes (timing: the only line that varies)")
    return code


def check_sizes(settings: list) -> None:
    """Every size the grid lists must be one the simulated exchange takes (else every hour of
    it would only log the daemon's refusal)."""
    from .sweep import SweepError, text
    spec = SymbolSpec()
    lot = Decimal(1).scaleb(-spec.qty_tick_decimals)
    for qty in dict.fromkeys(setting.qty for setting in settings):
        if not spec.min_order_qty <= qty <= spec.max_order_qty or qty % lot:
            raise SweepError(f"size {text(qty)}: {spec.symbol} takes {text(spec.min_order_qty)} to "
                             f"{text(spec.max_order_qty)} in lots of {text(lot)}")


def short_market(sources: list, market: str) -> str:
    """The market in a plot's title: recorded hours by their count, first and last."""
    if sources and isinstance(sources[0], str) and len(sources) > 2:
        return f"recorded: {len(sources)} hours, {Path(sources[0]).name} to {Path(sources[-1]).name}"
    return market


def sweep_sources(args: argparse.Namespace) -> tuple[list, str]:
    """The hours a sweep replays, and how the report names them."""
    from . import backtest as bt
    if args.market_data:
        for prefix in args.market_data:
            bt.check_prefix(prefix)
        return list(args.market_data), "recorded: " + ", ".join(Path(prefix).name for prefix in args.market_data)
    unknown = [name for name in args.presets if name not in PRESETS]
    if unknown:
        raise bt.DataError(f"--presets: unknown preset {unknown[0]!r} (known: {', '.join(sorted(PRESETS))})")
    sources = [bt.SyntheticHour(name, args.seed + k) for name in args.presets for k in range(args.hours)]
    return sources, "synthetic presets (not recordings): " + ", ".join(
        f"{name} x {args.hours} h" for name in args.presets)


def record_command(args: argparse.Namespace) -> int:
    """`python -m standx_sim record`: exit 0, 1 (no connection at the start, or no book recorded) or 2 (a bad
    argument, or a symbol the stream refuses)."""
    problem = record.argument_problem(args.url, args.symbol, args.out)
    if problem:
        print(f"standx_sim: {problem}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    # Ctrl-C and SIGTERM only raise a flag: the recording ends between two frames, never inside a
    # write, so the files stay whole. It runs on a thread of its own because a signal landing in
    # the main thread while it waits in websockets' recv (a queue.SimpleQueue) can hang it for good
    # before Python 3.13; waiting for a future is safe.
    previous = {signum: signal.signal(signum, lambda *_: stopping.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ThreadPoolExecutor(1) as pool:
            summary = pool.submit(record.record_for, args.url, args.symbol, args.minutes * 60, args.out,
                                  stop=stopping.is_set, say=partial(print, flush=True)).result()
    except record.RecordError as exc:
        print(f"standx_sim: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the files cannot be written (a full disk)
        print(f"standx_sim: cannot write {args.out}.*: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(record.summary_line(args.symbol, args.out, summary), flush=True)
    if not summary.book_rows:
        print(f"standx_sim: no book of {args.symbol} was received, so nothing was written", file=sys.stderr)
        return 1
    return 0


def backtest_command(args: argparse.Namespace) -> int:
    """`python -m standx_sim backtest`: exit 0, 1 (a daemon stop was not clean) or 2 (bad input)."""
    import market_maker as mm  # the daemon, only for this command
    from . import backtest as bt
    logging.getLogger().setLevel(logging.INFO if args.verbose else logging.WARNING)
    problem = output_problem("--json", args.json)
    if problem:
        print(f"standx_sim: {problem}", file=sys.stderr)
        return 2
    if args.market_data and (args.hours is not None or args.seed is not None):
        print("standx_sim: --hours and --seed choose synthetic hours; they do not apply to --market-data",
              file=sys.stderr)
        return 2
    sources: list[str | bt.SyntheticHour]
    if args.market_data:
        sources = list(args.market_data)
        market = "recorded: " + ", ".join(Path(prefix).name for prefix in sources)
    else:
        preset = PRESETS[args.preset]
        seed = args.seed or 0
        sources = [bt.SyntheticHour(preset.name, seed + k) for k in range(args.hours or 1)]
        market = preset.description()
    try:
        config = mm.replay_config(os.environ, args.env_file, args.requote, bt.SIM_URL, bt.throwaway_private_key(),
                                  price_feed=args.price_feed, overrides=programme_override(args.programme))
        if config.symbol != SymbolSpec.symbol:
            raise mm.ConfigError("MARKET_MAKER_SYMBOL", f"the backtest's markets are {SymbolSpec.symbol} only "
                                                        f"(got {config.symbol})")
        for prefix in args.market_data or []:
            bt.check_prefix(prefix)
        daemon = partial(mm.daemon_on, config, run_id=bt.RUN_ID)
        hours = bt.run_hours(sources, daemon, config.qty, args.latency_ms, args.max_seconds, args.jobs,
                             mark=args.mark, feed_latency_ms=args.feed_latency_ms,
                             programme=PROGRAMMES[config.reward_programme])
    except mm.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except bt.DataError as exc:
        print(f"standx_sim: {exc}", file=sys.stderr)
        return 2
    settings = {"market": market, "latency_ms": args.latency_ms, "requote": config.requote_mode, "qty": config.qty,
                "band_bps": [config.band.target_bps, config.band.min_bps, config.band.max_bps],
                "check_interval_s": config.check_interval_s, "time_in_force": config.time_in_force,
                "max_seconds": args.max_seconds, "reward_programme": config.reward_programme, "mark": args.mark,
                "price_feed": config.price_feed, "feed_latency_ms": args.feed_latency_ms}
    data = bt.report(hours, settings)
    print(f"market: {market}\n")
    warn_of_short_hours(hours)
    print(bt.report_table(data))
    if args.json and not write_output("--json", args.json, bt.report_json(data)):
        return 1
    return 1 if data["total"]["exit_code"] else 0


def output_problem(option: str, path: str | None) -> str | None:
    """Why a report could not be written to `path` (checked before any work), or None."""
    if path is None:
        return None
    if not path or os.path.isdir(path):
        return f"{option}: {path!r} is not a file name"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        return f"{option}: cannot write to {folder} (no such folder, or not writable)"
    return None


def write_output(option: str, path: str, text: str) -> bool:
    try:
        Path(path).write_text(text)
    except OSError as exc:
        print(f"standx_sim: {option}: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


# A replay that starts this far into its clock hour cannot hold both quotes 42 minutes of it.
LATE_START_S = 18 * 60


def warn_of_short_hours(hours: list[dict]) -> None:
    """Say which hours start too late into their clock hour to reach the 1.0x tier: the reward
    scores whole clock hours, so such an hour's reward is not the setting's fault."""
    for hour in hours:
        late_s = hour["start_ts"] % 3600
        if late_s > LATE_START_S:
            print(f"note: {hour['hour']} starts {late_s / 60:.0f} minutes into its clock hour: it cannot "
                  f"reach the 1.0x tier, whatever the settings (the reward scores whole clock hours)\n")


def programme_override(programme: str | None) -> dict[str, str]:
    return {} if programme is None else {"MARKET_MAKER_REWARD_PROGRAMME": programme}


def _market(args: argparse.Namespace, clock: WallClock) -> Market:
    if not args.market_data:
        return synthetic_market(SYMBOLS[args.symbol], args.seed, clock.now(),
                                volatility_bps_per_sqrt_s=args.volatility_bps)
    return RecordedMarket(args.market_data)


def serve_command(args: argparse.Namespace) -> int:
    clock = WallClock()
    try:
        market = _market(args, clock)
    except FileNotFoundError as e:
        print(f"standx_sim: market data file not found: {e.filename}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # unreadable or malformed data
        print(f"standx_sim: cannot load market data: {e}", file=sys.stderr)
        return 2
    delay_s = None if args.visibility_delay_ms is None else args.visibility_delay_ms / 1000  # None: random delays
    sim = Simulator(clock, market, default_balance=args.balance, symbol=args.symbol, mark=args.mark,
                    visibility_delay_s=delay_s, meter_qty=args.meter_qty, seed=args.seed,
                    rate_limits=None if args.no_rate_limits else DEFAULT_RATE_LIMITS)
    server = SimServer(sim, port=args.port, latency_s=args.latency_ms / 1000)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        url = server.start()
    except OSError as e:  # port in use, no permission
        print(f"standx_sim: cannot listen on 127.0.0.1:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"STANDX_SIM_URL={url}", flush=True)
    print(f"Point STANDX_AUTH_BASE_URL and STANDX_PERPS_BASE_URL at {url} (Ctrl-C to stop).", flush=True)
    stop.wait()
    server.stop()
    return 0


def interruptible(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command that may take minutes: Ctrl-C or SIGTERM ends it, and every worker
    process, with one line and exit code 130 or 143. Only the first signal interrupts: a second
    one (Ctrl-C pressed twice) must not break into the ending of the workers."""
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if received:
            return
        received.append(signum)
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return command(args)
    except KeyboardInterrupt:
        signum = received[0] if received else signal.SIGINT
        print(f"standx_sim: {args.command} interrupted by {signal.Signals(signum).name}: its report may be "
              f"missing or incomplete", file=sys.stderr)
        return 128 + signum
    except BrokenProcessPool:
        print(f"standx_sim: {args.command}: a worker process died (killed, or out of memory?): no report; "
              f"try fewer --jobs", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in ("backtest", "sweep"):
        return interruptible(args.run, args)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
