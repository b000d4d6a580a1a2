#!/usr/bin/env bash
# bench/ab.sh — interleaved A/B runs of wsrr proxy configurations under one
# wsload echo load: a proxy per configuration, all started up front, the
# rounds going through them in turn (every other round in reverse order).
# Prints each round and the medians, with the difference from the first
# configuration.
#
# usage: bench/ab.sh [options] CONFIG...
#   CONFIG          "-" for the proxy without rules, or a rules file (JSON;
#                   bench/rules/ has those of run.sh: other-path.json,
#                   opcode.json, contains.json)
#   --size BYTES    message payload size (65536)
#   --conns N       connections (10)
#   --duration SEC  measured seconds per round (3), after 1 s of warmup
#   --rounds N      rounds (5)
#   --pin WHAT      all: the proxies on the last CPU, wsload and the backend
#                   on the others; proxy: only the proxies; none (default)
#   BUILD=DIR       a release build (default /tmp/b-bench)
# Every process is started here and ended here by PID; the backend ends by
# itself after 20 minutes at most.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BUILD=${BUILD:-/tmp/b-bench}
SIZE=65536 CONNS=10 DUR=3 ROUNDS=5 PIN=none
CONFIGS=()
while [ $# -gt 0 ]; do
    case "$1" in
    --size) SIZE=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --duration) DUR=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --pin) PIN=$2; shift ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    -) CONFIGS+=(-) ;;
    -*) echo "ab.sh: unknown option $1" >&2; exit 2 ;;
    *) CONFIGS+=("$1") ;;
    esac
    shift
done
case "$PIN" in all | proxy | none) ;; *) echo "ab.sh: --pin takes all, proxy or none" >&2; exit 2 ;; esac
[ ${#CONFIGS[@]} -ge 1 ] || { echo "ab.sh: no configuration given (- or a rules file)" >&2; exit 2; }
for c in "${CONFIGS[@]}"; do
    [ "$c" = - ] || [ -r "$c" ] || { echo "ab.sh: $c: no such rules file" >&2; exit 2; }
done
if [ ! -x "$BUILD/bench/wsload" ] || [ ! -x "$BUILD/tools/wsrr" ]; then
    [ -d "$BUILD" ] || meson setup "$BUILD" "$ROOT" -Dbuildtype=release >/dev/null
    ninja -C "$BUILD" >/dev/null
fi

PXRUN=() LDRUN=()
if [ "$PIN" != none ]; then
    read -r -a CPUS <<<"$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
    [ "${#CPUS[@]}" -ge 2 ] && command -v taskset >/dev/null ||
        { echo "ab.sh: --pin needs 2 CPUs and taskset (util-linux)" >&2; exit 2; }
    PXRUN=(taskset -c "${CPUS[-1]}")
    [ "$PIN" = all ] && LDRUN=(taskset -c "$(IFS=,; echo "${CPUS[*]:0:${#CPUS[@]}-1}")")
fi

WORK=$(mktemp -d /tmp/wsrr-ab.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

. "$HERE/lib.sh" # free_port, wait_port
listening() {
    wait_port "$1" || { echo "ab.sh: nothing listens on port $1" >&2; exit 1; }
}

EPORT=$(free_port)
"${LDRUN[@]}" "$BUILD/bench/wsecho" --listen "127.0.0.1:$EPORT" --max-time 1200 >/dev/null &
PIDS+=($!)
listening "$EPORT"
PORTS=() PXPIDS=()
for c in "${CONFIGS[@]}"; do
    port=$(free_port)
    rules=()
    [ "$c" = - ] || rules=(--rules "$c")
    "${PXRUN[@]}" "$BUILD/tools/wsrr" proxy -q --listen "127.0.0.1:$port" \
        --upstream "ws://127.0.0.1:$EPORT" "${rules[@]}" 2>>"$WORK/proxy.log" &
    PIDS+=($!)
    PXPIDS+=($!)
    PORTS+=("$port")
    listening "$port"
done

echo "ab.sh: ${SIZE} B echo over $CONNS connections, $ROUNDS rounds of $DUR s, pin: $PIN"
n=${#CONFIGS[@]}
for r in $(seq "$ROUNDS"); do
    order=$(seq 0 $((n - 1)))
    [ $((r % 2)) -eq 0 ] && order=$(seq $((n - 1)) -1 0)
    for i in $order; do
        "${LDRUN[@]}" "$BUILD/bench/wsload" --json --url "ws://127.0.0.1:${PORTS[$i]}/ab" \
            --size "$SIZE" --conns "$CONNS" --warmup 1 --duration "$DUR" \
            --pid "${PXPIDS[$i]}" 2>>"$WORK/wsload.err" |
            python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r["config"]=int(sys.argv[1]); print(json.dumps(r))' "$i" \
            >>"$WORK/results.jsonl" || echo "ab.sh: round $r of ${CONFIGS[$i]} failed" >&2
    done
done

python3 - "$WORK/results.jsonl" "${CONFIGS[@]}" <<'EOF'
import json, sys
res, names = sys.argv[1], sys.argv[2:]
rows, dropped = [], 0
for l in open(res):
    r = json.loads(l)
    c = r.get("cpu_s", {})
    # a round with errors, or without the proxy's CPU, is not a figure
    if (r.get("conn_errors") or r.get("bad_echo") or r.get("failed") or not r.get("messages")
            or min([v for k, v in c.items() if k not in ("self", "host_busy")] or [-1]) < 0):
        dropped += 1
    else:
        rows.append(r)
if dropped:
    print("ab.sh: %d round(s) left out: connection errors, wrong echoes or no CPU figure" % dropped)
def proxy_us(r):
    c = r["cpu_s"]
    k = [k for k in c if k not in ("self", "host_busy")][0]
    return c[k] * 1e6 / r["messages"] if r["messages"] else float("nan")
def med(v):
    v = sorted(v)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2 if v else float("nan")
print("| config | msgs/s per round | median msgs/s | MB/s | p50 us | proxy CPU us per round trip |")
print("|---|---|---|---|---|---|")
base = None
for i, name in enumerate(names):
    rs = [r for r in rows if r["config"] == i]
    m = med([r["msgs_per_s"] for r in rs])
    cpu = med([proxy_us(r) for r in rs])
    if base is None:
        base = (m, cpu)
    d = "" if i == 0 else " (%+.1f%%)" % (100 * (m / base[0] - 1))
    dc = "" if i == 0 else " (%+.1f%%)" % (100 * (cpu / base[1] - 1))
    print("| %s | %s | %.0f%s | %.0f | %.0f | %.2f%s |" % (
        "no rules" if name == "-" else name, " ".join("%.0f" % r["msgs_per_s"] for r in rs),
        m, d, med([r["mb_per_s"] for r in rs]), med([r["lat_us"]["p50"] for r in rs]), cpu, dc))
EOF
