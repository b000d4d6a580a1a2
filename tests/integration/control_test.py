#!/usr/bin/env python3
"""The control API of `wsrr proxy` (--control) and `wsrr ctl`, against real
processes and sockets.

Every test starts its own `wsrr proxy --control 127.0.0.1:0`, reads the
address and token it prints, and checks what the API answered and what
actually happened: at the upstream (a Python websockets server), at the
client (a Python websockets client), and in the capture.

- the token: none or a wrong one gets 401, the right one 200, through raw
  HTTP and through `wsrr ctl`; --control-token-file writes it mode 0600;
- the address policy: a non-loopback --control needs --control-allow-remote
  at start; a request from a non-loopback source address is refused with
  403 (a network namespace of our own, `unshare -rn`, gives us one);
- rules: a bad rule is a 400 naming its JSON path and changes nothing;
  add/replace/delete round trip; a rule added live acts on an open
  connection; the seed is kept;
- connections listed with their client address; close and inject reach the
  far side; pause/resume of recording shows in the capture;
- /metrics is Prometheus text and counts the connections made.

usage: control_test.py --wsrr PATH [TEST...]
"""
import argparse
import asyncio
import base64
import http.client
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import websockets

WSRR = None
TMP = None
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wstest import check, failures  # noqa: E402

REMOTE_ADDR = "10.200.0.1"  # the non-loopback address inside our namespace


# ---- processes ----

PROXIES = []


class Proxy:
    """A `wsrr proxy` with its control API, both on free ports. Its stderr
    is read on a thread (so a chatty proxy never blocks) into self.log."""

    def __init__(self, upstream="ws://127.0.0.1:9", control="127.0.0.1:0", record=False,
                 extra=()):
        self.capture = os.path.join(TMP, "cap-%d.wsrr" % time.monotonic_ns()) if record else None
        args = [WSRR, "proxy", "--listen", "127.0.0.1:0", "--upstream", upstream,
                "--grace", "1", "--control", control] + list(extra)
        if record:
            args += ["--record", self.capture]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        self.log = []
        self.port = self.control = self.token = None
        for _ in range(10):
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line.rstrip("\n"))
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            m = re.search(r"control API on (\S+), token (\S+)", line)
            if m:
                self.control, self.token = m.group(1), m.group(2)
                break
        if not (self.port and self.control):
            self.proc.kill()
            raise RuntimeError("proxy did not start: %s %s" % (self.log, self.proc.stderr.read()))
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()
        PROXIES.append(self)

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    @property
    def control_port(self):
        return int(self.control.rsplit(":", 1)[1])

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        # a sanitizer report (leak at exit, UB) makes the exit status non-zero
        check(self.proc.returncode == 0, "the proxy exits 0 (got %d):\n    %s" %
              (self.proc.returncode, "\n    ".join(self.log[-30:])))
        if self in PROXIES:
            PROXIES.remove(self)
        return self.proc.returncode


class Answer:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def error(self):
        j = self.json()
        return j.get("error", "") if isinstance(j, dict) else ""

    def __repr__(self):
        return "%d %s" % (self.status, self.body[:300])


def http_call(host, port, method, path, token=None, body=None, source=None, raw_auth=None):
    """One request with Python's own HTTP client (not wsrr ctl)."""
    conn = http.client.HTTPConnection(host, port, timeout=10,
                                      source_address=(source, 0) if source else None)
    headers = {}
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    if raw_auth is not None:
        headers["Authorization"] = raw_auth
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()},
                      r.read().decode("utf-8", "replace"))
    finally:
        conn.close()


async def api(proxy, method, path, body=None, token=True, **kw):
    """The API of proxy, called on a thread so the asyncio peers in this
    process keep running meanwhile. token=True: the right one."""
    tok = proxy.token if token is True else token
    return await asyncio.to_thread(http_call, "127.0.0.1", proxy.control_port, method, path,
                                   tok, body, **kw)


def run_ctl(args, env=None):
    p = subprocess.run([WSRR, "ctl"] + list(args), capture_output=True, text=True, timeout=30,
                       env=env)
    return p.returncode, p.stdout, p.stderr


async def ctl(proxy, *args, token=True):
    """`wsrr ctl --control ADDR [--token T] ARGS` on a thread."""
    pre = ["--control", proxy.control]
    if token is True:
        pre += ["--token", proxy.token]
    elif token:
        pre += ["--token", token]
    return await asyncio.to_thread(run_ctl, pre + list(args))


def write(name, obj):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def records(capture):
    out = subprocess.run([WSRR, "cat", "--jsonl", capture], capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()[1:]]


# ---- peers ----

class Upstream:
    """A websockets echo server that remembers every message it got and
    how each connection was closed towards it."""

    def __init__(self):
        self.got = []
        self.closes = []

    async def handler(self, ws, path=None):
        try:
            async for m in ws:
                self.got.append(m)
                if m == "crash":
                    await ws.close(1011, "Internal error")
                    return
                await ws.send(m)
        except websockets.ConnectionClosed:
            pass
        self.closes.append((ws.close_code, ws.close_reason))

    async def start(self):
        self.server = await websockets.serve(self.handler, "127.0.0.1", 0, ping_interval=None)
        return "ws://127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]

    def close(self):
        self.server.close()


