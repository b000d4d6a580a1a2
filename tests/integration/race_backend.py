#!/usr/bin/python3
"""A FastAPI + uvicorn WebSocket backend with two cross-connection race bugs,
for wsrr's replay tests.

usage: race_backend.py --port PORT [--fixed]

PORT 0 picks a free port. Once the server accepts connections it prints exactly
one line to stdout: `race_backend listening on 127.0.0.1:PORT`. Tracebacks and
uvicorn's warnings go to stderr. Every server event is a JSON text message with
a "type" and a "ts" (time.time(), for replay's --ignore).

Both bugs fire only when two connections interleave in one particular order;
run the sessions one after another and nothing fails. Neither depends on
timing inside the server (it never sleeps): the order in which the server
*receives* the client messages decides, so a replay that keeps the
cross-connection order of the client's sends reproduces the crash every time.
A crash closes that connection with 1011 "Internal error"; the other
connection carries on and completes.

Bug A -- shared per-user run state (endpoint /v1/agent)
    client: {"type":"run","user":U,"run":R}
    server: agent_started, tool_executing (step 1, call_id "R/call-1")
    client: {"type":"tool_result","run":R,"step":1}
    server: tool_executing (step 2, call_id "R/call-2")
    client: {"type":"tool_result","run":R,"step":2}
    server: agent_completed
    The run's state (its pending tool calls) lives in a module-level dict keyed
    by the *user*, and every step re-reads it from there. A second run of the
    same user overwrites the first run's slot.
    Interleaving (same user U on both connections):
        conn 1  -> run R1                 (server: AGENT_STATE[U] = R1's state)
        conn 2  -> run R2                 (server: AGENT_STATE[U] = R2's state)
        conn 1  -> tool_result R1 step 1  (server: R2's pending calls have no
                                           "R1/call-1" -> KeyError -> 1011)
    In general: conn 2's `run` is received after conn 1's `run` and before
    conn 1's step-2 `tool_result`; conn 1 gets 1011 at its next tool_result
    (KeyError on the call id, or on U if run R2 already completed and removed
    the slot), conn 2 completes. The state is written before agent_started is
    sent, so a client that has seen agent_started on conn 2 before sending
    conn 1's tool_result triggers it deterministically.
    --fixed: the state is keyed by (user, run).

Bug B -- use after delete (endpoint /v1/chat)
    client: {"type":"open","conversation":C}        server: conversation_opened
    client: {"type":"message","conversation":C,"text":T}
    server: message_received, assistant_delta, assistant_delta, assistant_done
    client: {"type":"delete","conversation":C}      server: conversation_deleted
    `open` creates C if it does not exist. The connection remembers only the
    conversation *id* and looks the conversation up again on every message.
    Interleaving (conn 1: open C, message, message; conn 2: open C, message,
    delete C):
        conn 1  -> open C                 (server: creates C)
        conn 2  -> open C, message
        conn 2  -> delete C               (server: removes C)
        conn 1  -> message                (server: CONVERSATIONS[C] -> KeyError
                                           -> 1011)
    In general: conn 2's `delete` is received after conn 1's `open` and before
    conn 1's last `message`. If conn 1 has finished, or has not yet opened C
    (open re-creates it), nothing fails.
    --fixed: the connection keeps the conversation object it opened, so a
    message to a conversation deleted meanwhile goes to that (now unlisted)
    object and gets the same replies.

Why the endpoints close with 1011 themselves: uvicorn 0.17.6 does NOT send a
close frame when a WebSocket handler raises after accept(). Both of its
implementations (websockets_impl and wsproto_impl) log "Exception in ASGI
application" and call transport.close(), so the client sees the TCP
connection drop with no close frame (websockets: ConnectionClosedError,
code 1006, rcvd None). Starlette 0.26 does not catch it either (its error
middleware handles only HTTP). Users of later stacks see "received 1011
(internal error)", so `crash_closes_1011` catches the exception, logs it, and
closes with 1011 "Internal error" explicitly.
"""
import argparse
import asyncio
import functools
import logging
import socket
import sys
import time

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

log = logging.getLogger("race_backend")
app = FastAPI()
FIXED = False  # set by --fixed

