#!/usr/bin/env bash
# bench/fuzz.sh — `wsrr fuzz` sessions per second against bench/wsecho, the
# figures of docs/performance.md "Fuzz throughput".
#
# Records a one-connection session (two small JSON messages, echoed) through
# `wsrr proxy`, then fuzzes it for SECONDS per row, REPS times, and prints
# the median sessions/s of each row as a markdown table.
#
# usage: bench/fuzz.sh [--seconds S] [--reps N] [--rows "all:1 all:2 json:2 ..."]
#   BUILD=DIR   a release build (default /tmp/b-bench; configured and built
#               here with -Dbuildtype=release when missing)
# Needs python3 with python3-websockets (the recording client).
#
# Every process is started here and ended here by PID (trap); every fuzz run
# is bounded by --time.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BUILD=${BUILD:-/tmp/b-bench}
PY=${PY:-/usr/bin/python3} # Debian's, with python3-websockets
SECONDS_PER_ROW=10 REPS=3
ROWS="all:1 all:2 all:4 json:2 frame:2 schedule:2"
while [ $# -gt 0 ]; do
    case "$1" in
    --seconds) SECONDS_PER_ROW=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --rows) ROWS=$2; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

if [ ! -x "$BUILD/tools/wsrr" ] || [ ! -x "$BUILD/bench/wsecho" ]; then
    [ -d "$BUILD" ] || meson setup "$BUILD" "$ROOT" -Dbuildtype=release >/dev/null
    ninja -C "$BUILD" >/dev/null
fi
WSRR=$BUILD/tools/wsrr
ECHO=$BUILD/bench/wsecho
TMP=$(mktemp -d /tmp/wsrr-fuzz-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

. "$HERE/lib.sh" # free_port, wait_port
listening() {
    wait_port "$1" || { echo "fuzz.sh: nothing listens on 127.0.0.1:$1" >&2; exit 2; }
}

# the capture
EP=$(free_port) PP=$(free_port)
"$ECHO" --listen "127.0.0.1:$EP" >/dev/null 2>&1 &
PIDS+=($!)
"$WSRR" proxy --listen "127.0.0.1:$PP" --upstream "ws://127.0.0.1:$EP" --record "$TMP/echo.wsrr" \
    -q >/dev/null 2>&1 &
PROXY=$!
PIDS+=($PROXY)
listening "$EP"
listening "$PP"
"$PY" - "$PP" <<'EOF'
import asyncio, json, sys
import websockets

async def main():
    async with websockets.connect("ws://127.0.0.1:%s/chat" % sys.argv[1]) as ws:
        for n in (1, 2):
            await ws.send(json.dumps({"type": "say", "n": n, "text": "hello"}))
            await ws.recv()

asyncio.run(main())
EOF
kill -INT "$PROXY"
wait "$PROXY" || true

# the rows
echo "| mutations | --jobs | sessions/s (median of $REPS, ${SECONDS_PER_ROW} s each) |"
echo "|---|---|---|"
for row in $ROWS; do
    fam=${row%%:*} jobs=${row##*:}
    rates=()
    for _ in $(seq "$REPS"); do
        port=$(free_port)
        out=$("$WSRR" fuzz "$TMP/echo.wsrr" --target "ws://127.0.0.1:$port" \
            --server-cmd "exec $ECHO --listen 127.0.0.1:$port" --out "$TMP/out" \
            --time "$SECONDS_PER_ROW" --seed 1 --jobs "$jobs" --mutate "$fam" --json 2>/dev/null ||
            true)
        rates+=("$(printf '%s' "$out" | "$PY" -c 'import json,sys; print(round(json.load(sys.stdin)["runs_per_second"]))')")
        rm -rf "$TMP/out"
    done
    median=$(printf '%s\n' "${rates[@]}" | sort -n | sed -n "$(((REPS + 1) / 2))p")
    echo "| $fam | $jobs | $median (${rates[*]}) |"
done