def connect(proxy, path="/agent"):
    return websockets.connect("ws://127.0.0.1:%d%s" % (proxy.port, path), ping_interval=None,
                              open_timeout=5, close_timeout=2)


async def conn_id(proxy, ws):
    """The proxy's id of the connection ws made (by its client address)."""
    want = "127.0.0.1:%d" % ws.local_address[1]
    conns = (await api(proxy, "GET", "/connections")).json()["connections"]
    ids = [c["id"] for c in conns if c["client"] == want]
    return ids[0] if ids else None


async def recv_if(ok, ws, timeout=3):
    """What ws receives next, when the API call (ok) claims something was
    sent; otherwise do not wait for it."""
    return await recv_or_close(ws, timeout) if ok else ("not sent",)


async def recv_or_close(ws, timeout=3):
    try:
        return await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as e:
        return ("closed", e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else None)
    except asyncio.TimeoutError:
        return ("timeout",)


# ---- tests ----

async def test_token():
    """No token and a wrong token get 401, the right one 200: raw HTTP and
    wsrr ctl (flags, the token file, the environment)."""
    tokfile = os.path.join(TMP, "token")
    with open(tokfile, "w") as f:
        f.write("stale contents that must go\n")
    os.chmod(tokfile, 0o644)
    proxy = Proxy(extra=["--control-token-file", tokfile])
    check(re.fullmatch(r"[0-9a-f]{32}", proxy.token or ""),
          "a generated token is 32 hex digits: %r" % proxy.token)
    with open(tokfile) as f:
        check(f.read() == proxy.token + "\n", "--control-token-file holds the printed token")
    mode = stat.S_IMODE(os.stat(tokfile).st_mode)
    check(mode == 0o600, "the token file is mode 0600 (got %o)" % mode)

    a = await api(proxy, "GET", "/rules", token=None)
    check(a.status == 401 and "bearer" in a.headers.get("www-authenticate", "").lower()
          and a.error(), "no token: 401 with WWW-Authenticate: Bearer and a JSON error: %r" % a)
    a = await api(proxy, "GET", "/rules", token="0" * 32)
    check(a.status == 401 and a.error() == "wrong token", "a wrong token: 401: %r" % a)
    a = await api(proxy, "GET", "/rules", token=proxy.token[:-1])
    check(a.status == 401, "a prefix of the token: 401: %r" % a)
    a = await asyncio.to_thread(http_call, "127.0.0.1", proxy.control_port, "GET", "/rules",
                                raw_auth="Basic " + proxy.token)
    check(a.status == 401, "another auth scheme: 401: %r" % a)
    a = await api(proxy, "GET", "/rules")
    check(a.status == 200 and a.json() is not None and a.json().get("rules") == [],
          "the right token: 200 and the (empty) rules: %r" % a)
    a = await asyncio.to_thread(http_call, "127.0.0.1", proxy.control_port, "GET", "/",
                                raw_auth="bearer  %s " % proxy.token)
    check(a.status == 200 and any(e["path"] == "/metrics" for e in a.json()["endpoints"]),
          "the scheme is case-insensitive; GET / lists the endpoints: %r" % a)

    rc, out, err = await ctl(proxy, "rules", token=None)
    check(rc == 2 and "HTTP 401" in err and len(err.strip().splitlines()) == 1 and out == "",
          "wsrr ctl without a token: exit 2, one line: %d %r" % (rc, err))
    rc, out, err = await ctl(proxy, "rules", token="f" * 32)
    check(rc == 2 and "wrong token" in err, "wsrr ctl with a wrong token: exit 2: %d %r" %
          (rc, err))
    rc, out, err = await ctl(proxy, "rules")
    check(rc == 0 and json.loads(out).get("rules") == [], "wsrr ctl --token: exit 0, the rules "
          "on stdout: %d %r %r" % (rc, out, err))
    rc, out, err = await asyncio.to_thread(
        run_ctl, ["--control", proxy.control, "--token-file", tokfile, "conns"])
    check(rc == 0 and json.loads(out).get("connections") == [],
          "wsrr ctl --token-file: exit 0: %d %r" % (rc, err))
    env = dict(os.environ, WSRR_CONTROL=proxy.control, WSRR_CONTROL_TOKEN=proxy.token)
    rc, out, err = await asyncio.to_thread(run_ctl, ["recording"], env)
    check(rc == 0 and json.loads(out) == {"recording": False, "capture": None},
          "wsrr ctl from WSRR_CONTROL/WSRR_CONTROL_TOKEN: %d %r %r" % (rc, out, err))
    proxy.stop()
    check(any("control: GET /rules from 127.0.0.1:" in l and l.endswith(": 401")
              for l in proxy.log), "refusals are logged")
    check(not any(proxy.token in l for l in proxy.log[2:]),
          "the token is printed once, at start, and never logged again")

    # --quiet hides the start line, but a generated token must still be shown
    q = subprocess.Popen([WSRR, "proxy", "--listen", "127.0.0.1:0", "--upstream",
                          "ws://127.0.0.1:9", "--control", "127.0.0.1:0", "-q"],
                         stderr=subprocess.PIPE, text=True)
    line = await asyncio.to_thread(q.stderr.readline)
    m = re.search(r"control API on 127\.0\.0\.1:(\d+), token ([0-9a-f]{32})$", line.strip())
    # an answer also means the loop runs, with its signal handlers in place
    a = await asyncio.to_thread(http_call, "127.0.0.1", int(m.group(1)), "GET", "/recording",
                                m.group(2)) if m else None
    q.send_signal(signal.SIGINT)
    rest = await asyncio.to_thread(q.communicate, None, 10)
    check(m and a.status == 200 and q.returncode == 0 and rest[1] == "",
          "with -q only the token line is printed, and the token works: %r %r %r %r" %
          (line, a, q.returncode, rest[1]))

    given = Proxy(extra=["--control-token", "s3cret-Token_1"])
    check(given.token == "s3cret-Token_1", "--control-token is the token: %r" % given.token)
    a = await api(given, "GET", "/recording")
    check(a.status == 200, "the given token works: %r" % a)
    given.stop()


