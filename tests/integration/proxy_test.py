#!/usr/bin/env python3
"""wsrr proxy against real peers on loopback.

Every test starts its own `wsrr proxy` process and checks what the far side
actually received and what the capture actually holds:

- a Python websockets client gets the same answers through the proxy as
  without it, and `wsrr cat` shows every message both ways, in order, with
  the close code;
- raw frames (valid and malformed, split across TCP writes) arrive byte for
  byte on both sides, and the capture flags the malformed ones;
- an unreachable upstream gives the client a 502 and the capture says why;
- an upstream that resets gives the client an abnormal close;
- bad upgrades are answered 400/426, a bad Sec-WebSocket-Accept becomes 502;
- many concurrent connections are all relayed and recorded in one order;
- a client that never reads neither grows the proxy nor stalls others;
- SIGKILL loses at most the open batch; SIGHUP starts a new capture file.

usage: proxy_test.py --wsrr PATH [TEST...]
"""
import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import websockets

WSRR = None
TMP = None
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wstest import Drain, accept_for, check, failures, frame  # noqa: E402


# ---- processes ----

PROXIES = []


class Proxy:
    """A `wsrr proxy` process on a free port (killed at exit if a test
    failed before stopping it)."""

    def __init__(self, upstream, record=True, extra=()):
        self.capture = os.path.join(TMP, "cap-%d.wsrr" % time.monotonic_ns()) if record else None
        args = [WSRR, "proxy", "--listen", "127.0.0.1:0", "--upstream", upstream,
                "--grace", "1"] + list(extra)
        if record:
            args += ["--record", self.capture]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            raise RuntimeError("proxy did not start: %r %s" % (line, self.proc.stderr.read()))
        self.port = int(m.group(1))
        self.drain = Drain(self.proc.stderr)
        self.log = []
        PROXIES.append(self)

    def stop(self, sig=signal.SIGINT):
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log = self.drain.lines()
        # a sanitizer report (leak at exit, UB) makes the exit status non-zero
        check(self.proc.returncode == 0, "the proxy exits 0 (got %d):\n    %s" %
              (self.proc.returncode, "\n    ".join(self.log[-30:])))
        return self.proc.returncode

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def wsrr(*args):
    p = subprocess.run([WSRR] + list(args), capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def records(capture):
    rc, out, err = wsrr("cat", "--jsonl", capture)
    lines = out.splitlines()
    return [json.loads(line) for line in lines[1:]]


def payload(r, key="payload"):
    if key in r:
        return r[key].encode()
    if key + "_b64" in r:
        return base64.b64decode(r[key + "_b64"])
    return b""


def messages(recs, conn=None):
    """(sender, type, data) per complete message, from frame records."""
    out, cur = [], {}
    for r in recs:
        if r["kind"] != "frame" or (conn is not None and r["conn"] != conn):
            continue
        d, op = r["dir"], r["opcode"]
        if op in ("ping", "pong", "close"):
            continue
        key = (r["conn"], d)
        if op in ("text", "binary"):
            cur[key] = [op, []]
        if key not in cur:
            continue
        cur[key][1].append(payload(r))
        if r["fin"]:
            op0, parts = cur.pop(key)
            data = payload(r, "message") if ("message" in r or "message_b64" in r) \
                else b"".join(parts)
            out.append((d, op0, data.decode() if op0 == "text" else data))
    return out


# ---- peers ----

async def echo_handler(ws, path=None):
    try:
        async for m in ws:
            if m == "crash":
                await ws.close(1011, "Internal error")
                return
            if m == "rst":
                ws.transport.abort()
                return
            if isinstance(m, str) and m.startswith("close:"):
                _, code, reason = m.split(":", 2)
                await ws.close(int(code), reason)
                return
            if m == "frag":
                await ws.send(["fr", "ag", "ment"])
                continue
            if m == "ping":
                await (await ws.ping(b"from server"))
                await ws.send("pinged")
                continue
            if m == "flood":
                chunk = "f" * 65536
                for _ in range(400):  # 25 MiB towards a client that does not read
                    await ws.send(chunk)
                continue
            await ws.send(m)
    except websockets.ConnectionClosed:
        pass


async def echo_server(compression=None):
    return await websockets.serve(echo_handler, "127.0.0.1", 0, compression=compression,
                                  max_size=None, ping_interval=None, backlog=4096)


def port_of(server):
    return server.sockets[0].getsockname()[1]


class RawServer:
    """Answers the upgrade with a 101 (or what `answer` returns), records
    every byte after it, and sends `script` bytes."""

    def __init__(self, script=b"", answer=None):
        self.script = script
        self.answer = answer
        self.received = bytearray()
        self.head = b""
        self.done = asyncio.Event()

    async def handle(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        self.head = head
        key = re.search(rb"Sec-WebSocket-Key: *(\S+)", head).group(1)
        accept = accept_for(key)
        resp = self.answer(accept) if self.answer else (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        writer.write(resp)
        for i in range(0, len(self.script), 7):  # in small pieces
            writer.write(self.script[i:i + 7])
            await writer.drain()
        try:
            while True:
                data = await asyncio.wait_for(reader.read(65536), 2)
                if not data:
                    break
                self.received += data
        except (asyncio.TimeoutError, ConnectionResetError):
            pass
        writer.close()
        self.done.set()

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]


async def raw_client(port, frames_bytes, read_for=1.0, head_extra=b"", split=7):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /raw HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n" % port + head_extra + b"\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    for i in range(0, len(frames_bytes), split):
        writer.write(frames_bytes[i:i + split])
        await writer.drain()
    got = bytearray()
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), read_for)
            if not data:
                break
            got += data
    except asyncio.TimeoutError:
        pass
    writer.close()
    return head, bytes(got)


