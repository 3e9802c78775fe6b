"""The StandX REST surface of the simulator: one handler serving every endpoint of the contract
(Part 1 of standx_api.md), auth endpoints and perps endpoints alike, with its checks.

``Api.handle(method, path, query, headers, body) -> (status, headers, body)`` never raises: a
bug inside is logged and answered 500. Every answer carries a ``Date`` header in the
exchange's time (clock + skew), and errors are ``{"code": <status>, "message": "..."}``.

Auth model: prepare-signin issues a signedData JWT (payload readable, signature fake) that is
remembered server-side for 180 s and can be used for one login. Login recovers the EIP-191
signer of the payload's ``message``, which must be the payload's address, and issues a token
(JWT-shaped, looked up server-side) bound to the requestId's Ed25519 public key, living
expiresSeconds or max_token_lifetime_s if shorter; signed POSTs must carry a v1 body signature
by that key and a timestamp within 30 s of the exchange's time.

Quantities show the lot's decimals, or more (up to 8) when a partial fill left them off the lot
grid; order and fill prices likewise the tick's, or more for a price on a grid the symbol has
since left (a rule change). query_positions shows Exchange.reported_position (it can lag fills).

Request shapes follow StandX's documentation (standx_api.md Part 1 and section 4): what it allows
is accepted, what it forbids is refused (400), and where it is silent the request is accepted and
a WARNING naming the request and the field is logged here (logger standx_sim.api). So:
- a body field or query parameter the docs do not list is ignored with a warning; a misspelled
  required field is then missing, which is refused;
- cancel_order and query_order need order_id or cl_ord_id; given both, order_id decides, with a
  warning if the two name different visible orders. cancel_orders given both lists cancels every
  order either names;
- a market order's price is ignored with a warning (the order fills at the touch);
- tp_price / sl_price must be decimal strings on the tick; accepted with a warning (not modelled);
- query_orders' status "open" (a status StandX's reference lists) selects the resting orders, new
  and partially_filled; any other value matches the status as it is;
- query_orders and query_trades: start / end are ISO-8601 times (no offset: UTC) keeping the rows
  whose created_at lies between them, both inclusive; last_id keeps the ids below it (rows are
  newest first, so the last id of a page gives the next page); limit is 100 by default, at most
  500, and is the page_size; total counts the rows every filter keeps before limit cuts the page;
- created_block / closed_block are made-up block numbers (StandX does not document its own):
  BLOCKS_PER_S a second of exchange time since BLOCK_EPOCH_TS, when the order was accepted and
  when it became final (filled, canceled, rejected); closed_block is 0 until then;
- one symbol is traded (Exchange.spec, its rules as they are now); query_symbol_info lists the
  catalogue of symbols.py as well. A request naming another listed symbol is refused with
  "symbol not tradable in this simulation", an unlisted one with "invalid symbol"; reads that
  filter by symbol (positions, order and trade lists) answer empty for either.
Not modelled: the TP/SL orders tp_price / sl_price would create; trading several symbols at once;
the "untriggered" status.

x-session-id: a new_order, cancel_order or cancel_orders that succeeds and carries this header
hands its orders to ``order_outcomes`` (the streams' hub sets it; streams.py), which pushes
their asynchronous outcome to the ws-api connection of that session, under the request's
x-request-id. The REST answer is the same with or without it.

Rate limits (ratelimit.py), when on, are checked once a request is counted (request_counts, the
account's metered requests) and before fault rules or processing: per client IP for every
request, and per account for a request with a valid token (its address) or a login request (the
address in its body, or in the sign-in its signedData names). Over a limit the answer is 429
with Retry-After and the request is not processed; such answers are counted in
rate_limited_by_ip and rate_limited_by_address.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from email.utils import formatdate
from functools import lru_cache, partial
from typing import Callable

import base58
from eth_account import Account
from eth_account.messages import encode_defunct
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from . import faults as faults_mod
from .exchange import QTY_DECIMALS_MAX, RESTING, SIDES, Exchange, Fill, Order, Position, RequestError
from .clock import Clock
from .faults import Faults
from .ratelimit import LOCAL_CLIENT, MICROS_PER_S, RateLimits, retry_after_s
from .symbols import SYMBOLS, SymbolSpec
from .wire import Response, error_response, json_response, rate_limited_response

log = logging.getLogger(__name__)

SIGNIN_TTL_S = 180
DEFAULT_TOKEN_TTL_S = 604800
SIGNATURE_WINDOW_S = 30
STATEMENT = "Sign in with Ethereum to access more StandX features and trade perps on standx.com."
PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
DIGITS = re.compile(r"[0-9]+")  # str.isdigit() would also pass "²", which int() refuses
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
SIGNATURE_HEX = re.compile(r"0x[0-9a-fA-F]{130}")
TP_SL_FIELDS = ("tp_price", "sl_price")
ORDER_FIELDS = {"symbol", "side", "order_type", "qty", "time_in_force", "reduce_only", "price", "cl_ord_id",
                "margin_mode", "leverage", *TP_SL_FIELDS}
ORDER_REQUIRED = {"symbol", "side", "order_type", "qty", "time_in_force", "reduce_only"}
MARGIN_MODES = ("cross", "isolated")
CL_ORD_ID_MAX = 32
MONEY_DECIMALS = 8
NOT_TRADABLE = "symbol not tradable in this simulation"
OPEN_STATUS = "open"  # query_orders' status filter for every resting status
BLOCK_EPOCH_TS = 1_735_689_600  # 2025-01-01T00:00:00Z: block 0 of the made-up block numbers
BLOCKS_PER_S = 10
UTC_OFFSET = "+00:00"  # how isoformat ends a UTC time
KNOWN_DATES = 4  # Date headers remembered: answers come in time order, a few to a second
# The query parameters StandX's docs list, by path; others are accepted with a warning.
QUERY_PARAMS: dict[str, frozenset[str]] = {
    "/v1/offchain/prepare-signin": frozenset({"chain"}),
    "/v1/offchain/login": frozenset({"chain"}),
    "/api/query_symbol_info": frozenset({"symbol"}),
    "/api/query_symbol_price": frozenset({"symbol"}),
    "/api/query_positions": frozenset({"symbol"}),
    "/api/query_position_config": frozenset({"symbol"}),
    "/api/query_order": frozenset({"order_id", "cl_ord_id"}),
    "/api/query_open_orders": frozenset({"symbol", "limit"}),
    "/api/query_orders": frozenset({"symbol", "status", "order_type", "start", "end", "last_id", "limit"}),
    "/api/query_trades": frozenset({"symbol", "side", "start", "end", "last_id", "limit"}),
}

PUBLIC, PRIVATE, SIGNED = "public", "private", "signed"
UNKNOWN_PATH = "(unknown path)"  # request_counts' one key for every path nobody serves
LOGIN_PATHS = ("/v1/offchain/prepare-signin", "/v1/offchain/login")  # counted by the address in the body


@dataclass
class Signin:
    address: str
    message: str
    request_id: str
    exp: float


@dataclass
class LoginSession:
    address: str  # lowercase
    verify_key: VerifyKey
    exp: float


@dataclass
class Request:
    query: dict[str, str]
    headers: dict[str, str]  # lowercase names
    body: bytes
    session: LoginSession | None = None
    path: str = ""  # set by the router, for warnings that name the request


# ---- formatting ---------------------------------------------------------------------------

@lru_cache(maxsize=None)  # one per number of decimals
def _unit(decimals: int) -> Decimal:
    """The smallest step with that many decimals: 10 ** -decimals."""
    return Decimal(1).scaleb(-decimals)


def fixed(value: Decimal, decimals: int) -> str:
    """A tick-bound number with exactly `decimals` decimals, plain notation."""
    return format(value.quantize(_unit(decimals)), "f")


def money(value: Decimal) -> str:
    """A computed amount: up to 8 decimals, plain notation, no trailing zeros."""
    q = value.quantize(_unit(MONEY_DECIMALS))
    if q.is_zero():
        return "0"
    text = format(q, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def grid_text(value: Decimal, grid_decimals: int) -> str:
    """A quantity or price with its grid's decimals (lot or tick), or with its own if it has more
    (up to 8), plain notation."""
    own = -value.normalize().as_tuple().exponent
    return fixed(value, min(max(grid_decimals, own), QTY_DECIMALS_MAX))


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def iso_time(ts: float) -> str:
    """ts in ISO-8601 UTC with microseconds, e.g. 2026-01-06T14:00:00.756000Z (what
    strftime("%Y-%m-%dT%H:%M:%S.%fZ") writes for the years 1000 to 9999, in half the time)."""
    return utc(ts).isoformat(timespec="microseconds")[:-len(UTC_OFFSET)] + "Z"


def http_date(ts: float) -> str:
    """The Date header of an answer at ts: formatdate(ts, usegmt=True), formatted once per second."""
    return _http_date(_whole_second(ts))


def _whole_second(ts: float) -> int:
    """The second of utc(ts): fromtimestamp rounds ts to the microsecond first (half to even),
    so the last half microsecond of a second belongs to the next one."""
    second = math.floor(ts)
    return second + (round((ts - second) * MICROS_PER_S) == MICROS_PER_S)


@lru_cache(maxsize=KNOWN_DATES)
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)


def block_at(ts: float) -> int:
    """The made-up block number of an exchange time (see the module docstring)."""
    return math.floor((ts - BLOCK_EPOCH_TS) * BLOCKS_PER_S)


def symbol_row(spec: SymbolSpec) -> dict:
    """A symbol's row of query_symbol_info."""
    return {
        "symbol": spec.symbol, "base_asset": spec.base_asset, "quote_asset": spec.quote_asset,
        "base_decimals": spec.base_decimals, "quote_decimals": spec.quote_decimals,
        "price_tick_decimals": spec.price_tick_decimals, "qty_tick_decimals": spec.qty_tick_decimals,
        "min_order_qty": str(spec.min_order_qty), "max_order_qty": str(spec.max_order_qty),
        "max_position_size": str(spec.max_position_size), "max_open_orders": str(spec.max_open_orders),
        "def_leverage": str(spec.def_leverage), "max_leverage": str(spec.max_leverage),
        "maker_fee": str(spec.maker_fee), "taker_fee": str(spec.taker_fee),
        "depth_ticks": ",".join(format(spec.tick.scaleb(k), "f") for k in range(3)),
        "price_cap_ratio": str(spec.price_cap_ratio), "price_floor_ratio": str(spec.price_floor_ratio),
        "enabled": True, "created_at": "2025-08-01T00:00:00.000000Z", "updated_at": "2025-08-01T00:00:00.000000Z",
    }