async def test_start_refusals():
    """Bad control options: exit 2 and one line before anything starts (no
    capture file left behind)."""
    cap = os.path.join(TMP, "never.wsrr")
    base = [WSRR, "proxy", "--listen", "127.0.0.1:0", "--upstream", "ws://127.0.0.1:9",
            "--record", cap]
    cases = [
        (["--control", "0.0.0.0:0"], "--control-allow-remote"),
        (["--control", "[::]:0"], "--control-allow-remote"),
        (["--control", "192.0.2.7:0"], "not a loopback address"),
        (["--control", "nonsense"], "--control nonsense"),
        (["--control", "127.0.0.1:99999"], "--control 127.0.0.1:99999"),
        (["--control-token", "abc"], "need --control"),
        (["--control-allow-remote"], "need --control"),
        (["--control", "127.0.0.1:0", "--control-token", "has space"], "--control-token"),
        (["--control", "127.0.0.1:0", "--control-token-file", "/nonexistent-dir/t"],
         "/nonexistent-dir/t"),
    ]
    for args, needle in cases:
        p = subprocess.run(base + args, capture_output=True, text=True, timeout=10)
        lines = p.stderr.strip().splitlines()
        check(p.returncode == 2 and needle in p.stderr and lines and
              lines[0].startswith("wsrr proxy:"),
              "%s: exit 2 naming %r: %d %r" % (" ".join(args), needle, p.returncode, p.stderr))
        check(not os.path.exists(cap), "%s: no capture file left behind" % " ".join(args))
    p = subprocess.run([WSRR, "proxy", "--help"], capture_output=True, text=True)
    for opt in ("--control HOST:PORT", "--control-token", "--control-token-file",
                "--control-allow-remote"):
        check(opt in p.stdout, "proxy --help describes %s" % opt)


async def test_remote_peers():
    """The loopback policy with real non-loopback peers: this script again,
    inside a network namespace of its own (unshare -rn) where 10.200.0.1 is
    a local, non-loopback address."""
    unshare = shutil.which("unshare")
    if not check(unshare, "unshare(1) is installed (util-linux)"):
        return
    p = await asyncio.to_thread(
        subprocess.run, [unshare, "-rn", sys.executable, os.path.abspath(__file__), "--wsrr",
                         WSRR, "--in-netns"], capture_output=True, text=True, timeout=50)
    for line in (p.stdout + p.stderr).splitlines():
        print("  | " + line)
    check(p.returncode == 0, "the checks inside the namespace passed (exit %d)" % p.returncode)


def netns_setup():
    """Inside the namespace: lo up, and 10.200.0.1 on a dummy interface (on
    lo where the kernel has no dummy driver: still a non-loopback address)."""
    def ip(*a):
        return subprocess.run(["ip"] + list(a), capture_output=True, text=True)
    ip("link", "set", "lo", "up")
    if ip("link", "add", "d0", "type", "dummy").returncode == 0:
        ip("addr", "add", REMOTE_ADDR + "/24", "dev", "d0")
        ip("link", "set", "d0", "up")
    else:
        ip("addr", "add", REMOTE_ADDR + "/24", "dev", "lo")
    return "inet %s/" % REMOTE_ADDR in ip("-o", "addr").stdout


