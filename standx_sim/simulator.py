"""The one-stop constructor: an exchange, its market, its faults and its API wired together."""
from __future__ import annotations

import logging
from decimal import Decimal

from .api import Api
from .clock import Clock
from .exchange import Exchange
from .faults import Faults
from .market import Market, SyntheticMarket
from .transport import InProcessAdapter
from .wire import Response

log = logging.getLogger(__name__)


class Simulator:
    """A local StandX. Without a market, a synthetic one (seeded) starts at the clock's time.

    Use ``sim.handle`` as the request handler, ``sim.adapter()`` to mount it on a requests
    Session, or ``server.SimServer(sim)`` to serve it over HTTP.
    """

    def __init__(self, clock: Clock, market: Market | None = None, default_balance: Decimal | None = Decimal("1000"),
                 visibility_delay_s: float = 0.2, meter_qty: Decimal = Decimal("0"), seed: int = 0) -> None:
        self.clock = clock
        self.market = market if market is not None else SyntheticMarket(seed=seed, start_ts=clock.now())
        self.exchange = Exchange(clock, self.market, default_balance=default_balance,
                                 visibility_delay_s=visibility_delay_s, meter_qty=meter_qty)
        self.faults = Faults(clock, seed=seed)
        self.api = Api(self.exchange, self.faults)

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
               body: bytes) -> Response:
        """The StandX request handler: (status, response headers, response body); never raises."""
        return self.api.handle(method, path, query, headers, body)

    def adapter(self, latency_s: float = 0.0) -> InProcessAdapter:
        """A requests adapter calling this simulator in-process; mount it on a Session's base URL."""
        return InProcessAdapter(self.handle, self.clock, latency_s)

    def expire_tokens(self) -> None:
        """Fault: every token issued so far answers 401 from now on."""
        self.api.expire_tokens()

    def set_clock_skew(self, seconds: float) -> None:
        """Fault: the exchange's clock runs `seconds` ahead of the shared clock (negative = behind)."""
        self.exchange.clock_skew_s = seconds
        log.info("exchange clock skew set to %+.3f s", seconds)