# ---- tests ----

SESSION = ["hello", b"\x00\x01\x02 binary", "x" * 70000, json.dumps({"type": "run", "n": 1}),
           "\u00e9\U0001f600", "", b"", "y" * 200]


async def talk(port, compression):
    out = []
    async with websockets.connect("ws://127.0.0.1:%d/agent" % port, compression=compression,
                                  max_size=None, ping_interval=None) as ws:
        for m in SESSION:
            await ws.send(m)
            out.append(await ws.recv())
        await ws.send("crash")
        try:
            await ws.recv()
        except websockets.ConnectionClosedError as e:
            out.append(("closed", e.rcvd.code, e.rcvd.reason))
    return out


async def test_scripted_session():
    for compression in (None, "deflate"):
        server = await echo_server(compression)
        direct = await talk(port_of(server), compression)
        proxy = Proxy("ws://127.0.0.1:%d" % port_of(server))
        through = await talk(proxy.port, compression)
        check(proxy.stop() == 0, "proxy exits 0 on SIGINT")
        server.close()
        check(direct == through, "compression=%s: the same answers through the proxy" % compression)
        check(through[-1] == ("closed", 1011, "Internal error"), "the 1011 reaches the client")
        rc, out, _ = wsrr("verify", proxy.capture)
        check(rc == 0, "capture verifies clean: %s" % out)
        recs = records(proxy.capture)
        got = messages(recs)
        want = []
        for m in SESSION:
            t = "text" if isinstance(m, str) else "binary"
            want += [("client", t, m), ("server", t, m)]
        want += [("client", "text", "crash")]
        check(got == want, "compression=%s: every message both ways, in order (%d of %d)" %
              (compression, len(got), len(want)))
        close = [r for r in recs if r["kind"] == "close"]
        check(len(close) == 1 and close[0].get("code") == 1011 and close[0]["side"] == "server",
              "the close record: 1011 by the server: %s" % close)
        rc, text, _ = wsrr("cat", proxy.capture)
        check("1011 (internal error)" in text, "wsrr cat shows the close code")
        if compression:
            check(any(r.get("rsv") == 4 for r in recs if r["kind"] == "frame"),
                  "permessage-deflate negotiated through the proxy")


