#!/usr/bin/env bash
# Start the market maker in the background.
#   ./run.sh          settings in .env,      log logs/market_maker.log, PID logs/market_maker.pid
#   ./run.sh NAME     settings in .env.NAME, log logs/NAME.log,         PID logs/NAME.pid
# One daemon per NAME: logs/NAME.lock is flock'ed by the daemon for its whole life (the kernel
# releases it when the daemon exits, even after SIGKILL), so a stale PID file never blocks a start
# and two starts of the same NAME can never both succeed.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
    echo "usage: ./run.sh [NAME]   (NAME: letters, digits, _ and -; settings in .env.NAME)"
}

if [ $# -gt 1 ]; then
    echo "run.sh: too many arguments ($*). $(usage)" >&2
    exit 2
fi
name="${1:-}"
case "$name" in
    -h|--help) usage; exit 0 ;;
esac
if [ -n "$name" ]; then
    if ! [[ "$name" =~ ^[A-Za-z0-9_][A-Za-z0-9_-]*$ ]]; then
        echo "run.sh: invalid NAME '$name': use letters, digits, _ and - only (not starting with -)." >&2
        exit 2
    fi
    env_file=".env.$name"
    base="$name"
    stop_cmd="./stop.sh $name"
else
    env_file=".env"
    base="market_maker"
    stop_cmd="./stop.sh"
fi
label="${name:-market_maker}"
log_file="logs/$base.log"
out_file="logs/$base.out"
pid_file="logs/$base.pid"
lock_file="logs/$base.lock"

if [ ! -x .venv/bin/python ]; then
    echo "No virtual environment (.venv). Create it with:" >&2
    echo "  python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt" >&2
    exit 1
fi
if [ ! -f "$env_file" ]; then
    echo "No $env_file. Create it from the example, then edit it (wallet key, settings):" >&2
    echo "  cp .env.example $env_file && chmod 600 $env_file" >&2
    exit 1
fi
if ! command -v flock >/dev/null 2>&1; then
    echo "run.sh needs flock (util-linux): sudo apt-get install util-linux" >&2
    exit 1
fi

# Settings come from the env file only: the daemon lets the environment override the file,
# which would silently give every NAME the same exported key or setting.
for var in $(compgen -e); do
    case "$var" in
        MARKET_MAKER_*|STANDX_*|WALLET_*|ALERT_*|LOG_LEVEL)
            echo "Note: ignoring $var from the environment; settings come from $env_file"
            unset "$var" ;;
    esac
done

mkdir -p logs

# Fd 9 holds the lock; the daemon inherits it, every other command gets it closed (9>&-).
exec 9>>"$lock_file"
if ! flock -n 9; then
    pid=$(cat "$pid_file" 2>/dev/null || true)
    if [[ "$pid" =~ ^[0-9]+$ ]]; then
        echo "Already running: $label (PID $pid). Stop it first with: $stop_cmd" >&2
    else
        echo "Already running or starting: $label ($lock_file is locked, no PID in $pid_file yet)." >&2
    fi
    exit 1
fi

# We hold the lock, so no daemon runs under this NAME: any PID file is left from a crash.
if [ -f "$pid_file" ]; then
    echo "Note: replacing stale $pid_file (PID $(cat "$pid_file" 2>/dev/null || echo ?) is not our daemon)."
    rm -f "$pid_file"
fi

if ! check=$(.venv/bin/python market_maker.py --env-file "$env_file" --check-config 2>&1 9>&-); then
    echo "Not started: $env_file has a problem:" >&2
    printf '%s\n' "$check" | tail -n 5 >&2
    exit 2
fi
printf '%s\n' "$check"

stamp=$(date +%Y%m%d_%H%M%S)
rotate() {  # rotate FILE EXT: FILE -> logs/<base>_<stamp>.EXT, never overwriting an older one
    local target="logs/${base}_$stamp.$2" n=1
    while [ -e "$target" ]; do
        target="logs/${base}_${stamp}_$n.$2"
        n=$((n + 1))
    done
    mv "$1" "$target"
    echo "Previous $1 moved to $target"
}
if [ -f "$log_file" ]; then
    rotate "$log_file" log
fi
if [ -s "$out_file" ]; then
    rotate "$out_file" out
fi

# The daemon writes (and size-rotates) its own log; its stdout/stderr only catch a crash.
nohup .venv/bin/python -u market_maker.py --env-file "$env_file" --log-file "$log_file" \
    </dev/null >"$out_file" 2>&1 &
pid=$!
echo "$pid" >"$pid_file.tmp"
mv "$pid_file.tmp" "$pid_file"

sleep 1 9>&-
state=$(ps -p "$pid" -o stat= 2>/dev/null || true)
if [ -z "$state" ] || [[ "$state" == Z* ]]; then
    rc=0
    wait "$pid" || rc=$?
    echo "The market maker exited at once (exit code $rc)." >&2
    for file in "$log_file" "$out_file"; do
        if [ -s "$file" ]; then
            echo "--- last lines of $file:" >&2
            tail -n 20 "$file" >&2
        fi
    done
    rm -f "$pid_file"
    exit 1
fi
echo "Started $label (PID $pid). Log: tail -f $log_file  Stop: $stop_cmd"
