#!/usr/bin/env python3
"""BAD-INPUTS sections 1-9 through wsrr proxy, from either side, while a
second connection keeps echoing.

One proxy, one upstream (Python websockets) whose handler depends on the
path: /echo echoes; /sink reads what the client sends; /emit/NAME writes the
raw bytes of case NAME to its client (bypassing websockets' own framing).
Each case either sends raw bytes from a raw client (towards /sink), or asks
the upstream to emit them (towards a raw client), or sends a raw request
head. Meanwhile a websockets client on /echo exchanges a message every 20 ms
and records the slowest answer.

For every case: the proxy is still alive and the other connection was never
stalled (no answer slower than 2 s); frames went through (the far side got
bytes); the capture holds the case's frame with the violation flags the case
expects, or the proxy answered a bad handshake with the status the RFC says.

usage: badinput_test.py --wsrr PATH
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
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import websockets

WSRR = None
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wstest import accept_for, check, failures  # noqa: E402
from wstest import frame as raw_frame  # noqa: E402


def frame(b0, data, mask=b"\x01\x02\x03\x04", width=None, length=None):
    """A client frame (masked unless mask=None)."""
    return raw_frame(b0, data, mask=mask, width=width, length=length)


def srv(b0, data, **kw):
    return frame(b0, data, mask=None, **kw)


def close_payload(code, reason=b""):
    return struct.pack(">H", code) + reason


def deflate_raw(data):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


BOMB = deflate_raw(b"\0" * (200 << 20))  # 200 MiB of zeros in ~200 KB

# (name, bytes a client sends, violation names expected on that client frame)
CLIENT_CASES = [
    # 1. lengths
    ("len16-non-minimal", frame(0x81, b"hello", width=16), ["len_not_minimal"]),
    ("len64-non-minimal", frame(0x81, b"hello", width=64), ["len_not_minimal"]),
    ("len64-top-bit", frame(0x82, b"", length=1 << 63), ["len_top_bit", "frame_too_big"]),
    ("len-int64-max", frame(0x82, b"", length=(1 << 63) - 1), ["frame_too_big"]),
    ("len-uint32-max+1", frame(0x82, b"", length=(1 << 32)), ["frame_too_big"]),
    ("len-never-arrives", frame(0x82, b"only this", length=1000), []),
    # 2. masking
    ("unmasked-client", frame(0x81, b"no mask", mask=None), ["mask_missing"]),
    # 3. control frames
    ("ping-126", frame(0x89, b"p" * 126), ["control_too_long"]),
    ("ping-fin0", frame(0x09, b"p"), ["control_fragmented"]),
    ("ping-between-fragments", frame(0x01, b"a") + frame(0x89, b"p") + frame(0x80, b"b"), []),
    ("unsolicited-pong", frame(0x8A, b"pong"), []),
    ("ping-flood", frame(0x89, b"x") * 5000, []),
    # 4. opcodes and RSV
    ("opcode-3", frame(0x83, b"?"), ["reserved_opcode"]),
    ("opcode-7", frame(0x87, b"?"), ["reserved_opcode"]),
    ("opcode-11", frame(0x8B, b"?"), ["reserved_opcode"]),
    ("opcode-15", frame(0x8F, b"?"), ["reserved_opcode"]),
    ("rsv1-no-deflate", frame(0xC1, b"x"), ["rsv1"]),
    ("rsv2", frame(0xA1, b"x"), ["rsv2"]),
    ("rsv3", frame(0x91, b"x"), ["rsv3"]),
    ("rsv1-on-control", frame(0xC9, b"x"), ["rsv1"]),
    # 5. fragmentation
    ("orphan-continuation", frame(0x80, b"x"), ["orphan_continuation"]),
    ("data-before-fin", frame(0x01, b"a") + frame(0x81, b"b"), ["expected_continuation"]),
    ("zero-length-fragments", frame(0x01, b"") + frame(0x00, b"") + frame(0x80, b""), []),
    ("many-fragments", frame(0x01, b"a") + frame(0x00, b"a") * 70000 + frame(0x80, b"a"),
     ["too_many_fragments"]),
    # 6. UTF-8
    ("utf8-overlong", frame(0x81, b"\xc0\xaf"), ["bad_utf8"]),
    ("utf8-surrogate", frame(0x81, b"\xed\xa0\x80"), ["bad_utf8"]),
    ("utf8-above-10ffff", frame(0x81, b"\xf4\x90\x80\x80"), ["bad_utf8"]),
    ("utf8-5-byte", frame(0x81, b"\xf8\x88\x80\x80\x80"), ["bad_utf8"]),
    ("utf8-lone-continuation", frame(0x81, b"\x80"), ["bad_utf8"]),
    ("utf8-truncated", frame(0x81, b"\xe2\x82"), ["bad_utf8"]),
    ("utf8-split-across-fragments", frame(0x01, b"\xe2\x82") + frame(0x80, b"\xac"), []),
    ("close-bad-reason", frame(0x88, close_payload(1000, b"\xff")), ["bad_utf8"]),
    # 7. close
    ("close-1-byte", frame(0x88, b"\x03"), ["close_1_byte"]),
    ("close-code-0", frame(0x88, close_payload(0)), ["close_bad_code"]),
    ("close-code-999", frame(0x88, close_payload(999)), ["close_bad_code"]),
    ("close-code-1004", frame(0x88, close_payload(1004)), ["close_bad_code"]),
    ("close-code-1005", frame(0x88, close_payload(1005)), ["close_bad_code"]),
    ("close-code-1006", frame(0x88, close_payload(1006)), ["close_bad_code"]),
    ("close-code-1015", frame(0x88, close_payload(1015)), ["close_bad_code"]),
    ("close-code-2999", frame(0x88, close_payload(2999)), ["close_bad_code"]),
    ("close-code-5000", frame(0x88, close_payload(5000)), ["close_bad_code"]),
    ("close-code-65535", frame(0x88, close_payload(65535)), ["close_bad_code"]),
    ("close-reason-124", frame(0x88, close_payload(1000, b"r" * 124)), ["control_too_long"]),
    ("data-after-close", frame(0x88, close_payload(1000)) + frame(0x81, b"late"),
     ["after_close"]),
    ("second-close", frame(0x88, close_payload(1000)) + frame(0x88, close_payload(1000)),
     ["after_close"]),
    ("fin-mid-frame", frame(0x82, b"x" * 100)[:50], []),
]

# (name, bytes the upstream sends, violations expected on that server frame)
SERVER_CASES = [
    ("masked-server", frame(0x81, b"masked"), ["mask_unexpected"]),
    ("server-len64-non-minimal", srv(0x81, b"x", width=64), ["len_not_minimal"]),
    ("server-opcode-5", srv(0x85, b"?"), ["reserved_opcode"]),
    ("server-rsv1-no-deflate", srv(0xC1, b"x"), ["rsv1"]),
    ("server-orphan-continuation", srv(0x80, b"x"), ["orphan_continuation"]),
    ("server-bad-utf8", srv(0x81, b"\xc0\xaf"), ["bad_utf8"]),
    ("server-close-code-1006", srv(0x88, close_payload(1006)), ["close_bad_code"]),
    ("server-ping-126", srv(0x89, b"p" * 126), ["control_too_long"]),
    ("server-len-top-bit", srv(0x82, b"", length=1 << 63), ["len_top_bit", "frame_too_big"]),
    ("server-unsolicited-pong", srv(0x8A, b"x"), []),
]

# permessage-deflate cases need the extension negotiated: the upstream
# handler answers /deflate/NAME with it and emits the bytes
DEFLATE_CASES = [
    ("deflate-bomb", srv(0xC2, BOMB), "inflate_error"),
    ("deflate-corrupt", srv(0xC1, b"\xff\xff\xff\xff"), "inflate_error"),
    ("deflate-extra-tail", srv(0xC1, deflate_raw(b"hello") + b"\x00\x00\xff\xff"), "hello"),
    ("deflate-missing-tail-ok", srv(0xC1, deflate_raw(b"hello")), "hello"),
]

# (name, raw request, expected status line prefix)
HANDSHAKE_CASES = [
    ("missing-key", b"GET /sink HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
                    b"Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", b"HTTP/1.1 400"),
    ("bad-key", b"GET /sink HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n", b"HTTP/1.1 400"),
    ("version-12", b"GET /sink HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
                   b"Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   b"Sec-WebSocket-Version: 12\r\n\r\n", b"HTTP/1.1 426"),
    ("thousands-of-headers", b"GET /sink HTTP/1.1\r\nHost: x\r\n" +
     b"".join(b"X-H%d: v\r\n" % i for i in range(3000)) + b"\r\n", b"HTTP/1.1 4"),
    ("huge-header-line", b"GET /sink HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100000 +
     b"\r\n\r\n", b"HTTP/1.1 431"),
    ("duplicate-key", b"GET /sink HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
                      b"Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n", b"HTTP/1.1 400"),
    ("transfer-encoding", b"GET /sink HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
                          b"Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          b"Sec-WebSocket-Version: 13\r\nTransfer-Encoding: chunked\r\n\r\n",
     b"HTTP/1.1 400"),
    ("pathological-extensions", b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                b"Connection: Upgrade\r\nSec-WebSocket-Key: "
                                b"dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                                b"Sec-WebSocket-Extensions: " + b";" * 30000 + b"\r\n"
                                b"Sec-WebSocket-Protocol: " + b"a," * 15000 + b"\r\n\r\n",
     b"HTTP/1.1 "),
    ("duplicate-upgrade", b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nUpgrade: "
                          b"websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
                          b"dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
     b"HTTP/1.1 "),
    ("window-bits-abc", b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
                        b"Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: "
                        b"permessage-deflate; server_max_window_bits=abc, permessage-deflate; "
                        b"client_max_window_bits=7, x-unknown\r\n\r\n", b"HTTP/1.1 "),
]


# ---- the upstream ----

DEFLATE_ANSWER = None


async def handler(ws, path=None):
    path = path or ws.path
    try:
        if path == "/echo":
            async for m in ws:
                await ws.send(m)
        elif path.startswith("/emit/"):
            name = path[len("/emit/"):]
            data = dict((n, b) for n, b, _ in SERVER_CASES)[name]
            ws.transport.write(data)  # raw bytes, past websockets' framing
            await asyncio.sleep(0.3)
            ws.transport.abort()
        else:  # /sink
            async for _ in ws:
                pass
    except websockets.ConnectionClosed:
        pass


async def raw_deflate_server():
    """Accepts with permessage-deflate (server_no_context_takeover) and
    writes the case's bytes: websockets would refuse to send these."""
    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        name = re.search(rb"GET /deflate/(\S+)", head).group(1).decode()
        key = re.search(rb"Sec-WebSocket-Key: *(\S+)", head).group(1)
        accept = accept_for(key)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: "
                     b"Upgrade\r\nSec-WebSocket-Extensions: permessage-deflate; "
                     b"server_no_context_takeover\r\nSec-WebSocket-Accept: " + accept +
                     b"\r\n\r\n")
        writer.write(dict((n, b) for n, b, _ in DEFLATE_CASES)[name])
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


