#!/usr/bin/env python3
"""wsrr fuzz and wsrr shrink against real servers.

- From a capture of a *passing* session (race_client.py run sequentially
  through `wsrr proxy`), fuzzing with schedule mutations against
  race_backend.py, started by --server-cmd, finds both planted race bugs
  within a bounded number of runs; each saved case is a capture that
  `wsrr replay --reproduce` reproduces against the buggy backend and not
  against the fixed one (so it is the planted bug, not another failure).
- Shrinking bug A's case leaves two connections and only the client
  messages the bug needs (a run on each, and the first run's tool_results up
  to the one that crashes: 3 or 4), and the result reproduces.
- The same seed gives the same mutations, run by run; another seed does not.
- A server that dies of SIGSEGV, or writes a sanitizer report, on a mutated
  message is a failure of its own kind, restarted, and its log is kept.
- Frame mutations reach the wire: a websockets server closes with 1002/1007
  exactly on the runs whose frames were made invalid.
- The demo backend (wsrr-demo-agent, libwebsockets): fuzzing a passing run
  finds its 1011, and the saved case reproduces with `wsrr replay`.
- Bad usage and a server command that cannot start are exit 2.
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wstest import check, failures, run_tests  # noqa: E402
import replay_test  # noqa: E402  (Process, proxy, free_port, race backend helpers)
from replay_test import PY, Process, free_port, proxy  # noqa: E402

WSRR = None
TMP = None
HERE = os.path.dirname(os.path.abspath(__file__))
RACE_BACKEND = os.path.join(HERE, "race_backend.py")
RACE_CLIENT = os.path.join(HERE, "race_client.py")


def wsrr(*args, timeout=240):
    p = subprocess.run([WSRR, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def race_cmd(port, fixed=False):
    return "exec %s %s --port %d%s" % (PY, RACE_BACKEND, port, " --fixed" if fixed else "")


def record_sequential(path):
    """Both race scenarios, run one session after the other: nothing fails."""
    be = Process([PY, RACE_BACKEND, "--port", "0"], r"listening on 127\.0\.0\.1:(\d+)")
    px = proxy(int(be.m.group(1)), path)
    try:
        for sc in ("a", "b"):
            out = subprocess.run([PY, RACE_CLIENT, "ws://127.0.0.1:%s" % px.m.group(1),
                                  "--scenario", sc, "--mode", "sequential", "--seed", "1"],
                                 stdout=subprocess.PIPE, text=True, timeout=60).stdout
            check(out.count("completed") == 2, "sequential scenario %s passes: %r" % (sc, out))
    finally:
        px.stop()
        be.stop()


def accepting(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class Server:
    """A backend on a fixed port for `wsrr replay` checks, stopped by PID."""

    def __init__(self, cmd, port):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL,
                                     stderr=self.log)
        for _ in range(200):
            if accepting(port):
                return
            time.sleep(0.05)
        raise RuntimeError("%s did not listen" % cmd)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.seek(0)
        return self.log.read()


def reproduces(case, port, cmd, *opts):
    """Replay case with --reproduce against a fresh server: the exit status,
    what wsrr said, and what the server logged."""
    sv = Server(cmd, port)
    try:
        rc, out, err = wsrr("replay", case, "--target", "ws://127.0.0.1:%d" % port,
                            "--reproduce", *opts)
    finally:
        log = sv.stop()
    return rc, out + err, log


SEQ = None  # the sequential capture, recorded once
BUG_A = None  # bug A's saved case, for the shrink test


def fuzz_json(out):
    return json.loads(out.strip().splitlines()[-1])


async def test_race_bugs():
    global SEQ, BUG_A
    SEQ = os.path.join(TMP, "sequential.wsrr")
    record_sequential(SEQ)
    port = free_port()
    outdir = os.path.join(TMP, "race")
    rc, out, err = wsrr("fuzz", SEQ, "--target", "ws://127.0.0.1:%d" % port,
                        "--server-cmd", race_cmd(port), "--out", outdir, "--mutate", "schedule",
                        "--runs", "150", "--seed", "1", "--jobs", "2", "--ignore", "ts",
                        "--timeout", "1000", "--quiet-wait", "50", "--json",
                        "--until", '"Internal error" at tool_result',
                        "--until", '"Internal error" at message')
    check(rc == 1, "fuzz exit 1 when it found failures: %d %s" % (rc, err[-600:]))
    j = fuzz_json(out)
    sigs = {f["signature"]: f for f in j["failures"]}
    print("  %d runs, %.1f runs/s; %s" % (j["runs"], j["runs_per_second"], sorted(sigs)))
    check(0 < j["runs"] <= 150, "bounded by --runs: %d" % j["runs"])
    a = sigs.get('close 1011 "Internal error" at tool_result')
    b = [f for s, f in sigs.items() if s.startswith('close 1011 "Internal error" at ') and
         (s.endswith(" at message") or s.endswith(" at delete"))]
    check(a is not None, "bug A found (1011 at tool_result): %s" % sorted(sigs))
    check(bool(b), "bug B found (1011 at message or delete): %s" % sorted(sigs))
    # the planted bug's line in the traceback: A fails on its shared slot,
    # B on the line marked BUG B
    for f, bug in ([(a, 'AGENT_STATE[key]')] if a else []) + [(x, "BUG B") for x in b[:1]]:
        case = f["case"]
        check(os.path.exists(case) and os.path.exists(case[:-5] + ".json"),
              "case and its description saved: %s" % case)
        desc = json.load(open(case[:-5] + ".json"))
        check(desc["fuzz"]["seed"] == 1 and desc["fuzz"]["mutations"] and
              all(m["op"].startswith("sched.") for g in desc["fuzz"]["mutations"]
                  for m in g["mutations"]),
              "the description has the seed and the (schedule) mutations: %r" % desc["fuzz"])
        check("wsrr replay %s --target" % case in desc["command"] and "--reproduce" in
              desc["command"], "the reproducing command: %r" % desc["command"])
        check("KeyError" in desc.get("server_log_tail", ""),
              "the server's traceback is in the description")
        p2 = free_port()
        rc, text, log = reproduces(case, p2, race_cmd(p2), "--ignore", "ts")
        check(rc == 0, "replay --reproduce reproduces %s: %s" % (f["signature"], text[-400:]))
        # the planted bug, not another failure: its line is in the traceback
        check(bug in log, "the server's traceback points at %s: %s" % (bug, log[-600:]))
    BUG_A = a["case"] if a else None
    log = open(os.path.join(outdir, "server.log")).read()
    check(log.count("---- wsrr: start") == 1, "a 1011 is no reason to restart the server")


async def test_shrink():
    if not BUG_A:
        check(False, "no bug A case to shrink (test_race_bugs failed)")
        return
    port = free_port()
    out_min = os.path.join(TMP, "min-a.wsrr")
    rc, out, err = wsrr("shrink", BUG_A, "--target", "ws://127.0.0.1:%d" % port,
                        "--server-cmd", race_cmd(port), "-o", out_min, "--ignore", "ts",
                        "--json", "--verify", "5")
    check(rc == 0, "shrink exit 0: %d %s" % (rc, err[-800:]))
    if rc != 0:
        return
    j = json.loads(out)
    print("  before %s, after %s, %d candidates" % (j["before"], j["after"], j["candidates"]))
    check(j["signature"] == 'close 1011 "Internal error" at tool_result',
          "it kept bug A's signature: %r" % j["signature"])
    check(j["after"]["connections"] == 2, "two connections left: %r" % j["after"])
    # what bug A needs: a run on each connection, and the first run's
    # tool_results up to the one that crashes (step 1, or steps 1 and 2
    # when the second run came in between them)
    msgs = j["messages"]
    runs = [m for m in msgs if m["type"] == "run"]
    results = [m for m in msgs if m["type"] == "tool_result"]
    check(len(runs) == 2 and runs[0]["conn"] != runs[1]["conn"] and 1 <= len(results) <= 2 and
          len(msgs) == len(runs) + len(results) and
          len({m["conn"] for m in results}) == 1 and results[0]["conn"] in {r["conn"] for r in runs},
          "two runs and the first one's tool_results remain, nothing else: %r" % msgs)
    check(j["before"]["client_messages"] > j["after"]["client_messages"], "it shrank")
    check(j["reproduced"] >= 4, "the result reproduces (%d/5)" % j["reproduced"])
    p2 = free_port()
    rc, text, log = reproduces(out_min, p2, race_cmd(p2), "--ignore", "ts")
    check(rc == 0, "wsrr replay --reproduce of the shrunk case: %s" % text[-300:])
    check("AGENT_STATE[key]" in log, "it is still bug A: %s" % log[-400:])
    rc, out, err = wsrr("shrink", BUG_A, "--target", "ws://127.0.0.1:%d" % port, "-o", out_min)
    check(rc == 2 and "exists" in err, "an existing output is refused: %d %s" % (rc, err))


async def test_same_seed():
    port = free_port()
    traces = []
    # a rules file on top (its faults are part of what must repeat)
    rules = os.path.join(TMP, "seed-rules.json")
    with open(rules, "w") as f:
        json.dump({"seed": 5, "rules": [
            {"name": "half-the-results", "action": {"drop": {}},
             "match": {"direction": "client", "json": {"type": "tool_result"},
                       "probability": 0.5}}]}, f)
    for i, seed in enumerate(("42", "42", "43")):
        tr = os.path.join(TMP, "trace-%d.jsonl" % i)
        rc, out, err = wsrr("fuzz", SEQ, "--target", "ws://127.0.0.1:%d" % port,
                            "--server-cmd", race_cmd(port, fixed=True),
                            "--out", os.path.join(TMP, "seed-%d" % i), "--runs", "25",
                            "--seed", seed, "--no-feedback", "--trace", tr, "--quiet-wait", "50",
                            "--rules", rules)
        check(rc in (0, 1), "fuzz ran: %d %s" % (rc, err[-300:]))
        traces.append([(json.loads(l)["run"], json.dumps(json.loads(l)["mutations"]),
                        json.dumps(json.loads(l).get("rules")))
                       for l in open(tr)])
    fired = [json.loads(r) for _, _, r in traces[0] if r != "null" and json.loads(r)]
    check(len(fired) >= 5 and all(f["rule"] == "half-the-results" and f["action"] == "drop"
                                  for run in fired for f in run),
          "--rules: its faults listed in the trace, in most runs: %d of 25" % len(fired))
    check(len(traces[0]) == 25, "a trace line per run: %d" % len(traces[0]))
    check(traces[0] == traces[1], "the same seed, the same mutations run by run")
    check(traces[0] != traces[2], "another seed, other mutations")
    ops = {m["op"].split(".")[0] for _, ms, _ in traces[0] for m in json.loads(ms)}
    check(ops == {"json", "frame", "sched"}, "all three families by default: %r" % ops)


CRASH_SERVER = r'''
import asyncio, json, os, signal, sys
import websockets

async def handler(ws, path=None):
    async for m in ws:
        try:
            j = json.loads(m)
        except ValueError:
            continue
        if isinstance(j, dict) and isinstance(j.get("n"), str):
            os.kill(os.getpid(), signal.SIGSEGV)
        if isinstance(j, dict) and j.get("n") is None:
            sys.stderr.write("==1==ERROR: AddressSanitizer: heap-use-after-free on address 0x1\n")
            sys.stderr.flush()
        await ws.send(json.dumps({"type": "ok", "n": j.get("n") if isinstance(j, dict) else 0}))

async def main():
    async with websockets.serve(handler, "127.0.0.1", int(sys.argv[1])):
        await asyncio.Future()

asyncio.run(main())
'''


async def echo_n(ws, path=None):
    async for m in ws:
        await ws.send(m)


async def record_n(path):
    """A session of three {"type":"calc","n":N} messages, recorded."""
    async with websockets.serve(echo_n, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        px = proxy(port, path)
        try:
            async with websockets.connect("ws://127.0.0.1:%s/calc" % px.m.group(1)) as ws:
                for n in (1, 2, 3):
                    await ws.send(json.dumps({"type": "calc", "n": n, "user": "ada"}))
                    await ws.recv()
        finally:
            px.stop()


async def test_server_crash_and_sanitizer():
    cap = os.path.join(TMP, "calc.wsrr")
    await record_n(cap)
    script = os.path.join(TMP, "crash_server.py")
    open(script, "w").write(CRASH_SERVER)
    port = free_port()
    outdir = os.path.join(TMP, "crash")
    rc, out, err = wsrr("fuzz", cap, "--target", "ws://127.0.0.1:%d" % port,
                        "--server-cmd", "%s %s %d" % (PY, script, port), "--out", outdir,
                        "--mutate", "json", "--runs", "400", "--seed", "5", "--json")
    check(rc == 1, "failures found: %d %s" % (rc, err[-500:]))
    j = fuzz_json(out)
    sigs = {f["signature"]: f for f in j["failures"]}
    print("  %d runs, %.0f runs/s, server started %d times; %s" %
          (j["runs"], j["runs_per_second"], j.get("server_starts", 0), sorted(sigs)))
    check("server-signal SIGSEGV" in sigs, "the crash is a failure: %s" % sorted(sigs))
    check("sanitizer heap-use-after-free" in sigs, "the report is a failure: %s" % sorted(sigs))
    check(j.get("server_starts", 0) >= 2, "the server was started again after its crash")
    seg = sigs.get("server-signal SIGSEGV")
    if seg:
        desc = json.load(open(seg["case"][:-5] + ".json"))
        ops = [m for g in desc["fuzz"]["mutations"] for m in g["mutations"]]
        check(any(m.get("path") == "n" or m.get("path", "").startswith("n") for m in ops) or
              any(m["op"] in ("json.swap", "json.duplicate", "json.add") for m in ops),
              "the mutation that did it is listed: %r" % ops)
        check(seg["recorded_failing"], "the saved run crashed it again")


async def test_frame_mutations_on_the_wire():
    """A websockets server fails the connection (1002 protocol error, 1007
    bad data) when it gets an invalid frame: on exactly the runs whose
    frames fuzz made invalid."""
    cap = os.path.join(TMP, "calc.wsrr")
    async with websockets.serve(echo_n, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        tr = os.path.join(TMP, "frames.jsonl")
        p = await asyncio.create_subprocess_exec(
            WSRR, "fuzz", cap, "--target", "ws://127.0.0.1:%d" % port, "--out",
            os.path.join(TMP, "frames"), "--mutate", "frame", "--runs", "120", "--seed", "9",
            "--quiet-wait", "30",
            "--no-feedback", "--max-mutations", "1", "--trace", tr,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(p.communicate(), 120)
    check(p.returncode == 0, "no failure: a server may drop a connection after an invalid "
          "frame: %d %s" % (p.returncode, err.decode()[-400:]))
    invalid = {"frame.bad-utf8": "1007", "frame.rsv": "1002", "frame.compressed-flag": "1002",
               "frame.unmasked": "1002", "frame.reserved-opcode": "1002"}
    seen = set()
    for line in open(tr):
        t = json.loads(line)
        op = t["mutations"][0]["op"] if t["mutations"] else None
        end = t["ends"][0]
        if op in invalid:
            seen.add(op)
            check(("closed %s" % invalid[op]) in end and "by the server" in end,
                  "%s: the server got an invalid frame: %s" % (op, end))
        elif op in ("frame.fragment", "frame.ping-between", "frame.long-length", "frame.ping",
                    "frame.pong", "frame.oversize"):
            check("1002" not in end and "1007" not in end, "%s is valid on the wire: %s" %
                  (op, end))
    check(seen == set(invalid), "every invalid-frame mutation ran: %r" % sorted(seen))


async def test_demo_backend():
    agent = os.path.join(os.path.dirname(WSRR), "wsrr-demo-agent")
    if not os.path.exists(agent):
        print("  (no wsrr-demo-agent: built without libwebsockets)")
        return
    cap = os.path.join(TMP, "demo-pass.wsrr")
    be_port = free_port()
    be = subprocess.Popen([agent, "backend", str(be_port)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        px = proxy(be_port, cap)
        out = subprocess.run([agent, "client", "ws://127.0.0.1:%s/v1/agent" % px.m.group(1), "1"],
                             stdout=subprocess.PIPE, text=True, timeout=30).stdout
        px.stop()
    finally:
        be.send_signal(signal.SIGINT)
        be.wait(timeout=10)
    check("completed" in out and "1011" not in out, "one run alone passes: %r" % out)
    port = free_port()
    outdir = os.path.join(TMP, "demo")
    rc, out, err = wsrr("fuzz", cap, "--target", "ws://127.0.0.1:%d" % port, "--server-cmd",
                        "exec %s backend %d" % (agent, port), "--out", outdir, "--mutate",
                        "schedule", "--runs", "60", "--seed", "3", "--ignore", "ts", "--json",
                        "--until", "close 1011")
    j = fuzz_json(out) if out.strip() else {"failures": []}
    hits = [f for f in j["failures"] if f["signature"].startswith("close 1011")]
    check(rc == 1 and hits, "the demo's 1011 found: %d %s %s" % (rc, j["failures"], err[-300:]))
    if hits:
        p2 = free_port()
        rc, text, _ = reproduces(hits[0]["case"], p2, "exec %s backend %d" % (agent, p2))
        check(rc == 0, "the saved case reproduces: %s" % text[-3000:])


async def test_bad_usage():
    rc, out, err = wsrr("fuzz", SEQ, "--target", "ws://127.0.0.1:1", "--out", TMP)
    check(rc == 2 and "--runs N or --time T" in err, "unbounded fuzz refused: %s" % err)
    rc, out, err = wsrr("fuzz", SEQ, "--target", "ws://127.0.0.1:1", "--out", TMP, "--runs",
                        "5", "--mutate", "json,bits")
    check(rc == 2 and "--mutate json,bits" in err, "unknown family: %s" % err)
    port = free_port()
    rc, out, err = wsrr("fuzz", SEQ, "--target", "ws://127.0.0.1:%d" % port, "--out",
                        os.path.join(TMP, "bad"), "--runs", "5", "--server-cmd", "exit 3")
    check(rc == 2 and "ended (exit status 3) before it listened" in err,
          "a server that does not start: %s" % err)
    junk = os.path.join(TMP, "junk.wsrr")
    open(junk, "wb").write(b"not a capture at all")
    rc, out, err = wsrr("fuzz", junk, "--target", "ws://127.0.0.1:1", "--out", TMP, "--runs", "5")
    check(rc == 2 and "junk.wsrr" in err and len(err.strip().splitlines()) == 1,
          "a bad capture: one line, exit 2: %s" % err)
    # --rules: a file without a seed, and a bad one, refused
    noseed = os.path.join(TMP, "noseed.json")
    with open(noseed, "w") as f:
        f.write('{"rules": [{"name": "d", "match": {"nth": 2}, "action": {"drop": {}}}]}')
    rc, out, err = wsrr("fuzz", SEQ, "--target", "ws://127.0.0.1:1", "--out", TMP, "--runs", "5",
                        "--rules", noseed)
    check(rc == 2 and "seed" in err, "--rules without a seed refused: %s" % err)
    with open(noseed, "w") as f:
        f.write('{"seed": 1, "rules": [{"name": "d", "match": {"nht": 2}, "action": {"drop": {}}}]}')
    rc, out, err = wsrr("fuzz", SEQ, "--target", "ws://127.0.0.1:1", "--out", TMP, "--runs", "5",
                        "--rules", noseed)
    check(rc == 2 and "rule 'd'" in err and "nht" in err, "a bad rules file named: %s" % err)
    # nothing listens: the fuzz stops and says so
    rc, out, err = wsrr("fuzz", SEQ, "--target", "ws://127.0.0.1:%d" % port, "--out",
                        os.path.join(TMP, "down"), "--runs", "100")
    check(rc == 2 and "does not accept connections" in err, "a target that is down: %s" % err)
    # a case that does not fail: shrink says so, exit 1
    sv_port = free_port()
    sv = Server(race_cmd(sv_port), sv_port)
    try:
        rc, out, err = wsrr("shrink", SEQ, "--target", "ws://127.0.0.1:%d" % sv_port, "--ignore", "ts", "-o",
                            os.path.join(TMP, "never.wsrr"), "--tries", "1")
    finally:
        sv.stop()
    check(rc == 1 and "nothing to shrink" in err, "shrink of a passing capture: %d %s" % (rc, err))


async def test_killed_takes_server():
    """wsrr fuzz killed with SIGKILL: the server it started goes too (no
    server left on the port for the next run to find)."""
    port = free_port()
    fz = subprocess.Popen([WSRR, "fuzz", SEQ, "--target", "ws://127.0.0.1:%d" % port,
                           "--server-cmd", race_cmd(port, fixed=True), "--out",
                           os.path.join(TMP, "killed"), "--time", "60", "--jobs", "2"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not accepting(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        check(accepting(port), "the server started")
        time.sleep(1)  # some runs, and maybe a restart from a worker
    finally:
        fz.kill()
        fz.wait()
    deadline = time.monotonic() + 5
    while accepting(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    check(not accepting(port), "the server went with wsrr")


TESTS = [test_race_bugs, test_shrink, test_same_seed, test_server_crash_and_sanitizer,
         test_frame_mutations_on_the_wire, test_demo_backend, test_bad_usage,
         test_killed_takes_server]


def main():
    global WSRR, TMP
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsrr", required=True)
    ap.add_argument("tests", nargs="*")
    a = ap.parse_args()
    WSRR = os.path.abspath(a.wsrr)
    replay_test.WSRR = WSRR
    TMP = tempfile.mkdtemp(prefix="wsrr-fuzz-test-")
    replay_test.TMP = TMP
    try:
        return run_tests(TESTS, a.tests, always=("test_race_bugs",), per_test=280)
    finally:
        if os.environ.get("WSRR_KEEP_TMP"):
            print("kept", TMP)
        else:
            shutil.rmtree(TMP)


if __name__ == "__main__":
    sys.exit(main())
