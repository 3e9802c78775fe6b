"""The exchange engine: accounts, orders, matching against a replayed market, positions, fees
and uptime metering.

The engine is pure and driven by a clock: every public method first advances it to
``clock.now()``, applying in time order the market's trades and book changes and the engine's
own delayed events (order activations, cancels). At equal timestamps trades come first (a
recorded book row at the same millisecond usually shows the book after the trade), then book
changes, then the engine's events. The engine never sleeps and never reads wall time.

Time. Engine events run on the clock; the market is read in data time, data time =
clock time + (market.start_ts - clock time at construction), so a backtest whose virtual clock
starts at the data's start_ts replays it 1:1, and a server started now replays the data from its
first row. Timestamps the exchange reports (created_at, signature checks, Date headers) are
``exchange_time()`` = clock + clock_skew_s.

Fill model:
- Timing (delays.py). An accepted order stays invisible ("pending") until it activates; a cancel
  takes effect some time after it was requested (the order can fill meanwhile). By default
  (visibility_delay_s None) each order's delay and each cancel's are drawn from StandX-like
  distributions seeded by `seed` (orders: median about 0.2 s, 5 % over 1 s, 0.5 % over 3 s, at
  most 6 s; cancels shorter), and 0.2 % of accepted orders are rejected in matching (status
  "rejected", remark "rejected in matching") when they would have activated. A number
  visibility_delay_s gives every order and cancel that fixed delay and no such rejections.
  activation_delay_s, when set (a fault), is the delay of the orders accepted from then on
  (cancels keep theirs). A cancel that takes effect while the order is still pending does
  nothing, as matching does not know the order yet: the order activates later.
- At activation: a market order fills its whole qty at the touch (a buy at the ask, a sell at
  the bid) with the taker fee. A limit order that crosses (buy price >= ask, sell price <= bid)
  is rejected if alo, else fills its whole qty at the touch with the taker fee. A limit order
  that does not cross rests (status "new") if gtc/alo and is cancelled if ioc.
- A resting order fills at its own price with the maker fee. Queue position (queue=True, the
  default, as StandX matches): the order joins the back of its price level, and queue_ahead,
  the volume ahead of it, follows the recorded size at the best level (BookTop.bid_qty/ask_qty):
  - when it starts resting at the best price on its side, ahead = the size there; inside the
    spread (better than the best), ahead = 0; behind the best (deeper, where quotes 7.5 bps
    away usually are) the size there is unknown: ahead stays unknown until the level becomes
    the best on its side, and is then the size recorded at that moment;
  - while its level is the best, ahead = min(ahead, recorded size): cancels ahead of us shrink
    it, joiners behind us do not grow it; while the best on its side is worse than its price,
    nobody else is at its level: ahead = 0;
  - a trade AT its price by a taker from the other side (a seller-taker print at a buy's price)
    consumes ahead first, then fills the order with what is left of the trade's qty: less than
    the remainder is a partial fill (status "partially_filled", the order keeps resting with
    the remainder). While ahead is unknown such a print does not reach the order: ahead is
    unknown only while its level has not been the best since it rested (whenever the level is
    the best, ahead is known), so others at better prices and at its level came first;
  - a trade THROUGH its price (a seller-taker print below a buy, a buyer-taker print above a
    sell) took the whole level: it fills all that remains, whatever the print's qty (kept
    simple; optimistic when the print was small);
  - the book reaching it (best ask <= buy price, best bid >= sell price) fills all that remains:
    the level is gone.
  Our orders do not change the replayed book: two orders of ours at one price each queue
  against the recorded volume alone, not behind each other. queue=False is the older model for
  tests of other mechanics: any touch (a reaching book, a print at or through the price) fills
  the whole remainder. There is no depth: market orders of any size fill at the touch.
  fill_resting (a test control) fills a given qty of one resting order at once.
- reduce_only: at activation the qty is capped to the position minus other live reduce-only
  orders on that side, and the order is rejected if nothing is left to reduce; at fill time it is
  capped again to the position (the remainder is cancelled), so it can never flip a position.
- Margin: a non-reduce-only order needs price * qty / leverage of cross_available at activation,
  else it is rejected ("insufficient margin"). No liquidation, no funding payments.
- Mark and index prices come from a mark model (mark.py), fed every book change and trade in
  time order: "standx" (the default) is StandX's formula, a median of three prices around an
  index that trails the book, recomputed at a 1 s cadence, so in fast moves the mark sits bps
  away from the book and a quote priced off it can cross; "mid" is the rounded mid, changed at
  once by every book, with the index equal to the mark. Cadence ticks are engine events: at
  one instant trades come first, then book changes, then the mark tick, then the engine's events.
- Positions: signed qty, average entry price, realized PnL on reduction (added to the balance);
  fees are deducted from the balance. reported_position() is what query_positions shows: the
  position as it was position_lag_s ago (0 = now), from a short history of its changes.

Memory. Pending and resting orders are always kept. Final orders (filled, canceled, rejected)
and fill records are forgotten once older than FINAL_RETENTION_S (an hour of exchange time) or
beyond the newest FINAL_KEPT of the account, whichever keeps fewer: checked, oldest first, when
the account closes an order, gets a fill or is asked about, and each goes once, so the cost is
amortised O(1). A forgotten order answers 404 to
query_order and to a cancel, is gone from query_orders, and its cl_ord_id can be used again: a
cl_ord_id is refused as a duplicate only while its order is pending, resting or remembered.

Metering (per account, integrated exactly between events): the time with a live buy and a live
sell each of remaining qty >= meter_qty and within 10 bps of the mark (inclusive), from the
account's first appearance (its login) to now; see metrics(). With a reward programme
(rewards.py), every change of an account's orders or of the mark also records the pair's value
under it (its live orders' remaining qty, weighted by distance from the mark) on the account's
RewardMeter: the programme's score at tick level; see reward_meter().

Listeners (add_listener; the streams of streams.py) are told what changed as it happens, in
engine order, as listener(kind, t, payload) with t the engine time of the change:
- "price" (MarketState): after a book change, a trade, a mark cadence tick or a tick change (the
  state may equal the previous one: a listener compares);
- "trade" (market.Trade): a public trade printed (before the "price" it causes);
- "order" (OrderChange): an order started resting, was partly filled or became final; each is
  followed by "balance" (BalanceChange), the account's figures after the change;
- "position" (PositionChange): a fill changed an account's position (before that fill's "order");
- "cancel" (CancelDone): a requested cancel reached matching, whether or not it took effect.
Payloads hold live objects: a listener reads them at once and must not call back into the
engine's public methods (they advance it). With no listener nothing is built: the hot path pays
one truth test per event.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Callable, NamedTuple

from rewards import Programme, RewardMeter, distance_bps, pair_value

from .clock import Clock
from .delays import FixedTiming, StandXTiming, Timing
from .mark import MarkParams, mark_model
from .market import BookChange, BookTop, Market, Trade
from .symbols import SymbolSpec  # the symbol's rules; re-exported here, where it used to live

log = logging.getLogger(__name__)

BAND_BPS = Decimal(10)
BPS = Decimal("0.0001")
SIDES = ("buy", "sell")
LIVE = "new"
PARTIAL = "partially_filled"  # resting, live, with part of its qty filled
RESTING = (LIVE, PARTIAL)
PENDING = "pending"  # accepted but not yet visible; never shown through the API
POSITION_HISTORY_S = 300.0  # how far back reported_position can look (the longest position lag)
QTY_DECIMALS_MAX = 8  # a fill_resting qty may have up to this many decimals, more than the lot
FINAL_RETENTION_S = 3600.0  # how long final orders and fill records are remembered (exchange time)
FINAL_KEPT = 1000  # and at most this many final orders, and this many fill records, per account


class RequestError(Exception):
    """A client error, answered with this HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Order:
    id: int
    address: str
    cl_ord_id: str
    symbol: str
    side: str
    order_type: str
    time_in_force: str
    price: Decimal | None  # None for market orders
    qty: Decimal
    reduce_only: bool
    leverage: int
    margin_mode: str
    created_at: float  # exchange time
    updated_at: float
    status: str = PENDING
    fill_qty: Decimal = Decimal(0)
    fill_value: Decimal = Decimal(0)  # sum of qty * price over fills, for the average
    remark: str = ""
    # Resting: the volume ahead of it at its price level; None = unknown (behind the best level).
    queue_ahead: Decimal | None = None

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.fill_qty

    @property
    def fill_avg_price(self) -> Decimal:
        return self.fill_value / self.fill_qty if self.fill_qty else Decimal(0)


