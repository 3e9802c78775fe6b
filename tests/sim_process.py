"""The simulator and the daemon as real processes, for end-to-end and host-fault tests."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
HTTP_TIMEOUT_S = 5


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MARKET_MAKER_", "STANDX_", "WALLET_", "LOG_LEVEL"))}
    env.update(extra)
    return env


def serve_simulator() -> tuple[subprocess.Popen, str]:
    """`python -m standx_sim serve` on a free loopback port, flat market: (process, URL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "standx_sim", "serve", "--volatility-bps", "0",
         "--visibility-delay-ms", "100"],
        cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return process, process.stdout.readline().strip().split("=", 1)[1]


def account(url: str, address: str) -> dict:
    answer = requests.get(f"{url}/_sim/account", params={"address": address}, timeout=HTTP_TIMEOUT_S)
    return answer.json() if answer.status_code == 200 else {}


def wait_until(condition, timeout_s: float) -> bool:
    ends = time.monotonic() + timeout_s
    while time.monotonic() < ends:
        if condition():
            return True
        time.sleep(0.2)
    return False


def start_daemon_process(url: str, key: str, cwd: Path, **env: str) -> subprocess.Popen:
    """`python market_maker.py` against the simulator at `url`, output in .stdout; its state
    file goes to `cwd`, not into the repository."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "market_maker.py")], cwd=cwd,
        env=clean_env(WALLET_PRIVATE_KEY=key, STANDX_AUTH_BASE_URL=url, STANDX_PERPS_BASE_URL=url,
                      MARKET_MAKER_CHECK_INTERVAL="0.2", MARKET_MAKER_STATE_DIR=str(cwd), **env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
