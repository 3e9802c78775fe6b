"""Sweep: the backtest over a grid of settings, to see which earn the most net of their costs.

Every setting (band target/min/max, check interval, price feed, requote mode, size) runs every
hour of the chosen market (backtest.run_hour, one process per hour at a time), and gets one row:
its reward under the programme (Maker Hours an hour, and their value at an assumed rate), its
uptime and tier hours, and its costs (fills, partial fills, fees, PnL of the fills and their
closes), post-only rejects and requests a second. Rows are sorted by net value an hour:

    net = Maker Hours x the value of one (DUSD, assumed: StandX publishes no rate) + PnL - fees

The figures are the backtest's, so the same inputs give the same table, byte for byte. This
module never imports the daemon: the command (``python -m standx_sim sweep``) hands in one
daemon factory per setting.
"""
from __future__ import annotations

import importlib
import itertools
import subprocess
import sys
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple, Sequence

from rewards import Programme

from .backtest import DaemonFactory, SyntheticHour, in_processes, per_hour, run_hour, table, totals

# The rate the net value uses unless told: an illustration, not StandX's figure (see README,
# "Choosing your band": a user divides what one day paid by that day's Maker Hours).
DEFAULT_MAKER_HOUR_VALUE = Decimal(100)
# The default grid: the band from the mark's edge to the original's, each with both requote modes.
DEFAULT_BANDS = ("2/1.5/3", "3.5/3/5", "5/4.5/6.5", "6/5.5/8", "7.5/7/10", "8.5/8/9.5")
DEFAULT_REQUOTES = ("replace", "cancel_first")


class SweepError(Exception):
    """A grid or plot request that cannot be carried out, in one line."""


def text(value: Decimal) -> str:
    """7.5 -> "7.5", 7.0 -> "7", 0.0050 -> "0.005"."""
    return f"{value.normalize():f}"


class Setting(NamedTuple):
    target_bps: Decimal
    min_bps: Decimal
    max_bps: Decimal
    interval_s: Decimal
    feed: str
    requote: str
    qty: Decimal

    @property
    def label(self) -> str:
        return (f"{text(self.target_bps)}/{text(self.min_bps)}/{text(self.max_bps)} bps, "
                f"{text(self.interval_s)} s, {self.feed}, {self.requote}, {text(self.qty)}")

    def overrides(self) -> dict[str, str]:
        """The daemon's settings that make this setting."""
        return {"MARKET_MAKER_TARGET_BPS": text(self.target_bps), "MARKET_MAKER_MIN_BPS": text(self.min_bps),
                "MARKET_MAKER_MAX_BPS": text(self.max_bps), "MARKET_MAKER_CHECK_INTERVAL": text(self.interval_s),
                "MARKET_MAKER_PRICE_FEED": self.feed, "MARKET_MAKER_REQUOTE": self.requote,
                "MARKET_MAKER_QTY": text(self.qty)}


# The numbers a grid accepts: above 0, at most this, with at most MOST_DECIMALS decimals (a
# typo such as 1e999999 is refused here rather than overflowing later).
LARGEST = Decimal(10000)
MOST_DECIMALS = 12


def parse_number(option: str, value: str) -> Decimal:
    shown = value if len(value) <= 40 else value[:40] + "..."
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite() or not 0 < number <= LARGEST or number.as_tuple().exponent < -MOST_DECIMALS:
        raise SweepError(f"{option}: {shown!r} is not a number above 0 and at most {LARGEST} "
                         f"with at most {MOST_DECIMALS} decimals")
    return number


def parse_band(value: str) -> tuple[Decimal, Decimal, Decimal]:
    """"7.5/7/10" -> target, min, max in bps."""
    parts = value.split("/")
    if len(parts) != 3:
        raise SweepError(f"--bands: {value[:40]!r} is not TARGET/MIN/MAX in bps (e.g. 7.5/7/10)")
    target, low, high = (parse_number("--bands", part) for part in parts)
    return target, low, high


def parse_numbers(option: str, values: Sequence[str]) -> list[Decimal]:
    return [parse_number(option, value) for value in values]


