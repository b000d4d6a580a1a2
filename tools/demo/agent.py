#!/usr/bin/env python3
"""The demo's agent backend and client (Python websockets).

    agent.py backend PORT [--fixed] a streaming agent endpoint at ws://127.0.0.1:PORT/v1/agent
                                   (--fixed: the same without the bug)
    agent.py client URL [N]        N concurrent runs (default 3) against URL

The backend streams agent_started, tool_executing (x2), agent_completed for
every {"type":"run"} it receives. It has the kind of bug wsrr exists for:
runs of the same user share state, and when a second run of that user
overlaps the first, the first run's handler fails and the server closes
that connection with 1011 Internal error. Run alone, every run succeeds.
"""
import asyncio
import json
import sys

import websockets

shared_state = {}
FIXED = False


async def backend_handler(ws, path=None):
    try:
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("type") != "run":
                await ws.send(json.dumps({"type": "error", "error": "unknown message"}))
                continue
            user, run = msg["user"], msg["run"]
            await ws.send(json.dumps({"type": "agent_started", "run": run, "task": msg["task"]}))
            for step, tool in enumerate(("search", "calculator")):
                await asyncio.sleep(0.02)
                await ws.send(json.dumps({"type": "tool_executing", "run": run,
                                          "step": step + 1, "tool": tool}))
                if step == 1 and not FIXED and shared_state.get(user) not in (None, run):
                    # the race: another run of this user replaced our state
                    shared_state.pop(user, None)
                    await ws.close(1011, "Internal error")
                    return
                shared_state[user] = run
            shared_state.pop(user, None)
            await ws.send(json.dumps({"type": "agent_completed", "run": run, "result": "42",
                                      "tokens": 187}))
    except websockets.ConnectionClosed:
        pass


async def backend(port):
    async with websockets.serve(backend_handler, "127.0.0.1", port, compression="deflate",
                                ping_interval=None):
        await asyncio.Future()


async def one_run(url, user, run, delay, compression):
    await asyncio.sleep(delay)
    async with websockets.connect(url, compression=compression, ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "run", "user": user, "run": run,
                                  "task": "What is six times seven?"}))
        try:
            while True:
                event = json.loads(await ws.recv())
                if event["type"] == "agent_completed":
                    await ws.close(1000, "done")
                    return "%s %s: completed" % (user, run)
        except websockets.ConnectionClosedError as e:
            return "%s %s: received %d (%s) %s" % (user, run, e.rcvd.code,
                                                   "internal error" if e.rcvd.code == 1011
                                                   else "closed", e.rcvd.reason)


async def clients(url, n=3):
    runs = [("ada", "run-1", 0.0, "deflate"), ("ada", "run-2", 0.01, None),
            ("bob", "run-3", 0.005, "deflate")][:n]
    return await asyncio.gather(*[one_run(url, *r) for r in runs])


def main():
    global FIXED
    if len(sys.argv) >= 3 and sys.argv[1] == "backend":
        FIXED = "--fixed" in sys.argv[3:]
        asyncio.run(backend(int(sys.argv[2])))
    elif len(sys.argv) >= 3 and sys.argv[1] == "client":
        n = int(sys.argv[3]) if len(sys.argv) > 3 else 3
        for line in asyncio.run(clients(sys.argv[2], n)):
            print(line)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