BIG = os.urandom(16 << 20)  # 16 MiB, incompressible


async def test_python_features():
    """Fragmentation, ping/pong both ways, a 16 MiB message, close codes
    1000/1001/4000 with reasons from either side, with and without
    compression: what each side got, and what the capture says."""
    for compression in (None, "deflate"):
        server = await echo_server(compression)
        proxy = Proxy("ws://127.0.0.1:%d" % port_of(server))
        url = "ws://127.0.0.1:%d/f" % proxy.port
        closes = {}
        async with websockets.connect(url, compression=compression, max_size=None,
                                      ping_interval=None) as ws:
            await ws.send(["client ", "frag", "ments"])
            check(await ws.recv() == "client fragments", "a fragmented message echoed")
            await ws.send("frag")
            check(await ws.recv() == "fragment", "a fragmented message from the server")
            pong = await ws.ping(b"from client")
            await asyncio.wait_for(pong, 5)
            await ws.send("ping")
            check(await ws.recv() == "pinged", "the server's ping was answered")
            await ws.send(BIG)
            check(await ws.recv() == BIG, "a 16 MiB message both ways")
            await ws.close(1000, "done")
            closes[1] = (ws.close_code, ws.close_reason)
        async with websockets.connect(url, compression=compression, ping_interval=None) as ws:
            await ws.close(4000, "client custom")
            closes[2] = (ws.close_code, ws.close_reason)
        async with websockets.connect(url, compression=compression, ping_interval=None) as ws:
            await ws.send("close:1001:server going away")
            try:
                await ws.recv()
            except websockets.ConnectionClosed as e:
                closes[3] = (e.rcvd.code, e.rcvd.reason)
        async with websockets.connect(url, compression=compression, ping_interval=None) as ws:
            await ws.send("close:4001:server custom")
            try:
                await ws.recv()
            except websockets.ConnectionClosed as e:
                closes[4] = (e.rcvd.code, e.rcvd.reason)
        proxy.stop()
        server.close()
        check(closes == {1: (1000, "done"), 2: (4000, "client custom"),
                         3: (1001, "server going away"), 4: (4001, "server custom")},
              "compression=%s: each side got the close it was sent: %s" % (compression, closes))
        recs = records(proxy.capture)
        summary = {r["conn"]: (r["side"], r.get("code"), r.get("reason"), r.get("clean"))
                   for r in recs if r["kind"] == "close"}
        check(summary == {1: ("client", 1000, "done", True), 2: ("client", 4000, "client custom", True),
                          3: ("server", 1001, "server going away", True),
                          4: ("server", 4001, "server custom", True)},
              "compression=%s: close records: %s" % (compression, summary))
        fr = [r for r in recs if r["kind"] == "frame" and r["conn"] == 1]
        pings = [(r["dir"], r["opcode"], payload(r)) for r in fr if r["opcode"] in ("ping", "pong")]
        check(sorted(pings) == sorted([("client", "ping", b"from client"),
                                       ("server", "pong", b"from client"),
                                       ("server", "ping", b"from server"),
                                       ("client", "pong", b"from server")]),
              "pings and pongs both ways: %s" % pings)
        frag = [r for r in fr if r["dir"] == "client" and r["opcode"] in ("text", "cont")][:4]
        check([r["fin"] for r in frag] == [False, False, False, True],
              "the client's fragmented message is recorded as its 4 frames")
        got = messages(recs, conn=1)
        check(("client", "binary", BIG) in got and ("server", "binary", BIG) in got,
              "the 16 MiB message is in the capture both ways")


