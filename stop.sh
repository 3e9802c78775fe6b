#!/usr/bin/env bash
# Stop the market maker started by ./run.sh [NAME]: SIGTERM (it cancels its orders and exits),
# SIGKILL only after STOP_TIMEOUT_S seconds (default 20). Only our daemon (holding this NAME's
# lock and running exactly what run.sh started) is ever signalled; a PID file pointing at
# anything else is stale and removed.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
    echo "usage: ./stop.sh [NAME]   (NAME: letters, digits, _ and -)"
}

if [ $# -gt 1 ]; then
    echo "stop.sh: too many arguments ($*). $(usage)" >&2
    exit 2
fi
name="${1:-}"
case "$name" in
    -h|--help) usage; exit 0 ;;
esac
if [ -n "$name" ] && ! [[ "$name" =~ ^[A-Za-z0-9_][A-Za-z0-9_-]*$ ]]; then
    echo "stop.sh: invalid NAME '$name': use letters, digits, _ and - only (not starting with -)." >&2
    exit 2
fi
base="${name:-market_maker}"
label="$base"
log_file="logs/$base.log"
out_file="logs/$base.out"
pid_file="logs/$base.pid"
lock_file="logs/$base.lock"

timeout_s="${STOP_TIMEOUT_S:-20}"
if ! [[ "$timeout_s" =~ ^[0-9]+$ ]] || [ "$timeout_s" -lt 1 ]; then
    echo "stop.sh: STOP_TIMEOUT_S must be a whole number of seconds >= 1 (got '$timeout_s')." >&2
    exit 2
fi

# Exactly the command run.sh starts for this NAME.
env_file=".env${name:+.$name}"
daemon_cmd=".venv/bin/python -u market_maker.py --env-file $env_file --log-file $log_file"

# True while PID is our daemon for this NAME: the lock run.sh handed it is held, and the PID runs
# exactly the command run.sh started. False once it has exited, is a zombie, or the PID was reused
# (even by something else whose command line mentions market_maker.py).
is_ours() {
    local args
    [ -f "$lock_file" ] && ! flock -n "$lock_file" true 2>/dev/null || return 1
    args=$(ps -p "$1" -o args= 2>/dev/null) || return 1
    [ "$args" = "$daemon_cmd" ]
}

# Remove the PID file only if it still names PID: a new ./run.sh may have replaced it meanwhile.
remove_pid_file() {
    if [ "$(cat "$pid_file" 2>/dev/null || true)" = "$1" ]; then
        rm -f "$pid_file"
    fi
}

if [ ! -f "$pid_file" ]; then
    if [ -f "$lock_file" ] && ! flock -n "$lock_file" true 2>/dev/null; then
        echo "No $pid_file, but $lock_file is held: a $label daemon is running without its PID file." >&2
        echo "Find it with: fuser -v $lock_file" >&2
        exit 1
    fi
    echo "Not running: $label (no $pid_file)."
    exit 0
fi
pid=$(cat "$pid_file" 2>/dev/null || true)
if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! is_ours "$pid"; then
    echo "Stale $pid_file: PID ${pid:-?} is not running the market maker; removed it, signalled nothing."
    remove_pid_file "$pid"
    exit 0
fi

echo "Stopping $label (PID $pid): SIGTERM sent, waiting up to $timeout_s s for it to cancel its orders..."
kill -TERM "$pid" 2>/dev/null || true
ticks=0
while is_ours "$pid" && [ "$ticks" -lt $((timeout_s * 10)) ]; do
    sleep 0.1
    ticks=$((ticks + 1))
    if [ $((ticks % 50)) -eq 0 ] && [ "$ticks" -lt $((timeout_s * 10)) ]; then
        echo "  still stopping after $((ticks / 10)) s..."
    fi
done

killed=""
if is_ours "$pid"; then
    echo "$label (PID $pid) did not stop within $timeout_s s: sending SIGKILL; check the exchange for orders left open." >&2
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        is_ours "$pid" || break
        sleep 0.1
    done
    if is_ours "$pid"; then
        echo "PID $pid is still there after SIGKILL; $pid_file kept." >&2
        exit 1
    fi
    killed=" with SIGKILL"
fi
remove_pid_file "$pid"
echo "Stopped $label (PID $pid)$killed. Log: $log_file"
if [ -z "$killed" ] && [ -s "$log_file" ]; then
    echo "  last log line: $(tail -n 1 "$log_file")"
fi
if [ -s "$out_file" ]; then
    echo "Note: $out_file is not empty (errors written outside the log):"
    tail -n 5 "$out_file"
fi
