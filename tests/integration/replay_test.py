#!/usr/bin/env python3
"""wsrr replay against real servers (Python websockets).

A session is recorded through `wsrr proxy`, then replayed, and every check
reads what the replay reported and what the server really got:
- the two race bugs of tests/integration/race_backend.py (FastAPI/uvicorn;
  each fires only under one cross-connection interleaving) come back with
  causal timing in at least 19 of 20 runs and clearly less often with asap
  timing; --check is red on the buggy backend and green on the fixed one,
  in the exit status, the JUnit report and --json; a sequential session
  never fails;
- the demo's race (tools/demo/agent.py: two runs of one user overlapping make
  the backend close the first with 1011) comes back with causal timing in
  (nearly) every run; --check fails
  on the buggy backend and passes on the fixed one; --reproduce says why not
  on the fixed one;
- server messages are compared JSON-aware: a changing timestamp is a
  divergence until --ignore'd;
- a server that stops answering is a timeout at the message it owed;
- bad captures, bad targets and unreachable servers are reported as such.
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wstest import Drain, check, failures, run_tests  # noqa: E402

WSRR = None
TMP = None
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(ROOT, "tools", "demo", "agent.py")
PY = "/usr/bin/python3"


async def wsrr(*args, timeout=120):
    """Run `wsrr ARGS`, return (status, stdout, stderr) without blocking the
    servers this event loop runs."""
    p = await asyncio.create_subprocess_exec(WSRR, *args, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), timeout)
    return p.returncode, out.decode(), err.decode()


class Process:
    """A process that prints a line matching `ready` (on stdout or stderr)
    once it serves; stopped by PID."""

    def __init__(self, args, ready, stream="stdout"):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        src = self.proc.stdout if stream == "stdout" else self.proc.stderr
        line = src.readline()
        self.m = re.search(ready, line)
        if not self.m:
            self.proc.kill()
            raise RuntimeError("%s did not start: %r" % (args[0], line))
        self.drains = [Drain(self.proc.stdout), Drain(self.proc.stderr)]

    def finish(self, timeout=10):
        """It ends by itself (serve --exit-after): wait for that. When it does
        not, stop it and return None, so that a test expecting its exit
        status fails."""
        try:
            self.proc.wait(timeout=timeout)
            return self.proc.returncode
        except subprocess.TimeoutExpired:
            self.stop()
            return None

    def stop(self):
        self.proc.send_signal(2)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def agent_backend(fixed=False):
    port = free_port()
    args = [PY, AGENT, "backend", str(port)] + (["--fixed"] if fixed else [])
    p = subprocess.Popen(args)
    for _ in range(100):  # agent.py prints nothing: wait for the port
        try:
            import socket
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("agent backend did not start")


def proxy(upstream_port, capture):
    return Process([WSRR, "proxy", "--listen", "127.0.0.1:0", "--upstream",
                    "ws://127.0.0.1:%d" % upstream_port, "--record", capture, "--grace", "1"],
                   r"listening on 127\.0\.0\.1:(\d+)", stream="stderr")


def rate(out):
    m = re.search(r"reproduced (\d+)/(\d+) runs", out)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


async def record_demo_failure():
    """Record the demo client through the proxy until a run fails with 1011
    (the race usually fires; at most 10 tries)."""
    backend, bport = agent_backend()
    try:
        for i in range(10):
            cap = os.path.join(TMP, "demo-%d.wsrr" % i)
            px = proxy(bport, cap)
            url = "ws://127.0.0.1:%s/v1/agent" % px.m.group(1)
            p = await asyncio.create_subprocess_exec(PY, AGENT, "client", url,
                                                     stdout=subprocess.PIPE)
            out = (await asyncio.wait_for(p.communicate(), 30))[0].decode()
            px.stop()
            if "received 1011" in out:
                return cap
    finally:
        backend.kill()
        backend.wait()
    return None


async def test_demo_race():
    cap = await record_demo_failure()
    if not check(cap, "the demo client hit the race within 10 recorded runs"):
        return
    backend, bport = agent_backend()
    fixed, fport = agent_backend(fixed=True)
    target, target_fixed = "ws://127.0.0.1:%d" % bport, "ws://127.0.0.1:%d" % fport
    try:
        n = 20
        rc, out, err = await wsrr("replay", cap, "--target", target, "--reproduce",
                                  "--repeat", str(n), "--timeout", "2000")
        causal, total = rate(out)
        print("  causal: %s/%s" % (causal, total))
        check(total == n and causal is not None and causal >= n - 1,
              "causal replay reproduces the 1011 at least %d/%d times: %r" % (n - 1, n, out))
        check(rc == (0 if causal == n else 1), "--reproduce exits 0 only when every run did")
        # (this race needs only an overlap, which asap gives too: the race
        # backend's tests compare the timing modes)

        rc, out, err = await wsrr("replay", cap, "--target", target, "--timeout", "2000")
        check(rc == 1, "--check exits 1 against the buggy backend (%d): %s" % (rc, out + err))
        check(re.search(r"connection \d+: closed 1011 \(Internal error\) by the server after 3 "
                        r"messages", out), "and names the 1011, its sender and its point: " + out)
        rc, out, err = await wsrr("replay", cap, "--target", target_fixed, "--timeout", "1000")
        check(rc == 0 and out.strip().endswith(": ok"),
              "--check exits 0 against the fixed backend (%d): %s" % (rc, out + err))
        rc, out, err = await wsrr("replay", cap, "--target", target_fixed, "--reproduce",
                                  "--timeout", "1000")
        check(rc == 1 and "not reproduced" in out and "recorded closed 1011" in out,
              "--reproduce against the fixed backend exits 1 and says what differed: " + out)
    finally:
        for p in (backend, fixed):
            p.kill()
            p.wait()


async def stamp_handler(ws, path=None):
    """Answers every message with its count and a timestamp."""
    n = 0
    async for msg in ws:
        n += 1
        await ws.send(json.dumps({"type": "ack", "n": n, "echo": msg,
                                  "meta": {"ts": time.time()}}))


async def record_stamps(name, n):
    """A session of n messages against stamp_handler, recorded through the
    proxy; returns (capture, the still running server, its port)."""
    server = await websockets.serve(stamp_handler, "127.0.0.1", 0, ping_interval=None)
    port = server.sockets[0].getsockname()[1]
    cap = os.path.join(TMP, name)
    px = proxy(port, cap)
    async with websockets.connect("ws://127.0.0.1:%s/s" % px.m.group(1),
                                  ping_interval=None) as ws:
        for i in range(n):
            await ws.send("m%d" % i)
            await ws.recv()
    px.stop()
    return cap, server, port


async def test_json_compare():
    cap, server, port = await record_stamps("stamp.wsrr", 3)
    target = "ws://127.0.0.1:%d" % port
    rc, out, err = await wsrr("replay", cap, "--target", target)
    check(rc == 1 and "server message 1 differs" in out and "meta" in out,
          "a changed timestamp is a divergence at message 1 (%d): %s" % (rc, out + err))
    rc, out, err = await wsrr("replay", cap, "--target", target, "--ignore", "meta.ts")
    check(rc == 0 and out.strip().endswith(": ok"),
          "--ignore meta.ts: the same session (%d): %s" % (rc, out + err))
    rc, out, err = await wsrr("replay", cap, "--target", target, "--ignore", "meta")
    check(rc == 0, "--ignore meta (a whole object) too (%d): %s" % (rc, out + err))
    server.close()


async def heartbeat_handler(ws, path=None):
    """stamp_handler with a heartbeat before every answer (a server that
    added heartbeats since the capture was recorded)."""
    n = 0
    async for msg in ws:
        n += 1
        await ws.send(json.dumps({"type": "heartbeat", "meta": {"ts": time.time()}}))
        await ws.send(json.dumps({"type": "ack", "n": n, "echo": msg,
                                  "meta": {"ts": time.time()}}))


async def test_extra_messages():
    cap, server, _ = await record_stamps("extra.wsrr", 3)
    server.close()
    hb = await websockets.serve(heartbeat_handler, "127.0.0.1", 0, ping_interval=None)
    target = "ws://127.0.0.1:%d" % hb.sockets[0].getsockname()[1]
    rc, out, err = await wsrr("replay", cap, "--target", target, "--ignore", "meta")
    check(rc == 1 and "server message 1 differs" in out and "heartbeat" in out,
          "an added heartbeat is a divergence (%d): %s" % (rc, out))
    rc, out, err = await wsrr("replay", cap, "--target", target, "--ignore", "meta",
                              "--extra", "type=heartbeat", "--json")
    conns = json.loads(out)["runs"][0]["connections"] if rc == 0 else []
    check(rc == 0 and conns and conns[0]["extra"] == 3 and conns[0]["messages"] == 3,
          "--extra type=heartbeat: let pass, counted apart (%d): %s" % (rc, out + err))
    rc, out, err = await wsrr("replay", cap, "--target", target, "--ignore", "meta",
                              "--extra", "*")
    check(rc == 0, "--extra '*' too (%d): %s" % (rc, out + err))
    rc, out, err = await wsrr("replay", cap, "--target", target, "--ignore", "meta",
                              "--extra", "type=other")
    check(rc == 1, "a pattern the heartbeat does not match: still a divergence (%d)" % rc)
    hb.close()


ENDS = []


async def echo_note_end(ws, path=None):
    """Echoes; notes how the client ended: its close frame's code, or None."""
    try:
        async for m in ws:
            await ws.send(m)
        ENDS.append(ws.close_rcvd.code if ws.close_rcvd else None)
    except websockets.ConnectionClosed as e:
        ENDS.append(e.rcvd.code if e.rcvd else None)


