#!/usr/bin/env python3
"""wsrr proxy --rules: fault injection against real peers on loopback.

One test per action of docs/rules.md (24), plus the headline example of
that document, the match conditions, the message actions on a
permessage-deflate stream, determinism under a seed, and bad rules files. Every test starts its own upstream (a Python websockets server
on a thread of its own, or a raw socket server when bytes matter), its own
`wsrr proxy --rules` and its own capture, and checks two things:

1. what the FAR peer actually received (the close code, the measured delay,
   the order, the bytes, the TCP reset, the HTTP status...);
2. the fault records in the capture (`wsrr cat --jsonl`): rule, action,
   connection, the frame record the fault acted on (target), and the detail
   JSON (dir, nth, the action's parameters). Frames wsrr itself sent are
   expected as frame records flagged "injected" (checks marked
   [injected-frame record] in the output).

usage: faults_test.py --wsrr PATH [TEST...]
"""
import argparse
import asyncio
import base64
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import websockets

WSRR = None
TMP = None
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wstest import Drain, accept_for, check, failures, frame  # noqa: E402


# ---- processes ----

PROXIES = []
UPSTREAMS = []


class Proxy:
    """A `wsrr proxy --rules` process on a free port, recording."""

    def __init__(self, upstream, rules, extra=()):
        stamp = time.monotonic_ns()
        self.capture = os.path.join(TMP, "cap-%d.wsrr" % stamp)
        self.rules_file = os.path.join(TMP, "rules-%d.json" % stamp)
        with open(self.rules_file, "w") as f:
            json.dump(rules, f)
        args = [WSRR, "proxy", "--listen", "127.0.0.1:0", "--upstream", upstream,
                "--grace", "1", "--rules", self.rules_file, "--record", self.capture] + list(extra)
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            raise RuntimeError("proxy did not start: %r %s" % (line, self.proc.stderr.read()))
        self.port = int(m.group(1))
        self.drain = Drain(self.proc.stderr)
        self.log = []
        PROXIES.append(self)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log = self.drain.lines()
        # a sanitizer report: show its start (the error and the stacks)
        first = next((i for i, l in enumerate(self.log) if "ERROR: " in l or "runtime error" in l),
                     max(0, len(self.log) - 30))
        check(self.proc.returncode == 0, "the proxy exits 0 (got %d):\n    %s" %
              (self.proc.returncode, "\n    ".join(self.log[first:first + 40])))
        return self.proc.returncode


def wsrr(*args):
    p = subprocess.run([WSRR] + list(args), capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def cat_jsonl(capture):
    rc, out, err = wsrr("cat", "--jsonl", capture)
    check(rc == 0, "wsrr cat --jsonl reads the capture (exit %d): %s" % (rc, err.strip()))
    lines = out.splitlines()
    if not lines:
        return {}, []
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def records(capture):
    return cat_jsonl(capture)[1]


def payload(r, key="payload"):
    if key in r:
        return r[key].encode()
    if key + "_b64" in r:
        return base64.b64decode(r[key + "_b64"])
    return b""


def msg_bytes(r):
    """The application payload of a frame record (inflated when recorded so)."""
    if "message" in r or "message_b64" in r:
        return payload(r, "message")
    return payload(r)


def as_bytes(m):
    return m.encode() if isinstance(m, str) else bytes(m)


def is_injected(r):
    return r.get("injected") is True or "injected" in r.get("flags", [])


def injected_frames(recs, conn=None, dir=None, opcode=None):
    return [r for r in recs if r["kind"] == "frame" and is_injected(r)
            and (conn is None or r["conn"] == conn) and (dir is None or r["dir"] == dir)
            and (opcode is None or r["opcode"] == opcode)]


def peer_frames(recs, conn=None, dir=None):
    return [r for r in recs if r["kind"] == "frame" and not is_injected(r)
            and (conn is None or r["conn"] == conn) and (dir is None or r["dir"] == dir)]


def faults(recs):
    out = []
    for r in recs:
        if r["kind"] != "fault":
            continue
        f = dict(r)
        try:
            d = json.loads(r.get("detail", ""))
        except ValueError:
            d = {"<not JSON>": r.get("detail")}
        f["d"] = d if isinstance(d, dict) else {"<not an object>": d}
        out.append(f)
    return out


def brief(fs):
    return [{k: f.get(k) for k in ("conn", "rule", "action", "target", "detail")} for f in fs]


def expect_faults(recs, rule, want):
    """The fault records of `rule`, in capture order, against `want`: a list
    of dicts with action, conn, dir, nth, target (the payload of the frame
    record the fault points at, or None: no target) and params (keys the
    detail must hold with these values)."""
    fs = [f for f in faults(recs) if f.get("rule") == rule]
    if not check(len(fs) == len(want), "rule %s: %d fault record(s), got %d: %s" %
                 (rule, len(want), len(fs), brief(faults(recs))[:12])):
        return fs
    by_seq = {r["seq"]: r for r in recs}
    fs.sort(key=lambda f: (f["conn"], f["d"].get("nth", 0), f["seq"]))
    for i, (f, w) in enumerate(zip(fs, want)):
        tag = "rule %s fault %d (conn %s)" % (rule, i + 1, w.get("conn"))
        check(f.get("action") == w["action"], "%s: action %r: %r" % (tag, w["action"], f.get("action")))
        if "conn" in w:
            check(f.get("conn") == w["conn"], "%s: conn %s: %s" % (tag, w["conn"], f.get("conn")))
        d = f["d"]
        if "dir" in w:
            check(d.get("dir") == w["dir"], "%s: detail dir %r: %s" % (tag, w["dir"], f.get("detail")))
        if "nth" in w:
            check(d.get("nth") == w["nth"], "%s: detail nth %r: %s" % (tag, w["nth"], f.get("detail")))
        for k, v in w.get("params", {}).items():
            check(d.get(k) == v, "%s: detail %s=%r: %s" % (tag, k, v, f.get("detail")))
        if "target" in w:
            if w["target"] is None:
                # the contract: absent for faults not tied to a frame; a target
                # naming the connection's upgrade request (the record the
                # handshake fault changed, docs/capture-format.md) is accepted
                t = by_seq.get(f.get("target"))
                check("target" not in f or (t is not None and t["kind"] == "request"
                                            and t["conn"] == f.get("conn")),
                      "%s: no target, or the connection's request record: %s" %
                      (tag, t and {k: t.get(k) for k in ("seq", "conn", "kind")}))
            else:
                t = by_seq.get(f.get("target"))
                ok = (t is not None and t["kind"] == "frame" and t["conn"] == f.get("conn")
                      and t["dir"] == w.get("dir", t["dir"]) and not is_injected(t)
                      and msg_bytes(t) == as_bytes(w["target"]))
                check(ok, "%s: target %s is the peer's %s frame %r: %s" %
                      (tag, f.get("target"), w.get("dir"), as_bytes(w["target"])[:40],
                       t and {k: t.get(k) for k in ("seq", "conn", "kind", "dir", "opcode",
                                                    "flags", "payload", "payload_b64")}))
    return fs


# ---- peers ----

EVENTS = [
    {"type": "agent_started", "run": "r1"},
    {"type": "tool_executing", "tool": "search", "id": 1, "data": {"ok": True, "n": 1},
     "trace": "t1"},
    {"type": "tool_executing", "tool": "fetch", "id": 2, "data": {"ok": True, "n": 2},
     "trace": "t2"},
    {"type": "agent_completed", "run": "r1"},
]


def E(i):
    return json.dumps(EVENTS[i])


class Upstream:
    """A Python websockets server on a thread (and event loop) of its own,
    so a test may block on raw sockets while it serves. Per request path it
    logs what it received (with the time), the request headers and how the
    connection closed. Commands: "events" sends EVENTS; "burst:N:SIZE" N
    messages of SIZE bytes; "big:N" one message of N bytes; anything else
    is echoed."""

    def __init__(self, compression=None, subprotocols=None):
        self.log = []         # (path, monotonic time, message)
        self.requests = []    # (monotonic time, path, headers)
        self.closes = {}      # path -> (received code, received reason, code)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        err = []

        def run():
            asyncio.set_event_loop(self.loop)
            try:
                self.server = self.loop.run_until_complete(websockets.serve(
                    self.handle, "127.0.0.1", 0, process_request=self.process_request,
                    compression=compression, subprotocols=subprotocols, max_size=None,
                    ping_interval=None, close_timeout=1))
            except Exception as e:  # noqa
                err.append(e)
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(10)
        if err:
            raise err[0]
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = "ws://127.0.0.1:%d" % self.port
        UPSTREAMS.append(self)

    async def process_request(self, path, headers):
        self.requests.append((time.monotonic(), path, headers))
        return None

    async def handle(self, ws, path):
        try:
            while True:
                m = await ws.recv()
                self.log.append((path, time.monotonic(), m))
                if m == "events":
                    for e in EVENTS:
                        await ws.send(json.dumps(e))
                elif isinstance(m, str) and m.startswith("burst:"):
                    _, n, size = m.split(":")
                    for i in range(int(n)):
                        await ws.send(("%d:" % i).ljust(int(size), "b"))
                elif isinstance(m, str) and m.startswith("big:"):
                    await ws.send("z" * int(m[4:]))
                else:
                    await ws.send(m)
        except websockets.ConnectionClosed as e:
            self.closes[path] = (e.rcvd.code if e.rcvd else None,
                                 e.rcvd.reason if e.rcvd else None, e.code)

    def received(self, path):
        return [m for p, _, m in self.log if p == path]

    def arrival(self, path, msg):
        for p, t, m in self.log:
            if p == path and m == msg:
                return t
        return None

    def paths(self):
        return [p for _, p, _ in self.requests]

    def close(self):
        if not self.loop.is_running():
            return

        async def stop():
            self.server.close()
            await self.server.wait_closed()
        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        except Exception:  # noqa
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def wait_for(cond, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def connect(port, path="/", compression=None, **kw):
    return websockets.connect("ws://127.0.0.1:%d%s" % (port, path), compression=compression,
                              max_size=None, ping_interval=None, open_timeout=5,
                              close_timeout=1, **kw)


async def collect(ws, n=None, until=None, idle=1.0):
    """Messages (arrival time, message) until n of them, until(message), a
    silence of `idle` s, or the close; closed is (received code, received
    reason, code) or None."""
    got, closed = [], None
    while n is None or len(got) < n:
        try:
            m = await asyncio.wait_for(ws.recv(), idle)
        except asyncio.TimeoutError:
            break
        except websockets.ConnectionClosed as e:
            closed = (e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else None, e.code)
            break
        got.append((time.monotonic(), m))
        if until and until(m):
            break
    return got, closed


def msgs(got):
    return [m for _, m in got]


def parse_frame(buf):
    """(frame dict, bytes used) for a complete frame at the start of buf."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    n, i = b1 & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, i = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, i = int.from_bytes(buf[2:10], "big"), 10
    mask = None
    if b1 & 0x80:
        if len(buf) < i + 4:
            return None
        mask, i = buf[i:i + 4], i + 4
    if len(buf) < i + n:
        return None
    data = buf[i:i + n]
    if mask:
        data = bytes(c ^ mask[k % 4] for k, c in enumerate(data))
    return {"fin": bool(b0 & 0x80), "rsv": (b0 >> 4) & 7, "op": b0 & 0x0F,
            "masked": mask is not None, "data": bytes(data)}, i + n


class RawClient:
    """A blocking raw-socket WebSocket client: frames built by hand, every
    recv() counted, how the connection ended ("eof", "rst") noted."""

    def __init__(self, port, path="/raw", extra=b""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                          b"Sec-WebSocket-Version: 13\r\n%s\r\n" % (path.encode(), port, key, extra))
        self.buf = b""
        self.ended = None
        self.nbytes = 0
        self.recvs = 0
        while b"\r\n\r\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                break
            self.buf += d
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.head = head
        self.status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0

    def send(self, data, opcode=1):
        self.sock.sendall(frame(0x80 | opcode, as_bytes(data), mask=os.urandom(4)))

    def _recv(self, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            return None
        except ConnectionResetError:
            self.ended = "rst"
            return b""
        if not d:
            self.ended = "eof"
            return b""
        self.recvs += 1
        self.nbytes += len(d)
        return d

    def frames(self, until=None, timeout=2.0):
        out = []
        deadline = time.monotonic() + timeout
        while True:
            while True:
                p = parse_frame(self.buf)
                if not p:
                    break
                f, used = p
                self.buf = self.buf[used:]
                f["t"] = time.monotonic()
                out.append(f)
                if until and until(out):
                    return out
            if self.ended:
                return out
            rem = deadline - time.monotonic()
            if rem <= 0:
                return out
            d = self._recv(rem)
            if d is None:
                return out
            self.buf += d

    def drain(self, timeout=3.0):
        """Read until the connection ends or `timeout`; the byte count."""
        deadline = time.monotonic() + timeout
        n0 = self.nbytes
        while not self.ended and time.monotonic() < deadline:
            d = self._recv(deadline - time.monotonic())
            if d is None:
                break
        return self.nbytes - n0

    def close(self):
        self.sock.close()


def http_response(sock):
    """Read an HTTP response (head + Content-Length body, or to EOF)."""
    sock.settimeout(5)
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            d = sock.recv(65536)
            if not d:
                break
            buf += d
        head, _, body = buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        want = int(m.group(1)) if m else None
        while want is None or len(body) < want:
            d = sock.recv(65536)
            if not d:
                break
            body += d
    except (socket.timeout, ConnectionResetError):
        head, _, body = buf.partition(b"\r\n\r\n")
    return head, body


class RawUpstream:
    """A blocking raw-socket WebSocket server: each connection on its own
    thread runs on_conn(self, sock, head, buf) after the 101 was sent."""

    def __init__(self, on_conn):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.url = "ws://127.0.0.1:%d" % self.port
        self.on_conn = on_conn
        self.state = {}
        threading.Thread(target=self.accept, daemon=True).start()
        UPSTREAMS.append(self)

    def accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    def serve(self, s):
        s.settimeout(5)
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                d = s.recv(65536)
                if not d:
                    return
                buf += d
            head, _, buf = buf.partition(b"\r\n\r\n")
            key = re.search(rb"(?i)Sec-WebSocket-Key: *(\S+)", head).group(1)
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_for(key) +
                      b"\r\n\r\n")
            self.on_conn(self, s, head, buf)
        except OSError:
            pass
        finally:
            s.close()

    def close(self):
        self.lsock.close()


# ---- tests: actions on a message ----

async def test_drop():
    """drop: the first tool_executing (json match) never reaches the client;
    a client message (contains) never reaches the server. The capture still
    holds both as sent."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "drop-first-tool", "limit_per_conn": 1,
         "match": {"direction": "server", "json": {"type": "tool_executing"}},
         "action": {"drop": {}}},
        {"name": "drop-client", "match": {"direction": "client", "contains": "secret"},
         "action": {"drop": {}}}]})
    async with connect(proxy.port, "/drop") as ws:
        await ws.send("events")
        got1, _ = await collect(ws, until=lambda m: m == E(3))
        await ws.send("secret")
        await ws.send("visible")
        got2, closed = await collect(ws, until=lambda m: m == "visible")
    proxy.stop()
    up.close()
    check(msgs(got1) == [E(0), E(2), E(3)], "the client got the events without the first "
          "tool_executing: %s" % msgs(got1))
    check(msgs(got2) == ["visible"], "the dropped client message was not echoed: %s" % msgs(got2))
    check(up.received("/drop") == ["events", "visible"], "the server never got the dropped "
          "message: %s" % up.received("/drop"))
    recs = records(proxy.capture)
    expect_faults(recs, "drop-first-tool", [dict(action="drop", conn=1, dir="server", nth=2,
                                                 target=E(1))])
    expect_faults(recs, "drop-client", [dict(action="drop", conn=1, dir="client", nth=2,
                                             target="secret")])
    sent = [msg_bytes(r) for r in peer_frames(recs, dir="server")]
    check(as_bytes(E(1)) in sent, "the capture keeps the dropped frame as the server sent it")
    check(not injected_frames(recs), "[injected-frame record] a drop sends nothing of wsrr's own")