# Bug A: run state, keyed by user (buggy) or (user, run) (fixed).
# Stands in for a shared store (Redis...), so every step reads it again.
AGENT_STATE: dict = {}
# Bug B: conversation id -> {"messages": [...]}.
CONVERSATIONS: dict = {}
TOOLS = {1: "search_docs", 2: "summarize"}


class BadRequest(Exception):
    """The client broke the protocol: close 1008, not 1011."""


def event(type_, **fields):
    return {"type": type_, "ts": time.time(), **fields}


async def receive(ws, *types):
    msg = await ws.receive_json()
    if not isinstance(msg, dict) or msg.get("type") not in types:
        raise BadRequest(f"expected {'/'.join(types)}")
    return msg


def crash_closes_1011(handler):
    """accept(), run handler, and turn an unhandled exception into a 1011
    close (uvicorn 0.17.6 would just drop the TCP connection, see above)."""

    @functools.wraps(handler)
    async def endpoint(ws: WebSocket):
        await ws.accept()
        try:
            await handler(ws)
        except WebSocketDisconnect:
            pass
        except BadRequest as exc:
            await ws.close(code=1008, reason=str(exc))
        except Exception:
            log.exception("unhandled exception in %s", ws.url.path)
            await ws.close(code=1011, reason="Internal error")

    return endpoint


@app.websocket("/v1/agent")
@crash_closes_1011
async def agent(ws: WebSocket):
    while True:  # one run after another, until the client closes
        msg = await receive(ws, "run")
        user, run = str(msg["user"]), str(msg["run"])
        key = (user, run) if FIXED else user  # BUG A: one slot per user
        AGENT_STATE[key] = {"run": run, "pending": {}}
        await ws.send_json(event("agent_started", user=user, run=run))
        for step in (1, 2):
            call_id = f"{run}/call-{step}"
            AGENT_STATE[key]["pending"][call_id] = TOOLS[step]
            await ws.send_json(event("tool_executing", run=run, step=step,
                                     call_id=call_id, tool=TOOLS[step]))
            result = await receive(ws, "tool_result")
            if result.get("run") != run or result.get("step") != step:
                raise BadRequest(f"expected tool_result for {run} step {step}")
            # Another run of this user may have replaced AGENT_STATE[user]
            # (KeyError on call_id) or finished and removed it (KeyError on
            # user). Nothing awaits between this lookup and the del below.
            tool = AGENT_STATE[key]["pending"].pop(call_id)
            if step == 2:
                del AGENT_STATE[key]
        await ws.send_json(event("agent_completed", run=run, steps=2,
                                 last_tool=tool))


@app.websocket("/v1/chat")
@crash_closes_1011
async def chat(ws: WebSocket):
    msg = await receive(ws, "open")
    conv_id = str(msg["conversation"])
    conv = CONVERSATIONS.setdefault(conv_id, {"messages": []})
    await ws.send_json(event("conversation_opened", conversation=conv_id,
                             history=len(conv["messages"])))
    while True:
        msg = await receive(ws, "message", "delete")
        if msg.get("conversation") != conv_id:
            raise BadRequest("wrong conversation")
        if msg["type"] == "delete":
            CONVERSATIONS.pop(conv_id, None)
            await ws.send_json(event("conversation_deleted",
                                     conversation=conv_id))
            continue
        if not FIXED:
            conv = CONVERSATIONS[conv_id]  # BUG B: gone if another conn deleted it
        text = str(msg.get("text", ""))
        conv["messages"].append(text)
        seq = len(conv["messages"])
        await ws.send_json(event("message_received", conversation=conv_id,
                                 seq=seq))
        for part in (f"You said: {text[:40]}", " -- noted."):
            await ws.send_json(event("assistant_delta", conversation=conv_id,
                                     seq=seq, text=part))
        await ws.send_json(event("assistant_done", conversation=conv_id,
                                 seq=seq))


async def serve(port):
    # IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections
    # only if sock.proto is IPPROTO_TCP; with proto 0, Nagle holds back the
    # second of two back-to-back events for ~40 ms (delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, ws="websockets", lifespan="off",
                            log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        print(f"race_backend listening on 127.0.0.1:{sock.getsockname()[1]}",
              flush=True)
    await task


def main():
    global FIXED
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--fixed", action="store_true",
                    help="both race bugs fixed, same messages")
    args = ap.parse_args()
    FIXED = args.fixed
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="race_backend: %(levelname)s %(message)s")
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
