"""StandX's maker reward programmes as data, and how a stretch of quoting is scored under them.

A programme is a small table (Programme): how far from the reference price a quote may rest
and what it is worth at each distance, how its size is counted (a unit, a cap per side, a
ceiling per hour) and the hourly uptime tiers. The rules are second-hand (standx_api.md section
7: StandX's own pages were not available), so every figure built on them is an estimate; when
StandX changes the rules, add a Programme to PROGRAMMES and make it the DEFAULT_PROGRAMME.

The score is the same whoever measures: the daemon from what it believes rests (its estimate
for the status line), the simulator from what does rest, at every event (tick level). Both feed
a RewardMeter with the pair's value over time:

- a side's value is its orders' size, the closest first up to the side's cap, each times the
  weight of its distance from the reference price (0 beyond the band);
- the pair's value is the smaller side's, in the programme's unit (two-sided: one side alone
  is worth nothing);
- an hour's score, in Maker Hours, is the programme's hour value (``mean``: the pair's value
  averaged over the clock hour, times the multiplier of the tier its two-sided time reached;
  ``quantile``: the best of each tier's multiplier times the value held for at least the
  tier's share of the hour, the Uptime Program's X70 / X50 rule), capped at the hourly ceiling.

Nothing here knows the daemon or the simulator: both import this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

HOUR_S = 3600
# Distances are computed in floats: a quote exactly on the band's edge must not fall off it by
# a rounding error.
EDGE_BPS = 1e-9


@dataclass(frozen=True)
class PairRules:
    """How a pair's size counts: Maker Hours are `unit`-sized quotes held for an hour."""
    unit: float
    side_cap: float  # most size that counts on one side
    hourly_ceiling: float | None = None  # most Maker Hours one hour can earn


@dataclass(frozen=True)
class Tier:
    min_minutes: float  # two-sided minutes in the clock hour
    multiplier: float


@dataclass(frozen=True)
class Programme:
    name: str
    title: str
    source: str  # where the rules were read: shown with every estimate
    reference: str  # the price distances are measured from
    band_bps: float  # a quote farther than this from the reference counts nothing
    weights: tuple[tuple[float, float], ...]  # (distance bps, weight), linear between points
    hour_value: str  # "mean" or "quantile" (see the module docstring)
    tiers: tuple[Tier, ...]  # from the lowest
    pairs: Mapping[str, PairRules] = field(default_factory=dict)

    def weight(self, distance_bps: float) -> float:
        """What a quote at this distance (either side of the reference) counts for."""
        distance = abs(distance_bps)
        if distance > self.band_bps + EDGE_BPS:
            return 0.0
        points = self.weights
        for (d0, w0), (d1, w1) in zip(points, points[1:]):
            if distance <= d1:
                return w0 + (w1 - w0) * (distance - d0) / (d1 - d0)
        return points[-1][1]

    def tier(self, two_sided_s: float) -> Tier | None:
        """The highest tier this much two-sided time in an hour reaches (None: none)."""
        reached = [t for t in self.tiers if two_sided_s >= t.min_minutes * 60]
        return reached[-1] if reached else None


TIERS_2026 = (Tier(30, 0.5), Tier(42, 1.0))

PROGRAMMES: dict[str, Programme] = {p.name: p for p in (
    Programme(
        name="uptime-2026-01",
        title="Market Maker Uptime Program (January 2026)",
        source="second-hand: standx_api.md 7.1 (StandX's page was not available to us)",
        reference="mark",
        band_bps=10.0,
        weights=((0.0, 1.0), (10.0, 1.0)),
        # Random snapshots each hour take the smaller side; X70 / X50 = the value met in 70 % /
        # 50 % of them. Scored here as the time shares those snapshots sample.
        hour_value="quantile",
        tiers=TIERS_2026,
        pairs={"BTC-USD": PairRules(unit=2, side_cap=2), "ETH-USD": PairRules(unit=60, side_cap=60)},
    ),
    Programme(
        name="cmy-2026-08",
        title="Community Maker Yield (SIP-5A; rules as of August 2026)",
        source="second-hand: standx_api.md 7.2 (a third-party copy of StandX's page, 2026-08-15)",
        reference="mark",
        band_bps=10.0,
        # 200 % at the mark, 80 % at 5 bps, 40 % at 10 bps; linear between is our assumption.
        weights=((0.0, 2.0), (5.0, 0.8), (10.0, 0.4)),
        hour_value="mean",
        tiers=TIERS_2026,
        pairs={"BTC-USD": PairRules(unit=2, side_cap=20, hourly_ceiling=10),
               "ETH-USD": PairRules(unit=60, side_cap=600, hourly_ceiling=10)},
    ),
)}
DEFAULT_PROGRAMME = "cmy-2026-08"


