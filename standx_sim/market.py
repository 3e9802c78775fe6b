"""Market data the exchange engine replays: recorded StandX CSVs or a seeded synthetic walk.

Every source answers in *data time* (unix seconds of the data itself); the Exchange maps its
clock onto data time. The common interface (class Market):

- ``start_ts``: data time of the first book.
- ``book_at(t)``: the best bid/ask and their sizes in force at t (the first book before the
  data starts, the last book after it ends).
- ``book_changes_between(t0, t1)`` / ``trades_between(t0, t1)``: events with t0 < ts <= t1,
  found by bisection in sorted arrays, so a replay never rescans.
- ``price_offset``: a Decimal added to every price reported, set by the Exchange's test
  controls (shift_bps, set_mid). It applies from the moment it is set: the Exchange has already
  consumed everything before that moment.
"""
from __future__ import annotations

import bisect
import csv
import gzip
import logging
import math
import random
from decimal import Decimal
from typing import Iterator, NamedTuple

log = logging.getLogger(__name__)

BBO_COLUMNS = ["ts_ms", "bid", "ask", "bid_qty", "ask_qty"]
TRADE_COLUMNS = ["ts_ms", "price", "qty", "taker_side"]


class BookTop(NamedTuple):
    bid: Decimal
    ask: Decimal
    bid_qty: Decimal  # the size resting at the best bid
    ask_qty: Decimal


class BookChange(NamedTuple):
    ts: float
    bid: Decimal
    ask: Decimal
    bid_qty: Decimal
    ask_qty: Decimal


class Trade(NamedTuple):
    ts: float
    price: Decimal
    qty: Decimal
    taker_side: str  # "buy": the buyer took liquidity, so resting sells were hit


class Market:
    """Sorted book and trade series with bisection look-ups; subclasses fill the series."""

    def __init__(self) -> None:
        self.price_offset = Decimal(0)
        self._book_ts: list[float] = []
        self._books: list[tuple[Decimal, Decimal, Decimal, Decimal]] = []  # bid, ask, bid_qty, ask_qty
        self._trade_ts: list[float] = []
        self._trades: list[tuple[Decimal, Decimal, str]] = []

    @property
    def start_ts(self) -> float:
        return self._book_ts[0]

    def _extend_to(self, t: float) -> None:
        """Make sure the series cover data time t (lazy sources generate here)."""

    def _read_from(self, t: float) -> None:
        """The reader has moved on to data time t (sources that forget the past do it here)."""

    def book_at(self, t: float) -> BookTop:
        self._extend_to(t)
        i = max(bisect.bisect_right(self._book_ts, t) - 1, 0)
        bid, ask, bid_qty, ask_qty = self._books[i]
        return BookTop(bid + self.price_offset, ask + self.price_offset, bid_qty, ask_qty)

    def book_changes_between(self, t0: float, t1: float) -> list[BookChange]:
        self._read_from(t0)
        self._extend_to(t1)
        lo = bisect.bisect_right(self._book_ts, t0)
        hi = bisect.bisect_right(self._book_ts, t1)
        off = self.price_offset
        return [BookChange(self._book_ts[k], bid + off, ask + off, bid_qty, ask_qty)
                for k, (bid, ask, bid_qty, ask_qty) in zip(range(lo, hi), self._books[lo:hi])]

    def trades_between(self, t0: float, t1: float) -> list[Trade]:
        self._read_from(t0)
        self._extend_to(t1)
        lo = bisect.bisect_right(self._trade_ts, t0)
        hi = bisect.bisect_right(self._trade_ts, t1)
        off = self.price_offset
        return [Trade(self._trade_ts[k], self._trades[k][0] + off, self._trades[k][1], self._trades[k][2])
                for k in range(lo, hi)]


def _read_csv_gz(path: str, columns: list[str]) -> Iterator[list[str]]:
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != columns:
            raise ValueError(f"{path}: expected columns {','.join(columns)}, got {header}")
        yield from reader