def grid(bands: Sequence[str], intervals: Sequence[str], feeds: Sequence[str], requotes: Sequence[str],
         sizes: Sequence[str]) -> list[Setting]:
    """Every combination, in the order given (bands first), without repeats."""
    settings = [Setting(*band, interval, feed, requote, qty)
                for band, interval, feed, requote, qty in itertools.product(
                    [parse_band(b) for b in bands], parse_numbers("--intervals", intervals), feeds, requotes,
                    parse_numbers("--sizes", sizes))]
    return list(dict.fromkeys(settings))


class Job(NamedTuple):
    setting: int
    source: str | SyntheticHour


def run_sweep(factories: Sequence[DaemonFactory], qtys: Sequence[Decimal], sources: Sequence[str | SyntheticHour],
              jobs: int, programme: Programme, **backtest: Any) -> list[list[dict]]:
    """Each setting's hours (run_hour), in the order of the factories and of the sources. The
    hours run on up to `jobs` processes; each depends on its inputs alone, so the figures are
    the same on one."""
    work = [Job(k, source) for k in range(len(factories)) for source in sources]
    runs = [(factories[job.setting], qtys[job.setting], job.source) for job in work]
    hours = in_processes(_RunHour(programme, backtest), runs, jobs)
    by_setting: list[list[dict]] = [[] for _ in factories]
    for job, figures in zip(work, hours):
        by_setting[job.setting].append(figures)
    return by_setting


class _RunHour:
    """run_hour with the sweep's fixed arguments, picklable for the process pool."""

    def __init__(self, programme: Programme, backtest: dict[str, Any]) -> None:
        self.programme, self.backtest = programme, backtest

    def __call__(self, run: tuple[DaemonFactory, Decimal, str | SyntheticHour]) -> dict:
        factory, qty, source = run
        return run_hour(source, factory, qty, programme=self.programme, **self.backtest)


def row(setting: Setting, hours: list[dict], maker_hour_value: Decimal, current: bool) -> dict:
    """One setting's figures an hour, from the totals of its hours."""
    total = totals(hours)
    reward = total["maker_hours_per_hour"]
    # per simulated second, as the backtest's fills an hour: a fill in the stop costs too
    fees, pnl = per_hour(float(total["fees"]), total["sim_seconds"]), per_hour(float(total["pnl"]), total["sim_seconds"])
    value = reward * float(maker_hour_value)
    return {
        "setting": setting.label, "current": current, **setting._asdict(),
        "net_per_hour": value + pnl - fees, "maker_hours_per_hour": reward, "reward_value_per_hour": value,
        "cost_per_hour": fees - pnl, "uptime_pct": total["uptime_pct"], "hours": total["hours"],
        "tier_1x_hours": total["tier_1x_hours"], "tier_half_hours": total["tier_half_hours"],
        "fills_per_hour": total["fills_per_hour"], "partial_fills_per_hour": total["partial_fills_per_hour"],
        "fees_per_hour": fees, "pnl_per_hour": pnl,
        "post_only_rejects_per_hour": total["post_only_rejects_per_hour"],
        "requests_per_s": total["requests_per_s"], "exit_code": total["exit_code"],
    }


def beats_current_when(r: dict, current: dict) -> str:
    """At which value of a Maker Hour this setting nets more than the current one: "above X" /
    "below X" DUSD, "always" (as much reward or more for no more cost), "never", or "-" for the
    current one itself. What the ranking's assumed rate hides."""
    if r is current:
        return "-"
    more_reward = r["maker_hours_per_hour"] - current["maker_hours_per_hour"]
    more_cost = r["cost_per_hour"] - current["cost_per_hour"]
    if more_reward >= 0 and more_cost <= 0:
        return "always"
    if more_reward <= 0 and more_cost >= 0:
        return "never"
    return f"{'above' if more_reward > 0 else 'below'} {more_cost / more_reward:.0f}"


def ranked(rows: list[dict]) -> list[dict]:
    """By net value an hour, the highest first; equal ones in grid order (the sort is stable)."""
    return sorted(rows, key=lambda r: -round(r["net_per_hour"], 6))


