"""The control endpoints of the new faults, called through the control dispatcher on a virtual
clock (test_sim_server.py shows the same dispatcher answering over HTTP)."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from standx_sim.control import Control
from tests.sim_helpers import compact, flat_sim, in_process_client, jwt_payload


def control(sim, path: str, payload: dict) -> tuple[int, dict]:
    status, _, body = Control(sim).handle("POST", f"/_sim/{path}", {}, compact(payload).encode())
    return status, json.loads(body)


def test_compress_control_switches_compression():
    sim = flat_sim()
    client = in_process_client(sim)
    assert control(sim, "compress", {"on": False}) == (200, {"ok": True})
    assert "Content-Encoding" not in client.get("/api/query_balance").headers
    control(sim, "compress", {"on": True})
    assert client.get("/api/query_balance").headers["Content-Encoding"] == "gzip"


def test_compress_control_wants_a_boolean():
    assert control(flat_sim(), "compress", {"on": "no"})[0] == 400


def test_visibility_delay_control_delays_new_orders():
    sim = flat_sim()
    client = in_process_client(sim)
    assert control(sim, "visibility_delay", {"seconds": 4}) == (200, {"ok": True})
    client.new_order(cl_ord_id="late")
    sim.clock.sleep(3.9)
    assert client.order("late").status_code == 404
    sim.clock.sleep(0.2)
    assert client.order("late").json()["status"] == "new"


def test_position_lag_control_delays_position_answers():
    sim = flat_sim()
    client = in_process_client(sim)
    assert control(sim, "position_lag", {"seconds": 1.5}) == (200, {"ok": True})
    client.market_order("buy", "0.0010")
    sim.clock.sleep(1.0)
    assert client.position_qty() == 0
    sim.clock.sleep(1.0)
    assert client.position_qty() == Decimal("0.0010")


def test_position_lag_control_refuses_a_lag_out_of_range():
    assert control(flat_sim(), "position_lag", {"seconds": 1000})[0] == 400


def test_token_lifetime_control_caps_later_logins_and_null_lifts_the_cap():
    sim = flat_sim()
    client = in_process_client(sim, login=False)
    assert control(sim, "token_lifetime", {"seconds": 120}) == (200, {"ok": True})
    claims = jwt_payload(client.login())
    assert claims["exp"] - claims["iat"] == 120
    control(sim, "token_lifetime", {"seconds": None})
    claims = jwt_payload(client.login())
    assert claims["exp"] - claims["iat"] == 604800


def test_token_lifetime_control_refuses_zero():
    assert control(flat_sim(), "token_lifetime", {"seconds": 0})[0] == 400


def test_clock_skew_control_back_to_0_accepts_signatures_stamped_with_our_clock_again():
    sim = flat_sim()
    client = in_process_client(sim)
    control(sim, "clock_skew", {"seconds": 45})
    assert client.new_order().status_code == 403
    assert control(sim, "clock_skew", {"seconds": 0}) == (200, {"ok": True})
    assert client.new_order().status_code == 200


def test_fill_control_partially_fills_a_resting_order_with_odd_decimals():
    sim = flat_sim()
    client = in_process_client(sim)
    client.new_order(cl_ord_id="rest", qty="0.0020")
    sim.clock.sleep(0.25)
    payload = {"address": client.address, "cl_ord_id": "rest", "qty": "0.00123457"}
    assert control(sim, "fill", payload) == (200, {"ok": True})
    assert client.order("rest").json()["status"] == "partially_filled"
    assert client.get("/api/query_positions").json()[0]["qty"] == "0.00123457"


@pytest.mark.parametrize("payload, status", [
    ({"cl_ord_id": "rest", "qty": "0.003"}, 400),  # more than is left
    ({"cl_ord_id": "nope", "qty": "0.001"}, 400),  # no such order
    ({"cl_ord_id": "rest", "qty": "lots"}, 400),
    ({"cl_ord_id": "rest"}, 400),
])
def test_fill_control_refuses_what_it_cannot_fill(payload, status):
    sim = flat_sim()
    client = in_process_client(sim)
    client.new_order(cl_ord_id="rest", qty="0.0020")
    sim.clock.sleep(0.25)
    assert control(sim, "fill", {"address": client.address, **payload})[0] == status


def test_fill_control_for_an_unknown_account_is_404():
    payload = {"address": "0x" + "00" * 20, "cl_ord_id": "x", "qty": "0.001"}
    assert control(flat_sim(), "fill", payload)[0] == 404
