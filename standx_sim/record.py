"""`python -m standx_sim record`: StandX's public market stream captured in the recorded-data format.

It connects to the market stream without a login, subscribes to ``depth_book`` and
``public_trade`` of one symbol, and writes the two files RecordedMarket replays (the format of
../shared/market_data):

- ``PREFIX.bbo.csv.gz``: ``ts_ms,bid,ask,bid_qty,ask_qty``, a row each time the best bid, the
  best ask or their sizes change;
- ``PREFIX.trades.csv.gz``: ``ts_ms,price,qty,taker_side``, every public trade.

``ts_ms`` is the exchange's time from the frame (an ISO-8601 string, or Unix seconds or
milliseconds) and the local receive time when a frame has none. The replay refuses rows that go
back in time, and the exchange's clock can disagree by a few milliseconds between frames (or
with ours, after a frame without time), so a row never goes before the previous row of its
file: it takes that row's time instead.

A dropped connection is reopened with an exponential backoff (1 s doubling to 60 s, with
jitter), at most 30 new connections a rolling minute (StandX's limit per IP). While it is down
the replay holds the last book, as the recorded hours do over gaps. The library never imports
the daemon: this is its own small client on websockets' synchronous API.
"""
from __future__ import annotations

import collections
import csv
import gzip
import json
import logging
import os
import random
import re
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, NamedTuple
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from .market import BBO_COLUMNS, TRADE_COLUMNS

log = logging.getLogger(__name__)

DEFAULT_URL = "wss://perps.standx.com/ws-stream/v1"
CHANNELS = ("depth_book", "public_trade")
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
CONNECTS_PER_WINDOW = 30  # StandX: at most 30 new connections per minute from one IP
CONNECT_WINDOW_S = 60.0
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
# How often the loops look at the stop flag and the clock: a Ctrl-C is honoured within this.
SLICE_S = 0.25
# websockets' own keepalive pings find a dead socket: no pong within PING_TIMEOUT_S closes it,
# so a silent connection is given up within PING_INTERVAL_S + PING_TIMEOUT_S (StandX's own
# pings, every 10 s, are answered by the library).
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ISO_TIME = re.compile(r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?")
# A Unix time below this many units is in seconds, above it in milliseconds (1e11 s is the year 5138).
SECONDS_BELOW = 1e11


class RecordError(Exception):
    """The recording cannot go on; exit_code 2 when the arguments were at fault."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Book(NamedTuple):
    bid: Decimal
    ask: Decimal
    bid_qty: Decimal
    ask_qty: Decimal


class Summary(NamedTuple):
    seconds: float
    book_rows: int
    trades: int
    ignored: int       # frames that were neither our depth_book nor our public_trade, or malformed
    connections: int
    down_s: float      # time without a subscribed connection after the first one


# ---- reading frames --------------------------------------------------------------------------

def finite_decimal(value: Any) -> Decimal:
    """A finite decimal from a string or a number, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"not a number: {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return number


def positive_decimal(value: Any) -> Decimal:
    number = finite_decimal(value)
    if number <= 0:
        raise ValueError(f"not a positive number: {value!r}")
    return number


def _best_level(levels: Any, best: Callable) -> tuple[Decimal, Decimal] | None:
    """The best (price, qty) of one side by `best` (max for bids, min for asks); a level of qty 0
    is a removed level, not a price. None for an empty side."""
    if not isinstance(levels, list):
        raise ValueError("levels must be a list")
    found = []
    for level in levels:
        if not isinstance(level, list) or len(level) < 2:
            raise ValueError(f"bad level: {level!r}")
        qty = finite_decimal(level[1])
        if qty < 0:
            raise ValueError(f"negative size: {level!r}")
        if qty > 0:
            found.append((positive_decimal(level[0]), qty))
    return best(found) if found else None


def top_of_book(data: Any) -> Book | None:
    """The best bid and ask with their sizes from depth_book data (levels may come unsorted);
    None when a side is empty. Locked or crossed books are kept, as the replay expects."""
    if not isinstance(data, dict):
        raise ValueError("depth_book data must be an object")
    bid = _best_level(data.get("bids"), max)
    ask = _best_level(data.get("asks"), min)
    if bid is None or ask is None:
        return None
    return Book(bid[0], ask[0], bid[1], ask[1])


def exchange_ms(value: Any, received_ms: int) -> int:
    """The frame's time in Unix milliseconds: an ISO-8601 string (UTC unless it says otherwise)
    or a Unix time in seconds or milliseconds; the receive time when it has none or is unreadable."""
    if value is None:
        return received_ms
    try:
        if isinstance(value, str) and not ISO_TIME.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value * 1000 if value < SECONDS_BELOW else value)
        return _iso_ms(value.strip())
    except (ValueError, OverflowError, AttributeError):
        log.debug("unreadable time %r: the receive time is used", value)
        return received_ms