@dataclass(frozen=True)
class Fill:
    """One fill of one of our orders, as query_trades reports it."""

    id: int  # exchange-wide, increasing
    order_id: int
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    value: Decimal  # price * qty
    fee: Decimal
    fee_asset: str
    pnl: Decimal  # realized by this fill
    created_at: float  # exchange time


@dataclass
class Position:
    id: int
    created_at: float
    updated_at: float
    qty: Decimal = Decimal(0)  # signed: negative = short
    entry_price: Decimal = Decimal(0)
    realized_pnl: Decimal = Decimal(0)


@dataclass
class Meter:
    """Counters and exact time integrals for one account."""

    since: float
    in_band_s: dict[str, float] = field(default_factory=lambda: {"buy": 0.0, "sell": 0.0, "both": 0.0})
    _open_since: dict[str, float | None] = field(default_factory=lambda: {"buy": None, "sell": None, "both": None})
    orders_placed: int = 0
    orders_rejected: int = 0
    orders_cancelled: int = 0
    cancel_requests: int = 0
    fills: int = 0
    maker_fills: int = 0
    taker_fills: int = 0
    orders_filled: int = 0  # orders filled completely
    partial_fills: int = 0  # fill events that left a remainder resting
    filled_after_partial: int = 0  # the fate of those remainders: filled later,
    cancelled_after_partial: int = 0  # or cancelled (resting ones are counted in metrics())
    rejected_in_matching: int = 0
    alo_rejections: int = 0  # post-only orders that would have crossed
    filled_qty: Decimal = Decimal(0)
    fees: Decimal = Decimal(0)
    requests: Counter = field(default_factory=Counter)
    max_live: dict[str, int] = field(default_factory=lambda: {"buy": 0, "sell": 0})
    # Longest continuous time with two or more live orders on one side: a duplicate, unless brief.
    max_double_s: dict[str, float] = field(default_factory=lambda: {"buy": 0.0, "sell": 0.0})
    _double_since: dict[str, float | None] = field(default_factory=lambda: {"buy": None, "sell": None})
    reward: RewardMeter | None = None  # with a reward programme that covers the symbol

    def set_flags(self, t: float, buy: bool, sell: bool) -> None:
        for key, on in (("buy", buy), ("sell", sell), ("both", buy and sell)):
            since = self._open_since[key]
            if on and since is None:
                self._open_since[key] = t
            elif not on and since is not None:
                self.in_band_s[key] += t - since
                self._open_since[key] = None

    def seconds(self, key: str, t: float) -> float:
        since = self._open_since[key]
        return self.in_band_s[key] + (t - since if since is not None else 0.0)

    def count_live(self, t: float, side: str, live: int) -> None:
        self.max_live[side] = max(self.max_live[side], live)
        since = self._double_since[side]
        if live >= 2 and since is None:
            self._double_since[side] = t
        elif live < 2 and since is not None:
            self.max_double_s[side] = max(self.max_double_s[side], t - since)
            self._double_since[side] = None

    def longest_double_s(self, side: str, t: float) -> float:
        since = self._double_since[side]
        return max(self.max_double_s[side], t - since if since is not None else 0.0)

    @property
    def flagged(self) -> bool:
        return self._open_since["buy"] is not None or self._open_since["sell"] is not None


