"""The one-stop constructor: an exchange, its market, its faults and its API wired together."""
from __future__ import annotations

import logging
from decimal import Decimal

from .api import Api
from .clock import Clock
from .exchange import POSITION_HISTORY_S, Exchange
from .faults import Faults
from .market import Market, SyntheticMarket
from .transport import InProcessAdapter
from .wire import Response, compress

log = logging.getLogger(__name__)


class Simulator:
    """A local StandX. Without a market, a synthetic one (seeded) starts at the clock's time.

    Use ``sim.handle`` as the request handler, ``sim.adapter()`` to mount it on a requests
    Session, or ``server.SimServer(sim)`` to serve it over HTTP. With ``compress`` on, answers
    are compressed as the CDN in front of StandX does, for clients that accept it.
    """

    def __init__(self, clock: Clock, market: Market | None = None, default_balance: Decimal | None = Decimal("1000"),
                 visibility_delay_s: float = 0.2, meter_qty: Decimal = Decimal("0"), seed: int = 0,
                 compress: bool = True) -> None:
        self.clock = clock
        self.market = market if market is not None else SyntheticMarket(seed=seed, start_ts=clock.now())
        self.exchange = Exchange(clock, self.market, default_balance=default_balance,
                                 visibility_delay_s=visibility_delay_s, meter_qty=meter_qty)
        self.faults = Faults(clock, seed=seed)
        self.api = Api(self.exchange, self.faults)
        self.compress = compress

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
               body: bytes) -> Response:
        """The StandX request handler: (status, response headers, response body); never raises."""
        response = self.api.handle(method, path, query, headers, body)
        if not self.compress:
            return response
        accept = next((value for name, value in headers.items() if name.lower() == "accept-encoding"), "")
        return compress(response, accept)

    def adapter(self, latency_s: float = 0.0) -> InProcessAdapter:
        """A requests adapter calling this simulator in-process; mount it on a Session's base URL."""
        return InProcessAdapter(self.handle, self.clock, latency_s)

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
        keep the constructor's visibility_delay_s (see the fill model in exchange.py)."""
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