class RecordedMarket(Market):
    """Replay of recorded StandX top-of-book and trades: PREFIX.bbo.csv.gz + PREFIX.trades.csv.gz.

    Prefixes are concatenated in the order given and must be in time order. Locked or crossed
    books are kept as recorded. The capture labels every trade's taker side "sell", which would
    let trades fill resting buys but never resting sells; so a label that contradicts the book
    in force just before the trade (a print at or above the ask and above the bid is a buyer
    taking, and vice versa) is corrected from the book. Other labels are kept.
    """

    def __init__(self, prefixes: list[str]) -> None:
        super().__init__()
        if not prefixes:
            raise ValueError("RecordedMarket needs at least one data prefix")
        for prefix in prefixes:
            self._load_books(f"{prefix}.bbo.csv.gz")
            self._load_trades(f"{prefix}.trades.csv.gz")
        if not self._book_ts:
            raise ValueError(f"no book rows in {', '.join(prefixes)}")
        corrected = self._correct_taker_sides()
        log.info("loaded %d book rows and %d trades from %d file pair(s); %d taker sides corrected",
                 len(self._book_ts), len(self._trade_ts), len(prefixes), corrected)

    def _load_books(self, path: str) -> None:
        for row in _read_csv_gz(path, BBO_COLUMNS):
            ts = int(row[0]) / 1000
            if self._book_ts and ts < self._book_ts[-1]:
                raise ValueError(f"{path}: book rows go back in time at ts_ms {row[0]}")
            self._book_ts.append(ts)
            self._books.append((Decimal(row[1]), Decimal(row[2]), Decimal(row[3]), Decimal(row[4])))

    def _load_trades(self, path: str) -> None:
        for row in _read_csv_gz(path, TRADE_COLUMNS):
            ts = int(row[0]) / 1000
            if self._trade_ts and ts < self._trade_ts[-1]:
                raise ValueError(f"{path}: trades go back in time at ts_ms {row[0]}")
            if row[3] not in ("buy", "sell"):
                raise ValueError(f"{path}: taker_side must be buy or sell, got {row[3]!r}")
            self._trade_ts.append(ts)
            self._trades.append((Decimal(row[1]), Decimal(row[2]), row[3]))

    def _correct_taker_sides(self) -> int:
        corrected = 0
        for k, ts in enumerate(self._trade_ts):
            i = bisect.bisect_left(self._book_ts, ts) - 1  # the book strictly before the print
            if i < 0:
                continue
            bid, ask = self._books[i][:2]
            price, qty, side = self._trades[k]
            if price >= ask and price > bid:
                inferred = "buy"
            elif price <= bid and price < ask:
                inferred = "sell"
            else:
                continue
            if inferred != side:
                self._trades[k] = (price, qty, inferred)
                corrected += 1
        return corrected


# What the synthetic market's moves and jumps are, and what presets.measure counts as one: a
# change of the mid at one book change of at least MOVE_MIN_BPS is a move (smaller ones, under
# half a dollar, are mostly one side of the book flickering by a few ticks), and of at least
# JUMP_MIN_BPS a jump (most of the 2.5 bps between a default quote and the 10 bps edge of the
# reward band, at once; one threshold for every market, so that jump rates compare).
MOVE_MIN_BPS = 0.05
JUMP_MIN_BPS = 2.0
# How far behind the earliest time its reader still asks about a synthetic market keeps its
# series: the engine reads only from its own time on, so a few minutes is ample.
KEEP_BEHIND_S = 300.0