@dataclass
class Account:
    address: str
    balance: Decimal | None
    leverage: int
    meter: Meter
    margin_mode: str = "cross"
    position: Position | None = None
    orders: dict[int, Order] = field(default_factory=dict)  # pending, resting and remembered final orders, by id
    by_cl_ord_id: dict[str, Order] = field(default_factory=dict)
    live: dict[int, Order] = field(default_factory=dict)  # resting orders only (status in RESTING)
    fills: deque[Fill] = field(default_factory=deque)  # oldest first
    closed: deque[Order] = field(default_factory=deque)  # final orders still remembered, oldest first
    # (engine time, copy of the position) after each change, oldest first; see _record_position.
    position_history: deque[tuple[float, Position]] = field(default_factory=deque)


# ---- what listeners are told (see Listeners in the module docstring) ----------------------

class MarketState(NamedTuple):
    """The market as the price and depth streams show it."""
    bid: Decimal
    ask: Decimal
    bid_qty: Decimal
    ask_qty: Decimal
    mark: Decimal
    index: Decimal
    last: Decimal | None  # the last public trade's price; None before the first


class OrderChange(NamedTuple):
    order: Order  # live: read at once
    position_id: int  # its account's position id, 0 before the account's first fill


class PositionChange(NamedTuple):
    address: str
    position: Position  # live: read at once
    leverage: int
    margin_mode: str
    mark: Decimal


class BalanceChange(NamedTuple):
    address: str
    figures: dict[str, Decimal] | None  # as balance_view answers them; None for an unfunded account


class CancelDone(NamedTuple):
    order: Order  # live: read at once
    took_effect: bool  # it was resting and is now cancelled (else it was still pending, or final)


Listener = Callable[[str, float, object], None]  # (kind, engine time, payload)


def quantize(value: Decimal, decimals: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN)


