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
- An accepted order stays invisible ("pending") for activation_delay_s (visibility_delay_s
  unless changed), then activates; a cancel takes effect visibility_delay_s after it was
  requested (the order can fill meanwhile). A cancel that takes effect while the order is still
  pending does nothing, as matching does not know the order yet: the order activates later.
- At activation: a market order fills its whole qty at the touch (a buy at the ask, a sell at
  the bid) with the taker fee. A limit order that crosses (buy price >= ask, sell price <= bid)
  is rejected if alo, else fills its whole qty at the touch with the taker fee. A limit order
  that does not cross rests (status "new") if gtc/alo and is cancelled if ioc.
- A resting order fills in full at its own price with the maker fee as soon as the book reaches
  it (best ask <= buy price, best bid >= sell price) or a trade prints at or through it from the
  other side (a seller-taker trade at or below a buy, a buyer-taker trade at or above a sell).
  No queue position and no partial fills from the market: a touch fills everything. That is
  optimistic about fills, so inventory risk looks worse than live, never better. Our orders do
  not change the replayed book, and there is no depth: market orders of any size fill at the
  touch. Partial fills come only from fill_resting (a test control): the order is then
  "partially_filled" and keeps resting, live, with the remainder.
- reduce_only: at activation the qty is capped to the position minus other live reduce-only
  orders on that side, and the order is rejected if nothing is left to reduce; at fill time it is
  capped again to the position (the remainder is cancelled), so it can never flip a position.
- Margin: a non-reduce-only order needs price * qty / leverage of cross_available at activation,
  else it is rejected ("insufficient margin"). No liquidation, no funding payments.
- Mark price = (bid + ask) / 2 rounded half-even to the tick; the index price equals the mark.
- Positions: signed qty, average entry price, realized PnL on reduction (added to the balance);
  fees are deducted from the balance. reported_position() is what query_positions shows: the
  position as it was position_lag_s ago (0 = now), from a short history of its changes.

Metering (per account, integrated exactly between events): the time with a live buy and a live
sell each of remaining qty >= meter_qty and within 10 bps of the mark (inclusive), from the
account's first appearance (its login) to now; see metrics(). Maker-hour snapshots
(schedule_snapshots): at each scheduled moment, taken in time order with the other events (after
everything at the same instant), every account records min(eligible buy size, eligible sell
size), where a side's eligible size is the total remaining qty of its live orders within 10 bps
of the mark; see snapshot_values().
"""
from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_EVEN, Decimal

from .clock import Clock
from .market import BookChange, BookTop, Market, Trade

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


class RequestError(Exception):
    """A client error, answered with this HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class SymbolSpec:
    """The fields of query_symbol_info for the one simulated symbol."""

    symbol: str = "BTC-USD"
    base_asset: str = "BTC"
    quote_asset: str = "DUSD"
    base_decimals: int = 9
    quote_decimals: int = 9
    price_tick_decimals: int = 1
    qty_tick_decimals: int = 4
    min_order_qty: Decimal = Decimal("0.0001")
    max_order_qty: Decimal = Decimal("100")
    max_position_size: Decimal = Decimal("1000")
    max_open_orders: int = 100
    def_leverage: int = 40
    max_leverage: int = 40
    maker_fee: Decimal = Decimal("0.0001")
    taker_fee: Decimal = Decimal("0.0004")
    price_cap_ratio: Decimal = Decimal("0.3")
    price_floor_ratio: Decimal = Decimal("0.3")

    @property
    def tick(self) -> Decimal:
        return Decimal(1).scaleb(-self.price_tick_decimals)


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

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.fill_qty

    @property
    def fill_avg_price(self) -> Decimal:
        return self.fill_value / self.fill_qty if self.fill_qty else Decimal(0)


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
    filled_qty: Decimal = Decimal(0)
    fees: Decimal = Decimal(0)
    requests: Counter = field(default_factory=Counter)
    max_live: dict[str, int] = field(default_factory=lambda: {"buy": 0, "sell": 0})
    # Longest continuous time with two or more live orders on one side: a duplicate, unless brief.
    max_double_s: dict[str, float] = field(default_factory=lambda: {"buy": 0.0, "sell": 0.0})
    _double_since: dict[str, float | None] = field(default_factory=lambda: {"buy": None, "sell": None})
    snapshots_before_open: int = 0  # maker-hour snapshots taken before this account existed
    snapshots: list[Decimal] = field(default_factory=list)  # one value per snapshot since then

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
    orders: dict[int, Order] = field(default_factory=dict)  # every order ever accepted, by id
    by_cl_ord_id: dict[str, Order] = field(default_factory=dict)
    live: dict[int, Order] = field(default_factory=dict)  # resting orders only (status in RESTING)
    # (engine time, copy of the position) after each change, oldest first; see _record_position.
    position_history: deque[tuple[float, Position]] = field(default_factory=deque)