async def netns_checks():
    if not check(netns_setup(), "%s configured in the namespace" % REMOTE_ADDR):
        return
    # a non-loopback --control is refused at start without the flag
    for addr in (REMOTE_ADDR + ":0", "0.0.0.0:0"):
        p = subprocess.run([WSRR, "proxy", "--listen", "127.0.0.1:0", "--upstream",
                            "ws://127.0.0.1:9", "--control", addr],
                           capture_output=True, text=True, timeout=10)
        check(p.returncode == 2 and "--control-allow-remote" in p.stderr and
              len(p.stderr.strip().splitlines()) == 1,
              "--control %s without --control-allow-remote: exit 2, one line: %d %r" %
              (addr, p.returncode, p.stderr))

    # bound to loopback, a peer with a non-loopback source address (as a
    # DNAT or a local forwarder would produce) is refused, token or not
    proxy = Proxy()
    port = proxy.control_port

    def call(token, source=None, path="/rules"):
        return http_call("127.0.0.1", port, "GET", path, token, source=source)
    a = call(proxy.token, REMOTE_ADDR)
    check(a.status == 403 and REMOTE_ADDR in a.error(),
          "a request from %s with the right token: 403 naming it: %r" % (REMOTE_ADDR, a))
    a = call(None, REMOTE_ADDR)
    check(a.status == 403, "without a token, still 403 (the address is checked first): %r" % a)
    a = call(proxy.token, "127.0.0.1")
    check(a.status == 200, "the same request from 127.0.0.1: 200: %r" % a)
    a = call(proxy.token, "127.0.0.2")
    check(a.status == 200, "from 127.0.0.2 (loopback too): 200: %r" % a)
    proxy.stop()
    check(any("from %s:" % REMOTE_ADDR in l and l.endswith(": 403") for l in proxy.log),
          "the refused peer is logged")

    # with --control-allow-remote: bound to the non-loopback address, and
    # remote peers accepted, still only with the token
    for addr in (REMOTE_ADDR + ":0", "0.0.0.0:0"):
        proxy = Proxy(control=addr, extra=["--control-allow-remote"])
        host = REMOTE_ADDR
        port = proxy.control_port
        a = http_call(host, port, "GET", "/rules", proxy.token, source=REMOTE_ADDR)
        check(a.status == 200, "--control %s --control-allow-remote: a request from %s: 200: %r" %
              (addr, REMOTE_ADDR, a))
        a = http_call(host, port, "GET", "/rules", None, source=REMOTE_ADDR)
        check(a.status == 401, "... without the token: 401: %r" % a)
        rc, out, err = run_ctl(["--control", "%s:%d" % (host, port), "--token", proxy.token,
                                "conns"])
        check(rc == 0 and "connections" in out, "... wsrr ctl from %s: %d %r" % (host, rc, err))
        proxy.stop()


async def test_rules_errors():
    """A bad rule or bad JSON: 400 with the rule's JSON path, and the rules
    in force unchanged; oversized bodies 413."""
    proxy = Proxy()
    good = {"seed": 7, "rules": [{"name": "a", "action": {"drop": {}},
                                  "match": {"contains": "zz-never"}}]}
    a = await api(proxy, "PUT", "/rules", good)
    check(a.status == 200 and a.json() and [r["name"] for r in a.json()["rules"]] == ["a"],
          "PUT /rules with a good document: 200 and the new document: %r" % a)
    before = (await api(proxy, "GET", "/rules")).json()

    bad = {"rules": [{"name": "a", "action": {"drop": {}}},
                     {"name": "slow", "action": {"delay": {"ms": -5}}}]}
    a = await api(proxy, "PUT", "/rules", bad)
    check(a.status == 400 and "rules[1]" in a.error() and "action.delay.ms" in a.error()
          and "'slow'" in a.error(), "a bad rule: 400 naming the rule and its JSON path: %r" % a)
    a2 = await api(proxy, "POST", "/rules", {"name": "b", "match": {"mtach": 1},
                                             "action": {"drop": {}}})
    check(a2.status == 400 and "match" in a2.error(), "POST of a bad rule: 400: %r" % a2)
    a3 = await api(proxy, "PUT", "/rules", '{"rules": [')
    check(a3.status == 400, "PUT of a truncated document: 400: %r" % a3)
    a4 = await api(proxy, "POST", "/rules", "{not json")
    check(a4.status == 400 and "not JSON" in a4.error(), "POST of bad JSON: 400: %r" % a4)
    a5 = await api(proxy, "POST", "/rules", "[1]")
    check(a5.status == 400, "POST of an array: 400: %r" % a5)
    after = (await api(proxy, "GET", "/rules")).json()
    check(after == before, "the rules in force did not change: %s / %s" % (before, after))

    rc, out, err = await ctl(proxy, "rules", "set", write("bad.json", bad))
    check(rc == 2 and "action.delay.ms" in err and len(err.strip().splitlines()) == 1,
          "wsrr ctl rules set with a bad rule: exit 2, the path on stderr: %d %r" % (rc, err))
    big = '{"rules": [], "x": "%s"}' % ("y" * (1 << 20))
    a = await api(proxy, "PUT", "/rules", big)
    check(a.status == 413, "a body over 1 MiB: 413: %r" % a)
    a = await api(proxy, "GET", "/rules")
    check(a.status == 200 and a.json() == before, "the API still answers after a 413")
    proxy.stop()