def distance_bps(price: float, reference: float) -> float:
    return abs(price - reference) / reference * 10000


def side_value(programme: Programme, pair: PairRules, quotes: Iterable[tuple[float, float]]) -> float:
    """One side's weighted size: (distance bps, size) quotes, the closest first, up to the cap."""
    room, value = pair.side_cap, 0.0
    for distance, size in sorted((abs(d), s) for d, s in quotes):
        weight = programme.weight(distance)
        if weight <= 0 or room <= 0:
            break
        counted = min(size, room)
        value += weight * counted
        room -= counted
    return value


def pair_value(programme: Programme, pair: PairRules, bids: Iterable[tuple[float, float]],
               asks: Iterable[tuple[float, float]]) -> float:
    """The pair's value now, in units: the smaller side's weighted size over the unit."""
    return min(side_value(programme, pair, bids), side_value(programme, pair, asks)) / pair.unit


@dataclass
class HourTally:
    """What one clock hour held: observed, two-sided and value-weighted seconds, and (for a
    quantile programme) the seconds at each value."""
    observed_s: float = 0.0
    two_sided_s: float = 0.0
    value_s: float = 0.0  # the pair's value (units) integrated over time
    seconds_at: dict[float, float] = field(default_factory=dict)

    def add(self, seconds: float, value: float, keep_values: bool) -> None:
        self.observed_s += seconds
        if value > 0:
            self.two_sided_s += seconds
            self.value_s += value * seconds
            if keep_values:
                self.seconds_at[value] = self.seconds_at.get(value, 0.0) + seconds

    def scaled(self, factor: float) -> HourTally:
        return HourTally(self.observed_s * factor, self.two_sided_s * factor, self.value_s * factor,
                         {v: s * factor for v, s in self.seconds_at.items()})


def value_held_for(tally: HourTally, seconds: float) -> float:
    """The largest value the pair held for at least `seconds` of the hour (0 if none)."""
    held = 0.0
    for value in sorted(tally.seconds_at, reverse=True):
        held += tally.seconds_at[value]
        if held >= seconds - 1e-9:
            return value
    return 0.0


@dataclass(frozen=True)
class HourScore:
    maker_hours: float
    tier: Tier | None
    two_sided_s: float


def score_hour(programme: Programme, pair: PairRules, tally: HourTally) -> HourScore:
    """The hour's score once it is over (time not observed counts as not quoting)."""
    if programme.hour_value == "quantile":
        # The best tier's rule sets both the value and the tier it is paid at.
        value, tier = max(((t.multiplier * value_held_for(tally, t.min_minutes * 60), t) for t in programme.tiers),
                          key=lambda pair: pair[0], default=(0.0, None))
        tier = tier if value > 0 else None
    else:
        tier = programme.tier(tally.two_sided_s)
        value = tier.multiplier * tally.value_s / HOUR_S if tier else 0.0
    if pair.hourly_ceiling is not None:
        value = min(value, pair.hourly_ceiling)
    return HourScore(value, tier, tally.two_sided_s)