async def test_delay():
    """delay 400 ms: the delayed message arrives >= 350 ms late, the next
    message of that direction waits behind it, the other direction not."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "slow", "match": {"direction": "server", "contains": "slow"},
         "action": {"delay": {"ms": 400}}}]})
    async with connect(proxy.port, "/delay") as ws:
        t = time.monotonic()
        await ws.send("fast1")
        got1, _ = await collect(ws, n=1, idle=3)
        rtt = (got1[0][0] - t) if got1 else 99
        t0 = time.monotonic()
        await ws.send("slow")
        await ws.send("fast2")
        got2, closed = await collect(ws, n=2, idle=3)
    proxy.stop()
    up.close()
    check(msgs(got1) == ["fast1"] and rtt < 0.2, "the control message is not delayed: %.3f s" % rtt)
    check(msgs(got2) == ["slow", "fast2"], "both arrive, in order: %s" % msgs(got2))
    if len(got2) == 2:
        d1, d2 = got2[0][0] - t0, got2[1][0] - t0
        check(0.35 <= d1 < 2.0, "the delayed message took >= 350 ms: %.3f s" % d1)
        check(d2 >= 0.35, "the next message of that direction waited behind it: %.3f s" % d2)
    ts = up.arrival("/delay", "fast2")
    check(ts is not None and ts - t0 < 0.2, "the client's direction was not delayed: %s" %
          (ts and "%.3f s" % (ts - t0)))
    recs = records(proxy.capture)
    expect_faults(recs, "slow", [dict(action="delay", conn=1, dir="server", nth=2,
                                      target="slow", params={"ms": 400})])


async def test_duplicate():
    """duplicate times 2: the message arrives three times, the others once."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "dup", "match": {"direction": "server", "contains": "dup"},
         "action": {"duplicate": {"times": 2}}}]})
    async with connect(proxy.port, "/dup") as ws:
        for m in ("one", "dup", "two"):
            await ws.send(m)
        got, _ = await collect(ws, until=lambda m: m == "two", idle=2)
        more, _ = await collect(ws, idle=0.3)
    proxy.stop()
    up.close()
    check(msgs(got + more) == ["one", "dup", "dup", "dup", "two"],
          "the duplicated message arrived three times: %s" % msgs(got + more))
    check(up.received("/dup") == ["one", "dup", "two"], "the server got each once")
    recs = records(proxy.capture)
    expect_faults(recs, "dup", [dict(action="duplicate", conn=1, dir="server", nth=2,
                                     target="dup", params={"times": 2})])
    inj = injected_frames(recs, dir="server")
    check(len(inj) == 2 and all(msg_bytes(r) == b"dup" for r in inj),
          "[injected-frame record] the two copies are recorded as injected server frames: %s" %
          [(r["dir"], r.get("payload")) for r in inj])


async def test_reorder():
    """reorder after 1 / after 2: the held message arrives after the next
    one / two messages of its direction."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "swap1", "limit_per_conn": 1,
         "match": {"conn": 1, "direction": "server", "json": {"type": "tool_executing"}},
         "action": {"reorder": {"after": 1}}},
        {"name": "swap2", "match": {"conn": 2, "direction": "server", "nth": 1},
         "action": {"reorder": {"after": 2}}}]})
    out = []
    for i in (1, 2):
        async with connect(proxy.port, "/reorder%d" % i) as ws:
            await ws.send("events")
            got, _ = await collect(ws, n=4, idle=2)
            out.append(msgs(got))
    proxy.stop()
    up.close()
    check(out[0] == [E(0), E(2), E(1), E(3)], "after 1: the two tool_executing arrive swapped: "
          "%s" % [json.loads(m).get("id", m) if m.startswith("{") else m for m in out[0]])
    check(out[1] == [E(1), E(2), E(0), E(3)], "after 2: agent_started arrives third: %s" %
          [json.loads(m)["type"] for m in out[1] if m.startswith("{")])
    recs = records(proxy.capture)
    expect_faults(recs, "swap1", [dict(action="reorder", conn=1, dir="server", nth=2,
                                       target=E(1), params={"after": 1})])
    expect_faults(recs, "swap2", [dict(action="reorder", conn=2, dir="server", nth=1,
                                       target=E(0), params={"after": 2})])


async def test_corrupt():
    """corrupt, 30 messages each way under seed 42 (the drawn positions are
    then the same every run): binary payloads with exactly 4 bytes changed
    (keep_valid false), text payloads with exactly 3 bytes changed and still
    valid UTF-8; the changed bytes are the positions the fault record gives."""
    N = 30
    up = Upstream()
    proxy = Proxy(up.url, {"seed": 42, "rules": [
        {"name": "smash", "match": {"direction": "server", "opcode": "binary"},
         "action": {"corrupt": {"bytes": 4, "keep_valid": False}}},
        {"name": "nudge", "match": {"direction": "server", "opcode": "text",
                                    "contains": "corrupt-text"},
         "action": {"corrupt": {"bytes": 3, "keep_valid": True}}}]})
    binary = bytes(range(64))
    text = "corrupt-text " + "abcdefghij" * 5
    async with connect(proxy.port, "/corrupt") as ws:
        for _ in range(N):
            await ws.send(binary)
        g1, _ = await collect(ws, n=N, idle=2)
        for _ in range(N):
            await ws.send(text)
        g2, _ = await collect(ws, n=N, idle=2)
        await ws.send("clean")
        g3, closed = await collect(ws, n=1, idle=2)
    proxy.stop()
    up.close()

    def diff(a, b):
        return [i for i, (x, y) in enumerate(zip(a, b)) if x != y] if len(a) == len(b) else None

    b, t = msgs(g1), msgs(g2)
    bad = [(i, m if not isinstance(m, bytes) else diff(m, binary)) for i, m in enumerate(b, 1)
           if not isinstance(m, bytes) or len(diff(m, binary) or []) != 4]
    check(len(b) == N and not bad, "each of %d binary payloads arrived with exactly 4 bytes "
          "changed (got %d; wrong ones, message: changed positions: %s)" % (N, len(b), bad))
    bad = [(i, m if not isinstance(m, str) else diff(m.encode(), text.encode()))
           for i, m in enumerate(t, N + 1)
           if not isinstance(m, str) or len(diff(m.encode(), text.encode()) or []) != 3]
    check(len(t) == N and not bad, "each of %d text payloads arrived valid with exactly 3 bytes "
          "changed (got %d, closed %s; wrong ones, message: changed positions: %s)" %
          (N, len(t), closed, bad))
    check(msgs(g3) == ["clean"], "an unmatched message is untouched: %s" % msgs(g3))
    recs = records(proxy.capture)
    fs = expect_faults(recs, "smash", [dict(action="corrupt", conn=1, dir="server", nth=i,
                                            target=binary,
                                            params={"bytes": 4, "keep_valid": False})
                                       for i in range(1, N + 1)])
    fs += expect_faults(recs, "nudge", [dict(action="corrupt", conn=1, dir="server", nth=i,
                                             target=text, params={"bytes": 3, "keep_valid": True})
                                        for i in range(N + 1, 2 * N + 1)])
    got = {f["d"].get("nth"): f["d"].get("positions") for f in fs}
    seen = [(nth, diff(as_bytes(m), binary if nth <= N else text.encode()))
            for nth, m in enumerate(b + t, 1)]
    wrong = [(nth, got.get(nth), d) for nth, d in seen
             if not isinstance(got.get(nth), list) or sorted(got.get(nth)) != d]
    check(not wrong, "the detail's positions are the bytes that changed (nth, positions, "
          "changed): %s" % wrong[:5])
    inj = [msg_bytes(r) for r in injected_frames(recs, dir="server")]
    check(inj == [as_bytes(m) for m in b + t],
          "[injected-frame record] the corrupted payloads as sent are injected server frames "
          "(%d of %d)" % (len(inj), len(b + t)))


async def test_truncate():
    """truncate bytes 10: only the first 10 payload bytes arrive."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "cut", "match": {"direction": "server", "contains": "0123456789abc"},
         "action": {"truncate": {"bytes": 10}}}]})
    async with connect(proxy.port, "/truncate") as ws:
        await ws.send("0123456789abcdefghij")
        await ws.send("after")
        got, closed = await collect(ws, n=2, idle=2)
    proxy.stop()
    up.close()
    check(msgs(got) == ["0123456789", "after"], "the client got the first 10 bytes, then the "
          "next message whole: %s (closed %s)" % (msgs(got), closed))
    recs = records(proxy.capture)
    expect_faults(recs, "cut", [dict(action="truncate", conn=1, dir="server", nth=1,
                                     target="0123456789abcdefghij", params={"bytes": 10})])
    inj = [msg_bytes(r) for r in injected_frames(recs, dir="server")]
    check(inj == [b"0123456789"], "[injected-frame record] the truncated frame is recorded as "
          "injected: %s" % inj)