async def test_rules_round_trip():
    """POST, PUT /rules/NAME, DELETE, each answering the new document, by
    raw HTTP and by wsrr ctl; the seed kept when a document has none."""
    proxy = Proxy()
    a = await api(proxy, "PUT", "/rules", {"seed": 42, "rules": []})
    check(a.status == 200 and a.json() and a.json().get("seed") == "42",
          "PUT /rules with seed 42: %r" % a)
    r1 = {"name": "one", "match": {"direction": "server"}, "action": {"drop": {}}}
    a = await api(proxy, "POST", "/rules", r1)
    names = [r["name"] for r in (a.json() or {}).get("rules", [])]
    check(a.status == 200 and names == ["one"], "POST /rules appends: %r" % a)
    a = await api(proxy, "POST", "/rules", r1)
    check(a.status == 409 and "one" in a.error(), "POST of an existing name: 409: %r" % a)
    rc, out, err = await ctl(proxy, "rules", "add", write("two.json", {
        "name": "two", "action": {"delay": {"ms": 5}}}))
    names = [r["name"] for r in json.loads(out)["rules"]] if rc == 0 else None
    check(rc == 0 and names == ["one", "two"], "wsrr ctl rules add: %d %r %r" % (rc, names, err))

    a = await api(proxy, "PUT", "/rules/one", {"action": {"delay": {"ms": 9}}})
    doc = a.json() or {}
    check(a.status == 200 and [r["name"] for r in doc.get("rules", [])] == ["one", "two"] and
          doc["rules"][0].get("action") == {"delay": {"ms": 9}},
          "PUT /rules/one replaces it in place (name taken from the path): %r" % a)
    check(a.status == 200 and list(doc["rules"][0])[0] == "name",
          "the name taken from the path comes first in the listing: %r" % a)
    a = await api(proxy, "PUT", "/rules/one", {"name": "other", "action": {"drop": {}}})
    check(a.status == 400 and "name" in a.error(), "PUT /rules/one with another name: 400: %r" % a)
    a = await api(proxy, "PUT", "/rules/nope", {"action": {"drop": {}}})
    check(a.status == 404, "PUT /rules/nope: 404: %r" % a)
    rc, out, err = await ctl(proxy, "rules", "replace", "two",
                             write("two-b.json", {"name": "two", "action": {"drop": {}}}))
    check(rc == 0 and json.loads(out)["rules"][1].get("action") == {"drop": {}},
          "wsrr ctl rules replace: %d %r" % (rc, err))
    a = await api(proxy, "GET", "/rules/two")
    check(a.status == 200 and a.json() == {"name": "two", "action": {"drop": {}}},
          "GET /rules/two: the rule as written: %r" % a)

    a = await api(proxy, "DELETE", "/rules/one")
    check(a.status == 200 and [r["name"] for r in a.json()["rules"]] == ["two"],
          "DELETE /rules/one: %r" % a)
    a = await api(proxy, "DELETE", "/rules/one")
    check(a.status == 404, "DELETE of a rule that is gone: 404: %r" % a)
    rc, out, err = await ctl(proxy, "rules", "delete", "two")
    check(rc == 0 and json.loads(out)["rules"] == [], "wsrr ctl rules delete: %d %r" % (rc, err))
    check((await api(proxy, "GET", "/rules")).json().get("seed") == "42",
          "the seed survived every edit")

    rc, out, err = await ctl(proxy, "rules", "set", write("noseed.json", {"rules": [r1]}))
    check(rc == 0 and json.loads(out).get("seed") == "42",
          "wsrr ctl rules set without a seed keeps seed 42: %d %r %r" % (rc, out[:200], err))
    rc, out, err = await ctl(proxy, "rules")
    check(rc == 0 and [r["name"] for r in json.loads(out)["rules"]] == ["one"],
          "wsrr ctl rules prints the document in force: %d %r" % (rc, err))
    proxy.stop()


async def test_rules_live():
    """A rule added through the API acts on a connection that is already
    open; deleting it stops it; /metrics counts its firings."""
    up = Upstream()
    proxy = Proxy(await up.start())
    async with connect(proxy) as ws:
        await ws.send("before")
        check(await recv_or_close(ws) == "before", "echo before any rule")
        a = await api(proxy, "POST", "/rules", {
            "name": "swap", "match": {"direction": "server", "contains": "live"},
            "action": {"replace": {"payload": "replaced by wsrr"}}})
        check(a.status == 200, "POST the rule: %r" % a)
        await ws.send("live one")
        got = await recv_or_close(ws)
        check(got == "replaced by wsrr", "the open connection's next message is replaced: %r" %
              (got,))
        check("live one" in up.got, "the upstream still got the client's message")
        metrics = (await api(proxy, "GET", "/metrics")).body
        check('wsrr_faults_total{rule="swap"} 1' in metrics.splitlines(),
              "wsrr_faults_total counts the firing")
        a = await api(proxy, "DELETE", "/rules/swap")
        check(a.status == 200, "DELETE the rule: %r" % a)
        await ws.send("live two")
        got = await recv_or_close(ws)
        check(got == "live two", "after DELETE the message passes unchanged: %r" % (got,))
    proxy.stop()
    up.close()


