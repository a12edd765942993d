#!/usr/bin/env python3
"""Thread-per-connection baseline for the presence benchmark (stdlib only).

The classic design the presence server is compared against:
``http.server.ThreadingHTTPServer`` starts one OS thread per TCP connection
and that thread serves the connection's requests one after another
(HTTP/1.1 keep-alive).  A held heartbeat therefore parks its thread in
``Condition.wait`` until a frame or the keep-alive time comes.

It implements the minimal subset of the contract (protocol.md sections 2-4)
that ``bench/loadclient.py`` drives, with the same wire format:

  POST /api/register, /api/login, /api/groups, /api/groups/{g}/join,
  /api/active, /ack, /chat; GET /jchat (stream mode; event-stream frames in
  chunked transfer coding; ``\\n`` keep-alive after --keepalive idle seconds;
  reliable mailbox with ack; a new heartbeat releases the older one);
  ``msg update online|offline <user>`` to the sessions watching a group the
  user is in (no linger); GET /api/stats.

Not a product: no persistence, no rate limits, no message box.  It stops by
itself after --max-seconds.

    python bench/baseline_server.py --port 0 --keepalive 25
    -> prints "baseline ready http=127.0.0.1:PORT"
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAILBOX = 1000


class Session:
    __slots__ = ("user", "sid", "cond", "mailbox", "next_n", "acked", "gen",
                 "held", "active")

    def __init__(self, user: str, sid: str) -> None:
        self.user = user
        self.sid = sid
        self.cond = threading.Condition()  # its own lock: no global convoy
        self.mailbox: collections.deque = collections.deque()
        self.next_n = 1
        self.acked = 0
        self.gen = 0
        self.held = False
        self.active = user


class State:
    def __init__(self, keepalive: float, hash_cost: int) -> None:
        self.lock = threading.Lock()
        self.keepalive = keepalive
        self.hash_cost = hash_cost
        self.users: dict[str, tuple[bytes, bytes]] = {}
        self.sessions: dict[str, Session] = {}
        self.user_sessions: dict[str, set] = collections.defaultdict(set)
        self.groups: dict[str, set] = {}
        self.member_of: dict[str, set] = collections.defaultdict(set)
        self.watchers: dict[str, set] = collections.defaultdict(set)
        self.online: dict[str, int] = {}
        self.msgid = 0
        self.started = time.monotonic()

    def hash(self, pw: str, salt: bytes) -> bytes:
        return hashlib.scrypt(pw.encode(), salt=salt, n=2 ** max(1, self.hash_cost),
                              r=8, p=1, dklen=32)

    # lock order: self.lock, then a session's cond
    def push(self, s: Session, frame: str) -> None:
        lines = "".join(f"data: {line}\n" for line in frame.split("\n"))
        with s.cond:
            n = s.next_n
            s.next_n += 1
            s.mailbox.append((n, f"id: {n}\n{lines}\n".encode()))
            while len(s.mailbox) > MAILBOX:
                s.mailbox.popleft()
            s.cond.notify_all()

    def ack(self, s: Session, n: int) -> None:
        with s.cond:
            if n > s.acked:
                s.acked = n
            mb = s.mailbox
            while mb and mb[0][0] <= s.acked:
                mb.popleft()

    def presence_changed(self, user: str, state: str) -> None:
        frame = f"msg update {state} {user}"
        targets = set(self.watchers.get(user, ()))
        for g in self.member_of.get(user, ()):
            targets |= self.watchers.get(g, set())
        for s in targets:
            if s.user != user:
                self.push(s, frame)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes
    server_version = "baseline/1"
    sys_version = ""
    st: State

    def log_message(self, fmt, *args) -> None:  # no access log
        pass

    # -------------------------------------------------------- helpers
    def params(self) -> dict:
        u = urlsplit(self.path)
        p = {k: v[-1] for k, v in parse_qs(u.query).items()}
        if self.command == "POST":
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            if raw:
                if raw[:1] == b"{":
                    p.update({k: str(v) for k, v in json.loads(raw).items()})
                else:
                    p.update({k: v[-1] for k, v in parse_qs(raw.decode()).items()})
        return p

    def reply(self, status: int, obj=None) -> None:
        body = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(status)
        if obj is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def session(self, p: dict) -> Session | None:
        st = self.st
        sid = p.get("id") or p.get("sessionId")
        s = st.sessions.get(sid or "")
        if s is None or s.user != p.get("me"):
            return None
        if "ack" in p:
            try:
                st.ack(s, int(p["ack"]))
            except ValueError:
                pass
        return s

    # -------------------------------------------------------- routes
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        p = self.params()
        st = self.st
        if path == "/jchat":
            return self.jchat(p)
        if path == "/api/stats":
            with st.lock:
                held = sum(1 for s in st.sessions.values() if s.held)
                obj = {"sessions": len(st.sessions), "held": held,
                       "online_users": len(st.online), "sweep_max_ms": None,
                       "sweeps": 0, "uptime": time.monotonic() - st.started,
                       "threads": threading.active_count(),
                       "failed_threads": Server.failed_threads}
            return self.reply(200, obj)
        return self.reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        p = self.params()
        st = self.st
        if path == "/api/register":
            name, pw = p.get("username", ""), p.get("password", "")
            if not name or len(pw) < 6:
                return self.reply(400, {"error": "bad name or weak password"})
            salt = os.urandom(16)
            h = st.hash(pw, salt)
            with st.lock:
                if name in st.users or name in st.groups:
                    return self.reply(409, {"error": "name taken"})
                st.users[name] = (salt, h)
            return self.reply(201, {"username": name})
        if path == "/api/login":
            name, pw = p.get("username", ""), p.get("password", "")
            rec = st.users.get(name)
            if rec is None or not secrets.compare_digest(st.hash(pw, rec[0]), rec[1]):
                return self.reply(401, {"error": "wrong name or password"})
            sid = secrets.token_urlsafe(16)
            with st.lock:
                s = Session(name, sid)
                st.sessions[sid] = s
                st.user_sessions[name].add(s)
                st.watchers[name].add(s)
            return self.reply(200, {"session": sid, "username": name,
                                    "heartbeat": f"/jchat?me={name}&id={sid}",
                                    "host_box": "%s:%d" % self.server.server_address[:2]})
        with st.lock:
            s = self.session(p)
        if s is None:
            return self.reply(403, {"error": "no such session"})
        if path == "/ack":
            return self.reply(204)
        if path == "/chat":
            to, text = p.get("to", ""), p.get("msg", "")
            if len(text) > 4096:
                return self.reply(413, {"error": "too long"})
            with st.lock:
                if to not in st.users:
                    return self.reply(404, {"error": "no such user"})
                st.msgid += 1
                mid = st.msgid
                online = st.online.get(to, 0) > 0
                if online:
                    for r in st.user_sessions.get(to, ()):
                        st.push(r, f"msg chat {s.user} {mid}\n{text}")
            return self.reply(202, {"delivered": "online" if online else "stored",
                                    "msgid": mid})
        if path == "/api/groups":
            g = p.get("name", "")
            with st.lock:
                if not g or g in st.groups or g in st.users:
                    return self.reply(409, {"error": "name taken"})
                st.groups[g] = {s.user}
                st.member_of[s.user].add(g)
            return self.reply(201, {"name": g})
        if path.startswith("/api/groups/") and path.endswith("/join"):
            g = path[len("/api/groups/"):-len("/join")]
            with st.lock:
                if g not in st.groups:
                    return self.reply(404, {"error": "no such group"})
                st.groups[g].add(s.user)
                st.member_of[s.user].add(g)
                for w in st.watchers.get(g, ()):
                    st.push(w, f"msg refresh {g}")
            return self.reply(204)
        if path == "/api/active":
            g = p.get("group", "")
            with st.lock:
                if g not in st.groups and g not in st.users:
                    return self.reply(404, {"error": "no such group"})
                st.watchers[s.active].discard(s)
                s.active = g
                st.watchers[g].add(s)
            return self.reply(204)
        return self.reply(404, {"error": "not found"})

    # -------------------------------------------------------- heartbeat
    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def jchat(self, p: dict) -> None:
        st = self.st
        with st.lock:
            s = self.session(p)
            if s is not None:
                with s.cond:
                    s.gen += 1
                    my = s.gen
                    s.cond.notify_all()  # releases the older held request
                    s.held = True
                    sent = s.acked
                st.online[s.user] = st.online.get(s.user, 0) + 1
                if st.online[s.user] == 1:
                    st.presence_changed(s.user, "online")
        if s is None:
            return self.reply(403, {"error": "no such session"})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        broken = False
        last_write = time.monotonic()
        try:
            while True:
                with s.cond:
                    while True:
                        if s.gen != my or s.sid not in st.sessions:
                            out = None
                            break
                        out = [f for n, f in s.mailbox if n > sent]
                        if out:
                            sent = s.mailbox[-1][0]
                            break
                        left = st.keepalive - (time.monotonic() - last_write)
                        if left <= 0:
                            out = [b"\n"]
                            break
                        s.cond.wait(left)
                if out is None:
                    break
                self.chunk(b"".join(out))
                self.wfile.flush()
                last_write = time.monotonic()
        except OSError:
            broken = True
        finally:
            with st.lock:
                with s.cond:
                    if s.gen == my:
                        s.held = False
                n = st.online.get(s.user, 0) - 1
                if n <= 0:
                    st.online.pop(s.user, None)
                    st.presence_changed(s.user, "offline")
                else:
                    st.online[s.user] = n
        if broken:
            self.close_connection = True
        else:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    failed_threads = 0

    def process_request(self, request, client_address):
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # can't start new thread
            Server.failed_threads += 1
            self.shutdown_request(request)


def main() -> None:
    ap = argparse.ArgumentParser(description="thread-per-connection baseline")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--keepalive", type=float, default=25.0)
    ap.add_argument("--hash-cost", type=int, default=1)
    ap.add_argument("--stack-kb", type=int, default=0,
                    help="thread stack size in KiB (0: the OS default, 8 MiB here)")
    ap.add_argument("--max-seconds", type=float, default=3600)
    args = ap.parse_args()
    if args.stack_kb:
        threading.stack_size(args.stack_kb * 1024)
    Handler.st = State(args.keepalive, args.hash_cost)
    srv = Server((args.host, args.port), Handler)
    srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    host, port = srv.server_address[:2]
    print(f"baseline ready http={host}:{port}", flush=True)
    timer = threading.Timer(args.max_seconds, lambda: os._exit(0))
    timer.daemon = True
    timer.start()
    try:
        srv.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
