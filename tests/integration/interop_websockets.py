#!/usr/bin/env python3
"""Interop: wsrr's recorder against an independent peer, Python websockets.

A websockets server and four concurrent websockets clients talk through a
relay that logs every byte (wsrelay.py): plain and permessage-deflate
connections (with and without context takeover, smaller windows), text,
binary, fragmented and large messages, ping/pong, close codes 1000, 1001,
1011 and 4000 with reasons, from either side. The log goes through wsrr's
recorder (streams2capture -> lib/tap.c) into a capture; the test then reads
`wsrr cat --jsonl` and asserts that every message each peer sent is there,
in order, byte for byte (inflated where it was compressed), with the frame
layout, the negotiated compression and the close summary that really
happened, and that `wsrr verify` finds the capture clean.

usage: interop_websockets.py --wsrr PATH --streams2capture PATH [--keep FILE]
"""
import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsrelay import Relay  # noqa: E402

import websockets  # noqa: E402
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory  # noqa: E402

rng = random.Random(6455)
BIG_BINARY = bytes(rng.getrandbits(8) for _ in range(70000))
BIG_TEXT = "".join(rng.choice("abcdefghij {}\":,") for _ in range(200000))
MESSAGES = [
    "hello",
    b"\x00\x01\x02binary\xff",
    ["frag one, ", "frag two, ", "frag three"],  # one message, three frames
    BIG_BINARY,
    "\u00e9 \U0001f600 unicode",
    BIG_TEXT,
    "",
]

# what each side sent, per path: {"c2s": [...], "s2c": [...]}
sent = {}
# the close each scenario should end with: path -> (side, code, reason)
EXPECTED_CLOSE = {
    "/plain": ("client", 1000, "bye"),
    "/deflate": ("server", 1011, "Internal error"),
    "/nct": ("client", 4000, "custom reason"),
    "/going": ("server", 1001, "server going away"),
}
COMPRESSED = {"/plain": False, "/deflate": True, "/nct": True, "/going": False}


def joined(m):
    return "".join(m) if isinstance(m, list) else m


async def server_handler(ws, path=None):
    path = path or ws.path
    log = sent.setdefault(path, {"c2s": [], "s2c": []})["s2c"]
    try:
        async for msg in ws:
            if msg == "crash":
                await ws.close(1011, "Internal error")
                return
            if msg == "going":
                await ws.close(1001, "server going away")
                return
            log.append(msg)
            await ws.send(msg)
    except websockets.ConnectionClosed:
        pass  # the client closed with a code other than 1000/1001


async def client(port, path, **kw):
    log = sent.setdefault(path, {"c2s": [], "s2c": []})["c2s"]
    async with websockets.connect("ws://127.0.0.1:%d%s" % (port, path), max_size=None,
                                  ping_interval=None, **kw) as ws:
        for m in MESSAGES:
            await ws.send(m)
            log.append(joined(m))
            echo = await ws.recv()
            assert echo == joined(m), "%s: echo differs" % path
        pong = await ws.ping(b"p1")
        await pong
        side, code, reason = EXPECTED_CLOSE[path]
        if side == "client":
            await ws.close(code, reason)
        else:
            trigger = "crash" if code == 1011 else "going"
            await ws.send(trigger)
            log.append(trigger)
            try:
                await ws.recv()
                raise AssertionError("%s: server did not close" % path)
            except websockets.ConnectionClosed as e:
                assert e.rcvd.code == code and e.rcvd.reason == reason, e


async def run_peers(log_path):
    server = await websockets.serve(server_handler, "127.0.0.1", 0, compression="deflate",
                                    max_size=None, ping_interval=None)
    sport = server.sockets[0].getsockname()[1]
    relay = Relay("127.0.0.1", sport, log_path)
    port = await relay.start()
    nct = ClientPerMessageDeflateFactory(server_no_context_takeover=True,
                                         client_no_context_takeover=True,
                                         server_max_window_bits=10, client_max_window_bits=9)
    await asyncio.gather(
        client(port, "/plain", compression=None),
        client(port, "/deflate", compression="deflate"),
        client(port, "/nct", compression=None, extensions=[nct]),
        client(port, "/going", compression=None),
    )
    for _ in range(100):  # let the relay see both ends close
        if len(relay.done) == 4:
            break
        await asyncio.sleep(0.02)
    server.close()
    await server.wait_closed()
    await relay.close()


def payload(rec, key):
    if key in rec:
        return rec[key].encode()
    if key + "_b64" in rec:
        return base64.b64decode(rec[key + "_b64"])
    return b""