async def test_connections():
    """GET /connections lists each live connection with its client address,
    path, state and counts; wsrr ctl conns prints the same."""
    up = Upstream()
    proxy = Proxy(await up.start(), record=True)
    async with connect(proxy, "/agent?v=1") as w1, connect(proxy, "/other") as w2:
        await w1.send("hello")
        await recv_or_close(w1)
        a = await api(proxy, "GET", "/connections")
        conns = (a.json() or {}).get("connections", [])
        by_client = {c["client"]: c for c in conns}
        c1 = by_client.get("127.0.0.1:%d" % w1.local_address[1])
        c2 = by_client.get("127.0.0.1:%d" % w2.local_address[1])
        check(a.status == 200 and len(conns) == 2 and c1 and c2,
              "two connections listed by their client address: %r" % a)
        if c1 and c2:
            keys = {"id", "ordinal", "client", "path", "state", "websocket", "age_ms", "bytes",
                    "frames", "messages", "faults"}
            check(set(c1) == keys, "every field is there: %s" % sorted(c1))
            check(c1["websocket"] and c1["state"] == "open", "upgraded and open: %s" % c1)
            check(c1["bytes"]["client"] > 0 and c1["bytes"]["server"] > 0 and
                  c2["bytes"]["client"] > 0, "bytes counted per sender: %s" % c1["bytes"])
            check(c1["frames"]["client"] >= 1 and c1["frames"]["server"] >= 1,
                  "frames counted per sender (recording): %s" % c1["frames"])
            check(c1["ordinal"] < c2["ordinal"] and c1["id"] != c2["id"],
                  "ordinals in accept order: %s %s" % (c1["ordinal"], c2["ordinal"]))
            check(c1["path"] == "/agent?v=1" and c2["path"] == "/other",
                  "the request paths: %r %r" % (c1["path"], c2["path"]))
            a = await api(proxy, "GET", "/connections/%d" % c2["id"])
            check(a.status == 200 and a.json()["client"] == c2["client"],
                  "GET /connections/ID: %r" % a)
        rc, out, err = await ctl(proxy, "conns")
        listed = {c["client"] for c in json.loads(out)["connections"]} if rc == 0 else set()
        check(rc == 0 and "127.0.0.1:%d" % w2.local_address[1] in listed,
              "wsrr ctl conns lists them: %d %r" % (rc, err))
    for _ in range(50):
        a = await api(proxy, "GET", "/connections")
        if a.json()["connections"] == []:
            break
        await asyncio.sleep(0.05)
    check(a.json()["connections"] == [], "ended connections leave the list: %r" % a)
    for path in ("/connections/999999", "/connections/abc", "/connections/0/close"):
        a = await api(proxy, "POST" if path.endswith("close") else "GET", path)
        check(a.status == 404 and a.error(), "%s: 404: %r" % (path, a))
    proxy.stop()
    up.close()


async def test_close_inject():
    """POST /connections/ID/inject and /close reach the far side."""
    up = Upstream()
    proxy = Proxy(await up.start())
    async with connect(proxy) as ws:
        await ws.send("warm-up")
        await recv_or_close(ws)
        cid = await conn_id(proxy, ws)
        check(cid is not None, "the connection is listed")
        a = await api(proxy, "POST", "/connections/%s/inject" % cid,
                      {"to": "client", "payload": "from wsrr"})
        got = await recv_if(a.status == 200, ws)
        check(a.status == 200 and got == "from wsrr", "inject text to the client: %r %r" %
              (a, got))
        a = await api(proxy, "POST", "/connections/%s/inject" % cid,
                      {"to": "client", "opcode": "binary",
                       "payload_b64": base64.b64encode(b"\x00\xffbin").decode()})
        got = await recv_if(a.status == 200, ws)
        check(a.status == 200 and got == b"\x00\xffbin", "inject binary (base64): %r %r" %
              (a, got))
        rc, out, err = await ctl(proxy, "inject", str(cid), "--to", "server", "to upstream")
        got = await recv_if(rc == 0, ws)
        check(rc == 0 and "to upstream" in up.got and got == "to upstream",
              "wsrr ctl inject --to server: the upstream got it (and echoed it): %d %r %r %r" %
              (rc, err, up.got, got))
        for body, what in (({"opcode": "nope", "payload": "x"}, "opcode"),
                           ({"payload_b64": "!!!"}, "payload_b64"),
                           ({"payload": "x", "payload_b64": "eA=="}, "payload"),
                           ({"to": "sideways", "payload": "x"}, "to"),
                           ({"payloud": "x"}, "payloud")):
            a = await api(proxy, "POST", "/connections/%s/inject" % cid, body)
            check(a.status == 400 and what in a.error(), "inject %s: 400: %r" % (body, a))
        a = await api(proxy, "POST", "/connections/%s/close" % cid, {"code": 70000})
        check(a.status == 400 and "code" in a.error(), "close code 70000: 400: %r" % a)
        a = await api(proxy, "POST", "/connections/%s/close" % cid, {"reason": "r" * 124})
        check(a.status == 400 and "reason" in a.error(), "a 124-byte reason: 400: %r" % a)

        rc, out, err = await ctl(proxy, "close", str(cid), "--code", "4001", "--reason", "bye",
                                 "--to", "both")
        got = await recv_if(rc == 0, ws)
        check(rc == 0 and got == ("closed", 4001, "bye"),
              "wsrr ctl close: the client got 4001 'bye': %d %r %r" % (rc, err, got))
    for _ in range(40):
        if up.closes:
            break
        await asyncio.sleep(0.05)
    check(up.closes and up.closes[0][0] == 4001, "the upstream got 4001 too: %r" % up.closes)

    async with connect(proxy) as ws:
        await ws.send("x")
        await recv_or_close(ws)
        cid = await conn_id(proxy, ws)
        a = await api(proxy, "POST", "/connections/%s/close" % cid,
                      {"code": 1011, "reason": "Internal error", "to": "client"})
        got = await recv_if(a.status == 200, ws)
        check(a.status == 200 and got == ("closed", 1011, "Internal error"),
              "POST close 1011 to the client: %r %r" % (a, got))
    proxy.stop()
    up.close()


