#!/usr/bin/env bash
# Start the market maker in the background: log in logs/market_maker.log, PID in logs/market_maker.pid.
set -euo pipefail
cd "$(dirname "$0")"

env_file=".env"
log_file="logs/market_maker.log"
pid_file="logs/market_maker.pid"

if [ ! -x .venv/bin/python ]; then
    echo "No virtual environment (.venv). Create it first:"
    echo "  python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt"
    exit 1
fi
if [ ! -f "$env_file" ] && [ -z "${WALLET_PRIVATE_KEY:-}" ]; then
    echo "No $env_file. Create it from the example and add your wallet key:"
    echo "  cp .env.example $env_file && chmod 600 $env_file && nano $env_file"
    exit 1
fi
mkdir -p logs
if [ -f "$pid_file" ]; then
    pid=$(cat "$pid_file" 2>/dev/null || true)
    if [ -n "$pid" ] && ps -p "$pid" -o args= 2>/dev/null | grep -q "market_maker.py"; then
        echo "Already running (PID $pid). Stop it first with ./stop.sh"
        exit 1
    fi
    echo "Removing stale PID file (PID ${pid:-?} is not running the market maker)"
    rm -f "$pid_file"
fi
.venv/bin/python market_maker.py --check-config >/dev/null || exit 2
if [ -f "$log_file" ]; then
    mv "$log_file" "logs/market_maker_$(date +%Y%m%d_%H%M%S).log"
fi
nohup .venv/bin/python -u market_maker.py "$@" >>"$log_file" 2>&1 &
echo $! >"$pid_file"
sleep 1
if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "The market maker exited at once; last lines of $log_file:"
    tail -n 20 "$log_file"
    rm -f "$pid_file"
    exit 1
fi
echo "Started (PID $(cat "$pid_file")). Log: tail -f $log_file   Stop: ./stop.sh"
