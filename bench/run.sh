#!/usr/bin/env bash
# bench/run.sh — the same WebSocket load through: no proxy, wsrr proxy,
# wsrr proxy --record (redaction on, the default), the same with
# permessage-deflate negotiated end to end, haproxy 2.6 (mode http: the
# Upgrade is parsed, then the connection is a tunnel) and mitmproxy's
# mitmdump in reverse mode writing flows (-w). Prints a markdown table and
# writes it, with the raw figures, to bench/results/<date>.md.
#
# usage: bench/run.sh [--quick] [--pin] [--rounds N] [--only "direct wsrr ..."] [--out FILE]
#   --pin       the proxy under test on the last CPU, the load generator and
#               the backend on the others (taskset): on 2 cores, three busy
#               processes left to the scheduler land in placements that
#               change the 64 KiB figure by up to 10% from run to run
#   BUILD=DIR   a release build (default /tmp/b-bench; configured and built
#               here with -Dbuildtype=release when missing)
# Needs python3 (the table), haproxy and mitmdump (apt-get install haproxy
# mitmproxy; a missing one is reported in the table, not fatal).
#
# Everything listens on free loopback ports; every process is started here
# and ended here by PID (trap), every load is bounded in time, and the whole
# run is stopped by a watchdog after MAX_TOTAL seconds.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BUILD=${BUILD:-/tmp/b-bench}
SCENARIOS="direct wsrr wsrr-rules wsrr-opcode wsrr-inspect wsrr-record wsrr-record-pmd haproxy mitmproxy"
OUT="" PIN=""
WARM=2 ECHO_S=3 RATE_S=10 ROUNDS=5 RATE_ROUNDS=3 BIG_S=3 IDLE_CONNS=9900 IDLE_HOLD=3 MAX_TOTAL=1200
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) WARM=1 ECHO_S=3 RATE_S=4 ROUNDS=1 RATE_ROUNDS=1 BIG_S=3 IDLE_CONNS=2000 IDLE_HOLD=1 ;;
    --only) SCENARIOS=$2; shift ;;
    --pin) PIN=1 ;;
    --rounds) ROUNDS=$2 RATE_ROUNDS=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
RATE=1000 ECHO_CONNS=50 BIG_CONNS=10 BIG_SIZE=65536

# One file descriptor per connection, two per proxied pair: every process
# started from here inherits the hard limit as its soft limit.
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
if [ "$IDLE_CONNS" -gt $(((NOFILE - 100) / 2)) ]; then
    IDLE_CONNS=$(((NOFILE - 100) / 2))
fi

if [ ! -x "$BUILD/bench/wsload" ] || [ ! -x "$BUILD/tools/wsrr" ]; then
    [ -d "$BUILD" ] || meson setup "$BUILD" "$ROOT" -Dbuildtype=release >/dev/null
    ninja -C "$BUILD" >/dev/null
fi
if [ "$(meson introspect --buildoptions "$BUILD" 2>/dev/null |
    python3 -c 'import json,sys;print([o["value"] for o in json.load(sys.stdin) if o["name"]=="buildtype"][0])' 2>/dev/null)" != release ]; then
    echo "run.sh: warning: $BUILD is not a release build (meson setup $BUILD -Dbuildtype=release)" >&2
fi
# --pin: the proxy alone on the last CPU we may use; the load and the
# backend share the others (direct: they alone, on those)
NCPU=$(nproc)
LOADRUN=() PIN_NOTE="not pinned"
if [ -n "$PIN" ]; then
    read -r -a CPUS <<<"$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
    if [ "${#CPUS[@]}" -lt 2 ] || ! command -v taskset >/dev/null; then
        echo "run.sh: --pin needs 2 CPUs and taskset (util-linux)" >&2
        exit 2
    fi
    PROXY_CPU=${CPUS[-1]}
    LOAD_CPUS=$(IFS=,; echo "${CPUS[*]:0:${#CPUS[@]}-1}")
    LOADRUN=(taskset -c "$LOAD_CPUS")
    PIN_NOTE="pinned: the proxy on CPU $PROXY_CPU, wsload and the backend on CPU $LOAD_CPUS"
