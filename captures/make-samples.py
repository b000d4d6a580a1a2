#!/usr/bin/env python3
"""Record the sample captures in this folder from real peers.

Each sample is a real session between independent peers (Python
websockets, or a raw socket client for malformed traffic) through a relay
that logs every byte; wsrr's recorder turns the log into the capture, as
the proxy will. Run from the repository root after a build:

    /usr/bin/python3 captures/make-samples.py build

Sessions are scripted, so the records are the same from run to run except
for timestamps, addresses and masking keys.
"""
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import wstest  # noqa: E402
from wsrelay import Relay  # noqa: E402

import websockets  # noqa: E402

# ---- agent-1011: two users of an agent backend; one run crashes ----

sys.path.insert(0, os.path.join(ROOT, "tools", "demo"))
import agent  # noqa: E402  (the demo's backend and client)


async def record_agent(log):
    server = await websockets.serve(agent.backend_handler, "127.0.0.1", 0,
                                    compression="deflate", ping_interval=None)
    relay = Relay("127.0.0.1", server.sockets[0].getsockname()[1], log)
    port = await relay.start()
    await agent.clients("ws://127.0.0.1:%d/v1/agent" % port)
    while len(relay.done) < 3:
        await asyncio.sleep(0.01)
    server.close()
    await server.wait_closed()
    await relay.close()


# ---- violations: malformed client frames against a real server ----

def frame(b0, payload, masked=True, key=b"\x01\x02\x03\x04", length=None):
    return wstest.frame(b0, payload, mask=key if masked else None, length=length)


BAD_CLIENTS = [
    # (what, frames after the handshake)
    ("unmasked text frame", [frame(0x81, b"no mask", masked=False)]),
    ("invalid UTF-8 in a text frame", [frame(0x81, b"\xc0\xaf bad")]),
    ("reserved opcode 3", [frame(0x83, b"?")]),
    ("RSV2 without an extension", [frame(0xA1, b"rsv")]),
    ("ping with FIN=0 and a 126-byte payload", [frame(0x09, b"p" * 126)]),
    ("orphan continuation", [frame(0x80, b"cont")]),
    ("close code 1005 (not allowed on the wire)", [frame(0x88, b"\x03\xed")]),
    ("non-minimal 16-bit length", [bytes([0x81, 0xFE, 0x00, 0x05]) + b"\x00\x00\x00\x00hello"]),
]


async def echo(ws, path=None):
    try:
        async for m in ws:
            await ws.send(m)
    except websockets.ConnectionClosed:
        pass


def raw_client(port, frames):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n" % port)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    for f in frames:
        s.sendall(f)
    s.settimeout(2)
    try:
        while s.recv(4096):
            pass
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()


async def record_violations(log):
    server = await websockets.serve(echo, "127.0.0.1", 0, ping_interval=None)
    relay = Relay("127.0.0.1", server.sockets[0].getsockname()[1], log)
    port = await relay.start()
    loop = asyncio.get_running_loop()
    for i, (_, frames) in enumerate(BAD_CLIENTS):
        await loop.run_in_executor(None, raw_client, port, frames)
        while len(relay.done) < i + 1:
            await asyncio.sleep(0.01)
    server.close()
    await server.wait_closed()
    await relay.close()


def make(build, name, recorder, meta):
    out = os.path.join(ROOT, "captures", name)
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "streams.log")
        asyncio.run(recorder(log))
        if os.path.exists(out):
            os.unlink(out)
        # small batches, as a proxy flushing every 100 ms would write them,
        # so that the crash demo has batches to lose and batches to keep
        subprocess.run([os.path.join(build, "tests", "integration", "streams2capture"), log, out,
                        json.dumps(meta), "1500"], check=True)
    subprocess.run([os.path.join(build, "tools", "wsrr"), "verify", out], check=True)


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build")
    common = {"tool": "wsrr samples (captures/make-samples.py)",
              "peers": "python3-websockets %s" % websockets.__version__}
    make(build, "agent-1011.wsrr", record_agent,
         dict(common, story="three agent runs; two runs of user ada race and the backend "
                            "closes one with 1011 Internal error"))
    make(build, "violations.wsrr", record_violations,
         dict(common, story="a raw client sends one malformed frame per connection; "
                            "the server's reaction is recorded",
              cases=[what for what, _ in BAD_CLIENTS]))


if __name__ == "__main__":
    main()