async def test_fragment():
    """fragment frames 3: a raw client sees a text frame and two
    continuations (FIN only on the last) that join to the message."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "split", "match": {"direction": "server", "contains": "fragment me"},
         "action": {"fragment": {"frames": 3}}}]})
    c = RawClient(proxy.port, "/fragment")
    c.send("fragment me please!!")
    f1 = c.frames(until=lambda fs: fs[-1]["fin"], timeout=2)
    c.send("whole")
    f2 = c.frames(until=lambda fs: fs[-1]["fin"], timeout=2)
    c.close()
    proxy.stop()
    up.close()
    check(c.status == 101, "the upgrade went through: %d" % c.status)
    check([(f["op"], f["fin"]) for f in f1] == [(1, False), (0, False), (0, True)],
          "3 frames: text, continuation, continuation, FIN on the last: %s" %
          [(f["op"], f["fin"], f["data"]) for f in f1])
    check(b"".join(f["data"] for f in f1) == b"fragment me please!!" and
          not any(f["masked"] for f in f1), "the pieces join to the message, unmasked")
    check([(f["op"], f["fin"], f["data"]) for f in f2] == [(1, True, b"whole")],
          "the next message is one frame: %s" % f2)
    recs = records(proxy.capture)
    expect_faults(recs, "split", [dict(action="fragment", conn=1, dir="server", nth=1,
                                       target="fragment me please!!", params={"frames": 3})])
    inj = injected_frames(recs, dir="server")
    check([(r["opcode"], r["fin"]) for r in inj] == [("text", False), ("cont", False),
                                                     ("cont", True)]
          and b"".join(payload(r) for r in inj) == b"fragment me please!!",
          "[injected-frame record] the 3 pieces are recorded as injected frames: %s" %
          [(r["opcode"], r["fin"], r.get("payload")) for r in inj])


async def test_replace():
    """replace: whole payload (text), JSON set+remove, payload_b64."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "rep-payload", "match": {"direction": "server", "json": {"type": "agent_started"}},
         "action": {"replace": {"payload": "REPLACED"}}},
        {"name": "rep-json", "limit_per_conn": 1,
         "match": {"direction": "server", "json": {"type": "tool_executing"}},
         "action": {"replace": {"json": {"set": {"data.ok": False, "tool": "patched"},
                                         "remove": ["trace"]}}}},
        {"name": "rep-b64", "match": {"direction": "server", "json": {"type": "agent_completed"}},
         "action": {"replace": {"payload_b64": base64.b64encode(b"from base64").decode()}}}]})
    async with connect(proxy.port, "/replace") as ws:
        await ws.send("events")
        got, closed = await collect(ws, n=4, idle=2)
    proxy.stop()
    up.close()
    g = msgs(got)
    check(len(g) == 4, "four messages arrived: %s (closed %s)" % (g, closed))
    if len(g) == 4:
        check(g[0] == "REPLACED", "the payload replaced whole: %r" % g[0])
        want = dict(EVENTS[1], tool="patched", data={"ok": False, "n": 1})
        del want["trace"]
        try:
            edited = json.loads(g[1])
        except (ValueError, TypeError):
            edited = g[1]
        check(edited == want, "the JSON edited (data.ok false, tool set, trace removed): %r" % g[1])
        check(g[2] == E(2), "limit_per_conn 1: the second tool_executing untouched: %r" % g[2])
        check(as_bytes(g[3]) == b"from base64", "payload_b64 decoded and sent: %r" % g[3])
    recs = records(proxy.capture)
    expect_faults(recs, "rep-payload", [dict(action="replace", conn=1, dir="server", nth=1,
                                             target=E(0))])
    expect_faults(recs, "rep-json", [dict(action="replace", conn=1, dir="server", nth=2,
                                          target=E(1))])
    expect_faults(recs, "rep-b64", [dict(action="replace", conn=1, dir="server", nth=4,
                                         target=E(3))])
    inj = [msg_bytes(r) for r in injected_frames(recs, dir="server")]
    check(len(g) == 4 and inj == [as_bytes(g[0]), as_bytes(g[1]), as_bytes(g[3])],
          "[injected-frame record] the replacement payloads are injected server frames: %s" % inj)


async def test_inject():
    """inject after (text, to the client) and before (binary, payload_b64,
    to the server, masked: a Python server accepts it)."""
    up = Upstream()
    extra = '{"type":"agent_completed","injected":true}'
    proxy = Proxy(up.url, {"rules": [
        {"name": "inj-after", "match": {"direction": "server", "json": {"type": "agent_started"}},
         "action": {"inject": {"when": "after", "payload": extra, "to": "client"}}},
        {"name": "inj-before", "match": {"direction": "client", "contains": "hello-server"},
         "action": {"inject": {"when": "before", "opcode": "binary", "to": "server",
                               "payload_b64": base64.b64encode(b"\x00\x01injected").decode()}}}]})
    async with connect(proxy.port, "/inject") as ws:
        await ws.send("events")
        g1, _ = await collect(ws, n=5, idle=2)
        await ws.send("hello-server")
        g2, closed = await collect(ws, n=2, idle=2)
    proxy.stop()
    up.close()
    check(msgs(g1) == [E(0), extra, E(1), E(2), E(3)], "the injected frame arrived right after "
          "agent_started: %s" % msgs(g1))
    check(up.received("/inject") == ["events", b"\x00\x01injected", "hello-server"],
          "the server got the injected binary frame (masked) before the client's message: %s" %
          up.received("/inject"))
    check(msgs(g2) == [b"\x00\x01injected", "hello-server"], "and echoed both: %s" % msgs(g2))
    recs = records(proxy.capture)
    expect_faults(recs, "inj-after", [dict(action="inject", conn=1, dir="server", nth=1,
                                           target=E(0), params={"when": "after", "to": "client"})])
    expect_faults(recs, "inj-before", [dict(action="inject", conn=1, dir="client", nth=2,
                                            target="hello-server",
                                            params={"when": "before", "to": "server"})])
    a = injected_frames(recs, dir="server")
    b = injected_frames(recs, dir="client")
    check([msg_bytes(r) for r in a] == [extra.encode()] and
          [(r["opcode"], msg_bytes(r), r.get("masked")) for r in b] ==
          [("binary", b"\x00\x01injected", True)],
          "[injected-frame record] the injected frames: %s / %s" %
          ([(r["opcode"], r.get("payload")) for r in a],
           [(r["opcode"], r.get("payload_b64"), r.get("masked")) for r in b]))


async def test_close():
    """close to both: instead of the client's message, each side gets the
    close frame 4000 "rule close"; the message never reaches the server."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "close-both", "match": {"direction": "client", "contains": "bye"},
         "action": {"close": {"code": 4000, "reason": "rule close", "to": "both"}}}]})
    async with connect(proxy.port, "/close") as ws:
        await ws.send("hi")
        g1, _ = await collect(ws, n=1, idle=2)
        t0 = time.monotonic()
        await ws.send("bye")
        g2, closed = await collect(ws, idle=3)
        took = time.monotonic() - t0  # recv() raises once the TCP connection is closed too
    wait_for(lambda: "/close" in up.closes, 3)
    proxy.stop()
    up.close()
    check(msgs(g1) == ["hi"], "a message before the rule is echoed")
    check(msgs(g2) == [] and closed is not None and closed[:2] == (4000, "rule close"),
          "the client got close 4000 'rule close': %s %s" % (msgs(g2), closed))
    check(took < 0.8, "and the connection ends: closed %.3f s after the message" % took)
    sc = up.closes.get("/close")
    check(sc is not None and sc[:2] == (4000, "rule close"),
          "the server got close 4000 'rule close': %s" % (sc,))
    check("bye" not in up.received("/close"), "the message was replaced, not forwarded: %s" %
          up.received("/close"))
    recs = records(proxy.capture)
    expect_faults(recs, "close-both", [dict(action="close", conn=1, dir="client", nth=2,
                                            target="bye", params={"code": 4000,
                                                                  "reason": "rule close",
                                                                  "to": "both"})])
    cl = [(r["side"], r.get("code")) for r in recs if r["kind"] == "close"]
    check(cl == [("proxy", 4000)], "the close record: started by the proxy (wsrr), 4000: %s" % cl)
    inj = injected_frames(recs, opcode="close")
    check(sorted((r["dir"], r.get("code"), r.get("reason")) for r in inj) ==
          [("client", 4000, "rule close"), ("server", 4000, "rule close")],
          "[injected-frame record] a close frame each way, recorded as injected: %s" %
          [(r["dir"], r.get("code"), r.get("reason")) for r in inj])


async def test_ping_storm():
    """ping_storm count 10 interval 10 ms to the client: after the message,
    10 unmasked pings, spread over about 90 ms."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "storm", "match": {"direction": "server", "contains": "storm"},
         "action": {"ping_storm": {"count": 10, "interval_ms": 10, "to": "client"}}}]})
    c = RawClient(proxy.port, "/storm")
    c.send("storm")
    fs = c.frames(until=lambda fs: sum(f["op"] == 9 for f in fs) >= 10, timeout=3)
    fs += c.frames(timeout=0.3)
    c.close()
    proxy.stop()
    up.close()
    check(fs and (fs[0]["op"], fs[0]["data"]) == (1, b"storm"), "the message arrives first: %s" %
          [(f["op"], f["data"][:10]) for f in fs[:3]])
    pings = [f for f in fs if f["op"] == 9]
    check(len(pings) == 10 and not any(f["masked"] for f in pings),
          "then exactly 10 pings, unmasked: %d" % len(pings))
    if len(pings) >= 2:
        spread = pings[-1]["t"] - pings[0]["t"]
        check(spread >= 0.06, "spread by the interval (>= 60 ms for 10 at 10 ms): %.3f s" % spread)
    recs = records(proxy.capture)
    expect_faults(recs, "storm", [dict(action="ping_storm", conn=1, dir="server", nth=1,
                                       target="storm",
                                       params={"count": 10, "interval_ms": 10, "to": "client"})])
    inj = injected_frames(recs, opcode="ping")
    check(len(inj) == 10 and all(r["dir"] == "server" for r in inj),
          "[injected-frame record] 10 injected ping frames towards the client: %d" % len(inj))


