"""Mark and index prices: how far StandX's mark trails its own book.

StandX's mark (standx_api.md 8.14, D-PRICE) is the median of three prices:
  P1 the index projected by the funding rate over what is left of the funding interval,
     index * (1 + funding_rate * remaining fraction);
  P2 the index plus the recent basis, a moving average of (StandX mid - index);
  P3 the last StandX trade, or the index when no trade printed for a while;
and it is pinned to the other venues' mark (here: the index) while it strays too far from it.
The index is the price of external venues. A replay has only StandX's own book, so the index
here is StandX's mid as it was index_lag_s ago, smoothed by an exponential moving average: it
follows the market with a short lag, as the external price StandX's book follows does. The
mark is smooth and lags: after a jump of the mid it takes seconds to follow, and in fast moves
it sits several bps from the book (11.6 bps was seen live), so a quote priced at 7.5 bps from
the mark can cross the book.

Two models behind one interface (MarkPrice), driven by the engine in time order:
    on_book(t, bid, ask) -> bool   a book change at engine time t (seconds); True if the mark
                                   changed at once (only MidMark does that; MarkModel changes
                                   its mark at cadence ticks only, and on its very first book)
    on_trade(t, price) -> None     a public trade at engine time t
    next_update() -> float         engine time of the next cadence tick (math.inf: none); the
                                   engine schedules it as an event, after the books and trades
                                   of the same instant, so uptime is integrated exactly
    update(t) -> bool              the tick at t = next_update(): recompute, True if the mark
                                   changed; a call before next_update() changes nothing
    set_tick(tick)                 the symbol's tick changed (a rule change during a run)
    mark, index                    Decimal on the tick grid (a RuntimeError before the first book)

- MidMark: mark = (bid + ask) / 2 rounded half-even to the tick at every book change, and
  index = mark: the engine's behaviour before this model, for tests that need a mark that
  follows the book exactly.
- MarkModel: the StandX formula above with MarkParams. Internally float, O(1) amortized per
  event: exponential moving averages updated at each tick, and a deque of the mids of the last
  index_lag_s for the delay; Decimal only for the output on the tick grid. Ticks fall on
  multiples of cadence_s of engine time. No randomness: the same events give the same marks.

mark_model(kind, tick, params=None) builds "standx" (MarkModel) or "mid" (MidMark).
replay(model, market, t0, t1) runs a model over a market in that order, outside the engine (for
bench/measure_mark.py and the tests).

Calibration: bench/measure_mark.py replays the recorded hours of ../shared/market_data through
the defaults; |mark - mid| in bps, weighted by time, and the share of time a quote 7.5 bps from
the mark (buy rounded down, sell up) crosses the book:
    hours (2026-01-06)  median     mean       p90        p99      max      quote crosses
    00-05 calm          0.02-0.09  0.16-0.39  0.47-1.08  1.9-3.7  3.6-7.5  0-0.02 %
    14 volatile         0.64       1.36       3.85       7.2      11.1     0.49 %
    15 volatile         0.68       1.35       3.77       6.7      10.6     0.40 %
The calm medians are tiny because a calm mid sits still for most seconds; when it moves the mark
trails it by 0.5-1 bp (p90). The largest divergence, 14:49:39 UTC: the mid rose 15 bps in 14 s
and the mark trailed it by 11.1 bps, still 9 bps behind 5 s later. Why these defaults: an index
lag and smoothing of 5 s each are the smallest that reach the ~11 bps seen live in the volatile
hours (3 s each: 9 bps; 8 s and 5 s: 13 bps); a 60 s basis window lets the mark drift towards
the mid without following it (10 s: the mark hugs the mid, 8 bps at most; 120 s: 12 bps); the
idle time barely matters (5-30 s move the crossing share by 0.1 point) as trades are frequent;
StandX's cadence is not documented, 1 s is what other venues' mark streams use. The median keeps
within 3.6 bps of the index in every recorded hour, so the 25 bps pin never engages there: it
guards against a book that runs away from the index.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Iterator, NamedTuple, Protocol

from .market import Market

log = logging.getLogger(__name__)

BPS = 1e-4
MARK_MODELS = ("standx", "mid")  # the kinds mark_model builds


class MarkPrice(Protocol):
    """What the engine drives; see the module docstring."""

    def on_book(self, t: float, bid: Decimal, ask: Decimal) -> bool: ...

    def on_trade(self, t: float, price: Decimal) -> None: ...

    def next_update(self) -> float: ...

    def update(self, t: float) -> bool: ...

    def set_tick(self, tick: Decimal) -> None: ...

    @property
    def mark(self) -> Decimal: ...

    @property
    def index(self) -> Decimal: ...


@dataclass(frozen=True)
class MarkParams:
    """MarkModel's parameters; the defaults are calibrated on recorded hours (module docstring)."""

    index_lag_s: float = 5.0  # how long the external price takes to show a move of StandX's mid
    index_smoothing_s: float = 5.0  # time constant of the index's moving average
    basis_window_s: float = 60.0  # time constant of the moving average of mid - index
    trade_idle_s: float = 10.0  # a last trade older than this gives way to the index
    cadence_s: float = 1.0  # the mark is recomputed at multiples of this
    pin_band_bps: float = 25.0  # a mark further than this from the index is pinned to it
    funding_rate: float = 0.0000125  # per funding interval: StandX's base interest, 0.00125 %/h
    funding_interval_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.cadence_s <= 0 or self.funding_interval_s <= 0:
            raise ValueError("cadence_s and funding_interval_s must be > 0")
        if min(self.index_lag_s, self.index_smoothing_s, self.basis_window_s, self.trade_idle_s,
               self.pin_band_bps) < 0:
            raise ValueError("lags, windows, the idle time and the pin band must be >= 0")