# ---- clients ----

async def raw_session(port, path, data, extra=b"", read_for=0.4, deflate=False):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ext = b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else b""
    writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 % path.encode() + ext + b"\r\n")
    got = b""
    try:
        got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        for i in range(0, len(data), 4093):  # odd pieces: mask keys split across reads
            writer.write(data[i:i + 4093])
            await writer.drain()
        end = time.monotonic() + read_for
        while time.monotonic() < end:
            chunk = await asyncio.wait_for(reader.read(1 << 20), end - time.monotonic())
            if not chunk:
                break
            got += chunk
    except (asyncio.TimeoutError, ConnectionResetError, asyncio.IncompleteReadError):
        pass
    writer.close()
    return got


async def raw_request(port, head):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    try:
        await writer.drain()
        resp = await asyncio.wait_for(reader.read(65536), 5)
    except (ConnectionResetError, asyncio.TimeoutError):
        resp = b""
    writer.close()
    return resp


class Echoer:
    """A websockets client exchanging a message every 20 ms; notes the
    slowest answer and whether the connection ever broke."""

    def __init__(self, port):
        self.port = port
        self.slowest = 0.0
        self.count = 0
        self.broken = None
        self.stop = False

    async def run(self):
        try:
            async with websockets.connect("ws://127.0.0.1:%d/echo" % self.port,
                                          ping_interval=None) as ws:
                while not self.stop:
                    t0 = time.monotonic()
                    await ws.send("tick %d" % self.count)
                    reply = await asyncio.wait_for(ws.recv(), 5)
                    if reply != "tick %d" % self.count:
                        self.broken = "wrong echo %r" % reply
                        return
                    self.slowest = max(self.slowest, time.monotonic() - t0)
                    self.count += 1
                    await asyncio.sleep(0.02)
        except Exception as e:
            self.broken = repr(e)