def order_row(order: Order, spec: SymbolSpec, position_id: int) -> dict:
    """An order as query_order shows it (and the order stream pushes it); position_id: its
    account's position id (0: none yet)."""
    locks_margin = order.status in RESTING and not order.reduce_only
    locked = order.price * order.remaining / order.leverage if locks_margin else 0
    return {
        "id": order.id, "cl_ord_id": order.cl_ord_id, "symbol": order.symbol, "side": order.side,
        "order_type": order.order_type, "time_in_force": order.time_in_force,
        "price": grid_text(order.price if order.price is not None else Decimal(0), spec.price_tick_decimals),
        "qty": grid_text(order.qty, spec.qty_tick_decimals),
        "fill_qty": grid_text(order.fill_qty, spec.qty_tick_decimals),
        "fill_avg_price": money(order.fill_avg_price), "status": order.status, "reduce_only": order.reduce_only,
        "leverage": str(order.leverage), "margin_mode": order.margin_mode, "margin": money(Decimal(locked)),
        "avail_locked": money(Decimal(locked)), "position_id": position_id, "liq_id": 0,
        "source": "user", "remark": order.remark, "payload": None, "created_block": block_at(order.created_at),
        "closed_block": 0 if order.status in RESTING else block_at(order.updated_at),
        "created_at": iso_time(order.created_at), "updated_at": iso_time(order.updated_at),
        "user": f"bsc_{order.address}",
    }