class SyntheticMarket(Market):
    """A seeded random walk of the mid with jumps and trades, generated lazily event by event.

    Three independent Poisson processes, merged in time order:
    - moves, moves_per_s: the mid is multiplied by exp(x bps) with x = ±(min_move_bps + |N(0, s)|),
      s set so that the moves carry volatility_bps_per_sqrt_s (min_move_bps 0: x = N(0, s)).
      How often a quote leaves its band depends on the mid moving in rare whole steps, as
      StandX's does; the default, 10 moves a second, is close to a continuous walk;
    - jumps, jumps_per_hour: x = ±(JUMP_MIN_BPS + an exponential excess), mean |x| jump_mean_bps;
    - trades, trades_per_s: a print at the touch (buyer taker at the ask, seller taker at the
      bid) of a log-normal qty (median trade_size_btc, log sd trade_size_log_sd), at least a lot.
    Each move or jump redraws the spread uniformly in whole ticks between spread_usd[0] and
    spread_usd[1] around the mid. The size at the best bid (ask) is redrawn whenever the best
    bid (ask) price changes and kept while it does not: a log-normal qty (median level_size_btc,
    log sd level_size_log_sd: the defaults are what the recorded hours show at their best
    levels, median 0.05 to 0.075 BTC, log sd 2.4) between one lot and level_size_cap_btc (3 BTC,
    about the recorded 99th percentile). Sizes come from their own random stream, derived from
    the seed, so they never change the prices or trades a seed gives. The same seed always
    gives the same market, however it is read. Volatility 0 gives a fully quiet market: a fixed
    book at the minimum spread and no trades (tests inject what they need). presets.py holds
    figures measured from recorded hours; the default trade sizes are about the calm preset's.

    Memory stays bounded however long it runs: once the reader (the engine) has moved on, what
    lies more than KEEP_BEHIND_S before the earliest time it still asks about is forgotten, in
    amortised batches. book_at(t) for a t before what is kept answers the oldest book kept.
    """

    def __init__(self, seed: int = 0, start_ts: float = 0.0, start_price: Decimal = Decimal("95000"),
                 volatility_bps_per_sqrt_s: float = 0.9,
                 spread_usd: tuple[Decimal, Decimal] = (Decimal("0.1"), Decimal("1")),
                 trades_per_s: float = 0.5, tick: Decimal = Decimal("0.1"),
                 lot: Decimal = Decimal("0.0001"), *, moves_per_s: float = 10.0, min_move_bps: float = 0.0,
                 jumps_per_hour: float = 0.0, jump_mean_bps: float = JUMP_MIN_BPS,
                 trade_size_btc: float = 0.001, trade_size_log_sd: float = 1.7,
                 level_size_btc: float = 0.05, level_size_log_sd: float = 2.4,
                 level_size_cap_btc: float = 3.0) -> None:
        super().__init__()
        if volatility_bps_per_sqrt_s < 0 or moves_per_s <= 0:
            raise ValueError("volatility must be >= 0 and moves_per_s > 0")
        mean_square = volatility_bps_per_sqrt_s ** 2 / moves_per_s  # what each move must carry
        if mean_square < min_move_bps ** 2:
            raise ValueError("moves of min_move_bps alone carry more than the volatility")
        if jumps_per_hour > 0 and jump_mean_bps <= JUMP_MIN_BPS:
            raise ValueError(f"jump_mean_bps must be above {JUMP_MIN_BPS}")
        # s from mean_square = E[(m + |N(0, s)|)^2] = m^2 + 2 m s h + s^2, h = E|N(0, 1)| = sqrt(2/pi)
        h = math.sqrt(2 / math.pi)
        self._move_scale_bps = -min_move_bps * h + math.sqrt(mean_square - min_move_bps ** 2 * (1 - h * h))
        self._rng = random.Random(seed)
        self._tick = tick
        self._lot = lot
        self._mid_ticks = float(start_price / tick)  # in ticks, so the book rounds without float noise
        self._spread_ticks = (int(spread_usd[0] / tick), int(spread_usd[1] / tick))
        self._min_move_bps = min_move_bps
        self._jump_excess_bps = jump_mean_bps - JUMP_MIN_BPS
        self._log_trade_lots = math.log(trade_size_btc / float(lot))
        self._trade_size_log_sd = trade_size_log_sd
        self._size_rng = random.Random(f"level sizes {seed}")
        self._log_level_lots = math.log(level_size_btc / float(lot))
        self._level_size_log_sd = level_size_log_sd
        self._max_level_lots = max(1, int(level_size_cap_btc / float(lot)))
        self._start_ts = float(start_ts)
        quiet = volatility_bps_per_sqrt_s == 0
        # cumulative rates (per s) of the merged process: a move below the first, a jump below
        # the second, else a trade
        self._rates = (0.0, 0.0, 0.0) if quiet else (
            moves_per_s, moves_per_s + jumps_per_hour / 3600, moves_per_s + jumps_per_hour / 3600 + trades_per_s)
        self._next_ts = float(start_ts) + self._wait()
        self._book_ts.append(float(start_ts))
        bid, ask = self._book_for(self._spread_ticks[0])
        self._books.append((bid, ask, self._level_size(), self._level_size()))

    @property
    def start_ts(self) -> float:
        return self._start_ts  # what is kept may start later

    def _read_from(self, t: float) -> None:
        self._forget_before(t - KEEP_BEHIND_S)

    def _forget_before(self, t: float) -> None:
        """Drop the trades before t and the books before the one in force at t, once what would go
        is at least as long as what stays: each event is copied O(1) times on average."""
        books = bisect.bisect_right(self._book_ts, t) - 1
        if books > 0 and 2 * books >= len(self._book_ts):
            del self._book_ts[:books], self._books[:books]
        trades = bisect.bisect_right(self._trade_ts, t)
        if trades > 0 and 2 * trades >= len(self._trade_ts):
            del self._trade_ts[:trades], self._trades[:trades]

    def _level_size(self) -> Decimal:
        lots = round(math.exp(self._size_rng.gauss(self._log_level_lots, self._level_size_log_sd)))
        return min(max(1, lots), self._max_level_lots) * self._lot

    def _wait(self) -> float:
        """Time to the next event; never, in a quiet market."""
        return self._rng.expovariate(self._rates[-1]) if self._rates[-1] > 0 else math.inf

    def _book_for(self, spread_ticks: int) -> tuple[Decimal, Decimal]:
        bid_ticks = math.floor(self._mid_ticks - spread_ticks / 2 + 1e-9)
        return Decimal(bid_ticks) * self._tick, Decimal(bid_ticks + spread_ticks) * self._tick

    def _extend_to(self, t: float) -> None:
        while self._next_ts <= t:
            self._event(self._next_ts)
            self._next_ts += self._wait()

    def _event(self, ts: float) -> None:
        rng = self._rng
        moves, moves_and_jumps, total = self._rates
        kind = rng.random() * total
        if kind >= moves_and_jumps:
            side = rng.choice(("buy", "sell"))
            bid, ask = self._books[-1][:2]
            lots = max(1, round(math.exp(rng.gauss(self._log_trade_lots, self._trade_size_log_sd))))
            self._trade_ts.append(ts)
            self._trades.append((ask if side == "buy" else bid, lots * self._lot, side))
            return
        if kind < moves:
            size_bps = self._min_move_bps + abs(rng.gauss(0.0, self._move_scale_bps))
        else:
            size_bps = JUMP_MIN_BPS + rng.expovariate(1 / self._jump_excess_bps)
        self._mid_ticks *= math.exp(rng.choice((-1, 1)) * size_bps * 1e-4)
        bid, ask = self._book_for(rng.randint(*self._spread_ticks))
        old_bid, old_ask, bid_qty, ask_qty = self._books[-1]
        if (bid, ask) != (old_bid, old_ask):
            self._book_ts.append(ts)
            self._books.append((bid, ask, bid_qty if bid == old_bid else self._level_size(),
                                ask_qty if ask == old_ask else self._level_size()))