fi
# pin PID CPUS: every thread of PID (with --pin)
pin() {
    [ -z "$PIN" ] && return 0
    if ! taskset -a -p -c "$2" "$1" >/dev/null 2>&1; then
        kill -0 "$1" 2>/dev/null || return 0 # it died: start_proxy reports that
        echo "run.sh: could not pin process $1 to CPU $2" >&2
        exit 1
    fi
}
WSLOAD=$BUILD/bench/wsload WSECHO=$BUILD/bench/wsecho WSRR=$BUILD/tools/wsrr

WORK=$(mktemp -d /tmp/wsrr-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
PIDS=()

cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    sleep 0.3
    for p in "${PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    [ -n "${WATCHDOG:-}" ] && kill "$WATCHDOG" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 1' INT TERM
# the watchdog: its sleep must not hold our stdout open (a pipe reader
# would wait for it), and it kills its own sleep when told to stop
(
    exec >/dev/null 2>&1
    trap 'kill "$s" 2>/dev/null; exit 0' TERM
    sleep "$MAX_TOTAL" &
    s=$!
    wait "$s"
    kill -TERM $$
) &
WATCHDOG=$!

. "$HERE/lib.sh" # free_port, wait_port

# stop PID: SIGTERM, up to 15 s to finish (wsrr finalises its capture), then KILL
stop() {
    local i
    kill -TERM "$1" 2>/dev/null || return 0
    for i in $(seq 150); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget "$1"
}

# forget PID: it has been reaped; never signal that number again
forget() {
    local p keep=()
    for p in "${PIDS[@]}"; do
        [ "$p" = "$1" ] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# ---- the backend, shared by every scenario ----
"$WSECHO" --listen 127.0.0.1:0 --max-time "$MAX_TOTAL" >"$WORK/wsecho.out" 2>"$WORK/wsecho.err" &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
pin "$ECHO_PID" "${LOAD_CPUS:-}"
for _ in $(seq 50); do
    grep -q listening "$WORK/wsecho.out" && break
    sleep 0.1
done
ECHO_PORT=$(sed -n 's/^wsecho listening on .*:\([0-9]*\)$/\1/p' "$WORK/wsecho.out")
[ -n "$ECHO_PORT" ] || { echo "run.sh: wsecho did not start" >&2; exit 1; }

HAPROXY_VERSION=$(haproxy -v 2>/dev/null | head -1 || true)
MITM_VERSION=$(mitmdump --version 2>/dev/null | head -1 || true)

# start_proxy SCENARIO TEST: start a fresh proxy for one test; sets PX_PID,
# PX_PORT, PX_CAPTURE (the file to measure, or ""); PX_PID is empty for
# direct. Returns 1 (with PX_WHY) when it cannot run.
start_proxy() {
    local sc=$1 test=$2
    PX_PID="" PX_CAPTURE="" PX_WHY=""
    if [ "$sc" = direct ]; then
        PX_PORT=$ECHO_PORT
        return 0
    fi
    PX_PORT=$(free_port)
    local up=127.0.0.1:$ECHO_PORT
    case "$sc" in
    wsrr)
        "$WSRR" proxy -q --listen "127.0.0.1:$PX_PORT" --upstream "ws://$up" \
            2>>"$WORK/$sc.log" &
        ;;
    wsrr-rules | wsrr-opcode | wsrr-inspect)
        # wsrr-rules: rules loaded, none for these connections (another
        # path): they cost nothing. wsrr-opcode: a rule looked at for every
        # message that does not read payloads (every message is cut out and
        # held until complete). wsrr-inspect: a rule that reads every
        # payload and never matches: the cost of looking at every byte.
        local rules=$HERE/rules/contains.json
        [ "$sc" = wsrr-rules ] && rules=$HERE/rules/other-path.json
        [ "$sc" = wsrr-opcode ] && rules=$HERE/rules/opcode.json
        "$WSRR" proxy -q --listen "127.0.0.1:$PX_PORT" --upstream "ws://$up" \
            --rules "$rules" 2>>"$WORK/$sc.log" &
        ;;
    wsrr-record | wsrr-record-pmd)
        PX_CAPTURE=$WORK/$sc-$test.wsrr
        "$WSRR" proxy -q --listen "127.0.0.1:$PX_PORT" --upstream "ws://$up" \
            --record "$PX_CAPTURE" --force 2>>"$WORK/$sc.log" &
        ;;
    haproxy)
        if ! command -v haproxy >/dev/null; then
            PX_WHY="haproxy is not installed (apt-get install haproxy)"
            return 1
        fi
        # maxconn: haproxy needs 2 fds per connection plus a few, under NOFILE
        cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn $(((NOFILE - 20) / 2))
    nbthread 1
