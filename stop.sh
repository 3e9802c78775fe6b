#!/usr/bin/env bash
# Stop the market maker: SIGTERM (it cancels its orders and exits), then SIGKILL after a deadline.
set -euo pipefail
cd "$(dirname "$0")"

pid_file="logs/market_maker.pid"
stop_wait_s=20

if [ ! -f "$pid_file" ]; then
    echo "Not running (no $pid_file)."
    exit 0
fi
pid=$(cat "$pid_file" 2>/dev/null || true)
if [ -z "$pid" ] || ! ps -p "$pid" -o args= 2>/dev/null | grep -q "market_maker.py"; then
    echo "Not running (PID ${pid:-?} is not the market maker); removing the stale PID file."
    rm -f "$pid_file"
    exit 0
fi
echo "Stopping PID $pid (cancelling orders)..."
kill -TERM "$pid"
for _ in $(seq $((stop_wait_s * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
    echo "Still running after ${stop_wait_s}s: sending SIGKILL. Check the exchange for orders left open."
    kill -KILL "$pid" 2>/dev/null || true
fi
rm -f "$pid_file"
echo "Stopped."