def _iso_ms(text: str) -> int:
    """Unix milliseconds of an ISO-8601 time; written out so that Python 3.10, whose
    fromisoformat takes neither "Z" nor nine fraction digits, reads what the exchange sends."""
    match = ISO_TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"not an ISO-8601 time: {text!r}")
    base, fraction, zone = match.groups()
    micros = (fraction or "").ljust(6, "0")[:6]
    zone = "+00:00" if zone in (None, "Z") else zone[:3] + ":" + zone[-2:]
    moment = datetime.fromisoformat(f"{base.replace(' ', 'T')}.{micros}{zone}")
    return (moment - EPOCH) // timedelta(milliseconds=1)


def refusal(frame: dict) -> str | None:
    """The message of an error answer to our subscriptions ({"code": 400, "message": ...}), else None."""
    code = frame.get("code")
    if "channel" in frame or code in (None, 0, 200):
        return None
    return f"{code} {frame.get('message', '')}".strip()


# ---- writing files ---------------------------------------------------------------------------

class RecordingFiles:
    """The two gzip CSV files of one recording, a row at a time; close() completes them."""

    def __init__(self, prefix: str) -> None:
        self.paths = output_paths(prefix)
        self._files = [gzip.open(path, "wt", newline="") for path in self.paths]
        self._books, self._trades = (csv.writer(f, lineterminator="\n") for f in self._files)
        self._books.writerow(BBO_COLUMNS)
        self._trades.writerow(TRADE_COLUMNS)
        self._last_book: Book | None = None
        self._book_ms = self._trade_ms = 0
        self.book_rows = self.trade_rows = 0

    def book(self, ts_ms: int, book: Book) -> bool:
        """Write the book if its top differs from the last one written; True if it did."""
        if book == self._last_book:
            return False
        self._book_ms = max(ts_ms, self._book_ms)
        self._books.writerow([self._book_ms, *book])
        self._last_book = book
        self.book_rows += 1
        return True

    def trade(self, ts_ms: int, price: Decimal, qty: Decimal, taker_side: str) -> None:
        self._trade_ms = max(ts_ms, self._trade_ms)
        self._trades.writerow([self._trade_ms, price, qty, taker_side])
        self.trade_rows += 1

    def close(self) -> None:
        for f in self._files:
            f.close()

    def discard(self) -> None:
        """Close and remove both files: nothing that could be replayed was recorded."""
        self.close()
        for path in self.paths:
            path.unlink(missing_ok=True)


# ---- connection pacing -----------------------------------------------------------------------