def quantize(value: Decimal, decimals: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN)


class Exchange:
    """One simulated symbol, many accounts. See the module docstring for the model."""

    def __init__(self, clock: Clock, market: Market, *, default_balance: Decimal | None = Decimal("1000"),
                 visibility_delay_s: float = 0.2, meter_qty: Decimal = Decimal(0),
                 spec: SymbolSpec = SymbolSpec()) -> None:
        self.spec = spec
        self.clock_skew_s = 0.0
        self.activation_delay_s = visibility_delay_s  # for orders accepted from now on
        self.position_lag_s = 0.0  # how old the position query_positions reports is
        self._clock = clock
        self._market = market
        self._default_balance = default_balance
        self._cancel_delay_s = visibility_delay_s
        self._meter_qty = meter_qty
        self._t = clock.now()
        self._data_offset = market.start_ts - self._t
        self._book = market.book_at(market.start_ts)
        self._mark = self._mark_of(self._book)
        self._last_price: Decimal | None = None
        self._accounts: dict[str, Account] = {}
        self._pending: list[tuple[float, int, str, Order]] = []  # (time, seq, kind, order) heap
        self._seq = itertools.count()
        self._snapshot_times: list[float] = []  # sorted; those before _snapshots_taken are done
        self._snapshots_taken = 0
        self._order_ids = itertools.count(1)
        self._position_ids = itertools.count(1)

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
        snaps = self._snapshot_times
        while True:
            t_trade = trades[i].ts - off if i < len(trades) else math.inf
            t_book = books[j].ts - off if j < len(books) else math.inf
            t_engine = self._pending[0][0] if self._pending and self._pending[0][0] <= end else math.inf
            k = self._snapshots_taken
            t_snap = snaps[k] if k < len(snaps) and snaps[k] <= end else math.inf
            t = min(t_trade, t_book, t_engine, t_snap)
            if t == math.inf:
                break
            self._t = min(max(t, self._t), end)  # data-time round trips can be off by a float ulp
            if t_trade == t:
                self._on_trade(trades[i])
                i += 1
            elif t_book == t:
                self._on_book(books[j])
                j += 1
            elif t_engine == t:
                _, _, kind, order = heapq.heappop(self._pending)
                self._on_engine_event(kind, order)
            else:
                self._take_snapshot()
        self._t = end

    def _stamp(self) -> float:
        return self._t + self.clock_skew_s

    # ---- market -----------------------------------------------------------------------

    def _mark_of(self, book: BookTop) -> Decimal:
        return quantize((book.bid + book.ask) / 2, self.spec.price_tick_decimals)

    def book(self) -> BookTop:
        self.advance()
        return self._book

    def mark_price(self) -> Decimal:
        self.advance()
        return self._mark

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
        self._book = BookTop(change.bid, change.ask)
        old_mark, self._mark = self._mark, self._mark_of(self._book)
        touched = set()
        for order in self._live_orders():
            if self._book_reaches(order):
                self._fill(order, order.price, maker=True)
                touched.add(order.address)
        if self._mark != old_mark:  # band membership moves with the mark
            touched.update(a.address for a in self._accounts.values() if a.live or a.meter.flagged)
        self._refresh_meters(touched)

    def _on_trade(self, trade: Trade) -> None:
        self._last_price = trade.price
        touched = set()
        for order in self._live_orders():
            if self._trade_reaches(order, trade):
                self._fill(order, order.price, maker=True)
                touched.add(order.address)
        self._refresh_meters(touched)

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
        self._on_book(BookChange(self._t + self._data_offset, book.bid, book.ask))

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
        return self._account(address)

    def _account(self, address: str) -> Account:
        key = address.lower()
        acct = self._accounts.get(key)
        if acct is None:
            acct = Account(key, self._default_balance, self.spec.def_leverage,
                           Meter(since=self._t, snapshots_before_open=self._snapshots_taken))
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
        """Accept an order; it activates visibility_delay_s later (see the fill model)."""
        acct = self.account(address)
        if cl_ord_id in acct.by_cl_ord_id:
            raise RequestError(400, "duplicate cl_ord_id")
        now = self._stamp()
        order = Order(next(self._order_ids), acct.address, cl_ord_id, self.spec.symbol, side, order_type,
                      time_in_force, price, qty, reduce_only, acct.leverage, acct.margin_mode, now, now)
        acct.orders[order.id] = order
        acct.by_cl_ord_id[cl_ord_id] = order
        acct.meter.orders_placed += 1
        self._schedule("activate", order, self.activation_delay_s)
        return order

    def request_cancel(self, address: str, order_id: int | None = None, cl_ord_id: str | None = None) -> None:
        """Cancel one order after the delay; 404 if this account never placed it."""
        acct = self.account(address)
        order = self._lookup(acct, order_id, cl_ord_id)
        if order is None:
            raise RequestError(404, "order not found")
        acct.meter.cancel_requests += 1
        self._schedule("cancel", order, self._cancel_delay_s)

    def request_cancels(self, address: str, order_ids: list[int] | None = None,
                        cl_ord_ids: list[str] | None = None) -> None:
        """Batch cancel; ids this account never placed are ignored."""
        acct = self.account(address)
        found = [acct.orders.get(i) for i in order_ids or []] + [acct.by_cl_ord_id.get(c) for c in cl_ord_ids or []]
        for order in filter(None, found):
            acct.meter.cancel_requests += 1
            self._schedule("cancel", order, self._cancel_delay_s)

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

    def _on_engine_event(self, kind: str, order: Order) -> None:
        if kind == "activate":
            self._activate(order)
        elif order.status in RESTING:  # a pending order is not known to matching yet: nothing to cancel
            self._close(order, "canceled")
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
        acct.live[order.id] = order
        self._count_live(acct, order.side)

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
        order.status = status
        order.updated_at = self._stamp()
        if remark:
            order.remark = remark
        acct = self._accounts[order.address]
        if acct.live.pop(order.id, None) is not None:
            self._count_live(acct, order.side)
        meter = acct.meter
        if status == "rejected":
            meter.orders_rejected += 1
            log.debug("order %s rejected: %s", order.cl_ord_id, remark)
        elif status == "canceled":
            meter.orders_cancelled += 1

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
        self._apply_fill(acct, order.side, qty, price, fee)
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

    def _apply_fill(self, acct: Account, side: str, qty: Decimal, price: Decimal, fee: Decimal) -> None:
        pos = acct.position
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

    def schedule_snapshots(self, times: list[float]) -> None:
        """Take a maker-hour snapshot at each of these clock times (see the module docstring).

        Times already passed are refused: a snapshot must see the state at its moment.
        """
        self.advance()
        times = sorted(float(t) for t in times)
        if times and times[0] < self._t:
            raise ValueError(f"snapshot time {times[0]} is before the engine's time {self._t}")
        pending = self._snapshot_times[self._snapshots_taken:]
        self._snapshot_times = self._snapshot_times[:self._snapshots_taken] + sorted(pending + times)

    def _take_snapshot(self) -> None:
        self._snapshots_taken += 1
        for acct in self._accounts.values():
            eligible = {side: Decimal(0) for side in SIDES}
            for o in acct.live.values():
                if self._in_band(o.price):
                    eligible[o.side] += o.remaining
            acct.meter.snapshots.append(min(eligible["buy"], eligible["sell"]))

    def snapshot_values(self, address: str) -> list[Decimal]:
        """One value per snapshot taken so far: min(eligible buy, eligible sell) of this account
        (0 for snapshots taken before the account existed). Uncapped: capping each side at C is
        the same as capping this minimum at C."""
        acct = self._known(address)
        return [Decimal(0)] * acct.meter.snapshots_before_open + list(acct.meter.snapshots)

    def metrics(self, address: str) -> dict:
        """Counters and uptime of one account since its first appearance.

        Keys: elapsed_s, two_sided_s, two_sided_uptime (fraction of elapsed_s), buy_in_band_s,
        sell_in_band_s, orders_placed, orders_rejected, orders_cancelled, cancel_requests, fills,
        maker_fills, taker_fills, filled_qty, realized_pnl, fees, upnl, position_qty, balance,
        requests (path -> count), requests_total, max_live_orders ({"buy": n, "sell": n}),
        max_double_s ({"buy": s, "sell": s}: the longest time with 2+ live orders on a side).
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