defaults
    mode http
    maxconn $(((NOFILE - 20) / 2))
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
frontend fe
    bind 127.0.0.1:$PX_PORT
    default_backend be
backend be
    server echo $up
EOF
        haproxy -db -f "$WORK/haproxy.cfg" 2>>"$WORK/$sc.log" &
        ;;
    mitmproxy)
        if ! command -v mitmdump >/dev/null; then
            PX_WHY="mitmdump is not installed (apt-get install mitmproxy)"
            return 1
        fi
        PX_CAPTURE=$WORK/$sc-$test.flows
        mitmdump -q --mode "reverse:http://$up" --listen-host 127.0.0.1 -p "$PX_PORT" \
            -w "$PX_CAPTURE" >>"$WORK/$sc.log" 2>&1 &
        ;;
    esac
    PX_PID=$!
    PIDS+=("$PX_PID")
    pin "$PX_PID" "${PROXY_CPU:-}"
    if ! wait_port "$PX_PORT" "$PX_PID"; then
        PX_WHY="$sc did not start: $(tail -c 300 "$WORK/$sc.log" | tr '\n|' '  ')"
        stop "$PX_PID"
        return 1
    fi
    return 0
}

# record SCENARIO TEST JSON EXTRA: one result line
record() {
    python3 - "$1" "$2" "$3" "$4" >>"$RESULTS" <<'EOF'
import json, sys
sc, test, line, extra = sys.argv[1:5]
try:
    r = json.loads(line)
except ValueError:
    r = {"error": line.strip()[-300:] or "no output"}
r.update(json.loads(extra or "{}"))
r["scenario"], r["test"] = sc, test
print(json.dumps(r))
EOF
}

# run_test SCENARIO TEST
run_test() {
    local sc=$1 test=$2 out extra pids deflate="" rss0 rss1 wl
    if ! start_proxy "$sc" "$test"; then
        record "$sc" "$test" "" "$(python3 -c 'import json,sys;print(json.dumps({"skipped":sys.argv[1]}))' "$PX_WHY")"
        return 0
    fi
    pids="--pid $ECHO_PID"
    [ -n "$PX_PID" ] && pids="--pid $PX_PID --pid $ECHO_PID"
    [ "$sc" = wsrr-record-pmd ] && deflate=--deflate
    local url=ws://127.0.0.1:$PX_PORT/bench ct=60
    [ "$sc" = mitmproxy ] && ct=180
    extra="{}"
    case "$test" in
    echo64)
        out=$("${LOADRUN[@]}" "$WSLOAD" --json --url "$url" --mode echo --conns $ECHO_CONNS --size 64 \
            --warmup "$WARM" --duration "$ECHO_S" --connect-timeout $ct $deflate $pids \
            2>>"$WORK/wsload.err" || true)
        ;;
    rate)
        out=$("${LOADRUN[@]}" "$WSLOAD" --json --url "$url" --mode rate --rate $RATE --conns $ECHO_CONNS \
            --size 64 --warmup "$WARM" --duration "$RATE_S" --connect-timeout $ct $deflate \
            $pids 2>>"$WORK/wsload.err" || true)
        ;;
    big)
        out=$("${LOADRUN[@]}" "$WSLOAD" --json --url "$url" --mode echo --conns $BIG_CONNS --size $BIG_SIZE \
            --warmup "$WARM" --duration "$BIG_S" --connect-timeout $ct $deflate $pids \
            2>>"$WORK/wsload.err" || true)
        ;;
    idle)
        local who=${PX_PID:-$ECHO_PID}
        rss0=$(rss_kb "$who")
        wl=$WORK/idle-$sc.err
        : >"$wl"
        "${LOADRUN[@]}" "$WSLOAD" --json --url "$url" --mode idle --conns "$IDLE_CONNS" --hold "$IDLE_HOLD" \
            --connect-timeout $ct $deflate >"$WORK/idle.out" 2>"$wl" &
        local lp=$!
        PIDS+=("$lp")
        rss1=0
        while kill -0 "$lp" 2>/dev/null; do
            if grep -q '^established' "$wl"; then
                sleep 0.5 # let the last upgrades settle
                rss1=$(rss_kb "$who")
                break
            fi
            sleep 0.1
        done
        wait "$lp" 2>/dev/null || true
        forget "$lp"
        out=$(cat "$WORK/idle.out")
        local of=backend
        [ -n "$PX_PID" ] && of=proxy
        extra="{\"rss_before_kb\":$rss0,\"rss_after_kb\":$rss1,\"rss_of\":\"$of\"}"
        cat "$wl" >>"$WORK/wsload.err"
        ;;
    esac
    if [ -n "$PX_PID" ]; then
        stop "$PX_PID"
    fi
    if [ -n "$PX_CAPTURE" ] && [ -f "$PX_CAPTURE" ]; then
        extra=$(python3 -c 'import json,sys,os; e=json.loads(sys.argv[1]); e["capture_bytes"]=os.path.getsize(sys.argv[2]); print(json.dumps(e))' "$extra" "$PX_CAPTURE")
        rm -f "$PX_CAPTURE"
    fi
    extra=$(python3 -c 'import json,sys; e=json.loads(sys.argv[1]); e["round"]=int(sys.argv[2]); print(json.dumps(e))' "$extra" "$ROUND")
    record "$sc" "$test" "$out" "$extra"
}

