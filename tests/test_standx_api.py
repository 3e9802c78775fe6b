"""Unit tests for standx_api: method, path, query and exact body of every call.

HTTP is mocked with `responses`; the client logs in against FakeLogin.
"""
from __future__ import annotations

import inspect
import json
import re
from decimal import Decimal

import pytest
import responses

import standx_api as api
from standx_auth import StandXError
from tests.exchange_fakes import PERPS, perps_calls, query_of, request_key, verify_signed

PUBLIC = {"query_symbol_info", "query_symbol_price"}
DOC_CALL = re.compile(r"\b(GET|POST) (/api/\w+)")


def documented_call(func) -> tuple[str, str]:
    match = DOC_CALL.search(func.__doc__ or "")
    assert match, f"{func.__name__} docstring names no 'GET /api/...' or 'POST /api/...'"
    return match.group(1), match.group(2)


# ---- GETs: path, query, auth, answer ------------------------------------------------------

GET_CASES = [
    (api.query_symbol_info, {"symbol": "BTC-USD"}, "/api/query_symbol_info",
     {"symbol": ["BTC-USD"]}),
    (api.query_symbol_price, {"symbol": "ETH-USD"}, "/api/query_symbol_price",
     {"symbol": ["ETH-USD"]}),
    (api.query_balance, {}, "/api/query_balance", {}),
    (api.query_positions, {}, "/api/query_positions", {}),
    (api.query_positions, {"symbol": "BTC-USD"}, "/api/query_positions",
     {"symbol": ["BTC-USD"]}),
    (api.query_position_config, {"symbol": "BTC-USD"}, "/api/query_position_config",
     {"symbol": ["BTC-USD"]}),
    (api.query_order, {"order_id": 42}, "/api/query_order", {"order_id": ["42"]}),
    (api.query_order, {"cl_ord_id": "mm-abc"}, "/api/query_order", {"cl_ord_id": ["mm-abc"]}),
    (api.query_open_orders, {}, "/api/query_open_orders", {}),
    (api.query_open_orders, {"symbol": "BTC-USD", "limit": 1200}, "/api/query_open_orders",
     {"symbol": ["BTC-USD"], "limit": ["1200"]}),
    (api.query_orders, {}, "/api/query_orders", {}),
    (api.query_orders, {"symbol": "BTC-USD", "status": "filled", "limit": 500},
     "/api/query_orders", {"symbol": ["BTC-USD"], "status": ["filled"], "limit": ["500"]}),
]


@pytest.mark.parametrize("func, kwargs, path, query", GET_CASES,
                         ids=[f"{c[0].__name__}-{'-'.join(c[1]) or 'bare'}" for c in GET_CASES])
def test_get_function_sends_path_query_and_returns_answer(auth, login, rsps, func, kwargs, path,
                                                         query):
    answer = {"page_size": 1, "result": [{"id": 1}], "total": 1}
    rsps.add(responses.GET, f"{PERPS}{path}", json=answer)
    assert func(auth, **kwargs) == answer
    (call,) = perps_calls(rsps)
    assert call.request.method == "GET"
    assert call.request.url.split("?")[0] == f"{PERPS}{path}"
    assert query_of(call.request) == query
    assert call.request.body is None
    assert ("Authorization" in call.request.headers) is (func.__name__ not in PUBLIC)
    assert documented_call(func) == ("GET", path)


# ---- POSTs: exact signed body -------------------------------------------------------------

POST_CASES = [
    ("limit-alo", api.new_limit_order,
     dict(symbol="BTC-USD", side="buy", qty=Decimal("0.00001"), price=Decimal("65000.1"),
          time_in_force="alo", cl_ord_id="mm-1"),
     "/api/new_order",
     {"symbol": "BTC-USD", "side": "buy", "order_type": "limit", "qty": "0.00001",
      "price": "65000.1", "time_in_force": "alo", "reduce_only": False, "cl_ord_id": "mm-1"}),
    ("limit-full", api.new_limit_order,
     dict(symbol="BTC-USD", side="sell", qty="0.0010", price=Decimal("1E+2"),
          time_in_force="gtc", reduce_only=True, cl_ord_id="mm-2", margin_mode="cross",
          leverage=40),
     "/api/new_order",
     {"symbol": "BTC-USD", "side": "sell", "order_type": "limit", "qty": "0.0010",
      "price": "100", "time_in_force": "gtc", "reduce_only": True, "cl_ord_id": "mm-2",
      "margin_mode": "cross", "leverage": 40}),
    ("market-reduce", api.new_market_order,
     dict(symbol="BTC-USD", side="sell", qty=Decimal("1E-5"), reduce_only=True,
          cl_ord_id="mm-3"),
     "/api/new_order",
     {"symbol": "BTC-USD", "side": "sell", "order_type": "market", "qty": "0.00001",
      "time_in_force": "ioc", "reduce_only": True, "cl_ord_id": "mm-3"}),
    ("market-bare", api.new_market_order,
     dict(symbol="ETH-USD", side="buy", qty=Decimal("0.5")),
     "/api/new_order",
     {"symbol": "ETH-USD", "side": "buy", "order_type": "market", "qty": "0.5",
      "time_in_force": "ioc", "reduce_only": False}),
    ("cancel-by-id", api.cancel_order, dict(order_id=42), "/api/cancel_order",
     {"order_id": 42}),
    ("cancel-by-cl-id", api.cancel_order, dict(cl_ord_id="mm-1"), "/api/cancel_order",
     {"cl_ord_id": "mm-1"}),
    ("cancel-many-ids", api.cancel_orders, dict(order_ids=[1, 2]), "/api/cancel_orders",
     {"order_id_list": [1, 2]}),
    ("cancel-many-cl-ids", api.cancel_orders, dict(cl_ord_ids=["mm-1", "mm-2"]),
     "/api/cancel_orders", {"cl_ord_id_list": ["mm-1", "mm-2"]}),
]