async def test_byte_exact():
    client_frames = (
        frame(0x81, b"hello", mask=b"\x01\x02\x03\x04")
        + frame(0x81, b"non-minimal", mask=b"\x05\x06\x07\x08", width=64)
        + frame(0x01, b"frag-", mask=b"\x09\x0a\x0b\x0c")
        + frame(0x89, b"ping!", mask=b"\x0d\x0e\x0f\x10")  # between fragments
        + frame(0x80, b"end", mask=b"\x11\x12\x13\x14")
        + frame(0x81, b"unmasked")  # a protocol violation, forwarded anyway
        + frame(0x83, b"?", mask=b"\x15\x16\x17\x18")  # reserved opcode
        + frame(0x82, bytes(range(256)) * 300, mask=b"\xaa\xbb\xcc\xdd"))
    server_frames = (frame(0x81, b"from server") + frame(0x81, b"masked!", mask=b"\x01\x01\x01\x01")
                     + frame(0xC1, b"rsv1 without deflate") + frame(0x82, b"\xff" * 70000))
    srv = RawServer(server_frames)
    sport = await srv.start()
    proxy = Proxy("ws://127.0.0.1:%d" % sport)
    head, got = await raw_client(proxy.port, client_frames, read_for=1.5)
    await asyncio.wait_for(srv.done.wait(), 5)
    proxy.stop()
    srv.server.close()
    check(head.startswith(b"HTTP/1.1 101"), "the 101 reaches the client")
    check(bytes(srv.received) == client_frames,
          "the server received the client's frames byte for byte (%d of %d bytes)" %
          (len(srv.received), len(client_frames)))
    check(got == server_frames, "the client received the server's frames byte for byte (%d of %d)"
          % (len(got), len(server_frames)))
    check(b"Host: 127.0.0.1:%d\r\n" % sport in srv.head, "Host rewritten for the upstream")
    recs = records(proxy.capture)
    fr = [r for r in recs if r["kind"] == "frame"]
    flags = {tuple(r.get("violations", [])) for r in fr}
    check(("len_not_minimal",) in flags, "non-minimal length recorded with its flag")
    check(("mask_missing",) in flags, "unmasked client frame recorded with its flag")
    check(any("reserved_opcode" in f for f in flags), "reserved opcode recorded")
    check(("mask_unexpected",) in flags, "masked server frame recorded")
    check(("rsv1",) in flags, "RSV1 without deflate recorded")
    check(len(fr) == 12, "12 frames recorded: %d" % len(fr))


async def test_unreachable():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()  # nobody listens there now
    proxy = Proxy("ws://127.0.0.1:%d" % dead)
    try:
        async with websockets.connect("ws://127.0.0.1:%d/" % proxy.port):
            check(False, "connecting through to a dead upstream must fail")
    except websockets.InvalidStatusCode as e:
        check(e.status_code == 502, "the client gets a 502: %s" % e)
    proxy.stop()
    recs = records(proxy.capture)
    tcp = [r for r in recs if r["kind"] == "tcp"]
    check(any(r["event"] == "connect_failed" and "refused" in r.get("detail", "") for r in tcp),
          "the capture says the upstream refused: %s" % tcp)
    check(any(r["kind"] == "note" and "502" in r["text"] for r in recs),
          "the capture notes the 502 wsrr sent")


async def test_upstream_rst():
    server = await echo_server()
    proxy = Proxy("ws://127.0.0.1:%d" % port_of(server))
    code = None
    async with websockets.connect("ws://127.0.0.1:%d/" % proxy.port, ping_interval=None) as ws:
        await ws.send("rst")
        try:
            await ws.recv()
        except websockets.ConnectionClosedError as e:
            code = e.code
    proxy.stop()
    server.close()
    check(code == 1006, "the client sees an abnormal close (1006): %s" % code)
    recs = records(proxy.capture)
    check(any(r["kind"] == "tcp" and r["leg"] == "upstream" and r["event"] in ("rst", "fin")
              for r in recs), "the capture records how the upstream ended")
    cl = [r for r in recs if r["kind"] == "close"]
    check(cl and cl[0]["side"] == "none", "no close frame: the close record says so: %s" % cl)


