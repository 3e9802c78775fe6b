"""new_order checks: numbers on the wire, required fields, position config, duplicates."""
from __future__ import annotations

from tests.sim_helpers import flat_sim, in_process_client


def assert_refused(response, status: int = 400) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == status and body["message"]


def refused_client():
    """A logged-in client; after each refusal nothing must reach the book."""
    sim = flat_sim()
    return sim, in_process_client(sim)


def assert_no_order_created(sim, client) -> None:
    sim.clock.sleep(1)
    assert client.get("/api/query_orders").json()["result"] == []


def test_price_finer_than_the_tick_is_refused():
    sim, client = refused_client()
    assert_refused(client.new_order(price="94990.05"))
    assert_no_order_created(sim, client)


def test_price_as_a_json_number_is_refused():
    sim, client = refused_client()
    assert_refused(client.new_order(price=94990.0))
    assert_no_order_created(sim, client)


def test_qty_in_exponent_notation_is_refused():
    _, client = refused_client()
    assert_refused(client.new_order(qty="1e-03"))


def test_qty_with_more_decimals_than_the_lot_is_refused():
    _, client = refused_client()
    assert_refused(client.new_order(qty="0.00105"))


def test_qty_below_min_order_qty_is_refused():
    _, client = refused_client()
    assert_refused(client.new_order(qty="0.0000"))


def test_qty_as_a_json_number_is_refused():
    _, client = refused_client()
    assert_refused(client.new_order(qty=0.001))


def test_misspelled_required_field_is_refused_as_missing():
    # An unknown field is accepted and ignored (test_sim_documented.py); the required one is then missing.
    _, client = refused_client()
    assert_refused(client.new_order(order_type=None, type="limit"))


def test_missing_reduce_only_is_refused():
    _, client = refused_client()
    assert_refused(client.new_order(reduce_only=None))


def test_reduce_only_as_a_string_is_refused():
    _, client = refused_client()
    assert_refused(client.new_order(reduce_only="false"))


def test_uppercase_time_in_force_is_refused():
    _, client = refused_client()
    assert_refused(client.new_order(time_in_force="ALO"))


def test_limit_order_without_price_is_refused():
    _, client = refused_client()
    assert_refused(client.new_order(price=None))


def test_unknown_symbol_is_refused():
    _, client = refused_client()
    assert_refused(client.new_order(symbol="DOGE-USD"))


def test_cl_ord_id_longer_than_32_characters_is_refused():
    _, client = refused_client()
    assert_refused(client.new_order(cl_ord_id="x" * 33))


def test_duplicate_cl_ord_id_is_refused():
    sim, client = refused_client()
    assert client.new_order(cl_ord_id="mm-dup").status_code == 200
    assert_refused(client.new_order(cl_ord_id="mm-dup", price="94980.0"))
    sim.clock.sleep(1)
    assert len(client.open_orders()) == 1


def test_duplicate_cl_ord_id_is_refused_even_after_the_first_order_is_gone():
    sim, client = refused_client()
    client.new_order(cl_ord_id="mm-gone")
    sim.clock.sleep(1)
    client.post_signed("/api/cancel_order", {"cl_ord_id": "mm-gone"})
    sim.clock.sleep(1)
    assert_refused(client.new_order(cl_ord_id="mm-gone"))


def test_margin_mode_different_from_the_position_config_is_refused():
    _, client = refused_client()
    assert_refused(client.new_order(margin_mode="isolated"))


def test_leverage_different_from_the_position_config_is_refused():
    _, client = refused_client()
    assert_refused(client.new_order(leverage=20))


def test_margin_mode_and_leverage_equal_to_the_position_config_are_accepted():
    _, client = refused_client()
    config = client.get("/api/query_position_config", symbol="BTC-USD").json()
    assert config == {"symbol": "BTC-USD", "leverage": 40, "margin_mode": "cross"}
    assert client.new_order(margin_mode="cross", leverage=40).status_code == 200


def test_leverage_follows_change_leverage():
    _, client = refused_client()
    assert client.post_signed("/api/change_leverage", {"symbol": "BTC-USD", "leverage": 20}).status_code == 200
    assert client.get("/api/query_position_config", symbol="BTC-USD").json()["leverage"] == 20
    assert client.new_order(leverage=20).status_code == 200
    assert_refused(client.new_order(leverage=40))


def test_cancel_order_of_an_unknown_id_is_404():
    _, client = refused_client()
    assert_refused(client.post_signed("/api/cancel_order", {"order_id": 424242}), 404)


def test_cancel_order_with_neither_id_is_refused():
    _, client = refused_client()
    assert_refused(client.post_signed("/api/cancel_order", {"symbol": "BTC-USD"}))


def test_order_id_as_a_string_is_refused():
    _, client = refused_client()
    assert_refused(client.post_signed("/api/cancel_order", {"order_id": "1"}))