echo "wsrr proxy benchmark: backend wsecho on 127.0.0.1:$ECHO_PORT, open-file limit $NOFILE" >&2
T0=$(date +%s)
# This VM's speed drifts by up to 2x within a minute (other tenants): every
# timed test runs in rounds, each round through every scenario in turn (in
# reverse order every other round, so no scenario always comes first), so a
# slow spell hits all of them; the table takes the medians.
REVERSED=$(echo "$SCENARIOS" | tr ' ' '\n' | tac | tr '\n' ' ')
for test in echo64 big rate; do
    n=$ROUNDS
    [ "$test" = rate ] && n=$RATE_ROUNDS
    for ROUND in $(seq "$n"); do
        order=$SCENARIOS
        [ $((ROUND % 2)) -eq 0 ] && order=$REVERSED
        for sc in $order; do
            # a 64 KiB message of repeated JSON compresses to almost nothing:
            # the permessage-deflate row measures the 64-byte load only
            [ "$sc" = wsrr-record-pmd ] && [ "$test" = big ] && continue
            echo "  $test round $ROUND: $sc ..." >&2
            run_test "$sc" "$test"
        done
    done
done
ROUND=1
for sc in $SCENARIOS; do
    echo "  idle: $sc ..." >&2
    run_test "$sc" idle
done
T1=$(date +%s)
if grep -qv '^established' "$WORK/wsload.err" 2>/dev/null; then
    echo "wsload reported (first lines):" >&2
    grep -v '^established' "$WORK/wsload.err" | head -20 >&2