class Exchange:
    """One simulated symbol, many accounts. See the module docstring for the model."""

    def __init__(self, clock: Clock, market: Market, *, default_balance: Decimal | None = Decimal("1000"),
                 visibility_delay_s: float | None = None, meter_qty: Decimal = Decimal(0),
                 spec: SymbolSpec = SymbolSpec(), queue: bool = True, seed: int = 0, mark: str = "standx",
                 mark_params: MarkParams | None = None, reward_programme: Programme | None = None) -> None:
        self.spec = spec
        self.clock_skew_s = 0.0
        self.activation_delay_s: float | None = None  # a fixed delay for orders accepted from now on
        self.position_lag_s = 0.0  # how old the position query_positions reports is
        self._clock = clock
        self._market = market
        self._default_balance = default_balance
        self._timing: Timing = StandXTiming(seed) if visibility_delay_s is None else FixedTiming(visibility_delay_s)
        self._queue = queue
        self._meter_qty = meter_qty
        self._reward = reward_programme
        self._reward_pair = reward_programme.pairs.get(spec.symbol) if reward_programme else None
        self._t = clock.now()
        self._data_offset = market.start_ts - self._t
        self._book = market.book_at(market.start_ts)
        self._marks = mark_model(mark, spec.tick, mark_params)
        self._marks.on_book(self._t, self._book.bid, self._book.ask)
        self._mark = self._marks.mark
        self._last_price: Decimal | None = None
        self._accounts: dict[str, Account] = {}
        self._pending: list[tuple[float, int, str, Order]] = []  # (time, seq, kind, order) heap
        self._seq = itertools.count()
        self._order_ids = itertools.count(1)
        self._fill_ids = itertools.count(1)
        self._position_ids = itertools.count(1)
        self._listeners: list[Listener] = []

    # ---- time -------------------------------------------------------------------------

    def exchange_time(self) -> float:
        """The exchange's own clock, including any injected skew."""
        return self._clock.now() + self.clock_skew_s

    def advance(self) -> None:
        """Apply every market and engine event up to clock.now(), in time order."""
        end = self._clock.now()
        if end <= self._t:
            return
        off = self._data_offset
        trades = self._market.trades_between(self._t + off, end + off)
        books = self._market.book_changes_between(self._t + off, end + off)
        i = j = 0
        while True:
            t_trade = trades[i].ts - off if i < len(trades) else math.inf
            t_book = books[j].ts - off if j < len(books) else math.inf
            t_engine = self._pending[0][0] if self._pending and self._pending[0][0] <= end else math.inf
            t_mark = self._marks.next_update()
            t_mark = t_mark if t_mark <= end else math.inf
            t = min(t_trade, t_book, t_mark, t_engine)
            if t == math.inf:
                break
            self._t = min(max(t, self._t), end)  # data-time round trips can be off by a float ulp
            if t_trade == t:
                self._on_trade(trades[i])
                i += 1
            elif t_book == t:
                self._on_book(books[j])
                j += 1
            elif t_mark == t:
                self._on_mark_tick(t)
            else:
                _, _, kind, order = heapq.heappop(self._pending)
                self._on_engine_event(kind, order)
        self._t = end

    def _stamp(self) -> float:
        return self._t + self.clock_skew_s

    # ---- listeners --------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Tell `listener` every change from now on (Listeners in the module docstring)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def _notify(self, kind: str, payload: object) -> None:
        for listener in self._listeners:
            listener(kind, self._t, payload)

    def market_state(self) -> MarketState:
        """The market now, as a "price" event would tell it."""
        self.advance()
        return self._market_state()

    def _market_state(self) -> MarketState:
        book = self._book
        return MarketState(book.bid, book.ask, book.bid_qty, book.ask_qty, self._mark, self._marks.index,
                           self._last_price)

    def _notify_order(self, order: Order) -> None:
        """An order changed: tell it, then its account's balance after the change."""
        acct = self._accounts[order.address]
        self._notify("order", OrderChange(order, acct.position.id if acct.position else 0))
        self._notify("balance", BalanceChange(acct.address, self._balance_figures(acct)))

    def set_spec(self, spec: SymbolSpec) -> None:
        """The symbol's rules change from now on (StandX can change a tick or lot at runtime):
        new orders are checked against them; orders already accepted keep their price and qty."""
        if spec.symbol != self.spec.symbol:
            raise ValueError(f"the exchange trades {self.spec.symbol}, not {spec.symbol}")
        self.advance()  # what happened before the change happened under the old rules
        self.spec = spec
        self._marks.set_tick(spec.tick)
        self._mark = self._marks.mark  # on the new grid at once: metering and checks use it
        if self._listeners:
            self._notify("price", self._market_state())
        self._refresh_meters(self._quoting_accounts())

    # ---- market -----------------------------------------------------------------------

    def book(self) -> BookTop:
        self.advance()
        return self._book

    def mark_price(self) -> Decimal:
        self.advance()
        return self._mark

    def index_price(self) -> Decimal:
        self.advance()
        return self._marks.index

    def last_price(self) -> Decimal | None:
        self.advance()
        return self._last_price

    def fill_resting(self, address: str, cl_ord_id: str, qty: Decimal) -> None:
        """Test control: a taker trades qty against one resting order of ours at its price, a
        maker fill. qty may be less than what is left (a partial fill: the order keeps resting)
        and may have more decimals than the lot, up to QTY_DECIMALS_MAX, as StandX's positions do."""
        acct = self._known(address)
        order = acct.by_cl_ord_id.get(cl_ord_id)
        if order is None or order.id not in acct.live:
            raise ValueError(f"no resting order {cl_ord_id!r} for {acct.address}")
        qty = Decimal(qty)
        if not 0 < qty <= order.remaining:
            raise ValueError(f"qty must be > 0 and at most what is left of the order ({order.remaining})")
        if qty.as_tuple().exponent < -QTY_DECIMALS_MAX:
            raise ValueError(f"qty has more than {QTY_DECIMALS_MAX} decimals")
        self._fill(order, order.price, maker=True, qty=qty)
        self._refresh_meters({acct.address})

    def _live_orders(self) -> list[Order]:
        return [o for acct in self._accounts.values() for o in acct.live.values()]

    def _on_book(self, change: BookChange) -> None:
        self._book = BookTop(change.bid, change.ask, change.bid_qty, change.ask_qty)
        mark_moved = self._marks.on_book(self._t, change.bid, change.ask)
        self._mark = self._marks.mark
        if self._listeners:
            self._notify("price", self._market_state())
        touched = set()
        for order in self._live_orders():
            if self._book_reaches(order):
                self._fill(order, order.price, maker=True)
                touched.add(order.address)
            else:
                self._requeue(order)
        if mark_moved:
            touched.update(self._quoting_accounts())
        self._refresh_meters(touched)

    def _on_mark_tick(self, t: float) -> None:
        if self._marks.update(t):
            self._mark = self._marks.mark
            self._refresh_meters(self._quoting_accounts())
        if self._listeners:  # the index moves at every tick, the mark not always
            self._notify("price", self._market_state())

    def _quoting_accounts(self) -> set[str]:
        """Accounts whose band membership a mark move can change."""
        return {a.address for a in self._accounts.values() if a.live or a.meter.flagged}

    def _on_trade(self, trade: Trade) -> None:
        self._last_price = trade.price
        self._marks.on_trade(self._t, trade.price)
        if self._listeners:
            self._notify("trade", trade)
            self._notify("price", self._market_state())
        touched = set()
        for order in self._live_orders():
            qty = self._trade_fill_qty(order, trade)
            if qty > 0:
                self._fill(order, order.price, maker=True, qty=qty)
                touched.add(order.address)
        self._refresh_meters(touched)

    def _best_level(self, side: str) -> tuple[Decimal, Decimal]:
        """(price, recorded size) of the best level on this side of the book."""
        book = self._book
        return (book.bid, book.bid_qty) if side == "buy" else (book.ask, book.ask_qty)

    @staticmethod
    def _better(side: str, price: Decimal, than: Decimal) -> bool:
        """Whether price is a more aggressive quote than `than` on this side."""
        return price > than if side == "buy" else price < than

    def _ahead_on_arrival(self, order: Order) -> Decimal | None:
        """The volume ahead of an order that starts resting (None: unknown, see the fill model)."""
        best, size = self._best_level(order.side)
        if not self._queue or self._better(order.side, order.price, best):
            return Decimal(0)
        return size if order.price == best else None

    def _requeue(self, order: Order) -> None:
        """The book changed without reaching the order: what is ahead of it can only shrink."""
        best, size = self._best_level(order.side)
        if order.price == best:
            order.queue_ahead = size if order.queue_ahead is None else min(order.queue_ahead, size)
        elif self._better(order.side, order.price, best):
            order.queue_ahead = Decimal(0)  # nobody else is left at its price

    def _trade_fill_qty(self, order: Order, trade: Trade) -> Decimal:
        """How much of the order a public trade fills (0: none), using up the volume ahead of it."""
        if not self._trade_reaches(order, trade):
            return Decimal(0)
        if not self._queue or trade.price != order.price:
            return order.remaining  # a touch, or a print through its price: the whole level traded
        if order.queue_ahead is None:
            return Decimal(0)  # its level has not been the best since it rested: others come first
        filled = min(order.remaining, max(trade.qty - order.queue_ahead, Decimal(0)))
        order.queue_ahead = max(order.queue_ahead - trade.qty, Decimal(0))
        return filled

    def _book_reaches(self, order: Order) -> bool:
        if order.side == "buy":
            return self._book.ask <= order.price
        return self._book.bid >= order.price

    @staticmethod
    def _trade_reaches(order: Order, trade: Trade) -> bool:
        if order.side == "buy":
            return trade.taker_side == "sell" and trade.price <= order.price
        return trade.taker_side == "buy" and trade.price >= order.price

    def _apply_price_offset(self, delta: Decimal) -> None:
        self._market.price_offset += delta
        book = self._market.book_at(self._t + self._data_offset)
        self._on_book(BookChange(self._t + self._data_offset, *book))

    def shift_bps(self, bps: float) -> None:
        """Test control: move the whole market by bps (rounded to the tick) from now on."""
        self.advance()
        mid = (self._book.bid + self._book.ask) / 2
        self._apply_price_offset(quantize(mid * Decimal(str(bps)) * BPS, self.spec.price_tick_decimals))

    def set_mid(self, price: Decimal) -> None:
        """Test control: move the whole market so its mid is price (as near as the tick allows)."""
        self.advance()
        mid = (self._book.bid + self._book.ask) / 2
        self._apply_price_offset(quantize(Decimal(price) - mid, self.spec.price_tick_decimals))

    def add_trade(self, price: Decimal, qty: Decimal, taker_side: str) -> None:
        """Test control: a public trade prints now (it can fill resting orders)."""
        if taker_side not in SIDES:
            raise ValueError("taker_side must be buy or sell")
        self.advance()
        self._on_trade(Trade(self._t + self._data_offset, Decimal(price), Decimal(qty), taker_side))

    # ---- accounts ---------------------------------------------------------------------

    def account(self, address: str) -> Account:
        """The account of a wallet address, opened (with the default balance) on first sight."""
        self.advance()
        acct = self._account(address)
        self._forget_old(acct)
        return acct

    def _account(self, address: str) -> Account:
        key = address.lower()
        acct = self._accounts.get(key)
        if acct is None:
            meter = Meter(since=self._t)
            if self._reward and self._reward_pair:
                meter.reward = RewardMeter(self._reward, self._reward_pair)
                meter.reward.record(self._t, 0.0)
            acct = Account(key, self._default_balance, self.spec.def_leverage, meter)
            self._accounts[key] = acct
            log.info("account %s opened with balance %s", key, acct.balance)
        return acct

    def _known(self, address: str) -> Account:
        self.advance()
        acct = self._accounts.get(address.lower())
        if acct is None:
            raise RequestError(404, "unknown account")
        return acct

    def set_balance(self, address: str, amount: Decimal | None) -> None:
        """Test control: set the wallet balance; None makes the account unfunded."""
        self.account(address).balance = None if amount is None else Decimal(amount)

    def count_request(self, address: str, path: str) -> None:
        self.account(address).meter.requests[path] += 1

    def balance_view(self, address: str) -> dict[str, Decimal] | None:
        """query_balance figures, or None for an unfunded account."""
        return self._balance_figures(self.account(address))

    def _balance_figures(self, acct: Account) -> dict[str, Decimal] | None:
        if acct.balance is None:
            return None
        upnl = self._upnl(acct)
        margin = self._position_margin(acct)
        locked = self._locked(acct)
        return {
            "balance": acct.balance, "cross_balance": acct.balance, "cross_margin": margin,
            "cross_upnl": upnl, "locked": locked, "upnl": upnl, "equity": acct.balance + upnl,
            "cross_available": acct.balance - margin - locked + upnl,
            "isolated_balance": Decimal(0), "isolated_upnl": Decimal(0),
            "pnl_freeze": acct.position.realized_pnl if acct.position else Decimal(0),
        }

    def _upnl(self, acct: Account) -> Decimal:
        return self.position_upnl(acct.position) if acct.position else Decimal(0)

    def position_upnl(self, pos: Position) -> Decimal:
        """The unrealized PnL of a position (current or reported) at the current mark."""
        return pos.qty * (self._mark - pos.entry_price)

    def _position_margin(self, acct: Account) -> Decimal:
        pos = acct.position
        return abs(pos.qty) * self._mark / acct.leverage if pos else Decimal(0)

    def _locked(self, acct: Account) -> Decimal:
        return sum((o.price * o.remaining / acct.leverage for o in acct.live.values() if not o.reduce_only),
                   Decimal(0))

    def position(self, address: str) -> Position | None:
        return self.account(address).position

    def reported_position(self, address: str) -> Position | None:
        """The position as query_positions reports it: as it was position_lag_s ago (None: there
        was none yet)."""
        acct = self.account(address)
        if self.position_lag_s <= 0:
            return acct.position
        seen_at = self._t - self.position_lag_s
        return next((pos for t, pos in reversed(acct.position_history) if t <= seen_at), None)

    def upnl(self, address: str) -> Decimal:
        return self._upnl(self.account(address))

    def position_config(self, address: str) -> tuple[int, str]:
        acct = self.account(address)
        return acct.leverage, acct.margin_mode

    def change_leverage(self, address: str, leverage: int) -> None:
        if not 1 <= leverage <= self.spec.max_leverage:
            raise RequestError(400, f"leverage must be between 1 and {self.spec.max_leverage}")
        self.account(address).leverage = leverage

    def change_margin_mode(self, address: str, margin_mode: str) -> None:
        acct = self.account(address)
        if margin_mode == acct.margin_mode:
            return
        if (acct.position and acct.position.qty) or any(o.status in (*RESTING, PENDING) for o in acct.orders.values()):
            raise RequestError(400, "cannot change margin mode with an open position or open orders")
        acct.margin_mode = margin_mode

    # ---- orders -----------------------------------------------------------------------

    def submit_order(self, address: str, *, side: str, order_type: str, qty: Decimal, time_in_force: str,
                     reduce_only: bool, price: Decimal | None, cl_ord_id: str) -> Order:
        """Accept an order; it activates (or is rejected in matching) later (see the fill model)."""
        acct = self.account(address)
        if cl_ord_id in acct.by_cl_ord_id:
            raise RequestError(400, "duplicate cl_ord_id")
        now = self._stamp()
        order = Order(next(self._order_ids), acct.address, cl_ord_id, self.spec.symbol, side, order_type,
                      time_in_force, price, qty, reduce_only, acct.leverage, acct.margin_mode, now, now)
        acct.orders[order.id] = order
        acct.by_cl_ord_id[cl_ord_id] = order
        acct.meter.orders_placed += 1
        timing = self._timing.order()
        delay_s = timing.delay_s if self.activation_delay_s is None else self.activation_delay_s
        self._schedule("reject" if timing.rejected else "activate", order, delay_s)
        return order

    def request_cancel(self, address: str, order_id: int | None = None, cl_ord_id: str | None = None) -> Order:
        """Cancel one order after the delay; 404 if this account never placed it. The order."""
        acct = self.account(address)
        order = self._lookup(acct, order_id, cl_ord_id)
        if order is None:
            raise RequestError(404, "order not found")
        acct.meter.cancel_requests += 1
        self._schedule("cancel", order, self._timing.cancel())
        return order

    def request_cancels(self, address: str, order_ids: list[int] | None = None,
                        cl_ord_ids: list[str] | None = None) -> list[Order]:
        """Batch cancel; ids this account never placed are ignored. The orders found, one per
        cancel scheduled."""
        acct = self.account(address)
        found = [acct.orders.get(i) for i in order_ids or []] + [acct.by_cl_ord_id.get(c) for c in cl_ord_ids or []]
        orders = [order for order in found if order is not None]
        for order in orders:
            acct.meter.cancel_requests += 1
            self._schedule("cancel", order, self._timing.cancel())
        return orders

    @staticmethod
    def _lookup(acct: Account, order_id: int | None, cl_ord_id: str | None) -> Order | None:
        return acct.orders.get(order_id) if order_id is not None else acct.by_cl_ord_id.get(cl_ord_id)

    def _schedule(self, kind: str, order: Order, delay_s: float) -> None:
        heapq.heappush(self._pending, (self._t + delay_s, next(self._seq), kind, order))

    def find_order(self, address: str, order_id: int | None = None, cl_ord_id: str | None = None) -> Order | None:
        """A visible order of this account by id or cl_ord_id (None while still pending)."""
        order = self._lookup(self.account(address), order_id, cl_ord_id)
        return order if order is not None and order.status != PENDING else None

    def orders(self, address: str, status: str | None = None) -> list[Order]:
        """Visible orders of this account, newest first, optionally of one status."""
        acct = self.account(address)
        return [o for o in reversed(acct.orders.values())
                if o.status != PENDING and (status is None or o.status == status)]

    def open_orders(self, address: str) -> list[Order]:
        """Resting orders of this account, newest first."""
        return list(reversed(self.account(address).live.values()))

    def trades(self, address: str) -> list[Fill]:
        """This account's fills, newest first (what query_trades lists)."""
        return list(reversed(self.account(address).fills))

    def _on_engine_event(self, kind: str, order: Order) -> None:
        if kind == "activate":
            self._activate(order)
        elif kind == "reject":
            self._accounts[order.address].meter.rejected_in_matching += 1
            self._close(order, "rejected", "rejected in matching")
        else:
            took_effect = order.status in RESTING  # a pending order is not known to matching yet: nothing to cancel
            if took_effect:
                self._close(order, "canceled")
            if self._listeners:
                self._notify("cancel", CancelDone(order, took_effect))
        self._refresh_meters({order.address})

    def _activate(self, order: Order) -> None:
        acct = self._accounts[order.address]
        if order.reduce_only:
            allowed = self._reducible(acct, order.side)
            if allowed <= 0:
                return self._close(order, "rejected", "reduce-only order has nothing to reduce")
            if order.qty > allowed:
                order.qty, order.remark = allowed, "qty reduced to the position size"
        touch = self._book.ask if order.side == "buy" else self._book.bid
        crosses = order.order_type == "market" or self._book_reaches(order)
        if not order.reduce_only and not self._margin_ok(acct, (touch if crosses else order.price) * order.qty):
            return self._close(order, "rejected", "insufficient margin")
        if crosses and order.time_in_force == "alo":
            acct.meter.alo_rejections += 1
            return self._close(order, "rejected", "alo order rejected")
        if crosses:
            self._fill(order, touch, maker=False)
        elif order.time_in_force == "ioc":
            self._close(order, "canceled", "ioc order not filled")
        elif len(acct.live) >= self.spec.max_open_orders:
            self._close(order, "rejected", "too many open orders")
        else:
            self._rest(acct, order)

    def _rest(self, acct: Account, order: Order) -> None:
        order.status = LIVE
        order.updated_at = self._stamp()
        order.queue_ahead = self._ahead_on_arrival(order)
        acct.live[order.id] = order
        self._count_live(acct, order.side)
        if self._listeners:
            self._notify_order(order)

    def _count_live(self, acct: Account, side: str) -> None:
        acct.meter.count_live(self._t, side, sum(o.side == side for o in acct.live.values()))

    @staticmethod
    def _reduce_capacity(acct: Account, side: str) -> Decimal:
        """The position size an order on this side would reduce (0 if it would not reduce)."""
        pos = acct.position.qty if acct.position else Decimal(0)
        return abs(pos) if (side == "sell" and pos > 0) or (side == "buy" and pos < 0) else Decimal(0)

    def _reducible(self, acct: Account, side: str) -> Decimal:
        """How much a new reduce-only order may reduce: the position minus other live reduce-only orders."""
        others = sum((o.remaining for o in acct.live.values() if o.reduce_only and o.side == side), Decimal(0))
        return self._reduce_capacity(acct, side) - others

    def _margin_ok(self, acct: Account, notional: Decimal) -> bool:
        figures = self._balance_figures(acct)
        return figures is not None and figures["cross_available"] >= notional / acct.leverage

    def _close(self, order: Order, status: str, remark: str = "") -> None:
        acct = self._accounts[order.address]
        meter = acct.meter
        after_partial = order.status == PARTIAL
        order.status = status
        order.updated_at = self._stamp()
        if remark:
            order.remark = remark
        if acct.live.pop(order.id, None) is not None:
            self._count_live(acct, order.side)
        if status == "rejected":
            meter.orders_rejected += 1
            log.debug("order %s rejected: %s", order.cl_ord_id, remark)
        elif status == "canceled":
            meter.orders_cancelled += 1
            meter.cancelled_after_partial += after_partial
        else:
            meter.orders_filled += 1
            meter.filled_after_partial += after_partial
        acct.closed.append(order)
        self._forget_old(acct)
        if self._listeners:
            self._notify_order(order)

    def _forget_old(self, acct: Account) -> None:
        """Drop final orders and fill records older than FINAL_RETENTION_S or beyond the newest
        FINAL_KEPT; each goes once, so this is amortised O(1) (see Memory in the module docstring)."""
        horizon = self._stamp() - FINAL_RETENTION_S
        closed = acct.closed
        while closed and (len(closed) > FINAL_KEPT or closed[0].updated_at <= horizon):
            order = closed.popleft()
            del acct.orders[order.id]
            if acct.by_cl_ord_id.get(order.cl_ord_id) is order:
                del acct.by_cl_ord_id[order.cl_ord_id]
        fills = acct.fills
        while fills and (len(fills) > FINAL_KEPT or fills[0].created_at <= horizon):
            fills.popleft()

    def _fill(self, order: Order, price: Decimal, *, maker: bool, qty: Decimal | None = None) -> None:
        """Fill qty of the order (default: all that is left) at price; a reduce-only order only
        as far as the position allows, its remainder then cancelled. A partly filled order rests on."""
        acct = self._accounts[order.address]
        wanted = qty = order.remaining if qty is None else qty
        if order.reduce_only:
            qty = min(qty, self._reduce_capacity(acct, order.side))
            if qty <= 0:
                return self._close(order, "canceled", "reduce-only order has nothing to reduce")
        fee = qty * price * (self.spec.maker_fee if maker else self.spec.taker_fee)
        pnl = self._apply_fill(acct, order.side, qty, price, fee)
        acct.fills.append(Fill(next(self._fill_ids), order.id, order.symbol, order.side, price, qty, price * qty,
                               fee, self.spec.quote_asset, pnl, self._stamp()))
        self._forget_old(acct)
        order.fill_qty += qty
        order.fill_value += qty * price
        meter = acct.meter
        meter.fills += 1
        meter.filled_qty += qty
        if maker:
            meter.maker_fills += 1
        else:
            meter.taker_fills += 1
        log.debug("order %s filled %s @ %s (%s)", order.cl_ord_id, qty, price, "maker" if maker else "taker")
        if order.remaining == 0:
            self._close(order, "filled")
        elif qty < wanted:
            self._close(order, "canceled", "remainder cancelled: position fully reduced")
        else:
            order.status, order.updated_at = PARTIAL, self._stamp()
            meter.partial_fills += 1
            if self._listeners:
                self._notify_order(order)

    def _apply_fill(self, acct: Account, side: str, qty: Decimal, price: Decimal, fee: Decimal) -> Decimal:
        """Update the position and balance for one fill; returns the PnL it realized."""
        pos = acct.position
        pnl = Decimal(0)
        if pos is None:
            pos = acct.position = Position(next(self._position_ids), self._stamp(), self._stamp())
        signed = qty if side == "buy" else -qty
        if pos.qty == 0 or (pos.qty > 0) == (signed > 0):
            new_qty = pos.qty + signed
            pos.entry_price = (abs(pos.qty) * pos.entry_price + qty * price) / abs(new_qty)
            pos.qty = new_qty
        else:
            closed = min(qty, abs(pos.qty))
            pnl = closed * (price - pos.entry_price) * (1 if pos.qty > 0 else -1)
            pos.realized_pnl += pnl
            acct.balance = (acct.balance or Decimal(0)) + pnl
            pos.qty += signed
            if pos.qty == 0:
                pos.entry_price = Decimal(0)
            elif closed < qty:  # flipped: the rest opened a new position at this price
                pos.entry_price = price
        acct.balance = (acct.balance or Decimal(0)) - fee
        acct.meter.fees += fee
        pos.updated_at = self._stamp()
        self._record_position(acct)
        if self._listeners:
            self._notify("position", PositionChange(acct.address, pos, acct.leverage, acct.margin_mode, self._mark))
        return pnl

    def _record_position(self, acct: Account) -> None:
        """Remember the position as it is now, for reported_position, and forget what is older
        than POSITION_HISTORY_S, except the newest such entry: the position as of that horizon."""
        history = acct.position_history
        history.append((self._t, replace(acct.position)))
        while len(history) > 1 and history[1][0] <= self._t - POSITION_HISTORY_S:
            history.popleft()

    # ---- metering ---------------------------------------------------------------------

    def _in_band(self, price: Decimal) -> bool:
        return abs(price - self._mark) * 10000 <= BAND_BPS * self._mark

    def _refresh_meters(self, addresses: set[str]) -> None:
        for address in addresses:
            acct = self._accounts[address]
            ok = {side: False for side in SIDES}
            for o in acct.live.values():
                if o.remaining >= self._meter_qty and self._in_band(o.price):
                    ok[o.side] = True
            acct.meter.set_flags(self._t, ok["buy"], ok["sell"])
            if acct.meter.reward is not None:
                self._record_reward(acct)

    def _record_reward(self, acct: Account) -> None:
        """The pair's value under the reward programme from now on (see rewards.py)."""
        mark = float(self._mark)
        quotes: dict[str, list[tuple[float, float]]] = {"buy": [], "sell": []}
        for o in acct.live.values():
            quotes[o.side].append((distance_bps(float(o.price), mark), float(o.remaining)))
        acct.meter.reward.record(self._t, pair_value(self._reward, self._reward_pair, quotes["buy"], quotes["sell"]))

    def reward_meter(self, address: str) -> RewardMeter | None:
        """The account's reward tally up to now (None without a programme covering the symbol)."""
        acct = self._known(address)
        if acct.meter.reward is not None:
            self._record_reward(acct)
        return acct.meter.reward

    def metrics(self, address: str) -> dict:
        """Counters and uptime of one account since its first appearance.

        Keys: elapsed_s, two_sided_s, two_sided_uptime (fraction of elapsed_s), buy_in_band_s,
        sell_in_band_s, orders_placed, orders_rejected, orders_cancelled, cancel_requests, fills,
        maker_fills, taker_fills, filled_qty, realized_pnl, fees, upnl, position_qty, balance,
        requests (path -> count), requests_total, max_live_orders ({"buy": n, "sell": n}),
        max_double_s ({"buy": s, "sell": s}: the longest time with 2+ live orders on a side).

        The fill report: orders_filled (orders filled completely, maker or taker), partial_fills
        (fill events that left a remainder resting), and what became of the orders with such a
        remainder: filled_after_partial (filled later), cancelled_after_partial (cancelled with
        the remainder), resting_after_partial (still resting, partially filled, now); the three
        add up to the orders that were ever partially filled. A reduce-only fill cut short by the
        position cancels its remainder at once: counted in orders_cancelled, not as partial.
        rejected_in_matching (accepted, then rejected at activation: the random 0.2 %) and
        alo_rejections (post-only orders that would have crossed) are parts of orders_rejected.
        """
        acct = self._known(address)
        meter, pos = acct.meter, acct.position
        elapsed = self._t - meter.since
        both = meter.seconds("both", self._t)
        return {
            "elapsed_s": elapsed,
            "two_sided_s": both,
            "two_sided_uptime": both / elapsed if elapsed > 0 else 0.0,
            "buy_in_band_s": meter.seconds("buy", self._t),
            "sell_in_band_s": meter.seconds("sell", self._t),
            "orders_placed": meter.orders_placed,
            "orders_rejected": meter.orders_rejected,
            "orders_cancelled": meter.orders_cancelled,
            "cancel_requests": meter.cancel_requests,
            "fills": meter.fills,
            "maker_fills": meter.maker_fills,
            "taker_fills": meter.taker_fills,
            "orders_filled": meter.orders_filled,
            "partial_fills": meter.partial_fills,
            "filled_after_partial": meter.filled_after_partial,
            "cancelled_after_partial": meter.cancelled_after_partial,
            "resting_after_partial": sum(o.status == PARTIAL for o in acct.live.values()),
            "rejected_in_matching": meter.rejected_in_matching,
            "alo_rejections": meter.alo_rejections,
            "filled_qty": meter.filled_qty,
            "realized_pnl": pos.realized_pnl if pos else Decimal(0),
            "fees": meter.fees,
            "upnl": self._upnl(acct),
            "position_qty": pos.qty if pos else Decimal(0),
            "balance": acct.balance,
            "requests": dict(meter.requests),
            "requests_total": sum(meter.requests.values()),
            "max_live_orders": dict(meter.max_live),
            "max_double_s": {side: meter.longest_double_s(side, self._t) for side in SIDES},
        }