@pytest.mark.parametrize("func, kwargs, path, body", [c[1:] for c in POST_CASES],
                         ids=[c[0] for c in POST_CASES])
def test_post_function_sends_exact_signed_body(auth, login, rsps, func, kwargs, path, body):
    answer = {"code": 0, "message": "success", "request_id": "r-1"}
    rsps.add(responses.POST, f"{PERPS}{path}", json=answer)
    assert func(auth, **kwargs) == answer
    (call,) = perps_calls(rsps)
    assert call.request.method == "POST"
    assert call.request.url == f"{PERPS}{path}"
    sent = json.loads(call.request.body)
    assert sent == body
    assert [type(v) for v in sent.values()] == [type(v) for v in body.values()]
    verify_signed(call.request, request_key(login))
    assert documented_call(func) == ("POST", path)


def test_new_order_with_session_id_sends_x_session_id_header(auth, login, rsps):
    rsps.add(responses.POST, f"{PERPS}/api/new_order", json={"code": 0})
    rsps.add(responses.POST, f"{PERPS}/api/new_order", json={"code": 0})
    api.new_limit_order(auth, "BTC-USD", "buy", "0.01", "90000", "alo", cl_ord_id="a", session_id="s-1")
    api.new_limit_order(auth, "BTC-USD", "buy", "0.01", "90000", "alo", cl_ord_id="b")
    first, second = perps_calls(rsps)
    assert first.request.headers["x-session-id"] == "s-1"
    assert "x-session-id" not in second.request.headers
    verify_signed(first.request, request_key(login))


@pytest.mark.parametrize("value, wire", [
    (Decimal("0.00001"), "0.00001"), (Decimal("1E-8"), "0.00000001"), ("1e-5", "0.00001"),
    (Decimal("1E+3"), "1000"), (Decimal("65000.50"), "65000.50"), ("0.001", "0.001"),
])
def test_decimals_go_on_the_wire_as_plain_strings(auth, login, rsps, value, wire):
    rsps.add(responses.POST, f"{PERPS}/api/new_order", json={"code": 0})
    api.new_limit_order(auth, "BTC-USD", "buy", value, value, "alo")
    raw = perps_calls(rsps)[0].request.body.decode()
    sent = json.loads(raw)
    assert (sent["qty"], sent["price"]) == (wire, wire)
    assert "E" not in raw.replace("BTC", "") and "e-" not in raw


# ---- query_balance ------------------------------------------------------------------------

def test_query_balance_404_user_balance_not_found_is_zero_snapshot(auth, login, rsps):
    rsps.add(responses.GET, f"{PERPS}/api/query_balance",
             json={"code": 404, "message": "user balance not found"}, status=404)
    snapshot = api.query_balance(auth)
    assert {"balance", "equity", "cross_available"} <= set(snapshot)
    assert all(Decimal(v) == 0 for v in snapshot.values())


@pytest.mark.parametrize("status, message", [(404, "not found"), (500, "internal error"),
                                             (500, "user balance not found")])
def test_query_balance_other_failures_raise(auth, login, rsps, status, message):
    rsps.add(responses.GET, f"{PERPS}/api/query_balance",
             json={"code": status, "message": message}, status=status)
    with pytest.raises(StandXError) as info:
        api.query_balance(auth)
    assert info.value.status == status


# ---- argument checks ----------------------------------------------------------------------

@pytest.mark.parametrize("func, kwargs", [
    (api.cancel_order, {}), (api.cancel_order, {"order_id": 1, "cl_ord_id": "mm-1"}),
    (api.cancel_orders, {}), (api.cancel_orders, {"order_ids": [1], "cl_ord_ids": ["mm-1"]}),
    (api.query_order, {}), (api.query_order, {"order_id": 1, "cl_ord_id": "mm-1"}),
], ids=["cancel-neither", "cancel-both", "cancel-many-neither", "cancel-many-both",
        "query-neither", "query-both"])
def test_needs_exactly_one_kind_of_order_id(auth, login, rsps, func, kwargs):
    with pytest.raises(ValueError):
        func(auth, **kwargs)
    assert len(rsps.calls) == 0


# ---- docstrings ---------------------------------------------------------------------------

PUBLIC_FUNCTIONS = [f for name, f in inspect.getmembers(api, inspect.isfunction)
                    if f.__module__ == api.__name__ and not name.startswith("_")]


def test_all_twelve_calls_are_public_functions():
    names = {f.__name__ for f in PUBLIC_FUNCTIONS}
    assert names >= {"query_symbol_info", "query_symbol_price", "query_balance",
                     "query_positions", "query_position_config", "new_limit_order",
                     "new_market_order", "cancel_order", "cancel_orders", "query_order",
                     "query_open_orders", "query_orders"}


@pytest.mark.parametrize("func", PUBLIC_FUNCTIONS, ids=[f.__name__ for f in PUBLIC_FUNCTIONS])
def test_public_function_docstring_names_its_endpoint(func):
    method, path = documented_call(func)
    assert method in {"GET", "POST"} and path.startswith("/api/")
