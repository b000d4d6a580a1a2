"""A TCP relay that logs every chunk it forwards, for wsrr's tests.

The relay sits between a WebSocket client and server (both independent
peers, e.g. Python's websockets), forwards bytes unchanged, and writes a
stream log that tests/integration/streams2capture turns into a capture
through wsrr's recorder. Format: see streams2capture.c.
"""
import asyncio
import struct
import time

EV_C2S, EV_S2C, EV_OPEN, EV_END, EV_CLIENT_RST, EV_UPSTREAM_RST, EV_CLIENT_FIN, EV_UPSTREAM_FIN = range(8)


class Relay:
    def __init__(self, upstream_host, upstream_port, log_path):
        self.upstream = (upstream_host, upstream_port)
        self.log = open(log_path, "wb")
        self.t0 = time.monotonic_ns()
        self.log.write(b"WSRRSTREAMS1\n" + struct.pack("<Q", time.time_ns()))
        self.next_conn = 1
        self.server = None
        self.port = None
        self.done = []

    def event(self, kind, conn, data=b""):
        ts = time.monotonic_ns() - self.t0
        self.log.write(struct.pack("<BIQI", kind, conn, ts, len(data)) + data)

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def handle(self, creader, cwriter):
        conn = self.next_conn
        self.next_conn += 1
        peer = cwriter.get_extra_info("peername")
        url = "ws://%s:%d/" % self.upstream
        self.event(EV_OPEN, conn, ("%s:%d %s" % (peer[0], peer[1], url)).encode())
        sreader, swriter = await asyncio.open_connection(*self.upstream)

        async def pump(reader, writer, kind, fin_kind):
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        self.event(fin_kind, conn)
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    self.event(kind, conn, data)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                self.event(EV_CLIENT_RST if kind == EV_C2S else EV_UPSTREAM_RST, conn)

        await asyncio.gather(pump(creader, swriter, EV_C2S, EV_CLIENT_FIN),
                             pump(sreader, cwriter, EV_S2C, EV_UPSTREAM_FIN))
        self.event(EV_END, conn)
        for w in (cwriter, swriter):
            w.close()
        self.done.append(conn)

    async def close(self):
        self.server.close()
        await self.server.wait_closed()
        self.log.close()