def position_row(pos: Position, address: str, spec: SymbolSpec, leverage: int, margin_mode: str,
                 mark: Decimal) -> dict:
    """A position as query_positions shows it (and the position stream pushes it), at this mark."""
    value = abs(pos.qty) * mark
    return {
        "id": pos.id, "symbol": spec.symbol, "qty": grid_text(pos.qty, spec.qty_tick_decimals),
        "entry_price": money(pos.entry_price), "entry_value": money(abs(pos.qty) * pos.entry_price),
        "mark_price": fixed(mark, spec.price_tick_decimals), "position_value": money(value),
        "initial_margin": money(value / leverage), "holding_margin": money(value / leverage),
        "maint_margin": money(value / leverage / 2), "mmr": money(Decimal(1) / (2 * leverage)),
        "leverage": str(leverage),
        "margin_mode": margin_mode, "margin_asset": spec.quote_asset, "liq_price": "0",
        "bankruptcy_price": "0", "realized_pnl": money(pos.realized_pnl),
        "upnl": money(pos.qty * (mark - pos.entry_price)),
        "status": "open", "time": iso_time(pos.updated_at), "created_at": iso_time(pos.created_at),
        "updated_at": iso_time(pos.updated_at), "user": f"bsc_{address}",
    }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(header: dict, payload: dict) -> str:
    """A JWT-shaped string; the signature segment is random (the server looks tokens up)."""
    parts = [json.dumps(header, separators=(",", ":")).encode(), json.dumps(payload, separators=(",", ":")).encode()]
    return ".".join([_b64url(p) for p in parts] + [_b64url(secrets.token_bytes(32))])


def _success() -> Response:
    return json_response(200, {"code": 0, "message": "success", "request_id": str(uuid.uuid4())})


# ---- request parsing ----------------------------------------------------------------------

def _reject_constant(name: str):
    raise RequestError(400, f"invalid JSON constant {name}")


def json_object(body: bytes, allowed: set[str], required: set[str],
                on_unknown: Callable[[str], None] | None = None) -> dict:
    """The JSON object of a request body, with no missing field. A field not in `allowed` is
    refused, or, given on_unknown, passed to it and dropped."""
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RequestError(400, "invalid request payload: not JSON") from None
    if not isinstance(obj, dict):
        raise RequestError(400, "invalid request payload: expected a JSON object")
    for name in sorted(set(obj) - allowed):
        if on_unknown is None:
            raise RequestError(400, f"unknown field: {name}")
        on_unknown(name)
        del obj[name]
    missing = sorted(required - set(obj))
    if missing:
        raise RequestError(400, f"missing field: {missing[0]}")
    return obj


def decimal_field(obj: dict, name: str, decimals: int) -> Decimal:
    """A price or qty: a JSON string in plain decimal notation with at most `decimals` decimals."""
    value = obj[name]
    if not isinstance(value, str):
        raise RequestError(400, f"{name} must be a decimal string")
    if not PLAIN_DECIMAL.fullmatch(value):
        raise RequestError(400, f"{name} must be a plain decimal number, got {value!r}")
    if "." in value and len(value.split(".")[1]) > decimals:
        raise RequestError(400, f"{name} has more than {decimals} decimals")
    return Decimal(value)


def choice_field(obj: dict, name: str, choices: tuple[str, ...]) -> str:
    value = obj[name]
    if value not in choices or not isinstance(value, str):
        raise RequestError(400, f"{name} must be one of {', '.join(choices)}")
    return value


def int_field(obj: dict, name: str) -> int:
    value = obj[name]
    if type(value) is not int:  # bool is an int subclass; refuse it too
        raise RequestError(400, f"{name} must be an integer")
    return value


