"""Helpers shared by wsrr's integration tests (and captures/make-samples.py).

- check(cond, what): record a failure (printed at once) and go on;
  failures holds them, so a test script ends with `return 1 if failures`.
- frame(...): any WebSocket frame, malformed ones included, built by hand so
  tests do not depend on the codec they test.
- accept_for(key): Sec-WebSocket-Accept as RFC 6455 computes it.
"""
import base64
import hashlib
import struct
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("  FAIL:", what, flush=True)
    return cond


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(b0, data, mask=None, width=None, length=None):
    """A frame with first byte b0, the payload masked with `mask` (4 bytes)
    when given, the length written with `width` bits (7, 16 or 64: a wider
    one than needed is a non-minimal encoding) and declared as `length`
    (which may disagree with the data)."""
    n = len(data) if length is None else length
    w = width or (7 if n <= 125 else 16 if n <= 0xFFFF else 64)
    mbit = 0x80 if mask else 0
    if w == 7:
        head = bytes([b0, mbit | n])
    elif w == 16:
        head = bytes([b0, mbit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
    if mask:
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
        head += mask
    return head + data


class Drain:
    """Reads a child's stderr in a thread from now on: a process that logs a
    line per connection must never block on a full pipe (1000 connections
    fill 64 KiB). lines() waits for the end of the stream (the child has
    exited or been killed)."""

    def __init__(self, stream):
        self._lines = []
        self._t = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._t.start()

    def _run(self, stream):
        for line in stream:
            self._lines.append(line.rstrip("\n"))

    def lines(self, timeout=10):
        self._t.join(timeout)
        return list(self._lines)


def run_tests(tests, names=(), always=(), per_test=150):
    """Run the async tests (those named, plus `always`: the ones others build
    on), each bounded in time, one's crash not hiding the others; print the
    failures and return the exit status."""
    import asyncio
    import time
    for t in tests:
        if names and t.__name__ not in names and t.__name__ not in always:
            continue
        t0 = time.monotonic()
        print("%s ..." % t.__name__, flush=True)
        try:
            asyncio.run(asyncio.wait_for(t(), per_test))
        except Exception as e:  # one test's crash must not hide the others
            check(False, "%s raised %r" % (t.__name__, e))
        print("  %.2f s" % (time.monotonic() - t0), flush=True)
    print("%d failures" % len(failures))
    return 1 if failures else 0