# ---- tests: actions on a connection ----

async def test_reset():
    """reset: a Python client sees an abnormal close (1006), a raw client a
    TCP RST, the server an abnormal close too; the message that fired it is
    not delivered."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "rst", "match": {"direction": "server", "contains": "reset-now"},
         "action": {"reset": {"to": "both"}}}]})
    async with connect(proxy.port, "/reset1") as ws:
        await ws.send("hello")
        g1, _ = await collect(ws, n=1, idle=2)
        await ws.send("reset-now")
        g2, closed = await collect(ws, idle=3)
    c = RawClient(proxy.port, "/reset2")
    c.send("reset-now")
    fs = c.frames(timeout=3)
    c.close()
    wait_for(lambda: "/reset1" in up.closes and "/reset2" in up.closes, 3)
    proxy.stop()
    up.close()
    check(msgs(g1) == ["hello"], "before the rule: echoed")
    check(msgs(g2) == [] and closed is not None and closed[0] is None and closed[2] == 1006,
          "the Python client sees an abnormal close, 1006, no close frame: %s %s" %
          (msgs(g2), closed))
    check(c.ended == "rst" and not [f for f in fs if f["op"] == 1],
          "the raw client sees a TCP RST and no data: %s %s" % (c.ended, fs))
    for p in ("/reset1", "/reset2"):
        sc = up.closes.get(p)
        check(sc is not None and sc[0] is None and sc[2] == 1006,
              "the server of %s sees an abnormal close: %s" % (p, sc))
    recs = records(proxy.capture)
    expect_faults(recs, "rst", [dict(action="reset", conn=1, dir="server", nth=2,
                                     target="reset-now", params={"to": "both"}),
                                dict(action="reset", conn=2, dir="server", nth=1,
                                     target="reset-now", params={"to": "both"})])


def half_close_server(up, s, head, buf):
    """Logs the frames it receives; on EOF, notes the time and sends a frame
    the other way, which must still reach the client."""
    up.state["got"] = []
    s.settimeout(4)
    while True:
        while True:
            p = parse_frame(buf)
            if not p:
                break
            f, used = p
            buf = buf[used:]
            up.state["got"].append(f["data"])
        try:
            d = s.recv(65536)
        except (socket.timeout, ConnectionResetError) as e:
            up.state["end"] = repr(e)
            return
        if not d:
            up.state["eof_at"] = time.monotonic()
            time.sleep(0.1)
            s.sendall(frame(0x81, b"after-eof"))
            time.sleep(0.5)
            return
        buf += d


async def test_half_close():
    """half_close to server: the server reads EOF, the server-to-client
    direction stays open (its next frame reaches the client)."""
    up = RawUpstream(half_close_server)
    proxy = Proxy(up.url, {"rules": [
        {"name": "half", "match": {"direction": "client", "contains": "half"},
         "action": {"half_close": {"to": "server"}}}]})
    c = RawClient(proxy.port, "/half")
    c.send("hello")
    time.sleep(0.1)
    t0 = time.monotonic()
    c.send("half")
    fs = c.frames(until=lambda fs: any(f["data"] == b"after-eof" for f in fs), timeout=3)
    ended_before = c.ended
    c.close()
    proxy.stop()
    up.close()
    eof = up.state.get("eof_at")
    check(eof is not None and eof - t0 < 1.5, "the server read EOF (FIN) soon after the rule "
          "fired: %s" % (eof and "%.3f s" % (eof - t0) or up.state.get("end")))
    check([f["data"] for f in fs if f["op"] == 1] == [b"after-eof"] and ended_before is None,
          "the other direction stayed open: the server's frame reached the client: %s %s" %
          ([(f["op"], f["data"]) for f in fs], ended_before))
    check(up.state.get("got", [])[:1] == [b"hello"], "the server got the message before: %s" %
          up.state.get("got"))
    recs = records(proxy.capture)
    expect_faults(recs, "half", [dict(action="half_close", conn=1, dir="client", nth=2,
                                      target="half", params={"to": "server"})])


async def test_stall():
    """stall 800 ms: the next exchange waits ~800 ms, the connection stays
    open; stall 0 (conn 2): nothing more is forwarded, and still no close."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "stall-800", "match": {"conn": 1, "direction": "client", "contains": "stall"},
         "action": {"stall": {"ms": 800}}},
        {"name": "stall-forever", "match": {"conn": 2, "direction": "client", "contains": "stall"},
         "action": {"stall": {"ms": 0}}}]})
    res = {}
    for i in (1, 2):
        async with connect(proxy.port, "/stall%d" % i) as ws:
            t = time.monotonic()
            await ws.send("before")
            g0, _ = await collect(ws, n=1, idle=2)
            rtt = g0[0][0] - t if g0 else 99
            t0 = time.monotonic()
            await ws.send("stall")
            await asyncio.sleep(0.1)
            await ws.send("after")
            got, closed = await collect(ws, until=lambda m: m == "after", idle=3 if i == 1 else 1.5)
            res[i] = (rtt, t0, got, closed)
    proxy.stop()
    up.close()
    rtt, t0, got, closed = res[1]
    check(rtt < 0.2, "before the stall: fast (%.3f s)" % rtt)
    after = [t for t, m in got if m == "after"]
    check(after and 0.6 <= after[0] - t0 < 3 and closed is None,
          "stall 800 ms: the exchange after it came >= 600 ms late, the connection open: "
          "%s %s" % (after and "%.3f s" % (after[0] - t0), closed))
    rtt, t0, got, closed = res[2]
    check(rtt < 0.2, "conn 2 before the stall: fast (%.3f s)" % rtt)
    check("after" not in msgs(got) and closed is None and "after" not in up.received("/stall2"),
          "stall 0: nothing forwarded for 1.5 s, and no close: %s %s" % (msgs(got), closed))
    recs = records(proxy.capture)
    expect_faults(recs, "stall-800", [dict(action="stall", conn=1, dir="client", nth=2,
                                           target="stall", params={"ms": 800})])
    expect_faults(recs, "stall-forever", [dict(action="stall", conn=2, dir="client", nth=2,
                                               target="stall", params={"ms": 0})])


async def test_bandwidth():
    """bandwidth 10000 B/s (conn 1, fired by the first server message): a
    40000-byte message takes seconds; on conn 2 it is immediate."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "thin", "match": {"conn": 1, "direction": "server", "nth": 1},
         "action": {"bandwidth": {"bytes_per_s": 10000}}}]})
    res = {}
    for i in (1, 2):
        async with connect(proxy.port, "/bw%d" % i) as ws:
            await ws.send("hi")
            await collect(ws, n=1, idle=3)
            t0 = time.monotonic()
            await ws.send("big:40000")
            got, closed = await collect(ws, n=1, idle=10)
            res[i] = (got[0][0] - t0 if got else None, msgs(got))
    proxy.stop()
    up.close()
    el, m = res[1]
    check(m == ["z" * 40000] and el is not None and 2.0 <= el < 12,
          "40000 bytes at 10000 B/s took >= 2 s (a 1 s burst allowed): %s" % (el,))
    el, m = res[2]
    check(m == ["z" * 40000] and el is not None and el < 0.5,
          "without the rule (conn 2) it is immediate: %s" % (el,))
    recs = records(proxy.capture)
    expect_faults(recs, "thin", [dict(action="bandwidth", conn=1, dir="server", nth=1,
                                      target="hi", params={"bytes_per_s": 10000})])


async def test_latency():
    """latency 300 ms, direction server (conn 1): server-to-client late,
    client-to-server not; no direction (conn 2, fired at once): both late."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "lat-s", "match": {"conn": 1, "direction": "server", "nth": 1},
         "action": {"latency": {"ms": 300}}},
        {"name": "lat-both", "match": {"conn": 2},
         "action": {"latency": {"ms": 300}}}]})
    res = {}
    for i in (1, 2):
        path = "/lat%d" % i
        async with connect(proxy.port, path) as ws:
            await ws.send("warm")
            await collect(ws, n=1, idle=3)
            legs = []
            for k in range(2):
                t0 = time.monotonic()
                await ws.send("probe%d" % k)
                got, _ = await collect(ws, n=1, idle=3)
                ts = up.arrival(path, "probe%d" % k)
                legs.append((ts - t0 if ts else None, got[0][0] - ts if got and ts else None))
            res[i] = legs
    proxy.stop()
    up.close()
    for c2s, s2c in res[1]:
        check(c2s is not None and c2s < 0.15, "direction server: client-to-server not delayed: "
              "%s" % c2s)
        check(s2c is not None and 0.25 <= s2c < 1.5, "direction server: server-to-client "
              ">= 250 ms: %s" % s2c)
    for c2s, s2c in res[2]:
        check(c2s is not None and 0.25 <= c2s < 1.5, "no direction: client-to-server >= 250 ms: "
              "%s" % c2s)
        check(s2c is not None and 0.25 <= s2c < 1.5, "no direction: server-to-client >= 250 ms: "
              "%s" % s2c)
    recs = records(proxy.capture)
    expect_faults(recs, "lat-s", [dict(action="latency", conn=1, dir="server", nth=1,
                                       target="warm", params={"ms": 300})])
    expect_faults(recs, "lat-both", [dict(action="latency", conn=2, params={"ms": 300})])