class RewardMeter:
    """The pair's value over time, tallied per clock hour (times are epoch seconds: hours are
    UTC hours). record() says the value from now on; the time since the last record had the
    last value. Hours older than `keep_hours` are dropped."""

    def __init__(self, programme: Programme, pair: PairRules, keep_hours: int = 25) -> None:
        self.programme, self.pair = programme, pair
        self.hours: dict[int, HourTally] = {}
        self._keep_hours = keep_hours
        self._keep_values = programme.hour_value == "quantile"
        self._last: tuple[float, float] | None = None  # (time, value)

    def record(self, now: float, value: float) -> None:
        if self._last is not None:
            start, last_value = self._last
            while start < now:
                hour = int(start // HOUR_S)
                stop = min(now, (hour + 1) * HOUR_S)
                tally = self.hours.get(hour)
                if tally is None:
                    tally = self.hours[hour] = HourTally()
                    for old in [h for h in self.hours if h <= hour - self._keep_hours]:
                        del self.hours[old]
                tally.add(stop - start, last_value, self._keep_values)
                start = stop
        self._last = (now, value)

    def saved(self) -> dict[str, list]:
        """The hours' tallies as JSON-ready data (restore() reads them back)."""
        return {str(hour): [t.observed_s, t.two_sided_s, t.value_s, sorted(t.seconds_at.items())]
                for hour, t in sorted(self.hours.items())}

    def restore(self, saved: object, now: float) -> int:
        """Take back the tallies an earlier run saved, for the hours this meter keeps up to the
        current one, or the next (`now` may be this host's time, a little behind the exchange's
        hours); time between that run's last save and now stays unrecorded: not quoting. A
        tally no quoting could have made (malformed, negative, over the hour or over the
        largest value the rules allow) is skipped. The number of hours restored."""
        if not isinstance(saved, dict):
            return 0
        current = int(now // HOUR_S)
        top = self.pair.side_cap * max(weight for _, weight in self.programme.weights) / self.pair.unit
        restored = 0
        for key, fields in saved.items():
            try:
                hour = int(key)
                observed, two_sided, value_s, at = fields
                tally = HourTally(float(observed), float(two_sided), float(value_s),
                                  {float(v): float(sec) for v, sec in at})
            except (TypeError, ValueError):
                continue
            numbers = [tally.observed_s, tally.two_sided_s, tally.value_s, *tally.seconds_at, *tally.seconds_at.values()]
            if (current - self._keep_hours < hour <= current + 1 and hour not in self.hours
                    and all(math.isfinite(n) and n >= 0 for n in numbers)
                    and tally.two_sided_s <= tally.observed_s <= HOUR_S
                    and tally.value_s <= tally.two_sided_s * top * (1 + 1e-9)
                    and all(value <= top * (1 + 1e-9) for value in tally.seconds_at)
                    and sum(tally.seconds_at.values()) <= tally.two_sided_s * (1 + 1e-9)):
                self.hours[hour] = tally
                restored += 1
        return restored

    def hour_score(self, hour: int) -> HourScore:
        """The score of a whole hour (by its number: epoch // 3600); time not recorded counts as
        not quoting."""
        return score_hour(self.programme, self.pair, self.hours.get(hour, HourTally()))

    def projected_score(self, hour: int, now: float) -> HourScore | None:
        """The hour's score if what is left of it at `now` goes as its recorded part did (the
        whole hour's score once it is over); None before anything was recorded in it."""
        tally = self.hours.get(hour)
        if tally is None or tally.observed_s <= 0:
            return None
        remaining = max(0.0, (hour + 1) * HOUR_S - now)
        return score_hour(self.programme, self.pair, tally.scaled((tally.observed_s + remaining) / tally.observed_s))

    def earned(self, hour: int, now: float, quoting_on: bool = True) -> float:
        """Maker Hours the hour has earned by `now`: its projected score, for the part of it
        recorded so far; when quoting stops here (quoting_on False), its score as it stands."""
        if not quoting_on:
            return self.hour_score(hour).maker_hours
        projected = self.projected_score(hour, now)
        if projected is None:
            return 0.0
        tally = self.hours[hour]
        remaining = max(0.0, (hour + 1) * HOUR_S - now)
        return projected.maker_hours * tally.observed_s / (tally.observed_s + remaining)

    def hours_between(self, since: float, until: float) -> list[int]:
        """The recorded hours from the one holding `since` to the last that starts before `until`."""
        return sorted(hour for hour in self.hours if int(since // HOUR_S) <= hour and hour * HOUR_S < until)

    def earned_between(self, since: float, until: float, now: float, quoting_on: bool = True) -> float:
        """Maker Hours the hours_between(since, until) have earned by `now` (see earned)."""
        return sum(self.earned(hour, now, quoting_on) for hour in self.hours_between(since, until))

    def day_so_far(self, now: float, quoting_on: bool = True) -> float:
        """Maker Hours of the UTC day so far (see earned)."""
        return self.earned_between(now - now % (24 * HOUR_S), now, now, quoting_on)


def tier_label(tier: Tier | None) -> str:
    return f"{tier.multiplier:g}x" if tier else "no tier"