async def rst_after_close(reader, writer):
    """A raw server: answers the upgrade, echoes one text frame, answers the
    client's close, then resets the connection (SO_LINGER 0)."""
    import socket
    import struct
    from wstest import accept_for
    head = await reader.readuntil(b"\r\n\r\n")
    key = re.search(rb"Sec-WebSocket-Key: *(\S+)", head).group(1)
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_for(key) + b"\r\n\r\n")
    for _ in range(2):
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        mask = await reader.readexactly(4)
        data = bytes(x ^ mask[i % 4] for i, x in enumerate(await reader.readexactly(n)))
        writer.write(bytes([b0 & 0x8F, n]) + data)  # echo (the close too)
        await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def two_then_rst(reader, writer):
    """A raw server: answers the upgrade, reads one client frame, sends two
    text frames and resets the connection at once."""
    import socket
    import struct
    from wstest import accept_for
    head = await reader.readuntil(b"\r\n\r\n")
    key = re.search(rb"Sec-WebSocket-Key: *(\S+)", head).group(1)
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_for(key) + b"\r\n\r\n")
    b0, b1 = await reader.readexactly(2)
    await reader.readexactly(4 + (b1 & 0x7F))
    writer.write(b"\x81\x02r1\x81\x02r2")
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_serve_reset_after_messages():
    """serve plays a recorded reset after the messages queued before it."""
    raw = await asyncio.start_server(two_then_rst, "127.0.0.1", 0)
    cap = os.path.join(TMP, "two-then-rst.wsrr")
    px = proxy(raw.sockets[0].getsockname()[1], cap)
    got = []
    try:
        async with websockets.connect("ws://127.0.0.1:%s/t" % px.m.group(1),
                                      ping_interval=None) as ws:
            await ws.send("go")
            while True:
                got.append(await asyncio.wait_for(ws.recv(), 5))
    except websockets.ConnectionClosed:
        pass
    px.stop()
    raw.close()
    check(got == ["r1", "r2"], "recorded: two messages then the reset (%r)" % got)
    sv = serve(cap, "--exit-after", "1")
    got, rcvd = [], "open"
    try:
        async with websockets.connect("ws://127.0.0.1:%s/t" % sv.m.group(1),
                                      ping_interval=None) as ws:
            await ws.send("go")
            while True:
                got.append(await asyncio.wait_for(ws.recv(), 5))
    except websockets.ConnectionClosed as e:
        rcvd = e.rcvd
    rc = sv.finish()
    log = "\n".join(sv.drains[1].lines())
    check(got == ["r1", "r2"] and rcvd is None and "reset as recorded" in log and rc == 0,
          "serve: both messages, then the reset, no close frame (%r, %r, %d):\n%s"
          % (got, rcvd, rc, log))