def _half_even(value: Decimal, tick: Decimal) -> Decimal:
    return value.quantize(tick, rounding=ROUND_HALF_EVEN)


class MidMark:
    """mark = the mid rounded half-even to the tick, changed at once by every book; index = mark."""

    def __init__(self, tick: Decimal) -> None:
        self._tick = tick
        self._mark: Decimal | None = None

    def on_book(self, t: float, bid: Decimal, ask: Decimal) -> bool:
        old, self._mark = self._mark, _half_even((bid + ask) / 2, self._tick)
        return self._mark != old

    def on_trade(self, t: float, price: Decimal) -> None:
        """Trades do not move a mid mark."""

    def next_update(self) -> float:
        return math.inf

    def update(self, t: float) -> bool:
        return False

    def set_tick(self, tick: Decimal) -> None:
        """The symbol's tick changed: the next book rounds to it."""
        self._tick = tick

    @property
    def mark(self) -> Decimal:
        if self._mark is None:
            raise RuntimeError("no book yet")
        return self._mark

    @property
    def index(self) -> Decimal:
        return self.mark


def _smoothing(dt: float, time_constant: float) -> float:
    """The weight of a new sample in an exponential moving average after dt seconds."""
    return 1.0 if time_constant == 0 else -math.expm1(-dt / time_constant)


def _median3(a: float, b: float, c: float) -> float:
    return max(min(a, b), min(max(a, b), c))


