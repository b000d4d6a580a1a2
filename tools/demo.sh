#!/usr/bin/env bash
# demo.sh — the built-in demo (run by './dev demo'): a small agent backend
# behind `wsrr proxy`, a scripted client whose runs race, the capture shown,
# the race replayed until it comes back every time, the same crash made on
# purpose by a fault rule, then what the capture tools do with it. Every
# step prints the command a user would type. Usage: tools/demo.sh [PATH-TO-wsrr]
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

say "1. Record: the proxy in front of an agent backend, three runs, one of them fails"
bport=$(free_port)
pport=$(free_port)
echo "# an agent backend of ours (tools/demo/agent.py) on port $bport; two runs of the"
echo "# same user overlap and the backend answers one of them with 1011"
$PY tools/demo/agent.py backend "$bport" & pids+=($!)
printf '$ wsrr proxy --listen 127.0.0.1:%s --upstream ws://127.0.0.1:%s --record %s &\n' \
  "$pport" "$bport" "$tmp/demo.wsrr"
wsrr proxy --listen "127.0.0.1:$pport" --upstream "ws://127.0.0.1:$bport" \
  --record "$tmp/demo.wsrr" 2>"$tmp/proxy.log" & proxy=$!
pids+=($proxy)
for _ in $(seq 50); do grep -q listening "$tmp/proxy.log" 2>/dev/null && break; sleep 0.1; done
run $PY tools/demo/agent.py client "ws://127.0.0.1:$pport/v1/agent"
kill -INT "$proxy"
wait "$proxy" || true
echo "# the proxy's log: one line per connection, a summary at exit"
sed 's/^/  /' "$tmp/proxy.log"
run wsrr verify "$tmp/demo.wsrr"
run "wsrr cat $tmp/demo.wsrr --kind frame | head -8"
run wsrr cat "$tmp/demo.wsrr" --kind close

say "2. Replay: the race comes back on every run, not a few times in ten"
echo "# every connection of the capture again, each client message sent once the server"
echo "# messages that preceded it in the capture (on any connection) have come back"
printf '$ wsrr replay %s --target ws://127.0.0.1:%s --reproduce --repeat 10\n' "$tmp/demo.wsrr" "$bport"
wsrr replay "$tmp/demo.wsrr" --target "ws://127.0.0.1:$bport" --reproduce --repeat 10 || true
echo "# the same capture against the backend with the bug fixed (per-run state): what CI runs"
fixport=$(free_port)
$PY tools/demo/agent.py backend "$fixport" --fixed & pids+=($!)
for _ in $(seq 50); do $PY -c "import socket; socket.create_connection(('127.0.0.1', $fixport), 0.2)" 2>/dev/null && break; sleep 0.1; done
run wsrr replay "$tmp/demo.wsrr" --target "ws://127.0.0.1:$fixport" --check --timeout 1000
echo "(exit status 0: no 1011, no divergence; against the buggy backend --check exits 1)"
echo "# and with no backend at all: wsrr serve plays the backend's side of the capture,"
echo "# so the client fails as it did on staging (same run, same code, same reason)"
sport=$(free_port)
printf '$ wsrr serve %s --listen 127.0.0.1:%s --exit-after 3 &\n' "$tmp/demo.wsrr" "$sport"
wsrr serve "$tmp/demo.wsrr" --listen "127.0.0.1:$sport" --exit-after 3 2>"$tmp/serve.log" & pids+=($!)
for _ in $(seq 50); do grep -q listening "$tmp/serve.log" 2>/dev/null && break; sleep 0.1; done
run $PY tools/demo/agent.py client "ws://127.0.0.1:$sport/v1/agent"

say "3. Break it on purpose: a fault rule makes the backend appear to crash"
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
run $PY tools/demo/agent.py client "ws://127.0.0.1:$fport/v1/agent" 1
kill -INT "$proxy"
wait "$proxy" || true
echo "# the capture keeps what the backend sent, and says what the rule did instead"
run "wsrr cat $tmp/faults.wsrr --kind frame --dir server | tail -4"
run wsrr cat "$tmp/faults.wsrr" --kind fault

say "4. The same story in the sample capture captures/agent-1011.wsrr, connection 1"
run wsrr cat captures/agent-1011.wsrr --conn 1

say "5. Lossless JSON lines: the same records, editable with any JSON tool"
run "wsrr cat --jsonl captures/agent-1011.wsrr | sed -n '1p;25p'"
run "wsrr cat --jsonl captures/agent-1011.wsrr | wsrr import --jsonl - -o $tmp/copy.wsrr"
run "wsrr cat --jsonl $tmp/copy.wsrr | cmp - <(wsrr cat --jsonl captures/agent-1011.wsrr) && echo 'round trip: byte-identical'"
echo "# turn the backend's 1011 into a normal close, in the JSON lines, and import it:"
run "wsrr cat --jsonl captures/agent-1011.wsrr | sed 's/\"code\":1011,\"reason\":\"Internal error\"/\"code\":1000,\"reason\":\"edited\"/' | wsrr import --jsonl - -o $tmp/edited.wsrr"
run "wsrr cat $tmp/edited.wsrr --conn 1 --kind close"

say "6. A crash cuts a capture short: what survives"
size=$(stat -c %s captures/agent-1011.wsrr)
run "head -c $((size * 2 / 3)) captures/agent-1011.wsrr > $tmp/crashed.wsrr"
printf '$ wsrr verify %s\n' "$tmp/crashed.wsrr"
status=0
wsrr verify "$tmp/crashed.wsrr" || status=$?
echo "(exit status $status: 1 means damaged, with the records that are intact)"
run wsrr recover "$tmp/crashed.wsrr" -o "$tmp/recovered.wsrr"
run wsrr verify "$tmp/recovered.wsrr"

say "7. Malformed traffic is recorded with what was wrong, and the server's answer"
run "wsrr cat captures/violations.wsrr --kind frame | head -12"

say "done: 'wsrr --help' lists the verbs; docs/replay.md explains replay, docs/rules.md the faults, docs/capture-format.md the file"
