"""StandX Perps market maker: one post-only buy and one post-only sell around the mark price.

Every CHECK_INTERVAL the loop reads, in one round trip, the position, the mark price, our
orders (when one needs confirming or the audit is due) and every 10th loop the balance; then
(1) closes any position at once with a reduce-only IOC market order, (2) reconciles our
orders, (3) requotes a side at once when its quote is missing or has drifted out of the band
(the old quote cancelled and seen over before the new one goes out). A low balance widens the
band. SIGTERM/SIGINT/SIGHUP: finish the loop, cancel our orders, confirm, close any position,
exit.
"""
from __future__ import annotations

import argparse
import difflib
import io
import json
import logging
import logging.handlers
import math
import os
import re
import secrets
import signal
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from functools import partial
from typing import Any, Callable, Mapping, NamedTuple

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from eth_account import Account

import standx_api as api
from standx_ws import FeedStreams, PriceUpdate, StandXStreams, stream_urls
from alerts import AlertConfig, AlertConfigError, Alerter, load_alert_config
import rewards
from rewards import DEFAULT_PROGRAMME, PROGRAMMES, RewardMeter, pair_value, tier_label
from standx_auth import (DEFAULT_AUTH_BASE_URL, DEFAULT_PERPS_BASE_URL, AuthError, Clock,
                         RateLimitError, RealClock, SignatureExpiredError, StandXAuth, StandXError,
                         UnknownOutcomeError, normalize_private_key, sleep_until)

log = logging.getLogger("market_maker")

BUY, SELL = "buy", "sell"
SIDES = (BUY, SELL)
# Our orders, and only ours, start with this: a person's manual orders are never touched.
CL_ORD_ID_PREFIX = "sxmm"
# Only these mean an order is over; any other status (or none) is treated as still live, so an
# unexpected spelling can never make us forget an order that rests.
FINAL_STATUSES = frozenset({"filled", "canceled", "cancelled", "rejected", "expired"})
# A number in an answer beyond these is garbled, not a price, size or balance.
WIRE_NUMBER_MAX = Decimal("1e15")
WIRE_DECIMALS_MAX = 18
# Ask for the exchange's largest page: a list cut short could hide an order of ours.
OPEN_ORDERS_LIMIT = 1200
# The symbol's tick and lot can change: read them again this often.
RULES_REFRESH_S = 300.0
BALANCE_CHECK_EVERY_LOOPS = 10
# An order whose request got no clear answer (timeout, 5xx), not visible this long after it
# and unknown to query_order all along, never reached the exchange: it is no longer waited
# for. Should it appear after all, it counts on its side and the audit cancels it as a stray.
# (An order the exchange accepted is waited for however long it takes.)
UNSEEN_GIVE_UP_S = 10.0
# ...and forgotten this long after that: a stop until then still cancels it and is not clean
# while it may yet appear. (Accepted orders show within seconds; 20 s of silence is a request
# that never arrived.)
GIVEN_UP_FORGET_S = 10.0
# An order still not visible after this long is looked up by cl_ord_id: a rejection during
# matching (an alo that would cross, no margin) is then known at once.
LOOKUP_AFTER_S = 1.0
# A replaced quote is looked up this often, for at most this long, until it is seen over.
CANCEL_POLL_S = 0.05
CANCEL_CONFIRM_S = 1.0
# Open orders we may hold at once: a quote a side and a closing order.
OPEN_ORDERS_NEEDED = 3
# No quote is priced off a mark read longer ago than this.
PRICE_MAX_AGE_S = 2.0
# A side whose order vanished, its status unknown, waits this long for a fill to show in the
# position; one whose status says it filled waits until the fill shows, up to FILL_SHOWS_MAX_S.
FILL_CHECK_MAX_S = 10.0
FILL_SHOWS_MAX_S = 60.0
# The position's and the order's timestamps of one fill may differ by a little on the exchange.
FILL_TIME_SKEW_S = 0.25
# A cancel not effective after this long is sent again.
CANCEL_RETRY_S = 2.0
# Our orders are tracked locally; the exchange's list is read when an order needs confirming,
# and at least this often to catch what local state cannot see (strays, silent rejections).
AUDIT_EVERY_S = 2.0
# After a close is sent, wait this long for the position to reflect it before closing again.
CLOSE_SETTLE_S = 1.0
# The original strategy's pause between "cancel all" and "place both".
CANCEL_FIRST_PAUSE_S = 1.0
STATUS_EVERY_S = 60.0
# The reward programmes count a quote within this distance of the mark (either side of it).
REWARD_BAND_BPS = Decimal(10)
UPTIME_WINDOW_S = 3600
# A state file of ours holds at most a day of hourly tallies: a few kB. Anything far larger is
# not read at start (it would only slow every status line down).
STATE_FILE_MAX_BYTES = 1_000_000
# The running daemon's state for --status: one file per account and symbol, by default beside
# the code so that --status finds it from any working directory.
DEFAULT_STATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "logs")
LOG_FILE_MAX_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5
# The stop budget, from the stop request: the interrupted loop's requests get LOOP_GRACE_S,
# the clean stop (cancel, confirm, close) ends by STOP_DEADLINE_S, and after a signal a
# watchdog ends the process at HARD_STOP_S whatever the exchange does (a request already
# waiting can overrun its deadline by one read timeout).
LOOP_GRACE_S = 4.0
STOP_DEADLINE_S = 13.0
HARD_STOP_S = 14.5
STOP_POLL_S = 0.3
# The streams' threads, asked to end when the stop begins, are waited for at most this long at
# its end, and never past this long after the stop request (before the hard stop).
STREAMS_STOP_MAX_S = 2.0
STREAMS_STOP_BY_S = 14.0
# The hard exit waits this long for its last log line, no longer.
HARD_EXIT_LOG_S = 0.3
# A quote refused for a reason that does not pass by itself (margin, size, a symbol no longer
# trading) is tried again on its side after these pauses, the last one repeating; when every
# quote has been refused for REFUSED_STOP_S, the daemon stops (exit 5) and says why.
REFUSAL_BACKOFF_S = (5.0, 10.0, 20.0, 30.0)
REFUSED_STOP_S = 300.0
PASSING_REFUSALS = ("alo", "post only", "post-only", "cross")
# StandX's mark trails the book in fast moves, so a quote at the target from the mark can sit
# next to a running book. A new quote keeps the band's minimum distance from the book's mid as
# well; a resting one is replaced once the mid comes within this share of that minimum. On the
# recorded volatile hours, against no such rule: 5 fills instead of 52, uptime 84.6% instead of
# 84.9% (replace); 3 fills instead of 45, 77.0% instead of 70.4% (cancel_first). Replacing it at
# the full minimum costs 10 points of uptime in requotes; never replacing it, 17 fills.
BOOK_REQUOTE_SHARE = Decimal("0.5")
# With the streams healthy (connected, our account authenticated), REST checks what they say
# instead of asking everything every loop: the price is read by REST only when the stream's is
# older than STREAM_PRICE_MAX_AGE_S; our open orders are listed every STREAM_AUDIT_EVERY_S (a
# stream can miss an event) and the position read every STREAM_POSITION_EVERY_S (and in every
# loop while a fill or a position waits on it); an order the stream has not confirmed within
# STREAM_CONFIRM_S is confirmed by REST as without streams.
STREAM_PRICE_MAX_AGE_S = 2.0
STREAM_AUDIT_EVERY_S = 10.0
STREAM_POSITION_EVERY_S = 2.0
STREAM_CONFIRM_S = 1.0
# A position the stream pushed stands against REST answers older than it (StandX's position
# answers can lag a fill by seconds) for this long at most.
STREAM_POSITION_TRUST_S = 10.0
# This many loops in a row without a decision (failed reads) raise the "failures" alert.
FAILED_LOOPS_ALERT = 20
STARTUP_BACKOFF_MAX_S = 60.0
# 0 clean stop; 1 the stop could not be confirmed; 2 bad configuration; 3 another instance
# runs for this account and symbol; 4 stopped because the balance fell below the exit floor;
# 5 stopped because the exchange refused every quote for REFUSED_STOP_S.
EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_ALREADY_RUNNING, EXIT_BALANCE_FLOOR, EXIT_REFUSED = 0, 1, 2, 3, 4, 5
DEFAULT_SIM_REPORT = os.path.join("logs", "simulate_report.json")

NORMAL, DEGRADED_1, DEGRADED_2 = "normal", "degraded_1", "degraded_2"
DEFAULT_WS_STREAM_URL, DEFAULT_WS_API_URL = stream_urls(DEFAULT_PERPS_BASE_URL)


class ConfigError(Exception):
    """A bad setting: names the variable and the problem, never the secret value."""

    def __init__(self, variable: str, problem: str):
        self.variable = variable
        super().__init__(f"{variable}: {problem}")


@dataclass(frozen=True)
class Band:
    target_bps: Decimal
    min_bps: Decimal
    max_bps: Decimal


DEGRADED_BANDS = {
    DEGRADED_1: Band(Decimal("25"), Decimal("20"), Decimal("29.5")),
    DEGRADED_2: Band(Decimal("80"), Decimal("70"), Decimal("95")),
}


@dataclass(frozen=True)
class Config:
    private_key: str = field(repr=False)
    symbol: str = "BTC-USD"
    qty: Decimal = Decimal("0.005")
    band: Band = Band(Decimal("7.5"), Decimal("7.0"), Decimal("10"))
    balance_threshold_1: Decimal = Decimal("100")
    balance_threshold_2: Decimal = Decimal("50")
    balance_exit: Decimal | None = None
    check_interval_s: float = 0.5
    time_in_force: str = "alo"
    requote_mode: str = "replace"
    log_level: str = "INFO"
    state_dir: str = DEFAULT_STATE_DIR
    auth_base_url: str = DEFAULT_AUTH_BASE_URL
    perps_base_url: str = DEFAULT_PERPS_BASE_URL
    # "ws": prices, our orders and position also come from StandX's streams, and wake the loop;
    # "rest": every read by REST, as the original did.
    price_feed: str = "ws"
    ws_stream_url: str = DEFAULT_WS_STREAM_URL
    ws_api_url: str = DEFAULT_WS_API_URL
    # The maker reward programme the status line estimates (rewards.py).
    reward_programme: str = DEFAULT_PROGRAMME


# ---- configuration -------------------------------------------------------------------------

# Every setting the daemon reads. A name under one of SETTING_PREFIXES that is not here (a
# typo, or the right name in lower case) is refused: it would otherwise be ignored, and the
# default silently used in its place.
KNOWN_SETTINGS = frozenset({
    "WALLET_PRIVATE_KEY", "MARKET_MAKER_SYMBOL", "MARKET_MAKER_QTY", "MARKET_MAKER_TARGET_BPS",
    "MARKET_MAKER_MIN_BPS", "MARKET_MAKER_MAX_BPS", "MARKET_MAKER_BALANCE_THRESHOLD_1",
    "MARKET_MAKER_BALANCE_THRESHOLD_2", "MARKET_MAKER_BALANCE_EXIT", "MARKET_MAKER_CHECK_INTERVAL",
    "MARKET_MAKER_TIME_IN_FORCE", "MARKET_MAKER_REQUOTE", "MARKET_MAKER_STATE_DIR",
    "MARKET_MAKER_PRICE_FEED", "MARKET_MAKER_REWARD_PROGRAMME", "STANDX_AUTH_BASE_URL", "STANDX_PERPS_BASE_URL",
    "STANDX_WS_STREAM_URL", "STANDX_WS_API_URL", "LOG_LEVEL",
    "ALERT_TELEGRAM_BOT_TOKEN", "ALERT_TELEGRAM_CHAT_ID", "ALERT_WEBHOOK_URL",
})
SETTING_PREFIXES = ("MARKET_MAKER_", "STANDX_", "WALLET_", "ALERT_")


def check_setting_names(env: Mapping[str, str]) -> None:
    """Refuse an unknown name that looks like one of our settings, suggesting the closest."""
    for name in sorted(env):
        if name.upper().startswith(SETTING_PREFIXES) and name not in KNOWN_SETTINGS:
            closest = difflib.get_close_matches(name.upper(), sorted(KNOWN_SETTINGS), n=1, cutoff=0.6)
            hint = f"; did you mean {closest[0]}?" if closest else ""
            raise ConfigError(name, f"is not a setting of this daemon{hint}")


def _decimal_setting(env: Mapping[str, str], name: str, default: str) -> Decimal:
    raw = env.get(name, "").strip() or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(name, f"must be a number (got {raw!r})") from None
    if not value.is_finite():
        raise ConfigError(name, f"must be a finite number (got {raw!r})")
    return value


def _choice_setting(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name, "").strip() or default).lower()
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)} (got {value!r})")
    return value


