"""The one-stop constructor: an exchange, its market, its faults, its rate limits and its API wired
together."""
from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from rewards import DEFAULT_PROGRAMME, PROGRAMMES, Programme

from .api import Api
from .clock import Clock
from .exchange import POSITION_HISTORY_S, Exchange
from .faults import Faults
from .market import Market, SyntheticMarket
from .ratelimit import DEFAULT_RATE_LIMITS, LOCAL_CLIENT, RateLimitParams, RateLimits
from .streams import StreamHub
from .symbols import SymbolSpec, listed, with_rules
from .transport import InProcessAdapter
from .wire import Response, compress

log = logging.getLogger(__name__)


# BTC-USD's synthetic book is at most one dollar wide at 95000 (SyntheticMarket's defaults); other
# symbols keep that width as a share of their price, so a coarse tick does not make a wide book.
WIDEST_SPREAD_RATIO = Decimal(1) / SymbolSpec().start_price


def synthetic_market(spec: SymbolSpec, seed: int, start_ts: float, **walk: Any) -> SyntheticMarket:
    """A symbol's default market: a seeded walk from its price level on its tick and lot, the book
    one tick to WIDEST_SPREAD_RATIO of the price wide, never less than one tick (for BTC-USD
    exactly SyntheticMarket's defaults). `walk`: more SyntheticMarket settings (volatility...)."""
    widest = max(spec.tick, (spec.start_price * WIDEST_SPREAD_RATIO).quantize(spec.tick))
    return SyntheticMarket(seed=seed, start_ts=start_ts, start_price=spec.start_price, tick=spec.tick, lot=spec.lot,
                           spread_usd=(spec.tick, widest), **walk)


class Simulator:
    """A local StandX trading one symbol (symbols.SYMBOLS; default BTC-USD). Without a market, a
    synthetic one (seeded) of that symbol starts at the clock's time; a market given is taken to
    be that symbol's.

    Use ``sim.handle`` as the request handler, ``sim.adapter()`` to mount it on a requests
    Session, or ``server.SimServer(sim)`` to serve it over HTTP (with StandX's WebSocket streams,
    ``sim.streams``; streams.VirtualFeed carries them in virtual time). With ``compress`` on, answers
    are compressed as the CDN in front of StandX does, for clients that accept it. StandX's rate
    limits apply per account and per client IP (ratelimit.py) unless ``rate_limits`` is None.
    Orders and cancels take StandX-like random delays (delays.py, seeded by ``seed``) unless
    ``visibility_delay_s`` fixes one; resting orders queue behind the recorded volume at their
    price unless ``queue`` is False (the fill model in exchange.py). The mark price follows
    StandX's formula and lags the book (mark.py) unless ``mark`` is "mid". Every account's quotes
    are scored under ``reward_programme`` (rewards.py; None: not scored) at every change.
    """

    def __init__(self, clock: Clock, market: Market | None = None, default_balance: Decimal | None = Decimal("1000"),
                 visibility_delay_s: float | None = None, meter_qty: Decimal = Decimal("0"), seed: int = 0,
                 compress: bool = True, queue: bool = True, rate_limits: RateLimitParams | None = DEFAULT_RATE_LIMITS,
                 symbol: str = "BTC-USD", mark: str = "standx",
                 reward_programme: Programme | None = PROGRAMMES[DEFAULT_PROGRAMME]) -> None:
        spec = listed(symbol)
        self.clock = clock
        self.market = market if market is not None else synthetic_market(spec, seed, clock.now())
        self.exchange = Exchange(clock, self.market, default_balance=default_balance,
                                 visibility_delay_s=visibility_delay_s, meter_qty=meter_qty, spec=spec,
                                 queue=queue, seed=seed, mark=mark, reward_programme=reward_programme)
        self.faults = Faults(clock, seed=seed)
        self.api = Api(self.exchange, self.faults, clock, RateLimits(rate_limits) if rate_limits is not None else None)
        self.streams = StreamHub(self.exchange, self.api, clock)
        self.api.order_outcomes = self.streams.route_outcomes
        self.compress = compress

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
               body: bytes, client: str = LOCAL_CLIENT) -> Response:
        """The StandX request handler for a request from the IP address `client`: (status,
        response headers, response body); never raises."""
        response = self.api.handle(method, path, query, headers, body, client)
        if not self.compress:
            return response
        accept = next((value for name, value in headers.items() if name.lower() == "accept-encoding"), "")
        return compress(response, accept)

    def adapter(self, latency_s: float = 0.0, client_address: str = LOCAL_CLIENT) -> InProcessAdapter:
        """A requests adapter calling this simulator in-process as a client at `client_address`;
        mount it on a Session's base URL."""
        return InProcessAdapter(self.handle, self.clock, latency_s, client_address)

    def rate_limited(self, address: str | None = None) -> int:
        """How many requests the rate limits refused: of that account, or all (None)."""
        if address is None:
            return sum(self.api.rate_limited_by_ip.values())
        return self.api.rate_limited_by_address[address.lower()]

    def set_compress(self, on: bool) -> None:
        """Compress answers (for clients that accept it) or send them plain."""
        self.compress = on
        log.info("answer compression %s", "on" if on else "off")

    def expire_tokens(self) -> None:
        """Fault: every token issued so far answers 401 from now on."""
        self.api.expire_tokens()

    def set_max_token_lifetime(self, seconds: float | None) -> None:
        """Fault: logins from now on get tokens that expire after at most `seconds` (None: as asked)."""
        if seconds is not None and seconds <= 0:
            raise ValueError("the token lifetime must be > 0 seconds")
        self.api.max_token_lifetime_s = seconds
        log.info("token lifetime capped at %s s", seconds)

    def set_clock_skew(self, seconds: float) -> None:
        """Fault: the exchange's clock runs `seconds` ahead of the shared clock (negative = behind)."""
        self.exchange.clock_skew_s = seconds
        log.info("exchange clock skew set to %+.3f s", seconds)

    def set_visibility_delay(self, seconds: float) -> None:
        """Fault: orders accepted from now on become visible (activate) `seconds` later; cancels
        keep their delays (see the fill model in exchange.py)."""
        if seconds < 0:
            raise ValueError("the visibility delay must be >= 0 seconds")
        self.exchange.activation_delay_s = seconds
        log.info("order visibility delay set to %.3f s", seconds)

    def set_position_lag(self, seconds: float) -> None:
        """Fault: query_positions answers the position as it was `seconds` ago (orders, fills and
        balances stay current)."""
        if not 0 <= seconds <= POSITION_HISTORY_S:
            raise ValueError(f"the position lag must be between 0 and {POSITION_HISTORY_S} seconds")
        self.exchange.position_lag_s = seconds
        log.info("position answers lag fills by %.3f s", seconds)

    def set_symbol_rules(self, **rules: object) -> SymbolSpec:
        """The traded symbol's rules change from now on, as StandX's can during a run (e.g.
        price_tick_decimals=0, min_order_qty=Decimal("0.001")); see symbols.with_rules. The new spec."""
        spec = with_rules(self.exchange.spec, rules)
        self.exchange.set_spec(spec)
        log.info("symbol rules of %s changed: %s", spec.symbol, rules)
        return spec