async def test_upstream_reset_after_data():
    """The upstream sends a frame and resets the connection (SO_LINGER 0):
    the client gets the frame, then a reset; the capture says "rst"."""
    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        key = re.search(rb"Sec-WebSocket-Key: *(\S+)", head).group(1)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_for(key) +
                     b"\r\n\r\n" + frame(0x81, b"last words"))
        await writer.drain()
        await asyncio.sleep(0.2)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy = Proxy("ws://127.0.0.1:%d" % port_of(server))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    got, how = bytearray(), "nothing"
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 3)
            if not data:
                how = "fin"
                break
            got += data
    except ConnectionResetError:
        how = "rst"
    except asyncio.TimeoutError:
        how = "still open"
    writer.close()
    proxy.stop()
    server.close()
    check(bytes(got) == frame(0x81, b"last words"), "the client got the frame first: %r" % got)
    check(how == "rst", "then the reset is passed on to the client: %s" % how)
    tcp = [r for r in records(proxy.capture) if r["kind"] == "tcp"]
    check(any(r["leg"] == "upstream" and r["event"] == "rst" for r in tcp),
          "the capture records the upstream's reset as rst: %s" % tcp)


async def test_idle_timeout():
    """--idle-timeout closes a relayed connection that stays silent, and the
    capture says so; one that keeps talking is left alone."""
    server = await echo_server()
    proxy = Proxy("ws://127.0.0.1:%d" % port_of(server), extra=("--idle-timeout", "1"))
    t0 = time.monotonic()
    code = None
    async with websockets.connect("ws://127.0.0.1:%d/idle" % proxy.port, ping_interval=None) as ws:
        await ws.send("before")
        check(await ws.recv() == "before", "an echo before the silence")
        try:
            await asyncio.wait_for(ws.recv(), 6)
        except websockets.ConnectionClosed as e:
            code = e.code
        except asyncio.TimeoutError:
            pass
    waited = time.monotonic() - t0
    busy_ok = True
    async with websockets.connect("ws://127.0.0.1:%d/busy" % proxy.port, ping_interval=None) as ws:
        for i in range(6):  # 1.8 s of traffic every 0.3 s
            await ws.send("m%d" % i)
            busy_ok = busy_ok and await ws.recv() == "m%d" % i
            await asyncio.sleep(0.3)
    proxy.stop()
    server.close()
    check(code == 1006 and 0.9 < waited < 4, "the silent connection was closed after about 1 s "
          "(code %s after %.2f s)" % (code, waited))
    check(busy_ok, "a connection that keeps talking is not timed out")
    tcp = [r for r in records(proxy.capture) if r["kind"] == "tcp"]
    check(any(r["event"] == "timeout" for r in tcp), "the capture records the timeout: %s" % tcp)


async def test_bad_upgrades():
    srv = RawServer(answer=lambda accept: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: "
                    b"websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n")
    sport = await srv.start()
    proxy = Proxy("ws://127.0.0.1:%d" % sport)
    cases = [
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Version: 13\r\n\r\n", b"HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n",
         b"HTTP/1.1 426"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         b"HTTP/1.1 502"),  # the upstream's accept is wrong
        (b"GARBAGE\r\n\r\n", b"HTTP/1.1 400"),
    ]
    for req, want in cases:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(req)
        resp = await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
        check(resp.startswith(want), "%r... answered %r: %r" % (req[:40], want, resp[:60]))
    proxy.stop()
    srv.server.close()
    recs = records(proxy.capture)
    check(not [r for r in recs if r["kind"] == "frame"],
          "no frames recorded: wsrr's own answers are not mistaken for frames")
    notes = [r["text"] for r in recs if r["kind"] == "note"]
    check(len([n for n in notes if "wsrr answered" in n]) == 4, "each answer is noted: %s" % notes)


