"""The symbols the simulator lists: their trading rules (the rows of query_symbol_info) and the
price level a synthetic market of each starts at.

BTC-USD has the rules the project has always simulated (tick 0.1, lot 0.0001, the fields of
StandX's documentation example). StandX also lists ETH-USD, XAU-USD and XAG-USD (standx_api.md
section 4); the ETH-USD and XAU-USD rows here are ILLUSTRATIVE, chosen to be plausible, not
read from the exchange: ETH-USD has a finer tick and a coarser lot than BTC, XAU-USD a whole-dollar
tick (2.5 bps of its price, so a 10 bps band holds only a few ticks) and lots of 0.01.

A simulator trades one of them (Simulator(symbol=...)); the others are listed by
query_symbol_info but refused by the trading endpoints. Rules can change during a run, as
StandX's can (with_rules, Exchange.set_spec).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from decimal import Decimal

# A rule's decimal value in a control request: a Decimal, an int, or plain decimal text.
DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")
# Fields that name the symbol or place its market, not rules that can change during a run.
IDENTITY_FIELDS = frozenset({"symbol", "base_asset", "quote_asset", "start_price"})


@dataclass(frozen=True)
class SymbolSpec:
    """One symbol: the fields of query_symbol_info, plus start_price (the simulator's own)."""

    symbol: str = "BTC-USD"
    base_asset: str = "BTC"
    quote_asset: str = "DUSD"
    base_decimals: int = 9
    quote_decimals: int = 9
    price_tick_decimals: int = 1
    qty_tick_decimals: int = 4
    min_order_qty: Decimal = Decimal("0.0001")
    max_order_qty: Decimal = Decimal("100")
    max_position_size: Decimal = Decimal("1000")
    max_open_orders: int = 100
    def_leverage: int = 40
    max_leverage: int = 40
    maker_fee: Decimal = Decimal("0.0001")
    taker_fee: Decimal = Decimal("0.0004")
    price_cap_ratio: Decimal = Decimal("0.3")
    price_floor_ratio: Decimal = Decimal("0.3")
    start_price: Decimal = Decimal("95000")  # where a synthetic market of this symbol starts; not shown

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(f"{self.symbol}: {problem}")

    def _problem(self) -> str:
        """What makes these rules unusable, or ''."""
        if self.price_tick_decimals < 0 or self.qty_tick_decimals < 0:
            return "price_tick_decimals and qty_tick_decimals must be >= 0"
        if not 0 < self.min_order_qty <= self.max_order_qty:
            return "min_order_qty must be > 0 and at most max_order_qty"
        if not 1 <= self.def_leverage <= self.max_leverage:
            return "def_leverage must be between 1 and max_leverage"
        if self.max_open_orders < 1:
            return "max_open_orders must be >= 1"
        return ""

    @property
    def tick(self) -> Decimal:
        return Decimal(1).scaleb(-self.price_tick_decimals)

    @property
    def lot(self) -> Decimal:
        return Decimal(1).scaleb(-self.qty_tick_decimals)


# The rules that can change during a run, with their kind ("int" or "Decimal").
RULE_KINDS: dict[str, str] = {f.name: f.type for f in dataclasses.fields(SymbolSpec) if f.name not in IDENTITY_FIELDS}

SYMBOLS: dict[str, SymbolSpec] = {spec.symbol: spec for spec in (
    SymbolSpec(),
    SymbolSpec(symbol="ETH-USD", base_asset="ETH", price_tick_decimals=2, qty_tick_decimals=3,
               min_order_qty=Decimal("0.001"), max_order_qty=Decimal("1000"), max_position_size=Decimal("10000"),
               def_leverage=25, max_leverage=25, start_price=Decimal("3300")),
    SymbolSpec(symbol="XAU-USD", base_asset="XAU", price_tick_decimals=0, qty_tick_decimals=2,
               min_order_qty=Decimal("0.01"), max_order_qty=Decimal("500"), max_position_size=Decimal("5000"),
               def_leverage=20, max_leverage=20, maker_fee=Decimal("0.0002"), taker_fee=Decimal("0.0005"),
               start_price=Decimal("4000")),
)}


def listed(symbol: str) -> SymbolSpec:
    """The catalogue's row for this symbol; ValueError naming the listed ones if there is none."""
    spec = SYMBOLS.get(symbol)
    if spec is None:
        raise ValueError(f"unknown symbol {symbol!r}: the simulator lists {', '.join(SYMBOLS)}")
    return spec


def with_rules(spec: SymbolSpec, rules: dict[str, object]) -> SymbolSpec:
    """spec with these rule fields changed. Integer fields take ints; decimal fields a Decimal, an
    int or plain decimal text (a float would carry binary noise). ValueError for a field that is
    not a rule, a value of the wrong kind, or rules that do not fit together."""
    changes = {}
    for name, value in rules.items():
        if name not in RULE_KINDS:
            raise ValueError(f"{name} is not a rule that can change; rules: {', '.join(sorted(RULE_KINDS))}")
        changes[name] = _rule_value(name, RULE_KINDS[name], value)
    return dataclasses.replace(spec, **changes)


def _rule_value(name: str, kind: str, value: object) -> int | Decimal:
    if kind == "int":
        if type(value) is not int:  # bool is an int subclass; refuse it too
            raise ValueError(f"{name} must be an integer")
        return value
    if isinstance(value, Decimal) and value.is_finite():
        return value
    if type(value) is int or (isinstance(value, str) and DECIMAL_TEXT.fullmatch(value)):
        return Decimal(value)
    raise ValueError(f"{name} must be a decimal string, e.g. \"0.001\"")