async def test_recording():
    """Pause and resume answer the new state, and the capture holds what
    flowed while recording and nothing from the pause."""
    up = Upstream()
    proxy = Proxy(await up.start(), record=True)
    a = await api(proxy, "GET", "/recording")
    check(a.status == 200 and a.json() == {"recording": True, "capture": proxy.capture},
          "GET /recording: %r" % a)
    async with connect(proxy) as ws:
        await ws.send("recorded-1")
        await recv_or_close(ws)
        a = await api(proxy, "POST", "/recording/pause")
        check(a.status == 200 and a.json() and a.json()["recording"] is False,
              "pause answers recording false: %r" % a)
        await ws.send("while-paused")
        await recv_or_close(ws)
        rc, out, err = await ctl(proxy, "resume")
        check(rc == 0 and json.loads(out)["recording"] is True,
              "wsrr ctl resume answers recording true: %d %r %r" % (rc, out, err))
        await ws.send("recorded-2")
        await recv_or_close(ws)
    proxy.stop()
    up.close()
    # "message": the text after permessage-deflate is undone
    texts = [r.get("message", r.get("payload")) for r in records(proxy.capture)
             if r["kind"] == "frame"]
    check("recorded-1" in texts and "recorded-2" in texts,
          "the messages before and after the pause are recorded: %s" % texts)
    check("while-paused" not in texts, "nothing recorded while paused: %s" % texts)

    plain = Proxy()
    a = await api(plain, "POST", "/recording/resume")
    check(a.status == 409 and "--record" in a.error(), "resume without --record: 409: %r" % a)
    plain.stop()


LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:\\.|[^"\\\n])*"'
SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>%s(?:,%s)*)?\})? '
                    r'(?P<value>-?[0-9.eE+]+|NaN|[+-]Inf)$' % (LABEL, LABEL))


def parse_metrics(text):
    """{(name, labels): value}, checking the text format on the way: every
    sample line well-formed, HELP and TYPE before each family's samples."""
    helped, typed, out, bad = set(), {}, {}, []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            typed[name] = kind
        elif line.startswith("#") or not line:
            continue
        else:
            m = SAMPLE.match(line)
            if not m or m.group("name") not in helped or m.group("name") not in typed:
                bad.append(line)
                continue
            out[(m.group("name"), m.group("labels") or "")] = float(m.group("value"))
    return out, typed, bad


async def test_metrics():
    """/metrics is Prometheus text 0.0.4 and counts what happened."""
    up = Upstream()
    proxy = Proxy(await up.start(), record=True)
    for i in range(3):
        async with connect(proxy, "/m%d" % i) as ws:
            await ws.send("m%d" % i)
            await recv_or_close(ws)
            if i == 2:
                await ws.send("crash")
                await recv_or_close(ws)
    for _ in range(40):  # until the proxy has seen the last one end
        a = await api(proxy, "GET", "/metrics")
        if re.search(r"^wsrr_connections_active 0$", a.body, re.M):
            break
        await asyncio.sleep(0.05)
    check(a.status == 200 and a.headers.get("content-type", "").startswith(
        "text/plain; version=0.0.4"), "text/plain; version=0.0.4: %s" %
        a.headers.get("content-type"))
    m, typed, bad = parse_metrics(a.body)
    check(not bad, "every sample line is well-formed and has HELP and TYPE: %s" % bad)
    for name, kind in (("wsrr_connections_active", "gauge"), ("wsrr_connections_total", "counter"),
                       ("wsrr_frames_total", "counter"), ("wsrr_bytes_total", "counter"),
                       ("wsrr_messages_total", "counter"), ("wsrr_close_codes_total", "counter"),
                       ("wsrr_faults_total", "counter"), ("wsrr_faults_applied_total", "counter"),
                       ("wsrr_capture_bytes_total", "counter"), ("wsrr_errors_total", "counter"),
                       ("wsrr_upstream_failures_total", "counter"),
                       ("wsrr_rejected_total", "counter")):
        check(typed.get(name) == kind, "%s is a %s" % (name, kind))
    check(m.get(("wsrr_connections_total", "")) == 3,
          "wsrr_connections_total counts the 3 connections (not API calls): %s" %
          m.get(("wsrr_connections_total", "")))
    check(m.get(("wsrr_connections_active", "")) == 0, "none active now")
    check(m.get(("wsrr_frames_total", 'sender="client"'), 0) >= 4 and
          m.get(("wsrr_frames_total", 'sender="server"'), 0) >= 3,
          "frames per sender: %s" % {k: v for k, v in m.items() if k[0] == "wsrr_frames_total"})
    check(m.get(("wsrr_bytes_total", 'sender="client"'), 0) > 0, "bytes from clients counted")
    # close frames of either sender: the server's 1011 and the client's
    # echo of it; two clean closes of 1000, each echoed
    closes = {k[1]: v for k, v in m.items() if k[0] == "wsrr_close_codes_total"}
    check(closes == {'code="1000"': 4, 'code="1011"': 2},
          "close codes counted per close frame: %s" % closes)
    check(m.get(("wsrr_capture_bytes_total", ""), 0) >= 0, "capture bytes present")
    rc, out, err = await ctl(proxy, "metrics")
    m2, _, bad2 = parse_metrics(out)
    check(rc == 0 and not bad2 and m2.get(("wsrr_connections_total", "")) == 3,
          "wsrr ctl metrics prints the same: %d %r" % (rc, err))
    proxy.stop()
    up.close()