async def test_concurrent(n=1000, per=3):
    server = await echo_server()
    proxy = Proxy("ws://127.0.0.1:%d" % port_of(server))

    async def one(i):
        async with websockets.connect("ws://127.0.0.1:%d/c%d" % (proxy.port, i),
                                      ping_interval=None) as ws:
            for k in range(per):
                await ws.send("%d:%d" % (i, k))
                if await ws.recv() != "%d:%d" % (i, k):
                    return False
                await asyncio.sleep(0)
        return True

    ok = await asyncio.gather(*[one(i) for i in range(n)])
    proxy.stop()
    server.close()
    check(all(ok), "%d concurrent connections all echoed" % n)
    recs = records(proxy.capture)
    seqs = [r["seq"] for r in recs]
    check(seqs == list(range(1, len(recs) + 1)), "one global order of records")
    by_conn = {}
    for d, t, m in messages(recs):
        i, k = m.split(":")
        by_conn.setdefault((i, d), []).append(int(k))
    check(len(by_conn) == 2 * n and all(v == list(range(per)) for v in by_conn.values()),
          "every connection's messages recorded, in order")
    conns = {r["conn"] for r in recs}
    check(len(conns) == n, "%d connections in the capture" % len(conns))


async def test_slow_reader():
    server = await echo_server()
    proxy = Proxy("ws://127.0.0.1:%d" % port_of(server), record=False)
    # a client that asks for a flood and never reads
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
                 + frame(0x81, b"flood", mask=b"\x01\x02\x03\x04"))
    await writer.drain()
    await asyncio.sleep(1.5)
    rss = proxy.rss_kb()
    # meanwhile another connection is served normally
    t0 = time.monotonic()
    async with websockets.connect("ws://127.0.0.1:%d/" % proxy.port, ping_interval=None) as ws:
        for i in range(20):
            await ws.send("ping %d" % i)
            check(await ws.recv() == "ping %d" % i, "the other connection echoes")
    elapsed = time.monotonic() - t0
    writer.close()
    proxy.stop()
    server.close()
    print("  proxy RSS with a 25 MiB flood towards a client that does not read: %d KiB; "
          "other connection served in %.3f s" % (rss, elapsed))
    check(rss < 64 * 1024, "the proxy does not buffer the flood (RSS %d KiB)" % rss)


async def test_sigkill():
    server = await echo_server()
    proxy = Proxy("ws://127.0.0.1:%d" % port_of(server), extra=["--flush-interval", "20"])
    async with websockets.connect("ws://127.0.0.1:%d/" % proxy.port, ping_interval=None) as ws:
        for i in range(200):
            await ws.send("message %d" % i)
            await ws.recv()
        await asyncio.sleep(0.2)  # several flush intervals: batches on disk
        proxy.proc.kill()
        proxy.proc.wait()
    server.close()
    rc, out, _ = wsrr("verify", proxy.capture)
    check(rc == 1 and "no end-of-file trailer" in out, "a killed proxy's capture: exit 1, "
          "the missing trailer reported: %s" % out)
    m = re.search(r"(\d+) records recovered", out)
    check(m and int(m.group(1)) >= 400, "the records of the written batches are there: %s" % out)
    got = messages(records(proxy.capture))
    check(len(got) == 400, "all 400 messages recovered: %d" % len(got))
    rec = proxy.capture + ".recovered"
    rc, out, _ = wsrr("recover", proxy.capture, "-o", rec)
    check(rc == 0 and wsrr("verify", rec)[0] == 0, "recover gives a clean capture")


async def test_sighup():
    server = await echo_server()
    proxy = Proxy("ws://127.0.0.1:%d" % port_of(server))
    first = proxy.capture
    async with websockets.connect("ws://127.0.0.1:%d/" % proxy.port, ping_interval=None) as ws:
        await ws.send("before")
        await ws.recv()
        rotated = first + ".1"
        os.rename(first, rotated)  # what logrotate does
        proxy.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.3)
        await ws.send("after")
        await ws.recv()
    proxy.stop()
    server.close()
    check(wsrr("verify", rotated)[0] == 0, "the rotated capture was finished cleanly")
    check(wsrr("verify", first)[0] == 0, "a new capture was started at the same path")
    a = [m for _, _, m in messages(records(rotated))]
    b = [m for _, _, m in messages(records(first))]
    check(a == ["before", "before"] and b == ["after", "after"],
          "messages land in the file open at the time: %s / %s" % (a, b))