async def test_slicer():
    """slicer 1 byte / 2 ms: a raw client reading with small sleeps sees the
    message come in many recv() calls over hundreds of ms; on conn 2 (no
    rule) in one or two."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "slices", "match": {"conn": 1, "direction": "server", "nth": 1},
         "action": {"slicer": {"bytes": 1, "delay_ms": 2}}}]})
    res = {}
    want = frame(0x81, b"s" * 200)  # 204 bytes
    for i in (1, 2):
        c = RawClient(proxy.port, "/slice%d" % i)
        c.send("warm")
        c.frames(until=lambda fs: len(fs) >= 1, timeout=3)
        c.send("s" * 200)
        r0, t0, buf, t_last = c.recvs, time.monotonic(), c.buf, None
        deadline = t0 + 5
        while len(buf) < len(want) and time.monotonic() < deadline and not c.ended:
            d = c._recv(deadline - time.monotonic())
            if not d:
                break
            buf += d
            t_last = time.monotonic()
            time.sleep(0.001)
        res[i] = (c.recvs - r0, (t_last - t0) if t_last else None, buf)
        c.close()
    proxy.stop()
    up.close()
    n, spread, buf = res[1]
    check(buf == want, "conn 1: the message arrived intact (%d bytes)" % len(buf))
    check(n >= 20, "conn 1: in many small reads (%d recv() calls for %d bytes)" % (n, len(want)))
    check(spread is not None and spread >= 0.2, "conn 1: spread over >= 200 ms: %s" % spread)
    n, spread, buf = res[2]
    check(buf == want and n <= 3, "conn 2 (no rule): in %d recv() calls" % n)
    recs = records(proxy.capture)
    expect_faults(recs, "slices", [dict(action="slicer", conn=1, dir="server", nth=1,
                                        target="warm", params={"bytes": 1, "delay_ms": 2})])


async def test_timeout():
    """timeout 500 ms: an exchange before it works, one after it is never
    forwarded, and the connection stays open (a dead peer)."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "dead", "match": {"direction": "client", "nth": 1},
         "action": {"timeout": {"ms": 500}}}]})
    async with connect(proxy.port, "/timeout") as ws:
        t0 = time.monotonic()
        await ws.send("t1")
        g1, _ = await collect(ws, n=1, idle=2)
        await asyncio.sleep(max(0, t0 + 0.9 - time.monotonic()))
        await ws.send("t2")
        g2, closed = await collect(ws, idle=1.2)
    proxy.stop()
    up.close()
    check(msgs(g1) == ["t1"] and g1[0][0] - t0 < 0.4, "before the timeout: echoed")
    check(msgs(g2) == [] and "t2" not in up.received("/timeout"),
          "after it nothing is forwarded: client got %s, server got %s" %
          (msgs(g2), up.received("/timeout")))
    check(closed is None, "the connection stays open (no close seen): %s" % (closed,))
    recs = records(proxy.capture)
    expect_faults(recs, "dead", [dict(action="timeout", conn=1, dir="client", nth=1,
                                      target="t1", params={"ms": 500})])


