"""Each reward programme's scoring, pinned on hand-computed cases (rewards.py).

Every case is one clock hour of BTC-USD quotes of 0.005 BTC a side unless it says otherwise.
Community Maker Yield (cmy-2026-08): unit 2 BTC, 20 BTC counted a side, at most 10 Maker Hours
an hour; weight 2.0 at the mark, 0.8 at 5 bps, 0.4 at 10 bps, linear between, 0 beyond 10 bps.
Uptime (uptime-2026-01): unit 2 BTC, 2 BTC counted a side, any distance up to 10 bps counts 1.
"""
from __future__ import annotations

import pytest

from rewards import (DEFAULT_PROGRAMME, HOUR_S, PROGRAMMES, HourTally, RewardMeter, pair_value,
                     score_hour)

CMY = PROGRAMMES["cmy-2026-08"]
UPTIME = PROGRAMMES["uptime-2026-01"]
HOUR0 = 1_767_657_600  # 2026-01-06 00:00 UTC, an hour boundary
QTY = 0.005


def hour_of(programme, bid_bps, ask_bps, qty=QTY, two_sided_min=60.0):
    """Maker Hours of an hour quoted at these distances for two_sided_min minutes, then not at all."""
    meter = RewardMeter(programme, programme.pairs["BTC-USD"])
    bids = [(bid_bps, qty)] if bid_bps is not None else []
    asks = [(ask_bps, qty)] if ask_bps is not None else []
    meter.record(HOUR0, pair_value(programme, meter.pair, bids, asks))
    meter.record(HOUR0 + two_sided_min * 60, 0.0)
    meter.record(HOUR0 + HOUR_S, 0.0)
    return meter.hour_score(HOUR0 // HOUR_S)


def test_cmy_is_the_default_programme():
    assert DEFAULT_PROGRAMME == "cmy-2026-08"


@pytest.mark.parametrize("bps, maker_hours", [
    (0, 0.005),     # 2.0 x 0.005 BTC / 2 BTC
    (5, 0.002),     # 0.8 x 0.005 / 2
    (7.5, 0.0015),  # 0.6 x 0.005 / 2: linear between 0.8 at 5 and 0.4 at 10
    (10, 0.001),    # 0.4 x 0.005 / 2: the band's edge still counts
    (10.1, 0.0),    # beyond the band
])
def test_cmy_weights_a_full_hour_by_the_distance_from_the_mark(bps, maker_hours):
    score = hour_of(CMY, bps, bps)
    assert score.maker_hours == pytest.approx(maker_hours, abs=1e-12)
    assert (score.tier.multiplier if score.tier else 0) == (1.0 if maker_hours else 0)


def test_cmy_default_quote_earns_under_a_third_of_one_at_the_mark():
    assert hour_of(CMY, 7.5, 7.5).maker_hours / hour_of(CMY, 0, 0).maker_hours == pytest.approx(0.3)


def test_cmy_the_farther_side_sets_the_pair_value():
    assert hour_of(CMY, 0, 10).maker_hours == pytest.approx(0.001)  # min(2.0, 0.4) x 0.005 / 2


@pytest.mark.parametrize("programme", [CMY, UPTIME])
def test_one_side_missing_earns_nothing_and_reaches_no_tier(programme):
    score = hour_of(programme, 5, None)
    assert score.maker_hours == 0 and score.tier is None and score.two_sided_s == 0


@pytest.mark.parametrize("minutes, multiplier", [(60, 1.0), (42, 1.0), (41.99, 0.5), (30, 0.5), (29.99, 0.0)])
def test_cmy_tier_boundaries_scale_the_mean_value(minutes, multiplier):
    # 0.6 x 0.005 / 2 = 0.0015 units while quoting, averaged over the hour, times the tier.
    expected = multiplier * 0.0015 * minutes / 60
    assert hour_of(CMY, 7.5, 7.5, two_sided_min=minutes).maker_hours == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("bps", [0, 5, 7.5, 10])
def test_uptime_counts_any_distance_within_10_bps_alike(bps):
    assert hour_of(UPTIME, bps, bps).maker_hours == pytest.approx(0.0025)  # 0.005 / 2


def test_uptime_ignores_a_quote_beyond_10_bps():
    assert hour_of(UPTIME, 10.1, 5).maker_hours == 0


@pytest.mark.parametrize("minutes, maker_hours, multiplier", [
    (42, 0.0025, 1.0),      # X70 = 0.005 held for 42 of 60 minutes: 0.005 / 2 x 1.0
    (41.99, 0.00125, 0.5),  # X70 = 0, X50 = 0.005: 0.005 / 2 x 0.5
    (30, 0.00125, 0.5),
    (29.99, 0.0, 0.0),
])
def test_uptime_tier_boundary_is_the_x70_x50_rule(minutes, maker_hours, multiplier):
    score = hour_of(UPTIME, 5, 5, two_sided_min=minutes)
    assert score.maker_hours == pytest.approx(maker_hours)
    assert (score.tier.multiplier if score.tier else 0.0) == multiplier


def test_uptime_x70_is_the_size_held_for_70_percent_of_the_hour():
    meter = RewardMeter(UPTIME, UPTIME.pairs["BTC-USD"])
    meter.record(HOUR0, 1.0)  # 2 BTC a side (1 unit) for 30 minutes
    meter.record(HOUR0 + 1800, 0.5)  # 1 BTC a side for the next 20 minutes
    meter.record(HOUR0 + 3000, 0.0)
    meter.record(HOUR0 + HOUR_S, 0.0)
    # held >= 42 min: 0.5 (1.0 for 30 min + 0.5 for 20 = 50 min at 0.5 or more); >= 30 min: 1.0
    assert meter.hour_score(HOUR0 // HOUR_S).maker_hours == pytest.approx(max(0.5 * 1.0, 1.0 * 0.5))


def test_uptime_size_above_the_2_btc_cap_counts_as_2():
    assert hour_of(UPTIME, 5, 5, qty=3).maker_hours == pytest.approx(1.0)  # min(3, 2) / 2


def test_cmy_size_above_the_20_btc_side_cap_counts_as_20():
    assert hour_of(CMY, 10, 10, qty=25).maker_hours == pytest.approx(4.0)  # 0.4 x 20 / 2 (25 would give 5)


def test_cmy_hourly_ceiling_is_10_maker_hours():
    assert hour_of(CMY, 0, 0, qty=25).maker_hours == pytest.approx(10.0)  # 2.0 x 20 / 2 = 20, capped


def test_the_side_cap_counts_the_closest_quotes_first():
    pair = CMY.pairs["BTC-USD"]
    # 15 BTC at 10 bps and 10 at the mark: the 10 at the mark, then 10 of the 15 (cap 20).
    assert pair_value(CMY, pair, [(10, 15), (0, 10)], [(0, 20)]) == pytest.approx((2.0 * 10 + 0.4 * 10) / 2)


def test_a_quote_on_the_wrong_side_of_the_mark_counts_by_its_distance():
    assert CMY.weight(-5) == CMY.weight(5) == pytest.approx(0.8)


def test_the_meter_splits_time_at_the_hour_boundary():
    meter = RewardMeter(CMY, CMY.pairs["BTC-USD"])
    meter.record(HOUR0 - 900, 0.0015)  # from 23:45, across midnight, to 00:45
    meter.record(HOUR0 + 2700, 0.0)
    before, after = meter.hours[HOUR0 // HOUR_S - 1], meter.hours[HOUR0 // HOUR_S]
    assert (before.two_sided_s, after.two_sided_s) == (900, 2700)
    assert meter.hour_score(HOUR0 // HOUR_S).maker_hours == pytest.approx(0.0015 * 0.75)  # 45 min: 1.0x
    assert meter.hour_score(HOUR0 // HOUR_S - 1).maker_hours == 0  # 15 min: no tier


def test_the_projected_score_assumes_the_rest_of_the_hour_goes_as_so_far():
    meter = RewardMeter(CMY, CMY.pairs["BTC-USD"])
    meter.record(HOUR0 + 1200, 0.0015)  # the daemon started at 00:20
    meter.record(HOUR0 + 2400, 0.0015)
    projected = meter.projected_score(HOUR0 // HOUR_S, HOUR0 + 2400)
    # 20 unobserved minutes count nothing: 40 quoted minutes at most, short of 42, so 0.5x
    assert projected.tier.multiplier == 0.5
    assert projected.maker_hours == pytest.approx(0.5 * 0.0015 * 40 / 60)
    # earned by 00:40: the 20 recorded minutes of the 40 the hour is projected to hold
    assert meter.day_so_far(HOUR0 + 2400) == pytest.approx(projected.maker_hours * 20 / 40)


def test_the_day_so_far_adds_the_days_finished_hours_only():
    meter = RewardMeter(CMY, CMY.pairs["BTC-USD"])
    meter.record(HOUR0 - 3600, 0.0015)  # the hour before midnight: yesterday
    meter.record(HOUR0 + 7200, 0.0015)  # two full hours today
    assert meter.day_so_far(HOUR0 + 7200) == pytest.approx(2 * 0.0015)


def test_the_meter_keeps_a_bounded_number_of_hours():
    meter = RewardMeter(CMY, CMY.pairs["BTC-USD"], keep_hours=3)
    for k in range(10):
        meter.record(HOUR0 + k * HOUR_S, 0.001)
    assert len(meter.hours) <= 3


def test_a_tally_scaled_keeps_its_shape():
    tally = HourTally()
    tally.add(600, 0.001, keep_values=True)
    assert score_hour(UPTIME, UPTIME.pairs["BTC-USD"], tally.scaled(6)).maker_hours == pytest.approx(0.001)


def test_uptime_tier_is_the_rule_that_paid_not_the_two_sided_time():
    meter = RewardMeter(UPTIME, UPTIME.pairs["BTC-USD"])
    meter.record(HOUR0, 1.0)  # 1 unit for 30 minutes,
    meter.record(HOUR0 + 1800, 0.1)  # then 0.1 for 15: two-sided 45 minutes
    meter.record(HOUR0 + 2700, 0.0)
    meter.record(HOUR0 + HOUR_S, 0.0)
    score = meter.hour_score(HOUR0 // HOUR_S)
    # X70 (42 min) = 0.1 -> 0.1 x 1.0; X50 (30 min) = 1.0 -> 1.0 x 0.5: the 0.5x rule pays
    assert score.maker_hours == pytest.approx(0.5) and score.tier.multiplier == 0.5
