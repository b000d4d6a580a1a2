#!/usr/bin/env python3
"""wsrr proxy between libwebsockets' own test client and test server
(Debian libwebsockets-test-server): an independent C implementation on both
sides. The client opens a dumb-increment connection (the server streams
0, 1, 2, ...) and a mirror connection (the server echoes what the client
draws). Through the proxy for two seconds, the capture must verify clean,
the counter must arrive without a gap or a repeat, and every mirror frame
the client sent must come back, in order.

usage: lws_test.py --wsrr PATH
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsrr", required=True)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="wsrr-lws-test-")
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)
            print("FAIL:", what)

    sport = free_port()
    server = subprocess.Popen(["libwebsockets-test-server", "--port=%d" % sport],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cap = os.path.join(tmp, "lws.wsrr")
    proxy = subprocess.Popen([a.wsrr, "proxy", "--listen", "127.0.0.1:0", "--upstream",
                              "ws://127.0.0.1:%d" % sport, "--record", cap],
                             stderr=subprocess.PIPE, text=True)
    try:
        line = proxy.stderr.readline()
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1))
        for _ in range(50):  # wait for the server to listen
            try:
                socket.create_connection(("127.0.0.1", sport), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        client = subprocess.Popen(["libwebsockets-test-client", "127.0.0.1", "--port=%d" % port],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2)
        client.send_signal(signal.SIGINT)
        out = client.communicate(timeout=10)[0]
        check(out.count("LWS_CALLBACK_CLIENT_ESTABLISHED") >= 1 and "mirror" in out,
              "the lws client connected through the proxy: %s" % out[-500:])
    finally:
        proxy.send_signal(signal.SIGINT)
        proxy.communicate(timeout=10)
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)
    v = subprocess.run([a.wsrr, "verify", cap], capture_output=True, text=True)
    check(v.returncode == 0, "the capture verifies clean: %s" % v.stdout)
    lines = subprocess.run([a.wsrr, "cat", "--jsonl", cap], capture_output=True,
                           text=True).stdout.splitlines()[1:]
    recs = [json.loads(x) for x in lines]
    proto = {}
    for r in recs:
        if r["kind"] == "request":
            m = re.search(r"Sec-WebSocket-Protocol: *(\S+)", r["head"])
            proto[r["conn"]] = m.group(1) if m else None
    frames = [r for r in recs if r["kind"] == "frame" and r["opcode"] == "text"]
    dumb = [c for c, p in proto.items() if p == "dumb-increment-protocol"]
    mirror = [c for c, p in proto.items() if p == "lws-mirror-protocol"]
    check(dumb and mirror, "both protocols seen: %s" % proto)
    if dumb:
        counts = [int(r["payload"]) for r in frames if r["conn"] == dumb[0]]
        check(len(counts) > 10 and counts == list(range(counts[0], counts[0] + len(counts))),
              "dumb-increment: %d numbers, no gap or repeat" % len(counts))
    if mirror:
        sent = [r["payload"] for r in frames if r["conn"] == mirror[0] and r["dir"] == "client"]
        back = [r["payload"] for r in frames if r["conn"] == mirror[0] and r["dir"] == "server"]
        # the last frames may still have been in flight when the client stopped
        check(len(sent) > 10 and len(back) >= len(sent) - 2 and back == sent[:len(back)],
              "mirror: %d frames sent, %d echoed, in order" % (len(sent), len(back)))
    check(not any("violations" in r for r in recs if r["kind"] == "frame"),
          "no violations flagged on libwebsockets' traffic")
    shutil.rmtree(tmp)
    print("%d failures; %d frames through the proxy" % (len(failures), len(frames)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
