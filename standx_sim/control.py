"""Test-control endpoints under /_sim/, served by the HTTP server only (unauthenticated).

Listed in the package docstring. They read and steer the simulator from outside the process:
account state and metrics, balances, prices, public trades, fills of our resting orders, faults,
compression, token expiry and lifetime, clock skew, order visibility delay, position lag, the
traded symbol's rules, and the WebSocket streams' sockets, faults and limits (streams.py).
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Callable

from .api import iso_time, json_object, money, symbol_row
from .exchange import RequestError
from .streams import LIMIT_FIELDS
from .symbols import RULE_KINDS
from .wire import Response, error_response, json_response

if TYPE_CHECKING:
    from .simulator import Simulator

log = logging.getLogger(__name__)

FAULT_FIELDS = {"kind", "path", "probability", "count", "after_s", "for_s", "status", "retry_after_s", "stall_s",
                "body"}


def jsonable(value):
    """Metrics and state with Decimals as plain strings, ready for json.dumps."""
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def _decimal(value, name: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite():
        raise RequestError(400, f"{name} must be a finite number")
    return number


def _address(query: dict[str, str]) -> str:
    address = query.get("address")
    if not address:
        raise RequestError(400, "missing query parameter: address")
    return address


class Control:
    """Dispatches /_sim/ requests to a Simulator."""

    def __init__(self, sim: "Simulator") -> None:
        self._sim = sim
        self._routes: dict[tuple[str, str], Callable[[dict, bytes], Response]] = {
            ("GET", "/_sim/account"): self._account,
            ("GET", "/_sim/metrics"): self._metrics,
            ("GET", "/_sim/market"): self._market,
            ("POST", "/_sim/balance"): self._balance,
            ("POST", "/_sim/price"): self._price,
            ("POST", "/_sim/trade"): self._trade,
            ("POST", "/_sim/faults"): self._add_fault,
            ("POST", "/_sim/faults/clear"): self._clear_faults,
            ("POST", "/_sim/expire_tokens"): self._expire_tokens,
            ("POST", "/_sim/clock_skew"): self._clock_skew,
            ("POST", "/_sim/fill"): self._fill,
            ("POST", "/_sim/compress"): self._compress,
            ("POST", "/_sim/token_lifetime"): self._token_lifetime,
            ("POST", "/_sim/visibility_delay"): self._visibility_delay,
            ("POST", "/_sim/position_lag"): self._position_lag,
            ("POST", "/_sim/symbol_rules"): self._symbol_rules,
            ("GET", "/_sim/streams"): self._streams,
            ("POST", "/_sim/streams/drop"): self._drop_streams,
            ("POST", "/_sim/streams/close"): self._close_streams,
            ("POST", "/_sim/streams/silence"): self._silence_streams,
            ("POST", "/_sim/streams/pause_data"): self._pause_stream_data,
            ("POST", "/_sim/streams/garbage"): self._garbage_frame,
            ("POST", "/_sim/streams/limits"): self._stream_limits,
        }

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes) -> Response:
        route = self._routes.get((method.upper(), path))
        if route is None:
            return error_response(404, "unknown control endpoint")
        try:
            return route(query, body or b"{}")
        except RequestError as e:
            return error_response(e.status, e.message)
        except ValueError as e:  # a control value the engine refused (bad fault kind, side, ...)
            return error_response(400, str(e))
        except Exception:  # a bug here must not take the server thread down with a bare traceback
            log.exception("internal error serving control %s %s", method, path)
            return error_response(500, "internal server error")

    def _account(self, query: dict, body: bytes) -> Response:
        ex, address = self._sim.exchange, _address(query)
        metrics = ex.metrics(address)  # 404 for an address the exchange never saw
        pos = ex.position(address)
        position = None if pos is None else {"qty": pos.qty, "entry_price": pos.entry_price,
                                             "realized_pnl": pos.realized_pnl, "upnl": ex.upnl(address)}
        return json_response(200, jsonable({
            "address": address.lower(), "balance": metrics["balance"], "position": position,
            "open_orders": [self._sim.api.order_json(o) for o in ex.open_orders(address)], "metrics": metrics,
        }))

    def _metrics(self, query: dict, body: bytes) -> Response:
        return json_response(200, jsonable(self._sim.exchange.metrics(_address(query))))

    def _market(self, query: dict, body: bytes) -> Response:
        ex = self._sim.exchange
        book, last = ex.book(), ex.last_price()
        return json_response(200, jsonable({"time": iso_time(ex.exchange_time()), "bid": book.bid, "ask": book.ask,
                                            "mark": ex.mark_price(), "last": last}))

    def _balance(self, query: dict, body: bytes) -> Response:
        obj = json_object(body, {"address", "balance"}, {"address", "balance"})
        amount = None if obj["balance"] is None else _decimal(obj["balance"], "balance")
        self._sim.exchange.set_balance(obj["address"], amount)
        return json_response(200, {"ok": True})

    def _price(self, query: dict, body: bytes) -> Response:
        obj = json_object(body, {"shift_bps", "mid"}, set())
        if len(obj) != 1:
            raise RequestError(400, "give exactly one of shift_bps and mid")
        if "shift_bps" in obj:
            self._sim.exchange.shift_bps(float(_decimal(obj["shift_bps"], "shift_bps")))
        else:
            self._sim.exchange.set_mid(_decimal(obj["mid"], "mid"))
        return self._market(query, body)

    def _trade(self, query: dict, body: bytes) -> Response:
        obj = json_object(body, {"price", "qty", "taker_side"}, {"price", "qty", "taker_side"})
        self._sim.exchange.add_trade(_decimal(obj["price"], "price"), _decimal(obj["qty"], "qty"), obj["taker_side"])
        return json_response(200, {"ok": True})

    def _add_fault(self, query: dict, body: bytes) -> Response:
        obj = json_object(body, FAULT_FIELDS, {"kind"})
        try:
            rule_id = self._sim.faults.add(obj.pop("kind"), **obj)
        except TypeError as e:  # a field of the wrong type
            raise RequestError(400, str(e)) from None
        return json_response(200, {"id": rule_id})

    def _clear_faults(self, query: dict, body: bytes) -> Response:
        self._sim.faults.clear()
        return json_response(200, {"ok": True})

    def _expire_tokens(self, query: dict, body: bytes) -> Response:
        self._sim.expire_tokens()
        return json_response(200, {"ok": True})

    def _clock_skew(self, query: dict, body: bytes) -> Response:
        return self._seconds(body, self._sim.set_clock_skew)

    def _fill(self, query: dict, body: bytes) -> Response:
        obj = json_object(body, {"address", "cl_ord_id", "qty"}, {"address", "cl_ord_id", "qty"})
        self._sim.exchange.fill_resting(obj["address"], obj["cl_ord_id"], _decimal(obj["qty"], "qty"))
        return json_response(200, {"ok": True})

    def _compress(self, query: dict, body: bytes) -> Response:
        obj = json_object(body, {"on"}, {"on"})
        if not isinstance(obj["on"], bool):
            raise RequestError(400, "on must be true or false")
        self._sim.set_compress(obj["on"])
        return json_response(200, {"ok": True})

    def _token_lifetime(self, query: dict, body: bytes) -> Response:
        obj = json_object(body, {"seconds"}, {"seconds"})
        seconds = None if obj["seconds"] is None else float(_decimal(obj["seconds"], "seconds"))
        self._sim.set_max_token_lifetime(seconds)
        return json_response(200, {"ok": True})

    def _visibility_delay(self, query: dict, body: bytes) -> Response:
        return self._seconds(body, self._sim.set_visibility_delay)

    def _position_lag(self, query: dict, body: bytes) -> Response:
        return self._seconds(body, self._sim.set_position_lag)

    def _symbol_rules(self, query: dict, body: bytes) -> Response:
        obj = json_object(body, set(RULE_KINDS), set())
        return json_response(200, symbol_row(self._sim.set_symbol_rules(**obj)))

    def _streams(self, query: dict, body: bytes) -> Response:
        hub = self._sim.streams
        sockets = [{"path": s.path, "client": s.client, "address": s.address} for s in hub.sessions()]
        return json_response(200, {"sockets": sockets, "limits": asdict(hub.limits)})

    def _drop_streams(self, query: dict, body: bytes) -> Response:
        json_object(body, set(), set())
        return json_response(200, {"sockets": self._sim.streams.drop_all()})

    def _close_streams(self, query: dict, body: bytes) -> Response:
        json_object(body, set(), set())
        return json_response(200, {"sockets": self._sim.streams.close_all()})

    def _silence_streams(self, query: dict, body: bytes) -> Response:
        return self._seconds(body, self._sim.streams.silence)

    def _pause_stream_data(self, query: dict, body: bytes) -> Response:
        return self._seconds(body, self._sim.streams.pause_data)

    def _garbage_frame(self, query: dict, body: bytes) -> Response:
        obj = json_object(body, {"text"}, {"text"})
        if not isinstance(obj["text"], str):
            raise RequestError(400, "text must be a string")
        return json_response(200, {"sockets": self._sim.streams.send_garbage(obj["text"])})

    def _stream_limits(self, query: dict, body: bytes) -> Response:
        obj = json_object(body, set(LIMIT_FIELDS), set())
        return json_response(200, asdict(self._sim.streams.set_limits(**obj)))

    @staticmethod
    def _seconds(body: bytes, setter: Callable[[float], None]) -> Response:
        """A control whose body is {"seconds": <number>}."""
        obj = json_object(body, {"seconds"}, {"seconds"})
        setter(float(_decimal(obj["seconds"], "seconds")))
        return json_response(200, {"ok": True})