async def test_hangups_and_resets():
    # a clean close handshake followed by the server's RST: not a failure
    raw = await asyncio.start_server(rst_after_close, "127.0.0.1", 0)
    rport = raw.sockets[0].getsockname()[1]
    cap = os.path.join(TMP, "close-then-rst.wsrr")
    px = proxy(rport, cap)
    async with websockets.connect("ws://127.0.0.1:%s/x" % px.m.group(1),
                                  ping_interval=None) as ws:
        await ws.send("hi")
        await ws.recv()
    await asyncio.sleep(0.2)
    px.stop()
    rc, out, err = await wsrr("replay", cap, "--target", "ws://127.0.0.1:%d" % rport,
                              "--timeout", "1000")
    check(rc == 0, "a clean close then a reset replays as ok (%d): %s" % (rc, out + err))
    rc, out, err = await wsrr("replay", cap, "--target", "ws://127.0.0.1:%d" % rport,
                              "--reproduce", "--timeout", "1000")
    check(rc == 1 and "records no failure" in out,
          "and is not a failure to reproduce (%d): %s" % (rc, out))
    raw.close()

    # a client that sends, reads, then resets its connection: replayed as a
    # reset, not as a polite close
    server = await websockets.serve(echo_note_end, "127.0.0.1", 0, ping_interval=None)
    port = server.sockets[0].getsockname()[1]
    cap = os.path.join(TMP, "client-rst.wsrr")
    px = proxy(port, cap)
    import socket
    import struct
    from wstest import frame as raw_frame
    reader, writer = await asyncio.open_connection("127.0.0.1", int(px.m.group(1)))
    writer.write(b"GET /r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                 + raw_frame(0x81, b"m1", mask=b"\x01\x02\x03\x04"))
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(4)  # the echo of m1
    writer.write(raw_frame(0x81, b"m2", mask=b"\x01\x02\x03\x04"))  # and leave at once
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    await asyncio.sleep(0.3)
    px.stop()
    del ENDS[:]
    rc, out, err = await wsrr("replay", cap, "--target", "ws://127.0.0.1:%d" % port, "-v",
                              "--timeout", "1000")
    await asyncio.sleep(0.3)
    check(ENDS == [None], "the server saw the client leave with no close frame, as recorded: "
          "%r (%d) %s" % (ENDS, rc, out + err[-600:]))
    server.close()


async def silent_handler(ws, path=None):
    try:
        async for msg in ws:
            if msg == "m0":
                await ws.send("first")  # then nothing more
    except websockets.ConnectionClosed:
        pass  # the replay gives up on us: that is the point


async def test_timeout():
    cap, server, _ = await record_stamps("timeout.wsrr", 2)
    server.close()
    silent = await websockets.serve(silent_handler, "127.0.0.1", 0, ping_interval=None)
    sport = silent.sockets[0].getsockname()[1]
    t0 = time.monotonic()
    rc, out, err = await wsrr("replay", cap, "--target", "ws://127.0.0.1:%d" % sport,
                              "--timeout", "500", "--ignore", "meta", "--ignore", "echo",
                              "--ignore", "n")
    took = time.monotonic() - t0
    check(rc == 1 and "timed out after 1 messages: no server message 2 within 500 ms" in out,
          "a server that stops answering: a timeout at the message it owed (%d): %s"
          % (rc, out + err))
    check(took < 5, "bounded by --timeout (%.1f s)" % took)
    silent.close()


async def test_bad_input():
    junk = os.path.join(TMP, "junk.wsrr")
    with open(junk, "wb") as f:
        f.write(b"this is not a capture at all\n" * 10)
    rc, out, err = await wsrr("replay", junk, "--target", "ws://127.0.0.1:1")
    check(rc == 2 and err.count("\n") == 1 and "junk.wsrr" in err,
          "a file that is not a capture: exit 2, one line naming it (%d): %r" % (rc, err))
    rc, out, err = await wsrr("replay", junk, "--target", "http://x")
    check(rc == 2 and "--target" in err, "a target that is not ws(s): exit 2 (%d): %r" % (rc, err))
    rc, out, err = await wsrr("replay", junk)
    check(rc == 2 and "--target" in err, "no target: exit 2 (%d): %r" % (rc, err))
    # a real capture against a port nobody listens on (a name that does not
    # resolve is not tried here: that would ask a resolver off this machine)
    cap = os.path.join(TMP, "demo.wsrr")
    shutil.copy(os.path.join(ROOT, "captures", "agent-1011.wsrr"), cap)
    rc, out, err = await wsrr("replay", cap, "--target", "ws://127.0.0.1:%d" % free_port())
    check(rc == 1 and "cannot connect to 127.0.0.1:" in out and "Connection refused" in out,
          "an unreachable target: the connection failed, exit 1 (%d): %s" % (rc, out + err))



RACE_BACKEND = os.path.join(os.path.dirname(os.path.abspath(__file__)), "race_backend.py")
RACE_CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "race_client.py")


