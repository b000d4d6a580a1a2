#!/usr/bin/env python3
"""The capture verbs as a user runs them: wsrr verify / recover / cat /
import on good, damaged and foreign files, checking exit statuses, that
errors are one line naming the file and the byte offset, that recover keeps
every intact record, that `zstd -dc` reads captures, and that the JSON-lines
round trip is byte-identical on every sample capture.

usage: cli_capture.py --wsrr PATH --captures DIR
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wstest import check, failures  # noqa: E402


def run(*args, stdin=None):
    p = subprocess.run(list(args), input=stdin, capture_output=True)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def layout(data):
    """Independent walk of the container: [(kind, start, end, records)]."""
    out = []
    off = 8 + struct.unpack_from("<I", data, 4)[0]
    out.append(("header", 0, off, 0))
    while off + 12 <= len(data):
        magic, size = struct.unpack_from("<II", data, off)
        tag = data[off + 8:off + 12]
        if tag == b"WSRB":
            count = struct.unpack_from("<I", data, off + 8 + 36)[0]
            csize = struct.unpack_from("<I", data, off + 8 + 56)[0]
            out.append(("batch", off, off + 88 + csize, count))
            off += 88 + csize
        else:
            out.append(("trailer" if tag == b"WSRT" else "seek", off, off + 8 + size, 0))
            off += 8 + size
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsrr", required=True)
    ap.add_argument("--captures", required=True)
    a = ap.parse_args()
    W = a.wsrr
    samples = sorted(os.path.join(a.captures, f) for f in os.listdir(a.captures)
                     if f.endswith(".wsrr"))
    check(len(samples) >= 2, "sample captures found: %s" % samples)
    tmp = tempfile.mkdtemp()
    try:
        for s in samples:
            rc, out, err = run(W, "verify", s)
            check(rc == 0 and ": ok:" in out, "verify %s: rc %d %s%s" % (s, rc, out, err))
            # JSON lines round trip, byte for byte
            rc, j1, err = run(W, "cat", "--jsonl", s)
            check(rc == 0, "cat --jsonl %s: %s" % (s, err))
            copy = os.path.join(tmp, "copy.wsrr")
            rc, _, err = run(W, "import", "--jsonl", "-", "-o", copy, "--force",
                             stdin=j1.encode())
            check(rc == 0, "import %s: %s" % (s, err))
            rc, j2, _ = run(W, "cat", "--jsonl", copy)
            check(j1 == j2, "JSONL round trip of %s is byte-identical" % s)
            # any zstd reads it
            if shutil.which("zstd"):
                p = subprocess.run(["zstd", "-dc", s], capture_output=True)
                check(p.returncode == 0 and len(p.stdout) > 0,
                      "zstd -dc %s: rc %d %s" % (s, p.returncode, p.stderr[:200]))
            # the readable form has one line per record
            rc, text, _ = run(W, "cat", s)
            check(rc == 0 and len(text.splitlines()) == len(j1.splitlines()) - 1,
                  "cat %s: one line per record" % s)

        src = next(s for s in samples if "agent" in s)
        data = open(src, "rb").read()
        parts = layout(data)
        batches = [p for p in parts if p[0] == "batch"]
        total = sum(p[3] for p in batches)
        check(len(batches) >= 3, "the sample has several batches (%d)" % len(batches))

        def write(name, content):
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(content)
            return path

        # garbage, wrong magic, not a file at all: exit 2, one line, offset 0
        for name, content in [("garbage.wsrr", os.urandom(4096)),
                              ("text.wsrr", b"GET / HTTP/1.1\r\n\r\n"),
                              ("empty.wsrr", b""),
                              ("zstd.wsrr", zlib.compress(b"x"))]:
            path = write(name, content)
            rc, out, err = run(W, "verify", path)
            check(rc == 2, "verify %s exits 2 (got %d)" % (name, rc))
            check(len(err.strip().splitlines()) == 1 and path in err and "offset 0" in err,
                  "verify %s: one line naming the file and offset: %r" % (name, err))
            rc, _, err = run(W, "cat", path)
            check(rc == 2 and "offset 0" in err, "cat %s exits 2: %r" % (name, err))
            rc, _, err = run(W, "recover", path, "-o", os.path.join(tmp, "r.wsrr"), "--force")
            check(rc == 2, "recover %s exits 2" % name)
        rc, _, err = run(W, "verify", os.path.join(tmp, "missing.wsrr"))
        check(rc == 2 and "missing.wsrr" in err, "a missing file: exit 2 naming it: %r" % err)

        # a future major version (CRC fixed up, as a newer wsrr would write it)
        fut = bytearray(data)
        psize = struct.unpack_from("<I", fut, 4)[0]
        struct.pack_into("<H", fut, 8 + 4, 2)
        struct.pack_into("<I", fut, 8 + psize - 4, zlib.crc32(bytes(fut[8:8 + psize - 4])))
        path = write("future.wsrr", bytes(fut))
        rc, out, err = run(W, "verify", path)
        check(rc == 2 and "version 2" in err and "offset 12" in err,
              "future version: exit 2, offset and version named: %r" % err)

        # truncated in the middle of the last batch: exit 1, the offset where
        # the damage starts, and recover keeps every record of the other
        # batches
        last = batches[-1]
        cut = (last[1] + last[2]) // 2
        path = write("cut.wsrr", data[:cut])
        rc, out, err = run(W, "verify", path)
        check(rc == 1, "truncated: exit 1 (got %d)" % rc)
        check("offset %d" % last[1] in out and "%d records recovered" % (total - last[3]) in out,
              "truncated: the offset of the cut batch and the intact count: %r" % out)
        rec = os.path.join(tmp, "recovered.wsrr")
        rc, out, err = run(W, "recover", path, "-o", rec)
        check(rc == 0 and "%d intact records" % (total - last[3]) in out,
              "recover of the cut file: %r %r" % (out, err))
        rc, out, _ = run(W, "verify", rec)
        check(rc == 0, "the recovered file verifies clean: %r" % out)

        # a flipped byte inside a middle batch: only that batch is lost
        mid = batches[len(batches) // 2]
        flip = bytearray(data)
        flip[(mid[1] + 88 + mid[2]) // 2] ^= 0x40
        path = write("flip.wsrr", bytes(flip))
        rc, out, err = run(W, "verify", path)
        check(rc == 1 and "offset %d" % mid[1] in out,
              "flipped byte: exit 1 with the damaged batch's offset %d: %r" % (mid[1], out))
        rc, out, err = run(W, "recover", path, "-o", rec, "--force")
        check(rc == 0 and "%d intact records" % (total - mid[3]) in out,
              "recover keeps all but the damaged batch (%d of %d): %r" %
              (total - mid[3], total, out))
        rc, j, _ = run(W, "cat", "--jsonl", rec)
        seqs = [json.loads(line)["seq"] for line in j.splitlines()[1:]]
        check(len(seqs) == total - mid[3] and seqs == sorted(seqs),
              "recovered records keep their sequence numbers")
        meta = json.loads(j.splitlines()[0])["meta"]
        check("recovered" in meta and meta["recovered"]["damage"][0]["offset"] == mid[1],
              "the recovered file's metadata says what was lost: %s" % meta.get("recovered"))
        rc, out, err = run(W, "cat", path)
        check(rc == 1 and "offset %d" % mid[1] in err,
              "cat of a damaged file prints what it can, exits 1, names the offset")

        # recover never destroys its input, and needs a file it can read twice
        inplace = write("inplace.wsrr", bytes(flip))
        rc, _, err = run(W, "recover", inplace, "-o", inplace, "--force")
        check(rc == 2 and "input" in err, "recover FILE -o FILE is refused: %r" % err)
        check(open(inplace, "rb").read() == bytes(flip), "...and the input is untouched")
        rc, _, err = run(W, "recover", "-", "-o", os.path.join(tmp, "x.wsrr"), stdin=data)
        check(rc == 2 and "regular file" in err, "recover from standard input is refused: %r" % err)
        # --force replaces OUT only once the new capture is complete
        keep = write("keep.wsrr", data)
        bad_hdr = os.path.join(tmp, "bad-meta.jsonl")
        with open(bad_hdr, "w") as f:
            f.write('{"wsrr":"capture","version":"1.0","meta_text":"not an object"}\n')
        rc, _, err = run(W, "import", "--jsonl", bad_hdr, "-o", keep, "--force")
        check(rc == 2 and "JSON object" in err, "import of non-object metadata fails: %r" % err)
        check(open(keep, "rb").read() == data, "a failed import --force leaves OUT as it was")
        check(not [f for f in os.listdir(tmp) if ".tmp-" in f], "no temporary file is left")
        good_out = os.path.join(tmp, "replaced.wsrr")
        shutil.copy(src, good_out)
        rc, _, err = run(W, "recover", path, "-o", good_out, "--force")
        check(rc == 0, "recover --force replaces an existing OUT: %r" % err)
        rc, out, _ = run(W, "verify", good_out)
        check(rc == 0 and "%d records" % (total - mid[3]) in out, "...with the recovered capture")

        # import: errors name the line and column; nothing is left behind
        bad = os.path.join(tmp, "bad.jsonl")
        with open(bad, "w") as f:
            f.write(run(W, "cat", "--jsonl", src)[1].splitlines()[0] + "\n")
            f.write('{"kind":"note","text":"ok"}\n')
            f.write('{"kind":"note","txt":"typo"}\n')
        out_path = os.path.join(tmp, "never.wsrr")
        rc, _, err = run(W, "import", "--jsonl", bad, "-o", out_path)
        check(rc == 2 and "bad.jsonl:3:" in err and "txt" in err,
              "import error names line 3 and the key: %r" % err)
        check(not os.path.exists(out_path), "a failed import leaves no file")
        with open(bad, "w") as f:
            f.write('{"wsrr":"capture","version":"1.0"}\n{"kind":"note", "text": }\n')
        rc, _, err = run(W, "import", "--jsonl", bad, "-o", out_path)
        check(rc == 2 and "bad.jsonl:2: column" in err, "invalid JSON: line and column: %r" % err)
        good = os.path.join(tmp, "good.jsonl")
        with open(good, "w") as f:
            f.write(run(W, "cat", "--jsonl", src)[1])
        rc, _, err = run(W, "import", "--jsonl", good, "-o", rec)
        check(rc == 2 and "exists" in err, "import never overwrites without --force: %r" % err)

        # the command line
        rc, out, _ = run(W, "--version")
        check(rc == 0 and out.startswith("wsrr "), "--version")
        for verb in ("cat", "import", "verify", "recover"):
            rc, out, _ = run(W, verb, "--help")
            check(rc == 0 and out.startswith("usage: wsrr " + verb), "%s --help" % verb)
        for args, needle in [(["frobnicate"], "unknown verb"),
                             (["cat", "--frob", src], "unknown option '--frob'"),
                             (["cat", src, "--conn"], "needs a value"),
                             (["cat", src, "--conn", "x"], "expected a connection id"),
                             (["cat", src, "--dir", "up"], "client or server"),
                             (["cat"], "missing FILE"),
                             (["import", "--jsonl", src], "missing -o"),
                             (["recover", src], "missing -o")]:
            rc, _, err = run(W, *args)
            check(rc == 2 and needle in err, "%s: exit 2 with %r, got %d %r" %
                  (" ".join(args), needle, rc, err))
        # filters
        rc, out, _ = run(W, "cat", src, "--conn", "1", "--kind", "close")
        check(rc == 0 and len(out.splitlines()) == 1 and "1011" in out,
              "cat --conn 1 --kind close shows the 1011: %r" % out)
        rc, out, _ = run(W, "cat", src, "--dir", "client", "--kind", "frame")
        check(rc == 0 and out and all("C>S" in line for line in out.splitlines()),
              "cat --dir client shows only client frames")
    finally:
        shutil.rmtree(tmp)
    print("%d failures" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
