"""StandX's WebSocket streams as the simulator serves them (standx_api.md section 6).

Two endpoints, on the same host and port as the REST API:

- ``/ws-stream/v1``, the market stream. ``{"subscribe": {"channel": C, "symbol": S}}`` with C one
  of price, depth_book, public_trade and S the traded symbol (anything else answers
  ``{"code": 400, "message": "invalid request payload"}`` and keeps the socket). A price or
  depth_book subscription is answered at once with the current snapshot. ``{"auth": {"token": T,
  "streams": [{"channel": "order"}, ...]}}`` (streams optional: all of order, position, balance)
  checks T as a REST Bearer token is checked (Api.token_address: known and not expired) and
  answers ``{"seq", "channel": "auth", "data": {"code": 200, "msg": "success"}}``, or code 401
  "invalid token" (the socket then gets no user data). Auth can be sent again, e.g. with the
  token of a new login: the user channels follow the newest token's account. The token is
  checked when it is sent, not again later.
  Server frames are ``{"seq", "channel", "symbol" (public channels), "data"}``, seq counting from
  1 on each connection:
  * price: base, quote, index_price, mark_price, last_price (null before the first trade),
    mid_price, spread [bid, ask], time; sent when any of mark, index, last, bid, ask changed;
  * depth_book: asks [[price, qty]], bids [[price, qty]] (the best level: the simulator has no
    depth), symbol, time; sent when the best level or its size changed;
  * public_trade: price, qty, taker_side ("buy": the buyer took liquidity), time, symbol (the
    field names of the recorded CSVs);
  * order: the row query_order shows (api.order_row), on resting, each partial fill and the end;
  * position: the row query_positions shows (api.position_row), after each fill;
  * balance: account_type "perps", token (the quote asset), free (cross_available), locked
    (margin of resting orders), total (the wallet balance), occupied (margin of the position),
    after every order change and fill. An unfunded account gets none.
  Times are the exchange's (engine time + clock skew), ISO-8601 UTC.
- ``/ws-api/v1``, the order response stream. ``{"session_id", "request_id", "method": "auth:login",
  "params": "{\\"token\\": T}"}`` (params a JSON string) answers ``{"code": 0, "message": "success",
  "request_id"}`` or ``{"code": 401, "message": "invalid token", "request_id"}``; another method
  answers code 400 "unsupported method" (orders go over REST here), a malformed envelope 400
  "invalid request payload". A REST new_order, cancel_order or cancel_orders of the same account
  carrying ``x-session-id`` = that session_id gets, under its x-request-id, ``{"code": 0, "status":
  "accepted"}`` at once, then for an order ``{"code": 0, "message": "success"}`` when it rests,
  fills or ends unfilled (ioc), or ``{"code": 400, "message": <remark>}`` when rejected in matching
  (e.g. "alo order rejected"); for cancels, success once every cancel took effect, else 400
  "order already closed" (an order already final) or "order not active yet" (still pending).

The protocol is Sans-I/O: a StreamSession per connection takes the client's text frames
(receive) and queues the server's in its outbox, each stamped with the engine time it was
produced at; the StreamHub (``sim.streams``) turns the exchange's events (exchange.py,
Listeners) into frames for every session, and listens only while a session is open. Two
transports carry the frames: the HTTP server's sockets (server.py: WebSocket framing, pings,
lifetime, per-IP limits, using StreamLimits and SocketBudget from here), and VirtualFeed, the
backtest's feed in virtual time (each frame delivered latency_s after it was produced).

Faults (hub methods; control endpoints under /_sim/streams, control.py): drop_all (sockets end
without a close frame), close_all (a normal close, 1000), silence (for N seconds nothing is sent,
not even pings, and nothing is read; frames produced meanwhile are lost), pause_data (price,
depth_book and public_trade frames are lost for N seconds; pings and user frames go on),
send_garbage (one raw text frame to every socket), set_limits (StreamLimits). Fault windows run
on the simulator's clock, like fault rules.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
from collections import Counter, deque
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Callable, NamedTuple

from .api import fixed, grid_text, iso_time, money, order_row, position_row
from .clock import Clock, VirtualClock
from .exchange import (RESTING, BalanceChange, CancelDone, Exchange, MarketState, Order, OrderChange,
                       PositionChange)
from .market import Trade
from .ratelimit import LOCAL_CLIENT

if TYPE_CHECKING:
    from .api import Api
    from .simulator import Simulator

log = logging.getLogger(__name__)

MARKET_PATH = "/ws-stream/v1"
API_PATH = "/ws-api/v1"
PATHS = (MARKET_PATH, API_PATH)
PUBLIC_CHANNELS = ("price", "depth_book", "public_trade")
USER_CHANNELS = ("order", "position", "balance")
AUTH_FIELDS = {"token", "streams"}
LOGIN_METHOD = "auth:login"
INVALID_PAYLOAD = "invalid request payload"
PONG_TIMEOUT_CODE = 4008  # StandX says "408"; a close code must be 1000-4999, and 4xxx is for applications
PONG_TIMEOUT_REASON = "disconnecting due to not receive Pong within 5 minute period"
LIFETIME_REASON = "connection lifetime reached"
DROP = (1006, "")  # an end with no close frame at all (1006 is never sent on the wire)
RATE_WINDOW_S = 60.0  # new connections are counted over this rolling window
_encode = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class StreamLimits:
    """StandX's WebSocket limits and timers (standx_api.md sections 5 and 6); faults can change them."""
    max_sockets_per_ip: int = 10
    new_per_minute: int = 30  # new connections per client IP per rolling minute
    lifetime_s: float = 86400.0  # a socket is closed normally (1000) this long after it opened
    ping_interval_s: float = 10.0
    pong_timeout_s: float = 300.0  # a ping unanswered this long closes the socket (4008)

    def __post_init__(self) -> None:
        for name in ("max_sockets_per_ip", "new_per_minute"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be an integer >= 0")
        for name in ("lifetime_s", "ping_interval_s", "pong_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a number of seconds > 0")


LIMIT_FIELDS = frozenset(f.name for f in fields(StreamLimits))


class SocketBudget:
    """Admission of new sockets per client IP: at most max_sockets_per_ip open at once and
    new_per_minute opened per rolling minute (refused handshakes do not count)."""

    def __init__(self) -> None:
        self._open: Counter = Counter()
        self._opened: dict[str, deque[float]] = {}  # open times within the window, oldest first

    def admit(self, client: str, now: float, limits: StreamLimits) -> bool:
        """Whether a socket of `client` may open at `now` (monotonic seconds); counts it if so."""
        recent = self._opened.setdefault(client, deque())
        while recent and recent[0] <= now - RATE_WINDOW_S:
            recent.popleft()
        if self._open[client] >= limits.max_sockets_per_ip or len(recent) >= limits.new_per_minute:
            return False
        recent.append(now)
        self._open[client] += 1
        return True

    def release(self, client: str) -> None:
        """A socket of `client` closed."""
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]