def race_backend(fixed=False):
    return Process([PY, RACE_BACKEND, "--port", "0"] + (["--fixed"] if fixed else []),
                   r"race_backend listening on 127\.0\.0\.1:(\d+)")


async def record_race(scenario, port, mode="racy"):
    """Record race_client.py runs through the proxy until one fails with 1011
    (racy), or one run (sequential). Returns (capture, client output)."""
    for seed in range(1, 16):
        cap = os.path.join(TMP, "race-%s-%s-%d-%d.wsrr" % (scenario, mode, seed,
                                                           time.monotonic_ns()))
        px = proxy(port, cap)
        p = await asyncio.create_subprocess_exec(
            PY, RACE_CLIENT, "ws://127.0.0.1:%s" % px.m.group(1), "--scenario", scenario,
            "--mode", mode, "--seed", str(seed), stdout=subprocess.PIPE)
        out = (await asyncio.wait_for(p.communicate(), 30))[0].decode()
        px.stop()
        if mode != "racy" or "received 1011" in out:
            return cap, out
    return None, None


def junit_report(path):
    import xml.etree.ElementTree as ET
    suite = ET.parse(path).getroot().find("testsuite")
    cases = suite.findall("testcase")
    return (int(suite.get("tests")), int(suite.get("failures")),
            [(c.get("name"), c.find("failure") is not None,
              c.find("failure").get("message") if c.find("failure") is not None else None)
             for c in cases])


async def race_scenario(scenario):
    """One of race_backend.py's two bugs (see its docstring for the
    interleaving): recorded failing, replayed with each timing, checked
    against the buggy and the fixed backend."""
    buggy, fixed = race_backend(), race_backend(fixed=True)
    bport, fport = int(buggy.m.group(1)), int(fixed.m.group(1))
    target, target_fixed = "ws://127.0.0.1:%d" % bport, "ws://127.0.0.1:%d" % fport
    try:
        cap, out = await record_race(scenario, bport)
        if not check(cap, "bug %s: a racy run hit it within 15 recorded runs" % scenario):
            return
        n = 20
        rc, out, err = await wsrr("replay", cap, "--target", target, "--reproduce", "--repeat",
                                  str(n), "--timeout", "2000")
        causal, _ = rate(out)
        # (a run that does not see the 1011 waits --timeout for it: keep it short)
        rc, out2, err = await wsrr("replay", cap, "--target", target, "--reproduce", "--repeat",
                                   str(n), "--timeout", "300", "--timing", "asap")
        asap, _ = rate(out2)
        print("  bug %s: causal %s/%d, asap %s/%d" % (scenario, causal, n, asap, n))
        check(causal is not None and causal >= n - 1,
              "bug %s: causal replay reproduces the 1011 at least %d/%d times: %s"
              % (scenario, n - 1, n, out))
        check(asap is not None and causal is not None and asap <= causal - n // 4,
              "bug %s: asap replay reproduces it clearly less often (%s vs %s of %d)"
              % (scenario, asap, causal, n))

        junit = os.path.join(TMP, "junit-%s.xml" % scenario)
        rc, out, err = await wsrr("replay", cap, "--target", target, "--timeout", "2000",
                                  "--ignore", "ts", "--junit", junit)
        check(rc == 1 and "closed 1011 (Internal error) by the server" in out,
              "bug %s: --check exits 1 against the buggy backend (%d): %s" % (scenario, rc, out))
        tests, fails, cases = junit_report(junit)
        check(tests == 1 and fails == 1 and cases[0][0] == cap and cases[0][1]
              and "FAILED" in (cases[0][2] or ""),
              "bug %s: the JUnit report has one failing case for the capture: %r"
              % (scenario, (tests, fails, cases)))
        rc, out, err = await wsrr("replay", cap, "--target", target_fixed, "--timeout", "500",
                                  "--ignore", "ts", "--junit", junit)
        check(rc == 0 and out.strip().endswith(": ok"),
              "bug %s: --check exits 0 against the fixed backend (%d): %s" % (scenario, rc,
                                                                              out + err))
        tests, fails, cases = junit_report(junit)
        check(tests == 1 and fails == 0 and not cases[0][1],
              "bug %s: and the JUnit report passes: %r" % (scenario, (tests, fails, cases)))
        rc, out, err = await wsrr("replay", cap, "--target", target, "--reproduce", "--json",
                                  "--timeout", "2000")
        j = json.loads(out)
        failed_conns = [c for c in j["runs"][0]["connections"] if c["failed"]]
        check(rc == 0 and j["ok"] and j["reproduced"] == 1 and len(failed_conns) == 1
              and failed_conns[0]["code"] == 1011 and failed_conns[0]["by"] == "server",
              "bug %s: --json says which connection got the 1011 (%d): %s" % (scenario, rc, out))

        # a sequential session never hits it, and replays clean against the buggy backend
        cap, out = await record_race(scenario, bport, mode="sequential")
        check(cap and "received" not in out, "bug %s: a sequential run completes: %s"
              % (scenario, out))
        if cap:
            rc, out, err = await wsrr("replay", cap, "--target", target, "--ignore", "ts",
                                      "--repeat", "5")
            check(rc == 0 and "failed 0/5 runs" in out,
                  "bug %s: its causal replay never fails (%d): %s" % (scenario, rc, out + err))
    finally:
        for p in (buggy, fixed):
            p.stop()