def check(records):
    failures = []

    def fail(msg):
        failures.append(msg)

    conn_path, frames, closes, responses = {}, {}, {}, {}
    for r in records:
        c = r.get("conn")
        if r["kind"] == "request":
            conn_path[c] = r["head"].split(" ")[1]
        elif r["kind"] == "response":
            responses[c] = r["head"]
        elif r["kind"] == "frame":
            frames.setdefault(c, []).append(r)
            if "violations" in r:
                fail("conn %d: valid traffic flagged %s" % (c, r["violations"]))
        elif r["kind"] == "close":
            closes[c] = r
        elif r["kind"] == "note":
            fail("unexpected note: %s" % r["text"])
    seqs = [r["seq"] for r in records]
    if seqs != list(range(1, len(records) + 1)):
        fail("sequence numbers are not 1..%d" % len(records))
    if len(conn_path) != 4:
        fail("expected 4 connections, saw %s" % conn_path)

    for c, path in sorted(conn_path.items()):
        compressed = COMPRESSED[path]
        deflate_negotiated = "permessage-deflate" in responses.get(c, "")
        if deflate_negotiated != compressed:
            fail("%s: permessage-deflate negotiated=%s" % (path, deflate_negotiated))
        if path == "/nct" and "server_no_context_takeover" not in responses.get(c, ""):
            fail("/nct: response lacks server_no_context_takeover")
        msgs = {"client": [], "server": []}
        pings = {"client": 0, "server": 0}
        cur = {"client": None, "server": None}
        for f in frames.get(c, []):
            d = f["dir"]
            op = f["opcode"]
            if op in ("ping", "pong"):
                pings[d] += 1
                if payload(f, "payload") != b"p1":
                    fail("%s: %s payload %r" % (path, op, payload(f, "payload")))
                continue
            if op == "close":
                continue
            if op in ("text", "binary"):
                if cur[d] is not None:
                    fail("%s: new message before the last ended" % path)
                cur[d] = {"type": op, "parts": [], "frames": 0, "rsv": f.get("rsv", 0)}
            m = cur[d]
            if m is None:
                fail("%s: continuation without a message" % path)
                continue
            m["frames"] += 1
            m["parts"].append(payload(f, "payload"))
            if f["fin"]:
                if compressed:
                    if m["rsv"] != 4:
                        fail("%s: compressed message without RSV1" % path)
                    if "message" not in f and "message_b64" not in f:
                        fail("%s: compressed message not inflated (seq %d)" % (path, f["seq"]))
                    data = payload(f, "message")
                else:
                    if m["rsv"]:
                        fail("%s: RSV bits on an uncompressed connection" % path)
                    data = b"".join(m["parts"])
                value = data.decode() if m["type"] == "text" else data
                msgs[d].append((value, m["frames"]))
                cur[d] = None
        want_c2s = sent[path]["c2s"]
        want_s2c = sent[path]["s2c"]
        got_c2s = [v for v, _ in msgs["client"]]
        got_s2c = [v for v, _ in msgs["server"]]
        if got_c2s != want_c2s:
            fail("%s: client messages differ: %d recorded, %d sent" %
                 (path, len(got_c2s), len(want_c2s)))
        if got_s2c != want_s2c:
            fail("%s: server messages differ: %d recorded, %d sent" %
                 (path, len(got_s2c), len(want_s2c)))
        # websockets sends each fragment without FIN, then an empty FIN frame
        frag = [n for v, n in msgs["client"] if v == "frag one, frag two, frag three"]
        if frag != [4]:
            fail("%s: the fragmented message was not recorded as 3+1 frames: %s" % (path, frag))
        if pings["client"] != 1 or pings["server"] != 1:
            fail("%s: ping/pong count %s" % (path, pings))
        side, code, reason = EXPECTED_CLOSE[path]
        cl = closes.get(c)
        if not cl:
            fail("%s: no close record" % path)
        elif (cl["side"], cl.get("code"), cl.get("reason", ""), cl.get("clean")) != \
                (side, code, reason, True):
            fail("%s: close recorded as %s, expected %s %d %r clean" %
                 (path, cl, side, code, reason))
        print("%-9s conn %d: %d+%d messages, compressed=%s, close %s %s %r: ok" %
              (path, c, len(got_c2s), len(got_s2c), compressed, side, code, reason))
    return failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsrr", required=True)
    ap.add_argument("--streams2capture", required=True)
    ap.add_argument("--keep", help="copy the capture here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "streams.log")
        cap = os.path.join(tmp, "interop.wsrr")
        asyncio.run(asyncio.wait_for(run_peers(log), 60))
        meta = json.dumps({"tool": "streams2capture", "peers": "python websockets %s" %
                           websockets.__version__})
        subprocess.run([args.streams2capture, log, cap, meta], check=True)
        v = subprocess.run([args.wsrr, "verify", cap], capture_output=True, text=True)
        print(v.stdout.strip())
        if v.returncode != 0:
            print("wsrr verify failed: %s" % v.stderr, file=sys.stderr)
            return 1
        out = subprocess.run([args.wsrr, "cat", "--jsonl", cap], capture_output=True,
                             text=True, check=True).stdout
        lines = out.splitlines()
        header = json.loads(lines[0])
        assert header["wsrr"] == "capture", header
        failures = check([json.loads(line) for line in lines[1:]])
        if args.keep:
            shutil.copy(cap, args.keep)
    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
