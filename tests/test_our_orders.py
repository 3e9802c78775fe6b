"""OurOrders, our orders' lifecycle on its own: what each event does to the orders a side holds,
and what the quoting decision then reads."""
from __future__ import annotations

from decimal import Decimal

import pytest

from market_maker import CANCEL_RETRY_S, GIVEN_UP_FORGET_S, OrderStatus, OurOrder, OurOrders


def quote(cl_ord_id: str = "sxmmb1", side: str = "buy", sent_at: float = 10.0, **state) -> OurOrder:
    return OurOrder(cl_ord_id, side, Decimal("99.9"), sent_at, **state)


@pytest.fixture
def our() -> OurOrders:
    return OurOrders()


def test_a_sent_quote_holds_its_side_and_awaits_confirmation(our):
    order = quote()
    our.track(order)
    assert our.on_side("buy") == 1 and our.on_side("sell") == 0
    assert our.active("buy") == [order] and our.resting("buy") == []
    assert our.awaiting_confirmation(now=10.0)
    assert not our.quote_resting()


def test_confirmation_waits_out_the_grace_given_for_the_stream(our):
    our.track(quote(sent_at=10.0))
    assert not our.awaiting_confirmation(now=10.5, grace_s=1.0)
    assert our.awaiting_confirmation(now=11.0, grace_s=1.0)


def test_a_seen_quote_rests_until_its_cancel_is_sent(our):
    order = quote(seen=True)
    our.track(order)
    assert our.resting("buy") == [order] and our.quote_resting()
    assert not our.awaiting_confirmation(now=20.0)
    order.cancel_sent_at = 20.0
    assert our.active("buy") == [] and our.resting("buy") == [order]  # rests until seen gone
    assert our.on_side("buy") == 1
    assert our.awaiting_confirmation(now=20.0)


def test_resting_lists_the_newest_first(our):
    old, new = quote("sxmmb1", sent_at=1.0, seen=True), quote("sxmmb2", sent_at=2.0, seen=True)
    our.track(old)
    our.track(new)
    assert our.resting("buy") == [new, old]


def test_a_quote_that_vanished_leaves_a_fill_check_on_its_side(our):
    order = quote(seen=True)
    our.track(order)
    our.vanished(order, now=30.0)
    assert our.tracked == [] and our.on_side("buy") == 0
    assert our.fill_check_holds("buy") and not our.fill_check_holds("sell")
    assert our.fill_checks["sxmmb1"].since == 30.0 and our.fill_checks["sxmmb1"].filled is None


@pytest.mark.parametrize("found, holds", [
    (OrderStatus("canceled", Decimal(0)), False),  # over without a fill: the side is free
    (OrderStatus("rejected", Decimal(0)), False),
    (OrderStatus("filled", Decimal("0.005")), True),  # the fill must show in the position first
    (OrderStatus("canceled", Decimal("0.002")), True),  # partly filled, then cancelled
    (OrderStatus("canceled", None), True),  # how much filled is not said: checked
], ids=["cancelled", "rejected", "filled", "partly-filled", "fill-unknown"])
def test_an_order_over_frees_its_side_only_when_nothing_filled(our, found, holds):
    order = quote(seen=True)
    our.track(order)
    our.over(order, found, now=40.0)
    assert our.tracked == []
    assert our.fill_check_holds("buy") is holds


def test_a_fill_check_is_cleared_by_a_status_saying_nothing_filled(our):
    order = quote(seen=True)
    our.track(order)
    our.vanished(order, now=5.0)
    assert not our.note_fill_status("sxmmb1", OrderStatus("open"))  # not over: says nothing
    assert our.note_fill_status("sxmmb1", OrderStatus("canceled", Decimal(0)))
    assert not our.fill_check_holds("buy")


def test_a_fill_check_keeps_its_side_when_the_status_says_filled(our):
    order = quote(seen=True)
    our.track(order)
    our.vanished(order, now=5.0)
    assert not our.note_fill_status("sxmmb1", OrderStatus("filled", Decimal("0.005"), 1000.0))
    assert our.fill_checks["sxmmb1"].filled is True and our.fill_checks["sxmmb1"].fill_time == 1000.0


def test_a_partial_fill_seen_while_resting_is_remembered_for_the_fill_check(our):
    order = quote(seen=True)
    our.track(order)
    our.note_partial_fill(order, {"fill_qty": "0.002", "updated_at": "2026-01-06T00:00:05Z"})
    our.note_partial_fill(order, {"fill_qty": "0.001"})  # an older row: no step back
    assert order.fill_qty_seen == Decimal("0.002") and order.fill_time is not None
    our.vanished(order, now=9.0)
    assert our.fill_checks["sxmmb1"].fill_qty_seen == Decimal("0.002")


def test_a_given_up_order_is_not_tracked_but_remembered_until_settled(our):
    order = quote(outcome_unknown=True)
    our.track(order)
    our.give_up(order, now=50.0)
    assert our.tracked == [] and our.given_up == {"sxmmb1": ("buy", 50.0)}
    our.settle_given_up("sxmmb1", OrderStatus("filled", Decimal("0.005")), now=55.0)
    assert our.given_up == {} and our.fill_check_holds("buy")


def test_strays_count_on_their_side_and_leave_a_fill_check_when_they_vanish(our):
    our.note_strays({"sxmmsold": {"side": "sell"}}, now=1.0)
    assert our.on_side("sell") == 1 and our.awaiting_confirmation(now=1.0)
    our.note_strays({}, now=2.0)
    assert our.strays == {} and our.fill_check_holds("sell")


def test_a_given_up_order_that_shows_up_becomes_a_stray_and_is_forgotten_later(our):
    order = quote()
    our.track(order)
    our.give_up(order, now=10.0)
    our.note_strays({"sxmmb1": {"side": "buy"}}, now=11.0)
    assert our.strays == {"sxmmb1": "buy"} and our.given_up == {}
    other = quote("sxmmb2")
    our.track(other)
    our.give_up(other, now=20.0)
    our.note_strays({}, now=20.0 + GIVEN_UP_FORGET_S)
    assert our.given_up == {}


def test_a_cancel_is_due_again_only_after_the_retry_pause(our):
    assert our.cancels_due(["a", "b"], now=0.0) == ["a", "b"]
    assert our.cancels_due(["a", "c"], now=1.0) == ["c"]
    assert our.cancels_due(["a"], now=CANCEL_RETRY_S) == ["a"]


def test_an_outcome_is_matched_to_the_unseen_order_its_request_placed(our):
    waiting, seen = quote("sxmmb1", request_id="r-1"), quote("sxmmb2", request_id="r-2", seen=True)
    our.track(waiting)
    our.track(seen)
    assert our.awaiting_outcome("r-1") is waiting
    assert our.awaiting_outcome("r-2") is None  # seen resting: a late outcome says nothing new
    assert our.awaiting_outcome("r-3") is None


def test_a_mode_change_marks_every_quote_stale(our):
    our.track(quote("sxmmb1"))
    our.track(quote("sxmms1", side="sell"))
    our.mark_stale()
    assert all(o.stale for o in our.tracked)