HEADER = ["setting (target/min/max, interval, feed, requote, size)", "net/h", "beats * at DUSD/MH", "reward MH/h",
          "reward/h",
          "uptime %", "tier 1x/0.5x h", "fills/h", "partial/h", "fees/h", "pnl/h", "post-only rejects/h", "req/s"]


def sweep_table(rows: list[dict]) -> str:
    """The ranked rows as a markdown table; * marks the current configuration."""
    current = next(r for r in rows if r["current"])
    cells = [(("* " if r["current"] else "") + r["setting"],
              [f"{r['net_per_hour']:.4f}", beats_current_when(r, current), f"{r['maker_hours_per_hour']:.6f}", f"{r['reward_value_per_hour']:.4f}",
               f"{r['uptime_pct']:.2f}", f"{r['tier_1x_hours']}/{r['tier_half_hours']} of {r['hours']}",
               f"{r['fills_per_hour']:.2f}", f"{r['partial_fills_per_hour']:.2f}", f"{r['fees_per_hour']:.4f}",
               f"{r['pnl_per_hour']:.4f}", f"{r['post_only_rejects_per_hour']:.2f}", f"{r['requests_per_s']:.2f}"])
             for r in rows]
    return table(cells, HEADER)


def frontier(rows: list[dict]) -> list[dict]:
    """The settings no other beats on both counts (as much reward or more for as little cost or
    less, better on one), from the cheapest."""
    best: list[dict] = []
    for r in sorted(rows, key=lambda r: (r["cost_per_hour"], -r["maker_hours_per_hour"])):
        if not best or r["maker_hours_per_hour"] > best[-1]["maker_hours_per_hour"]:
            best.append(r)
    return best


def short_label(r: dict, rows: list[dict]) -> str:
    """The band, and whichever other settings differ across the rows."""
    band = f"{text(r['target_bps'])}/{text(r['min_bps'])}/{text(r['max_bps'])} bps"
    varying = [str(r[key]) if key in ("feed", "requote") else f"{text(r[key])}{' s' if key == 'interval_s' else ''}"
               for key in ("interval_s", "feed", "requote", "qty") if len({str(x[key]) for x in rows}) > 1]
    return ", ".join([band, *varying])


def load_pyplot() -> Any:
    """matplotlib's pyplot on a file-only backend, installed with pip first if it is missing
    (only --plot needs it)."""
    try:
        import matplotlib
    except ImportError:
        print("standx_sim: --plot needs matplotlib, which is not installed: installing it with pip",
              file=sys.stderr, flush=True)
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise SweepError(f"cannot install matplotlib for --plot ({last}); "
                             f"install it with: {sys.executable} -m pip install matplotlib") from None
        importlib.invalidate_caches()
        import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    return pyplot


def plot(rows: list[dict], path: str, title: str, unit_note: str) -> None:
    """A PNG of reward against cost for every setting, the frontier drawn, the current one ringed."""
    pyplot = load_pyplot()
    figure, axes = pyplot.subplots(figsize=(9, 6), dpi=100)
    axes.scatter([r["cost_per_hour"] for r in rows], [r["maker_hours_per_hour"] for r in rows],
                 color="tab:blue", s=28, label="a setting", zorder=2)
    edge = frontier(rows)
    axes.plot([r["cost_per_hour"] for r in edge], [r["maker_hours_per_hour"] for r in edge],
              color="tab:green", linewidth=1.5, label="frontier: nothing earns more for less", zorder=1)
    for r in edge:
        axes.annotate(short_label(r, rows), (r["cost_per_hour"], r["maker_hours_per_hour"]),
                      textcoords="offset points", xytext=(6, -10), fontsize=7)
    for r in rows:
        if r["current"]:
            axes.scatter([r["cost_per_hour"]], [r["maker_hours_per_hour"]], s=160, facecolors="none",
                         edgecolors="tab:red", linewidths=2, label="current settings", zorder=3)
    axes.set_xlabel("cost per hour: fees - PnL of fills and closes (DUSD)")
    axes.set_ylabel(f"reward per hour (Maker Hours; {unit_note})")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    try:
        figure.savefig(path, format="png", metadata={"Software": None})
    except OSError as exc:
        raise SweepError(f"cannot write the plot {path}: {exc.strerror or exc}") from None
    finally:
        pyplot.close(figure)
