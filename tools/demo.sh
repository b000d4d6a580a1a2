#!/usr/bin/env bash
# demo.sh — the built-in demo (run by './dev demo'): what wsrr's capture tools
# do with a capture recorded from real peers. Every step prints the command a
# user would type. Usage: tools/demo.sh [PATH-TO-wsrr]
set -euo pipefail
cd "$(dirname "$0")/.."
WSRR=${1:-build/tools/wsrr}
export PATH="$(cd "$(dirname "$WSRR")" && pwd):$PATH"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
run() { printf '$ %s\n' "$*"; eval "$@"; }

say "1. A capture of three AI-agent runs; the backend closed one with 1011"
run wsrr verify captures/agent-1011.wsrr
run wsrr cat captures/agent-1011.wsrr --conn 1

say "2. Lossless JSON lines: the same records, editable with any JSON tool"
run "wsrr cat --jsonl captures/agent-1011.wsrr | sed -n '1p;25p'"
run "wsrr cat --jsonl captures/agent-1011.wsrr | wsrr import --jsonl - -o $tmp/copy.wsrr"
run "wsrr cat --jsonl $tmp/copy.wsrr | cmp - <(wsrr cat --jsonl captures/agent-1011.wsrr) && echo 'round trip: byte-identical'"
echo "# turn the backend's 1011 into a normal close, in the JSON lines, and import it:"
run "wsrr cat --jsonl captures/agent-1011.wsrr | sed 's/\"code\":1011,\"reason\":\"Internal error\"/\"code\":1000,\"reason\":\"edited\"/' | wsrr import --jsonl - -o $tmp/edited.wsrr"
run "wsrr cat $tmp/edited.wsrr --conn 1 --kind close"

say "3. A crash cuts a capture short: what survives"
size=$(stat -c %s captures/agent-1011.wsrr)
run "head -c $((size * 2 / 3)) captures/agent-1011.wsrr > $tmp/crashed.wsrr"
printf '$ wsrr verify %s\n' "$tmp/crashed.wsrr"
status=0
wsrr verify "$tmp/crashed.wsrr" || status=$?
echo "(exit status $status: 1 means damaged, with the records that are intact)"
run wsrr recover "$tmp/crashed.wsrr" -o "$tmp/recovered.wsrr"
run wsrr verify "$tmp/recovered.wsrr"

say "4. Malformed traffic is recorded with what was wrong, and the server's answer"
run "wsrr cat captures/violations.wsrr --kind frame | head -12"

say "done: 'wsrr --help' lists the verbs; docs/capture-format.md specifies the file"
