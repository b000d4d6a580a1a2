#!/usr/bin/python3
"""Drive two concurrent sessions against race_backend.py (see its docstring
for the bugs and the interleavings that trigger them).

usage: race_client.py URL --scenario a|b [--mode racy|sequential]
                      [--runs N] [--seed S]

URL is the backend's base, e.g. ws://127.0.0.1:PORT; the script appends
/v1/agent (scenario a) or /v1/chat (scenario b).

  a: both sessions run an agent for the same user ("alice"):
     run, tool_result step 1, tool_result step 2.
  b: session 1 opens conversation C and sends two messages; session 2 opens
     C, sends one message and deletes C.

racy: both sessions run at once; each connects, waits a random (seeded)
      start delay, and waits a random think time before every send, so the
      triggering interleaving happens only in some runs.
sequential: session 1 runs to the end (closed) before session 2 starts;
      the bugs never fire.

For every session it prints `session N: completed` or
`session N: received CODE REASON` (the close the server sent; 1006 if the
connection dropped without a close frame). With --runs N > 1 each run's lines
follow a `run I` line and a final `failures F/N` counts the runs in which a
session did not complete. Always exits 0 unless the client itself breaks.
"""
import argparse
import asyncio
import json
import random

import websockets

PATHS = {"a": "/v1/agent", "b": "/v1/chat"}
# Seconds. Tuned so racy runs fail about 30% of the time on loopback
# (measured: a 28/100, b 31/100); shorter start delays fail more often.
START_DELAY = {"a": 0.12, "b": 0.06}  # uniform(0, this) per session
THINK = (0.0, 0.02)  # uniform think time before every later send
SENDS = {"a": 3, "b": 3}  # sends per session: start delay + think times
RUN_TIMEOUT = 10.0


class Failed(Exception):
    """The session ended with a close from the server."""


async def recv_type(ws, *types):
    msg = json.loads(await ws.recv())
    if msg.get("type") not in types:
        raise RuntimeError(f"unexpected {msg.get('type')!r}, wanted {types}")
    return msg


async def agent_session(ws, n, run_no, delays):
    run = f"r{run_no}-s{n}"
    await asyncio.sleep(delays[0])
    await ws.send(json.dumps({"type": "run", "user": "alice", "run": run}))
    await recv_type(ws, "agent_started")
    for step in (1, 2):
        await recv_type(ws, "tool_executing")
        await asyncio.sleep(delays[step])
        await ws.send(json.dumps({"type": "tool_result", "run": run,
                                  "step": step, "output": f"result {step}"}))
    await recv_type(ws, "agent_completed")


async def chat_turn(ws, conv, text):
    await ws.send(json.dumps({"type": "message", "conversation": conv,
                              "text": text}))
    await recv_type(ws, "message_received")
    while (await recv_type(ws, "assistant_delta", "assistant_done"))[
            "type"] != "assistant_done":
        pass


async def chat_session(ws, n, run_no, delays):
    conv = f"conv-{run_no}"
    await asyncio.sleep(delays[0])
    await ws.send(json.dumps({"type": "open", "conversation": conv}))
    await recv_type(ws, "conversation_opened")
    await asyncio.sleep(delays[1])
    await chat_turn(ws, conv, f"hello from session {n}")
    await asyncio.sleep(delays[2])
    if n == 1:
        await chat_turn(ws, conv, "and a follow-up")
    else:
        await ws.send(json.dumps({"type": "delete", "conversation": conv}))
        await recv_type(ws, "conversation_deleted")


async def session(url, scenario, n, run_no, delays):
    """Returns the line to print for this session."""
    body = agent_session if scenario == "a" else chat_session
    try:
        async with websockets.connect(url + PATHS[scenario],
                                      ping_interval=None) as ws:
            await body(ws, n, run_no, delays)
        return f"session {n}: completed"
    except websockets.ConnectionClosedError as exc:
        code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "")
        return f"session {n}: received {code} {reason}".rstrip()


async def one_run(url, scenario, mode, run_no, rng):
    # Draw every delay up front so a seed gives the same schedule whatever
    # the tasks do.
    delays = {n: [rng.uniform(0, START_DELAY[scenario])] +
              [rng.uniform(*THINK) for _ in range(SENDS[scenario] - 1)]
              for n in (1, 2)}
    if mode == "sequential":
        return [await session(url, scenario, n, run_no, delays[n])
                for n in (1, 2)]
    return list(await asyncio.gather(
        *(session(url, scenario, n, run_no, delays[n]) for n in (1, 2))))


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url", help="base URL, e.g. ws://127.0.0.1:PORT")
    ap.add_argument("--scenario", choices="ab", required=True)
    ap.add_argument("--mode", choices=("racy", "sequential"), default="racy")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    url = args.url.rstrip("/")
    failures = 0
    for run_no in range(1, max(args.runs, 1) + 1):
        lines = await asyncio.wait_for(
            one_run(url, args.scenario, args.mode, run_no, rng), RUN_TIMEOUT)
        if args.runs > 1:
            print(f"run {run_no}")
        for line in lines:
            print(line, flush=True)
        failures += any(not line.endswith(": completed") for line in lines)
    if args.runs > 1:
        print(f"failures {failures}/{args.runs}")


if __name__ == "__main__":
    asyncio.run(main())
