"""StandX Perps REST calls, one small function each.

Every function takes the logged-in `StandXAuth` first and returns the decoded JSON answer.
Prices and quantities go on the wire as decimal strings (callers pass `Decimal` or `str`).
Errors are the typed `StandXError` family from standx_auth; nothing here retries or decides.
Reference: https://docs.standx.com/standx-api/perps-http
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from standx_auth import StandXAuth, StandXError

BALANCE_NOT_FOUND = "user balance not found"
ZERO_BALANCE = {"balance": "0", "equity": "0", "cross_available": "0", "upnl": "0"}


def _decimal_str(value: Decimal | str) -> str:
    """Plain decimal notation, never exponent form (the exchange refuses `1E-5`)."""
    return format(Decimal(value), "f")


def _params(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def query_symbol_info(auth: StandXAuth, symbol: str) -> list[dict[str, Any]]:
    """Trading rules of a symbol (tick and lot decimals, min qty, fees).

    GET /api/query_symbol_info (public). Answers an array; take the row for `symbol`.
    """
    return auth.make_api_call("/api/query_symbol_info", params={"symbol": symbol})


def query_symbol_price(auth: StandXAuth, symbol: str) -> dict[str, Any]:
    """Mark, index, last and mid price, best bid/ask (strings; all but mark may be null).

    GET /api/query_symbol_price (public).
    """
    return auth.make_api_call("/api/query_symbol_price", params={"symbol": symbol})


def query_balance(auth: StandXAuth) -> dict[str, Any]:
    """Account balance snapshot (decimal strings: balance, equity, cross_available, upnl...).

    GET /api/query_balance. An unfunded account answers 404 "user balance not found",
    which is a real zero balance, not a failed read.
    """
    try:
        return auth.make_api_call("/api/query_balance")
    except StandXError as exc:
        if exc.status == 404 and BALANCE_NOT_FOUND in exc.message.lower():
            return dict(ZERO_BALANCE)
        raise


def query_positions(auth: StandXAuth, symbol: str | None = None) -> list[dict[str, Any]]:
    """Open positions (array; `[]` when never traded; qty signed, "0" means flat).

    GET /api/query_positions.
    """
    return auth.make_api_call("/api/query_positions", params=_params(symbol=symbol))


def query_position_config(auth: StandXAuth, symbol: str) -> dict[str, Any]:
    """Leverage and margin mode of the symbol's position: {symbol, leverage, margin_mode}.

    GET /api/query_position_config.
    """
    return auth.make_api_call("/api/query_position_config", params={"symbol": symbol})


def new_limit_order(auth: StandXAuth, symbol: str, side: str, qty: Decimal | str,
                    price: Decimal | str, time_in_force: str, reduce_only: bool = False,
                    cl_ord_id: str | None = None, margin_mode: str | None = None,
                    leverage: int | None = None, session_id: str | None = None) -> dict[str, Any]:
    """Submit a limit order; `time_in_force` is gtc, ioc or alo (post-only).

    POST /api/new_order (signed). Accepted is not placed: the order shows in open orders a
    little later, or never if matching rejects it. Answers {code, message, request_id}. With
    `session_id` (header x-session-id), the outcome is also pushed to that order response
    stream session, under the request's x-request-id.
    """
    return _new_order(auth, _params(
        symbol=symbol, side=side, order_type="limit", qty=_decimal_str(qty),
        price=_decimal_str(price), time_in_force=time_in_force, reduce_only=reduce_only,
        cl_ord_id=cl_ord_id, margin_mode=margin_mode, leverage=leverage), session_id)


def new_market_order(auth: StandXAuth, symbol: str, side: str, qty: Decimal | str,
                     reduce_only: bool = False, time_in_force: str = "ioc",
                     cl_ord_id: str | None = None, margin_mode: str | None = None,
                     leverage: int | None = None) -> dict[str, Any]:
    """Submit a market order (IOC); with reduce_only it can only shrink the position.

    POST /api/new_order (signed). Answers {code, message, request_id}.
    """
    return _new_order(auth, _params(
        symbol=symbol, side=side, order_type="market", qty=_decimal_str(qty),
        time_in_force=time_in_force, reduce_only=reduce_only, cl_ord_id=cl_ord_id,
        margin_mode=margin_mode, leverage=leverage))


def _new_order(auth: StandXAuth, body: dict[str, Any], session_id: str | None = None) -> dict[str, Any]:
    headers = {"x-session-id": session_id} if session_id else None
    return auth.make_api_call("/api/new_order", method="POST", data=body, headers_extra=headers)


def cancel_order(auth: StandXAuth, order_id: int | None = None,
                 cl_ord_id: str | None = None) -> dict[str, Any]:
    """Ask to cancel one order, by exchange id or by our cl_ord_id (asynchronous).

    POST /api/cancel_order (signed). Answers {code, message, request_id}.
    """
    if (order_id is None) == (cl_ord_id is None):
        raise ValueError("cancel_order needs exactly one of order_id and cl_ord_id")
    return auth.make_api_call("/api/cancel_order", method="POST",
                              data=_params(order_id=order_id, cl_ord_id=cl_ord_id))


def cancel_orders(auth: StandXAuth, order_ids: list[int] | None = None,
                  cl_ord_ids: list[str] | None = None) -> Any:
    """Ask to cancel several orders, by exchange ids or by our cl_ord_ids (asynchronous).

    POST /api/cancel_orders (signed). Answers the envelope (or `[]` on older versions).
    """
    if (order_ids is None) == (cl_ord_ids is None):
        raise ValueError("cancel_orders needs exactly one of order_ids and cl_ord_ids")
    return auth.make_api_call("/api/cancel_orders", method="POST",
                              data=_params(order_id_list=order_ids, cl_ord_id_list=cl_ord_ids))


def query_order(auth: StandXAuth, order_id: int | None = None,
                cl_ord_id: str | None = None) -> dict[str, Any]:
    """One order by exchange id or cl_ord_id; HTTP 404 until the order is visible.

    GET /api/query_order.
    """
    if (order_id is None) == (cl_ord_id is None):
        raise ValueError("query_order needs exactly one of order_id and cl_ord_id")
    return auth.make_api_call("/api/query_order",
                              params=_params(order_id=order_id, cl_ord_id=cl_ord_id))


def query_open_orders(auth: StandXAuth, symbol: str | None = None,
                      limit: int | None = None) -> dict[str, Any]:
    """Resting orders: {page_size, result: [order...], total}.

    GET /api/query_open_orders (limit: default 500, at most 1200).
    """
    return auth.make_api_call("/api/query_open_orders", params=_params(symbol=symbol, limit=limit))


def query_orders(auth: StandXAuth, symbol: str | None = None, status: str | None = None,
                 limit: int | None = None) -> dict[str, Any]:
    """Order history: {page_size, result: [order...], total}.

    GET /api/query_orders (limit: default 100, at most 500).
    """
    return auth.make_api_call("/api/query_orders",
                              params=_params(symbol=symbol, status=status, limit=limit))
