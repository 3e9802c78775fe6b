"""An in-memory stand-in for the standx_api module, for unit tests of MarketMaker decisions.

It keeps orders and a position, records every call in order, and can be told to fail a call.
Orders become visible at once (the simulator tests cover asynchronous visibility).
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from standx_auth import StandXError, UnknownOutcomeError
from tests.exchange_fakes import FakeClock


class FakeAuth:
    """What MarketMaker needs of StandXAuth, without any network."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.address = "0x00000000000000000000000000000000000000aB"
        self.deadline: float | None = None
        self.requests_sent = 0
        self.logins = 0
        self.login_failure: str | None = None
        self.sent_request_id: str | None = None  # FakeApi numbers each new order's request
        self.time_offset_s = 0.0  # the exchange's clock minus ours

    def authenticate(self) -> None:
        self.logins += 1

    def last_request_id(self) -> str | None:
        return self.sent_request_id


class FakeApi:
    def __init__(self, mark: str = "100", balance: str = "1000"):
        self.prices: dict[str, Any] = {"mark_price": mark, "mid_price": mark,
                                       "spread_bid": None, "spread_ask": None}
        self.balance: dict[str, Any] = {"balance": balance, "equity": balance}
        self.position = Decimal(0)
        self.position_updated_at: str | None = None  # the row's updated_at (ISO), when set
        self.leverage = 40
        self.open: list[dict[str, Any]] = []
        self.final: dict[str, str] = {}  # cl_ord_id -> final status, for query_order
        self.filled: dict[str, str] = {}  # cl_ord_id -> fill_qty of a filled order
        self.lost_sides: set[str] = set()  # new orders on these sides never arrive (no answer)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.failures: dict[str, Exception] = {}
        self.next_id = 1
        self.symbol_info = [{"symbol": "BTC-USD", "price_tick_decimals": 3,
                             "qty_tick_decimals": 4, "min_order_qty": "0.0001"}]

    # -- test controls --

    def fail(self, name: str, error: Exception | None = None) -> None:
        self.failures[name] = error or StandXError("exchange unavailable (HTML error page)", 502)

    def heal(self, name: str) -> None:
        self.failures.pop(name, None)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def calls_of(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for n, kwargs in self.calls if n == name]

    def add_open(self, cl_ord_id: str, side: str, price: str, symbol: str = "BTC-USD") -> None:
        self.open.append({"id": self.next_id, "cl_ord_id": cl_ord_id, "side": side, "price": price,
                          "qty": "0.005", "status": "new", "symbol": symbol})
        self.next_id += 1

    def ours(self, side: str | None = None) -> list[dict[str, Any]]:
        return [o for o in self.open if o["cl_ord_id"].startswith("sxmm")
                and (side is None or o["side"] == side)]

    def _record(self, name: str, **kwargs: Any) -> None:
        self.calls.append((name, kwargs))
        if name in self.failures:
            raise self.failures[name]

    # -- the standx_api functions --

    def query_symbol_info(self, auth: Any, symbol: str) -> list[dict[str, Any]]:
        self._record("query_symbol_info", symbol=symbol)
        return self.symbol_info

    def query_symbol_price(self, auth: Any, symbol: str) -> dict[str, Any]:
        self._record("query_symbol_price", symbol=symbol)
        return dict(self.prices)

    def query_balance(self, auth: Any) -> dict[str, Any]:
        self._record("query_balance")
        return dict(self.balance)

    def query_position_config(self, auth: Any, symbol: str) -> dict[str, Any]:
        self._record("query_position_config", symbol=symbol)
        return {"symbol": symbol, "leverage": self.leverage, "margin_mode": "cross"}

    def query_positions(self, auth: Any, symbol: str | None = None) -> list[dict[str, Any]]:
        self._record("query_positions", symbol=symbol)
        if self.position == 0 and self.position_updated_at is None:
            return []
        row = {"symbol": "BTC-USD", "qty": str(self.position)}
        if self.position_updated_at is not None:
            row["updated_at"] = self.position_updated_at
        return [row]

    def query_open_orders(self, auth: Any, symbol: str | None = None, limit: int | None = None):
        self._record("query_open_orders", symbol=symbol)
        return {"page_size": len(self.open), "result": [dict(o) for o in self.open],
                "total": len(self.open)}

    def new_limit_order(self, auth: Any, symbol: str, side: str, qty: Any, price: Any,
                        time_in_force: str, reduce_only: bool = False, cl_ord_id: str | None = None,
                        **_: Any) -> dict[str, Any]:
        self._record("new_limit_order", symbol=symbol, side=side, qty=qty, price=price,
                     time_in_force=time_in_force, reduce_only=reduce_only, cl_ord_id=cl_ord_id)
        if hasattr(auth, "sent_request_id"):
            auth.sent_request_id = f"request-{len(self.calls)}"
        if side in self.lost_sides:
            raise UnknownOutcomeError("ConnectionError: the order request may have been applied")
        self.add_open(cl_ord_id, side, str(price), symbol)
        return {"code": 0, "message": "success"}

    def new_market_order(self, auth: Any, symbol: str, side: str, qty: Any,
                         reduce_only: bool = False, time_in_force: str = "ioc",
                         cl_ord_id: str | None = None, **_: Any) -> dict[str, Any]:
        self._record("new_market_order", symbol=symbol, side=side, qty=qty,
                     reduce_only=reduce_only, time_in_force=time_in_force, cl_ord_id=cl_ord_id)
        signed = Decimal(qty) if side == "buy" else -Decimal(qty)
        if reduce_only and (self.position == 0 or (self.position > 0) == (signed > 0)):
            return {"code": 0, "message": "success"}
        self.position += signed
        return {"code": 0, "message": "success"}

    def query_order(self, auth: Any, order_id: int | None = None,
                    cl_ord_id: str | None = None) -> dict[str, Any]:
        self._record("query_order", cl_ord_id=cl_ord_id)
        for order in self.open:
            if order["cl_ord_id"] == cl_ord_id:
                return dict(order)
        if cl_ord_id in self.final:
            return {"cl_ord_id": cl_ord_id, "status": self.final[cl_ord_id],
                    "fill_qty": self.filled.get(cl_ord_id, "0")}
        raise StandXError("order not found", 404)

    def cancel_order(self, auth: Any, order_id: int | None = None,
                     cl_ord_id: str | None = None) -> dict[str, Any]:
        self._record("cancel_order", order_id=order_id, cl_ord_id=cl_ord_id)
        self._cancel(lambda o: o["cl_ord_id"] == cl_ord_id or o["id"] == order_id)
        return {"code": 0, "message": "success"}

    def cancel_orders(self, auth: Any, order_ids: list[int] | None = None,
                      cl_ord_ids: list[str] | None = None) -> dict[str, Any]:
        self._record("cancel_orders", order_ids=order_ids, cl_ord_ids=cl_ord_ids)
        gone = set(cl_ord_ids or [])
        self._cancel(lambda o: o["cl_ord_id"] in gone)
        return {"code": 0, "message": "success"}

    def _cancel(self, chosen) -> None:
        """Cancelled orders leave the book; query_order then answers their final status."""
        for order in [o for o in self.open if chosen(o)]:
            self.open.remove(order)
            self.final[order["cl_ord_id"]] = "canceled"

    def fill(self, side: str) -> None:
        """Our resting order on `side` is filled: it leaves the book, the position moves."""
        order = self.ours(side)[0]
        self.open.remove(order)
        self.final[order["cl_ord_id"]], self.filled[order["cl_ord_id"]] = "filled", order["qty"]
        self.position += Decimal(order["qty"]) if side == "buy" else -Decimal(order["qty"])
