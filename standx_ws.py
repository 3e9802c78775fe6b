"""StandX's WebSocket streams for the daemon: prices, our orders and position, order outcomes.

Two sockets per account, each kept open by its own daemon thread:
- the market stream (/ws-stream/v1): the `price` channel of our symbol, and after `auth` with
  the token the user channels `order`, `position` and `balance`;
- the order response stream (/ws-api/v1): `auth:login`, after which REST orders sent with the
  header `x-session-id: <session_id>` get their asynchronous outcome pushed here (an `alo` order
  rejected in matching, for one).

The threads only record what the streams say in a StreamState and set its `wake` event when
something the loop decides on has changed; every decision stays in the loop's thread. Frame
handling (StreamState.handle_*) and what the daemon sends (MarketConversation,
ApiConversation) are free of I/O, so a virtual feed can drive them as the sockets do.

Connection hygiene, as StandX asks: pings are answered by websockets; a socket silent for
SILENCE_LIMIT_S (no frame, not even a ping) is dead; reconnects back off exponentially with
jitter; a process opens at most 2 sockets and at most 30 new ones a minute; a socket is
replaced before the exchange's 24 h cap; after every reconnect we subscribe and authenticate
again and bump StreamState.resyncs so the loop re-reads by REST.
"""
from __future__ import annotations

import collections
import functools
import json
import logging
import random
import threading
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import websockets.sync.client
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from standx_auth import WAIT_SLICE_S, Clock, RealClock

log = logging.getLogger(__name__)

STREAM_PATH = "/ws-stream/v1"
API_PATH = "/ws-api/v1"
USER_CHANNELS = ("order", "position", "balance")
STREAM_NAMES = ("market", "user", "api")
LINK_LABELS = {"market": "market stream", "api": "order response stream"}

# A socket that has said nothing for this long (StandX pings every 10 s) is dead.
SILENCE_LIMIT_S = 45.0
# StandX closes a connection after 24 h; we replace ours a little before, at a time we choose.
MAX_SOCKET_AGE_S = 23 * 3600 + 50 * 60
# StandX allows 30 new connections a minute per IP, shared by every account on it: one process
# keeps to that alone, and holds at most its two sockets.
NEW_CONNECTIONS_PER_MINUTE = 30
CONNECTION_WINDOW_S = 60.0
MAX_OPEN_SOCKETS = 2
# Reconnects wait 1 s, doubling up to 60 s; a connection that lived this long starts again at 1 s.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0
OPEN_TIMEOUT_S = 10.0   # TCP, TLS and the WebSocket handshake together
CLOSE_TIMEOUT_S = 1.0   # a normal close waits this long for the server's answer
# A subscribe or an authentication not answered within this long leaves the socket useless
# (pings alone keep it "alive"): it is replaced. A token the exchange refused is offered again
# this long after (a refusal can pass; the next login may be a week away).
ANSWER_TIMEOUT_S = 20.0
AUTH_RETRY_S = 30.0
# How often a reading thread looks up from the socket: the stop flag, the silence limit, the
# socket's age and a new token are noticed within this.
RECV_SLICE_S = 0.2
# Events the loop has not drained yet; beyond, the oldest are dropped and the loop told to
# re-read by REST (a loop drains every check interval, so this never fills in practice).
MAX_QUEUED_EVENTS = 1000
# A number on the wire longer than this, this large or with more decimals is not one the exchange
# sends (a garbled "1e999999" would overflow the loop's arithmetic).
MAX_NUMBER_CHARS = 40
WIRE_NUMBER_MAX = Decimal("1e15")
WIRE_DECIMALS_MAX = 18
LOGGED_FRAME_CHARS = 300


# ---- URLs ------------------------------------------------------------------------------------

