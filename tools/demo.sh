#!/usr/bin/env bash
# demo.sh — the built-in demo (run by './dev demo'): `wsrr demo` (an agent
# backend whose runs race, recorded through the proxy, the race replayed
# until it comes back every time, the fixed backend checked, the backend's
# side served), then the same crash made on purpose by a fault rule, then
# what the capture tools do with it. Every step prints the command a user
# would type. Usage: tools/demo.sh [PATH-TO-wsrr]
set -euo pipefail
cd "$(dirname "$0")/.."
WSRR=${1:-build/tools/wsrr}
export PATH="$(cd "$(dirname "$WSRR")" && pwd):$PATH"
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
PY=/usr/bin/python3
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
run() { printf '$ %s\n' "$*"; eval "$@"; }

# steps 1-4: wsrr's own demo (record the race, replay it, check the fixed
# backend, serve it); it ends with the reproduction rate it measured
wsrr demo
AGENT="$(cd "$(dirname "$WSRR")" && pwd)/wsrr-demo-agent"
bport=$(free_port)
"$AGENT" backend "$bport" >/dev/null & pids+=($!)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$bport") 2>/dev/null && break; sleep 0.1; done

say "5. Break it on purpose: a fault rule makes the backend appear to crash"
echo "# alone, a run completes; with this rule (docs/rules.md) the proxy replaces the"
echo "# second tool_executing event by the close a crashing handler sends"
cat >"$tmp/rules.json" <<'EOF'
{"seed": 7, "rules": [{"name": "crash-on-second-tool",
  "match": {"direction": "server", "json": {"type": "tool_executing", "step": 2}},
  "action": {"close": {"code": 1011, "reason": "Internal error", "to": "client"}}}]}
EOF
run cat "$tmp/rules.json"
fport=$(free_port)
printf '$ wsrr proxy --listen 127.0.0.1:%s --upstream ws://127.0.0.1:%s --rules %s --record %s &\n' \
  "$fport" "$bport" "$tmp/rules.json" "$tmp/faults.wsrr"
wsrr proxy --listen "127.0.0.1:$fport" --upstream "ws://127.0.0.1:$bport" \
  --rules "$tmp/rules.json" --record "$tmp/faults.wsrr" 2>"$tmp/proxy2.log" & proxy=$!
pids+=($proxy)
for _ in $(seq 50); do grep -q listening "$tmp/proxy2.log" 2>/dev/null && break; sleep 0.1; done
run wsrr-demo-agent client "ws://127.0.0.1:$fport/v1/agent" 1
kill -INT "$proxy"
wait "$proxy" || true
echo "# the capture keeps what the backend sent, and says what the rule did instead"
run "wsrr cat $tmp/faults.wsrr --kind frame --dir server | tail -4"
run wsrr cat "$tmp/faults.wsrr" --kind fault

say "6. The same story in the sample capture captures/agent-1011.wsrr, connection 1"
run wsrr cat captures/agent-1011.wsrr --conn 1

say "7. Lossless JSON lines: the same records, editable with any JSON tool"
run "wsrr cat --jsonl captures/agent-1011.wsrr | sed -n '1p;25p'"
run "wsrr cat --jsonl captures/agent-1011.wsrr | wsrr import --jsonl - -o $tmp/copy.wsrr"
run "wsrr cat --jsonl $tmp/copy.wsrr | cmp - <(wsrr cat --jsonl captures/agent-1011.wsrr) && echo 'round trip: byte-identical'"
echo "# turn the backend's 1011 into a normal close, in the JSON lines, and import it:"
run "wsrr cat --jsonl captures/agent-1011.wsrr | sed 's/\"code\":1011,\"reason\":\"Internal error\"/\"code\":1000,\"reason\":\"edited\"/' | wsrr import --jsonl - -o $tmp/edited.wsrr"
run "wsrr cat $tmp/edited.wsrr --conn 1 --kind close"

say "8. A crash cuts a capture short: what survives"
size=$(stat -c %s captures/agent-1011.wsrr)
run "head -c $((size * 2 / 3)) captures/agent-1011.wsrr > $tmp/crashed.wsrr"
printf '$ wsrr verify %s\n' "$tmp/crashed.wsrr"
status=0
wsrr verify "$tmp/crashed.wsrr" || status=$?
echo "(exit status $status: 1 means damaged, with the records that are intact)"
run wsrr recover "$tmp/crashed.wsrr" -o "$tmp/recovered.wsrr"
run wsrr verify "$tmp/recovered.wsrr"

say "9. Malformed traffic is recorded with what was wrong, and the server's answer"
run "wsrr cat captures/violations.wsrr --kind frame | head -12"

say "done: 'wsrr --help' lists the verbs; docs/replay.md explains replay, docs/rules.md the faults, docs/capture-format.md the file"