async def test_race_agent():
    await race_scenario("a")


async def test_race_chat():
    await race_scenario("b")


def serve(cap, *extra):
    return Process([WSRR, "serve", cap, "--listen", "127.0.0.1:0"] + list(extra),
                   r"listening on 127\.0\.0\.1:(\d+)", stream="stderr")


async def client_lines(*args):
    p = await asyncio.create_subprocess_exec(PY, *args, stdout=subprocess.PIPE)
    return sorted((await asyncio.wait_for(p.communicate(), 30))[0].decode().splitlines())


async def test_serve_demo():
    """The demo client fails against `wsrr serve` exactly as it failed
    against the backend: same run, same close code, same reason."""
    backend, bport = agent_backend()
    try:
        cap, against_backend = None, None
        for i in range(10):
            cap = os.path.join(TMP, "serve-demo-%d.wsrr" % i)
            px = proxy(bport, cap)
            against_backend = await client_lines(AGENT, "client",
                                                 "ws://127.0.0.1:%s/v1/agent" % px.m.group(1))
            px.stop()
            if any("received 1011" in line for line in against_backend):
                break
    finally:
        backend.kill()
        backend.wait()
    check(any("received 1011 (internal error) Internal error" in line
              for line in against_backend), "recorded a run that got the 1011")
    for attempt in range(3):  # the client's runs overlap: each attempt, a fresh serve
        sv = serve(cap, "--exit-after", "3")
        against_serve = await client_lines(AGENT, "client",
                                           "ws://127.0.0.1:%s/v1/agent" % sv.m.group(1))
        rc = sv.finish()
        log = "\n".join(sv.drains[1].lines())
        check(against_serve == against_backend,
              "against wsrr serve the client says what it said against the backend:\n"
              "    backend: %r\n    serve:   %r" % (against_backend, against_serve))
        check(rc == 0 and log.count("closed as recorded") == 3,
              "serve played three connections as recorded (%d):\n%s" % (rc, log))


async def raw_session(port, path, messages, wait=5):
    """Send messages on one connection, then read until the server closes;
    return its close code and reason."""
    async with websockets.connect("ws://127.0.0.1:%d%s" % (port, path),
                                  ping_interval=None) as ws:
        try:
            for m in messages:
                await ws.send(m)
            while True:
                await asyncio.wait_for(ws.recv(), wait)
        except websockets.ConnectionClosed as e:
            return (e.rcvd.code, e.rcvd.reason) if e.rcvd else (1006, "")
        except asyncio.TimeoutError:
            return None


async def test_serve_race_and_strict():
    """race_backend bug A recorded failing; a raw client replaying the same
    messages gets the 1011 from wsrr serve; a different message is reported
    (exit 1), and with --strict answered by 1008."""
    buggy = race_backend()
    try:
        cap, out = await record_race("a", int(buggy.m.group(1)))
    finally:
        buggy.stop()
    if not check(cap, "bug a recorded failing"):
        return
    rc, text, _ = await wsrr("cat", "--jsonl", cap)
    recs = [json.loads(line) for line in text.splitlines()[1:]]
    closes = [r for r in recs if r.get("kind") == "close" and r.get("code") == 1011]
    failing = closes[0]["conn"] if closes else None
    sends = [r.get("message", r.get("text")) for r in recs if r.get("kind") == "frame"
             and r.get("conn") == failing and r.get("dir") == "client"
             and r.get("opcode") == "text"]
    check(failing and sends, "the capture has the failing connection's client messages")
    sv = serve(cap, "--exit-after", "1", "--ignore", "ts")
    # the failing connection alone: serve waits for its messages, not for the
    # other connection's (the order between them is the client's business here)
    got = await raw_session(int(sv.m.group(1)), "/v1/agent", sends)
    rc = sv.finish()
    log = "\n".join(sv.drains[1].lines())
    check(got == (1011, "Internal error"),
          "the client gets the recorded 1011 from serve: %r\n%s" % (got, log))
    sv = serve(cap, "--exit-after", "1")
    got = await raw_session(int(sv.m.group(1)), "/v1/agent", ['{"type": "something else"}'],
                            wait=0.5)
    rc = sv.finish()
    log = "\n".join(sv.drains[1].lines())
    check(rc == 1 and "client message 1 is not the recorded one" in log,
          "an unexpected client message is reported, exit 1 (%d):\n%s" % (rc, log))
    sv = serve(cap, "--exit-after", "1", "--strict")
    got = await raw_session(int(sv.m.group(1)), "/v1/agent", ['{"type": "something else"}'])
    sv.finish()
    check(got == (1008, "not the recorded message"), "--strict closes with 1008: %r" % (got,))
    sv = serve(cap, "--exit-after", "1")
    try:
        await raw_session(int(sv.m.group(1)), "/nowhere", ["x"])
        got = None
    except websockets.InvalidStatusCode as e:
        got = e.status_code
    sv.finish()
    check(got == 404, "a path with no recorded connection: 404 (%r)" % got)