class Outgoing(NamedTuple):
    t: float  # the engine time the frame was produced at
    number: int  # the hub's production order: frames of several sessions merge by (t, number)
    text: str


def _nothing() -> None:
    """What a session calls when it has output, until a transport sets its own."""


def _json_object(text: str) -> dict | None:
    """A client frame's JSON object, or None when it is not one."""
    try:
        obj = json.loads(text)
    except (TypeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


class StreamSession:
    """One client connection's protocol state, Sans-I/O: the transport passes the client's text
    frames to receive() and sends what appears in outbox (calling on_output tells it there is
    some); `ending` is set when a fault or the server asks the transport to end the connection
    ((code, reason), or DROP)."""

    def __init__(self, hub: "StreamHub", path: str, client: str) -> None:
        self.path = path
        self.client = client
        self.outbox: deque[Outgoing] = deque()
        self.on_output: Callable[[], None] = _nothing
        self.ending: tuple[int, str] | None = None
        self.address: str | None = None  # the authenticated account (lowercase), None before auth
        self.session_id: str | None = None  # the ws-api session, once logged in
        self.is_open = True
        self.public: set[str] = set()  # subscribed public channels
        self.user: frozenset[str] = frozenset()  # user channels, while authenticated
        self._hub = hub
        self._seq = itertools.count(1)

    def receive(self, text: str) -> None:
        """A text frame from the client; the answers (if any) are queued."""
        if self._hub.silenced():
            return  # silence: what the client sends is not heard
        if self.path == MARKET_PATH:
            self._receive_market(text)
        else:
            self._receive_api(text)

    def end(self, how: tuple[int, str]) -> None:
        """Ask the transport to end the connection: DROP, or a close frame (code, reason)."""
        if self.ending is None:
            self.ending = how
        self.on_output()

    # ---- output -----------------------------------------------------------------------

    def push_raw(self, t: float, text: str) -> None:
        """Queue a text frame as is, produced at engine time t (lost while silenced)."""
        if not self.is_open or self._hub.silenced():
            return
        self.outbox.append(Outgoing(t, self._hub.next_number(), text))
        self.on_output()

    def push_channel(self, t: float, channel: str, data_json: str, symbol: str | None = None) -> None:
        """A market-stream message of `channel` with its data (already JSON), the next seq."""
        where = "" if symbol is None else f',"symbol":{_encode(symbol)}'
        self.push_raw(t, f'{{"seq":{next(self._seq)},"channel":"{channel}"{where},"data":{data_json}}}')

    def push_json(self, t: float, obj: dict) -> None:
        self.push_raw(t, _encode(obj))

    # ---- /ws-stream/v1 ----------------------------------------------------------------

    def _receive_market(self, text: str) -> None:
        request = _json_object(text)
        if request is not None and len(request) == 1 and "subscribe" in request:
            self._subscribe(request["subscribe"])
        elif request is not None and len(request) == 1 and "auth" in request:
            self._auth(request["auth"])
        else:
            self._invalid(text)

    def _invalid(self, text: str) -> None:
        log.debug("invalid request on %s: %.200r", self.path, text)
        self.push_json(self._hub.now(), {"code": 400, "message": INVALID_PAYLOAD})

    def _subscribe(self, request: object) -> None:
        hub = self._hub
        if (not isinstance(request, dict) or set(request) != {"channel", "symbol"}
                or request["channel"] not in PUBLIC_CHANNELS or request["symbol"] != hub.symbol):
            return self._invalid(str(request))
        channel = request["channel"]
        self.public.add(channel)
        snapshot = hub.snapshot(channel)
        if snapshot is not None:
            self.push_channel(hub.now(), channel, snapshot, hub.symbol)

    def _auth(self, request: object) -> None:
        channels = _user_channels(request)
        if channels is None:
            return self._invalid(str(request))
        address = self._hub.token_address(request["token"])
        self.address, self.user = address, (channels if address is not None else frozenset())
        result = {"code": 200, "msg": "success"} if address is not None else {"code": 401, "msg": "invalid token"}
        log.debug("stream auth on %s: %s", self.client, result["msg"])
        self.push_channel(self._hub.now(), "auth", _encode(result))

    # ---- /ws-api/v1 -------------------------------------------------------------------

    def _receive_api(self, text: str) -> None:
        request = _json_object(text)
        request_id = request.get("request_id") if request is not None else None
        request_id = request_id if isinstance(request_id, str) else None
        if (request is None or request_id is None or not isinstance(request.get("session_id"), str)
                or not isinstance(request.get("params"), str)):
            log.debug("invalid ws-api request: %.200r", text)
            return self.answer(request_id, 400, INVALID_PAYLOAD)
        if request.get("method") != LOGIN_METHOD:
            return self.answer(request_id, 400, "unsupported method")
        params = _json_object(request["params"])
        token = params.get("token") if params is not None else None
        if not isinstance(token, str):
            return self.answer(request_id, 400, INVALID_PAYLOAD)
        address = self._hub.token_address(token)
        self._hub.bind_api_session(self, request["session_id"] if address is not None else None, address)
        if address is None:
            return self.answer(request_id, 401, "invalid token")
        self.answer(request_id, 0, "success")

    def answer(self, request_id: str | None, code: int, message: str) -> None:
        """A ws-api answer to the request `request_id`."""
        self.push_json(self._hub.now(), {"code": code, "message": message, "request_id": request_id})


def _user_channels(request: object) -> frozenset[str] | None:
    """The user channels an auth request asks for (all when it names none), or None when it is
    malformed."""
    if not isinstance(request, dict) or not isinstance(request.get("token"), str) or set(request) - AUTH_FIELDS:
        return None
    streams = request.get("streams")
    if streams is None:
        return frozenset(USER_CHANNELS)
    if not isinstance(streams, list) or not all(isinstance(s, dict) and set(s) == {"channel"}
                                                and s["channel"] in USER_CHANNELS for s in streams):
        return None
    return frozenset(s["channel"] for s in streams)


@dataclass
class _Awaited:
    """An order request whose outcome goes to a ws-api session."""
    session: StreamSession
    request_id: str
    left: int = 1  # cancels still to reach matching
    failure: str | None = None  # why a cancel did nothing, for the answer


# ---- formatting of the market channels ------------------------------------------------------

def _price_data(exchange: Exchange, state: MarketState, exchange_time: float) -> dict:
    spec, decimals = exchange.spec, exchange.spec.price_tick_decimals
    return {
        "base": spec.base_asset, "quote": spec.quote_asset, "index_price": fixed(state.index, decimals),
        "mark_price": fixed(state.mark, decimals),
        "last_price": None if state.last is None else fixed(state.last, decimals),
        "mid_price": format((state.bid + state.ask) / 2, "f"),
        "spread": [fixed(state.bid, decimals), fixed(state.ask, decimals)], "time": iso_time(exchange_time),
    }


def _depth_data(exchange: Exchange, state: MarketState, exchange_time: float) -> dict:
    spec = exchange.spec
    price, qty = spec.price_tick_decimals, spec.qty_tick_decimals
    return {"asks": [[fixed(state.ask, price), grid_text(state.ask_qty, qty)]],
            "bids": [[fixed(state.bid, price), grid_text(state.bid_qty, qty)]],
            "symbol": spec.symbol, "time": iso_time(exchange_time)}


def _trade_data(exchange: Exchange, trade: Trade, exchange_time: float) -> dict:
    spec = exchange.spec
    return {"price": fixed(trade.price, spec.price_tick_decimals), "qty": grid_text(trade.qty, spec.qty_tick_decimals),
            "taker_side": trade.taker_side, "time": iso_time(exchange_time), "symbol": spec.symbol}


def _balance_data(exchange: Exchange, figures: dict) -> dict:
    return {"account_type": "perps", "token": exchange.spec.quote_asset, "free": money(figures["cross_available"]),
            "locked": money(figures["locked"]), "total": money(figures["balance"]),
            "occupied": money(figures["cross_margin"])}


def _price_changed(old: MarketState, new: MarketState) -> bool:
    return (old.mark, old.index, old.last, old.bid, old.ask) != (new.mark, new.index, new.last, new.bid, new.ask)


def _book_changed(old: MarketState, new: MarketState) -> bool:
    return (old.bid, old.ask, old.bid_qty, old.ask_qty) != (new.bid, new.ask, new.bid_qty, new.ask_qty)


class StreamHub:
    """The streams of one simulator (``sim.streams``): its sessions, the exchange's events turned
    into their frames, the routing of order outcomes to ws-api sessions, and the stream faults.
    Not thread-safe: the server calls it under its lock."""

    def __init__(self, exchange: Exchange, api: "Api", clock: Clock) -> None:
        self.limits = StreamLimits()
        self._exchange = exchange
        self._api = api
        self._clock = clock
        self._sessions: list[StreamSession] = []
        self._api_sessions: dict[str, StreamSession] = {}  # by session_id
        self._awaited_orders: dict[int, _Awaited] = {}  # new orders by id, until they activate
        self._awaited_cancels: dict[int, deque[_Awaited]] = {}  # by order id, one per cancel scheduled
        self._last_market: MarketState | None = None
        self._silent_until = -math.inf
        self._paused_until = -math.inf
        self._numbers = itertools.count()
        self._handlers: dict[str, Callable[[float, object], None]] = {
            "price": self._on_price, "trade": self._on_trade, "order": self._on_order,
            "position": self._on_position, "balance": self._on_balance, "cancel": self._on_cancel,
        }

    # ---- sessions -----------------------------------------------------------------------

    @property
    def symbol(self) -> str:
        return self._exchange.spec.symbol

    def now(self) -> float:
        return self._clock.now()

    def next_number(self) -> int:
        return next(self._numbers)

    def sessions(self) -> list[StreamSession]:
        """The open sessions, oldest first."""
        return list(self._sessions)

    def open(self, path: str, client: str = LOCAL_CLIENT) -> StreamSession:
        """A new connection to `path` (MARKET_PATH or API_PATH) from the IP address `client`."""
        if path not in PATHS:
            raise ValueError(f"no stream at {path!r}; expected one of {', '.join(PATHS)}")
        if not self._sessions:  # the first session: from now on the exchange tells the hub its changes
            self._last_market = self._exchange.market_state()
            self._exchange.add_listener(self._on_event)
        session = StreamSession(self, path, client)
        self._sessions.append(session)
        return session

    def close(self, session: StreamSession) -> None:
        """The connection ended (whoever ended it); its outcomes are no longer routed."""
        if not session.is_open:
            return
        session.is_open = False
        self._sessions.remove(session)
        self._unbind(session)
        if not self._sessions:  # nobody listens: the exchange's hot path builds nothing
            self._exchange.remove_listener(self._on_event)
            self._awaited_orders.clear()
            self._awaited_cancels.clear()

    def token_address(self, token: str) -> str | None:
        return self._api.token_address(token)

    def bind_api_session(self, session: StreamSession, session_id: str | None, address: str | None) -> None:
        """A ws-api login of `session`: REST orders of `address` with x-session-id `session_id`
        report to it from now on (None, None: a failed login, nothing reports to it)."""
        self._unbind(session)
        session.session_id, session.address = session_id, address
        if session_id is not None:
            self._api_sessions[session_id] = session

    def _unbind(self, session: StreamSession) -> None:
        """Its session_id no longer routes outcomes to `session` (another login may have taken it)."""
        if self._api_sessions.get(session.session_id) is session:
            del self._api_sessions[session.session_id]

    def snapshot(self, channel: str) -> str | None:
        """The data (JSON) a new subscription to `channel` gets at once; None for none."""
        if channel == "public_trade":
            return None
        state = self._exchange.market_state()
        data = _price_data if channel == "price" else _depth_data
        return _encode(data(self._exchange, state, self._exchange.exchange_time()))

    # ---- the exchange's events --------------------------------------------------------

    def _on_event(self, kind: str, t: float, payload: object) -> None:
        self._handlers[kind](t, payload)

    def _exchange_time(self, t: float) -> float:
        return t + self._exchange.clock_skew_s

    def _publish(self, t: float, channel: str, data: Callable[[], dict]) -> None:
        """A public channel's message to its subscribers (data built only if there are some)."""
        subscribers = [s for s in self._sessions if channel in s.public]
        if not subscribers or self.data_paused():
            return
        data_json = _encode(data())
        for session in subscribers:
            session.push_channel(t, channel, data_json, self.symbol)

    def _to_account(self, t: float, address: str, channel: str, data: Callable[[], dict]) -> None:
        """A user channel's message to the sessions authenticated as `address`."""
        readers = [s for s in self._sessions if s.address == address and channel in s.user]
        if not readers:
            return
        data_json = _encode(data())
        for session in readers:
            session.push_channel(t, channel, data_json)

    def _on_price(self, t: float, state: MarketState) -> None:
        old, self._last_market = self._last_market, state
        ex, when = self._exchange, self._exchange_time(t)
        if old is None or _price_changed(old, state):
            self._publish(t, "price", lambda: _price_data(ex, state, when))
        if old is None or _book_changed(old, state):
            self._publish(t, "depth_book", lambda: _depth_data(ex, state, when))

    def _on_trade(self, t: float, trade: Trade) -> None:
        self._publish(t, "public_trade", lambda: _trade_data(self._exchange, trade, self._exchange_time(t)))

    def _on_order(self, t: float, change: OrderChange) -> None:
        order = change.order
        self._to_account(t, order.address, "order", lambda: order_row(order, self._exchange.spec, change.position_id))
        awaited = self._awaited_orders.pop(order.id, None)
        if awaited is None or not awaited.session.is_open:
            return
        if order.status == "rejected":
            awaited.session.answer(awaited.request_id, 400, order.remark)
        else:  # it rests, filled, or ended unfilled (ioc): matching took it
            awaited.session.answer(awaited.request_id, 0, "success")

    def _on_position(self, t: float, change: PositionChange) -> None:
        self._to_account(t, change.address, "position", lambda: position_row(
            change.position, change.address, self._exchange.spec, change.leverage, change.margin_mode, change.mark))

    def _on_balance(self, t: float, change: BalanceChange) -> None:
        if change.figures is not None:
            self._to_account(t, change.address, "balance", lambda: _balance_data(self._exchange, change.figures))

    def _on_cancel(self, t: float, done: CancelDone) -> None:
        queue = self._awaited_cancels.get(done.order.id)
        if not queue:
            return
        awaited = queue.popleft()
        if not queue:
            del self._awaited_cancels[done.order.id]
        if not done.took_effect and awaited.failure is None:
            awaited.failure = "order already closed" if done.order.status not in RESTING else "order not active yet"
        awaited.left -= 1
        if awaited.left == 0 and awaited.session.is_open:
            code = 0 if awaited.failure is None else 400
            awaited.session.answer(awaited.request_id, code, awaited.failure or "success")

    # ---- order outcomes (Api.order_outcomes) ------------------------------------------

    def route_outcomes(self, session_id: str, address: str, request_id: str, kind: str, orders: list[Order]) -> None:
        """A REST order request (kind "new" or "cancel") that carried x-session-id was accepted:
        its outcome goes to the ws-api session of that id if it is logged in as the same account."""
        session = self._api_sessions.get(session_id)
        if session is None or session.address != address:
            log.debug("x-session-id of no ws-api session of %s: no outcome pushed", address)
            return
        session.push_json(self.now(), {"code": 0, "status": "accepted", "request_id": request_id})
        if kind == "new":
            for order in orders:
                self._awaited_orders[order.id] = _Awaited(session, request_id)
        elif not orders:  # a batch cancel that named no order of ours
            session.answer(request_id, 0, "success")
        else:
            awaited = _Awaited(session, request_id, left=len(orders))
            for order in orders:
                self._awaited_cancels.setdefault(order.id, deque()).append(awaited)

    # ---- faults -----------------------------------------------------------------------

    def silenced(self) -> bool:
        return self._clock.now() < self._silent_until

    def data_paused(self) -> bool:
        return self._clock.now() < self._paused_until

    def drop_all(self) -> int:
        """Fault: every socket ends abruptly, with no close frame. How many there were."""
        return self._end_all(DROP, "dropped")

    def close_all(self, code: int = 1000, reason: str = "") -> int:
        """Fault: every socket is closed with this close frame (normal by default)."""
        return self._end_all((code, reason), f"closed ({code})")

    def _end_all(self, how: tuple[int, str], what: str) -> int:
        for session in self._sessions:
            session.end(how)
        log.info("stream fault: %d socket(s) %s", len(self._sessions), what)
        return len(self._sessions)

    def silence(self, seconds: float) -> None:
        """Fault: for `seconds`, the sockets send nothing (no frames, no pings) and read nothing;
        frames produced meanwhile are lost."""
        self._silent_until = self._clock.now() + _seconds(seconds)
        self._wake_all()
        log.info("stream fault: silence for %.3f s", seconds)

    def pause_data(self, seconds: float) -> None:
        """Fault: for `seconds`, price, depth_book and public_trade frames are lost (pings and
        user channels go on), as when the exchange's market feed stalls."""
        self._paused_until = self._clock.now() + _seconds(seconds)
        log.info("stream fault: market data paused for %.3f s", seconds)

    def send_garbage(self, text: str) -> int:
        """Fault: one text frame, as is, to every socket. How many got it."""
        now = self.now()
        for session in self._sessions:
            session.push_raw(now, text)
        log.info("stream fault: garbage frame to %d socket(s)", len(self._sessions))
        return len(self._sessions)

    def set_limits(self, **changes: object) -> StreamLimits:
        """Fault: change limits and timers (StreamLimits' fields); they apply to open sockets at
        once. The limits now."""
        unknown = set(changes) - LIMIT_FIELDS
        if unknown:
            raise ValueError(f"unknown limit {sorted(unknown)[0]}; expected some of {', '.join(sorted(LIMIT_FIELDS))}")
        self.limits = replace(self.limits, **changes)
        self._wake_all()
        log.info("stream limits: %s", asdict(self.limits))
        return self.limits

    def _wake_all(self) -> None:
        """Transports re-read the faults and limits now."""
        for session in self._sessions:
            session.on_output()


def _seconds(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError("seconds must be a number >= 0")
    return float(value)


# ---- the backtest's feed --------------------------------------------------------------------

class VirtualConnection:
    """One stream connection of a VirtualFeed."""

    def __init__(self, feed: "VirtualFeed", session: StreamSession) -> None:
        self._feed = feed
        self.session = session

    @property
    def path(self) -> str:
        return self.session.path

    @property
    def closed(self) -> bool:
        return not self.session.is_open

    def send(self, text: str) -> None:
        """A client frame, handled at clock.now()."""
        if self.closed:
            raise RuntimeError("the connection is closed")
        self.session.receive(text)

    def wait(self, deadline: float, on_frame: Callable[[str], bool]) -> None:
        """Advance the clock towards `deadline`, delivering this connection's frames in order,
        each at (engine time it was produced + latency_s), or at once when that has passed
        already; returns as soon as on_frame returns True (the clock at that delivery), else
        with the clock at `deadline` (or later, if it was already)."""
        self._feed.wait_all(deadline, lambda connection, text: on_frame(text), [self])

    def close(self) -> None:
        self._feed.close(self)


class VirtualFeed:
    """The streams in virtual time, for the backtest: no sockets, no threads, deterministic.
    Frames are those of the served streams (the same hub), each delivered latency_s after the
    engine time it was produced at. To find what happens between now and a deadline without a
    request, the exchange is advanced at most latency_s at a time, so a frame produced at engine
    time t is delivered at t + latency_s exactly. No pings, lifetime or per-IP limits here, and
    drop_all / close_all do not end a virtual connection; silence, pause_data and send_garbage
    apply."""

    def __init__(self, sim: "Simulator", clock: VirtualClock, latency_s: float = 0.05) -> None:
        if not 0 < latency_s < math.inf:
            raise ValueError("the feed's latency must be > 0 seconds")
        self._hub = sim.streams
        self._exchange = sim.exchange
        self._clock = clock
        self.latency_s = latency_s
        self._connections: list[VirtualConnection] = []

    def connect(self, path: str) -> VirtualConnection:
        """A connection to MARKET_PATH or API_PATH, open at once."""
        connection = VirtualConnection(self, self._hub.open(path))
        self._connections.append(connection)
        return connection

    def close(self, connection: VirtualConnection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)
            self._hub.close(connection.session)

    def wait(self, deadline: float, on_frame: Callable[[VirtualConnection, str], bool]) -> None:
        """VirtualConnection.wait for every open connection at once, their frames merged in
        the order they were produced; on_frame(connection, text)."""
        self.wait_all(deadline, on_frame, self._connections)

    def wait_all(self, deadline: float, on_frame: Callable[[VirtualConnection, str], bool],
                 connections: list[VirtualConnection]) -> None:
        clock, latency = self._clock, self.latency_s
        while True:
            self._exchange.advance()  # what happened up to now is queued (e.g. during a REST call)
            connection = self._earliest(connections)
            due = connection.session.outbox[0].t + latency if connection is not None else math.inf
            now = clock.now()
            if due <= now:
                if on_frame(connection, connection.session.outbox.popleft().text):
                    return
                continue
            if now >= deadline:
                return
            # Never past latency_s ahead of what the exchange has told: a frame produced in the
            # step is due after it.
            clock.advance_to(min(deadline, due, now + latency))

    @staticmethod
    def _earliest(connections: list[VirtualConnection]) -> VirtualConnection | None:
        """The connection whose next frame was produced first (None: no frame queued)."""
        queued = [c for c in connections if c.session.outbox]
        return min(queued, key=lambda c: (c.session.outbox[0].t, c.session.outbox[0].number), default=None)