async def test_http_errors():
    """Unknown paths 404, wrong methods 405 with Allow, all as JSON."""
    proxy = Proxy()
    a = await api(proxy, "GET", "/nope")
    check(a.status == 404 and a.error() and
          a.headers.get("content-type", "").startswith("application/json"),
          "an unknown path: 404 with a JSON error: %r" % a)
    a = await api(proxy, "DELETE", "/rules")
    check(a.status == 405 and "PUT" in a.headers.get("allow", "") and a.error(),
          "DELETE /rules: 405 with Allow: %r %s" % (a, a.headers.get("allow")))
    a = await api(proxy, "GET", "/recording/pause")
    check(a.status == 405, "GET /recording/pause: 405: %r" % a)
    a = await api(proxy, "GET", "/rules/nope")
    check(a.status == 404, "GET /rules/nope: 404: %r" % a)
    proxy.stop()


async def test_ctl_usage():
    """wsrr ctl's own errors: exit 2 and one line."""
    rc, out, _ = await asyncio.to_thread(run_ctl, ["--help"])
    check(rc == 0 and "rules replace NAME FILE" in out, "wsrr ctl --help")
    p = subprocess.run([WSRR, "--help"], capture_output=True, text=True)
    check(re.search(r"^\s+ctl\s", p.stdout, re.M), "wsrr --help lists ctl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSRR_CONTROL")}
    for args, needle in ((["rules"], "--control"),
                         (["--control", "127.0.0.1:1", "frob"], "unknown command"),
                         (["--control", "127.0.0.1:1", "close"], "close"),
                         (["--control", "127.0.0.1:1", "rules", "add"], "add"),
                         (["--control", "127.0.0.1:1", "conns", "--code", "1"], "--code"),
                         (["--control", "127.0.0.1:1", "inject", "1", "x", "--b64", "eA=="],
                          "not both"),
                         (["--control", "127.0.0.1:1", "rules", "set", "/nonexistent.json"],
                          "/nonexistent.json"),
                         (["--control", "nonsense", "conns"], "nonsense")):
        rc, out, err = await asyncio.to_thread(run_ctl, args, env)
        check(rc == 2 and needle in err and err.startswith("wsrr ctl:"),
              "wsrr ctl %s: exit 2 naming %r: %d %r" % (" ".join(args), needle, rc, err))
    # a port nothing listens on
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = "127.0.0.1:%d" % s.getsockname()[1]
    s.close()
    rc, out, err = await asyncio.to_thread(run_ctl, ["--control", dead, "--token", "t", "conns"],
                                           env)
    check(rc == 2 and dead in err and len(err.strip().splitlines()) == 1,
          "cannot connect: exit 2, one line naming the address: %d %r" % (rc, err))


async def test_token_not_recorded():
    """--control-token never reaches the capture's metadata (the command
    line is recorded there, with the token replaced)."""
    secret = "s3cr3t-%d" % os.getpid()
    p = Proxy(record=True, extra=["--control-token", secret])
    check(p.token == secret, "the given token is used: %s" % p.token)
    p.stop()
    r = subprocess.run([WSRR, "cat", "--jsonl", p.capture], capture_output=True, text=True)
    check(r.returncode == 0 and "control-token" in r.stdout,
          "the command line is in the capture: %s" % r.stdout[:200])
    check(secret not in r.stdout, "the token is not in the capture")


TESTS = [test_token_not_recorded, test_token, test_start_refusals, test_remote_peers, test_http_errors, test_ctl_usage,
         test_rules_errors, test_rules_round_trip, test_rules_live, test_connections,
         test_close_inject, test_recording, test_metrics]


def main():
    global WSRR, TMP
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsrr", required=True)
    ap.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("tests", nargs="*")
    a = ap.parse_args()
    WSRR = os.path.abspath(a.wsrr)
    TMP = tempfile.mkdtemp(prefix="wsrr-control-test-")
    tests = [netns_checks] if a.in_netns else TESTS
    try:
        for t in tests:
            if a.tests and t.__name__ not in a.tests:
                continue
            t0 = time.monotonic()
            print("%s ..." % t.__name__, flush=True)
            try:
                asyncio.run(asyncio.wait_for(t(), 45))
            except Exception as e:  # one test's crash must not hide the others
                check(False, "%s raised %r" % (t.__name__, e))
                for p in list(PROXIES):
                    if p.proc.poll() is None:
                        p.stop()
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
