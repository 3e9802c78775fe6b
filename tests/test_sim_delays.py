"""When orders and cancels take effect: StandX-like delays with a tail, rejections in matching,
fixed delays, and the visibility fault (standx_sim/delays.py, the fill model in exchange.py)."""
from __future__ import annotations

import random
import statistics
from decimal import Decimal

import pytest

from standx_sim import Exchange, Simulator, VirtualClock
from standx_sim.__main__ import build_parser
from standx_sim.delays import CANCEL_DELAYS, ORDER_DELAYS, DelayDistribution, FixedTiming, StandXTiming
from tests.sim_helpers import START_TS, flat_sim, in_process_client

ADDRESS = "0x" + "cd" * 20
SAMPLES = 100_000


def share_over(delays: list[float], seconds: float) -> float:
    return sum(d > seconds for d in delays) / len(delays)


def test_order_delays_have_a_body_near_200_ms_and_a_capped_tail_of_seconds():
    rng = random.Random(2)
    delays = [ORDER_DELAYS.draw(rng) for _ in range(SAMPLES)]
    assert 0.18 <= statistics.median(delays) <= 0.23
    assert 0.04 <= share_over(delays, 1.0) <= 0.06
    assert 0.003 <= share_over(delays, 3.0) <= 0.007
    assert max(delays) == ORDER_DELAYS.cap_s == 6.0


def test_cancel_delays_are_shorter_than_order_delays():
    rng = random.Random(3)
    cancels = [CANCEL_DELAYS.draw(rng) for _ in range(SAMPLES)]
    orders = [ORDER_DELAYS.draw(rng) for _ in range(SAMPLES)]
    assert statistics.median(cancels) < statistics.median(orders) / 1.5
    assert share_over(cancels, 1.0) < share_over(orders, 1.0) / 5
    assert max(cancels) <= CANCEL_DELAYS.cap_s == 3.0


@pytest.mark.parametrize("fields", [{"median_s": 0}, {"tail_probability": 1.5}, {"log_sd": -1}])
def test_a_delay_distribution_refuses_impossible_parameters(fields):
    valid = {"median_s": 0.2, "log_sd": 0.6, "tail_probability": 0.05, "tail_start_s": 1.0,
             "tail_mean_excess_s": 1.0, "cap_s": 6.0}
    with pytest.raises(ValueError):
        DelayDistribution(**{**valid, **fields})


def test_standx_timing_repeats_for_a_seed_and_differs_between_seeds():
    def draws(seed: int) -> list:
        timing = StandXTiming(seed)
        return [timing.order() for _ in range(50)] + [timing.cancel() for _ in range(50)]
    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


def test_standx_timing_rejects_about_one_order_in_five_hundred():
    timing = StandXTiming(0)
    rejected = sum(timing.order().rejected for _ in range(SAMPLES))
    assert 0.0015 <= rejected / SAMPLES <= 0.0025


def test_fixed_timing_is_the_same_delay_every_time_and_never_rejects():
    timing = FixedTiming(0.3)
    assert {timing.order() for _ in range(1000)} == {(0.3, False)}
    assert timing.cancel() == 0.3
    with pytest.raises(ValueError):
        FixedTiming(-0.1)


# ---- in the exchange --------------------------------------------------------------------------

def submit(ex: Exchange, count: int, time_in_force: str = "ioc") -> list:
    """`count` limit buys that do not cross, each at its own price (ioc: cancelled at activation)."""
    return [ex.submit_order(ADDRESS, side="buy", order_type="limit", qty=Decimal("0.001"), time_in_force=time_in_force,
                            reduce_only=False, price=Decimal(94000 + n), cl_ord_id=f"d-{n}") for n in range(count)]


def activation_delays(seed: int, count: int = 400) -> list[float]:
    """How long each of `count` ioc orders took to activate, with the default timing."""
    clock = VirtualClock(START_TS)
    ex = Exchange(clock, flat_sim().market, seed=seed)
    orders = submit(ex, count)
    clock.sleep(10)
    ex.advance()
    return [o.updated_at - o.created_at for o in orders if o.status == "canceled"]


def test_by_default_each_order_takes_its_own_seeded_delay():
    delays = activation_delays(seed=1)
    assert 0.15 <= statistics.median(delays) <= 0.27
    assert max(delays) > 1.0  # the tail shows in a few hundred orders
    assert delays == activation_delays(seed=1)
    assert delays != activation_delays(seed=2)


def test_by_default_cancels_take_their_own_shorter_delays():
    clock = VirtualClock(START_TS)
    ex = Exchange(clock, flat_sim().market)
    orders = submit(ex, 90, "alo")
    clock.sleep(10)
    ex.advance()
    resting = [o for o in orders if o.status == "new"]
    asked_at = clock.now()
    ex.request_cancels(ADDRESS, cl_ord_ids=[o.cl_ord_id for o in resting])
    clock.sleep(10)
    ex.advance()
    delays = [o.updated_at - asked_at for o in resting]
    assert all(o.status == "canceled" for o in resting)
    assert statistics.median(delays) < 0.15 and max(delays) <= CANCEL_DELAYS.cap_s
    assert len(set(delays)) > 1


def test_a_fixed_visibility_delay_applies_to_every_order_and_cancel_and_rejects_none():
    clock = VirtualClock(START_TS)
    ex = Exchange(clock, flat_sim().market, visibility_delay_s=0.3)
    orders = submit(ex, 90, "alo")
    clock.sleep(0.3)
    ex.advance()
    assert all(o.status == "new" and o.updated_at - o.created_at == pytest.approx(0.3) for o in orders)
    ex.request_cancels(ADDRESS, order_ids=[o.id for o in orders])
    clock.sleep(0.29)
    assert ex.metrics(ADDRESS)["orders_cancelled"] == 0
    clock.sleep(0.02)
    assert ex.metrics(ADDRESS)["orders_cancelled"] == 90


def test_the_visibility_fault_fixes_the_delay_of_orders_accepted_from_then_on():
    sim = Simulator(VirtualClock(START_TS), flat_sim().market)  # StandX-like timing
    client = in_process_client(sim)
    sim.set_visibility_delay(4)
    for n in range(10):
        client.new_order(cl_ord_id=f"slow-{n}", price=f"{94900 + n}.0")
    sim.clock.sleep(3.99)
    assert client.open_orders() == []
    sim.clock.sleep(0.02)
    assert len(client.open_orders()) == 10


def test_serve_defaults_to_the_random_delays_and_takes_a_fixed_one():
    assert build_parser().parse_args(["serve"]).visibility_delay_ms is None
    assert build_parser().parse_args(["serve", "--visibility-delay-ms", "100"]).visibility_delay_ms == 100