class MarkModel:
    """StandX's mark: median of the funding-adjusted index, index + basis and the last trade, pinned
    to the index beyond pin_band_bps; recomputed at cadence ticks (module docstring)."""

    def __init__(self, tick: Decimal, params: MarkParams = MarkParams()) -> None:
        self.params = params
        self._tick = tick
        self._tick_f = float(tick)
        self._mids: deque[tuple[float, float]] = deque()  # (t, mid) from index_lag_s before the last tick
        self._mid = 0.0
        self._index = 0.0
        self._basis = 0.0
        self._last_trade = (-math.inf, 0.0)  # (t, price)
        self._updated_t = 0.0
        self._next_tick = 0  # next_update() = _next_tick * cadence_s
        self._mark_ticks: int | None = None  # the mark and index in ticks, on the grid
        self._index_ticks = 0

    def on_book(self, t: float, bid: Decimal, ask: Decimal) -> bool:
        self._mid = (float(bid) + float(ask)) / 2
        self._mids.append((t, self._mid))
        if self._mark_ticks is not None:
            return False
        self._start(t)
        return True

    def _start(self, t: float) -> None:
        """The first book: index and mark start at its mid, with no basis."""
        self._index = self._mid
        self._updated_t = t
        self._next_tick = math.floor(t / self.params.cadence_s) + 1
        self._mark_ticks = self._index_ticks = round(self._mid / self._tick_f)

    def on_trade(self, t: float, price: Decimal) -> None:
        self._last_trade = (t, float(price))

    def next_update(self) -> float:
        return math.inf if self._mark_ticks is None else self._next_tick * self.params.cadence_s

    def update(self, t: float) -> bool:
        if t < self.next_update():
            return False
        p = self.params
        # the tick counter only moves forward, whatever float error t / cadence_s carries
        self._next_tick = max(self._next_tick + 1, math.floor(t / p.cadence_s) + 1)
        dt, self._updated_t = t - self._updated_t, t
        self._index += _smoothing(dt, p.index_smoothing_s) * (self._delayed_mid(t) - self._index)
        self._basis += _smoothing(dt, p.basis_window_s) * (self._mid - self._index - self._basis)
        mark = self._pinned(_median3(self._funding_adjusted_index(t), self._index + self._basis,
                                     self._last_trade_or_index(t)))
        old = self._mark_ticks
        self._mark_ticks = round(mark / self._tick_f)
        self._index_ticks = round(self._index / self._tick_f)
        return self._mark_ticks != old

    def set_tick(self, tick: Decimal) -> None:
        """The symbol's tick changed: the mark and index move to the new grid at once (rounded
        there from the old one), and every tick from now on rounds to it."""
        if self._mark_ticks is not None:
            old_tick = self._tick
            self._mark_ticks = int(_half_even(self._mark_ticks * old_tick / tick, Decimal(1)))
            self._index_ticks = int(_half_even(self._index_ticks * old_tick / tick, Decimal(1)))
        self._tick, self._tick_f = tick, float(tick)

    def _delayed_mid(self, t: float) -> float:
        """The mid in force index_lag_s ago (the first mid known, before that)."""
        cutoff = t - self.params.index_lag_s
        mids = self._mids
        while len(mids) > 1 and mids[1][0] <= cutoff:
            mids.popleft()
        return mids[0][1]

    def _funding_adjusted_index(self, t: float) -> float:
        interval = self.params.funding_interval_s
        remaining = 1.0 - (t % interval) / interval
        return self._index * (1.0 + self.params.funding_rate * remaining)

    def _last_trade_or_index(self, t: float) -> float:
        trade_t, price = self._last_trade
        return price if t - trade_t <= self.params.trade_idle_s else self._index

    def _pinned(self, mark: float) -> float:
        """The other venues' mark is about the index: a mark straying beyond the band takes it."""
        if abs(mark - self._index) > self.params.pin_band_bps * BPS * self._index:
            log.debug("mark %.2f pinned to the index %.2f", mark, self._index)
            return self._index
        return mark

    @property
    def mark(self) -> Decimal:
        if self._mark_ticks is None:
            raise RuntimeError("no book yet")
        return Decimal(self._mark_ticks) * self._tick

    @property
    def index(self) -> Decimal:
        if self._mark_ticks is None:
            raise RuntimeError("no book yet")
        return Decimal(self._index_ticks) * self._tick


def mark_model(kind: str, tick: Decimal, params: MarkParams | None = None) -> MarkPrice:
    """"standx": MarkModel (params, else the calibrated defaults); "mid": MidMark (no params)."""
    if kind == "standx":
        return MarkModel(tick, params or MarkParams())
    if kind == "mid":
        if params is not None:
            raise ValueError("the mid mark takes no parameters")
        return MidMark(tick)
    raise ValueError(f"unknown mark model {kind!r}: use 'standx' or 'mid'")


class MarkState(NamedTuple):
    """The book, mark and index in force from t until the next state."""

    t: float
    bid: Decimal
    ask: Decimal
    mark: Decimal
    index: Decimal


def replay(model: MarkPrice, market: Market, t0: float, t1: float) -> Iterator[MarkState]:
    """Drive model over market from its book at t0 to t1, engine time = data time, in the engine's
    order: at one instant trades, then book changes, then the tick. Yields the state at t0 and
    after every event."""
    book = market.book_at(t0)
    bid, ask = book.bid, book.ask
    model.on_book(t0, bid, ask)
    yield MarkState(t0, bid, ask, model.mark, model.index)
    trades = market.trades_between(t0, t1)
    books = market.book_changes_between(t0, t1)
    i = j = 0
    while True:
        t_trade = trades[i].ts if i < len(trades) else math.inf
        t_book = books[j].ts if j < len(books) else math.inf
        t_tick = model.next_update()
        t_tick = t_tick if t_tick <= t1 else math.inf
        t = min(t_trade, t_book, t_tick)
        if t == math.inf:
            return
        if t_trade == t:
            model.on_trade(t, trades[i].price)
            i += 1
        elif t_book == t:
            bid, ask = books[j].bid, books[j].ask
            model.on_book(t, bid, ask)
            j += 1
        else:
            model.update(t)
        yield MarkState(t, bid, ask, model.mark, model.index)