def query_int(query: dict[str, str], name: str, default: int, maximum: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not DIGITS.fullmatch(text) or not 1 <= int(text) <= maximum:
        raise RequestError(400, f"{name} must be an integer between 1 and {maximum}")
    return int(text)


def query_id(query: dict[str, str], name: str) -> int | None:
    """An order or row id in the query (order_id, last_id), None when absent."""
    text = query.get(name)
    if text is None:
        return None
    if not DIGITS.fullmatch(text):
        raise RequestError(400, f"{name} must be an integer")
    return int(text)


def query_time(query: dict[str, str], name: str) -> datetime | None:
    """An ISO-8601 time in the query (start, end), None when absent; without an offset, UTC."""
    text = query.get(name)
    if text is None:
        return None
    try:
        # Python 3.10's fromisoformat does not take the "Z" of UTC, 3.11's does.
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise RequestError(400, f"{name} must be an ISO-8601 time, e.g. 2026-01-06T00:00:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def window(rows: list, query: dict[str, str]) -> list:
    """The rows (newest first, with id and created_at) a list request's start, end and last_id keep."""
    start, end, last_id = query_time(query, "start"), query_time(query, "end"), query_id(query, "last_id")
    return [r for r in rows if (last_id is None or r.id < last_id)
            and (start is None or utc(r.created_at) >= start) and (end is None or utc(r.created_at) <= end)]


def status_matches(status: str, wanted: str | None) -> bool:
    return wanted is None or status == wanted or (wanted == OPEN_STATUS and status in RESTING)


def _warn_unlisted(request: Request, kind: str, name: str) -> None:
    log.warning("%s: %s %r is not in StandX's docs: accepted and ignored", request.path, kind, name)


class Api:
    """Serves the StandX endpoints against an Exchange; see the module docstring."""

    def __init__(self, exchange: Exchange, faults: Faults, clock: Clock, rate_limits: RateLimits | None = None) -> None:
        self._exchange = exchange
        self._faults = faults
        self._clock = clock  # the rate limits run on true time: an injected clock skew must not refill them
        self._rate_limits = rate_limits  # None: no limits
        self.rate_limited_by_ip: Counter = Counter()  # 429s of the rate limits (not of fault rules)
        self.rate_limited_by_address: Counter = Counter()  # lowercase address; requests of no account are not here
        self._signins: dict[str, Signin] = {}
        self._sessions: dict[str, LoginSession] = {}
        self.request_counts: Counter = Counter()  # every request by path, logged in or not
        self.max_token_lifetime_s: float | None = None  # caps expiresSeconds of logins from now on
        # (x-session-id, address, x-request-id, "new" | "cancel", orders) of a successful order
        # request that asks for its outcome on the ws-api (the streams' hub; None: nobody listens).
        self.order_outcomes: Callable[[str, str, str, str, list[Order]], None] | None = None
        self._routes: dict[tuple[str, str], tuple[str, Callable[[Request], Response]]] = {
            ("POST", "/v1/offchain/prepare-signin"): (PUBLIC, self._prepare_signin),
            ("POST", "/v1/offchain/login"): (PUBLIC, self._login),
            ("GET", "/api/health"): (PUBLIC, self._health),
            ("GET", "/api/query_symbol_info"): (PUBLIC, self._symbol_info),
            ("GET", "/api/query_symbol_price"): (PUBLIC, self._symbol_price),
            ("GET", "/api/query_positions"): (PRIVATE, self._positions),
            ("GET", "/api/query_balance"): (PRIVATE, self._balance),
            ("GET", "/api/query_position_config"): (PRIVATE, self._position_config),
            ("GET", "/api/query_order"): (PRIVATE, self._query_order),
            ("GET", "/api/query_open_orders"): (PRIVATE, self._open_orders),
            ("GET", "/api/query_orders"): (PRIVATE, self._orders),
            ("GET", "/api/query_trades"): (PRIVATE, self._trades),
            ("POST", "/api/new_order"): (SIGNED, self._new_order),
            ("POST", "/api/cancel_order"): (SIGNED, self._cancel_order),
            ("POST", "/api/cancel_orders"): (SIGNED, self._cancel_orders),
            ("POST", "/api/change_leverage"): (SIGNED, self._change_leverage),
            ("POST", "/api/change_margin_mode"): (SIGNED, self._change_margin_mode),
        }
        self._paths = {path for _, path in self._routes}

    def expire_tokens(self) -> None:
        """Every token issued so far stops working (401), as after a server-side revocation."""
        self._sessions.clear()
        log.info("all tokens expired")

    # ---- dispatch -----------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
               body: bytes, client: str = LOCAL_CLIENT) -> Response:
        """Answer one HTTP request from the IP address `client`: (status, response headers,
        response body). Never raises."""
        try:
            status, out_headers, out_body = self._serve(method.upper(), path, query,
                                                        {k.lower(): v for k, v in headers.items()}, body or b"",
                                                        client)
        except Exception:  # a simulator bug must not kill the server or the backtest
            log.exception("internal error serving %s %s", method, path)
            status, out_headers, out_body = error_response(500, "internal server error")
        return status, {**out_headers, "Date": http_date(self._exchange.exchange_time())}, out_body

    def _serve(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes,
               client: str) -> Response:
        # Paths nobody serves share one counter: a client probing random paths for days must
        # not grow the simulator's memory.
        counted = path if path in self._paths else UNKNOWN_PATH
        self.request_counts[counted] += 1
        caller = self._session_of(headers)
        if caller is not None and path not in LOGIN_PATHS:
            self._exchange.count_request(caller.address, counted)
        # The gateway refuses before the exchange sees the request, so no fault rule fires on it.
        refusal = self._rate_limit_refusal(path, caller, body, client)
        if refusal is not None:
            return refusal
        fault = self._faults.pick(path)
        if fault is not None and fault.kind not in faults_mod.PROCESSED_KINDS:
            return faults_mod.response_before_processing(fault)
        response = self._route(method, path, Request(query, headers, body), caller)
        if fault is not None:
            return faults_mod.response_after_processing(fault, response)
        return response

    def _rate_limit_refusal(self, path: str, caller: LoginSession | None, body: bytes, client: str) -> Response | None:
        """The 429 answer when the request is over a rate limit (counted), else None."""
        if self._rate_limits is None:
            return None
        address = self._rate_limited_account(path, caller, body)
        wait_s = self._rate_limits.admit(self._clock.now(), address, client)
        if wait_s is None:
            return None
        self.rate_limited_by_ip[client] += 1
        if address is not None:
            self.rate_limited_by_address[address] += 1
        return rate_limited_response(retry_after_s(wait_s))

    def _rate_limited_account(self, path: str, caller: LoginSession | None, body: bytes) -> str | None:
        """The lowercase address whose account budget a request spends: a login request's from
        its body (unchecked: the login itself checks it), any other's from its token; None when
        there is none (the request counts per IP only)."""
        if path not in LOGIN_PATHS:
            return caller.address if caller is not None else None
        try:
            obj = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(obj, dict):
            return None
        if path == "/v1/offchain/prepare-signin":
            address = obj.get("address")
        else:
            signed_data = obj.get("signedData")
            signin = self._signins.get(signed_data) if isinstance(signed_data, str) else None
            address = signin.address if signin is not None else None
        return address.lower() if isinstance(address, str) and ADDRESS.fullmatch(address) else None

    def _route(self, method: str, path: str, request: Request, caller: LoginSession | None) -> Response:
        """The answer of the endpoint; `caller`: the session of the request's token (None: no
        valid one), looked up once per request."""
        route = self._routes.get((method, path))
        if route is None:
            return error_response(405, "method not allowed") if path in self._paths else error_response(404, "not found")
        kind, handler = route
        request.path = path
        try:
            if kind != PUBLIC:
                request.session = self._authenticate(request.headers, caller)
            if kind == SIGNED:
                self._check_body_signature(request)
            for name in sorted(set(request.query) - QUERY_PARAMS.get(path, frozenset())):
                _warn_unlisted(request, "query parameter", name)
            return handler(request)
        except RequestError as e:
            return error_response(e.status, e.message)

    # ---- auth ---------------------------------------------------------------------------

    def _session_of(self, headers: dict[str, str]) -> LoginSession | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return self._live_session(token.strip()) if scheme.lower() == "bearer" else None

    def _live_session(self, token: str) -> LoginSession | None:
        """The login session of a token that is known and not expired, else None."""
        session = self._sessions.get(token)
        if session is None or session.exp <= self._exchange.exchange_time():
            return None
        return session

    def token_address(self, token: str) -> str | None:
        """The lowercase address a token logged in, if it would pass as a Bearer token now."""
        session = self._live_session(token)
        return None if session is None else session.address

    @staticmethod
    def _authenticate(headers: dict[str, str], session: LoginSession | None) -> LoginSession:
        """The session of a request that needs one (its token's, from _session_of), or 401."""
        if not headers.get("authorization"):
            raise RequestError(401, "missing bearer token")
        if session is None:
            raise RequestError(401, "invalid or expired token")
        return session

    def _check_body_signature(self, request: Request) -> None:
        h = request.headers
        names = ("x-request-sign-version", "x-request-id", "x-request-timestamp", "x-request-signature")
        missing = [n for n in names if not h.get(n)]
        if missing:
            raise RequestError(403, f"invalid body signature: missing {missing[0]}")
        if h["x-request-sign-version"] != "v1":
            raise RequestError(403, "invalid body signature: unsupported x-request-sign-version")
        try:
            signature = base64.b64decode(h["x-request-signature"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(403, "invalid body signature") from None
        signed = f"v1,{h['x-request-id']},{h['x-request-timestamp']},".encode() + request.body
        try:
            request.session.verify_key.verify(signed, signature)
        except (BadSignatureError, ValueError):
            raise RequestError(403, "invalid body signature") from None
        timestamp = h["x-request-timestamp"]
        if not DIGITS.fullmatch(timestamp):
            raise RequestError(400, "x-request-timestamp must be unix time in milliseconds")
        if abs(int(timestamp) / 1000 - self._exchange.exchange_time()) > SIGNATURE_WINDOW_S:
            raise RequestError(403, "signature has expired")

    @staticmethod
    def _require_bsc(request: Request) -> None:
        if request.query.get("chain") != "bsc":
            raise RequestError(400, "unsupported chain: expected ?chain=bsc")

    def _prepare_signin(self, request: Request) -> Response:
        self._require_bsc(request)
        obj = self._body(request, {"address", "requestId"}, {"address", "requestId"})
        address, request_id = obj["address"], obj["requestId"]
        if not isinstance(address, str) or not ADDRESS.fullmatch(address):
            raise RequestError(400, "address must be a 0x-prefixed 20-byte hex address")
        if not isinstance(request_id, str) or len(self._decode_public_key(request_id)) != 32:
            raise RequestError(400, "requestId must be a base58 Ed25519 public key")
        now = self._exchange.exchange_time()
        self._signins = {k: v for k, v in self._signins.items() if v.exp > now}
        nonce = secrets.token_hex(8)
        issued_at = iso_time(now)
        message = (f"standx.com wants you to sign in with your Ethereum account:\n{address}\n\n{STATEMENT}\n\n"
                   f"URI: https://standx.com\nVersion: 1\nChain ID: 56\nNonce: {nonce}\nIssued At: {issued_at}\n"
                   f"Request ID: {request_id}")
        payload = {"domain": "standx.com", "uri": "https://standx.com", "statement": STATEMENT, "version": "1",
                   "chainId": 56, "nonce": nonce, "address": address, "requestId": request_id,
                   "issuedAt": issued_at, "message": message, "iat": int(now), "exp": int(now) + SIGNIN_TTL_S}
        signed_data = _jwt({"alg": "ES256", "typ": "JWT"}, payload)
        self._signins[signed_data] = Signin(address, message, request_id, now + SIGNIN_TTL_S)
        self._exchange.count_request(address, "/v1/offchain/prepare-signin")
        return json_response(200, {"success": True, "signedData": signed_data})

    @staticmethod
    def _decode_public_key(text: str) -> bytes:
        try:
            return base58.b58decode(text)
        except ValueError:
            return b""

    def _login(self, request: Request) -> Response:
        self._require_bsc(request)
        obj = self._body(request, {"signature", "signedData", "expiresSeconds"}, {"signature", "signedData"})
        signature, signed_data = obj["signature"], obj["signedData"]
        expires_s = obj.get("expiresSeconds", DEFAULT_TOKEN_TTL_S)
        if type(expires_s) is not int or expires_s <= 0:
            raise RequestError(400, "expiresSeconds must be a positive integer")
        if not isinstance(signature, str) or not SIGNATURE_HEX.fullmatch(signature):
            raise RequestError(400, "signature must be a 0x-prefixed 65-byte hex string")
        if not isinstance(signed_data, str):
            raise RequestError(400, "signedData must be a string")
        signin = self._signins.pop(signed_data, None)  # single use, whatever the outcome
        now = self._exchange.exchange_time()
        if signin is None:
            raise RequestError(401, "invalid or already used signedData")
        if signin.exp <= now:
            raise RequestError(401, "signedData expired")
        try:
            signer = Account.recover_message(encode_defunct(text=signin.message), signature=signature)
        except Exception:  # eth_account raises several types for an unrecoverable signature
            raise RequestError(401, "invalid signature") from None
        if signer.lower() != signin.address.lower():
            raise RequestError(401, "signature does not match address")
        address = signin.address.lower()
        cap_s = self.max_token_lifetime_s
        lifetime_s = expires_s if cap_s is None else min(expires_s, cap_s)
        payload = {"sub": address, "address": address, "requestId": signin.request_id, "chain": "bsc",
                   "iat": int(now), "exp": int(now + lifetime_s), "jti": str(uuid.uuid4())}
        token = _jwt({"alg": "HS256", "typ": "JWT"}, payload)
        self._sessions = {k: v for k, v in self._sessions.items() if v.exp > now}  # forget expired ones
        self._sessions[token] = LoginSession(address, VerifyKey(self._decode_public_key(signin.request_id)),
                                             now + lifetime_s)
        self._exchange.count_request(address, "/v1/offchain/login")
        log.info("login of %s", address)
        return json_response(200, {"token": token, "address": signin.address, "alias": f"sim-{address[2:8]}",
                                   "chain": "bsc", "perpsAlpha": True})

    # ---- public endpoints ---------------------------------------------------------------

    @staticmethod
    def _health(request: Request) -> Response:
        return 200, {"Content-Type": "text/plain"}, b"OK"

    def _listed_specs(self) -> list[SymbolSpec]:
        """Every listed symbol: the traded one first, with its rules as they are now, then the
        rest of the catalogue."""
        traded = self._exchange.spec
        return [traded] + [spec for spec in SYMBOLS.values() if spec.symbol != traded.symbol]

    def _symbol_info(self, request: Request) -> Response:
        symbol = request.query.get("symbol")
        return json_response(200, [symbol_row(spec) for spec in self._listed_specs() if symbol in (None, spec.symbol)])

    def _require_symbol(self, symbol) -> None:
        """A request bound to a symbol must name the one this simulation trades."""
        if symbol == self._exchange.spec.symbol:
            return
        if isinstance(symbol, str) and symbol in SYMBOLS:
            raise RequestError(400, NOT_TRADABLE)
        raise RequestError(400, "invalid symbol")

    def _symbol_price(self, request: Request) -> Response:
        self._require_symbol(request.query.get("symbol"))
        ex, decimals = self._exchange, self._exchange.spec.price_tick_decimals
        book, mark, last = ex.book(), ex.mark_price(), ex.last_price()
        mid = (book.bid + book.ask) / 2
        return json_response(200, {
            "symbol": ex.spec.symbol, "base": ex.spec.base_asset, "quote": ex.spec.quote_asset,
            "index_price": fixed(ex.index_price(), decimals), "mark_price": fixed(mark, decimals),
            "last_price": None if last is None else fixed(last, decimals), "mid_price": format(mid, "f"),
            "spread_bid": fixed(book.bid, decimals), "spread_ask": fixed(book.ask, decimals),
            "time": iso_time(ex.exchange_time()),
        })

    # ---- private reads ------------------------------------------------------------------

    def _positions(self, request: Request) -> Response:
        ex, address = self._exchange, request.session.address
        pos = ex.reported_position(address)
        if pos is None or request.query.get("symbol", ex.spec.symbol) != ex.spec.symbol:
            return json_response(200, [])
        leverage, margin_mode = ex.position_config(address)
        return json_response(200, [position_row(pos, address, ex.spec, leverage, margin_mode, ex.mark_price())])

    def _balance(self, request: Request) -> Response:
        figures = self._exchange.balance_view(request.session.address)
        if figures is None:
            raise RequestError(404, "user balance not found")
        return json_response(200, {k: money(v) for k, v in figures.items()})

    def _position_config(self, request: Request) -> Response:
        self._require_symbol(request.query.get("symbol"))
        leverage, margin_mode = self._exchange.position_config(request.session.address)
        return json_response(200, {"symbol": self._exchange.spec.symbol, "leverage": leverage,
                                   "margin_mode": margin_mode})

    def order_json(self, order: Order) -> dict:
        pos = self._exchange.position(order.address)
        return order_row(order, self._exchange.spec, pos.id if pos else 0)

    def trade_json(self, fill: Fill, address: str) -> dict:
        spec = self._exchange.spec
        return {
            "id": fill.id, "order_id": fill.order_id, "symbol": fill.symbol, "side": fill.side,
            "price": grid_text(fill.price, spec.price_tick_decimals),
            "qty": grid_text(fill.qty, spec.qty_tick_decimals),
            "value": money(fill.value), "fee_qty": money(fill.fee), "fee_asset": fill.fee_asset, "pnl": money(fill.pnl),
            "created_at": iso_time(fill.created_at), "updated_at": iso_time(fill.created_at), "user": f"bsc_{address}",
        }

    def _order_reference(self, request: Request, order_id: int | None,
                         cl_ord_id: str | None) -> tuple[int | None, str | None]:
        """The one reference that decides which order a request names. StandX asks for at least
        one of order_id and cl_ord_id; given both, order_id decides, with a warning when the two
        name different visible orders (pending orders are not compared)."""
        if order_id is None and cl_ord_id is None:
            raise RequestError(400, "give order_id or cl_ord_id")
        if order_id is None or cl_ord_id is None:
            return order_id, cl_ord_id
        find = partial(self._exchange.find_order, request.session.address)
        if find(order_id=order_id) is not find(cl_ord_id=cl_ord_id):
            log.warning("%s: order_id %s and cl_ord_id %r name different orders; order_id decides",
                        request.path, order_id, cl_ord_id)
        return order_id, None

    def _query_order(self, request: Request) -> Response:
        q = request.query
        order_id, cl_ord_id = self._order_reference(request, query_id(q, "order_id"), q.get("cl_ord_id"))
        order = self._exchange.find_order(request.session.address, order_id=order_id, cl_ord_id=cl_ord_id)
        if order is None:
            raise RequestError(404, "order not found")
        return json_response(200, self.order_json(order))

    def _page(self, rows: list, request: Request, limit: int, row_json: Callable[[object], dict]) -> Response:
        """The list envelope: the first `limit` rows (none when the request names another symbol);
        total counts them all."""
        if request.query.get("symbol", self._exchange.spec.symbol) != self._exchange.spec.symbol:
            rows = []
        return json_response(200, {"page_size": limit, "result": [row_json(r) for r in rows[:limit]],
                                   "total": len(rows)})

    def _open_orders(self, request: Request) -> Response:
        limit = query_int(request.query, "limit", 500, 1200)
        return self._page(self._exchange.open_orders(request.session.address), request, limit, self.order_json)

    def _orders(self, request: Request) -> Response:
        q = request.query
        limit = query_int(q, "limit", 100, 500)
        status, order_type = q.get("status"), q.get("order_type")
        rows = [o for o in window(self._exchange.orders(request.session.address), q)
                if status_matches(o.status, status) and order_type in (None, o.order_type)]
        return self._page(rows, request, limit, self.order_json)

    def _trades(self, request: Request) -> Response:
        q, address = request.query, request.session.address
        limit = query_int(q, "limit", 100, 500)
        side = choice_field(q, "side", SIDES) if "side" in q else None
        rows = [f for f in window(self._exchange.trades(address), q) if side in (None, f.side)]
        return self._page(rows, request, limit, partial(self.trade_json, address=address))

    # ---- signed actions -----------------------------------------------------------------

    def _body(self, request: Request, allowed: set[str], required: set[str]) -> dict:
        """The request's JSON body; a field StandX's docs do not list is ignored with a warning."""
        return json_object(request.body, allowed, required,
                           on_unknown=lambda name: _warn_unlisted(request, "body field", name))

    def _new_order(self, request: Request) -> Response:
        ex = self._exchange
        spec, address = ex.spec, request.session.address
        obj = self._body(request, ORDER_FIELDS, ORDER_REQUIRED)
        self._require_symbol(obj["symbol"])
        side = choice_field(obj, "side", SIDES)
        order_type = choice_field(obj, "order_type", ("limit", "market"))
        tif = choice_field(obj, "time_in_force", ("gtc", "ioc", "alo"))
        if not isinstance(obj["reduce_only"], bool):
            raise RequestError(400, "reduce_only must be a boolean")
        qty = decimal_field(obj, "qty", spec.qty_tick_decimals)
        if not spec.min_order_qty <= qty <= spec.max_order_qty:
            raise RequestError(400, f"qty must be between {spec.min_order_qty} and {spec.max_order_qty}")
        price = self._order_price(request, obj, order_type, tif)
        self._check_tp_sl(request, obj)
        cl_ord_id = obj.get("cl_ord_id", uuid.uuid4().hex[:26])
        if not isinstance(cl_ord_id, str) or not 1 <= len(cl_ord_id) <= CL_ORD_ID_MAX:
            raise RequestError(400, f"cl_ord_id must be a string of 1 to {CL_ORD_ID_MAX} characters")
        self._check_position_config(obj, address)
        order = ex.submit_order(address, side=side, order_type=order_type, qty=qty, time_in_force=tif,
                                reduce_only=obj["reduce_only"], price=price, cl_ord_id=cl_ord_id)
        self._push_outcomes(request, "new", [order])
        return _success()

    def _push_outcomes(self, request: Request, kind: str, orders: list[Order]) -> None:
        """An accepted order request with an x-session-id gets its outcome on that ws-api session."""
        session_id = request.headers.get("x-session-id")
        if session_id and self.order_outcomes is not None:
            self.order_outcomes(session_id, request.session.address, request.headers["x-request-id"], kind, orders)

    def _order_price(self, request: Request, obj: dict, order_type: str, tif: str) -> Decimal | None:
        spec = self._exchange.spec
        if order_type == "market":
            if tif == "alo":
                raise RequestError(400, "a market order cannot be alo")
            if "price" in obj:  # "limit only" in the docs, not forbidden: a market order fills at the touch
                log.warning("%s: price %r of a market order ignored", request.path, obj["price"])
            return None
        if "price" not in obj:
            raise RequestError(400, "missing field: price")
        price = decimal_field(obj, "price", spec.price_tick_decimals)
        mark = self._exchange.mark_price()
        if not mark * (1 - spec.price_floor_ratio) <= price <= mark * (1 + spec.price_cap_ratio):
            raise RequestError(400, "price is too far from the mark price")
        return price

    def _check_tp_sl(self, request: Request, obj: dict) -> None:
        """tp_price / sl_price are documented: checked as prices on the tick, then accepted with a
        warning, since the simulator does not create the TP/SL orders StandX would after a fill."""
        for name in TP_SL_FIELDS:
            if name in obj:
                decimal_field(obj, name, self._exchange.spec.price_tick_decimals)
                log.warning("%s: %s %s accepted, but the simulator creates no TP/SL order", request.path, name,
                            obj[name])

    def _check_position_config(self, obj: dict, address: str) -> None:
        leverage, margin_mode = self._exchange.position_config(address)
        if "margin_mode" in obj and obj["margin_mode"] != margin_mode:
            raise RequestError(400, f"margin_mode does not match the position config ({margin_mode})")
        if "leverage" in obj and (type(obj["leverage"]) is not int or obj["leverage"] != leverage):
            raise RequestError(400, f"leverage does not match the position config ({leverage})")

    def _cancel_order(self, request: Request) -> Response:
        obj = self._body(request, {"order_id", "cl_ord_id"}, set())
        order_id = int_field(obj, "order_id") if "order_id" in obj else None
        cl_ord_id = obj.get("cl_ord_id")
        if "cl_ord_id" in obj and not isinstance(cl_ord_id, str):
            raise RequestError(400, "cl_ord_id must be a string")
        order_id, cl_ord_id = self._order_reference(request, order_id, cl_ord_id)
        order = self._exchange.request_cancel(request.session.address, order_id=order_id, cl_ord_id=cl_ord_id)
        self._push_outcomes(request, "cancel", [order])
        return _success()

    def _cancel_orders(self, request: Request) -> Response:
        """Cancel every order either list names (the docs give one list or the other; both is
        not forbidden)."""
        obj = self._body(request, {"order_id_list", "cl_ord_id_list"}, set())
        if not obj:
            raise RequestError(400, "give order_id_list or cl_ord_id_list")
        for name, values in obj.items():
            item_type = int if name == "order_id_list" else str
            if not isinstance(values, list) or not values or any(type(v) is not item_type for v in values):
                raise RequestError(400, f"{name} must be a non-empty list of {item_type.__name__}")
        orders = self._exchange.request_cancels(request.session.address, order_ids=obj.get("order_id_list"),
                                                cl_ord_ids=obj.get("cl_ord_id_list"))
        self._push_outcomes(request, "cancel", orders)
        return _success()

    def _change_leverage(self, request: Request) -> Response:
        obj = self._body(request, {"symbol", "leverage"}, {"symbol", "leverage"})
        self._require_symbol(obj["symbol"])
        self._exchange.change_leverage(request.session.address, int_field(obj, "leverage"))
        return _success()

    def _change_margin_mode(self, request: Request) -> Response:
        obj = self._body(request, {"symbol", "margin_mode"}, {"symbol", "margin_mode"})
        self._require_symbol(obj["symbol"])
        self._exchange.change_margin_mode(request.session.address, choice_field(obj, "margin_mode", MARGIN_MODES))
        return _success()
