"""The layers import one way: the simulator's library never imports the daemon.

Only the entry points that compose the two know both: the daemon's --simulate (market_maker.py),
`python -m standx_sim backtest` and `sweep` (standx_sim/__main__.py) and bench/. Both sides
import rewards.py, the reward programmes' rules, which imports neither.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAEMON_MODULES = {"market_maker", "standx_auth", "standx_api", "standx_ws", "alerts"}
ENTRY_POINTS = {"__main__.py"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module the file imports, wherever the import statement sits."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_simulator_library_module_imports_the_daemon():
    offenders = {}
    for path in sorted((REPO / "standx_sim").glob("*.py")):
        if path.name in ENTRY_POINTS:
            continue
        daemon = imported_modules(path) & DAEMON_MODULES
        if daemon:
            offenders[path.name] = sorted(daemon)
    assert offenders == {}


def test_the_scan_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from market_maker import MarketMaker\n")
    assert "market_maker" in imported_modules(module)


def test_the_reward_rules_import_neither_side():
    assert imported_modules(REPO / "rewards.py") & (DAEMON_MODULES | {"standx_sim"}) == set()