def stream_urls(perps_base_url: str) -> tuple[str, str]:
    """(market stream URL, order response stream URL) on the host and port of the REST API:
    https -> wss, http -> ws; a path prefix is kept, as REST keeps it. ValueError names what is
    wrong with any other URL."""
    parts = urlsplit(perps_base_url.strip())
    schemes = {"https": "wss", "http": "ws"}
    if parts.scheme not in schemes:
        raise ValueError(f"{perps_base_url!r} is not an http(s) URL")
    if not parts.hostname:
        raise ValueError(f"{perps_base_url!r} has no host")
    if parts.query or parts.fragment:
        raise ValueError(f"{perps_base_url!r} has a query or fragment: a base URL takes neither")
    scheme, prefix = schemes[parts.scheme], parts.path.rstrip("/")
    return (urlunsplit((scheme, parts.netloc, prefix + STREAM_PATH, "", "")),
            urlunsplit((scheme, parts.netloc, prefix + API_PATH, "", "")))


# ---- what the streams said -------------------------------------------------------------------

@dataclass(frozen=True)
class PriceUpdate:
    """One price frame of our symbol."""
    mark: Decimal
    index: Decimal | None
    last: Decimal | None
    mid: Decimal | None
    best_bid: Decimal | None
    best_ask: Decimal | None
    received_at: float           # clock.monotonic() when handled