fi
for f in "$WORK"/*.log; do
    [ -f "$f" ] && grep -qv '\[NOTICE\]' "$f" || continue
    echo "$(basename "$f" .log) logged (first lines):" >&2
    grep -v '\[NOTICE\]' "$f" | head -10 >&2
done

# ---- the table ----
DATE=$(date +%F)
if [ -z "$OUT" ]; then
    mkdir -p "$HERE/results"
    OUT=$HERE/results/$DATE.md
    [ -e "$OUT" ] && OUT=$HERE/results/$DATE-$(date +%H%M%S).md
fi
python3 - "$RESULTS" "$OUT" "$((T1 - T0))" "$HAPROXY_VERSION" "$MITM_VERSION" \
    "$IDLE_CONNS" "$WARM" "$ECHO_S" "$RATE_S" "$BIG_S" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "$(uname -r)" "$NCPU" "$ROUNDS/$RATE_ROUNDS" "$PIN_NOTE" <<'EOF'
import json, sys
(res, out, secs, hav, mitv, idle_n, warm, echo_s, rate_s, big_s, rev, kernel,
 ncpu, rounds, pin_note) = sys.argv[1:16]
rows = {}
order = []
for line in open(res):
    r = json.loads(line)
    if r["scenario"] not in rows:
        rows[r["scenario"]] = {}
        order.append(r["scenario"])
    rows[r["scenario"]].setdefault(r["test"] + "_rounds", []).append(r)
    rows[r["scenario"]][r["test"]] = r

def median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2

def proxy_cpu(t):
    """CPU seconds of the proxy (the first --pid) over the measured time."""
    c = t.get("cpu_s", {})
    keys = [k for k in c if k not in ("self", "host_busy")]
    return c[keys[0]] if len(keys) == 2 else None

# echo64, big: the round with the median msgs/s; the proxy's CPU per message
# is the median over the rounds of its own
for sc, t in rows.items():
    for test in ("echo64", "big"):
        good = [r for r in t.get(test + "_rounds", []) if "msgs_per_s" in r]
        if not good:
            continue
        good.sort(key=lambda r: r["msgs_per_s"])
        m = dict(good[(len(good) - 1) // 2])
        per = [proxy_cpu(r) / r["messages"] for r in good
               if proxy_cpu(r) and r.get("messages")]
        if per:
            m["cpu_per_msg"] = median(per)
        m["rounds"] = len(good)
        t[test] = m

# rate: the median of each percentile over the rounds that ran
for sc, t in rows.items():
    good = [r for r in t.get("rate_rounds", []) if "lat_us" in r]
    if good:
        m = dict(good[-1])
        m["lat_us"] = {k: median([r["lat_us"][k] for r in good]) for k in good[0]["lat_us"]}
        m["unanswered"] = sum(r.get("unanswered", 0) for r in good)
        m["conn_errors"] = sum(r.get("conn_errors", 0) for r in good)
        m["bad_echo"] = sum(r.get("bad_echo", 0) for r in good)
        m["rounds"] = len(good)
        t["rate"] = m

names = {
    "direct": "direct (no proxy)",
    "wsrr": "wsrr proxy",
    "wsrr-rules": "wsrr proxy --rules (none for these connections)",
    "wsrr-opcode": "wsrr proxy --rules (an opcode rule on every message, none matches)",
    "wsrr-inspect": "wsrr proxy --rules (reads every message, none matches)",
    "wsrr-record": "wsrr proxy --record",
    "wsrr-record-pmd": "wsrr proxy --record, permessage-deflate",
    "haproxy": "haproxy 2.6 (mode http, tunnel after the upgrade)",
    "mitmproxy": "mitmdump --mode reverse -w",
}

def why(t):
    if t is None:
        return "not run"
    if "skipped" in t:
        return "cannot run: " + t["skipped"]
    if "error" in t:
        return "failed: " + t["error"]
    return None

def problems(t):
    p = []
    if t.get("failed"):
        p.append("%d connections failed" % t["failed"])
    if t.get("conn_errors"):
        p.append("%d connections lost" % t["conn_errors"])
    if t.get("bad_echo"):
        p.append("%d wrong echoes" % t["bad_echo"])
    if t.get("unanswered"):
        p.append("%d unanswered" % t["unanswered"])
    if t.get("lost"):
        p.append("%d lost while held" % t["lost"])
    return p

direct = rows.get("direct", {}).get("rate")
notes = []
head = ("| scenario | msgs/s, 64 B echo, 50 conns | proxy msgs per CPU-s | proxy CPU s per M msgs "
        "| added latency p50 / p99 / p99.9 at %s msgs/s (us) | RSS per idle conn (KiB) "
        "| capture B per 64 B round trip | MB/s, 64 KiB echo "
        "| proxy CPU us per 64 KiB round trip |" % "1,000")
lines = [head, "|" + "---|" * 9]
for sc in order:
    t = rows[sc]
    cells = [names.get(sc, sc)]
    e = t.get("echo64")
    w = why(e)
    if w:
        cells += [w, "", ""]
    else:
        cells.append("%.0f" % e["msgs_per_s"])
        cpm = e.get("cpu_per_msg")
        if sc == "direct" or not cpm:
            cells += ["—", "—"]
        else:
            cells.append("%.0f" % (1 / cpm))
            cells.append("%.1f" % (cpm * 1e6))
        for p in problems(e):
            notes.append("%s, 64 B echo: %s" % (names.get(sc, sc), p))
    r = t.get("rate")
    w = why(r)
    if w:
        cells.append(w)
    elif sc == "direct":
        l = r["lat_us"]
        cells.append("(direct: %.0f / %.0f / %.0f)" % (l["p50"], l["p99"], l["p999"]))
    elif direct and not why(direct):
        l, d = r["lat_us"], direct["lat_us"]
        cells.append("%+.0f / %+.0f / %+.0f" % (l["p50"] - d["p50"], l["p99"] - d["p99"],
                                               l["p999"] - d["p999"]))
    else:
        cells.append("no direct baseline")
    if r and not why(r):
        for p in problems(r):
            notes.append("%s, 1,000 msgs/s: %s" % (names.get(sc, sc), p))
    i = t.get("idle")
    w = why(i)
    if w:
        cells.append(w)
    elif not i.get("established") or not i.get("rss_after_kb"):
        cells.append("no connection held (%s)" % ", ".join(problems(i)) if problems(i) else "—")
    else:
        per = (i["rss_after_kb"] - i["rss_before_kb"]) / i["established"]
        label = "%.1f at %d" % (per, i["established"])
        if sc == "direct":
            label = "(backend: %s)" % label
        cells.append(label)
        for p in problems(i):
            notes.append("%s, idle: %s" % (names.get(sc, sc), p))
    if e and not why(e) and "capture_bytes" in e and e.get("total_messages"):
        cells.append("%.1f" % (e["capture_bytes"] / e["total_messages"]))
    else:
        cells.append("—")
    b = t.get("big")
    w = why(b)
    if sc == "wsrr-record-pmd" and b is None:
        cells += ["—", "—"]
    elif w:
        cells += [w, ""]
    else:
        cells.append("%.0f" % b["mb_per_s"])
        cpm = b.get("cpu_per_msg")
        cells.append("—" if sc == "direct" or not cpm else "%.1f" % (cpm * 1e6))
        for p in problems(b):
            notes.append("%s, 64 KiB echo: %s" % (names.get(sc, sc), p))
    lines.append("| " + " | ".join(cells) + " |")

# raw figures
raw = ["| scenario | test | msgs/s | p50 | p99 | p99.9 | max (us) | CPU s: proxy / backend / wsload / whole machine |",
       "|" + "---|" * 8]
for sc in order:
    tests = []
    for test in ("echo64", "big", "rate"):
        tests += [("%s #%d" % (test, r.get("round", i + 1)), r)
                  for i, r in enumerate(rows[sc].get(test + "_rounds", []))]
    tests += [("idle", rows[sc].get("idle"))]
    for test, t in tests:
        if not t or why(t):
            continue
        if test == "idle":
            raw.append("| %s | idle %d | | | | | | RSS %s KiB -> %s KiB (%s), connected in %.1f s |" % (
                sc, t.get("established", 0), t.get("rss_before_kb"), t.get("rss_after_kb"),
                t.get("rss_of"), t.get("connect_s", 0)))
            continue
        c = t.get("cpu_s", {})
        pids = [k for k in c if k not in ("self", "host_busy")]
        cpu = " / ".join("%.2f" % c[k] for k in pids)
        if len(pids) == 1:
            cpu = "— / " + cpu
        cpu += " / %.2f / %.2f" % (c.get("self", 0), c.get("host_busy", 0))
        l = t["lat_us"]
        raw.append("| %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %s |" % (
            sc, test, t["msgs_per_s"], l["p50"], l["p99"], l["p999"], l["max"], cpu))

text = "\n".join(lines) + "\n"
if notes:
    text += "\n" + "\n".join("- " + n for n in notes) + "\n"
doc = ["# wsrr proxy benchmark, %s" % __import__("datetime").date.today().isoformat(), "",
       "bench/run.sh at %s, %s cores (%s), Linux %s, %s s in all. Loads: 64 B text echo over 50 "
       "connections (closed loop, %s s warmup + %s s); 1,000 msgs/s open loop over 50 "
       "connections (%s s, latency from each message's due time); 64 KiB text echo over 10 "
       "connections (%s s); %s idle connections. Each timed load ran in rounds (echo and "
       "64 KiB / rate: %s), every round through all scenarios in turn, every other round "
       "in reverse order (this VM's speed drifts); the table shows the "
       "round with the median msgs/s, the median over the rounds of the proxy's CPU per "
       "message, and the median of each latency percentile. A message is one round trip "
       "(sent, echoed). Added latency is the scenario's percentile minus the direct one's. "
       "CPU: utime+stime from /proc/PID/stat over the measured time; 'whole machine' is "
       "tick-sampled /proc/stat (busy seconds over both cores, anyone's), a hint of "
       "foreign load." % (rev, ncpu, pin_note, kernel, secs, warm, echo_s, rate_s, big_s, idle_n,
                          rounds), "",
       "Versions: %s; %s." % (hav or "haproxy missing", mitv or "mitmproxy missing"), "",
       text, "## Raw figures", "", "\n".join(raw), ""]
open(out, "w").write("\n".join(doc))
print(text, end="")
print("\n(written to %s)" % out)
EOF