SEEN = []


async def auth_handler(ws, path=None):
    """Accepts a session only with the real credentials, and says what it got."""
    auth = ws.request_headers.get("Authorization", "")
    async for msg in ws:
        token = json.loads(msg).get("access_token")
        SEEN.append((auth, token))
        if auth != "Bearer s3cr3t-header" or token != "tok-98765":
            await ws.close(1008, "bad credentials")
            return
        # a fresh session token each time: recorded as a placeholder
        await ws.send(json.dumps({"type": "welcome",
                                  "session_token": "st-%s" % os.urandom(8).hex()}))


async def test_secrets():
    server = await websockets.serve(auth_handler, "127.0.0.1", 0, ping_interval=None)
    port = server.sockets[0].getsockname()[1]
    cap = os.path.join(TMP, "secret.wsrr")
    px = proxy(port, cap)
    async with websockets.connect("ws://127.0.0.1:%s/a" % px.m.group(1), ping_interval=None,
                                  extra_headers={"Authorization": "Bearer s3cr3t-header"}) as ws:
        await ws.send(json.dumps({"type": "hello", "access_token": "tok-98765"}))
        check(json.loads(await ws.recv())["type"] == "welcome", "recorded with real credentials")
    px.stop()
    rc, text, _ = await wsrr("cat", cap)
    check("s3cr3t-header" not in text and "tok-98765" not in text and "<redacted:" in text,
          "the capture holds placeholders, not the secrets")
    target = "ws://127.0.0.1:%d" % port
    del SEEN[:]
    rc, out, err = await wsrr("replay", cap, "--target", target)
    check(rc == 2 and err.count("\n") == 1 and "<redacted:authorization:" in err
          and "--secret authorization=VALUE" in err and "WSRR_SECRET_AUTHORIZATION" in err,
          "no value: exit 2, one line naming the placeholder and how to give it (%d): %r"
          % (rc, err))
    check(not SEEN, "and nothing was sent")
    rc, out, err = await wsrr("replay", cap, "--target", target, "--secret",
                              "authorization=s3cr3t-header")
    check(rc == 2 and "<redacted:access_token:" in err and "a client message" in err,
          "the message's placeholder is named next (%d): %r" % (rc, err))
    os.environ["WSRR_SECRET_ACCESS_TOKEN"] = "tok-98765"
    try:
        rc, out, err = await wsrr("replay", cap, "--target", target, "--secret",
                                  "Authorization=s3cr3t-header")
    finally:
        del os.environ["WSRR_SECRET_ACCESS_TOKEN"]
    check(rc == 0 and SEEN == [("Bearer s3cr3t-header", "tok-98765")],
          "with --secret and WSRR_SECRET_*: the server gets the real values (%d, %r): %s"
          % (rc, SEEN, out + err))
    # serve: a client that sends its own token is not "unexpected" (the
    # recorded one is a placeholder), and gets the recorded answer
    sv = serve(cap, "--exit-after", "1")
    async with websockets.connect("ws://127.0.0.1:%s/a" % sv.m.group(1),
                                  ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "hello", "access_token": "another-token"}))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
    rc = sv.finish()
    log = "\n".join(sv.drains[1].lines())
    check(rc == 0 and "not the recorded one" not in log and answer["type"] == "welcome"
          and answer["session_token"].startswith("<redacted:"),
          "serve: a placeholder in a recorded client message matches any value (%d): %s"
          % (rc, log))
    # --record: the replay's own traffic, secrets redacted again, replayable
    rec = os.path.join(TMP, "replay-of-secret.wsrr")
    rc, out, err = await wsrr("replay", cap, "--target", target, "--sec",
                              "authorization=s3cr3t-header", "--secret=access_token=tok-98765",
                              "--head", "X-Api-Key: s3cr3t-header", "--record", rec)
    vrc, vout, _ = await wsrr("verify", rec)
    _, text, _ = await wsrr("cat", "--jsonl", rec)
    recs = [json.loads(line) for line in text.splitlines()[1:]]
    frames = [r for r in recs if r.get("kind") == "frame"]
    check(rc == 0 and vrc == 0 and len(frames) >= 2 and "welcome" in text
          and "s3cr3t-header" not in text and "tok-98765" not in text
          and "<redacted:authorization:" in text,
          "--record: a clean capture of the run, what the server said, secrets redacted "
          "(%d, %d): %s" % (rc, vrc, text[:600]))
    del SEEN[:]
    rc, out, err = await wsrr("replay", rec, "--target", target, "--secret",
                              "authorization=s3cr3t-header", "--secret", "access_token=tok-98765",
                              "--secret", "x-api-key=k")
    check(rc == 0 and SEEN == [("Bearer s3cr3t-header", "tok-98765")],
          "and it replays like the original (%d): %s" % (rc, out + err))
    server.close()