async def test_cli_errors():
    """BAD-INPUTS section 12 for wsrr proxy: one line naming the problem, exit 2."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy = taken.getsockname()[1]
    cases = [
        (["--listen", "127.0.0.1:70000", "--upstream", "ws://127.0.0.1:1"], "port"),
        (["--listen", "nonsense", "--upstream", "ws://127.0.0.1:1"], "--listen nonsense"),
        (["--listen", "127.0.0.1:%d" % busy, "--upstream", "ws://127.0.0.1:1"], "in use"),
        (["--listen", "127.0.0.1:0", "--upstream", "ftp://x"], "scheme"),
        (["--listen", "127.0.0.1:0", "--upstream", "ws://127.0.0.1:1", "--record",
          "/nonexistent-dir/x.wsrr"], "/nonexistent-dir/x.wsrr"),
        (["--listen", "127.0.0.1:0", "--upstream", "wss://127.0.0.1:1", "--upstream-ca",
          "/nonexistent.pem"], "/nonexistent.pem"),
        (["--listen", "127.0.0.1:0"], "missing --upstream"),
        (["--listen", "127.0.0.1:0", "--upstream", "ws://127.0.0.1:1", "--grace"], "needs a value"),
        (["--listen", "127.0.0.1:0", "--upstream", "ws://127.0.0.1:1", "--frob"],
         "unknown option"),
    ]
    for args, needle in cases:
        p = subprocess.run([WSRR, "proxy"] + args, capture_output=True, text=True, timeout=10)
        lines = p.stderr.strip().splitlines()
        check(p.returncode == 2 and needle in p.stderr and lines[0].startswith("wsrr proxy:"),
              "%s: exit 2 naming %r: %d %r" % (" ".join(args), needle, p.returncode, p.stderr))
    taken.close()
    # an upstream that accepts but never answers: 504 after the handshake timeout
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    proxy = Proxy("ws://127.0.0.1:%d" % silent.getsockname()[1],
                  extra=["--handshake-timeout", "300"])
    try:
        async with websockets.connect("ws://127.0.0.1:%d/" % proxy.port, open_timeout=5):
            check(False, "a silent upstream must not complete the upgrade")
    except websockets.InvalidStatusCode as e:
        check(e.status_code == 504, "a silent upstream gives a 504: %s" % e)
    proxy.stop()
    silent.close()
    recs = records(proxy.capture)
    check(any(r["kind"] == "tcp" and r["event"] == "timeout" for r in recs),
          "the timeout is recorded")


class HTTPBackend:
    """A small HTTP/1.1 backend on a thread (http.server): answers with the
    Host it saw and the request body; chunked responses on /chunked."""

    def __init__(self):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length", 0))
                return self.rfile.read(n) if n else b""

            def answer(self):
                data = b"host=" + self.headers.get("Host", "").encode() + b" body=" + self.body()
                self.send_response(200)
                if self.path == "/chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    if self.command != "HEAD":
                        for part in (data[:5], data[5:]):
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                        self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


async def test_http_exchanges():
    """Plain HTTP on the proxy's listener: keep-alive with the Host rewritten
    on every request, bodies by length and chunked both ways, HEAD; the
    capture holds each exchange with its bodies."""
    import http.client
    backend = HTTPBackend()
    proxy = Proxy("http://127.0.0.1:%d" % backend.port)

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        out = []
        for method, path, body, chunked in [("GET", "/a", None, False),
                                            ("POST", "/b", b"posted body", False),
                                            ("PUT", "/chunked", iter([b"in ", b"chunks"]), True),
                                            ("HEAD", "/chunked", None, False),
                                            ("GET", "/chunked", None, False)]:
            conn.request(method, path, body=body, encode_chunked=chunked,
                         headers={"Host": "client-side-name"})
            r = conn.getresponse()
            out.append((r.status, r.read()))
        sock_reused = conn.sock is not None
        conn.close()
        return out, sock_reused

    out, reused = await asyncio.get_running_loop().run_in_executor(None, client)
    proxy.stop()
    backend.close()
    up = "127.0.0.1:%d" % backend.port
    check(out == [(200, b"host=%s body=" % up.encode()),
                  (200, b"host=%s body=posted body" % up.encode()),
                  (200, b"host=%s body=in chunks" % up.encode()),
                  (200, b""),
                  (200, b"host=%s body=" % up.encode())],
          "every request of the keep-alive connection reached the upstream with its Host "
          "rewritten and its body: %s" % out)
    check(reused, "one connection for all five requests")
    recs = records(proxy.capture)
    check(len({r["conn"] for r in recs if r["kind"] != "note"}) == 1, "one connection recorded")
    heads = [(r["kind"], r["head"].split("\r\n")[0]) for r in recs
             if r["kind"] in ("request", "response")]
    check([h[1].split(" ")[0] for h in heads if h[0] == "request"] ==
          ["GET", "POST", "PUT", "HEAD", "GET"], "five requests recorded: %s" % heads)
    check(len([h for h in heads if h[0] == "response"]) == 5, "five responses recorded")
    bodies = [(r["dir"], r.get("data"), r.get("chunked", False)) for r in recs
              if r["kind"] == "body"]
    check(("client", "posted body", False) in bodies and ("client", "in chunks", True) in bodies
          and ("server", "host=%s body=in chunks" % up, True) in bodies,
          "bodies recorded, chunked ones decoded: %s" % bodies)
    check(not [r for r in recs if r["kind"] == "note"], "nothing went unparsed: %s" %
          [r["text"] for r in recs if r["kind"] == "note"])


async def test_record_dir():
    """--record DIR: a new timestamped capture per run, never over another."""
    server = await echo_server()
    d = os.path.join(TMP, "dir-captures")
    os.mkdir(d)
    for run in range(2):
        proxy = Proxy("ws://127.0.0.1:%d" % port_of(server), record=False,
                      extra=["--record", d])
        async with websockets.connect("ws://127.0.0.1:%d/" % proxy.port) as ws:
            await ws.send("run %d" % run)
            await ws.recv()
        proxy.stop()
    server.close()
    files = sorted(os.listdir(d))
    check(len(files) == 2 and all(re.match(r"wsrr-\d{8}-\d{6}(-\d+)?\.wsrr$", f) for f in files),
          "two timestamped captures: %s" % files)
    got = sorted(m for f in files for _, _, m in messages(records(os.path.join(d, f))))
    check(got == ["run 0", "run 0", "run 1", "run 1"], "each run in its own file: %s" % got)


TESTS = [test_cli_errors, test_record_dir, test_http_exchanges, test_scripted_session, test_python_features, test_byte_exact, test_unreachable, test_upstream_rst,
         test_upstream_reset_after_data, test_idle_timeout,
         test_bad_upgrades, test_concurrent, test_slow_reader, test_sigkill, test_sighup]


def main():
    global WSRR, TMP
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsrr", required=True)
    ap.add_argument("tests", nargs="*")
    a = ap.parse_args()
    WSRR = os.path.abspath(a.wsrr)
    TMP = tempfile.mkdtemp(prefix="wsrr-proxy-test-")
    try:
        for t in TESTS:
            if a.tests and t.__name__ not in a.tests:
                continue
            t0 = time.monotonic()
            print("%s ..." % t.__name__, flush=True)
            try:
                asyncio.run(asyncio.wait_for(t(), 60))
            except Exception as e:  # one test's crash must not hide the others
                check(False, "%s raised %r" % (t.__name__, e))
                for p in PROXIES:
                    if p.proc.poll() is None:
                        p.stop()  # and show what the proxy said
                    elif not p.log:
                        p.log = p.drain.lines()
                        print("  a proxy died (%d):" % p.proc.returncode)
                    print("  proxy log:\n    " + "\n    ".join(p.log[-25:]))
                PROXIES.clear()
            print("  %.2f s" % (time.monotonic() - t0), flush=True)
    finally:
        for p in PROXIES:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
        shutil.rmtree(TMP)
    print("%d failures" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