def wire_number(value: Any) -> Decimal:
    """A decimal string from a frame as a finite Decimal; ValueError otherwise (numbers are
    strings on StandX's wire, so a float or an int here is a malformed frame)."""
    if not isinstance(value, str) or len(value) > MAX_NUMBER_CHARS:
        raise ValueError(f"not a decimal string: {value!r:.60}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"not a decimal string: {value!r:.60}") from None
    if not number.is_finite() or abs(number) >= WIRE_NUMBER_MAX or number.as_tuple().exponent < -WIRE_DECIMALS_MAX:
        raise ValueError(f"not a plausible number: {value!r}")
    return number


def wire_price(value: Any) -> Decimal:
    price = wire_number(value)
    if price <= 0:
        raise ValueError(f"not a positive price: {value!r}")
    return price


def optional_price(value: Any) -> Decimal | None:
    """A price that may be null (StandX sends null last/mid prices and an empty side's spread)."""
    return None if value is None else wire_price(value)


def signed_qty(row: dict) -> Decimal:
    """A position's quantity, negative when short: `side` when given, else the sign of `qty`
    (the rule the REST position read follows)."""
    qty = wire_number(row["qty"])
    side = str(row.get("side") or "").lower()
    if side in ("short", "sell"):
        return -abs(qty)
    if side in ("long", "buy"):
        return abs(qty)
    return qty


def parse_json_object(text: str) -> dict | None:
    """The frame as a JSON object, or None (logged at DEBUG) for anything else."""
    try:
        message = json.loads(text)
    except (ValueError, TypeError):
        message = None
    if not isinstance(message, dict):
        log.debug("ignored a frame that is not a JSON object: %.*s", LOGGED_FRAME_CHARS, text)
        return None
    return message


class StreamState:
    """What the streams said, written by the stream thread(s), read by the loop thread.

    `wake` is set when the loop should run now: a price frame whose mark or best bid/ask
    differs from the previous one, an order or position frame of our symbol, an order outcome
    that is a rejection, a reconnect (resyncs changes), a disconnect. Frames that are garbage,
    of an unknown channel, of another symbol or with malformed numbers are logged at DEBUG and
    ignored: handle_* never raises for what a frame says.
    """

    def __init__(self, clock: Clock, symbol: str) -> None:
        self.clock = clock
        self.symbol = symbol
        self.wake = threading.Event()
        # +1 each time our account is authenticated on a (re)connected market stream, or events
        # had to be dropped: either way the loop re-reads by REST what it may have missed.
        self.resyncs = 0
        self._lock = threading.Lock()
        self._price: PriceUpdate | None = None
        self._orders: collections.deque[dict] = collections.deque()
        self._outcomes: collections.deque[dict] = collections.deque()
        self._position: tuple[Decimal, float] | None = None
        self._position_row: dict | None = None
        self._balance: dict | None = None
        self._up = dict.fromkeys(STREAM_NAMES, False)
        self._login_request_id: str | None = None
        self._price_seq: int | None = None  # the seq of the latest price frame on this socket
        # When each of our requests was last answered ("price": a price frame after a
        # subscribe; "auth", "login": the answer, whatever it said), and when a token was last
        # refused ("user": on the market stream, "api": on the order response stream).
        self.answered_at: dict[str, float] = {}
        self.refused_at: dict[str, float] = {}

    # ---- read by the loop ----

    def latest_price(self) -> PriceUpdate | None:
        return self._price

    def drain_orders(self) -> list[dict]:
        """Order-channel rows of our symbol since the last drain, oldest first."""
        return self._drain(self._orders)

    def drain_outcomes(self) -> list[dict]:
        """Order outcomes pushed by the ws-api ({code, message or status, request_id}) since the
        last drain, oldest first."""
        return self._drain(self._outcomes)

    def latest_position(self) -> tuple[Decimal, float] | None:
        """Our symbol's signed position quantity and when it was received."""
        return self._position

    def latest_position_row(self) -> dict | None:
        """Our symbol's latest position frame as sent (the fields of a REST position row)."""
        return self._position_row

    def latest_balance(self) -> dict | None:
        return self._balance

    def connected(self, stream: str) -> bool:
        return self._up[stream]

    # ---- written by the stream threads ----

    def set_connected(self, stream: str, up: bool) -> None:
        """A stream came up or went down ("market", "user" or "api"). The user channels ride on
        the market socket: they go down with it. Our account's channels coming up (a first
        authentication on a socket) count a resync; going down wakes the loop."""
        if stream not in self._up:
            raise ValueError(f"unknown stream {stream!r}")
        affected = ("market", "user") if stream == "market" and not up else (stream,)
        with self._lock:
            changed = [name for name in affected if self._up[name] != up]
            for name in affected:
                self._up[name] = up
            if stream == "market" and not up:
                self._price_seq = None  # a new socket numbers its frames afresh
            resync = up and "user" in changed
            if resync:
                self.resyncs += 1
        if changed and not up:
            log.info("stream down: %s", ", ".join(changed))
        if resync or (changed and not up):
            self.wake.set()

    def login_sent(self, request_id: str) -> None:
        """The ws-api login request in flight: its answer is not an order outcome."""
        self._login_request_id = request_id

    def handle_stream_frame(self, text: str) -> None:
        """One frame of the market stream (/ws-stream/v1)."""
        message = parse_json_object(text)
        if message is None:
            return
        if "channel" not in message and "code" in message:
            log.warning("market stream refused a request: %.*s", LOGGED_FRAME_CHARS, text)
            return
        handler = {"price": self._on_price, "auth": self._on_auth, "order": self._on_order,
                   "position": self._on_position, "balance": self._on_balance}.get(message.get("channel"))
        data = message.get("data")
        if handler is None or not isinstance(data, dict):
            log.debug("ignored a market stream frame: %.*s", LOGGED_FRAME_CHARS, text)
            return
        try:
            handler(message, data)
        except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
            log.debug("ignored a malformed %s frame (%s): %.*s", message.get("channel"), exc,
                      LOGGED_FRAME_CHARS, text)

    def handle_api_frame(self, text: str) -> None:
        """One frame of the order response stream (/ws-api/v1): our login's answer, or the
        outcome of a REST order sent with our session id."""
        message = parse_json_object(text)
        if message is None:
            return
        code, request_id = message.get("code"), message.get("request_id")
        if type(code) is not int or not isinstance(request_id, str):
            log.debug("ignored an order response frame: %.*s", LOGGED_FRAME_CHARS, text)
            return
        if request_id == self._login_request_id:
            self._on_login(code, message)
            return
        outcome = {key: message[key] for key in ("code", "message", "status", "request_id")
                   if isinstance(message.get(key), (str, int))}
        log.debug("order outcome: %s", outcome)
        self._queue(self._outcomes, outcome)
        if code != 0:
            self.wake.set()

    # ---- frames ----

    def _on_price(self, message: dict, data: dict) -> None:
        if message.get("symbol") != self.symbol:
            raise ValueError("another symbol")
        spread = data.get("spread")
        if spread is None:
            spread = [None, None]
        if not isinstance(spread, list) or len(spread) != 2:
            raise ValueError("spread is not [bid, ask]")
        # A frame numbered before the price we hold is a replayed or reordered one. (The
        # exchange's `time` is no guide: its clock can step back. An equal number is let through:
        # were the exchange not to number its frames one by one, every price would look replayed.)
        seq = message.get("seq")
        if type(seq) is int and self._price_seq is not None and seq < self._price_seq:
            raise ValueError("numbered before the price we hold")
        self.answered_at["price"] = self.clock.monotonic()
        update = PriceUpdate(mark=wire_price(data["mark_price"]), index=optional_price(data.get("index_price")),
                             last=optional_price(data.get("last_price")), mid=optional_price(data.get("mid_price")),
                             best_bid=optional_price(spread[0]), best_ask=optional_price(spread[1]),
                             received_at=self.clock.monotonic())
        if type(seq) is int:
            self._price_seq = seq  # only a frame taken counts: a malformed one sets nothing
        previous, self._price = self._price, update
        if previous is None or (previous.mark, previous.best_bid, previous.best_ask) != \
                (update.mark, update.best_bid, update.best_ask):
            self.wake.set()

    def _on_auth(self, message: dict, data: dict) -> None:
        self.answered_at["auth"] = self.clock.monotonic()
        if data.get("code") != 200:
            log.warning("market stream refused our token (%s): user channels off, the token offered "
                        "again in %.0f s or a new one at once", data.get("msg"), AUTH_RETRY_S)
            self.refused_at["user"] = self.clock.monotonic()
            self.set_connected("user", False)
            return
        if not self._up["user"]:
            log.info("market stream: account authenticated, user channels on")
        self.set_connected("user", True)

    def _on_order(self, message: dict, data: dict) -> None:
        if data.get("symbol") != self.symbol:
            raise ValueError("another symbol")
        if not isinstance(data.get("status"), str) or not (data.get("cl_ord_id") or data.get("id")):
            raise ValueError("an order without status or id")
        log.debug("order event: %s %s %s", data.get("cl_ord_id"), data.get("status"), data.get("fill_qty"))
        self._queue(self._orders, data)
        self.wake.set()

    def _on_position(self, message: dict, data: dict) -> None:
        if data.get("symbol") != self.symbol:
            raise ValueError("another symbol")
        self._position = (signed_qty(data), self.clock.monotonic())
        self._position_row = dict(data)
        self.wake.set()

    def _on_balance(self, message: dict, data: dict) -> None:
        self._balance = dict(data)

    def _on_login(self, code: int, message: dict) -> None:
        self.answered_at["login"] = self.clock.monotonic()
        if code == 0:
            log.info("order response stream: logged in")
            self.set_connected("api", True)
        else:
            log.warning("order response stream refused our token (%s %s)", code, message.get("message"))
            self.refused_at["api"] = self.clock.monotonic()
            self.set_connected("api", False)

    # ---- queues ----

    def _queue(self, queue: collections.deque, item: dict) -> None:
        with self._lock:
            queue.append(item)
            overflow = len(queue) > MAX_QUEUED_EVENTS
            if overflow:
                queue.popleft()
                self.resyncs += 1
        if overflow:
            log.warning("stream events not drained: the oldest dropped, the loop re-reads by REST")
            self.wake.set()

    def _drain(self, queue: collections.deque) -> list[dict]:
        with self._lock:
            items = list(queue)
            queue.clear()
        return items


# ---- what the daemon says on each socket -------------------------------------------------------

class Conversation:
    """What the daemon sends on one socket: a greeting when it opens, and an authentication
    whenever the token differs from the one this socket last sent (a re-login)."""

    def __init__(self) -> None:
        self._sent_token: str | None = None

    def opening(self, token: str | None) -> list[str]:
        """Frames to send on a fresh socket."""
        self._sent_token = None
        return self.greeting() + self.on_token(token)

    def on_token(self, token: str | None) -> list[str]:
        """Frames to send now that the current token is `token` (None: not logged in yet)."""
        if token is None or token == self._sent_token:
            return []
        self._sent_token = token
        return [self.authentication(token)]

    def forget_token(self) -> None:
        """Offer the current token again (the exchange refused it; a refusal can pass)."""
        self._sent_token = None

    @property
    def authenticated_with(self) -> str | None:
        return self._sent_token

    def greeting(self) -> list[str]:
        return []

    def authentication(self, token: str) -> str:
        raise NotImplementedError


class MarketConversation(Conversation):
    """The market stream: our symbol's price at once, the user channels once logged in."""

    def __init__(self, symbol: str) -> None:
        super().__init__()
        self.symbol = symbol

    def greeting(self) -> list[str]:
        return [json.dumps({"subscribe": {"channel": "price", "symbol": self.symbol}})]

    def authentication(self, token: str) -> str:
        return json.dumps({"auth": {"token": token,
                                    "streams": [{"channel": channel} for channel in USER_CHANNELS]}})


class ApiConversation(Conversation):
    """The order response stream: `auth:login` in our session; its answer is recognised by
    the request id the state is told about."""

    def __init__(self, session_id: str, state: StreamState) -> None:
        super().__init__()
        self.session_id = session_id
        self.state = state

    def authentication(self, token: str) -> str:
        request_id = str(uuid.uuid4())
        self.state.login_sent(request_id)
        return json.dumps({"session_id": self.session_id, "request_id": request_id,
                           "method": "auth:login", "params": json.dumps({"token": token})})


# ---- connection budget ------------------------------------------------------------------------

class ConnectionBudget:
    """The connections this process may open: at most `per_minute` new ones in any rolling
    `window_s`, and at most `max_open` open at once. Thread-safe."""

    def __init__(self, clock: Clock, per_minute: int = NEW_CONNECTIONS_PER_MINUTE,
                 max_open: int = MAX_OPEN_SOCKETS, window_s: float = CONNECTION_WINDOW_S) -> None:
        self.clock = clock
        self.per_minute = per_minute
        self.max_open = max_open
        self.window_s = window_s
        self._opened_at: collections.deque[float] = collections.deque()
        self._open = 0
        self._lock = threading.Lock()

    def try_open(self) -> float:
        """0.0 when a new connection may be opened now (it is counted: call closed() when it
        ends, whether it connected or not); else how long to wait before asking again."""
        with self._lock:
            now = self.clock.monotonic()
            while self._opened_at and self._opened_at[0] <= now - self.window_s:
                self._opened_at.popleft()
            if len(self._opened_at) >= self.per_minute:
                return self._opened_at[0] + self.window_s - now
            if self._open >= self.max_open:
                return WAIT_SLICE_S  # another socket must close first: look again soon
            self._opened_at.append(now)
            self._open += 1
            return 0.0

    def closed(self) -> None:
        with self._lock:
            self._open = max(0, self._open - 1)

    @property
    def open_count(self) -> int:
        return self._open


class Backoff:
    """Reconnect delays: 1 s doubling up to 60 s, each drawn in [half, all] of its step so that
    several daemons dropped together do not come back together."""

    def __init__(self, rng: random.Random, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S) -> None:
        self.rng = rng
        self.first_s = first_s
        self.max_s = max_s
        self._step = first_s

    def next_delay(self) -> float:
        step = self._step
        self._step = min(step * 2, self.max_s)
        return step * (0.5 + 0.5 * self.rng.random())

    def reset(self) -> None:
        self._step = self.first_s


# ---- the sockets ------------------------------------------------------------------------------

class _HeardConnection(websockets.sync.client.ClientConnection):
    """A client connection that reports every frame it receives, pings included: websockets
    answers pings itself and never hands them to recv(), yet they prove the socket alive."""

    def __init__(self, *args: Any, heard: Callable[[], None], **kwargs: Any) -> None:
        self.heard = heard  # set first: the reading thread starts inside __init__
        super().__init__(*args, **kwargs)

    def process_event(self, event: Any) -> None:
        self.heard()
        super().process_event(event)


class _Link:
    """One socket kept open by one thread: connect within the budget, send the conversation's
    frames, hand every frame to `handle`, and after any ending back off and connect again,
    until the streams stop."""

    def __init__(self, streams: "StandXStreams", name: str, url: str, conversation: Conversation,
                 handle: Callable[[str], None], answers: tuple[str, str | None], refusal: str) -> None:
        self.streams = streams
        self.name = name
        # What answers our greeting and our authentication on this socket (StreamState.answered_at
        # keys), what marks a refused token (StreamState.refused_at), and when each was sent.
        self.greeting_answer, self.auth_answer = answers
        self.refusal = refusal
        self.awaiting: dict[str, float] = {}
        self.label = LINK_LABELS[name]
        self.url = url
        self.conversation = conversation
        self.handle = handle
        self.backoff = Backoff(streams.rng)
        self.last_heard = 0.0
        self.thread = threading.Thread(target=self.run, name=f"standx-ws-{name}", daemon=True)

    def run(self) -> None:
        delay = 0.0
        while not self.streams.stopping.is_set():
            if delay > 0:
                log.info("%s: reconnecting in %.1f s", self.label, delay)
                if self.streams.pause(delay):
                    return
            if not self._wait_for_budget():
                return
            try:
                delay = self._connection()
            except Exception:  # a bug must not end the thread: the loop would lose its stream for good
                log.exception("%s: unexpected error", self.label)
                delay = self.backoff.next_delay()
            finally:
                self.streams.budget.closed()

    def _wait_for_budget(self) -> bool:
        """Wait for the budget to allow a new connection; False if stopped meanwhile."""
        while (wait := self.streams.budget.try_open()) > 0:
            log.info("%s: connection budget spent, next connection in %.1f s", self.label, wait)
            if self.streams.pause(wait):
                return False
        return True

    def _connection(self) -> float:
        """One connection from handshake to end; returns how long to wait before the next."""
        try:
            connection = self.streams.connect(
                self.url, open_timeout=OPEN_TIMEOUT_S, close_timeout=CLOSE_TIMEOUT_S,
                ping_interval=None,  # the server pings us; silence is our liveness check
                create_connection=functools.partial(_HeardConnection, heard=self._heard))
        except InvalidStatus as exc:
            status = exc.response.status_code
            log.warning("%s: handshake refused with HTTP %s%s", self.label, status,
                        " (too many connections)" if status == 429 else "")
            return self.backoff.next_delay()
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.info("%s: could not connect: %s", self.label, exc)
            return self.backoff.next_delay()
        if self.streams.stopping.is_set():  # stopped during the handshake
            connection.close()
            return 0.0
        opened_at = self.streams.clock.monotonic()
        self.last_heard = opened_at
        log.info("%s: connected to %s", self.label, self.url)
        try:
            ending, reconnect_at_once = self._serve(connection, opened_at)
        except ConnectionClosed as exc:
            ending, reconnect_at_once = f"closed ({exc})", False
        finally:
            # Down first: closing may wait CLOSE_TIMEOUT_S on a server that no longer answers.
            self.streams.state.set_connected(self.name, False)
            connection.close()
        if self.streams.stopping.is_set():
            return 0.0
        log.info("%s: disconnected: %s", self.label, ending)
        if self.streams.clock.monotonic() - opened_at >= HEALTHY_AFTER_S:
            self.backoff.reset()
        return 0.0 if reconnect_at_once else self.backoff.next_delay()

    def _serve(self, connection: Any, opened_at: float) -> tuple[str, bool]:
        """Read until the socket ends or must be let go: (why, reconnect at once)."""
        streams = self.streams
        if self.name == "market":
            streams.state.set_connected("market", True)
        self.awaiting.clear()
        if self.greeting_answer is not None:
            self.awaiting[self.greeting_answer] = opened_at
        self._send(connection, self.conversation.opening(streams.auth.current_token()))
        while not streams.stopping.is_set():
            now = streams.clock.monotonic()
            if now - self.last_heard >= streams.silence_s:
                return f"silent for {now - self.last_heard:.0f} s, taken as dead", False
            if now - opened_at >= streams.max_age_s:
                return "replaced before the exchange's 24 h cap", True
            unanswered = self._unanswered(now)
            if unanswered:
                return f"no answer to our {unanswered} in {streams.answer_timeout_s:.0f} s", False
            self._offer_refused_token_again(now)
            self._send(connection, self.conversation.on_token(streams.auth.current_token()))
            try:
                frame = connection.recv(timeout=RECV_SLICE_S)
            except TimeoutError:
                continue
            self._heard()
            if isinstance(frame, str):
                self.handle(frame)
            else:
                log.debug("%s: ignored a binary frame", self.label)
        return "stopped", False

    def _send(self, connection: Any, frames: list[str]) -> None:
        if frames and self.conversation.authenticated_with is not None:
            # The last frame is the authentication (a greeting comes first): await its answer.
            self.awaiting[self.auth_answer] = self.streams.clock.monotonic()
        for frame in frames:  # never logged: an authentication carries the token
            connection.send(frame)

    def _unanswered(self, now: float) -> str | None:
        """What we asked on this socket and got no answer to within the answer timeout."""
        answered_at = self.streams.state.answered_at
        for what, sent_at in list(self.awaiting.items()):
            if answered_at.get(what, float("-inf")) >= sent_at:
                del self.awaiting[what]
            elif now - sent_at >= self.streams.answer_timeout_s:
                return {"price": "subscribe", "auth": "authentication", "login": "login"}[what]
        return None

    def _offer_refused_token_again(self, now: float) -> None:
        refused_at = self.streams.state.refused_at.get(self.refusal)
        if refused_at is not None and now - refused_at >= self.streams.auth_retry_s:
            del self.streams.state.refused_at[self.refusal]
            self.conversation.forget_token()

    def _heard(self) -> None:
        self.last_heard = self.streams.clock.monotonic()


class StandXStreams:
    """The market stream and the order response stream of one account, each kept open by a
    background thread, feeding `state`.

    `auth` needs one method, current_token() -> str | None (never logging in): until it gives a
    token only the price is subscribed; when it changes, each socket authenticates again.
    """

    def __init__(self, auth: Any, symbol: str, stream_url: str, api_url: str, clock: Clock | None = None, *,
                 connect: Callable[..., Any] = websockets.sync.client.connect,
                 rng: random.Random | None = None, silence_s: float = SILENCE_LIMIT_S,
                 max_age_s: float = MAX_SOCKET_AGE_S, budget: ConnectionBudget | None = None,
                 answer_timeout_s: float = ANSWER_TIMEOUT_S, auth_retry_s: float = AUTH_RETRY_S) -> None:
        self.auth = auth
        self.clock = clock or RealClock()
        self.connect = connect
        self.rng = rng or random.Random()
        self.silence_s = silence_s
        self.max_age_s = max_age_s
        self.answer_timeout_s = answer_timeout_s
        self.auth_retry_s = auth_retry_s
        self.budget = budget or ConnectionBudget(self.clock)
        self.state = StreamState(self.clock, symbol)
        self.session_id = str(uuid.uuid4())
        self.stopping = threading.Event()
        self._links = [
            _Link(self, "market", stream_url, MarketConversation(symbol), self.state.handle_stream_frame,
                  answers=("price", "auth"), refusal="user"),
            _Link(self, "api", api_url, ApiConversation(self.session_id, self.state), self.state.handle_api_frame,
                  answers=(None, "login"), refusal="api"),
        ]
        self._started = False

    def start(self) -> None:
        """Start the background threads; network trouble never raises here (they retry)."""
        if self._started:
            return
        self._started = True
        for link in self._links:
            link.thread.start()

    def request_stop(self) -> None:
        """Ask the threads to close their sockets and end, without waiting for them (a stop
        lets them end while it cancels our orders; stop() then joins them)."""
        self.stopping.set()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Close the sockets normally and join the threads, within about `timeout_s`. A thread
        still inside a handshake is left to end on its own (a daemon thread: it does not hold
        up the process, and it closes its socket as soon as the handshake ends)."""
        self.stopping.set()
        ends = self.clock.monotonic() + timeout_s
        for link in self._links:
            if link.thread.is_alive():
                link.thread.join(max(0.0, ends - self.clock.monotonic()))
        lingering = [link.name for link in self._links if link.thread.is_alive()]
        if lingering:
            log.info("streams stopped; still ending: %s", ", ".join(lingering))
        else:
            log.info("streams stopped")

    def api_ready(self) -> bool:
        """The ws-api is logged in now: REST orders may carry x-session-id."""
        return self.state.connected("api")

    def wait_until(self, deadline: float, stop: Callable[[], bool]) -> None:
        """Block until clock.monotonic() >= deadline, or the state's wake is set (then clear
        it), or stop() is true."""
        wake = self.state.wake
        while not stop():
            if wake.is_set():
                wake.clear()
                return
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return
            wake.wait(min(left, WAIT_SLICE_S))

    def pause(self, seconds: float) -> bool:
        """Wait `seconds` unless stopped first; True if stopped."""
        ends = self.clock.monotonic() + seconds
        while (left := ends - self.clock.monotonic()) > 0:
            if self.stopping.wait(min(left, WAIT_SLICE_S)):
                return True
        return self.stopping.is_set()


# ---- the same streams without sockets: the backtest's feed ------------------------------------

class FeedStreams:
    """The streams over a feed that carries the same frames without sockets or threads: the
    backtest's virtual feed (standx_sim.streams.VirtualFeed: `connect(path)` gives a connection
    with `send(text)`; `wait(deadline, on_frame)` moves the virtual clock, delivering each frame
    as on_frame(connection, text) until it answers True; `close(connection)`). The daemon's side
    of the conversation (subscribe, authenticate, re-authenticate after a re-login) and the
    handling of every frame are StandXStreams' own."""

    def __init__(self, feed: Any, auth: Any, symbol: str, clock: Clock) -> None:
        self.state = StreamState(clock, symbol)
        self.session_id = str(uuid.uuid4())
        self._feed = feed
        self._auth = auth
        self._links: list[tuple[Any, Conversation, Callable[[str], None]]] = []

    def start(self) -> None:
        token = self._auth.current_token()
        for path, conversation, handle in (
                (STREAM_PATH, MarketConversation(self.state.symbol), self.state.handle_stream_frame),
                (API_PATH, ApiConversation(self.session_id, self.state), self.state.handle_api_frame)):
            connection = self._feed.connect(path)
            self._links.append((connection, conversation, handle))
            for frame in conversation.opening(token):
                connection.send(frame)
        self.state.set_connected("market", True)

    def request_stop(self) -> None:
        self.stop()

    def stop(self, timeout_s: float = 2.0) -> None:
        for connection, _, _ in self._links:
            self._feed.close(connection)
        self._links.clear()
        self.state.set_connected("market", False)
        self.state.set_connected("api", False)

    def api_ready(self) -> bool:
        return self.state.connected("api")

    def wait_until(self, deadline: float, stop: Callable[[], bool]) -> None:
        """As StandXStreams.wait_until, the feed moving the (virtual) clock meanwhile."""
        token = self._auth.current_token()
        for connection, conversation, _ in self._links:
            for frame in conversation.on_token(token):
                connection.send(frame)
        handlers = {id(connection): handle for connection, _, handle in self._links}

        def on_frame(connection: Any, text: str) -> bool:
            handlers[id(connection)](text)
            return self.state.wake.is_set() or stop()

        if self._links and not self.state.wake.is_set() and not stop():
            self._feed.wait(deadline, on_frame)
        self.state.wake.clear()
