#!/usr/bin/env python3
"""wsrr proxy with TLS on either leg and both, against Python websockets.

Certificates are made by this test with the openssl command: an upstream CA,
a server certificate for localhost/127.0.0.1, one for another name, a client
CA and client certificate for mutual TLS. The proxy's own client-side
certificates come from its local CA in a temporary directory.

Checks, on the far side and in the capture: wss on both legs with a key log;
an upstream the system store does not trust gives the client a 502 naming
the verification failure; --insecure-upstream works and is recorded; a
certificate for another name is refused; mutual TLS with and without a
client certificate; a fixed --tls-cert; a client speaking plain TCP to the
TLS listener does not disturb other connections; `wsrr ca` refuses a key
others can read.

usage: tls_test.py --wsrr PATH
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile

import websockets

WSRR = None
TMP = None
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wstest import Drain, check, failures  # noqa: E402


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


def make_certs(d):
    """upca (+ server certs for localhost and for another name), clientca
    (+ a client certificate)."""
    def ca(name):
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.pem", "-days", "2",
           "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
           "-addext", "keyUsage=critical,keyCertSign")

    def leaf(name, signer, san, usage):
        sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr", "-subj", f"/CN={name}")
        ext = f"{d}/{name}.ext"
        with open(ext, "w") as f:
            f.write(f"subjectAltName={san}\nextendedKeyUsage={usage}\n"
                    "basicConstraints=CA:FALSE\n")
        sh("openssl", "x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/{signer}.pem",
           "-CAkey", f"{d}/{signer}.key", "-CAcreateserial", "-out", f"{d}/{name}.pem",
           "-days", "2", "-extfile", ext)

    ca("upca")
    ca("clientca")
    leaf("server", "upca", "DNS:localhost,IP:127.0.0.1", "serverAuth")
    leaf("other", "upca", "DNS:other.example", "serverAuth")
    leaf("client", "clientca", "DNS:wsrr-proxy", "clientAuth")


PROXIES = []


class Proxy:
    def __init__(self, upstream, *extra):
        self.capture = os.path.join(TMP, "cap-%d.wsrr" % len(os.listdir(TMP)))
        args = [WSRR, "proxy", "--listen", "127.0.0.1:0", "--upstream", upstream,
                "--record", self.capture, "--grace", "1", "--ca-dir",
                os.path.join(TMP, "wsrr-ca")] + list(extra)
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        while line.startswith("wsrr: warning"):
            self.warning = line
            line = self.proc.stderr.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            raise RuntimeError("proxy did not start: %r %s" % (line, self.proc.stderr.read()))
        self.port = int(m.group(1))
        self.drain = Drain(self.proc.stderr)
        PROXIES.append(self)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        out = "\n".join(self.drain.lines())
        check(self.proc.returncode == 0, "the proxy exits 0 (%d): %s" %
              (self.proc.returncode, out[-2000:]))


def records(capture):
    out = subprocess.run([WSRR, "cat", "--jsonl", capture], capture_output=True,
                         text=True).stdout.splitlines()
    return json.loads(out[0]), [json.loads(line) for line in out[1:]]


def server_ctx(cert, client_ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{TMP}/{cert}.pem", f"{TMP}/{cert}.key")
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(f"{TMP}/{client_ca}.pem")
    return ctx


def client_ctx(cafile):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def echo(ws, path=None):
    try:
        async for m in ws:
            await ws.send(m)
    except websockets.ConnectionClosed:
        pass


async def tls_server(cert="server", client_ca=None):
    return await websockets.serve(echo, "127.0.0.1", 0, ssl=server_ctx(cert, client_ca),
                                  ping_interval=None)


def port_of(server):
    return server.sockets[0].getsockname()[1]


async def roundtrip(url, ctx=None):
    async with websockets.connect(url, ssl=ctx, ping_interval=None) as ws:
        await ws.send("over tls")
        return await ws.recv()


async def expect_status(url, status, ctx=None):
    try:
        await roundtrip(url, ctx)
        check(False, "%s should have failed with %d" % (url, status))
        return None
    except websockets.InvalidStatusCode as e:
        check(e.status_code == status, "%s: %d, expected %d" % (url, e.status_code, status))
        return e


async def test_both_legs():
    server = await tls_server()
    keylog = os.path.join(TMP, "keys.log")
    p = Proxy("wss://localhost:%d" % port_of(server), "--listen-tls", "--upstream-ca",
              f"{TMP}/upca.pem", "--keylog", keylog)
    ca_pem = os.path.join(TMP, "wsrr-ca", "ca.pem")
    got = await roundtrip("wss://localhost:%d/" % p.port, client_ctx(ca_pem))
    p.stop()
    server.close()
    check(got == "over tls", "echo through TLS on both legs")
    hdr, recs = records(p.capture)
    op = [r for r in recs if r["kind"] == "open"][0]
    check("client_tls" in op["transport"] and "upstream_tls" in op["transport"],
          "the open record says both legs are TLS: %s" % op)
    check(op.get("client_tls", "").startswith("TLSv1.3") and "alpn=http/1.1" in
          op.get("client_tls", ""), "client TLS version and ALPN recorded: %s" % op)
    check(op.get("sni") == "localhost", "the SNI the client sent is recorded")
    up = [r for r in recs if r["kind"] == "tcp" and r["event"] == "connected"]
    check(up and up[0].get("detail", "").startswith("TLSv1."), "upstream TLS recorded: %s" % up)
    msgs = [r.get("message", r.get("payload")) for r in recs
            if r["kind"] == "frame" and r["opcode"] == "text"]
    check(msgs == ["over tls", "over tls"], "the frames are recorded in clear: %s" % msgs)
    lines = open(keylog).read().splitlines()
    check(any(line.startswith("CLIENT_HANDSHAKE_TRAFFIC_SECRET ") for line in lines) and
          len(lines) >= 10, "the key log holds TLS 1.3 secrets of both legs (%d lines)" %
          len(lines))
    check(oct(os.stat(keylog).st_mode & 0o777) == "0o600", "the key log is private")


async def test_untrusted_upstream():
    server = await tls_server()
    p = Proxy("wss://localhost:%d" % port_of(server))  # system store: does not know upca
    await expect_status("ws://127.0.0.1:%d/" % p.port, 502)
    p.stop()
    server.close()
    _, recs = records(p.capture)
    bad = [r for r in recs if r["kind"] == "tcp" and r["event"] == "tls_error"]
    check(bad and "certificate verify failed" in bad[0].get("detail", ""),
          "the capture says why: %s" % bad)


async def test_insecure_upstream():
    server = await tls_server("other")  # the wrong name, and not trusted: both ignored
    p = Proxy("wss://localhost:%d" % port_of(server), "--insecure-upstream")
    check("NOT verified" in getattr(p, "warning", ""), "--insecure-upstream is logged")
    got = await roundtrip("ws://127.0.0.1:%d/" % p.port)
    p.stop()
    server.close()
    check(got == "over tls", "echo with --insecure-upstream")
    hdr, recs = records(p.capture)
    check(hdr["meta"].get("insecure_upstream") is True, "the capture header says insecure")
    op = [r for r in recs if r["kind"] == "open"][0]
    check("upstream_insecure" in op.get("transport", []), "the open record says insecure")


async def test_wrong_name():
    server = await tls_server("other")
    p = Proxy("wss://localhost:%d" % port_of(server), "--upstream-ca", f"{TMP}/upca.pem")
    await expect_status("ws://127.0.0.1:%d/" % p.port, 502)
    p.stop()
    server.close()
    _, recs = records(p.capture)
    bad = [r for r in recs if r["kind"] == "tcp" and r["event"] == "tls_error"]
    check(bad and "hostname mismatch" in bad[0].get("detail", ""),
          "a certificate for another name is refused: %s" % bad)


async def test_mutual_tls():
    server = await tls_server(client_ca="clientca")
    base = ["wss://localhost:%d" % port_of(server), "--upstream-ca", f"{TMP}/upca.pem"]
    p = Proxy(*base)
    await expect_status("ws://127.0.0.1:%d/" % p.port, 502)
    p.stop()
    p = Proxy(*base, "--upstream-cert", f"{TMP}/client.pem", "--upstream-key",
              f"{TMP}/client.key")
    got = await roundtrip("ws://127.0.0.1:%d/" % p.port)
    p.stop()
    server.close()
    check(got == "over tls", "with the client certificate the backend accepts the proxy")


async def test_fixed_cert_and_plain_client():
    server = await websockets.serve(echo, "127.0.0.1", 0, ping_interval=None)
    p = Proxy("ws://127.0.0.1:%d" % port_of(server), "--listen-tls", "--tls-cert",
              f"{TMP}/server.pem", "--tls-key", f"{TMP}/server.key")
    # a client that does not speak TLS to the TLS listener
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    try:
        await asyncio.wait_for(reader.read(100), 5)
    except ConnectionResetError:
        pass  # closing with our request unread makes the kernel send an RST
    writer.close()
    got = await roundtrip("wss://localhost:%d/" % p.port, client_ctx(f"{TMP}/upca.pem"))
    p.stop()
    server.close()
    check(got == "over tls", "a fixed certificate serves TLS clients")
    _, recs = records(p.capture)
    check(any(r["kind"] == "tcp" and r["event"] == "tls_error" and r["leg"] == "client"
              for r in recs), "the plain client's failed handshake is recorded")


async def test_ca_permissions():
    d = os.path.join(TMP, "ca-perm")
    rc = subprocess.run([WSRR, "ca", "init", "--ca-dir", d], capture_output=True, text=True)
    check(rc.returncode == 0 and "SSL_CERT_FILE=" in rc.stdout, "wsrr ca init shows how to trust")
    check(oct(os.stat(d).st_mode & 0o777) == "0o700", "the CA directory is 0700")
    check(oct(os.stat(d + "/ca.key").st_mode & 0o777) == "0o600", "the CA key is 0600")
    pem = subprocess.run([WSRR, "ca", "export", "--ca-dir", d], capture_output=True, text=True)
    check(pem.stdout.startswith("-----BEGIN CERTIFICATE-----"), "wsrr ca export prints the PEM")
    os.chmod(d + "/ca.key", 0o644)
    rc = subprocess.run([WSRR, "ca", "show", "--ca-dir", d], capture_output=True, text=True)
    check(rc.returncode == 2 and "readable by others" in rc.stderr,
          "a CA key others can read is refused: %s" % rc.stderr)
    rc = subprocess.run([WSRR, "ca", "show", "--ca-dir", os.path.join(TMP, "none")],
                        capture_output=True, text=True)
    check(rc.returncode == 2 and "wsrr ca init" in rc.stderr, "no CA yet: says how to make one")


async def test_replay_and_serve_tls():
    """A session recorded over TLS replays against a wss server (verified
    with --ca, refused without it, accepted with --insecure), and wsrr serve
    --listen-tls plays it to a TLS client."""
    server = await tls_server()
    p = Proxy("wss://localhost:%d" % port_of(server), "--upstream-ca", f"{TMP}/upca.pem")
    async with websockets.connect("ws://127.0.0.1:%d/r" % p.port, ping_interval=None) as ws:
        for m in ("one", "two"):
            await ws.send(m)
            await ws.recv()
    p.stop()
    target = "wss://localhost:%d" % port_of(server)

    def replay(*extra):
        r = subprocess.run([WSRR, "replay", p.capture, "--target", target, "--timeout", "2000"]
                           + list(extra), capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout + r.stderr

    rc, out = await asyncio.to_thread(replay, "--ca", f"{TMP}/upca.pem")
    check(rc == 0 and out.strip().endswith(": ok"), "replay over wss, verified with --ca (%d): %s"
          % (rc, out))
    rc, out = await asyncio.to_thread(replay)
    check(rc == 1 and "failed: TLS with localhost:" in out and "certificate verify failed" in out,
          "not trusted by the system store: the connection fails, saying why (%d): %s"
          % (rc, out))
    rc, out = await asyncio.to_thread(replay, "--insecure")
    check(rc == 0, "--insecure: replayed unverified (%d): %s" % (rc, out))
    server.close()

    sv = subprocess.Popen([WSRR, "serve", p.capture, "--listen", "127.0.0.1:0", "--listen-tls",
                           "--tls-cert", f"{TMP}/server.pem", "--tls-key", f"{TMP}/server.key",
                           "--exit-after", "1"], stderr=subprocess.PIPE, text=True)
    m = re.search(r"listening on 127\.0\.0\.1:(\d+) \(TLS\)", sv.stderr.readline())
    check(m, "serve says it listens with TLS")
    got = []
    if m:
        async with websockets.connect("wss://localhost:%s/r" % m.group(1),
                                      ssl=client_ctx(f"{TMP}/upca.pem"),
                                      ping_interval=None) as ws:
            for msg in ("one", "two"):
                await ws.send(msg)
                got.append(await ws.recv())
    try:
        sv.wait(timeout=10)
    except subprocess.TimeoutExpired:
        sv.kill()
        sv.wait()
    err = sv.stderr.read()
    check(got == ["one", "two"] and sv.returncode == 0,
          "serve --listen-tls plays the recorded answers over TLS (%r, %d): %s"
          % (got, sv.returncode, err))


TESTS = [test_replay_and_serve_tls, test_both_legs, test_untrusted_upstream,
         test_insecure_upstream, test_wrong_name, test_mutual_tls,
         test_fixed_cert_and_plain_client, test_ca_permissions]


def main():
    global WSRR, TMP
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsrr", required=True)
    a = ap.parse_args()
    WSRR = os.path.abspath(a.wsrr)
    TMP = tempfile.mkdtemp(prefix="wsrr-tls-test-")
    os.environ.pop("SSL_CERT_FILE", None)  # the system store, as users have it
    try:
        make_certs(TMP)
        for t in TESTS:
            print("%s ..." % t.__name__, flush=True)
            try:
                asyncio.run(asyncio.wait_for(t(), 60))
            except Exception as e:
                check(False, "%s raised %r" % (t.__name__, e))
    finally:
        for p in PROXIES:  # those a failed test left running
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
        shutil.rmtree(TMP)
    print("%d failures" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
