#!/usr/bin/env python3
"""The harness floor: the least server that ``bench/loadclient.py`` can drive.

Single-threaded asyncio, raw protocol, no logging, no storage, no parsing
beyond what the load client sends.  It answers /api/register, /api/login,
/ack and /chat and holds GET /jchat, writing each chat frame to the held
stream at once.  ``bench/run.py --floor`` runs the latency and rate phases
against it: what the load client, the loopback and the scheduler cost on
this machine, below which no server's figures can go.  Not a contender.

    python bench/null_server.py --port 0   -> "null ready http=127.0.0.1:PORT"
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
from urllib.parse import parse_qs, urlsplit

held: dict = {}      # user -> transport of the held heartbeat
sessions: dict = {}  # sid -> user
msgid = 0


def reply(tr, status: str, obj=None) -> None:
    body = b"" if obj is None else json.dumps(obj).encode()
    tr.write(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
             % (status.encode(), len(body), body))


class Proto(asyncio.Protocol):
    def connection_made(self, tr) -> None:
        self.tr = tr
        self.buf = b""
        self.user = None

    def connection_lost(self, exc) -> None:
        if self.user and held.get(self.user) is self.tr:
            del held[self.user]

    def data_received(self, data: bytes) -> None:
        global msgid
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = self.buf[:i].decode("latin-1")
            n = 0
            for line in head.split("\r\n")[1:]:
                if line[:15].lower() == "content-length:":
                    n = int(line[15:])
            if len(self.buf) < i + 4 + n:
                return
            body = self.buf[i + 4:i + 4 + n].decode()
            self.buf = self.buf[i + 4 + n:]
            method, target = head.split(" ", 2)[:2]
            u = urlsplit(target)
            p = {k: v[-1] for k, v in parse_qs(u.query).items()}
            p.update({k: v[-1] for k, v in parse_qs(body).items()})
            path = u.path
            if path == "/api/register":
                reply(self.tr, "201 Created", {"username": p.get("username")})
            elif path == "/api/login":
                sid = secrets.token_urlsafe(16)
                sessions[sid] = p.get("username")
                reply(self.tr, "200 OK", {"session": sid, "username": p.get("username")})
            elif path == "/jchat":
                self.user = sessions.get(p.get("id"))
                held[self.user] = self.tr
                self.tr.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8"
                              b"\r\nTransfer-Encoding: chunked\r\n\r\n")
            elif path == "/chat":
                msgid += 1
                to = held.get(p.get("to"))
                if to is not None:
                    ev = ("id: %d\ndata: msg chat %s %d\ndata: %s\n\n"
                          % (msgid, sessions.get(p.get("id")), msgid, p.get("msg"))).encode()
                    to.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                reply(self.tr, "202 Accepted",
                      {"delivered": "online" if to else "stored", "msgid": msgid})
            elif path == "/api/stats":
                reply(self.tr, "200 OK", {"held": len(held), "sessions": len(sessions)})
            else:
                self.tr.write(b"HTTP/1.1 204 No Content\r\n\r\n")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=1800)
    a = ap.parse_args()
    srv = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", a.port, backlog=1024)
    print("null ready http=127.0.0.1:%d" % srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(a.max_seconds)
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