def _url_setting(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ConfigError(name, f"must be an http(s) URL (got {value!r})")
    return value.rstrip("/")


def _ws_url_setting(env: Mapping[str, str], name: str, derived: str) -> str:
    value = env.get(name, "").strip() or derived
    if not re.fullmatch(r"wss?://[^\s/]+(/\S*)?", value):
        raise ConfigError(name, f"must be a ws(s) URL (got {value!r})")
    return value


def load_config(env: Mapping[str, str]) -> Config:
    """Read and validate every setting; the first bad one raises ConfigError."""
    check_setting_names(env)
    raw_key = env.get("WALLET_PRIVATE_KEY", "")
    if not raw_key.strip():
        raise ConfigError("WALLET_PRIVATE_KEY", "is not set")
    try:
        private_key = normalize_private_key(raw_key)
    except ValueError as exc:
        raise ConfigError("WALLET_PRIVATE_KEY", str(exc)) from None

    symbol = env.get("MARKET_MAKER_SYMBOL", "").strip().upper() or "BTC-USD"
    if not re.fullmatch(r"[A-Z0-9]+-[A-Z0-9]+", symbol):
        raise ConfigError("MARKET_MAKER_SYMBOL", f"must look like BTC-USD (got {symbol!r})")

    qty = _decimal_setting(env, "MARKET_MAKER_QTY", "0.005")
    if qty <= 0:
        raise ConfigError("MARKET_MAKER_QTY", f"must be greater than 0 (got {qty})")

    band = Band(_decimal_setting(env, "MARKET_MAKER_TARGET_BPS", "7.5"),
                _decimal_setting(env, "MARKET_MAKER_MIN_BPS", "7.0"),
                _decimal_setting(env, "MARKET_MAKER_MAX_BPS", "10"))
    if not 0 < band.min_bps:
        raise ConfigError("MARKET_MAKER_MIN_BPS", f"must be greater than 0 (got {band.min_bps})")
    if not band.min_bps <= band.target_bps:
        raise ConfigError("MARKET_MAKER_TARGET_BPS",
                          f"must be between MIN_BPS and MAX_BPS (got {band.target_bps} < {band.min_bps})")
    if not band.target_bps <= band.max_bps:
        raise ConfigError("MARKET_MAKER_MAX_BPS",
                          f"must be at least TARGET_BPS (got {band.max_bps} < {band.target_bps})")
    if band.max_bps >= 10000:
        raise ConfigError("MARKET_MAKER_MAX_BPS", f"must be below 10000 (got {band.max_bps})")

    threshold_1 = _decimal_setting(env, "MARKET_MAKER_BALANCE_THRESHOLD_1", "100")
    threshold_2 = _decimal_setting(env, "MARKET_MAKER_BALANCE_THRESHOLD_2", "50")
    if threshold_2 < 0:
        raise ConfigError("MARKET_MAKER_BALANCE_THRESHOLD_2", f"must not be negative (got {threshold_2})")
    if threshold_2 > threshold_1:
        raise ConfigError("MARKET_MAKER_BALANCE_THRESHOLD_2",
                          f"must not exceed THRESHOLD_1 (got {threshold_2} > {threshold_1})")

    balance_exit = None
    if env.get("MARKET_MAKER_BALANCE_EXIT", "").strip():
        balance_exit = _decimal_setting(env, "MARKET_MAKER_BALANCE_EXIT", "0")
        if balance_exit < 0:
            raise ConfigError("MARKET_MAKER_BALANCE_EXIT", f"must not be negative (got {balance_exit})")

    interval = _decimal_setting(env, "MARKET_MAKER_CHECK_INTERVAL", "0.5")
    if not Decimal("0.1") <= interval <= Decimal("60"):
        raise ConfigError("MARKET_MAKER_CHECK_INTERVAL",
                          f"must be between 0.1 and 60 seconds (got {interval})")

    perps_base_url = _url_setting(env, "STANDX_PERPS_BASE_URL", DEFAULT_PERPS_BASE_URL)
    # The streams live on the perps host unless configured apart (a proxy, a test double).
    try:
        derived_stream_url, derived_api_url = stream_urls(perps_base_url)
    except ValueError as exc:
        raise ConfigError("STANDX_PERPS_BASE_URL", str(exc)) from None
    return Config(
        private_key=private_key, symbol=symbol, qty=qty, band=band,
        balance_threshold_1=threshold_1, balance_threshold_2=threshold_2, balance_exit=balance_exit,
        check_interval_s=float(interval),
        time_in_force=_choice_setting(env, "MARKET_MAKER_TIME_IN_FORCE", "alo", ("alo", "gtc")),
        requote_mode=_choice_setting(env, "MARKET_MAKER_REQUOTE", "replace", ("replace", "cancel_first")),
        log_level=_choice_setting(env, "LOG_LEVEL", "INFO", ("debug", "info", "warning", "error")).upper(),
        state_dir=env.get("MARKET_MAKER_STATE_DIR", "").strip() or DEFAULT_STATE_DIR,
        auth_base_url=_url_setting(env, "STANDX_AUTH_BASE_URL", DEFAULT_AUTH_BASE_URL),
        perps_base_url=perps_base_url,
        price_feed=_choice_setting(env, "MARKET_MAKER_PRICE_FEED", "ws", ("ws", "rest")),
        ws_stream_url=_ws_url_setting(env, "STANDX_WS_STREAM_URL", derived_stream_url),
        ws_api_url=_ws_url_setting(env, "STANDX_WS_API_URL", derived_api_url),
        reward_programme=_choice_setting(env, "MARKET_MAKER_REWARD_PROGRAMME", DEFAULT_PROGRAMME,
                                         tuple(sorted(PROGRAMMES))),
    )


# ---- pure decisions ------------------------------------------------------------------------

def mode_for_balance(balance: Decimal, threshold_1: Decimal, threshold_2: Decimal) -> str:
    if balance >= threshold_1:
        return NORMAL
    if balance >= threshold_2:
        return DEGRADED_1
    return DEGRADED_2


def band_for_mode(mode: str, configured: Band) -> Band:
    return DEGRADED_BANDS.get(mode, configured)


def round_to_step(value: Decimal, step: Decimal, rounding: str) -> Decimal:
    return (value / step).to_integral_value(rounding=rounding) * step


def quote_price(side: str, mark: Decimal, target_bps: Decimal, tick: Decimal,
                best_bid: Decimal | None = None, best_ask: Decimal | None = None,
                book_gap_bps: Decimal | None = None) -> Decimal:
    """Target price for a side, rounded to the tick away from the mark.

    The mark can sit bps away from the book in fast markets (StandX's mark trails it), so the
    book bounds the price too: a buy stays below the best ask and a sell above the best bid
    (a post-only quote that would cross is rejected), and with book_gap_bps neither comes
    nearer the book's mid than that: a quote that close is the one the running price fills.
    """
    offset = mark * target_bps / Decimal(10000)
    known = best_bid is not None and best_ask is not None and book_gap_bps is not None
    mid = (best_bid + best_ask) / 2 if known else None
    if side == BUY:
        price = round_to_step(mark - offset, tick, ROUND_FLOOR)
        if best_ask is not None:
            price = min(price, round_to_step(best_ask - tick, tick, ROUND_FLOOR))
        if mid is not None:
            price = min(price, round_to_step(mid * (1 - book_gap_bps / 10000), tick, ROUND_FLOOR))
    else:
        price = round_to_step(mark + offset, tick, ROUND_CEILING)
        if best_bid is not None:
            price = max(price, round_to_step(best_bid + tick, tick, ROUND_CEILING))
        if mid is not None:
            price = max(price, round_to_step(mid * (1 + book_gap_bps / 10000), tick, ROUND_CEILING))
    return price


def distance_bps(side: str, price: Decimal, mark: Decimal) -> Decimal:
    """How far a quote sits from the mark on its own side (negative = on the wrong side)."""
    gap = mark - price if side == BUY else price - mark
    return gap / mark * Decimal(10000)


def in_band(side: str, price: Decimal, mark: Decimal, band: Band) -> bool:
    return band.min_bps <= distance_bps(side, price, mark) <= band.max_bps


def near_the_book(side: str, price: Decimal, market: Market, gap_bps: Decimal) -> bool:
    """A quote nearer the book's mid than gap_bps (False while the book is unknown)."""
    if market.best_bid is None or market.best_ask is None:
        return False
    return distance_bps(side, price, (market.best_bid + market.best_ask) / 2) < gap_bps


def signed_position(rows: Any, symbol: str) -> Decimal:
    """Net position of the symbol: `side` when given, else the sign of `qty` (negative = short)."""
    if not isinstance(rows, list):
        raise ValueError("positions answer is not a list")
    total = Decimal(0)
    for row in rows:
        if row.get("symbol") != symbol:
            continue
        qty = wire_decimal(row["qty"])
        side = str(row.get("side") or "").lower()
        if side in ("short", SELL):
            qty = -abs(qty)
        elif side in ("long", BUY):
            qty = abs(qty)
        total += qty
    return total


def wire_decimal(value: Any) -> Decimal:
    """A number from an answer as a Decimal; ValueError unless it is finite and of a size an
    exchange can mean (a garbled "1e999999" would overflow the arithmetic further on)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("not a number")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError("not a number") from None
    if not number.is_finite() or abs(number) >= WIRE_NUMBER_MAX or number.as_tuple().exponent < -WIRE_DECIMALS_MAX:
        raise ValueError("not a plausible number")
    return number


def positive_decimal(value: Any) -> Decimal | None:
    """A price field as a positive Decimal, or None when absent, null or malformed."""
    try:
        number = wire_decimal(value)
    except ValueError:
        return None
    return number if number > 0 else None


class OrderStatus(NamedTuple):
    """What query_order says of one order: its status (None while not shown), how much of it
    filled, and when the exchange last changed it (Unix time on the exchange's clock)."""
    status: str | None
    fill_qty: Decimal | None = None
    updated_at: float | None = None
    remark: str = ""  # why, for a rejection
    avg_price: Decimal | None = None  # the average fill price

    @property
    def over(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def filled(self) -> bool:
        return bool(self.fill_qty) or self.status == "filled"


def order_status(row: Any) -> OrderStatus:
    """An order row (query_order, or the stream's order channel) as an OrderStatus; no status
    when the row has none."""
    status = row.get("status") if isinstance(row, dict) else None
    if not status:
        return OrderStatus(None)
    fill_qty = row.get("fill_qty")
    return OrderStatus(str(status).lower(), positive_decimal(fill_qty) or
                       (Decimal(0) if fill_qty is not None else None),
                       exchange_time(row.get("updated_at")), str(row.get("remark") or ""),
                       positive_decimal(row.get("fill_avg_price")))


def exchange_time(value: Any) -> float | None:
    """An ISO-8601 time from an answer as Unix seconds (None when absent or malformed)."""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def is_lasting_refusal(error: StandXError) -> bool:
    """A refusal that sending again will not cure: a client error (4xx, or a 200 whose body
    carries an error code), other than a token, clock or rate-limit problem, each handled
    where it arises."""
    if isinstance(error, (AuthError, SignatureExpiredError, RateLimitError, UnknownOutcomeError)):
        return False
    if any(word in error.message.lower() for word in PASSING_REFUSALS):
        return False  # a post-only quote that would have crossed: the next price may not
    return error.status is not None and (400 <= error.status < 500 or error.status == 200)


def is_our_order(order: Mapping[str, Any]) -> bool:
    return str(order.get("cl_ord_id") or "").startswith(CL_ORD_ID_PREFIX)


def is_live(order: Mapping[str, Any]) -> bool:
    return str(order.get("status") or "").lower() not in FINAL_STATUSES


# ---- state ---------------------------------------------------------------------------------

@dataclass
class SymbolRules:
    """The symbol's trading rules; a limit the exchange does not state is None."""
    tick: Decimal
    lot: Decimal
    min_qty: Decimal
    max_qty: Decimal | None = None  # largest order
    max_position: Decimal | None = None  # largest position
    max_open_orders: int | None = None
    trading: bool = True
    maker_fee: Decimal | None = None  # a fraction of the notional: 0.0001 = 1 bp
    taker_fee: Decimal | None = None
    quote_asset: str = "DUSD"  # the currency of prices, margin and fees


@dataclass
class Market:
    mark: Decimal
    best_bid: Decimal | None
    best_ask: Decimal | None
    read_at: float  # monotonic time the price request was sent


@dataclass
class OurOrder:
    """One order we sent, tracked until it is confirmed gone.

    Not `seen` yet = on its way (or of unknown outcome); `stale` = priced for another mode;
    `cancel_sent_at` set = being cancelled. Times are monotonic."""
    cl_ord_id: str
    side: str
    price: Decimal
    sent_at: float
    seen: bool = False
    stale: bool = False
    cancel_sent_at: float | None = None
    outcome_unknown: bool = False  # the request got no clear answer: it may never have arrived
    request_id: str | None = None  # its request's x-request-id (order response stream pushes)
    # A partial fill seen while it rested: how much, and when (exchange time).
    fill_qty_seen: Decimal = Decimal(0)
    fill_time: float | None = None

    @property
    def cancelling(self) -> bool:
        return self.cancel_sent_at is not None


@dataclass
class FillCheck:
    """An order of ours that is gone without its own status saying "no fill": it may have
    filled, so its side gets no new quote until the position or the order's status settles it."""
    cl_ord_id: str
    side: str
    sent_at: float  # when the order was sent
    since: float  # when it was found gone
    filled: bool | None = None  # from the order's own status, once looked up
    fill_time: float | None = None  # when its (last) fill happened, on the exchange's clock
    # What the order showed of a partial fill while it rested (see OurOrder).
    fill_qty_seen: Decimal = Decimal(0)
    seen_fill_time: float | None = None

    def note(self, found: OrderStatus) -> None:
        """The order's final status: filled or not, and when its last fill happened (the
        partial fill seen while it rested, if nothing filled after it)."""
        # A final status without fill_qty says nothing of a partial fill: still unknown.
        self.filled = found.filled if found.fill_qty is not None or found.status == "filled" else None
        seen_all = found.fill_qty is not None and found.fill_qty == self.fill_qty_seen
        self.fill_time = self.seen_fill_time if seen_all and self.seen_fill_time else found.updated_at


class OurOrders:
    """Our orders' lifecycle, in one place: REST answers (a quote sent, refused, of unknown
    outcome), REST reads (the open-orders list, lookups) and stream events all update it, and
    the quoting decision reads it and nothing else.

    A tracked order is on its way (not `seen`), resting (seen), or being cancelled; it stops
    being tracked once the exchange shows it over (`over`), or once it vanished from the list
    after resting (`vanished`). Either way, an order that may have filled leaves a FillCheck that
    holds its side until the position settles it. Orders of ours the exchange shows that we do
    not track (an earlier run's) are strays; an order whose request got no answer and that
    never showed up is given up on (a stop still cancels it). Times are monotonic."""

    def __init__(self) -> None:
        self.tracked: list[OurOrder] = []
        # Orders of ours the exchange shows that we do not track (an earlier run's, or one we
        # gave up on): side by cl_ord_id. They count towards a side's cap until gone.
        self.strays: dict[str, str] = {}
        self.stray_cancels: dict[str, float] = {}  # when each stray's cancel was last sent
        self.fill_checks: dict[str, FillCheck] = {}
        # Orders no longer waited for (never seen): cl_ord_id -> (side, when). A stop still
        # cancels them and is not clean while one may yet appear.
        self.given_up: dict[str, tuple[str, float]] = {}

    # -- what the decisions read --

    def active(self, side: str) -> list[OurOrder]:
        """Tracked on this side and not being cancelled (resting or on its way)."""
        return [o for o in self.tracked if o.side == side and not o.cancelling]

    def resting(self, side: str) -> list[OurOrder]:
        """Last seen resting on this side (a cancelled one until seen gone), newest first."""
        return sorted((o for o in self.tracked if o.side == side and o.seen),
                      key=lambda o: o.sent_at, reverse=True)

    def on_side(self, side: str) -> int:
        """Orders on a side not yet confirmed gone: tracked ones in any state, and strays."""
        return (sum(o.side == side for o in self.tracked)
                + sum(stray_side == side for stray_side in self.strays.values()))

    def fill_check_holds(self, side: str) -> bool:
        return any(check.side == side for check in self.fill_checks.values())

    def quote_resting(self) -> bool:
        """A quote of ours rests and is not being cancelled."""
        return any(o.seen and not o.cancelling for o in self.tracked)

    def awaiting_confirmation(self, now: float, grace_s: float = 0.0) -> bool:
        """An order was sent but not yet seen, or cancelled but not yet gone, for at least
        `grace_s`; or a stray awaits its cancel."""
        return any(now - (o.cancel_sent_at if o.cancelling else o.sent_at) >= grace_s
                   for o in self.tracked if not o.seen or o.cancelling) or bool(self.strays)

    def find(self, cl_ord_id: str) -> OurOrder | None:
        return next((o for o in self.tracked if o.cl_ord_id == cl_ord_id), None)

    def awaiting_outcome(self, request_id: str) -> OurOrder | None:
        """The tracked order, not yet seen, whose request had this x-request-id."""
        return next((o for o in self.tracked if o.request_id == request_id and not o.seen), None)

    # -- what happened to them --

    def track(self, order: OurOrder) -> None:
        self.tracked.append(order)

    def drop(self, order: OurOrder) -> None:
        """Not tracked any more: its request was refused, so it never reached the book."""
        self.tracked.remove(order)

    def mark_stale(self) -> None:
        """Every quote was priced for another band."""
        for order in self.tracked:
            order.stale = True

    @staticmethod
    def note_partial_fill(order: OurOrder, row: Mapping[str, Any]) -> None:
        """A resting order that shows more of it filled: how much, and when (the row's update
        time), so that a later fill check knows when that fill happened."""
        filled = positive_decimal(row.get("fill_qty"))
        if filled is not None and filled > order.fill_qty_seen:
            order.fill_qty_seen, order.fill_time = filled, exchange_time(row.get("updated_at"))

    def vanished(self, order: OurOrder, now: float) -> None:
        """Seen resting, now absent from the list, its status not known: it may have filled."""
        self.tracked.remove(order)
        self._may_have_filled(order, now)

    def over(self, order: OurOrder, found: OrderStatus, now: float) -> None:
        """The exchange shows it over: no longer tracked; one that filled, even in part, or
        whose fill is not said, starts a fill check."""
        if order in self.tracked:
            self.tracked.remove(order)
        if found.filled:
            self._may_have_filled(order, now)
            self.fill_checks[order.cl_ord_id].note(found)
        elif found.fill_qty is None:
            self._may_have_filled(order, now)

    def give_up(self, order: OurOrder, now: float) -> None:
        """Its request got no answer and it never showed: no longer waited for."""
        self.tracked.remove(order)
        self.given_up[order.cl_ord_id] = (order.side, now)

    def settle_given_up(self, cl_ord_id: str, found: OrderStatus, now: float) -> None:
        """A given-up order the exchange now shows over: a fill of it is checked like any other."""
        side, given_up_at = self.given_up.pop(cl_ord_id)
        self.over(OurOrder(cl_ord_id, side, Decimal(0), given_up_at), found, now)

    def note_fill_status(self, cl_ord_id: str, found: OrderStatus) -> bool:
        """The final status of an order that may have filled; True if it says nothing filled,
        which clears its side at once."""
        check = self.fill_checks.get(cl_ord_id)
        if check is None or not found.over:
            return False
        check.note(found)
        if check.filled is False:
            del self.fill_checks[cl_ord_id]
            return True
        return False

    def note_strays(self, visible: Mapping[str, Any], now: float) -> None:
        """The list's orders of ours that we do not track. A stray that vanishes may have
        filled like any other; a given-up order that shows up is a stray from then on."""
        tracked = {o.cl_ord_id for o in self.tracked}
        strays = {cid: str(row.get("side")) for cid, row in visible.items() if cid not in tracked}
        for cid, side in self.strays.items():
            if cid not in strays:
                self.fill_checks[cid] = FillCheck(cid, side, now, now)
        self.strays = strays
        self.given_up = {cid: (side, t) for cid, (side, t) in self.given_up.items()
                         if cid not in visible and now - t < GIVEN_UP_FORGET_S}
        self.stray_cancels = {cid: t for cid, t in self.stray_cancels.items() if cid in visible}

    def cancels_due(self, cl_ord_ids: list[str], now: float) -> list[str]:
        """The ids whose cancel was not sent within CANCEL_RETRY_S, stamped as sent now."""
        due = [cid for cid in cl_ord_ids if now - self.stray_cancels.get(cid, float("-inf")) >= CANCEL_RETRY_S]
        for cid in due:
            self.stray_cancels[cid] = now
        return due

    def _may_have_filled(self, order: OurOrder, now: float) -> None:
        self.fill_checks[order.cl_ord_id] = FillCheck(
            order.cl_ord_id, order.side, order.sent_at, now,
            fill_qty_seen=order.fill_qty_seen, seen_fill_time=order.fill_time)


@dataclass
class DayTotals:
    """What the day's round trips cost or made (UTC day): fills of our quotes, fees paid on
    them and on their closes, and the price difference between each fill and its close."""
    day: str = ""
    fills: int = 0
    fees: Decimal = Decimal(0)
    pnl: Decimal = Decimal(0)

    @property
    def net(self) -> Decimal:
        return self.pnl - self.fees

    def summary(self) -> str:
        if not self.day:
            return "day: no round trip yet"
        return (f"day {self.day}: round_trips={self.fills} fees={self.fees:.4f} pnl={self.pnl:.4f} "
                f"net={self.net:.4f}")


def round_trip(qty: Decimal, entry: Decimal, exit_price: Decimal, rules: SymbolRules | None) -> tuple[Decimal, Decimal]:
    """(price result, fees) of a position of signed `qty` opened by our quote at `entry` (maker)
    and closed at `exit_price` (taker)."""
    pnl = (exit_price - entry) * qty
    maker = rules.maker_fee if rules and rules.maker_fee is not None else Decimal(0)
    taker = rules.taker_fee if rules and rules.taker_fee is not None else Decimal(0)
    return pnl, abs(qty) * (entry * maker + exit_price * taker)


class UptimeTracker:
    """Two-sided time within the reward band as this daemon sees it, per minute, for the last
    hour: the local estimate of what the reward programme's snapshots will find."""

    def __init__(self) -> None:
        self.minutes: dict[int, list[float]] = {}  # minute -> [two-sided seconds, seconds]
        self.last: tuple[float, bool] | None = None

    def record(self, now: float, two_sided: bool) -> None:
        """The state from the last record until now was the last state; from now on, this one."""
        if self.last is not None:
            self._add(*self.last, now)
        self.last = (now, two_sided)
        oldest = int(now // 60) - UPTIME_WINDOW_S // 60
        self.minutes = {m: v for m, v in self.minutes.items() if m >= oldest}

    def _add(self, start: float, two_sided: bool, end: float) -> None:
        while start < end:
            minute = int(start // 60)
            stop = min(end, (minute + 1) * 60.0)
            bucket = self.minutes.setdefault(minute, [0.0, 0.0])
            bucket[0] += (stop - start) if two_sided else 0.0
            bucket[1] += stop - start
            start = stop

    def share_since(self, since: float) -> float | None:
        """Two-sided share of the recorded time from `since` (None before any record)."""
        first = int(since // 60)
        buckets = [v for m, v in self.minutes.items() if m >= first]
        total = sum(v[1] for v in buckets)
        return sum(v[0] for v in buckets) / total if total > 0 else None

    def last_hour(self, now: float) -> float | None:
        return self.share_since(now - UPTIME_WINDOW_S)

    def this_hour(self, now: float) -> float | None:
        """The share so far in the current clock hour, which the programme scores on its own."""
        return self.share_since(now - now % 3600)


def reward_summary(uptime: UptimeTracker, now: float) -> str:
    """`uptime 1h=99.1% hour=98.7%`, the two-sided shares the status shows (the tier the hour is
    on track for is the reward estimate's: one verdict, by the programme's rules)."""
    last_hour, this_hour = uptime.last_hour(now), uptime.this_hour(now)
    if last_hour is None or this_hour is None:
        return "uptime 1h=- hour=-"
    return f"uptime 1h={100 * last_hour:.1f}% hour={100 * this_hour:.1f}%"


def reward_estimate(meter: RewardMeter | None, config: Config, now: float, quoting_on: bool = True) -> str:
    """`reward cmy-2026-08 (estimate, second-hand rules): hour=0.001500MH@1x last=0.001480MH@1x
    today=0.031200MH`: this hour's projected score and tier, the last whole hour's, and the UTC
    day's so far, in Maker Hours (weighted two-sided size-time; rewards.py). For a daemon that
    is stopping (quoting_on False) the hour is scored as it stands: the rest of it earns nothing."""
    head = f"reward {config.reward_programme} (estimate, second-hand rules)"
    if meter is None:
        return f"{head}: no rules for {config.symbol}"
    hour = int(now // rewards.HOUR_S)
    this = meter.projected_score(hour, now) if quoting_on else meter.hour_score(hour)
    last = meter.projected_score(hour - 1, now)
    return (f"{head}: hour={_score_text(this)} last={_score_text(last)} "
            f"today={meter.day_so_far(now, quoting_on):.6f}MH")


def _score_text(score: rewards.HourScore | None) -> str:
    return "-" if score is None else f"{score.maker_hours:.6f}MH@{tier_label(score.tier)}"


def parse_symbol_rules(rows: Any, symbol: str) -> SymbolRules:
    """Tick, lot, size limits and trading state of the symbol from query_symbol_info."""
    if not isinstance(rows, list):
        raise StandXError("symbol info answer malformed", 200)  # a read to retry
    row = next((r for r in rows if isinstance(r, dict) and r.get("symbol") == symbol), None)
    if row is None:
        raise ConfigError("MARKET_MAKER_SYMBOL", f"{symbol} is not listed by the exchange")
    try:
        return SymbolRules(tick=Decimal(1).scaleb(-tick_decimals(row["price_tick_decimals"])),
                           lot=Decimal(1).scaleb(-tick_decimals(row["qty_tick_decimals"])),
                           min_qty=wire_decimal(row["min_order_qty"]),
                           max_qty=_optional_limit(row, "max_order_qty"),
                           max_position=_optional_limit(row, "max_position_size"),
                           max_open_orders=(int(row["max_open_orders"])
                                            if row.get("max_open_orders") is not None else None),
                           trading=row.get("enabled") is not False
                           and str(row.get("status", "trading")).lower() == "trading",
                           maker_fee=_optional_fee(row, "maker_fee"),
                           taker_fee=_optional_fee(row, "taker_fee"),
                           quote_asset=str(row.get("quote_asset") or "DUSD"))
    except (KeyError, TypeError, ValueError, InvalidOperation):
        raise StandXError(f"symbol info for {symbol} is malformed", 200) from None


def tick_decimals(value: Any) -> int:
    """A tick's number of decimals: a whole number from 0 to WIRE_DECIMALS_MAX."""
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]{1,2}", text) or int(text) > WIRE_DECIMALS_MAX:
        raise ValueError("tick decimals out of range")
    return int(text)


def _optional_limit(row: Mapping[str, Any], name: str) -> Decimal | None:
    value = row.get(name)
    return None if value is None else wire_decimal(value)


def _optional_fee(row: Mapping[str, Any], name: str) -> Decimal | None:
    """A fee rate, which only the round-trip log line uses: unknown when it cannot be read,
    never a reason to stop quoting."""
    try:
        return _optional_limit(row, name)
    except ValueError:
        return None


def close_qty(position: Decimal, rules: SymbolRules | None) -> Decimal:
    """The size of the order that closes a position: on the lot grid (a position can carry more
    decimals than the lot after odd partial fills), rounded up so nothing is left; the close is
    reduce-only, so the exchange caps it at the position and it can never flip us."""
    size = abs(position)
    if rules is None:
        return size
    return max(round_to_step(size, rules.lot, ROUND_CEILING), rules.min_qty).quantize(rules.lot)


def check_qty(qty: Decimal, rules: SymbolRules) -> None:
    """Every limit the symbol info states, against our quote size: an order the exchange would
    refuse every time is refused here, once, with the limit named."""
    if not rules.trading:
        raise ConfigError("MARKET_MAKER_SYMBOL", "the exchange says this symbol is not trading")
    if qty < rules.min_qty:
        raise ConfigError("MARKET_MAKER_QTY", f"{qty} is below the exchange minimum {rules.min_qty}")
    if qty % rules.lot != 0:
        raise ConfigError("MARKET_MAKER_QTY", f"{qty} is not a multiple of the lot size {rules.lot}")
    if rules.max_qty is not None and qty > rules.max_qty:
        raise ConfigError("MARKET_MAKER_QTY", f"{qty} is above the exchange's largest order {rules.max_qty}")
    if rules.max_position is not None and qty > rules.max_position:
        raise ConfigError("MARKET_MAKER_QTY",
                          f"{qty} is above the exchange's largest position {rules.max_position}")
    if rules.max_open_orders is not None and rules.max_open_orders < OPEN_ORDERS_NEEDED:
        raise ConfigError("MARKET_MAKER_SYMBOL",
                          f"the exchange allows only {rules.max_open_orders} open orders; "
                          f"quoting needs up to {OPEN_ORDERS_NEEDED}")


# ---- the daemon ----------------------------------------------------------------------------

class MarketMaker:
    """The quoting loop. All time comes from `clock`; all exchange access goes through `auth`."""

    def __init__(self, config: Config, auth: StandXAuth, clock: Clock | None = None,
                 run_id: str | None = None, state_path: str | None = None,
                 alerter: Alerter | None = None, streams: StandXStreams | FeedStreams | None = None):
        self.config = config
        # StandX's streams (standx_ws), or None: every read by REST.
        self.streams = streams
        self.resyncs_seen = 0
        self.state_path = state_path
        self.alerter = alerter or Alerter(AlertConfig(), account=auth.address, symbol=config.symbol)
        self.auth = auth
        self.clock: Clock = clock or auth.clock
        self.run_id = run_id or secrets.token_hex(3)
        self.rules: SymbolRules | None = None
        self.rules_read_at = float("-inf")
        self.qty = config.qty
        self.mode = NORMAL
        self.band = config.band
        self.balance: Decimal | None = None
        self.market: Market | None = None
        self.position = Decimal(0)
        self.our = OurOrders()
        # The latest send time of a position read that showed a position grown by each side.
        self.position_grown_at = {BUY: float("-inf"), SELL: float("-inf")}
        self.position_updated_at: float | None = None
        self.position_read_at = float("-inf")  # when the latest position read was sent
        # The position rows the stream pushed, as taken, oldest first: (qty, the row's exchange
        # time, received at), kept for STREAM_POSITION_TRUST_S.
        self.streamed_positions: list[tuple[Decimal, float, float]] = []
        self.last_streamed_row: tuple[Decimal, float] | None = None  # (qty, exchange time), kept for good
        # Sides whose quotes the exchange refuses: side -> (refusals in a row, next try at; a first
        # rejection in matching counts 0, see _note_rejection), and
        # since when no quote has been accepted (None while quotes are accepted).
        self.refusals: dict[str, tuple[int, float]] = {}
        self.refused_since: float | None = None
        self.last_refusal = ""
        # The open position's entry price (from the position read) and the latest close order.
        self.entry_price: Decimal | None = None
        self.opened: tuple[Decimal, Decimal | None] | None = None
        self.close_id: str | None = None
        self.day = DayTotals()
        self.iteration = 0  # passes, woken ones included
        self.regular_loops = 0
        self.last_audit_at = float("-inf")
        self.order_counter = 0
        self.close_settles_at = float("-inf")
        self.requotes = 0
        self.fills = 0
        self.orders_placed = 0
        self.started_at = self.clock.monotonic()
        # Uptime and the reward are bucketed by the exchange's clock hour: (its time, our
        # monotonic time) at one moment, advanced monotonically, so that a step of this host's
        # clock cannot corrupt the record. This host's time until the login measures the offset.
        self.hour_base = (self.clock.wall(), self.started_at)
        self.last_status_at = self.started_at
        self.status_every_s = STATUS_EVERY_S
        self.uptime = UptimeTracker()
        programme = PROGRAMMES[config.reward_programme]
        pair = programme.pairs.get(config.symbol)
        self.reward = RewardMeter(programme, pair) if pair else None  # None: the programme has no rules for it
        self._restore_estimates()
        self.stop_requested = False
        self.stop_requested_at = 0.0
        self.stop_reason = ""
        self.exit_code = EXIT_OK
        self.failed_loops = 0
        self.last_read_error = ""

    def _hour_time(self) -> float:
        """The exchange's time, whose clock hours the reward scores (see hour_base)."""
        wall, monotonic = self.hour_base
        return wall + (self.clock.monotonic() - monotonic)

    def _anchor_hours(self) -> None:
        """Take the exchange's time as the login measured it (this host's clock plus the
        offset) for the clock hours from now on."""
        self.hour_base = (self.clock.wall() + self.auth.time_offset_s, self.clock.monotonic())

    # -- lifecycle --

    def request_stop(self, reason: str = "stop requested") -> None:
        """Finish the current loop (its requests cut to LOOP_GRACE_S), then stop cleanly."""
        if not self.stop_requested:
            # Called from the signal handler too: log only (an alert is sent from the loop).
            log.info("%s: stopping (cancelling our orders)", reason)
            self.stop_requested, self.stop_reason = True, reason
            self.stop_requested_at = self.clock.monotonic()
            self.auth.deadline = self.stop_requested_at + LOOP_GRACE_S

    def start(self) -> None:
        """Log in, load the symbol's rules, check the account can carry the quotes, cancel our
        leftovers, read the balance."""
        self.auth.authenticate()
        self._anchor_hours()
        self._set_rules(parse_symbol_rules(api.query_symbol_info(self.auth, self.config.symbol),
                                           self.config.symbol))
        if self.config.time_in_force == "gtc":
            log.warning("MARKET_MAKER_TIME_IN_FORCE=gtc: a quote can take liquidity if the book "
                        "moves onto it before it rests; alo (post-only) is safer")
        leftovers = [o for o in self._read_open_orders_or_raise() if is_our_order(o)]
        self._check_margin(leftovers)
        if leftovers:
            log.info("cancelling %d order(s) of ours left by an earlier run", len(leftovers))
            self.our.strays = {o["cl_ord_id"]: str(o.get("side")) for o in leftovers}
            self._cancel_ids(list(self.our.strays))
        self._set_mode(self._read_balance_or_raise(), initial=True)

    def _check_margin(self, leftovers: list[dict[str, Any]]) -> None:
        """Before the first quote: the margin both quotes need at the position's leverage must
        fit in what the account has available (plus what our leftovers, about to be cancelled,
        hold). Otherwise every quote would be refused: a configuration error, said once."""
        try:
            leverage = wire_decimal(api.query_position_config(self.auth, self.config.symbol)["leverage"])
            prices = api.query_symbol_price(self.auth, self.config.symbol)
            mark = positive_decimal(prices.get("mark_price")) or positive_decimal(prices.get("mid_price"))
            snapshot = api.query_balance(self.auth)
            available = wire_decimal(next(snapshot[k] for k in ("cross_available", "balance", "equity")
                                          if snapshot.get(k) is not None))
            held = sum((wire_decimal(o["qty"]) * wire_decimal(o["price"]) for o in leftovers), Decimal(0))
            # A position left by an earlier run is closed at once: its margin comes back too.
            held += abs(signed_position(api.query_positions(self.auth, self.config.symbol),
                                        self.config.symbol)) * (mark or 0)
        except (KeyError, TypeError, AttributeError, ValueError, StopIteration):
            raise StandXError("margin check: an answer is malformed", 200) from None
        if mark is None or leverage <= 0:
            raise StandXError("margin check: an answer is malformed", 200)
        needed = 2 * self.qty * mark / leverage
        currency = self.rules.quote_asset if self.rules else ""
        available += held / leverage
        if available < needed:
            raise ConfigError("MARKET_MAKER_QTY",
                              f"the account cannot carry both quotes: they need {needed:.2f} {currency} "
                              f"of margin at {leverage}x leverage, and {available:.2f} {currency} is "
                              "available: deposit more, raise the leverage on StandX, or lower the size")

    def _set_rules(self, rules: SymbolRules) -> None:
        """Tick, lot and minimum size; the quote size goes out with exactly the lot's decimals."""
        check_qty(self.config.qty, rules)
        if self.rules is not None and rules != self.rules:
            log.info("symbol rules changed: %s", rules)
            # Quotes refused under the old rules (a price off the new tick) say nothing about
            # the new ones: every side may quote again at once.
            self.refusals.clear()
            self.refused_since = None
        self.rules, self.rules_read_at = rules, self.clock.monotonic()
        self.qty = self.config.qty.quantize(rules.lot)

    def _apply_new_rules(self, rules: SymbolRules) -> None:
        try:
            self._set_rules(rules)
        except ConfigError as exc:
            log.error("the exchange changed the symbol's rules: %s", exc)
            self.exit_code = EXIT_CONFIG
            self.request_stop("MARKET_MAKER_QTY no longer fits the symbol's rules")

    def _read_rules(self) -> SymbolRules | None:
        try:
            return parse_symbol_rules(api.query_symbol_info(self.auth, self.config.symbol),
                                      self.config.symbol)
        except (StandXError, ConfigError) as exc:
            log.warning("symbol rules read failed (%s): keeping the current ones", exc)
            return None

    def start_with_retry(self) -> bool:
        """start(), retried with backoff while the exchange is unreachable; False if stopped."""
        backoff_s = 1.0
        while not self.stop_requested:
            try:
                self.start()
                return True
            except StandXError as exc:
                log.error("cannot start yet (%s): retrying in %.0f s", exc, backoff_s)
                sleep_until(self.clock, self.clock.monotonic() + backoff_s, lambda: self.stop_requested)
                backoff_s = min(backoff_s * 2, STARTUP_BACKOFF_MAX_S)
        return False

    def run(self, duration_s: float | None = None) -> int:
        """Loop until stopped (or `duration_s` elapsed), then stop cleanly; the exit code.

        Every way out goes through the same clean stop, a stop during start-up included: an
        earlier run may have left orders of ours that only the stop would cancel."""
        try:
            if self.start_with_retry():
                if self.streams is not None:
                    self.streams.start()  # the loop reads by REST until they speak
                self.alerter.send("start", f"started: {describe(self.config)}, balance {self.balance}, "
                                           f"mode {self.mode}")
                self.write_state()
                self._loop(duration_s)
        except ConfigError as exc:  # the exchange's rules refuse our settings
            log.error("configuration error: %s", exc)
            self.exit_code = EXIT_CONFIG
            self.request_stop("configuration error")
        except Exception:  # a bug must not leave our orders resting: stop cleanly, then exit 1
            log.exception("unexpected error: stopping")
            self.exit_code = EXIT_ERROR
            self.request_stop("unexpected error")
        return self.exit_code if self.shutdown() else EXIT_ERROR

    def _loop(self, duration_s: float | None) -> None:
        """A loop every check interval; with the streams, also as soon as they wake it (a
        woken loop decides on what the streams said and reads by REST only what it must)."""
        ends_at = None if duration_s is None else self.clock.monotonic() + duration_s
        next_loop_at = self.clock.monotonic()
        while not self.stop_requested:
            started = self.clock.monotonic()
            regular = started >= next_loop_at
            if regular:
                next_loop_at = started + self.config.check_interval_s
            self.run_once(regular)
            if ends_at is not None and self.clock.monotonic() >= ends_at:
                self.request_stop("duration reached")
            self._wait_until(next_loop_at)

    def _wait_until(self, deadline: float) -> None:
        if self.streams is not None:
            self.streams.wait_until(deadline, lambda: self.stop_requested)
        else:
            sleep_until(self.clock, deadline, lambda: self.stop_requested)

    # -- one loop --

    def run_once(self, regular: bool = True) -> None:
        """One loop, then the health alerts: reads failing loop after loop, a failing login.
        `regular`: the check interval's loop (False: woken early by the streams)."""
        if not regular and self.failed_loops:
            return  # the last loop's reads failed: no decision until a loop reads again
        self.iteration += 1
        self.regular_loops += regular
        loop_began = self._hour_time()
        decided = self._decide_once(regular)
        if not decided:  # blind since the loop began: what it waited for never came
            self._measure_quoting(seen=False, at=loop_began)
        self.failed_loops = 0 if decided else self.failed_loops + 1
        self.alerter.condition("failures", self.failed_loops >= FAILED_LOOPS_ALERT,
                               f"exchange reads failing ({self.last_read_error})")
        self.alerter.condition("login", self.auth.login_failure is not None,
                               f"login failing ({self.auth.login_failure})")
        self.alerter.condition("refused", any(count for count, _ in self.refusals.values()),
                               f"quotes refused by the exchange ({self.last_refusal})")

    def _decide_once(self, regular: bool = True) -> bool:
        """One pass: the reads in one round trip, then close, reconcile and requote; True if it
        got as far as the quoting decision.

        Without the streams every loop reads the position and the price; our orders when one
        awaits confirmation or the audit is due; the status of orders that may have filled; the
        balance every 10th loop. The reads overlap, so the price is read at the same point of
        every loop and the decision follows it at once. A failed read ends the pass: no decision
        is made on unknown state. With the streams healthy, what they said comes first and
        REST reads only what they cannot vouch for (see STREAM_PRICE_MAX_AGE_S).
        """
        sent_at = self.clock.monotonic()
        streamed = self._take_stream_news()
        reads: dict[str, Callable[[], Any]] = {}
        if regular and self.position_read_due():
            reads["position"] = self._read_position
        # A woken pass lists our orders only after a reconnect: the streams wake the loop many
        # times a second, and an order slow to show would draw a list and a look-up each time.
        if (regular or self.last_audit_at == float("-inf")) and (
                self.orders_await_confirmation() or self.audit_due()):
            reads["orders"] = self._read_open_orders
        if regular:
            for cl_ord_id, check in self.our.fill_checks.items():
                if check.filled is None:
                    reads[f"fill:{cl_ord_id}"] = partial(self._look_up, cl_ord_id)
            if self.regular_loops % BALANCE_CHECK_EVERY_LOOPS == 0:
                reads["balance"] = self._read_balance
        if self.clock.monotonic() - self.rules_read_at >= RULES_REFRESH_S:
            reads["rules"] = self._read_rules
        if streamed is None:
            reads["market"] = self._read_market
        got = dict(zip(reads, self.clock.gather(list(reads.values()))))
        got.setdefault("market", streamed)
        if got.get("balance") is not None:
            self._set_mode(got["balance"])
        if got.get("rules") is not None:
            self._apply_new_rules(got["rules"])
        for key, found in got.items():
            if key.startswith("fill:"):
                self._note_fill_status(key.removeprefix("fill:"), found)
        if "position" in got:
            if got["position"] is None:
                return False
            self.position_read_at = sent_at
            if not self._rest_position_lags_stream(got["position"]):
                self._note_position(got["position"], sent_at)
        position = self.position
        if position != 0:
            self.close_position(position)
            self._cancel_orders([o for side in SIDES if self.side_blocked_by_position(side)
                                 for o in self.our.active(side)])
        if "orders" in got:
            if got["orders"] is None:
                return False
            self.reconcile(got["orders"])
        if got["market"] is None:
            return False
        self.market = got["market"]
        self.requote(self.market)
        self._measure_quoting(seen=True)
        self._maybe_log_status()
        return True

    def _measure_quoting(self, seen: bool, at: float | None = None) -> None:
        """What uptime and the reward estimate record from now (or `at`) on: what rests as this
        loop saw it, or, for a loop that could not see (its reads failed), nothing from its
        start: time the daemon cannot see is not counted as quoting, whatever rested before."""
        now = self._hour_time() if at is None else at
        self.uptime.record(now, seen and self.quoting_both_sides())
        if self.reward is not None:
            self.reward.record(now, self.reward_value(self.reward) if seen else 0.0)

    def quoting_both_sides(self) -> bool:
        """Both sides have a resting quote of ours within the reward band of the last mark
        (on either side of it, as the programmes measure). An order being replaced still
        counts: it rests until its cancel takes effect."""
        if self.market is None:
            return False
        mark = self.market.mark
        return all(any(abs(distance_bps(side, o.price, mark)) <= REWARD_BAND_BPS
                       for o in self.our.resting(side)) for side in SIDES)

    def reward_value(self, meter: RewardMeter) -> float:
        """The pair's value under the reward programme as this daemon sees it: what is left of
        each resting quote of ours, by its distance from the last mark (rewards.py)."""
        if self.market is None:
            return 0.0
        mark = float(self.market.mark)
        quotes = {side: [(rewards.distance_bps(float(o.price), mark), float(self.qty - o.fill_qty_seen))
                         for o in self.our.resting(side)] for side in SIDES}
        return pair_value(meter.programme, meter.pair, quotes["buy"], quotes["sell"])

    def audit_due(self) -> bool:
        """Time to check the exchange's list for what local state cannot see (strays, orders
        gone without our cancel)."""
        every_s = STREAM_AUDIT_EVERY_S if self.streams_vouch_for_orders() else AUDIT_EVERY_S
        return self.clock.monotonic() - self.last_audit_at >= every_s

    def orders_await_confirmation(self) -> bool:
        """An order of ours was sent but not yet seen, or cancelled but not yet gone (with the
        streams vouching for our orders: for STREAM_CONFIRM_S, the time their event takes)."""
        grace_s = STREAM_CONFIRM_S if self.streams_vouch_for_orders() else 0.0
        return self.our.awaiting_confirmation(self.clock.monotonic(), grace_s)

    def position_read_due(self) -> bool:
        """The position is read every loop without the streams; with them, every
        STREAM_POSITION_EVERY_S, and whenever a fill check or an open position depends on it."""
        if not self.streams_vouch_for_orders() or self.our.fill_checks or self.position != 0:
            return True
        return self.clock.monotonic() - self.position_read_at >= STREAM_POSITION_EVERY_S

    # -- the streams --

    def streams_vouch_for_orders(self) -> bool:
        """The market stream is up, flowing (a price within STREAM_PRICE_MAX_AGE_S) and our
        account is authenticated on it: our orders' and the position's changes reach us as they
        happen. A socket that went quiet is not trusted until it is declared dead."""
        return self._fresh_stream_price() is not None and self.streams.state.connected("user")

    def _fresh_stream_price(self) -> PriceUpdate | None:
        """The market stream's price, if the stream is up and it is at most STREAM_PRICE_MAX_AGE_S old."""
        if self.streams is None or not self.streams.state.connected("market"):
            return None
        price = self.streams.state.latest_price()
        if price is None or self.clock.monotonic() - price.received_at > STREAM_PRICE_MAX_AGE_S:
            return None
        return price

    def _take_stream_news(self) -> Market | None:
        """Apply what the streams said since the last pass: a reconnect (everything is read
        again by REST), our orders' changes, order outcomes, a position. The market from the
        stream when its price is fresh, else None (read it by REST)."""
        if self.streams is None:
            return None
        state = self.streams.state
        if state.resyncs != self.resyncs_seen:
            # Events may have been missed while disconnected: list and read everything now.
            self.resyncs_seen = state.resyncs
            self.last_audit_at = self.position_read_at = float("-inf")
        self._apply_order_events(state.drain_orders())
        self._apply_outcomes(state.drain_outcomes())
        self._apply_streamed_position(state.latest_position_row())
        price = self._fresh_stream_price()
        return None if price is None else Market(price.mark, price.best_bid, price.best_ask, price.received_at)

    def _apply_order_events(self, rows: list[dict[str, Any]]) -> None:
        """Our orders' changes from the stream, oldest first: visible, partly filled, or over
        (then handled as a lookup that found it over would be). Rows of orders we no longer
        track are the audit's business."""
        for row in rows:
            order = self.our.find(str(row.get("cl_ord_id") or ""))
            found = order_status(row)
            if order is None or found.status is None:
                continue
            if not found.over:
                self._note_resting(order)
                self.our.note_partial_fill(order, row)
                continue
            self._log_over(order, found)
            self._settle_final(order, found)

    def _apply_outcomes(self, outcomes: list[dict[str, Any]]) -> None:
        """The order response stream's pushes: a rejection in matching of an order of ours not
        yet visible is final at once (the side quotes again in this very pass, if it may)."""
        for outcome in outcomes:
            order = self.our.awaiting_outcome(str(outcome.get("request_id") or ""))
            if order is None or outcome.get("code") in (0, "0", None):
                continue
            found = OrderStatus("rejected", Decimal(0), None, str(outcome.get("message") or ""))
            self._log_over(order, found)
            self._settle_final(order, found)

    def _apply_streamed_position(self, row: Mapping[str, Any] | None) -> None:
        """A position row from the stream, taken once (rows are news in the order they arrive:
        the exchange's clock can step back): a position that opened is closed at once, unless
        REST already showed something newer. Flat is left for REST to confirm (a streamed flat
        never unblocks a side by itself)."""
        if row is None:
            return
        try:
            position = signed_position([row], self.config.symbol)
        except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError):
            return
        updated_at = exchange_time(row.get("updated_at"))
        if updated_at is None or (position, updated_at) == self.last_streamed_row:
            return
        self.last_streamed_row = (position, updated_at)
        self._trusted_streamed_positions().append((position, updated_at, self.clock.monotonic()))
        if (position == 0 or position == self.position
                or self.position_updated_at is not None and updated_at <= self.position_updated_at):
            return
        self.entry_price = positive_decimal(row.get("entry_price")) or self.entry_price
        self._note_position(position, float("-inf"))  # settles no fill check: REST does

    def _rest_position_lags_stream(self, position: Decimal) -> bool:
        """The REST position answer disagrees with the stream's latest row (of the last
        STREAM_POSITION_TRUST_S) and lags it: it is a row the stream showed and then replaced
        (the position between a fill and its close), or it is older than the open position the
        stream showed last. Then it changes nothing: no second fill, no open position taken for
        closed. Any other answer is news, even one stamped earlier (the exchange's clock can
        step back): REST stays the truth."""
        rows = self._trusted_streamed_positions()
        if not rows or rows[-1][0] == position:
            return False
        rest_at = self.position_updated_at
        replaced = any(qty == position and updated_at == rest_at for qty, updated_at, _ in rows[:-1])
        latest_qty, latest_at, _ = rows[-1]
        older_than_open = latest_qty != 0 and (rest_at is None or rest_at < latest_at)
        return replaced or older_than_open

    def _trusted_streamed_positions(self) -> list[tuple[Decimal, float, float]]:
        """The streamed position rows of the last STREAM_POSITION_TRUST_S (older ones forgotten)."""
        now = self.clock.monotonic()
        self.streamed_positions = [r for r in self.streamed_positions if now - r[2] < STREAM_POSITION_TRUST_S]
        return self.streamed_positions

    def _read_balance(self) -> Decimal | None:
        try:
            return self._read_balance_or_raise()
        except StandXError as exc:
            log.warning("balance read failed (%s): keeping mode %s", exc, self.mode)
            return None

    def _set_mode(self, balance: Decimal, initial: bool = False) -> None:
        self.balance = balance
        floor = self.config.balance_exit
        if floor is not None and balance < floor and not self.stop_requested:
            self.exit_code = EXIT_BALANCE_FLOOR
            self.request_stop(f"balance {balance} is below MARKET_MAKER_BALANCE_EXIT {floor}")
        mode = mode_for_balance(balance, self.config.balance_threshold_1, self.config.balance_threshold_2)
        if mode == self.mode and not initial:
            return
        log.info("balance %s: mode %s (band %s/%s/%s bps)", balance, mode,
                 *vars(band_for_mode(mode, self.config.band)).values())
        if not initial:
            self.alerter.send("mode", f"balance {balance}: mode {mode}")
        if mode != self.mode:
            # Every quote was priced for the old band: both sides are requoted at once.
            self.our.mark_stale()
        self.mode, self.band = mode, band_for_mode(mode, self.config.band)

    def _note_position(self, position: Decimal, sent_at: float) -> None:
        """Take a position read sent at `sent_at`; settle the fill checks it can settle."""
        if position != 0 and self.position == 0:
            self.fills += 1
            self.opened = (position, self.entry_price)
            fill = f"{'bought' if position > 0 else 'sold'} {abs(position)} {self.config.symbol} at {self.entry_price}"
            log.info("filled: %s; closing", fill)
            self.alerter.send("fill", f"filled: {fill}; closing it (reduce-only)")
        elif position == 0 and self.position != 0:
            result = self._round_trip_result()
            log.info("position closed: flat again; %s", result)
            self.alerter.send("close", f"position closed: {result}")
        self.position = position
        if position != 0:
            side = BUY if position > 0 else SELL
            self.position_grown_at[side] = max(self.position_grown_at[side], sent_at)
        self._settle_fill_checks(sent_at)

    def _round_trip_result(self) -> str:
        """The closed round trip in one line (price result, fees, net), counted in the day's
        totals; the close price is the close order's average fill price."""
        self._roll_day()
        self.day.fills += 1
        qty, entry = self.opened or (self.position, None)
        self.opened = None
        closed_at = self._look_up(self.close_id).avg_price if self.close_id else None
        if entry is None or closed_at is None:
            return f"round trip result unknown (fill or close price not shown); {self.day.summary()}"
        pnl, fees = round_trip(qty, entry, closed_at, self.rules)
        self.day.pnl += pnl
        self.day.fees += fees
        return (f"closed at {closed_at}: price {pnl:+.4f}, fees {fees:.4f}, net {pnl - fees:+.4f}; "
                f"{self.day.summary()}")

    def _roll_day(self) -> None:
        today = time.strftime("%Y-%m-%d", time.gmtime(self.clock.wall()))
        if self.day.day != today:
            self.day = DayTotals(today)

    # -- orders that may have filled --

    def _note_fill_status(self, cl_ord_id: str, found: OrderStatus) -> None:
        """The looked-up status of an order that may have filled: final with nothing filled
        clears its side at once; any fill must show in the position first."""
        if self.our.note_fill_status(cl_ord_id, found):
            log.debug("order %s was %s without a fill", cl_ord_id, found.status)

    def _settle_fill_checks(self, position_sent_at: float) -> None:
        """A side whose order may have filled waits for a position read sent after the order
        was found gone, showing no position on that side. Then it may quote again once the
        order's status says it did not fill; or the position shows the fill: the answer is at
        least as new as the fill (by the exchange's timestamps), or it grew on that side after
        the order was sent; or, the status unknown, nothing showed for FILL_CHECK_MAX_S. A fill
        the position never shows is given up on after FILL_SHOWS_MAX_S, with an alert."""
        now = self.clock.monotonic()
        for cl_ord_id, check in list(self.our.fill_checks.items()):
            if position_sent_at <= check.since or self.side_blocked_by_position(check.side):
                continue
            fill_showed = (self.position_grown_at[check.side] >= check.sent_at
                           or None not in (check.fill_time, self.position_updated_at)
                           and self.position_updated_at + FILL_TIME_SKEW_S >= check.fill_time)
            waited_s = now - check.since
            if check.filled and not fill_showed and waited_s >= FILL_SHOWS_MAX_S:
                log.error("order %s filled but the position has not shown it for %.0f s: quoting "
                          "that side again; check the position on the exchange", cl_ord_id, waited_s)
                self.alerter.send("fill", f"order {cl_ord_id} filled but the position never showed it")
            elif not (check.filled is False or fill_showed
                      or check.filled is None and waited_s >= FILL_CHECK_MAX_S):
                continue
            del self.our.fill_checks[cl_ord_id]

    # -- reads (None = unknown) --

    def _read_position(self) -> Decimal | None:
        try:
            rows = api.query_positions(self.auth, self.config.symbol)
            position = signed_position(rows, self.config.symbol)
            ours = [r for r in rows if r.get("symbol") == self.config.symbol]
            self.entry_price = next((positive_decimal(r.get("entry_price")) for r in ours), None)
            # When the exchange last changed the position: a fill after it is not in it yet.
            self.position_updated_at = max((t for r in ours if (t := exchange_time(r.get("updated_at")))),
                                           default=None)
            return position
        except StandXError as exc:
            self._read_failed("position read failed", exc, "skipping this loop")
        except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError):
            self._read_failed("position answer malformed", None, "skipping this loop")
        return None

    def _read_failed(self, what: str, error: StandXError | None, consequence: str) -> None:
        self.last_read_error = f"{what}: {error}" if error else what
        log.warning("%s%s: %s", what, f" ({error})" if error else "", consequence)

    def _read_market(self) -> Market | None:
        sent_at = self.clock.monotonic()
        try:
            prices = api.query_symbol_price(self.auth, self.config.symbol)
        except StandXError as exc:
            self._read_failed("price read failed", exc, "no quote decision this loop")
            return None
        if not isinstance(prices, dict):
            self._read_failed("price answer malformed", None, "no quote decision this loop")
            return None
        mark = positive_decimal(prices.get("mark_price")) or positive_decimal(prices.get("mid_price"))
        if mark is None:
            self._read_failed("price answer has no usable mark or mid price", None,
                              "no quote decision this loop")
            return None
        return Market(mark, positive_decimal(prices.get("spread_bid")),
                      positive_decimal(prices.get("spread_ask")), sent_at)

    def _read_open_orders(self) -> list[dict[str, Any]] | None:
        try:
            return self._read_open_orders_or_raise()
        except StandXError as exc:
            self._read_failed("open orders read failed", exc, "keeping last known state")
            return None

    def _read_open_orders_or_raise(self) -> list[dict[str, Any]]:
        answer = api.query_open_orders(self.auth, self.config.symbol, limit=OPEN_ORDERS_LIMIT)
        rows = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise StandXError("open orders answer malformed", 200)
        if isinstance(answer.get("total"), int) and answer["total"] > len(rows):
            raise StandXError(f"open orders list incomplete ({len(rows)} of {answer['total']})", 200)
        return [r for r in rows if r.get("symbol", self.config.symbol) == self.config.symbol and is_live(r)]

    def _read_balance_or_raise(self) -> Decimal:
        snapshot = api.query_balance(self.auth)
        value = snapshot.get("balance") if isinstance(snapshot, dict) else None
        if value is None and isinstance(snapshot, dict):
            value = snapshot.get("equity")
        try:
            return wire_decimal(value)
        except ValueError:
            raise StandXError("balance answer malformed", 200) from None

    # -- our orders --

    def reconcile(self, open_orders: list[dict[str, Any]]) -> None:
        """Match our tracked orders with what the exchange shows; cancel strays of ours.

        An order leaves tracking only when it is confirmed gone: seen and now absent, or its
        own status final. One that vanished may have filled (a fill check holds its side); one
        never seen stays tracked, however late it shows up, and is looked up."""
        now = self.last_audit_at = self.clock.monotonic()
        visible = {o["cl_ord_id"]: o for o in open_orders if is_our_order(o)}
        self._follow_up(visible, now, give_up=True)
        for order in self.our.tracked:
            if order.cancelling and now - order.cancel_sent_at >= CANCEL_RETRY_S:
                self._cancel_orders([order])
        self.our.note_strays(visible, now)
        if self._cancel_ids(list(self.our.strays)):
            log.info("cancelled stray order(s) of ours: %s", ", ".join(self.our.strays))

    def _note_resting(self, order: OurOrder) -> None:
        """The exchange shows the order resting, in the list or by its own lookup. A first sight
        ends its side's refusals (a request accepted is not enough: matching can still reject it)."""
        if not order.seen and order.side in self.refusals:
            del self.refusals[order.side]
            self.refused_since = None
        order.seen = True

    def _follow_up(self, visible: Mapping[str, Any], now: float, give_up: bool) -> None:
        """Each tracked order against the list: shown, it rests; seen before and absent now, it
        is gone and may have filled (a fill check holds its side); never seen, it is looked up."""
        for order in list(self.our.tracked):
            if order.cl_ord_id in visible:
                self._note_resting(order)
                self.our.note_partial_fill(order, visible[order.cl_ord_id])
            elif order.seen:
                log.info("%s order %s at %s is gone (%s)", order.side, order.cl_ord_id, order.price,
                         "cancelled, unless it filled first" if order.cancelling else "filled or cancelled")
                self.our.vanished(order, now)
            else:
                self._follow_up_unseen(order, now, give_up)

    def _follow_up_unseen(self, order: OurOrder, now: float, give_up: bool = True) -> None:
        """An order not yet visible: looked up after LOOKUP_AFTER_S, so that a rejection in
        matching is known at once. Tracked while it may still appear: an accepted one until the
        exchange says what became of it; one whose request got no clear answer until
        UNSEEN_GIVE_UP_S, or without `give_up` (a stop must not call itself clean over an order
        it cannot rule out) until the exchange says."""
        if now - order.sent_at < LOOKUP_AFTER_S:
            return
        found = self._look_up(order.cl_ord_id)
        if found.status is None:
            # An accepted order exists: it shows up or is rejected, however long it takes.
            if not order.outcome_unknown or now - order.sent_at < UNSEEN_GIVE_UP_S or not give_up:
                return
            # The exchange has not heard of it for this long: the request never arrived. Should
            # it still appear, it is ours by its prefix, so the audit cancels it as a stray.
            log.warning("%s order %s at %s never became visible in %.0f s: no longer waiting for it",
                        order.side, order.cl_ord_id, order.price, UNSEEN_GIVE_UP_S)
            self.our.give_up(order, now)
        elif not found.over:
            self._note_resting(order)  # live after all: it shows in the next list
        else:
            self._log_over(order, found)
            self._settle_final(order, found)

    @staticmethod
    def _log_over(order: OurOrder, found: OrderStatus) -> None:
        if not order.cancelling:
            log.info("%s order %s at %s was %s by the exchange%s", order.side, order.cl_ord_id,
                     order.price, found.status, f" ({found.remark})" if found.remark else "")

    def _settle_final(self, order: OurOrder, found: OrderStatus) -> None:
        """An order of ours the exchange shows over: no longer tracked; a lasting rejection
        backs its side off, a fill (or an unknown amount filled) starts a fill check."""
        if found.status == "rejected":
            # Rejected in matching for a reason the exchange names that may last (margin): the
            # side backs off as for a refused request (_note_rejection); a post-only quote that
            # would have crossed, or a rejection without a reason, is placed again at once.
            rejection = StandXError(found.remark, 400)
            if found.remark and is_lasting_refusal(rejection):
                self._note_rejection(order.side, rejection)
        self.our.over(order, found, self.clock.monotonic())


    def side_may_quote(self, side: str) -> bool:
        """Not stopping, not the side that grows a position, no order there that may have
        filled without the position settling it yet, and not backing off after refusals."""
        return (not self.stop_requested and not self.side_blocked_by_position(side)
                and not self.our.fill_check_holds(side)
                and self.clock.monotonic() >= self.refusals.get(side, (0, float("-inf")))[1])

    def side_may_get_new_order(self, side: str) -> bool:
        """The one rule for sending a quote, whatever has failed before: the side may quote,
        and no order of ours there could still fill (resting, on its way, being cancelled, or
        a stray): two such orders could fill together and double the position."""
        return self.side_may_quote(side) and self.our.on_side(side) == 0

    def side_needs_requote(self, side: str, market: Market) -> bool:
        """A side needs a new quote when it has none, or its resting one left the band of the
        mark, or the book's mid came within half the band's minimum of it (the mark trails the
        book in fast moves: that quote is the one the running price fills).

        An order still in flight counts as present: at most one order in flight per side.
        """
        active = self.our.active(side)
        if not active:
            return True
        if any(not o.seen for o in active):
            return False
        return any(o.stale or not in_band(side, o.price, market.mark, self.band)
                   or near_the_book(side, o.price, market, self.band.min_bps * BOOK_REQUOTE_SHARE)
                   for o in active)

    def _already_at_target(self, side: str, market: Market) -> bool:
        """A replacement would gain nothing: the side's quote rests where a new one would go, or
        the book keeps the new one out of the band too (see quote_price) while the resting one
        is clear of the book. Replacing it would only leave the side bare for a moment."""
        target = self._price_for(side, market)
        target_out = not in_band(side, target, market.mark, self.band)
        return any(o.seen and not o.stale and (o.price == target or (
            target_out and not near_the_book(side, o.price, market, self.band.min_bps * BOOK_REQUOTE_SHARE)))
            for o in self.our.active(side))

    def side_blocked_by_position(self, side: str) -> bool:
        """While a position is open, never add to it: the side that would grow it waits."""
        return (self.position > 0 and side == BUY) or (self.position < 0 and side == SELL)

    def requote(self, market: Market) -> None:
        if self.stop_requested:
            return  # stopping: no new quote, only cancels (a position is still closed)
        age_s = self.clock.monotonic() - market.read_at
        if age_s > PRICE_MAX_AGE_S:
            log.info("price read is %.1f s old: no quote decision on it", age_s)
            return
        sides = [s for s in SIDES if self.side_may_quote(s) and self.side_needs_requote(s, market)
                 and not self._already_at_target(s, market)]
        if not sides:
            return
        if self.config.requote_mode == "cancel_first":
            self._requote_cancel_first(market)
        else:
            # Only the sides that need it: a requote leaves its side bare for a moment (the old
            # quote must be seen over before the new one goes out), so a side still in its band
            # keeps its quote.
            self._replace(sides, market)

    def _replace(self, sides: list[str], market: Market) -> None:
        """Cancel the old quotes, and place the new ones as soon as the exchange shows the old
        ones over without a fill: an old quote that could still fill (its cancel failed, is
        slow, or it filled just before the cancel) never rests beside its replacement, so the
        position can never grow past one quote. The old order rests until the cancel takes
        effect, so the side stays covered for most of the requote."""
        old = [o for side in sides for o in self.our.active(side)]
        if old:
            self.requotes += 1
            if not self._cancel_orders(old):
                return  # the old quotes stay; their cancel is retried, then they are replaced
            self._confirm_gone(old)
            if self.clock.monotonic() - market.read_at > PRICE_MAX_AGE_S:
                return  # the confirmation took long: the next loop prices off a fresh read
        self.place_quotes([(side, self._price_for(side, market)) for side in sides])

    def _confirm_gone(self, cancelled: list[OurOrder]) -> None:
        """Wait until the exchange shows each cancelled order over, for at most
        CANCEL_CONFIRM_S: an order over without a fill stops being tracked (its side is free),
        one with a fill starts a fill check. One still live after that is left to the loop.
        The order stream says so as it happens while it vouches for our orders; otherwise the
        orders are looked up every CANCEL_POLL_S."""
        ends_at = self.clock.monotonic() + CANCEL_CONFIRM_S
        pending = list(cancelled)
        while pending and not self.stop_requested:
            if self.streams_vouch_for_orders():
                self._apply_order_events(self.streams.state.drain_orders())
                pending = [o for o in pending if o in self.our.tracked]
            else:
                answers = self.clock.gather([partial(self._look_up, o.cl_ord_id) for o in pending])
                for order, found in zip(list(pending), answers):
                    if found.over:
                        pending.remove(order)
                        self.our.over(order, found, self.clock.monotonic())
            if not pending or self.clock.monotonic() >= ends_at:
                return
            if self.streams_vouch_for_orders():
                self.streams.wait_until(ends_at, lambda: self.stop_requested)
            else:
                self.clock.sleep(CANCEL_POLL_S)

    def _requote_cancel_first(self, market: Market) -> None:
        """The original strategy: cancel everything, wait, place both sides afresh (priced from
        a fresh read: the market and the position may have moved during the pause). As with
        replace, a side gets its new quote only once its old one is seen over."""
        old = [o for side in SIDES for o in self.our.active(side)]
        self._cancel_orders(old)
        self.requotes += 1
        sleep_until(self.clock, self.clock.monotonic() + CANCEL_FIRST_PAUSE_S, lambda: self.stop_requested)
        if self.stop_requested:
            return
        self._confirm_gone(old)
        sent_at = self.clock.monotonic()
        position, fresh = self.clock.gather([self._read_position, self._read_market])
        if position is None or fresh is None:
            return  # unknown: the next loop places them
        self._note_position(position, sent_at)
        self.market = fresh
        self.place_quotes([(side, self._price_for(side, fresh)) for side in SIDES])

    def _price_for(self, side: str, market: Market) -> Decimal:
        assert self.rules is not None
        return quote_price(side, market.mark, self.band.target_bps, self.rules.tick,
                           market.best_bid, market.best_ask, self.band.min_bps)

    def new_cl_ord_id(self, side: str) -> str:
        self.order_counter += 1
        return f"{CL_ORD_ID_PREFIX}{side[0]}{self.run_id}{self.order_counter}"

    def place_quotes(self, quotes: list[tuple[str, Decimal]]) -> None:
        """Send post-only quotes, at the same time.

        The one place quotes are sent: a quote whose side may not get a new order (see
        side_may_get_new_order) is dropped here, whatever the caller decided. Each quote is
        tracked before it is sent, so an unknown outcome is looked for rather than sent again."""
        orders: list[OurOrder] = []
        for side, price in quotes:
            if self.side_may_get_new_order(side):
                orders.append(OurOrder(self.new_cl_ord_id(side), side, price, self.clock.monotonic()))
                self.our.track(orders[-1])
            else:
                log.debug("no new %s quote: the side is stopping, blocked or at its cap", side)
        self.orders_placed += len(orders)
        if not orders:
            return
        errors = self.clock.gather([partial(self._send_quote, order) for order in orders])
        for order in orders:
            # Visibility is timed from the answer: a request that timed out after 10 s must still
            # get its full chance to show up (and its lookup) before it counts as lost.
            order.sent_at = self.clock.monotonic()
        for order, error in zip(orders, errors):
            if isinstance(error, UnknownOutcomeError):
                order.outcome_unknown = True
                log.warning("%s order %s outcome unknown (%s): not re-sending, looking for it",
                            order.side, order.cl_ord_id, error)
            elif error is not None:
                self.our.drop(order)
                if is_lasting_refusal(error):
                    self._back_off_refused(order.side, error)
                else:
                    log.warning("%s order at %s refused (%s): will re-place next loop",
                                order.side, order.price, error)

    def _note_rejection(self, side: str, rejection: StandXError) -> None:
        """An order rejected in matching: StandX rejects a few accepted orders for no lasting
        reason, so the first rejection in a row is quoted again at once (recorded as refusal
        number 0, which neither pauses the side nor raises the alert); a second one in a row
        backs off as a refused request does."""
        if side in self.refusals:
            self._back_off_refused(side, rejection)
            return
        self.refusals[side] = (0, self.clock.monotonic())
        log.info("%s quote rejected in matching (%s): placing it again at once", side, rejection.message)

    def _back_off_refused(self, side: str, error: StandXError) -> None:
        """A refusal that will not pass by itself: the side waits (a few tries a minute at
        most), and once every quote has been refused for REFUSED_STOP_S the daemon stops."""
        now = self.clock.monotonic()
        # StandX can change a symbol's tick or lot at any time, and the refusal of a quote on
        # the old grid is the first sign: the rules are read again in the next loop.
        self.rules_read_at = float("-inf")
        count = self.refusals.get(side, (0, 0.0))[0] + 1
        pause_s = REFUSAL_BACKOFF_S[min(count, len(REFUSAL_BACKOFF_S)) - 1]
        self.refusals[side] = (count, now + pause_s)
        self.last_refusal = error.message
        log.warning("%s quote refused by the exchange (%s): next %s quote in %.0f s",
                    side, error.message, side, pause_s)
        if self.our.quote_resting():
            self.refused_since = None  # a quote of ours rests: not every quote is refused
            return
        self.refused_since = now if self.refused_since is None else self.refused_since
        if now - self.refused_since >= REFUSED_STOP_S:
            self.exit_code = EXIT_REFUSED
            self.request_stop(f"every quote refused for {REFUSED_STOP_S / 60:.0f} minutes "
                              f"(last: {error.message})")

    def _send_quote(self, order: OurOrder) -> StandXError | None:
        """The new_order request alone (it may run on another thread): the error, if any."""
        session_id = self.streams.session_id if self.streams is not None and self.streams.api_ready() else None
        before = self.auth.last_request_id()
        try:
            api.new_limit_order(self.auth, self.config.symbol, order.side, self.qty, order.price,
                                self.config.time_in_force, cl_ord_id=order.cl_ord_id, session_id=session_id)
        except StandXError as exc:
            return exc
        finally:
            # The id this request was signed with (none if it failed before signing).
            sent = self.auth.last_request_id()
            order.request_id = sent if sent != before else None
        log.debug("placed %s %s @ %s (%s)", order.side, self.qty, order.price, order.cl_ord_id)
        return None

    def _look_up(self, cl_ord_id: str) -> OrderStatus:
        """An order's status by cl_ord_id; no status while the exchange does not show it (404)
        or the read failed."""
        try:
            answer = api.query_order(self.auth, cl_ord_id=cl_ord_id)
        except StandXError as exc:
            log.debug("order %s not visible yet (%s)", cl_ord_id, exc)
            return OrderStatus(None)
        return order_status(answer)

    def _cancel_orders(self, orders: list[OurOrder]) -> bool:
        """Ask to cancel tracked orders, in one request; they stay tracked until seen gone.
        True if the exchange accepted the request."""
        if not orders:
            return True
        now = self.clock.monotonic()
        for order in orders:
            order.cancel_sent_at = now
        return self._send_cancel([o.cl_ord_id for o in orders])

    def _send_cancel(self, cl_ord_ids: list[str]) -> bool:
        """The cancel_orders request alone; True if the exchange accepted it."""
        try:
            api.cancel_orders(self.auth, cl_ord_ids=cl_ord_ids)
        except StandXError as exc:
            log.warning("cancel of %s failed (%s): will retry", ", ".join(cl_ord_ids), exc)
            return False
        return True

    def _cancel_ids(self, cl_ord_ids: list[str]) -> bool:
        """One batch cancel of the ids not already asked for within CANCEL_RETRY_S; True if sent."""
        due = self.our.cancels_due(cl_ord_ids, self.clock.monotonic())
        if not due:
            return False
        self._send_cancel(due)
        return True

    def close_position(self, position: Decimal) -> None:
        """Close the whole position with a reduce-only IOC market order (it can never flip us)."""
        if self.clock.monotonic() < self.close_settles_at:
            return  # the last close may not show in the position yet
        self.close_settles_at = self.clock.monotonic() + CLOSE_SETTLE_S
        side = SELL if position > 0 else BUY
        qty = close_qty(position, self.rules)
        self.close_id = self.new_cl_ord_id(side)
        try:
            api.new_market_order(self.auth, self.config.symbol, side, qty,
                                 reduce_only=True, time_in_force="ioc", cl_ord_id=self.close_id)
            log.info("sent reduce-only %s %s to close the position", side, qty)
        except StandXError as exc:
            log.warning("close order failed (%s): will retry once the position shows", exc)

    # -- stop --

    def shutdown(self) -> bool:
        """Cancel every order of ours and confirm none is left, none is on its way and no
        position is open. True only then."""
        self.request_stop()
        if self.streams is not None:
            self.streams.request_stop()  # the stop reads by REST only; the sockets close meanwhile
        # The stop gets its own budget, whatever the interrupted loop used of the grace period.
        deadline = self.auth.deadline = self.stop_requested_at + STOP_DEADLINE_S
        for order in self.our.tracked:
            order.cancel_sent_at = order.cancel_sent_at or self.clock.monotonic()
        self._cancel_ids([o.cl_ord_id for o in self.our.tracked] + list(self.our.given_up))
        clean = False
        while self.clock.monotonic() < deadline:
            self.clock.sleep(STOP_POLL_S)
            try:
                visible = {o["cl_ord_id"]: o for o in self._read_open_orders_or_raise() if is_our_order(o)}
            except StandXError as exc:
                log.warning("open orders read failed while stopping (%s)", exc)
                continue
            now = self.clock.monotonic()
            self._follow_up(visible, now, give_up=False)
            self.our.note_strays(visible, now)
            self._resolve_given_up()
            if not visible and not self.our.tracked and not self.our.given_up:
                clean = True
                break
            self._cancel_ids(list(visible))
        flat = self._flatten_before_exit(deadline)
        self.write_state()
        if clean and flat:
            outcome = "no order of ours is left open and no position"
            log.info("stopped: %s", outcome)
        else:
            outcome = (f"could not confirm that {'our orders are cancelled' if not clean else 'the position is closed'}; "
                       "check on the exchange (our orders are cancelled at the next start)")
            log.error("stop deadline reached: %s", outcome)
        self.alerter.send("stop", f"stopped ({self.stop_reason}): {outcome}")
        if self.streams is not None:
            # Whatever is left of the stop's budget, never past the hard stop.
            left_s = self.stop_requested_at + STREAMS_STOP_BY_S - self.clock.monotonic()
            self.streams.stop(timeout_s=min(STREAMS_STOP_MAX_S, max(0.0, left_s)))
        return clean and flat

    def _resolve_given_up(self) -> None:
        """While stopping: a given-up order the exchange now shows over is settled (a fill of
        it is checked like any other); one it still does not know keeps the stop unconfirmed."""
        for cid in list(self.our.given_up):
            found = self._look_up(cid)
            if found.over:
                self.our.settle_given_up(cid, found, self.clock.monotonic())

    def _flatten_before_exit(self, deadline: float) -> bool:
        """Close any position left (a fill can land while cancels are in flight) and confirm it
        flat by a position read that also settles every order that may have filled: a position
        answer that lags a fill must not pass for flat."""
        while self.clock.monotonic() < deadline:
            sent_at = self.clock.monotonic()
            unsettled = [cid for cid, check in self.our.fill_checks.items() if check.filled is None]
            found = self.clock.gather([self._read_position] + [partial(self._look_up, cid) for cid in unsettled])
            for cid, status in zip(unsettled, found[1:]):
                self._note_fill_status(cid, status)
            position = found[0]
            if position is not None:
                self._note_position(position, sent_at)
                if position != 0:
                    self.close_position(position)
                elif not self.our.fill_checks:
                    return True
            self.clock.sleep(STOP_POLL_S)
        return False

    # -- status --

    def _maybe_log_status(self) -> None:
        now = self.clock.monotonic()
        if now - self.last_status_at >= self.status_every_s:
            self.last_status_at = now
            log.info(self.status_line())
            self.write_state()

    def _restore_estimates(self) -> None:
        """Take back the reward tallies and the day's round trips the last run of this account
        and symbol saved in the state file (a restart keeps the day's figures). A missing or
        unreadable file, another programme or another day: nothing is taken back."""
        if self.state_path is None:
            return
        try:
            if os.path.getsize(self.state_path) > STATE_FILE_MAX_BYTES:
                log.warning("state file %s is too large to be ours: the day's estimate starts afresh", self.state_path)
                return
            with open(self.state_path, encoding="utf-8") as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            return
        if not isinstance(state, dict):
            return
        now = self._hour_time()
        if self.reward is not None and state.get("reward_programme") == self.config.reward_programme:
            hours = self.reward.restore(state.get("reward_hours"), now)
            if hours:
                log.info("reward estimate: %d hour(s) of this day and the last taken back from %s",
                         hours, self.state_path)
        saved = state.get("day_totals")
        try:
            if isinstance(saved, dict) and saved.get("day") == time.strftime("%Y-%m-%d", time.gmtime(self.clock.wall())):
                round_trips = int(saved["round_trips"])
                if round_trips >= 0:
                    self.day = DayTotals(str(saved["day"]), round_trips, wire_decimal(saved["fees"]),
                                         wire_decimal(saved["pnl"]))
        except (KeyError, TypeError, ValueError, InvalidOperation):
            pass  # an unreadable total: the day starts again from nothing

    def write_state(self) -> None:
        """Save what --status shows of the running daemon (its own view: uptime, mode, counters)."""
        if self.state_path is None:
            return
        state = {"updated_at": self.clock.wall(), "pid": os.getpid(), "running": not self.stop_requested,
                 "mode": self.mode, "position": str(self.position), "requotes": self.requotes,
                 "fills": self.fills, "uptime": reward_summary(self.uptime, self._hour_time()),
                 "reward": reward_estimate(self.reward, self.config, self._hour_time(),
                                           quoting_on=not self.stop_requested),
                 "day": self.day.summary(),
                 # what a restart takes back (_restore_estimates)
                 "reward_programme": self.config.reward_programme,
                 "reward_hours": self.reward.saved() if self.reward is not None else {},
                 "day_totals": {"day": self.day.day, "round_trips": self.day.fills, "fees": str(self.day.fees),
                                "pnl": str(self.day.pnl)}}
        try:
            with open(self.state_path + ".tmp", "w", encoding="utf-8") as handle:
                json.dump(state, handle)
            os.replace(self.state_path + ".tmp", self.state_path)
        except OSError as exc:
            log.warning("cannot write the state file %s (%s)", self.state_path, exc.strerror)

    def status_line(self) -> str:
        mark = self.market.mark if self.market else None
        sides = []
        for side in SIDES:
            live = self.our.resting(side)
            sides.append(f"{side} {distance_bps(side, live[0].price, mark):.2f}bps"
                         if live and mark else f"{side} -")
        elapsed = max(self.clock.monotonic() - self.started_at, 1e-9)
        return (f"status mode={self.mode} mark={mark} {' '.join(sides)} position={self.position} "
                f"balance={self.balance} requotes={self.requotes} fills={self.fills} "
                f"req/s={self.auth.requests_sent / elapsed:.2f} feed={self.feed_state()} "
                f"{reward_summary(self.uptime, self._hour_time())} "
                f"{reward_estimate(self.reward, self.config, self._hour_time())} {self.day.summary()}")

    def feed_state(self) -> str:
        """Where the loop's prices and order news come from now: rest (configured), ws (the
        streams vouch for both), or ws-fallback (configured ws, but reading by REST: a stream is
        down, silent, or our account is not authenticated on it)."""
        if self.streams is None:
            return "rest"
        return "ws" if self.streams_vouch_for_orders() else "ws-fallback"


# ---- command line --------------------------------------------------------------------------

def warn_if_env_file_open(path: str) -> None:
    """The .env holds the wallet key: it should be readable by its owner only."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users: run chmod 600 %s", path, path)


def load_environment(env_file: str | None) -> None:
    """Read the env file into os.environ without overriding variables already set."""
    path = env_file or ".env"
    if env_file and not os.path.isfile(env_file):
        raise ConfigError("--env-file", f"no such file: {env_file}")
    if os.path.isfile(path):
        warn_if_env_file_open(path)
        for name, value in read_env_file(path).items():
            os.environ.setdefault(name, value)


def read_env_file(path: str) -> dict[str, str]:
    """The NAME=value lines of an env file (a UTF-8 byte-order mark is allowed). A line that
    cannot be parsed is an error naming the file and the line: skipping it would run with a
    default in place of the setting it meant to give."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise ConfigError(path, "is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot be read ({exc.strerror})") from None
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(f"{path}, line {binding.original.line}",
                              "cannot be parsed (an unbalanced quote?)")
        if binding.key is not None:
            values[binding.key] = binding.value or ""
    return values


def number_argument(kind: Callable[[str], Any], minimum: float = 0, *,
                    inclusive: bool = True, maximum: float | None = None) -> Callable[[str], Any]:
    """An argparse type: a finite number (int, float or Decimal) at least `minimum`, or above
    it when not `inclusive`, and at most `maximum` if given; anything else is a one-line usage
    error, never a traceback."""
    bound = f"{'at least' if inclusive else 'greater than'} {minimum}"
    if maximum is not None:
        bound += f" and at most {maximum}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
            finite = math.isfinite(value)
        except (ValueError, ArithmeticError):
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if (not finite or value < minimum or (value == minimum and not inclusive)
                or (maximum is not None and value > maximum)):
            raise argparse.ArgumentTypeError(f"must be a number {bound}: {text!r}")
        return value
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="StandX Perps market maker")
    parser.add_argument("--env-file", help="read settings from this file (default: ./.env if present)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the settings, print them and exit (no request is sent)")
    parser.add_argument("--status", action="store_true",
                        help="print the account's balance, position and our orders, and exit "
                             "(read-only: no order can be sent)")
    parser.add_argument("--log-file", metavar="PATH",
                        help="log to this file, rotated at 10 MB x 5, instead of stdout")
    sim = parser.add_argument_group("simulation (no account needed)")
    sim.add_argument("--simulate", action="store_true",
                     help="run against a local StandX simulator with a throwaway wallet")
    sim.add_argument("--market-data", nargs="+", metavar="PREFIX",
                     help="replay recorded hours (PREFIX.bbo.csv.gz + PREFIX.trades.csv.gz) "
                          "instead of a synthetic market")
    sim.add_argument("--duration", type=number_argument(float, inclusive=False), metavar="SECONDS",
                     help="stop after this many seconds (default: until Ctrl-C)")
    sim.add_argument("--report-json", metavar="PATH", default=DEFAULT_SIM_REPORT,
                     help=f"where to write the run's report (default: {DEFAULT_SIM_REPORT})")
    args = parser.parse_args(argv)
    if not args.simulate and (args.market_data or args.duration):
        usage_error("--market-data and --duration need --simulate")
    others = [name for name, given in (("--check-config", args.check_config), ("--simulate", args.simulate),
                                       ("--log-file", args.log_file)) if given]
    if args.status and others:
        usage_error(f"--status only reads the account: it cannot be combined with {', '.join(others)}")
    return args


def usage_error(message: str) -> None:
    """A wrong combination of options: one line, exit 2."""
    print(f"usage error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def setup_logging(level: str, log_file: str | None = None) -> None:
    """Log to stdout (the terminal, or systemd's journal), or with --log-file only to that
    file, rotated by size so that weeks of running cannot fill the disk."""
    if log_file:
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=LOG_FILE_MAX_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # urllib3 quotes request URLs in its log lines (a Telegram URL carries the bot token, a
    # webhook URL may carry a secret): only our own lines reach the log.
    logging.getLogger("urllib3").setLevel(logging.CRITICAL)
    # websockets logs every frame at DEBUG, our auth frames with the token among them; standx_ws
    # says what happens on the sockets in its own words.
    logging.getLogger("websockets").setLevel(logging.WARNING)


def state_file_path(config: Config, address: str) -> str:
    return os.path.join(config.state_dir, f"state_{address.lower()}_{config.symbol}.json")


def describe(config: Config) -> str:
    band = config.band
    floor = f" exit_below={config.balance_exit}" if config.balance_exit is not None else ""
    return (f"symbol={config.symbol} qty={config.qty} band={band.target_bps}/{band.min_bps}/"
            f"{band.max_bps}bps thresholds={config.balance_threshold_1}/{config.balance_threshold_2}{floor} "
            f"interval={config.check_interval_s}s tif={config.time_in_force} "
            f"requote={config.requote_mode} feed={config.price_feed} reward={config.reward_programme} "
            f"perps={config.perps_base_url}")


def install_signal_handlers(maker: MarketMaker) -> None:
    def handle(signum: int, _frame: Any) -> None:
        if not maker.stop_requested:
            arm_hard_stop()
        maker.request_stop(signal.Signals(signum).name)
    # SIGHUP too: closing the terminal that runs the daemon must not leave orders behind.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handle)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("INFO")
    try:
        load_environment(args.env_file)
        env = dict(os.environ)
        if args.simulate:
            from standx_sim.simulate import throwaway_key  # the simulator only when asked for
            env["WALLET_PRIVATE_KEY"] = throwaway_key()
        config = load_config(env)
        alert_config = load_alert_config(env)
    except (ConfigError, AlertConfigError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"configuration OK: {describe(config)}")
        print(f"wallet {Account.from_key(config.private_key).address}, auth {config.auth_base_url}, "
              f"perps {config.perps_base_url}")
        if config.price_feed == "ws":
            print(f"streams {config.ws_stream_url}, {config.ws_api_url}")
        return EXIT_OK
    if args.status:
        setup_logging("CRITICAL")  # the one line below says what failed
        return show_status(config)
    try:
        setup_logging(config.log_level, args.log_file)
    except OSError as exc:
        print(f"configuration error: --log-file: cannot write {args.log_file} ({exc.strerror})", file=sys.stderr)
        return EXIT_CONFIG
    if args.simulate:
        return simulate(config, args)
    auth = StandXAuth(config.private_key, auth_base_url=config.auth_base_url,
                      perps_base_url=config.perps_base_url)
    try:
        lock = hold_instance_lock(auth.address, config.symbol)
    except OSError:
        print(f"already running: another market maker quotes {config.symbol} for {auth.address} "
              "on this machine; stop it first", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    alerter = Alerter(alert_config, account=auth.address, symbol=config.symbol,
                      clock=auth.clock.monotonic)
    maker = MarketMaker(config, auth, state_path=state_file_path(config, auth.address), alerter=alerter,
                        streams=streams_for(config, auth))
    install_signal_handlers(maker)
    log.info("starting: %s wallet=%s", describe(config), auth.address)
    try:
        return maker.run()
    finally:
        alerter.close()  # the stop message goes out, within a second at most
        lock.close()


def streams_for(config: Config, auth: StandXAuth) -> StandXStreams | None:
    """StandX's streams for the daemon, unless MARKET_MAKER_PRICE_FEED=rest."""
    if config.price_feed != "ws":
        return None
    return StandXStreams(auth, config.symbol, config.ws_stream_url, config.ws_api_url, auth.clock)


def show_status(config: Config) -> int:
    """Print the account as the exchange shows it, plus the running daemon's own view."""
    auth = StandXAuth(config.private_key, auth_base_url=config.auth_base_url,
                      perps_base_url=config.perps_base_url, read_only=True)
    reader = MarketMaker(config, auth)
    try:
        auth.authenticate()
        balance = reader._read_balance_or_raise()
        orders = reader._read_open_orders_or_raise()
    except StandXError as exc:
        print(f"status unavailable: {exc}", file=sys.stderr)
        return EXIT_ERROR
    position, market = reader._read_position(), reader._read_market()
    print(format_status(config, auth.address, balance, position, market, orders,
                        read_state(state_file_path(config, auth.address), auth.clock.wall())))
    return EXIT_OK


def format_status(config: Config, address: str, balance: Decimal, position: Decimal | None,
                  market: Market | None, orders: list[dict[str, Any]], daemon: str) -> str:
    mark = market.mark if market else None
    lines = [f"account  {address}  {config.symbol}",
             f"balance  {balance}",
             f"position {position if position is not None else 'unknown (read failed)'}",
             f"mark     {mark if mark is not None else 'unknown (read failed)'}",
             "our orders:"]
    ours = [o for o in orders if is_our_order(o)]
    for order in ours:
        side, price = str(order.get("side")), positive_decimal(order.get("price"))
        gap = f"{distance_bps(side, price, mark):7.2f} bps" if price and mark else "      ? bps"
        lines.append(f"  {side:<4} {order.get('qty')} @ {order.get('price')}  {gap}  {order.get('cl_ord_id')}")
    if not ours:
        lines.append("  none")
    if len(orders) > len(ours):
        lines.append(f"other open orders: {len(orders) - len(ours)} (not ours: left alone)")
    lines.append(f"daemon   {daemon}")
    return "\n".join(lines)


def read_state(path: str, now: float) -> str:
    """The running daemon's view from its state file, or why there is none."""
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        age_s = now - float(state["updated_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return "no state file: not running on this machine"
    last = f"{state.get('uptime')}; {state.get('reward')}; {state.get('day')}"
    if not state.get("running"):
        return f"stopped {age_s:.0f} s ago; last: {last}"
    if age_s > 3 * STATUS_EVERY_S:
        return f"no news for {age_s:.0f} s (stopped or stuck?); last: {last}"
    return (f"running (pid {state.get('pid')}, {age_s:.0f} s ago): mode {state.get('mode')}, "
            f"{state.get('uptime')}, requotes {state.get('requotes')}, fills {state.get('fills')}; "
            f"{state.get('reward')}; {state.get('day')}")


def arm_hard_stop() -> None:
    """Last resort of a stop: end the process HARD_STOP_S after the signal even if a request
    hangs past its timeouts (the next start cancels any order of ours left behind)."""
    def hard_exit() -> None:
        # The log line goes out from its own thread: a logging lock held by a thread stuck
        # writing (a full pipe) must not keep the process alive.
        threading.Thread(target=log.critical, daemon=True, args=(
            "stop took longer than %.1f s: exiting now; orders of ours may be left (the next "
            "start cancels them)", HARD_STOP_S)).start()
        time.sleep(HARD_EXIT_LOG_S)
        os._exit(EXIT_ERROR)
    timer = threading.Timer(HARD_STOP_S - HARD_EXIT_LOG_S, hard_exit)
    timer.daemon = True
    timer.start()


def hold_instance_lock(address: str, symbol: str) -> socket.socket:
    """One daemon per account and symbol on this machine, or two bots would fight over the same
    orders. The lock is an abstract UNIX socket name: held while the process lives, released by
    the kernel even after SIGKILL, and not hidden by systemd's PrivateTmp. OSError if taken."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0standx-market-maker:{address.lower()}:{symbol}")
    except OSError:
        lock.close()
        raise
    return lock


def simulate(config: Config, args: argparse.Namespace) -> int:
    """The daemon against a local simulator served on 127.0.0.1 in real time (imported only here:
    live runs never load it). No account, key or .env is needed: a throwaway wallet logs in. The
    simulator trades the configured symbol (a synthetic market at its price level), or replays
    --market-data, which must be recordings of that symbol."""
    from standx_sim import SimServer, Simulator
    from standx_sim.clock import WallClock
    from standx_sim.simulate import STATUS_EVERY_S, load_market, run_report, summary, write_report
    from standx_sim.symbols import SYMBOLS
    try:
        market = load_market(args.market_data)
    except FileNotFoundError as exc:
        print(f"market data not found: {exc.filename}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:
        print(f"cannot load market data: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.symbol not in SYMBOLS:
        print(f"the simulator lists {', '.join(SYMBOLS)}: set MARKET_MAKER_SYMBOL to one of them to simulate "
              f"(got {config.symbol})", file=sys.stderr)
        return EXIT_CONFIG
    sim = Simulator(WallClock(), market, meter_qty=config.qty, symbol=config.symbol,
                    reward_programme=PROGRAMMES[config.reward_programme])
    server = SimServer(sim)
    url = server.start()
    stream_url, api_url = stream_urls(url)
    config = replace(config, auth_base_url=url, perps_base_url=url, ws_stream_url=stream_url, ws_api_url=api_url)
    auth = StandXAuth(config.private_key, auth_base_url=url, perps_base_url=url, clock=RealClock())
    maker = MarketMaker(config, auth, streams=streams_for(config, auth))
    maker.status_every_s = STATUS_EVERY_S  # something to watch
    install_signal_handlers(maker)
    log.info("simulator at %s; %s", url, describe(config))
    started = time.monotonic()
    try:
        code = maker.run(duration_s=args.duration)
        report = run_report(sim, auth.address, maker.requotes, time.monotonic() - started, config.reward_programme)
    finally:
        server.stop()
    write_report(report, args.report_json)
    print(summary(report))
    print(f"report written to {args.report_json}")
    return code


def replay_config(environ: Mapping[str, str], env_file: str | None, requote: str | None, base_url: str,
                  private_key: str, price_feed: str | None = None,
                  overrides: Mapping[str, str] | None = None) -> Config:
    """The settings for a replay in the simulator: the env file fills in, the environment wins,
    then the wallet key and both base URLs are forced to the simulator's (the stream URLs
    derive from them), and `requote` and `price_feed` (when given) override
    MARKET_MAKER_REQUOTE and MARKET_MAKER_PRICE_FEED, and `overrides` any setting by name (a
    sweep's grid). Raises ConfigError as load_config does."""
    env: dict[str, str] = {}
    if env_file is not None:
        if not os.path.isfile(env_file):
            raise ConfigError("--env-file", f"no such file: {env_file}")
        env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    env.update(environ)
    env.update({"STANDX_AUTH_BASE_URL": base_url, "STANDX_PERPS_BASE_URL": base_url,
                "WALLET_PRIVATE_KEY": private_key})
    for name in ("STANDX_WS_STREAM_URL", "STANDX_WS_API_URL"):
        env.pop(name, None)
    if requote is not None:
        env["MARKET_MAKER_REQUOTE"] = requote
    if price_feed is not None:
        env["MARKET_MAKER_PRICE_FEED"] = price_feed
    env.update(overrides or {})
    return load_config(env)


def daemon_on(config: Config, session: Any, clock: Clock, feed: Any = None,
              run_id: str | None = None) -> tuple[MarketMaker, str]:
    """The daemon on a given HTTP session and clock, as the simulator's replay runs it: the daemon
    and its wallet address. With the ws price feed, it listens to `feed` (the simulator's streams
    in virtual time, standx_sim.streams.VirtualFeed). Bind `config` (functools.partial) to hand
    it to standx_sim.backtest."""
    auth = StandXAuth(config.private_key, auth_base_url=config.auth_base_url,
                      perps_base_url=config.perps_base_url, clock=clock, session=session)
    streams = FeedStreams(feed, auth, config.symbol, clock) if feed is not None and config.price_feed == "ws" else None
    return MarketMaker(config, auth, clock=clock, run_id=run_id, streams=streams), auth.address


def run_cli() -> int:
    """main(), for a shell: output piped into a program that stops reading early (`| head`)
    ends the process quietly instead of with a traceback."""
    try:
        return main()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_cli())