async def run_all(wsrr, tmp):
    server = await websockets.serve(handler, "127.0.0.1", 0, ping_interval=None,
                                    max_size=None, backlog=1024)
    dserver = await raw_deflate_server()
    sport = server.sockets[0].getsockname()[1]
    dport = dserver.sockets[0].getsockname()[1]
    caps = {}

    def proxy(upstream, name):
        cap = os.path.join(tmp, name + ".wsrr")
        p = subprocess.Popen([wsrr, "proxy", "--listen", "127.0.0.1:0", "--upstream", upstream,
                              "--record", cap, "--grace", "1"], stderr=subprocess.PIPE,
                             text=True)
        port = int(re.search(r":(\d+),", p.stderr.readline()).group(1))
        caps[name] = (p, cap)
        return port

    port = proxy("ws://127.0.0.1:%d" % sport, "main")
    dproxy = proxy("ws://127.0.0.1:%d" % dport, "deflate")
    echo = Echoer(port)
    echo_task = asyncio.create_task(echo.run())
    await asyncio.sleep(0.2)

    far = {}
    for name, data, _ in CLIENT_CASES:
        await raw_session(port, "/sink?case=" + name, data)
    for name, _, _ in SERVER_CASES:
        far[name] = await raw_session(port, "/emit/" + name, b"")
    for name, _, _ in DEFLATE_CASES:
        far[name] = await raw_session(dproxy, "/deflate/" + name, b"", deflate=True, read_for=2)
    statuses = {}
    for name, head, _ in HANDSHAKE_CASES:
        statuses[name] = await raw_request(port, head)
    # frames in the same packet as the request: forwarded, not lost
    same_packet = await raw_session(port, "/echo", b"")  # warm path
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 b"\r\n" + frame(0x81, b"in the same packet"))
    await writer.drain()
    data = b""
    try:
        while b"in the same packet" not in data:
            chunk = await asyncio.wait_for(reader.read(4096), 3)
            if not chunk:
                break
            data += chunk
    except asyncio.TimeoutError:
        pass
    writer.close()
    check(b"in the same packet" in data, "a frame sent with the request is forwarded and echoed")

    echo.stop = True
    await echo_task
    alive = all(p.poll() is None for p, _ in caps.values())
    for p, _ in caps.values():
        p.send_signal(signal.SIGINT)
        err = p.communicate(timeout=20)[1]
        check(p.returncode == 0, "the proxy exits 0: %s" % err[-1500:])
    server.close()
    dserver.close()
    return echo, alive, far, statuses, caps, same_packet