async def test_demo_verb():
    """`wsrr demo` records the libwebsockets agent's race, replays it, checks
    the fixed backend, serves it, and ends with the rate it measured."""
    agent = os.path.join(os.path.dirname(WSRR), "wsrr-demo-agent")
    if not check(os.access(agent, os.X_OK), "wsrr-demo-agent is built next to wsrr"):
        return
    rc, out, err = await wsrr("demo", timeout=120)
    last = [line for line in out.splitlines() if line.startswith("== done")]
    m = re.search(r"reproduced (\d+)/10 runs", last[0] if last else "")
    check(rc == 0 and m and int(m.group(1)) >= 9,
          "wsrr demo exits 0 and ends with the reproduction rate (%d): %r\n%s"
          % (rc, last, out[-1500:] + err[-500:]))
    served = out.split("$ wsrr serve")[-1]
    check("ada run-1: received 1011 (internal error) Internal error" in served
          and "bob run-3: completed" in served,
          "against wsrr serve the demo client fails as against the backend: " + served[-400:])
    check(": ok" in out, "the fixed backend passes --check")


RUNS = []


async def run_handler(ws, path=None):
    async for msg in ws:
        m = json.loads(msg)
        RUNS.append((m.get("run_id"), m.get("n"), m.get("opts")))
        await ws.send(json.dumps({"type": "ok"}))


async def test_set_and_shard():
    server = await websockets.serve(run_handler, "127.0.0.1", 0, ping_interval=None)
    port = server.sockets[0].getsockname()[1]
    cap = os.path.join(TMP, "runs.wsrr")
    px = proxy(port, cap)
    async with websockets.connect("ws://127.0.0.1:%s/r" % px.m.group(1),
                                  ping_interval=None) as ws:
        for n in (1, 2):
            await ws.send(json.dumps({"type": "step", "run_id": "run-rec", "n": n,
                                      "opts": {"fast": True}}))
            await ws.recv()
    px.stop()
    target = "ws://127.0.0.1:%d" % port
    del RUNS[:]
    rc, out, err = await wsrr("replay", cap, "--target", target, "--repeat", "2",
                              "--set", "run_id=@uuid", "--set", "opts.fast=false",
                              "--set", "absent.path=1")
    ids = [r[0] for r in RUNS]
    check(rc == 0 and len(RUNS) == 4 and all(re.fullmatch(r"[0-9a-f-]{36}", i) for i in ids)
          and ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
          and all(r[2] == {"fast": False} for r in RUNS) and [r[1] for r in RUNS] == [1, 2, 1, 2],
          "--set: a fresh UUID per run, the same within a run; a nested value; absent paths "
          "left alone (%d): %r %s" % (rc, RUNS, out + err))
    del RUNS[:]
    rc, out, err = await wsrr("replay", cap, "--target", target, "--set", "run_id=\"fixed\"")
    check(rc == 0 and [r[0] for r in RUNS] == ["fixed", "fixed"], "--set a JSON string: %r"
          % RUNS)
    # shards: the first of two captures, then the second
    cap2 = os.path.join(TMP, "runs2.wsrr")
    shutil.copy(cap, cap2)
    junit = os.path.join(TMP, "shard.xml")
    outs = []
    for k in (1, 2):
        rc, out, err = await wsrr("replay", cap, cap2, "--target", target, "--shard", "%d/2" % k,
                                  "--junit", junit)
        tests, fails, cases = junit_report(junit)
        outs.append((rc, out.strip(), tests, [c[0] for c in cases]))
    check(outs == [(0, cap + ": ok", 1, [cap]), (0, cap2 + ": ok", 1, [cap2])],
          "--shard 1/2 and 2/2 split the list: %r" % outs)
    rc, out, err = await wsrr("replay", cap, cap2, cap, "--target", target, "--jobs", "2",
                              "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    check(rc == 0 and [(x["capture"], x["ok"]) for x in lines] == [(cap, True), (cap2, True),
                                                                  (cap, True)],
          "--jobs 2: every capture replayed, reports in list order (%d): %s" % (rc, out + err))
    rc, out, err = await wsrr("replay", cap, "--target", target, "--shard", "3/2")
    check(rc == 2 and "--shard" in err, "--shard 3/2 refused (%d): %r" % (rc, err))
    server.close()


GOT = []  # (path, what the server got) for test_rules