async def test_kill_after():
    """kill_after 1000 bytes: of a 3000-byte burst the client gets at most
    1000 bytes, then the connection is cut (both sides)."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "kill", "match": {"direction": "client", "nth": 1},
         "action": {"kill_after": {"bytes": 1000}}}]})
    c = RawClient(proxy.port, "/kill")
    c.send("burst:10:300")
    n = c.drain(timeout=3) + len(c.buf)
    ended = c.ended
    c.close()
    wait_for(lambda: "/kill" in up.closes, 2)
    proxy.stop()
    up.close()
    check(ended in ("eof", "rst"), "the connection was cut: %s" % ended)
    check(n <= 1000 and (ended == "rst" or n >= 800),
          "the client got at most 1000 bytes of the 3020 (%d, ended by %s)" % (n, ended))
    check(up.closes.get("/kill", (0, 0, 0))[2] == 1006,
          "the server's side was cut too: %s" % (up.closes.get("/kill"),))
    recs = records(proxy.capture)
    expect_faults(recs, "kill", [dict(action="kill_after", conn=1, dir="client", nth=1,
                                      target="burst:10:300", params={"bytes": 1000})])


# ---- tests: actions on the handshake ----

async def test_reject():
    """reject 429 for /v1/*: the client gets the status, the header and the
    body; the upstream never sees those requests; /other goes through."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "reject-v1", "match": {"path": "/v1/*"},
         "action": {"reject": {"status": 429, "body": "slow down",
                               "headers": {"Retry-After": "1"}}}}]})
    status = None
    try:
        async with connect(proxy.port, "/v1/chat"):
            pass
    except websockets.InvalidStatusCode as e:
        status = e.status_code
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    s.sendall(b"GET /v1/raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head, body = http_response(s)
    s.close()
    async with connect(proxy.port, "/other") as ws:
        await ws.send("ok?")
        g, _ = await collect(ws, n=1, idle=2)
    proxy.stop()
    up.close()
    check(status == 429, "the Python client gets 429: %s" % status)
    check(head.startswith(b"HTTP/1.1 429") and re.search(rb"(?i)\r\nRetry-After: *1\r?", head + b"\r\n")
          and body == b"slow down", "the raw response: 429, Retry-After: 1, body 'slow down': "
          "%r %r" % (head, body))
    check(msgs(g) == ["ok?"], "an unmatched path goes through")
    check(up.paths() == ["/other"], "the upstream only saw /other: %s" % up.paths())
    recs = records(proxy.capture)
    expect_faults(recs, "reject-v1", [dict(action="reject", conn=c, dir="client", nth=0,
                                           target=None, params={"status": 429}) for c in (1, 2)])


async def timed_handshakes(proxy, up, prefix):
    """Connections 1 and 2 on PREFIX1, PREFIX2: for each, (seconds until the
    101, seconds until the upstream saw the request or None, the echo)."""
    res = {}
    for i in (1, 2):
        path = "%s%d" % (prefix, i)
        t0 = time.monotonic()
        async with connect(proxy.port, path) as ws:
            t_open = time.monotonic() - t0
            await ws.send("x")
            g, _ = await collect(ws, n=1, idle=2)
        t_req = [t for t, p, _ in up.requests if p == path]
        res[i] = (t_open, t_req[0] - t0 if t_req else None, msgs(g))
    return res


async def test_delay_upgrade():
    """delay_upgrade 600 ms (conn 1): the upstream is asked at once, the 101
    reaches the client >= 550 ms later; conn 2 is immediate."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "slow-101", "match": {"conn": 1}, "action": {"delay_upgrade": {"ms": 600}}}]})
    res = await timed_handshakes(proxy, up, "/du")
    proxy.stop()
    up.close()
    o, r, g = res[1]
    check(o >= 0.55 and o < 3, "conn 1: the 101 came >= 550 ms late: %.3f s" % o)
    check(r is not None and r < 0.3, "conn 1: the upstream was asked at once: %s" % r)
    check(g == ["x"], "conn 1 then works")
    o, r, g = res[2]
    check(o < 0.3 and g == ["x"], "conn 2: immediate: %.3f s" % o)
    recs = records(proxy.capture)
    expect_faults(recs, "slow-101", [dict(action="delay_upgrade", conn=1, dir="client", nth=0,
                                          target=None, params={"ms": 600})])


async def test_headers():
    """headers: Sec-WebSocket-Extensions removed from the request (the server
    sees no deflate offer, nothing compressed), Sec-WebSocket-Protocol from
    the response, a header set each way; conn 2 untouched as control."""
    up = Upstream(compression="deflate", subprotocols=["chat"])
    proxy = Proxy(up.url, {"rules": [
        {"name": "strip", "match": {"conn": 1},
         "action": {"headers": {
             "request": {"remove": ["Sec-WebSocket-Extensions"], "set": {"X-Fault": "yes"}},
             "response": {"remove": ["Sec-WebSocket-Protocol"], "set": {"X-From-Wsrr": "1"}}}}}]})
    res = {}
    for i in (1, 2):
        async with connect(proxy.port, "/h%d" % i, compression="deflate",
                           subprotocols=["chat"]) as ws:
            await ws.send("hello " * 50)
            g, _ = await collect(ws, n=1, idle=2)
            res[i] = (list(ws.extensions), ws.subprotocol, ws.response_headers, msgs(g))
    proxy.stop()
    up.close()
    req = {p: h for _, p, h in up.requests}
    ext, sub, rh, g = res[1]
    h1 = req.get("/h1")
    check(h1 is not None and "Sec-WebSocket-Extensions" not in h1 and h1.get("X-Fault") == "yes",
          "the server saw no deflate offer and X-Fault: yes: %s" % (h1 and dict(h1)))
    check(ext == [] and g == ["hello " * 50], "conn 1 runs uncompressed: %s" % ext)
    check(sub is None and "Sec-WebSocket-Protocol" not in rh and rh.get("X-From-Wsrr") == "1",
          "the client got no subprotocol and X-From-Wsrr: 1: %s %s" % (sub, dict(rh)))
    ext, sub, rh, g = res[2]
    check(len(ext) == 1 and sub == "chat" and g == ["hello " * 50],
          "conn 2 (control): deflate and 'chat' negotiated: %s %s" % (ext, sub))
    recs = records(proxy.capture)
    fr1 = peer_frames(recs, conn=1)
    fr2 = peer_frames(recs, conn=2)
    check(fr1 and not any(r.get("rsv") for r in fr1), "the capture: conn 1 frames uncompressed")
    check(any(r.get("rsv") == 4 for r in fr2), "the capture: conn 2 frames compressed")
    expect_faults(recs, "strip", [dict(action="headers", conn=1, dir="client", nth=0,
                                       target=None)])


async def test_refuse_connect():
    """refuse_connect for /down: the client gets 502, the upstream never
    sees it; /up goes through."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "down", "match": {"path": "/down"}, "action": {"refuse_connect": {}}}]})
    status = None
    try:
        async with connect(proxy.port, "/down"):
            pass
    except websockets.InvalidStatusCode as e:
        status = e.status_code
    async with connect(proxy.port, "/up") as ws:
        await ws.send("ok?")
        g, _ = await collect(ws, n=1, idle=2)
    proxy.stop()
    up.close()
    check(status == 502, "the client gets 502: %s" % status)
    check(msgs(g) == ["ok?"], "another path goes through")
    check(up.paths() == ["/up"], "the upstream never saw /down: %s" % up.paths())
    recs = records(proxy.capture)
    expect_faults(recs, "down", [dict(action="refuse_connect", conn=1, dir="client", nth=0,
                                      target=None)])


async def test_delay_connect():
    """delay_connect 600 ms (conn 1): the upstream gets the request >= 550 ms
    after the client connected; conn 2 immediate."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "late", "match": {"conn": 1}, "action": {"delay_connect": {"ms": 600}}}]})
    res = await timed_handshakes(proxy, up, "/dc")
    proxy.stop()
    up.close()
    o, r, g = res[1]
    check(r is not None and 0.55 <= r < 3, "conn 1: the upstream was contacted >= 550 ms late: "
          "%s" % r)
    check(o >= 0.55 and g == ["x"], "conn 1: the upgrade completed late (%.3f s), then works" % o)
    o, r, g = res[2]
    check(o < 0.3 and g == ["x"], "conn 2: immediate: %.3f s" % o)
    recs = records(proxy.capture)
    expect_faults(recs, "late", [dict(action="delay_connect", conn=1, dir="client", nth=0,
                                      target=None, params={"ms": 600})])


# ---- tests: the headline example, matching, determinism, bad files ----

HEADLINE = {
    "seed": 7,
    "rules": [
        {
            "name": "crash-after-second-tool",
            "match": {"direction": "server", "opcode": "text",
                      "json": {"type": "tool_executing"}, "skip": 1},
            "limit_per_conn": 1,
            "action": {"close": {"code": 1011, "reason": "Internal error", "to": "client"}}
        }
    ]
}


async def test_headline_example():
    """docs/rules.md's first example: on every connection the client gets
    agent_started, the first tool_executing, then close 1011 'Internal
    error' in place of the second; with and without permessage-deflate."""
    for compression in (None, "deflate"):
        up = Upstream(compression=compression)
        proxy = Proxy(up.url, HEADLINE)
        out = []
        for i in (1, 2):
            async with connect(proxy.port, "/agent%d" % i, compression=compression) as ws:
                t0 = time.monotonic()
                await ws.send("events")
                got, closed = await collect(ws, idle=2)
                # recv() raises only once the TCP connection is closed too
                out.append((msgs(got), closed, time.monotonic() - t0))
        proxy.stop()
        up.close()
        for i, (got, closed, took) in enumerate(out, 1):
            check(got == [E(0), E(1)], "compression=%s conn %d: agent_started and the first "
                  "tool_executing, nothing after: %s" % (compression, i, got))
            check(closed is not None and closed[:2] == (1011, "Internal error"),
                  "compression=%s conn %d: then close 1011 'Internal error': %s" %
                  (compression, i, closed))
            check(took < 0.8, "compression=%s conn %d: and the connection ends: closed %.3f s "
                  "after the request (the client's close_timeout is 1 s; Python's default, "
                  "10 s)" % (compression, i, took))
        recs = records(proxy.capture)
        expect_faults(recs, "crash-after-second-tool", [
            dict(action="close", conn=c, dir="server", nth=3, target=E(2),
                 params={"code": 1011, "reason": "Internal error", "to": "client"})
            for c in (1, 2)])
        cl = [(r["conn"], r["side"], r.get("code")) for r in recs if r["kind"] == "close"]
        check(sorted(cl) == [(1, "proxy", 1011), (2, "proxy", 1011)],
              "compression=%s: the close records: started by the proxy (wsrr), 1011: %s" %
              (compression, cl))
        inj = injected_frames(recs, opcode="close")
        check(sorted((r["conn"], r["dir"], r.get("code"), r.get("reason")) for r in inj) ==
              [(1, "server", 1011, "Internal error"), (2, "server", 1011, "Internal error")],
              "[injected-frame record] compression=%s: the close frames towards the clients are "
              "injected server frames: %s" %
              (compression, [(r["conn"], r["dir"], r.get("code")) for r in inj]))


async def test_match_content():
    """json (dotted path, exists, array index), contains, regex, path and
    header, each on the payload after permessage-deflate is undone. Each rule
    injects "hit:RULE" after the message it matched, so the client sees which
    rule matched which message (inject leaves a deflate stream alone; what
    drop and the others do to one is test_deflate_message_actions' job)."""
    names = ["by-json", "by-exists", "by-index", "by-contains", "by-regex", "by-path",
             "by-header"]
    matches = [{"json": {"data.kind": "secret"}}, {"json": {"flag": {"exists": True}}},
               {"json": {"items.1.type": "x"}}, {"contains": "needle"},
               {"regex": "^num-[0-9]+$"}, {"path": "/nomatch/*", "contains": "pathmsg"},
               {"header": {"X-Test": "yes*"}, "contains": "hdrmsg"}]
    rules = [{"name": n, "match": dict(m, direction="server"),
              "action": {"inject": {"when": "after", "payload": "hit:" + n, "to": "client"}}}
             for n, m in zip(names, matches)]
    sent = ['{"data":{"kind":"secret"}}', '{"data":{"kind":"public"}}', '{"flag":null}',
            '{"items":[{"type":"a"},{"type":"x"}]}', '{"items":[{"type":"x"},{"type":"a"}]}',
            "hay needle hay", "num-42", "num-x42", "pathmsg", "hdrmsg", "end"]
    hits = {0: "by-json", 2: "by-exists", 3: "by-index", 5: "by-contains", 6: "by-regex",
            9: "by-header"}
    want = []
    for i, m in enumerate(sent):
        want += [m] + (["hit:" + hits[i]] if i in hits else [])
    for compression in (None, "deflate"):
        up = Upstream(compression=compression)
        proxy = Proxy(up.url, {"rules": rules})
        async with connect(proxy.port, "/match", compression=compression,
                           extra_headers={"X-Test": "yes-please"}) as ws:
            for m in sent:
                await ws.send(m)
            got, closed = await collect(ws, until=lambda m: m == "end", idle=2)
        proxy.stop()
        up.close()
        tag = "compression=%s" % compression
        check(msgs(got) == want, "%s: exactly the matching messages were followed by their "
              "rule's hit: %s (closed %s)" % (tag, msgs(got), closed))
        check(up.received("/match") == sent, "%s: the server got everything" % tag)
        recs = records(proxy.capture)
        for i, rule in hits.items():
            expect_faults(recs, rule, [dict(action="inject", conn=1, dir="server", nth=i + 1,
                                            target=sent[i])])
        check(not [f for f in faults(recs) if f["rule"] == "by-path"],
              "%s: the path rule did not fire on another path" % tag)


async def test_match_counts():
    """nth, skip with limit_per_conn, limit over the run, after_rule, conn,
    enabled false: one connection each, six messages each."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "off", "enabled": False, "action": {"drop": {}}},
        {"name": "nth3", "match": {"conn": 1, "direction": "server", "nth": 3},
         "action": {"replace": {"payload": "NTH"}}},
        {"name": "skip2", "limit_per_conn": 2,
         "match": {"conn": 2, "direction": "server", "regex": "^m[0-9]$", "skip": 2},
         "action": {"replace": {"payload": "SKIP"}}},
        {"name": "once", "limit": 1, "match": {"conn": [3, 4], "direction": "server",
                                               "contains": "m2"},
         "action": {"replace": {"payload": "ONCE"}}},
        {"name": "first", "match": {"conn": 5, "direction": "server", "contains": "m2"},
         "action": {"replace": {"payload": "FIRST"}}},
        {"name": "second", "limit_per_conn": 1,
         "match": {"conn": 5, "direction": "server", "after_rule": "first"},
         "action": {"replace": {"payload": "AFTER"}}}]})
    out = []
    for i in range(1, 6):
        async with connect(proxy.port, "/count%d" % i) as ws:
            for k in range(1, 7):
                await ws.send("m%d" % k)
            await ws.send("end")
            got, _ = await collect(ws, until=lambda m: m == "end", idle=2)
            out.append(msgs(got))
    proxy.stop()
    up.close()
    base = ["m1", "m2", "m3", "m4", "m5", "m6", "end"]

    def w(**kw):
        r = list(base)
        for k, v in kw.items():
            r[int(k[1:]) - 1] = v
        return r
    want = [w(m3="NTH"), w(m3="SKIP", m4="SKIP"), w(m2="ONCE"), base, w(m2="FIRST", m3="AFTER")]
    names = ["nth 3", "skip 2 + limit_per_conn 2", "limit 1 (first conn)",
             "limit 1 (used up: second conn)", "after_rule + limit_per_conn 1"]
    for i, (g, wt, n) in enumerate(zip(out, want, names), 1):
        check(g == wt, "conn %d, %s: %s" % (i, n, g))
    recs = records(proxy.capture)
    expect_faults(recs, "nth3", [dict(action="replace", conn=1, dir="server", nth=3, target="m3")])
    expect_faults(recs, "skip2", [dict(action="replace", conn=2, dir="server", nth=3, target="m3"),
                                  dict(action="replace", conn=2, dir="server", nth=4, target="m4")])
    expect_faults(recs, "once", [dict(action="replace", conn=3, dir="server", nth=2, target="m2")])
    expect_faults(recs, "first", [dict(action="replace", conn=5, dir="server", nth=2, target="m2")])
    expect_faults(recs, "second", [dict(action="replace", conn=5, dir="server", nth=3,
                                        target="m3")])
    expect_faults(recs, "off", [])


PATCHED = dict(EVENTS[1], data={"ok": False, "n": 1})
DEFLATE_CASES = [
    ("drop", {"drop": {}}, [E(0), E(2), E(3)]),
    ("duplicate", {"duplicate": {"times": 1}}, [E(0), E(1), E(1), E(2), E(3)]),
    ("reorder", {"reorder": {"after": 1}}, [E(0), E(2), E(1), E(3)]),
    ("replace", {"replace": {"json": {"set": {"data.ok": False}}}},
     [E(0), PATCHED, E(2), E(3)]),
    ("inject", {"inject": {"when": "after", "payload": "{\"type\":\"extra\"}", "to": "client"}},
     [E(0), E(1), '{"type":"extra"}', E(2), E(3)]),
    ("fragment", {"fragment": {"frames": 2}}, [E(0), E(1), E(2), E(3)]),
]


async def test_deflate_message_actions():
    """The message actions on a permessage-deflate connection (Python's
    default, context takeover on): the first tool_executing is acted on, and
    the client must still read every later message, which shares content
    with the earlier ones, intact."""
    up = Upstream(compression="deflate")
    proxy = Proxy(up.url, {"rules": [
        {"name": "z-" + name, "limit_per_conn": 1,
         "match": {"conn": i, "direction": "server", "json": {"type": "tool_executing"}},
         "action": action} for i, (name, action, _) in enumerate(DEFLATE_CASES, 1)]})
    out = []
    for i, (name, _, want) in enumerate(DEFLATE_CASES, 1):
        async with connect(proxy.port, "/z%d" % i, compression="deflate") as ws:
            compressed = bool(ws.extensions)
            await ws.send("events")
            got, closed = await collect(ws, n=len(want), idle=2)
            out.append((compressed, msgs(got), closed))
    proxy.stop()
    up.close()
    for (name, _, want), (compressed, got, closed) in zip(DEFLATE_CASES, out):
        check(compressed, "%s: deflate negotiated" % name)
        def parse(m):
            try:
                return m if isinstance(m, dict) else json.loads(m)
            except (ValueError, TypeError):
                return m
        parsed = [parse(m) for m in got]
        wantp = [parse(m) for m in want]
        check(parsed == wantp and closed is None, "deflate, %s: the client read %s, closed %s" %
              (name, [p.get("type", p) if isinstance(p, dict) else p for p in parsed], closed))
    recs = records(proxy.capture)
    for i, (name, action, _) in enumerate(DEFLATE_CASES, 1):
        expect_faults(recs, "z-" + name, [dict(action=name, conn=i, dir="server", nth=2,
                                               target=E(1))])


DETERMINISTIC = {"seed": 42, "rules": [
    {"name": "maybe-drop", "match": {"direction": "server", "contains": "msg-", "probability": 0.5},
     "action": {"drop": {}}},
    {"name": "maybe-dup", "match": {"direction": "client", "contains": "msg-", "probability": 0.5},
     "action": {"duplicate": {"times": 1}}},
    {"name": "maybe-jitter", "match": {"direction": "server", "contains": "msg-",
                                       "probability": 0.5},
     "action": {"delay": {"ms": 10, "jitter_ms": 10}}}]}


async def deterministic_run(rules):
    up = Upstream()
    proxy = Proxy(up.url, rules)
    got = []
    for i in range(1, 4):
        async with connect(proxy.port, "/det%d" % i) as ws:
            for k in range(1, 21):
                await ws.send("msg-%d" % k)
            await ws.send("end")
            g, _ = await collect(ws, until=lambda m: m == "end", idle=2)
            got.append(msgs(g))
    proxy.stop()
    up.close()
    head, recs = cat_jsonl(proxy.capture)
    fs = sorted((f["conn"], f["rule"], f["action"], f["d"].get("dir", ""), f["d"].get("nth", 0),
                 f.get("detail")) for f in faults(recs))
    return head.get("meta", {}), fs, got


async def test_determinism():
    """seed 42, probability 0.5: two runs of the same session give the same
    fault records and the same received messages; seed 43 differs."""
    m1, f1, g1 = await deterministic_run(DETERMINISTIC)
    m2, f2, g2 = await deterministic_run(DETERMINISTIC)
    m3, f3, g3 = await deterministic_run(dict(DETERMINISTIC, seed=43))
    drops = [f for f in f1 if f[1] == "maybe-drop"]
    dups = [f for f in f1 if f[1] == "maybe-dup"]
    check(9 <= len(dups) <= 51, "probability 0.5: about half of the 60 client messages "
          "duplicated: %d" % len(dups))
    check(len(dups) and 0.15 <= len(drops) / (60.0 + len(dups)) <= 0.85,
          "probability 0.5: about half of the server messages dropped: %d of %d" %
          (len(drops), 60 + len(dups)))
    jit = [f for f in f1 if f[1] == "maybe-jitter"]
    delays = [json.loads(f[5]).get("delayed_ms") for f in jit]
    check(len(set(delays)) > 1 and all(isinstance(d, int) and 0 <= d <= 20 for d in delays),
          "the jitter rule fired with drawn delays 0-20 ms (detail delayed_ms): %s" % delays[:8])
    check(f1 and f1 == f2, "the same seed, the same fault records (%d / %d; first difference: %s)" %
          (len(f1), len(f2), next(((a, b) for a, b in zip(f1, f2) if a != b), None)))
    check(g1 == g2, "the same seed, the same messages received")
    check(f1 != f3, "another seed, other faults")
    check(str(m1.get("seed")) == "42", "the seed is in the capture's metadata: %s" % m1.get("seed"))
    ok = True
    for conn, got in enumerate(g1, 1):
        dropped = {f[4] for f in f1 if f[0] == conn and f[1] == "maybe-drop"}
        duped = {f[4] for f in f1 if f[0] == conn and f[1] == "maybe-dup"}
        # the server echoes every copy it gets, in order: its nth-th message
        srv = []
        for k in range(1, 21):
            srv.append("msg-%d" % k)
            if k in duped:
                srv.append("msg-%d" % k)
        want = [m for n, m in enumerate(srv, 1) if n not in dropped] + ["end"]
        ok = ok and got == want
    check(ok, "what the client received matches the fault records (dups echoed, drops missing)")


BAD_RULES = [
    ('{"rules":[{"name":"a","action":{"dorp":{}}}]}',
     "rule 'a' (rules[0]): action: unknown action 'dorp'"),
    ('{"rules":[{"name":"ok","action":{"drop":{}}},{"name":"slow","action":{"delay":{"ms":-5}}}]}',
     "rule 'slow' (rules[1]): action.delay.ms"),
    ('{"rules":[{"name":"x","mtach":{},"action":{"drop":{}}}]}', "rule 'x' (rules[0])"),
    ('{"rules":[{"name":"x","match":{"after_rule":"y"},"action":{"drop":{}}}]}',
     "rule 'x' (rules[0]): match.after_rule"),
    ('{"rules":[{"name":"h","match":{"direction":"server"},"action":{"reject":{"status":429}}}]}',
     "rule 'h' (rules[0]): match"),
    ('{"rules":[{"name":"c","action":{"close":{"code":1000,"reason":"%s"}}}]}' % ("r" * 124),
     ("rule 'c' (rules[0]): action.close", "reason", "123")),
    ('{"rules":[{"name":"d","action":{"drop":{}}},{"name":"d","action":{"drop":{}}}]}',
     "rule 'd' (rules[1])"),
    ('{"rules": [', "not JSON"),
]


async def test_bad_rules():
    """A bad rules file: exit 2, one line naming the rule and the JSON path,
    and no proxy started."""
    for text, needle in BAD_RULES + [(None, "nonexistent-rules.json")]:
        path = os.path.join(TMP, "nonexistent-rules.json")
        if text is not None:
            path = os.path.join(TMP, "bad-%d.json" % time.monotonic_ns())
            with open(path, "w") as f:
                f.write(text)
        p = subprocess.run([WSRR, "proxy", "--listen", "127.0.0.1:0", "--upstream",
                            "ws://127.0.0.1:1", "--rules", path], capture_output=True, text=True,
                           timeout=10)
        lines = p.stderr.strip().splitlines()
        needles = needle if isinstance(needle, tuple) else (needle,)
        check(p.returncode == 2 and len(lines) == 1 and lines[0].startswith("wsrr proxy:")
              and all(n in lines[0] for n in needles) and "listening" not in p.stderr,
              "%s: exit 2, one line naming %r: %d %r" % (text and text[:60], needle,
                                                         p.returncode, p.stderr))



# ---- hostile traffic under every kind of rule ----

def random_frames(rnd, n, masked):
    """n frames, valid and not: text/binary, fragmented messages with
    control frames inside, reserved opcodes and RSV bits, wrong masking,
    orphan continuations, close frames in the middle."""
    out = []
    for _ in range(n):
        kind = rnd.random()
        mask = os.urandom(4) if masked != (rnd.random() < 0.05) else None
        body = bytes(rnd.choice(b"abc{}\":, xyz") for _ in range(rnd.choice((0, 1, 5, 60, 200, 3000))))
        if kind < 0.45:
            out.append(frame(0x81 if rnd.random() < 0.7 else 0x82, body, mask=mask))
        elif kind < 0.65:  # a fragmented message, a ping inside
            k = rnd.randint(2, 4)
            for i in range(k):
                b0 = (0x80 if i == k - 1 else 0) | (0x01 if i == 0 else 0x00)
                out.append(frame(b0, body[i::k], mask=mask))
                if i == 0:
                    out.append(frame(0x89, b"in", mask=mask))
        elif kind < 0.75:
            out.append(frame(0x89 if rnd.random() < 0.5 else 0x8A, body[:20], mask=mask))
        elif kind < 0.85:  # reserved opcode, RSV bits, orphan continuation
            out.append(frame(rnd.choice((0x83, 0x8B, 0xC1, 0x80, 0x00)), body[:50], mask=mask))
        elif kind < 0.9:
            out.append(frame(0x88, b"\x03\xe8bye", mask=mask))
        else:
            out.append(frame(0x81, body, mask=mask, width=64))
    return b"".join(out)


def send_in_pieces(sock, rnd, data):
    i = 0
    while i < len(data):
        k = rnd.choice((1, 3, 17, 400, 5000))
        sock.sendall(data[i:i + k])
        i += k
        if rnd.random() < 0.1:
            time.sleep(0.001)


async def test_hostile_traffic():
    """Random valid and invalid frames, split anywhere, both ways on 12
    connections at once, under rules of every kind (message, connection,
    JSON and regex matches): the proxy survives (exit 0, no sanitizer
    report), its capture verifies, and a well-behaved connection made after
    it all still gets its echo."""
    def hostile(up, s, head, buf):
        if b"/echo" in head:
            s.settimeout(3)
            data = buf
            while True:
                p = parse_frame(data)
                if p:
                    f, used = p
                    data = data[used:]
                    if f["op"] == 8:
                        s.sendall(frame(0x88, b"\x03\xe8"))
                        return
                    s.sendall(frame(0x81, f["data"]))
                    continue
                d = s.recv(65536)
                if not d:
                    return
                data += d
        rnd = random.Random(head)
        s.settimeout(0.05)
        send_in_pieces(s, rnd, random_frames(rnd, 60, masked=False))
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            try:
                if not s.recv(65536):
                    return
            except socket.timeout:
                pass
            except OSError:
                return

    up = RawUpstream(hostile)
    proxy = Proxy(up.url, {"seed": 5, "rules": [
        {"name": "r-drop", "match": {"nth": 2}, "action": {"drop": {}}},
        {"name": "r-dup", "match": {"contains": "abc"}, "limit_per_conn": 2,
         "action": {"duplicate": {"times": 2}}},
        {"name": "r-reorder", "match": {"nth": 3}, "action": {"reorder": {"after": 2}}},
        {"name": "r-corrupt", "match": {"opcode": "binary"}, "limit_per_conn": 3,
         "action": {"corrupt": {"bytes": 3, "keep_valid": False}}},
        {"name": "r-frag", "match": {"opcode": "text", "nth": 5},
         "action": {"fragment": {"frames": 3}}},
        {"name": "r-json", "match": {"json": {"a": {"exists": True}}},
         "action": {"replace": {"json": {"set": {"b.c": 1}}}}},
        {"name": "r-regex", "match": {"regex": "x+y+z", "probability": 0.5},
         "action": {"truncate": {"bytes": 7}}},
        {"name": "r-inject", "match": {"opcode": "ping"}, "limit_per_conn": 2,
         "action": {"inject": {"when": "after", "opcode": "pong", "payload": "p"}}},
        {"name": "r-storm", "match": {"nth": 7}, "action": {"ping_storm": {"count": 3}}},
        {"name": "r-lat", "match": {"conn": 3}, "action": {"latency": {"ms": 5, "jitter_ms": 5}}},
        {"name": "r-slice", "match": {"conn": 4}, "action": {"slicer": {"bytes": 7}}},
        {"name": "r-close", "match": {"conn": 5, "nth": 20},
         "action": {"close": {"code": 1011, "reason": "boom"}}},
        {"name": "r-kill", "match": {"conn": 6}, "action": {"kill_after": {"bytes": 3000}}},
        {"name": "r-reset", "match": {"conn": 7, "nth": 10}, "action": {"reset": {}}},
        {"name": "r-bw", "match": {"conn": 8}, "action": {"bandwidth": {"bytes_per_s": 200000}}},
        {"name": "r-stall", "match": {"conn": 9, "nth": 4}, "action": {"stall": {"ms": 200}}},
        {"name": "r-half", "match": {"conn": 10, "nth": 30}, "action": {"half_close": {"to": "server"}}},
    ]})

    def client(i):
        rnd = random.Random(i)
        try:
            c = RawClient(proxy.port, "/hostile%d" % i)
            send_in_pieces(c.sock, rnd, random_frames(rnd, 60, masked=True))
            c.drain(timeout=1.5)
            c.close()
        except OSError:
            pass

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # after all that, a plain exchange still works
    c = RawClient(proxy.port, "/echo")
    c.send("still here")
    got = c.frames(until=lambda fs: len(fs) >= 1, timeout=3)
    c.close()
    check(c.status == 101 and [f["data"] for f in got[:1]] == [b"still here"],
          "a connection after the hostile ones gets its echo: %s" % got[:1])
    proxy.stop()
    up.close()
    r = subprocess.run([WSRR, "verify", proxy.capture], capture_output=True, text=True)
    check(r.returncode == 0, "the capture verifies: %s" % (r.stdout + r.stderr).strip()[:300])
    recs = records(proxy.capture)
    fired = {f["rule"] for f in faults(recs)}
    check(len(fired) >= 14, "most rules fired on the hostile traffic: %s" % sorted(fired))


# ---- what the engine holds when a peer goes away, and its bounds ----

async def test_fin_flushes_held():
    """The server's FIN does not lose what the engine still holds: a
    delayed message and the close behind it arrive, in order, before the
    FIN; a frame cut short by the FIN is passed on as it came."""
    def script(up, s, head, buf):
        if b"/cut" in head:
            s.sendall(frame(0x81, b"ok") + frame(0x81, b"hello world")[:6])
        else:
            s.sendall(frame(0x81, b"late") + frame(0x88, b"\x03\xe8"))
        time.sleep(0.05)
        s.shutdown(socket.SHUT_WR)
        time.sleep(1)

    up = RawUpstream(script)
    proxy = Proxy(up.url, {"rules": [
        {"name": "slow", "match": {"path": "/slow", "direction": "server", "opcode": "text"},
         "action": {"delay": {"ms": 300}}},
        {"name": "never", "match": {"contains": "not-there"}, "action": {"drop": {}}}]})
    def read_all(c, timeout=3):
        deadline = time.monotonic() + timeout
        while not c.ended and time.monotonic() < deadline:
            d = c._recv(deadline - time.monotonic())
            if d is None:
                break
            c.buf += d
        return c.buf

    c = RawClient(proxy.port, "/slow")
    t0 = time.monotonic()
    got = read_all(c)
    ended, dt = c.ended, time.monotonic() - t0
    c.close()
    c2 = RawClient(proxy.port, "/cut")
    got2 = read_all(c2)
    c2.close()
    proxy.stop()
    up.close()
    check(got == frame(0x81, b"late") + frame(0x88, b"\x03\xe8") and ended == "eof",
          "the delayed message and the close, then the FIN: %r (%s)" % (got, ended))
    check(dt >= 0.25, "the message was delayed: %.3f s" % dt)
    check(got2 == frame(0x81, b"ok") + frame(0x81, b"hello world")[:6],
          "the frame cut by the FIN went on as it came: %r" % got2)


async def test_close_behind_queue():
    """A close rule behind a delayed message: the message still goes first
    (it was queued before), then the close frame."""
    def script(up, s, head, buf):
        s.sendall(frame(0x81, b"one"))
        time.sleep(0.05)
        s.sendall(frame(0x81, b"two"))
        time.sleep(2)

    up = RawUpstream(script)
    proxy = Proxy(up.url, {"rules": [
        {"name": "d", "match": {"direction": "server", "nth": 1}, "action": {"delay": {"ms": 200}}},
        {"name": "x", "match": {"direction": "server", "nth": 2},
         "action": {"close": {"code": 1011, "reason": "x", "to": "client"}}}]})
    c = RawClient(proxy.port, "/q")
    fs = c.frames(until=lambda fs: any(f["op"] == 8 for f in fs), timeout=3)
    c.close()
    proxy.stop()
    up.close()
    check([(f["op"], f["data"]) for f in fs] == [(1, b"one"), (8, b"\x03\xf3x")],
          "the delayed message, then the close: %s" % [(f["op"], f["data"]) for f in fs])


async def test_own_frames_between_messages():
    """Frames wsrr adds (a ping storm here) never land inside a message
    that is passing as it comes (over --max-buffer): they follow it."""
    big = frame(0x82, os.urandom(3 << 20))

    def script(up, s, head, buf):
        for i in range(0, len(big), 65536):
            s.sendall(big[i:i + 65536])
            time.sleep(0.005)
        s.sendall(frame(0x81, b"after"))
        time.sleep(2)

    up = RawUpstream(script)
    proxy = Proxy(up.url, {"rules": [
        {"name": "storm", "match": {"direction": "client"},
         "action": {"ping_storm": {"count": 3, "to": "client"}}}]})
    c = RawClient(proxy.port, "/big")
    while len(c.buf) < 200000:
        d = c._recv(3)
        if not d:
            break
        c.buf += d
    c.send("go")  # fires the storm while the big frame streams
    fs = c.frames(until=lambda fs: len(fs) >= 5, timeout=5)  # the big one, 3 pings, 'after'
    c.close()
    proxy.stop()
    up.close()
    kinds = [(f["op"], len(f["data"])) for f in fs]
    check(fs and fs[0]["op"] == 2 and len(fs[0]["data"]) == 3 << 20,
          "the big frame arrives whole first: %s" % kinds[:5])
    check(sorted(f["op"] for f in fs[1:]) == [1, 9, 9, 9],
          "then the three pings and 'after', whole frames: %s" % kinds)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


async def test_memory_bounded():
    """What a hostile peer cannot make the engine hold: 200,000 pings
    inside an unfinished message (each would be a frame header to keep), and
    a storm of 100,000 pings towards a client that never reads."""
    def script(up, s, head, buf):
        if b"/pings" in head:
            s.sendall(frame(0x01, b"start") + frame(0x89, b"") * 200000 + frame(0x80, b"end"))
        time.sleep(2)

    up = RawUpstream(script)
    # under AddressSanitizer freed memory sits in quarantine and counts as
    # resident: keep none, so RSS means what it means in a release build
    saved = os.environ.get("ASAN_OPTIONS")
    os.environ["ASAN_OPTIONS"] = (saved + ":" if saved else "") + "quarantine_size_mb=0"
    proxy = Proxy(up.url, {"rules": [
        {"name": "storm", "match": {"path": "/storm", "direction": "client"},
         "action": {"ping_storm": {"count": 100000, "to": "client"}}},
        {"name": "other", "match": {"contains": "zzz"}, "action": {"drop": {}}}]})
    if saved is None:
        del os.environ["ASAN_OPTIONS"]
    else:
        os.environ["ASAN_OPTIONS"] = saved
    base = rss_kb(proxy.proc.pid)
    c = RawClient(proxy.port, "/pings")
    n = c.drain(timeout=2)
    c.close()
    after_pings = rss_kb(proxy.proc.pid)
    c2 = RawClient(proxy.port, "/storm")
    for _ in range(50):
        c2.send("x")
    time.sleep(1)  # the client reads nothing
    after_storm = rss_kb(proxy.proc.pid)
    c2.close()
    proxy.stop()
    up.close()
    check(n + len(c.buf) >= 400000, "the pings went through: %d bytes" % (n + len(c.buf)))
    check(after_pings - base < 20000, "200,000 pings in a message: +%d KiB" % (after_pings - base))
    check(after_storm - base < 20000, "a storm at a client that does not read: +%d KiB" %
          (after_storm - base))


async def test_match_large_pieces():
    """contains on large masked client messages that arrive in many TCP
    pieces (searched part by part as they come, the rest at the end): the
    ones with the needle in the middle, near the end, cut in two by a pause
    (the proxy has most likely searched up to the cut when the rest comes:
    where its reads end is the kernel's business; test_rules cuts exactly),
    or cut between two fragments with a ping between them, are dropped;
    those without it (one with a near miss across the cut) arrive whole."""
    up = Upstream()
    proxy = Proxy(up.url, {"rules": [
        {"name": "needle", "match": {"direction": "client", "contains": "NEEDLE-42"},
         "action": {"drop": {}}}]})
    rnd = random.Random(7)
    plain = "".join(rnd.choice("abcdefgh \"{}:,") for _ in range(300000))
    at = lambda pos, s: plain[:pos] + s + plain[pos + len(s):]  # noqa: E731
    hit_mid, hit_end = at(150000, "NEEDLE-42"), at(299000, "NEEDLE-42")
    hit_cut, miss_cut = at(200000, "NEEDLE-42"), at(200000, "NEEDLE-4X")
    c = RawClient(proxy.port, "/large")
    for m in (hit_mid, hit_end, plain, hit_cut, miss_cut, "frag", "end"):
        if m == "frag":  # "...NEED" | ping | pause | "LE-42..."
            c.sock.sendall(frame(0x01, (plain[:20000] + "NEED").encode(), mask=os.urandom(4)) +
                           frame(0x89, b"p", mask=os.urandom(4)))
            time.sleep(0.1)
            c.sock.sendall(frame(0x80, ("LE-42" + plain[:20000]).encode(), mask=os.urandom(4)))
            continue
        data = frame(0x81, m.encode(), mask=os.urandom(4))
        if m in (hit_cut, miss_cut):  # header 14 bytes: cut after "NEEDLE-4"
            send_in_pieces(c.sock, rnd, data[:14 + 200008])
            time.sleep(0.1)
            data = data[14 + 200008:]
        send_in_pieces(c.sock, rnd, data)
    fs = c.frames(until=lambda fs: any(f["data"] == b"end" for f in fs), timeout=5)
    c.close()
    proxy.stop()
    up.close()
    got = [f["data"].decode() for f in fs]
    check(got == [plain, miss_cut, "end"], "only the messages without the needle came back: %s"
          % [len(g) for g in got])
    expect_faults(records(proxy.capture), "needle", [
        dict(action="drop", conn=1, dir="client", nth=n) for n in (1, 2, 4, 6)])


async def test_beyond_parser_cap():
    """A frame declaring 2^40 bytes crosses the parser's cap: from there on
    the direction passes byte for byte, rules no longer applied, and the
    proxy survives; the message before it was still subject to the rules."""
    got = {}

    def sink(up, s, head, buf):
        s.settimeout(1)
        data = buf
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
        except OSError:
            pass
        got["bytes"] = data

    up = RawUpstream(sink)
    proxy = Proxy(up.url, {"rules": [
        {"name": "drop-a", "match": {"contains": "aaa"}, "action": {"drop": {}}}]})
    c = RawClient(proxy.port, "/cap")
    huge = bytes([0x82, 0xFF]) + (1 << 40).to_bytes(8, "big") + os.urandom(4) + b"aaa-raw-bytes"
    c.sock.sendall(frame(0x81, b"aaa", mask=os.urandom(4)) + huge)
    time.sleep(0.5)
    c.close()
    wait_for(lambda: "bytes" in got, 3)
    proxy.stop()
    up.close()
    check(got.get("bytes") == huge, "after the dropped message, the rest went byte for byte: %r" %
          (got.get("bytes") or b"")[:40])

TESTS = [
    # message actions
    test_drop, test_delay, test_duplicate, test_reorder, test_corrupt, test_truncate,
    test_fragment, test_replace, test_inject, test_close, test_ping_storm,
    # connection actions
    test_reset, test_half_close, test_stall, test_bandwidth, test_latency, test_slicer,
    test_timeout, test_kill_after,
    # handshake actions
    test_reject, test_delay_upgrade, test_headers, test_refuse_connect, test_delay_connect,
    # the rest
    test_headline_example, test_match_content, test_match_counts,
    test_deflate_message_actions, test_determinism,
    test_bad_rules, test_hostile_traffic,
    test_fin_flushes_held, test_close_behind_queue, test_own_frames_between_messages,
    test_memory_bounded, test_match_large_pieces, test_beyond_parser_cap,
]


def main():
    global WSRR, TMP
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsrr", required=True)
    ap.add_argument("tests", nargs="*")
    a = ap.parse_args()
    WSRR = os.path.abspath(a.wsrr)
    names = {t.__name__ for t in TESTS}
    unknown = [n for n in a.tests if n not in names and "test_" + n not in names]
    if unknown:
        print("unknown tests: %s\nknown: %s" % (", ".join(unknown), " ".join(sorted(names))))
        return 2
    TMP = tempfile.mkdtemp(prefix="wsrr-faults-test-")
    failed = []
    t_all = time.monotonic()
    try:
        for t in TESTS:
            if a.tests and t.__name__ not in a.tests and t.__name__[5:] not in a.tests:
                continue
            t0 = time.monotonic()
            before = len(failures)
            try:
                asyncio.run(asyncio.wait_for(t(), 30))
            except Exception as e:  # one test's crash must not hide the others
                check(False, "%s raised %r" % (t.__name__, e))
                for p in PROXIES:
                    if p.proc.poll() is None:
                        p.stop()
                    elif not p.log:
                        p.log = p.drain.lines()
                        print("  a proxy died (%d):" % p.proc.returncode)
                    print("  proxy log:\n    " + "\n    ".join(p.log[-15:]))
            for p in PROXIES:
                if p.proc.poll() is None:
                    p.proc.kill()
                    p.proc.wait()
            PROXIES.clear()
            for u in UPSTREAMS:
                u.close()
            UPSTREAMS.clear()
            ok = len(failures) == before
            if not ok:
                failed.append(t.__name__)
            print("%s %s (%.2f s)" % ("PASS" if ok else "FAIL", t.__name__,
                                      time.monotonic() - t0), flush=True)
    finally:
        for p in PROXIES:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
        shutil.rmtree(TMP, ignore_errors=True)
    print("%d failures, %d tests failed (%.1f s)%s" % (len(failures), len(failed),
                                                   time.monotonic() - t_all,
                                                   ": " + " ".join(failed) if failed else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