class ConnectionBudget:
    """At most `limit` new connections in any rolling `window_s`."""

    def __init__(self, limit: int = CONNECTS_PER_WINDOW, window_s: float = CONNECT_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._opened: collections.deque[float] = collections.deque()

    def wait_s(self, now: float) -> float:
        """How long until one more connection is allowed (0: now)."""
        while self._opened and self._opened[0] <= now - self.window_s:
            self._opened.popleft()
        return 0.0 if len(self._opened) < self.limit else self._opened[0] + self.window_s - now

    def spend(self, now: float) -> None:
        self._opened.append(now)


class Backoff:
    """Exponential backoff with jitter: first_s doubling up to max_s, each delay drawn between
    half and all of it so that recorders dropped together do not come back together."""

    def __init__(self, first_s: float = FIRST_BACKOFF_S, max_s: float = MAX_BACKOFF_S,
                 rng: random.Random | None = None) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._rng = rng or random.Random()
        self._failures = 0

    def next_s(self) -> float:
        ceiling = min(self.max_s, self.first_s * 2 ** min(self._failures, 32))
        self._failures += 1
        return ceiling * (0.5 + self._rng.random() / 2)

    def reset(self) -> None:
        self._failures = 0


# ---- the recorder ----------------------------------------------------------------------------

class Recorder:
    """One recording: connect, subscribe, write frames, reconnect on a drop, until the time is up
    or stop() says so."""

    def __init__(self, url: str, symbol: str, files: RecordingFiles, seconds: float,
                 stop: Callable[[], bool] = lambda: False, *, say: Callable[[str], None] = print,
                 progress_every_s: float = 60.0, backoff: Backoff | None = None,
                 budget: ConnectionBudget | None = None) -> None:
        self.url = url
        self.symbol = symbol
        self.files = files
        self.seconds = seconds
        self._stop = stop
        self._say = say
        self._progress_every_s = progress_every_s
        self._backoff = backoff or Backoff()
        self._budget = budget or ConnectionBudget()
        self.ignored = 0
        self.connections = 0
        self._down_s = 0.0
        self._started = self._ends = self._next_progress = time.monotonic()  # run() sets them

    def run(self) -> Summary:
        """Record for `seconds` (or until stop()); raise RecordError when the first connection
        fails or the stream refuses the subscription."""
        self._started = time.monotonic()
        self._ends = self._started + self.seconds
        self._next_progress = self._started + self._progress_every_s
        while not self._over():
            ws = self._open(first=self.connections == 0)
            if ws is None:
                continue
            if self.connections == 1:
                self._say(f"recording {self.symbol} from {self.url} for {self.seconds:g} s (Ctrl-C stops)")
            self._session(ws)
        return Summary(time.monotonic() - self._started, self.files.book_rows, self.files.trade_rows,
                       self.ignored, self.connections, self._down_s)

    def _over(self) -> bool:
        return self._stop() or time.monotonic() >= self._ends

    def _open(self, first: bool) -> ClientConnection | None:
        """A new connection, within the connection budget; None (after the backoff) when it
        failed and may be retried."""
        down_since = time.monotonic()
        self._pause(self._budget.wait_s(down_since))
        if self._over():
            return None
        self._budget.spend(time.monotonic())
        try:
            ws = connect(self.url, open_timeout=OPEN_TIMEOUT_S, close_timeout=CLOSE_TIMEOUT_S,
                         ping_interval=PING_INTERVAL_S, ping_timeout=PING_TIMEOUT_S)
        except (OSError, WebSocketException) as exc:
            if first:
                raise RecordError(f"cannot connect to {self.url}: {exc}") from None
            delay = self._backoff.next_s()
            log.warning("cannot reconnect to %s (%s); next try in %.1f s", self.url, exc, delay)
            self._pause(delay)
            self._down_s += time.monotonic() - down_since
            return None
        self.connections += 1
        if not first:
            self._down_s += time.monotonic() - down_since
        return ws

    def _session(self, ws: ClientConnection) -> None:
        """Subscribe and read one connection until the end of the recording or a drop; close it
        either way."""
        opened = time.monotonic()
        try:
            with ws:
                for channel in CHANNELS:
                    ws.send(json.dumps({"subscribe": {"channel": channel, "symbol": self.symbol}}))
                self._receive(ws)
        except ConnectionClosed as exc:
            # A connection that stayed up a while was a success: the next drop starts over at 1 s.
            if time.monotonic() - opened >= MAX_BACKOFF_S:
                self._backoff.reset()
            delay = self._backoff.next_s()
            log.warning("the stream dropped (%s); reconnecting in %.1f s", exc, delay)
            dropped = time.monotonic()
            self._pause(delay)
            self._down_s += time.monotonic() - dropped

    def _receive(self, ws: ClientConnection) -> None:
        while not self._over():
            self._progress()
            try:
                text = ws.recv(timeout=max(0.0, min(SLICE_S, self._ends - time.monotonic())))
            except TimeoutError:
                continue
            self.handle(text, int(time.time() * 1000))

    def _pause(self, seconds: float) -> None:
        """Sleep up to `seconds` in slices, cut short by the end of the recording; progress
        lines keep their minute meanwhile."""
        until = time.monotonic() + seconds
        while not self._over() and time.monotonic() < until:
            self._progress()
            time.sleep(max(0.0, min(SLICE_S, until - time.monotonic())))

    def _progress(self) -> None:
        now = time.monotonic()
        if now < self._next_progress:
            return
        elapsed = self._next_progress - self._started
        self._next_progress += self._progress_every_s
        self._say(f"{elapsed:g} s: {self.files.book_rows} book rows, {self.files.trade_rows} trades, "
                  f"{max(0, self.connections - 1)} reconnects")

    def handle(self, text: str | bytes, received_ms: int) -> None:
        """Write what one frame says about our symbol's book or trades; anything else, or a
        malformed frame, is counted and ignored. A refusal of the subscription raises RecordError."""
        try:
            frame = json.loads(text)
        except ValueError:
            frame = None
        if not isinstance(frame, dict):
            self._ignore("not a JSON object", text)
            return
        refused = refusal(frame)
        if refused is not None:
            raise RecordError(f"the stream refused the subscription to {self.symbol}: {refused}", exit_code=2)
        channel, data = frame.get("channel"), frame.get("data")
        if frame.get("symbol", self.symbol) != self.symbol or channel not in CHANNELS:
            self._ignore("not our channels", text)
            return
        try:
            if channel == "depth_book":
                self._book(data, received_ms)
            else:
                self._trade(data, received_ms)
        except ValueError as exc:
            self._ignore(str(exc), text)

    def _book(self, data: Any, received_ms: int) -> None:
        book = top_of_book(data)
        if book is None:
            raise ValueError("a side of the book is empty")
        self.files.book(exchange_ms(data.get("time"), received_ms), book)

    def _trade(self, data: Any, received_ms: int) -> None:
        if not isinstance(data, dict):
            raise ValueError("public_trade data must be an object")
        if data.get("symbol", self.symbol) != self.symbol:
            raise ValueError("another symbol's trade")
        side = data.get("taker_side")
        if side not in ("buy", "sell"):
            raise ValueError(f"taker_side must be buy or sell, got {side!r}")
        self.files.trade(exchange_ms(data.get("time"), received_ms), positive_decimal(data.get("price")),
                         positive_decimal(data.get("qty")), side)

    def _ignore(self, why: str, text: str | bytes) -> None:
        self.ignored += 1
        log.debug("frame ignored (%s): %.200r", why, text)


# ---- the command -----------------------------------------------------------------------------

SYMBOL = re.compile(r"[A-Z0-9]+-[A-Z0-9]+")


def argument_problem(url: str, symbol: str, prefix: str) -> str | None:
    """What is wrong with the command's arguments, in one line, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        return f"--url must be a ws:// or wss:// URL, got {url!r}"
    if not SYMBOL.fullmatch(symbol):
        return f"--symbol must be a symbol such as BTC-USD, got {symbol!r}"
    directory = Path(prefix).parent
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        return f"--out: no directory {str(directory)!r} to write into"
    existing = [str(path) for path in output_paths(prefix) if path.exists()]
    if existing:
        return f"--out: {existing[0]} already exists; choose another prefix"
    return None


def output_paths(prefix: str) -> tuple[Path, Path]:
    return Path(f"{prefix}.bbo.csv.gz"), Path(f"{prefix}.trades.csv.gz")


def record_for(url: str, symbol: str, seconds: float, prefix: str, *, stop: Callable[[], bool] = lambda: False,
               say: Callable[[str], None] = print, progress_every_s: float = 60.0,
               backoff: Backoff | None = None) -> Summary:
    """Record `symbol` from the market stream at `url` into PREFIX.bbo.csv.gz and
    PREFIX.trades.csv.gz for `seconds`, or until stop(). However it ends (a RecordError too), the
    files are closed complete; without a single book they could not be replayed, and are removed."""
    files = RecordingFiles(prefix)
    recorder = Recorder(url, symbol, files, seconds, stop, say=say, progress_every_s=progress_every_s,
                        backoff=backoff)
    try:
        return recorder.run()
    finally:
        if files.book_rows:
            files.close()
        else:
            files.discard()


def summary_line(symbol: str, prefix: str, summary: Summary) -> str:
    reconnects = max(0, summary.connections - 1)
    written = "wrote {} and {}".format(*output_paths(prefix)) if summary.book_rows else "no file written"
    return (f"recorded {symbol} for {summary.seconds:.0f} s: {summary.book_rows} book rows, {summary.trades} "
            f"trades, {reconnects} reconnect{'' if reconnects == 1 else 's'} ({summary.down_s:.1f} s without "
            f"a connection), {summary.ignored} frames ignored; {written}")