async def log_handler(ws, path=None):
    """Notes every message and how the connection ended; answers each."""
    path = path or ws.path
    try:
        async for msg in ws:
            GOT.append((path, msg))
            await ws.send(json.dumps({"type": "ack", "got": msg if isinstance(msg, str) else "b"}))
        GOT.append((path, "close %s %s" % (ws.close_code, ws.close_reason)))
    except websockets.exceptions.ConnectionClosed as exc:
        GOT.append((path, "close %s %s" % (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd
                    else "ended abnormally"))


async def test_rules():
    """--rules: the proxy's rules applied to what the replay sends; the
    server gets exactly the changed traffic, and each fault is listed."""
    server = await websockets.serve(log_handler, "127.0.0.1", 0, ping_interval=None)
    port = server.sockets[0].getsockname()[1]
    cap = os.path.join(TMP, "rules.wsrr")
    px = proxy(port, cap)
    for path in ("/a", "/b", "/c"):
        async with websockets.connect("ws://127.0.0.1:%s%s" % (px.m.group(1), path),
                                      ping_interval=None) as ws:
            for n in range(1, 5):
                await ws.send(json.dumps({"type": "step", "n": n, "secret_sauce": "x"}))
                await ws.recv()
    px.stop()
    await asyncio.sleep(0.2)
    rules = os.path.join(TMP, "rules.json")
    with open(rules, "w") as f:
        json.dump({"seed": 7, "rules": [
            {"name": "drop-2", "match": {"path": "/a", "direction": "client", "nth": 2},
             "action": {"drop": {}}},
            {"name": "edit-1", "match": {"path": "/a", "direction": "client",
                                          "json": {"n": 1}},
             "action": {"replace": {"json": {"set": {"n": 100}, "remove": ["secret_sauce"]}}}},
            {"name": "inject-3", "match": {"path": "/a", "direction": "client", "nth": 3},
             "action": {"inject": {"when": "after", "payload": "{\"type\":\"extra\"}"}}},
            {"name": "bye-4", "match": {"path": "/a", "direction": "client", "nth": 4},
             "action": {"close": {"code": 4000, "reason": "bye", "to": "server"}}},
            {"name": "dup-b", "match": {"path": "/b", "direction": "client", "nth": 1},
             "action": {"duplicate": {"times": 2}}},
            {"name": "reset-b", "match": {"path": "/b", "direction": "server", "nth": 1},
             "action": {"reset": {"to": "server"}}},
            {"name": "swap-c", "match": {"path": "/c", "direction": "client", "nth": 1},
             "action": {"reorder": {}}},
            {"name": "every-c", "match": {"path": "/c", "direction": "client", "nth": 4},
             "action": {"reorder": {}}},
        ]}, f)
    del GOT[:]
    rc, out, err = await wsrr("replay", cap, "--target", "ws://127.0.0.1:%d" % port,
                              "--rules", rules, "--json")
    await asyncio.sleep(0.3)
    a = [json.loads(m) if m.startswith("{") else m for p, m in GOT if p == "/a"]
    b = [json.loads(m) if m.startswith("{") else m for p, m in GOT if p == "/b"]
    check(a == [{"type": "step", "n": 100}, {"type": "step", "n": 3, "secret_sauce": "x"},
                {"type": "extra"}, "close 4000 bye"],
          "/a: message 1 edited, 2 dropped, 3 followed by the injected frame, 4 replaced "
          "by a close 4000: %r %s" % (a, err))
    # (a reset drops what the server had not read yet: the third copy may be lost)
    check(b[:2] == [{"type": "step", "n": 1, "secret_sauce": "x"}] * 2 and
          b[2:] in (["ended abnormally"], [b[0], "ended abnormally"]),
          "/b: message 1 three times, then a reset after the first answer: %r" % b)
    c = [m["n"] for p, m in [(p, json.loads(m)) for p, m in GOT if p == "/c" and
                                  m.startswith("{")]]
    check(c == [2, 1, 3, 4], "/c: message 1 held until message 2 went; message 4 has none "
          "after it to wait for: %r" % c)
    j = json.loads(out.splitlines()[0]) if out.strip() else {}
    rules_fired = [(f["rule"], f["action"]) for f in j.get("faults", [])]
    check(rc == 0 and rules_fired == [("edit-1", "replace"), ("drop-2", "drop"),
                                      ("inject-3", "inject"), ("bye-4", "close"),
                                      ("dup-b", "duplicate"), ("reset-b", "reset"),
                                      ("swap-c", "reorder"), ("every-c", "reorder")],
          "every fault listed, in order, and the run is not a failure (%d): %r %s"
          % (rc, rules_fired, err[-300:]))
    # the same rules again: the same faults (the decisions depend on the seed and ordinals)
    rc2, out2, _ = await wsrr("replay", cap, "--target", "ws://127.0.0.1:%d" % port,
                              "--rules", rules, "--json")
    j2 = json.loads(out2.splitlines()[0]) if out2.strip() else {}
    check(j2.get("faults") == j.get("faults"), "the same faults twice: %r" % j2.get("faults"))
    noseed = os.path.join(TMP, "noseed-rules.json")
    with open(noseed, "w") as f:
        json.dump({"rules": [{"name": "d", "match": {"path": "/a", "nth": 2},
                              "action": {"drop": {}}}]}, f)
    rc, out, err = await wsrr("replay", cap, "--target", "ws://127.0.0.1:%d" % port,
                              "--rules", noseed)
    check(rc == 0 and re.search(r"has no seed: \d+", err) and "rule d: drop" in out,
          "a rules file without a seed: one picked and printed (%d): %r %r" % (rc, out, err))
    bad = os.path.join(TMP, "bad-rules.json")
    with open(bad, "w") as f:
        f.write('{"rules": [{"name": "x", "match": {"nth": -1}, "action": {"drop": {}}}]}')
    rc, out, err = await wsrr("replay", cap, "--target", "ws://127.0.0.1:%d" % port,
                              "--rules", bad)
    check(rc == 2 and "rule 'x'" in err and "match.nth" in err,
          "a bad rules file: exit 2, the rule and the path named (%d): %r" % (rc, err))
    server.close()


TESTS = [test_demo_race, test_demo_verb, test_race_agent, test_race_chat, test_serve_demo,
         test_serve_race_and_strict, test_json_compare, test_extra_messages, test_timeout,
         test_secrets, test_set_and_shard, test_hangups_and_resets, test_serve_reset_after_messages,
         test_bad_input, test_rules]


def main():
    global WSRR, TMP
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsrr", required=True)
    ap.add_argument("tests", nargs="*")
    a = ap.parse_args()
    WSRR = os.path.abspath(a.wsrr)
    TMP = tempfile.mkdtemp(prefix="wsrr-replay-test-")
    try:
        return run_tests(TESTS, a.tests, always=(), per_test=150)
    finally:
        shutil.rmtree(TMP)


if __name__ == "__main__":
    sys.exit(main())