def main():
    global WSRR
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsrr", required=True)
    a = ap.parse_args()
    WSRR = os.path.abspath(a.wsrr)
    tmp = tempfile.mkdtemp(prefix="wsrr-badinput-")
    try:
        echo, alive, far, statuses, caps, _ = asyncio.run(
            asyncio.wait_for(run_all(WSRR, tmp), 240))
        check(alive, "the proxy survived every case")
        check(echo.broken is None, "the other connection never broke: %s" % echo.broken)
        check(echo.slowest < 2.0, "the other connection was never stalled (slowest answer "
              "%.3f s over %d exchanges)" % (echo.slowest, echo.count))
        print("other connection: %d exchanges, slowest %.1f ms" % (echo.count,
                                                                  echo.slowest * 1000))
        out = subprocess.run([WSRR, "cat", "--jsonl", caps["main"][1]], capture_output=True,
                             text=True).stdout.splitlines()
        recs = [json.loads(x) for x in out[1:]]
        conn_case = {}
        for r in recs:
            if r["kind"] == "request":
                m = re.search(r"GET /(?:sink\?case=|emit/)(\S+)", r["head"])
                if m:
                    conn_case[r["conn"]] = m.group(1)
        flags = {}
        for r in recs:
            if r["kind"] == "frame" and r["conn"] in conn_case:
                flags.setdefault(conn_case[r["conn"]], set()).update(r.get("violations", []))
        for name, data, want in CLIENT_CASES + SERVER_CASES:
            got = flags.get(name, set())
            check(set(want) <= got and (want or not got - {"after_close"}),
                  "%s: recorded with %s, expected %s" % (name, sorted(got), want))
        for name, _, _ in SERVER_CASES:
            check(len(far.get(name, b"")) > 0, "%s: the client received the server's bytes" % name)
        ping_flood = [r for r in recs if r["kind"] == "frame" and
                      conn_case.get(r["conn"]) == "ping-flood"]
        check(len(ping_flood) >= 5000, "ping flood: every ping recorded (%d)" % len(ping_flood))
        dout = subprocess.run([WSRR, "cat", "--jsonl", caps["deflate"][1]], capture_output=True,
                              text=True).stdout.splitlines()
        drecs = [json.loads(x) for x in dout[1:]]
        dcase = {}
        for r in drecs:
            if r["kind"] == "request":
                dcase[r["conn"]] = re.search(r"GET /deflate/(\S+)", r["head"]).group(1)
        for name, data, want in DEFLATE_CASES:
            fr = [r for r in drecs if r["kind"] == "frame" and dcase.get(r["conn"]) == name]
            if want == "inflate_error":
                check(fr and fr[0].get("inflate_error"), "%s: flagged inflate_error" % name)
            else:
                check(fr and fr[0].get("message") == want, "%s: inflated to %r: %s" %
                      (name, want, fr[:1]))
            check(len(far.get(name, b"")) >= len(data), "%s: forwarded whole to the client"
                  % name)
        for name, _, want in HANDSHAKE_CASES:
            check(statuses[name].startswith(want), "%s: answered %r (got %r)" %
                  (name, want, statuses[name][:40]))
        rc = subprocess.run([WSRR, "verify", caps["main"][1]], capture_output=True, text=True)
        check(rc.returncode == 0, "the capture verifies clean: %s" % rc.stdout)
    finally:
        shutil.rmtree(tmp)
    print("%d failures" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
