"""The daemon's reward estimate (status line, --status) against the simulator's own scoring of
the same run, and the setting that chooses the programme."""
from __future__ import annotations

import re

import pytest

import market_maker as mm
from rewards import HOUR_S, PROGRAMMES
from standx_sim import backtest as bt

HOUR_FIGURE = re.compile(r"reward (\S+) \(estimate, second-hand rules\): hour=([0-9.]+)MH@(\S+) ")


def run_and_keep_the_daemon(config: mm.Config, source: bt.SyntheticHour, seconds: float):
    """One backtest hour cut to `seconds`; its figures, the daemon, and the simulator's meter."""
    kept = {}

    def factory(session, clock, feed):
        maker, address = mm.daemon_on(config, session, clock, feed, run_id=bt.RUN_ID)
        kept["maker"] = maker
        return maker, address

    figures = bt.run_hour(source, factory, config.qty, max_seconds=seconds,
                          programme=PROGRAMMES[config.reward_programme])
    return figures, kept["maker"]


@pytest.mark.parametrize("programme, preset", [("cmy-2026-08", "volatile"), ("uptime-2026-01", "calm")])
def test_the_status_lines_estimate_agrees_with_the_simulators_scoring(programme, preset):
    config = mm.replay_config({"MARKET_MAKER_REWARD_PROGRAMME": programme}, None, None, bt.SIM_URL,
                              bt.throwaway_private_key())
    figures, maker = run_and_keep_the_daemon(config, bt.SyntheticHour(preset, 0), 1200)
    line = maker.status_line()
    shown = HOUR_FIGURE.search(line)
    assert shown, line
    assert shown.group(1) == programme and shown.group(3) == "1x"
    # The simulator scored every change at the exchange; the daemon sampled what it believed
    # rested, each loop. The simulator's figure is earned over 1200 s of the hour: projected to
    # the hour, as the status line's is.
    simulator = figures["maker_hours_per_hour"]
    assert simulator > 0 and figures["tier_1x_hours"] == 1
    assert float(shown.group(2)) == pytest.approx(simulator, rel=0.03)


def test_without_rules_for_the_symbol_the_status_line_says_so():
    config = mm.replay_config({}, None, None, bt.SIM_URL, bt.throwaway_private_key())
    text = mm.reward_estimate(None, mm.replace(config, symbol="XAU-USD"), 0.0)
    assert text.endswith("no rules for XAU-USD")


def test_the_estimate_shows_this_hour_the_last_and_the_day():
    config = mm.replay_config({}, None, None, bt.SIM_URL, bt.throwaway_private_key())
    programme = PROGRAMMES[config.reward_programme]
    meter = mm.RewardMeter(programme, programme.pairs["BTC-USD"])
    day = 20_000 * 24 * HOUR_S
    meter.record(day + 3 * HOUR_S, 0.0015)  # from 03:00, two-sided at 7.5 bps with 0.005 BTC
    meter.record(day + 4.5 * HOUR_S, 0.0015)
    text = mm.reward_estimate(meter, config, day + 4.5 * HOUR_S)
    # last hour (03:00-04:00): 0.0015; this hour on track for 0.0015; today: 1.5 hours of it
    assert text.endswith("hour=0.001500MH@1x last=0.001500MH@1x today=0.002250MH")


def test_the_programme_is_one_setting_and_a_wrong_one_is_refused():
    env = {"WALLET_PRIVATE_KEY": "0x" + "11" * 32}
    assert mm.load_config(env).reward_programme == "cmy-2026-08"
    assert mm.load_config({**env, "MARKET_MAKER_REWARD_PROGRAMME": "uptime-2026-01"}).reward_programme == \
        "uptime-2026-01"
    with pytest.raises(mm.ConfigError, match="MARKET_MAKER_REWARD_PROGRAMME: must be one of cmy-2026-08, "
                                             "uptime-2026-01 .got 'cmy-2027'."):
        mm.load_config({**env, "MARKET_MAKER_REWARD_PROGRAMME": "cmy-2027"})
