#!/usr/bin/env python3
"""Abuse benchmark: one attacker against the real server while a normal user
logs in and chats.  Not a test: run by hand.

    python bench/abuse.py                      # every pattern, 30 s each
    python bench/abuse.py --seconds 3          # smoke run, 1 to 1.5 minutes
    python bench/abuse.py --only guest,sip_udp --seconds 10
    python bench/abuse.py --seconds 10 --record --label before \\
        --note "today's server, before the limits of issue 11"

It starts ``twistd -n presence`` (this tree's code: ``PYTHONPATH`` is set to
the repository) on free loopback ports, with SIP and the SMS simulator on
(loopback), ``--hash-cost 1`` as ``bench/run.py`` does, and its own data
directory in a temporary directory; ``--server-args "..."`` adds options.
Then, for each abuse pattern in turn (``--only`` picks some), for
``--seconds``:

* the **attacker**, a child process (this script with ``--attacker``) on its
  own source address (127.0.0.66), one asyncio loop and ``--attack-conns``
  raw HTTP/1.1 keep-alive connections (``bench/loadclient.py``'s), sends the
  abuse as fast as the answers come and counts what it gets (status codes,
  closed connections, ``Retry-After``).  It never honours a refusal: it is an
  attacker.  Every loop is bounded in count and in time; loopback only.
* the **probe**, a normal user in this process (source 127.0.0.2): a sender
  chats to a receiver that holds its heartbeat (stream mode, acknowledging
  every 0.5 s) at ``--probe-rate`` chats/s; each chat's delivery time is
  measured from its scheduled send time (the POST) to the frame's arrival on
  the receiver's heartbeat, so a stalled server counts in full; plus one
  fresh login (new connection, ``POST /api/login``, then logout) per second.
  Some patterns add a *legitimate* check of what the attack targets (the
  group's rightful member joins with the right password; a SIP client asks
  OPTIONS over UDP or TCP).  Each pattern has its own fresh probe accounts.
* the server's **RSS** (VmRSS) before the pattern, its peak (sampled every
  0.2 s) and after: once the attacker stops, polled until it stops falling
  (two samples in a row not lower) or 10 s.  Also the data directory's size
  and the number of tracebacks the server logged.

Targets: probe chat p99 under 100 ms; RSS after within 10 % of before.

Patterns (in this order): chat_offline, chat_spill, guest, login_guess,
register, group_guess, messages, bad_input, sip_udp, sip_tcp, wireless_text
(the last only when the simulator is on).  ``--only chat`` runs both chat_*,
``--only sip`` both sip_*.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import re
import resource
import secrets
import shlex
import shutil
import string
import sys
import tempfile
import time
from types import SimpleNamespace
from urllib.parse import quote

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import loadclient as lc  # noqa: E402  (raw asyncio HTTP/1.1 client, SSE parser)
import run as benchrun  # noqa: E402  (server process, machine description)
from sip_bench import free_port  # noqa: E402

mono = time.monotonic
log = benchrun.log

PATTERNS = ["chat_offline", "chat_spill", "guest", "login_guess", "register",
            "group_guess", "messages", "bad_input", "sip_udp", "sip_tcp",
            "wireless_text"]
ABOUT = {
    "chat_offline": "4-KB chats as fast as possible to an offline user",
    "chat_spill": "4-KB chats to an online session that never reads nor acks",
    "guest": "POST /api/guest as fast as possible",
    "login_guess": "wrong passwords for the probe's account and random names",
    "register": "POST /api/register with fresh names",
    "group_guess": "wrong passwords to join a protected group",
    "messages": "anonymous POST /api/messages (4 KB) to one user",
    "bad_input": "20,000-deep JSON, 5,000-digit ack, message id past 2^63, "
                 "lone surrogates (chat to the probe's receiver, password), 200-KiB bodies",
    "sip_udp": "OPTIONS/INVITE to an unknown user over UDP, as fast as possible",
    "sip_tcp": "TCP connections to the SIP port from one address, held open",
    "wireless_text": "POST /api/wireless/text to one handset user, from many sessions",
}
ATTACKER_SRC = "127.0.0.66"
PROBE_SRC = "127.0.0.2"
DOMAIN = "localhost"
TEXT_4K = 4096            # the chat / message text limit (protocol section 4)
MAX_REQUESTS = 2_000_000  # per pattern, whatever --seconds says
SIP_TCP_TARGET = 2500     # above the server's 2,000 SIP TCP slots of today
SIP_UDP_RATE = 20_000     # datagrams/s at most (loopback drops the rest anyway)
SIP_UDP_MAX = 600_000
SIP_UDP_TAIL = 10.0       # seconds to keep counting UDP answers (retransmissions)
SETTLE_MAX = 10.0
QUIET_MS = 50             # a pattern starts once 3 probe chats in a row take less
QUIET_MAX = 40.0          # (SIP transactions live 32 s), waiting at most this long
REOPEN_EVERY = 5.0        # the probe's receiver opens a new heartbeat this often
                          # (at least once a pattern)
GRACE_MAX = 20.0


# ------------------------------------------------------------------ pure helpers


def percentiles_ms(values_s: list) -> dict:
    """p50/p90/p99/max in ms of a list of seconds (``loadclient.pct_ms``)."""
    return lc.pct_ms(sorted(values_s))


def count(d: dict, key, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


def select(only: str) -> list:
    """Patterns named by ``--only`` (exact names, or a prefix before ``_``:
    ``chat``, ``sip``), in the fixed order; all when empty."""
    if not only:
        return list(PATTERNS)
    want = [w.strip() for w in only.split(",") if w.strip()]
    bad = [w for w in want if not any(p == w or p.startswith(w + "_") for p in PATTERNS)]
    if bad:
        raise ValueError(f"unknown pattern(s) {', '.join(bad)}; known: {', '.join(PATTERNS)}")
    return [p for p in PATTERNS if any(p == w or p.startswith(w + "_") for w in want)]


def settled(samples: list) -> bool:
    """RSS has stopped falling: the last two samples are not below the one
    before them."""
    return len(samples) >= 3 and samples[-1] >= samples[-3] and samples[-2] >= samples[-3]


def retry_after(headers: dict):
    v = (headers or {}).get("retry-after")
    try:
        return float(v) if v is not None else None
    except ValueError:
        return -1.0  # present but not a number of seconds


def sip_request(method: str, user: str, src: str, sport: int, n: int,
                transport: str = "UDP") -> bytes:
    """A valid-looking SIP request with a fresh Call-ID and branch."""
    tag = f"{n}-{secrets.token_hex(4)}"
    return ("\r\n".join([
        f"{method} sip:{user}@{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/{transport} {src}:{sport};branch=z9hG4bK-ab{tag};rport",
        "Max-Forwards: 70",
        f"From: <sip:caller@{src}>;tag=f{tag}",
        f"To: <sip:{user}@{DOMAIN}>",
        f"Call-ID: ab{tag}@{src}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:caller@{src}:{sport};transport={transport.lower()}>",
        "Content-Length: 0", "", ""])).encode()


def sip_answer(data: bytes):
    """(status code or 'request', Call-ID) of a SIP datagram."""
    code = data[8:11].decode("latin-1") if data.startswith(b"SIP/2.0 ") else "request"
    m = re.search(rb"\r\n(?:Call-ID|i)\s*:\s*([^\r\n]+)", data, re.I)
    return code, (m.group(1).strip() if m else b"")


def build_body(method: str, path: str, body: bytes, ctype: str) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def build_json(path: str, obj) -> bytes:
    return build_body("POST", path, json.dumps(obj).encode(), "application/json")


def tag_letters(n: int = 5) -> str:
    return "".join(random.choice(string.ascii_lowercase) for _ in range(n))


def big_text(i: int) -> str:
    head = f"{i:08d} "
    return head + "x" * (TEXT_4K - len(head))


# ------------------------------------------------------------------ clients


def client(port: int, src: str, tries: int = 6) -> lc.Client:
    """A ``loadclient.Client`` (its connect/call/login/hold) from ``src``;
    ``tries=1``: a refused connection is an error at once (the attacker
    counts it instead of backing off)."""
    c = lc.Client(argparse.Namespace(host="127.0.0.1", port=port, src=src, prefix="",
                                     first=0, count=0))
    if tries != 6:
        connect = c.connect
        c.connect = lambda tries=tries: connect(tries)
    return c


def holder():
    return SimpleNamespace(conn=None)


async def login(c: lc.Client, name: str, password: str = lc.PASSWORD) -> str:
    st, _, body = await c.call(holder(), lc.build(
        "POST", "/api/login", {"username": name, "password": password}), timeout=30)
    if st != 200:
        raise lc.HTTPError(f"login {name}: {st} {body[:100]!r}")
    return json.loads(body)["session"]


async def guest(c: lc.Client, h) -> tuple:
    st, _, body = await c.call(h, lc.build("POST", "/api/guest", {}), timeout=10)
    if st != 200:
        raise lc.HTTPError(f"guest: {st}")
    d = json.loads(body)
    return d["username"], d["session"]


# ------------------------------------------------------------------ attacker


class Tally:
    """What the attacker got: statuses (per kind), errors, Retry-After,
    answer times per kind."""

    def __init__(self) -> None:
        self.sent = 0
        self.statuses: dict = {}
        self.errors: dict = {}
        self.retry: list = []
        self.lat: dict = {}

    def answer(self, kind, st: int, headers, dt: float, body: bytes = b"") -> None:
        key = f"{kind} {st}" if kind else st
        if st == 202 and body:  # POST /chat: online or stored
            for word in (b'"online"', b'"stored"'):
                if word in body:
                    key = f"{key} {word.decode()[1:-1]}"
        count(self.statuses, key)
        ra = retry_after(headers)
        if ra is not None:
            self.retry.append(ra)
        lat = self.lat.setdefault(kind or "all", [])
        if len(lat) < 100_000:
            lat.append(dt)

    def error(self, kind, e: BaseException) -> None:
        if isinstance(e, asyncio.TimeoutError):
            name = "timeout"
        elif isinstance(e, ConnectionError) and "connect failed" in str(e):
            name = "connect-failed"
        elif isinstance(e, (ConnectionError, OSError)):
            name = "conn-closed"
        else:
            name = type(e).__name__
        count(self.errors, f"{kind} {name}" if kind else name)

    def result(self, seconds: float, **extra) -> dict:
        out = {"sent": self.sent, "seconds": round(seconds, 2),
               "rate": round(self.sent / seconds, 1) if seconds else None,
               "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
               "errors": self.errors,
               "answer_ms": {k: percentiles_ms(v) for k, v in self.lat.items()}}
        if self.retry:
            out["retry_after_s"] = [min(self.retry), max(self.retry), len(self.retry)]
        out.update(extra)
        return out


class Attacker:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.port = spec["port"]
        self.c = client(self.port, ATTACKER_SRC, tries=1)
        self.conns = max(1, spec["conns"])
        self.seconds = spec["seconds"]
        self.tally = Tally()
        self.end = 0.0

    def running(self) -> bool:
        return mono() < self.end and self.tally.sent < MAX_REQUESTS

    async def sessions(self, n: int) -> list:
        """Log in ``n`` of the attacker's accounts (set up beforehand)."""
        names = self.spec["mal"][:n]
        return [(m, await login(self.c, m)) for m in names]

    async def flood(self, make) -> None:
        """``make(i, worker)`` -> (kind, request bytes); over ``conns``
        keep-alive connections until the deadline."""
        t = self.tally

        async def worker(w: int) -> None:
            h = holder()
            i = w
            while self.running():
                kind, data = make(i, w)
                i += self.conns
                t.sent += 1
                t0 = mono()
                try:
                    st, hd, body = await self.c.call(h, data, timeout=10)
                except Exception as e:  # refused, closed, reset, timed out
                    t.error(kind, e)
                    h.conn = None
                    await asyncio.sleep(0.01)
                    continue
                t.answer(kind, st, hd, mono() - t0, body[:200] if st == 202 else b"")
        await asyncio.gather(*(worker(w) for w in range(self.conns)))

    async def go(self) -> dict:
        pattern = self.spec["pattern"]
        ready = await getattr(self, "prep_" + pattern, self.prep_none)()
        print(json.dumps({"go": True}), flush=True)
        t0 = mono()
        self.end = t0 + self.seconds
        extra = await getattr(self, "run_" + pattern)(ready) or {}
        return self.tally.result(mono() - t0, **extra)

    async def prep_none(self):
        return None

    # ---- 1. chats
    async def prep_chat_offline(self):
        return await self.sessions(self.conns)

    async def run_chat_offline(self, sess, to=None):
        to = to or self.spec["offline"]
        pre = list(sess)
        await self.flood(lambda i, w: (None, lc.build("POST", "/chat", {
            "me": pre[w % len(pre)][0], "id": pre[w % len(pre)][1], "to": to,
            "msg": big_text(i)})))
        return {"sessions": len(pre)}

    async def prep_chat_spill(self):
        sess = await self.sessions(self.conns)
        sink = self.spec["sink"]
        sid = await login(self.c, sink)
        self.sink = SimpleNamespace(bytes=0, ended=None, opened=mono())

        def feed(data):
            self.sink.bytes += len(data)

        def ended(reason):
            self.sink.ended = (reason, round(mono() - self.sink.opened, 2))
        stream = SimpleNamespace(feed=feed, ended=ended)
        conn = await self.c.connect(6)
        st, _, _ = await asyncio.wait_for(conn.request(lc.build(
            "GET", f"/jchat?me={sink}&id={quote(sid, safe='')}&mode=stream",
            extra="Accept: text/event-stream\r\n"), stream), 10)
        if st != 200:
            raise lc.HTTPError(f"sink heartbeat {st}")
        conn.transport.pause_reading()  # never reads, never acknowledges
        self.sink_conn = conn
        return sess

    async def run_chat_spill(self, sess):
        r = await self.run_chat_offline(sess, to=self.spec["sink"])
        r["sink"] = {"bytes_read_before_pause": self.sink.bytes,
                     "heartbeat_ended_by_server": self.sink.ended}
        return r

    # ---- 2. guests
    async def run_guest(self, _):
        await self.flood(lambda i, w: (None, lc.build("POST", "/api/guest", {})))

    # ---- 3. login guessing
    async def run_login_guess(self, _):
        probe, tag = self.spec["probe_user"], tag_letters()

        def make(i, w):
            if i % 2 == 0:
                return "probe-account", lc.build("POST", "/api/login", {
                    "username": probe, "password": f"guess-{tag}-{i}"})
            return "random-name", lc.build("POST", "/api/login", {
                "username": f"nx{tag}{i}", "password": f"guess-{tag}-{i}"})
        await self.flood(make)

    # ---- 4. registrations
    async def run_register(self, _):
        tag = tag_letters()
        await self.flood(lambda i, w: (None, lc.build("POST", "/api/register", {
            "username": f"rf{tag}{i}", "password": f"pw-{tag}-{i}-long"})))

    # ---- 5. group password guessing
    async def prep_group_guess(self):
        return await self.sessions(self.conns)

    async def run_group_guess(self, sess):
        group, tag = self.spec["group"], tag_letters()
        await self.flood(lambda i, w: (None, lc.build("POST", f"/api/groups/{group}/join", {
            "me": sess[w % len(sess)][0], "id": sess[w % len(sess)][1],
            "password": f"guess-{tag}-{i}"})))

    # ---- 6. anonymous messages
    async def run_messages(self, _):
        to = self.spec["offline"]
        await self.flood(lambda i, w: (None, lc.build("POST", "/api/messages", {
            "to": to, "text": big_text(i)})))

    # ---- 7. bad input
    async def prep_bad_input(self):
        return (await self.sessions(1))[0]

    async def run_bad_input(self, sess):
        me, sid = sess
        q = quote(sid, safe="")
        deep = b"[" * 20000 + b"]" * 20000
        digits = "9" * 5000
        huge = b"username=x&password=" + b"a" * (200 * 1024)
        kinds = [
            ("deep-json", build_body("POST", "/api/login", deep, "application/json")),
            ("ack-5000-digits", lc.build("POST", f"/ack?me={me}&id={q}&ack={digits}", {})),
            ("msgid-past-2^63", lc.build("POST", f"/api/messages/{2 ** 63 + 7}/read",
                                         {"me": me, "id": sid})),
            ("surrogate-chat", build_json("/chat", {"me": me, "id": sid,
                                                    "to": self.spec["probe_receiver"],
                                                    "msg": "\udc00"})),
            ("surrogate-password", build_json("/api/login", {"username": me,
                                                             "password": "\udc00"})),
            ("surrogate-register", None),
            ("body-200KiB", build_body("POST", "/api/login", huge,
                                       "application/x-www-form-urlencoded")),
        ]
        tag = tag_letters()

        def make(i, w):
            kind, data = kinds[i % len(kinds)]
            if data is None:  # a fresh name each time, the surrogate in the password
                data = build_json("/api/register", {"username": f"sg{tag}{i}",
                                                    "password": "long-pass\udc00word"})
            return kind, data
        await self.flood(make)

    # ---- 8. SIP
    async def run_sip_udp(self, _):
        loop = asyncio.get_running_loop()
        got = SimpleNamespace(n=0, bytes=0, codes={}, per_call={}, errors=0)

        class Counter(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.n += 1
                got.bytes += len(data)
                code, call = sip_answer(data)
                count(got.codes, code)
                count(got.per_call, call)

            def error_received(self, exc):
                got.errors += 1
        transport, _ = await loop.create_datagram_endpoint(
            Counter, local_addr=(ATTACKER_SRC, 0),
            remote_addr=("127.0.0.1", self.spec["sip_port"]))
        sport = transport.get_extra_info("sockname")[1]
        t, sent_bytes, n, t0 = self.tally, 0, 0, mono()
        while self.running() and n < SIP_UDP_MAX:
            if n > SIP_UDP_RATE * (mono() - t0):
                await asyncio.sleep(0.002)
                continue
            for _ in range(16):
                data = sip_request("INVITE" if n % 2 else "OPTIONS", f"nobody{n}",
                                   ATTACKER_SRC, sport, n)
                transport.sendto(data)
                n += 1
                sent_bytes += len(data)
            t.sent = n
            await asyncio.sleep(0.001 if transport.get_write_buffer_size() > 1 << 18 else 0)
        window = {"received": got.n, "received_bytes": got.bytes}
        await asyncio.sleep(SIP_UDP_TAIL)  # retransmissions keep coming
        transport.close()
        t.statuses = {f"SIP {k}": v for k, v in got.codes.items()}
        answered = [v for v in got.per_call.values()]
        return {"sip": {
            "sent": n, "sent_bytes": sent_bytes, "in_window": window,
            "received": got.n, "received_bytes": got.bytes, "codes": got.codes,
            "tail_s": SIP_UDP_TAIL, "socket_errors": got.errors,
            "answered_requests": len(answered),
            "datagrams_per_datagram_sent": round(got.n / n, 3) if n else None,
            "bytes_per_byte_sent": round(got.bytes / sent_bytes, 3) if sent_bytes else None,
            "datagrams_per_answered_request": round(sum(answered) / len(answered), 2)
            if answered else None,
            "max_datagrams_for_one_request": max(answered, default=0)}}

    async def run_sip_tcp(self, _):
        loop = asyncio.get_running_loop()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        target = min(SIP_TCP_TARGET, soft - 200)
        st = SimpleNamespace(now=0, peak=0, opened=0, failed=0, closed=0, attempts=0)
        held = set()
        partial = (f"OPTIONS sip:nobody@{DOMAIN} SIP/2.0\r\n"
                   f"Via: SIP/2.0/TCP {ATTACKER_SRC}:5060;branch=z9hG4bK-slow\r\n").encode()

        class Hold(asyncio.Protocol):
            def connection_made(self, transport):
                self.t = transport
                transport.write(partial)  # a request that never completes

            def connection_lost(self, exc):
                held.discard(self)
                st.now -= 1
                st.closed += 1

        async def worker():
            while self.running() and st.attempts < 50_000:
                if st.now >= target:
                    await asyncio.sleep(0.05)
                    continue
                st.attempts += 1
                self.tally.sent += 1
                try:
                    _, proto = await asyncio.wait_for(loop.create_connection(
                        Hold, "127.0.0.1", self.spec["sip_port"],
                        local_addr=(ATTACKER_SRC, 0)), 5)
                except (OSError, asyncio.TimeoutError) as e:
                    st.failed += 1
                    self.tally.error(None, e)
                    await asyncio.sleep(0.02)
                    continue
                held.add(proto)
                st.now += 1
                st.opened += 1
                st.peak = max(st.peak, st.now)
        await asyncio.gather(*(worker() for _ in range(64)))
        at_end, closed = st.now, st.closed
        for p in list(held):
            p.t.abort()
        return {"sip_tcp": {"target": target, "opened": st.opened, "failed": st.failed,
                            "closed_by_server": closed, "peak_held": st.peak,
                            "held_at_end": at_end}}

    # ---- 9. texting a handset
    async def prep_wireless_text(self):
        sess = await self.sessions(len(self.spec["mal"]))
        h = holder()
        for _ in range(20):  # more senders: today's limit is per sender name
            try:
                sess.append(await guest(self.c, h))
            except Exception:
                break
        return sess

    async def run_wireless_text(self, sess):
        to = self.spec["handset_user"]
        await self.flood(lambda i, w: (None, lc.build("POST", "/api/wireless/text", {
            "me": sess[i % len(sess)][0], "id": sess[i % len(sess)][1], "to": to})))
        return {"sender_sessions": len(sess)}


def attacker_main(spec: dict) -> None:
    async def go():
        try:
            res = await asyncio.wait_for(Attacker(spec).go(), spec["seconds"] + 120)
        except Exception as e:
            res = {"error": repr(e)[:500]}
        print(json.dumps(res), flush=True)
    asyncio.run(go())
    os._exit(0)


# ------------------------------------------------------------------ probe


class Probe(lc.Client):
    """The normal user: sender chats to receiver (heartbeat held, frames
    timed), plus a fresh login per second and a pattern's legitimate check."""

    def __init__(self, port: int, sender: str, receiver: str, rate: float,
                 legit=None) -> None:
        super().__init__(argparse.Namespace(host="127.0.0.1", port=port, src=PROBE_SRC,
                                            prefix="", first=0, count=0))
        self.sender, self.receiver, self.rate = sender, receiver, rate
        self.legit_fn = legit
        self.pending: dict = {}
        self.delivered: list = []
        self.duplicates = 0
        self.errors: dict = {}
        self.logins: list = []
        self.legit: dict = {"statuses": {}, "lat": []}
        self.running = False
        self.tasks: set = set()
        self.held_since = 0.0

    def on_frame(self, s, data) -> None:
        if data and data[0].startswith(b"msg chat ") and len(data) > 1 \
                and data[1].startswith(b"P"):
            try:
                k = int(data[1][1:])
            except ValueError:
                return
            t = self.pending.pop(k, None)
            if t is None:
                self.duplicates += 1
            else:
                self.delivered.append(mono() - t)

    def err(self, what: str) -> None:
        count(self.errors, what[:70])

    def spawn(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def start(self) -> None:
        self.tx = lc.Session(self, self.sender)
        self.rx = lc.Session(self, self.receiver)
        for s in (self.tx, self.rx):
            self.sessions[s.name] = s
            await self.login_one(s, False)
        await self.hold_one(self.rx)
        self.held_since = mono()
        self.pool = asyncio.Queue()
        for _ in range(4):
            self.pool.put_nowait(holder())
        self.acker = holder()
        self.warm = 0

    async def round_trip(self, timeout: float = 10.0) -> float:
        """One untimed chat (negative number) from POST to arrival, in s."""
        self.warm -= 1
        k = self.warm
        t = self.pending[k] = mono()
        h = holder()
        try:
            st, _, body = await self.call(h, self._chat(k), timeout=timeout)
        finally:
            if h.conn is not None:
                h.conn.close()
        end = t + timeout
        while k in self.pending and mono() < end:
            await asyncio.sleep(0.005)
        if self.pending.pop(k, None) is not None:
            raise RuntimeError(f"probe chat not delivered (POST answered {st} {body[:80]!r})")
        return self.delivered.pop() if self.delivered else mono() - t

    async def quiet(self, bound: float) -> float:
        """Wait until three chats in a row arrive within QUIET_MS (what the
        previous pattern left behind has drained); the seconds waited."""
        t0, good = mono(), 0
        while good < 3 and mono() - t0 < bound:
            try:
                good = good + 1 if await self.round_trip() < QUIET_MS / 1000 else 0
            except RuntimeError:
                good = 0
            await asyncio.sleep(0.1)
        self.delivered.clear()
        return round(mono() - t0, 1) if good >= 3 else -1.0

    def _chat(self, k: int) -> bytes:
        return lc.build("POST", "/chat", {"me": self.sender, "id": self.tx.sid,
                                          "to": self.receiver, "msg": f"P{k}"})

    async def send_chat(self, k: int, t_sched: float) -> None:
        h = await self.pool.get()
        try:
            self.pending[k] = t_sched
            st, _, _ = await self.call(h, self._chat(k), timeout=10)
            if st != 202:
                self.pending.pop(k, None)
                self.err(f"chat {st}")
        except Exception as e:
            self.pending.pop(k, None)
            h.conn = None
            self.err(f"chat {type(e).__name__}")
        finally:
            self.pool.put_nowait(h)

    async def fresh_login(self, t_sched: float) -> None:
        h = holder()
        try:
            st, _, body = await self.call(h, lc.build("POST", "/api/login", {
                "username": self.sender, "password": lc.PASSWORD}), timeout=15)
            self.logins.append(mono() - t_sched)
            if st != 200:
                self.err(f"login {st}")
                return
            sid = json.loads(body)["session"]
            st, _, _ = await self.call(h, lc.build("POST", "/api/logout",
                                                   {"me": self.sender, "id": sid}), timeout=15)
            if st not in (200, 204):
                self.err(f"logout {st}")
        except Exception as e:
            self.err(f"login {type(e).__name__}")
        finally:
            if h.conn is not None:
                h.conn.close()

    async def check(self, t_sched: float) -> None:
        try:
            st = await asyncio.wait_for(self.legit_fn(self), 10)
        except Exception as e:
            st = type(e).__name__
        count(self.legit["statuses"], str(st))
        self.legit["lat"].append(mono() - t_sched)

    async def keep_heartbeat(self) -> None:
        while self.running:
            await asyncio.sleep(0.25)
            if self.rx.last_id > self.rx.acked:
                last = self.rx.last_id
                try:
                    st, _, _ = await self.call(self.acker, lc.build(
                        "POST", f"/ack?me={self.receiver}&id={self.rx.qsid}&ack={last}", {}),
                        timeout=10)
                    if st in (200, 204):
                        self.rx.acked = last
                    else:
                        self.err(f"ack {st}")
                except Exception as e:
                    self.acker.conn = None
                    self.err(f"ack {type(e).__name__}")
            if self.rx.held and mono() - self.held_since > self.reopen_every:
                await self.reopen()
            if not self.rx.held and self.running:
                self.err("heartbeat ended")
                try:
                    self.rx.conn = None
                    self.rx.sbuf, self.rx.cur_data = b"", None  # a frame cut short
                    await asyncio.wait_for(self.hold_one(self.rx), 10)
                    self.held_since = mono()
                except Exception as e:
                    self.rx.conn = None
                    self.err(f"heartbeat reopen {str(e)[:40]}")
                    await asyncio.sleep(0.5)

    async def reopen(self) -> None:
        """A new heartbeat on a new connection, as a real client opens one now
        and then (network change, page reload): the server ends the old one
        and re-sends on the new one what is not acknowledged.  The old one is
        closed only once the new one is held, so no chat waits for the gap."""
        old, new = self.rx, lc.Session(self, self.receiver)
        new.sid, new.qsid, new.last_id, new.acked = old.sid, old.qsid, old.last_id, old.acked
        self.held_since = mono()
        try:
            await asyncio.wait_for(self.hold_one(new), 10)
        except Exception as e:
            if new.conn is not None:
                new.conn.close()
            self.err(f"heartbeat reopen {str(e)[:40]}")
            return
        self.rx = new
        if old.conn is not None:
            old.conn.close()

    async def run(self, seconds: float) -> None:
        self.running = True
        self.reopen_every = min(REOPEN_EVERY, seconds / 2)  # at least once
        hb = asyncio.ensure_future(self.keep_heartbeat())
        t0 = mono()
        k = 0
        next_login = t0
        while mono() - t0 < seconds and k < 1_000_000:
            t = t0 + k / self.rate
            while next_login <= t:
                if len(self.tasks) < 200:
                    self.spawn(self.fresh_login(next_login))
                    if self.legit_fn:
                        self.spawn(self.check(next_login))
                else:
                    self.err("probe backlog")
                next_login += 1.0
            d = t - mono()
            if d > 0:
                await asyncio.sleep(d)
            self.spawn(self.send_chat(k, t))
            k += 1
        self.sent = k
        self.hb = hb

    async def finish(self, grace: float) -> dict:
        """Wait (at most ``grace`` s) for sends to be answered and chats to
        arrive; what has not arrived by then is lost."""
        end = mono() + grace
        while (self.tasks or self.pending) and mono() < end:
            await asyncio.sleep(0.05)
        self.running = False
        lost = len(self.pending)
        self.hb.cancel()
        for t in list(self.tasks):
            t.cancel()
        if lost:
            count(self.errors, "chat lost", lost)
        out = {"sent": self.sent, "delivered": len(self.delivered), "lost": lost,
               "duplicates": self.duplicates, "chat_ms": percentiles_ms(self.delivered),
               "login_ms": percentiles_ms(self.logins), "errors": self.errors}
        if self.legit_fn:
            out["legit"] = {"statuses": self.legit["statuses"],
                            "ms": percentiles_ms(self.legit["lat"])}
        return out

    async def close(self) -> None:
        for s in (self.tx, self.rx):
            try:
                await self.call(holder(), lc.build("POST", "/api/logout",
                                                   {"me": s.name, "id": s.sid}), timeout=5)
            except Exception:
                pass
            if s.conn is not None:
                s.conn.close()
        for h in [self.acker] + [self.pool.get_nowait() for _ in range(self.pool.qsize())]:
            if h.conn is not None:
                h.conn.close()


# legitimate checks: what a rightful user of the attacked feature sees


def legit_group(group: str, password: str):
    async def check(p: Probe):
        h = holder()
        try:
            st, _, _ = await p.call(h, lc.build("POST", f"/api/groups/{group}/join", {
                "me": p.sender, "id": p.tx.sid, "password": password}), timeout=10)
            if st in (200, 204):
                await p.call(h, lc.build("POST", f"/api/groups/{group}/leave",
                                         {"me": p.sender, "id": p.tx.sid}), timeout=10)
            return st
        finally:
            if h.conn is not None:
                h.conn.close()
    return check


def legit_sip(sip_port: int, transport: str):
    """One OPTIONS from the probe's address; the first final answer's code."""
    async def udp(p: Probe):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        class One(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                code, _ = sip_answer(data)
                if code != "request" and code >= "200" and not fut.done():
                    fut.set_result(int(code))
        tr, _ = await loop.create_datagram_endpoint(One, local_addr=(PROBE_SRC, 0),
                                                    remote_addr=("127.0.0.1", sip_port))
        try:
            tr.sendto(sip_request("OPTIONS", "probe-nobody", PROBE_SRC,
                                  tr.get_extra_info("sockname")[1], 0))
            return await asyncio.wait_for(fut, 5)
        finally:
            tr.close()

    async def tcp(p: Probe):
        r, w = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", sip_port, local_addr=(PROBE_SRC, 0)), 5)
        try:
            w.write(sip_request("OPTIONS", "probe-nobody", PROBE_SRC,
                                w.get_extra_info("sockname")[1], 0, "TCP"))
            while True:
                line = await asyncio.wait_for(r.readline(), 5)
                if not line:
                    return "closed"
                if line.startswith(b"SIP/2.0 ") and line[8:11] >= b"200":
                    return int(line[8:11])
        finally:
            w.close()
    return udp if transport == "udp" else tcp


# ------------------------------------------------------------------ server


class Target:
    """The server under test, its ports and the accounts set up on it."""

    def __init__(self, args, workdir: str, n: int) -> None:
        self.args = args
        self.data = os.path.join(workdir, f"data{n}")
        self.sip_port = free_port()
        self.smsc_password = secrets.token_urlsafe(12)
        twistd = shutil.which("twistd") or os.path.join(os.path.dirname(sys.executable), "twistd")
        argv = [twistd, "-n", "--pidfile", os.path.join(workdir, f"server{n}.pid"),
                "presence", "--http", "tcp:0:interface=127.0.0.1", "--data", self.data,
                "--hash-cost", str(args.hash_cost), "--sip", str(self.sip_port),
                "--smsc", "tcp:0:interface=127.0.0.1", "--smsc-password", self.smsc_password,
                "--domain", DOMAIN, "--admin", "none"] + shlex.split(args.server_args)
        env = {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.srv = benchrun.ServerProc("presence", argv, r"presence ready\b.*?\bhttp=[\d.]+:(\d+)",
                                       workdir, f"server{n}", env)
        self.setup_n = 0
        self.ready = False

    async def start(self) -> None:
        await self.srv.start()
        self.port = self.srv.port
        with open(self.srv.logpath, encoding="utf-8", errors="replace") as f:
            line = next(x for x in f if "presence ready" in x)
        self.listeners = dict(re.findall(r"(\S+)=(\S+)", line.split("presence ready", 1)[1]))
        self.sip = "sip-udp" in self.listeners
        self.smsc = "smsc" in self.listeners

    def sched(self) -> tuple:
        """(seconds on a CPU, seconds runnable but waiting for one) of all
        the server's threads (/proc/<pid>/task/*/schedstat)."""
        run = wait = 0
        base = f"/proc/{self.srv.proc.pid}/task"
        try:
            for tid in os.listdir(base):
                with open(f"{base}/{tid}/schedstat") as f:
                    a, b, _ = f.read().split()
                run, wait = run + int(a), wait + int(b)
        except (OSError, ValueError):
            pass
        return run / 1e9, wait / 1e9

    def rss_kb(self) -> int:
        return self.srv.status().get("VmRSS", 0)

    def disk_bytes(self) -> int:
        total = 0
        for base, _, files in os.walk(self.data):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(base, f))
                except OSError:
                    pass
        return total

    def log_size(self) -> int:
        return os.path.getsize(self.srv.logpath)

    def tracebacks_since(self, offset: int) -> int:
        with open(self.srv.logpath, "rb") as f:
            f.seek(offset)
            return f.read().count(b"Traceback (most recent call last)")

    async def register(self, name: str, **extra) -> None:
        """Each set-up account from a source address of its own, so that a
        server that limits registrations per address still takes them."""
        last = None
        for _ in range(8):
            self.setup_n += 1
            src = f"127.0.{100 + self.setup_n % 150}.{1 + self.setup_n // 150}"
            c = client(self.port, src)
            st, _, body = await c.call(holder(), lc.build(
                "POST", "/api/register", {"username": name, "password": lc.PASSWORD, **extra}),
                timeout=30)
            if st in (200, 201, 409):
                return
            last = (st, body[:120])
            await asyncio.sleep(0.2)
        raise RuntimeError(f"cannot register {name}: {last}")

    async def setup(self) -> None:
        """Accounts every pattern shares: the attacker's, an offline victim,
        a sink, a protected group, a user with a handset number."""
        if self.ready:
            return
        self.mal = [f"mal{i}" for i in range(max(4, self.args.attack_conns))]
        for m in self.mal + ["offline1", "sink1", "owner1"]:
            await self.register(m)
        await self.register("hand1", wireless="+15550001")
        self.group, self.group_password = "vault1", "vault-" + secrets.token_hex(6)
        c = client(self.port, "127.0.0.3")
        sid = await login(c, "owner1")
        st, _, body = await c.call(holder(), lc.build("POST", "/api/groups", {
            "me": "owner1", "id": sid, "name": self.group, "password": self.group_password}))
        if st not in (200, 201, 409):
            raise RuntimeError(f"group: {st} {body[:120]!r}")
        self.ready = True


# ------------------------------------------------------------------ one pattern


async def run_attacker(spec: dict):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "--attacker", json.dumps(spec),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, limit=1 << 24)
    return proc


async def read_json_line(proc, timeout: float) -> dict:
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        err = (await proc.stderr.read())[-2000:].decode("utf-8", "replace")
        raise RuntimeError(f"attacker ended early: {err}")
    return json.loads(line)


async def run_pattern(T: Target, name: str, k: int, args) -> dict:
    res: dict = {"pattern": name, "about": ABOUT[name]}
    if name.startswith("sip") and not T.sip:
        return {**res, "skipped": "SIP is off"}
    if name == "wireless_text" and not T.smsc:
        return {**res, "skipped": "the wireless front-end (--smsc) is off"}
    await T.setup()
    sender, receiver = f"ps{k}", f"pr{k}"
    await T.register(sender)
    await T.register(receiver)
    legit = None
    if name == "group_guess":
        legit = legit_group(T.group, T.group_password)
    elif name.startswith("sip"):
        legit = legit_sip(T.sip_port, name[4:])
    probe = Probe(T.port, sender, receiver, args.probe_rate, legit)
    await probe.start()
    await probe.round_trip()  # the path works (raises if not)
    res["quiet_wait_s"] = await probe.quiet(QUIET_MAX)
    res["rss_before_kb"] = T.rss_kb()
    disk0, log0 = T.disk_bytes(), T.log_size()
    spec = {"pattern": name, "port": T.port, "sip_port": T.sip_port, "seconds": args.seconds,
            "conns": args.attack_conns, "mal": T.mal, "offline": "offline1", "sink": "sink1",
            "group": T.group, "handset_user": "hand1", "probe_user": sender,
            "probe_receiver": receiver}
    proc = await run_attacker(spec)
    peak = [res["rss_before_kb"]]

    async def sample():
        while True:
            peak[0] = max(peak[0], T.rss_kb())
            await asyncio.sleep(0.2)
    sampler = None
    try:
        go = await read_json_line(proc, 120)
        assert go.get("go"), go
        log(f"{name}: attacking for {args.seconds:g}s")
        sampler = asyncio.ensure_future(sample())
        t_attack, (run0, wait0), drops0 = mono(), T.sched(), listen_drops()
        await probe.run(args.seconds)
        (run1, wait1), dt = T.sched(), mono() - t_attack
        res["server_cpu_frac"] = round((run1 - run0) / dt, 2)
        res["server_cpu_wait_frac"] = round((wait1 - wait0) / dt, 2)
        res["listen_drops"] = {k: v - drops0.get(k, 0) for k, v in listen_drops().items()}
        res["rss_end_of_attack_kb"] = T.rss_kb()

        async def settle():
            samples = [T.rss_kb()]
            end = mono() + SETTLE_MAX
            while mono() < end and not settled(samples):
                await asyncio.sleep(0.5)
                samples.append(T.rss_kb())
            return samples[-1], round(SETTLE_MAX - (end - mono()), 1)
        probe_res, (rss_after, settle_s) = await asyncio.gather(
            probe.finish(GRACE_MAX), settle())
        res["probe"] = probe_res
        res["rss_peak_kb"] = max(peak[0], res["rss_end_of_attack_kb"])
        res["rss_after_kb"], res["settle_s"] = rss_after, settle_s
        res["attacker"] = await read_json_line(proc, SIP_UDP_TAIL + 90)
    except Exception as e:
        res["error"] = repr(e)[:1000]
        log(f"{name}: {res['error']}")
    finally:
        if sampler is not None:
            sampler.cancel()
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        await proc.wait()
    res["disk_growth_bytes"] = T.disk_bytes() - disk0
    res["tracebacks"] = T.tracebacks_since(log0)
    res["server_alive"] = T.srv.alive()
    if res["server_alive"]:
        await probe.close()
    res["targets"] = verdict(res)
    log(f"{name}: {row_text(res)}")
    return res


def verdict(res: dict) -> dict:
    p99 = (res.get("probe") or {}).get("chat_ms", {}).get("p99")
    lost = (res.get("probe") or {}).get("lost", 0)
    before, after = res.get("rss_before_kb"), res.get("rss_after_kb")
    return {"p99_under_100ms": bool(p99 is not None and p99 < 100 and not lost),
            "rss_back_within_10pct": bool(before and after and after <= before * 1.10)}


# ------------------------------------------------------------------ report


def mib(kb) -> str:
    return "-" if not kb else f"{kb / 1024:.0f}"


def ms(d: dict, key: str) -> str:
    v = (d or {}).get(key)
    return "-" if v is None else (f"{v:.0f}" if v >= 10 else f"{v:.1f}")


def got_text(att: dict, top: int = 4) -> str:
    items = sorted(((k, v) for k, v in {**(att.get("statuses") or {}),
                                        **(att.get("errors") or {})}.items()),
                   key=lambda kv: -kv[1])
    text = " ".join(f"{k}:{v}" for k, v in items[:top])
    if len(items) > top:
        text += f" +{len(items) - top}"
    return text or "-"


def columns(res: dict) -> list:
    if "skipped" in res:
        return [res["pattern"], "skipped: " + res["skipped"]] + [""] * 7
    p, a = res.get("probe") or {}, res.get("attacker") or {}
    c = p.get("chat_ms") or {}
    n_err = sum((p.get("errors") or {}).values())
    t = res.get("targets") or {}
    return [res["pattern"],
            "-" if a.get("rate") is None else f"{a['rate']:,.0f}",
            f"{ms(c, 'p50')} / {ms(c, 'p99')} / {ms(c, 'max')}",
            f"{n_err}" + (f" ({p.get('lost')} lost)" if p.get("lost") else ""),
            ms(p.get("login_ms"), "p99"),
            f"{mib(res.get('rss_before_kb'))} / {mib(res.get('rss_peak_kb'))} / "
            f"{mib(res.get('rss_after_kb'))}",
            f"{res.get('disk_growth_bytes', 0) / 1048576:.1f}",
            str(res.get("tracebacks", "-")) + ("" if res.get("server_alive", True) else " DIED"),
            ("ok" if t.get("p99_under_100ms") else "MISS") + " / " +
            ("ok" if t.get("rss_back_within_10pct") else "MISS")]


HEAD = ["pattern", "atk req/s", "chat p50/p99/max ms", "probe errors", "login p99 ms",
        "RSS MiB before/peak/after", "disk +MiB", "tracebacks", "p99<100 / RSS<=+10%"]


def row_text(res: dict) -> str:
    return "; ".join(f"{h} {c}" for h, c in zip(HEAD[1:], columns(res)[1:]))


def details(res: dict) -> list:
    """Lines beyond the table: what the attacker got, the probe's errors,
    the pattern's own figures."""
    if "skipped" in res:
        return []
    out = []
    a, p = res.get("attacker") or {}, res.get("probe") or {}
    if res.get("error"):
        out.append(f"error: {res['error'][:300]}")
    if a.get("error"):
        out.append(f"attacker error: {a['error'][:300]}")
    ra = a.get("retry_after_s")
    out.append(f"attacker got: {got_text(a, 12)}"
               + (f"; Retry-After min/max/n {ra}" if ra else ""))
    if p.get("errors"):
        out.append(f"probe errors: {json.dumps(p['errors'])}")
    if p.get("legit"):
        lg = p["legit"]
        out.append(f"legitimate check: {json.dumps(lg['statuses'])}, p99 {ms(lg['ms'], 'p99')} ms")
    for key in ("sip", "sip_tcp", "sink"):
        if a.get(key):
            out.append(f"{key}: {json.dumps(a[key])}")
    by_kind = a.get("answer_ms") or {}
    if len(by_kind) > 1:
        out.append("attacker answer p50 ms by kind: " +
                   json.dumps({k: v.get("p50") for k, v in by_kind.items()}))
    out.append(f"waited {res.get('quiet_wait_s')} s for a quiet server before (-1: it never was); "
               f"server CPU {res.get('server_cpu_frac')} of a core during the attack, "
               f"and {res.get('server_cpu_wait_frac')} runnable but waiting for a core; "
               f"kernel listen-queue drops {json.dumps(res.get('listen_drops'))}; "
               f"RSS at the attack's end {mib(res.get('rss_end_of_attack_kb'))} MiB, "
               f"settled in {res.get('settle_s')} s; chats sent {p.get('sent')}, "
               f"delivered {p.get('delivered')}")
    return out


def table(results: list) -> str:
    rows = [HEAD] + [columns(r) for r in results]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(HEAD))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    for r in results:
        d = details(r)
        if d:
            lines.append(f"\n{r['pattern']}: {r['about']}")
            lines += [f"  {x}" for x in d]
    return "\n".join(lines)


def markdown(results: list, meta: dict, args, argv: list) -> str:
    m = meta["machine"]
    out = [f"### Abuse run {m['date']}" + (f" ({args.label})" if args.label else ""), ""]
    if args.note:
        out += [args.note, ""]
    hidden = ("--note", "--out")  # long, or a path on the machine that ran it
    shown = [a for i, a in enumerate(argv) if a != "--record" and a not in hidden
             and not (i and argv[i - 1] in hidden)]
    out += [f"Command: `python bench/abuse.py {' '.join(shlex.quote(a) for a in shown)}`",
            "",
            f"Machine: {m['nproc']} cores ({m['cpu']}), {m['mem']} RAM, Linux {m['kernel']}, "
            f"Python {m['python']}, Twisted {m['twisted']}; tree {m['git_head']} "
            f"(presence/ digest {m['presence_src_sha1']}); load average "
            f"{meta['load_before']} before, {meta['load_after']} after.",
            "",
            "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in columns(r)) + " |"
            for r in results]
    out.append("")
    for r in results:
        d = details(r)
        if d:
            out.append(f"- **{r['pattern']}** ({r['about']}): " + "; ".join(d).replace("|", "/"))
    return "\n".join(out) + "\n"


def listen_drops() -> dict:
    """The kernel's ListenOverflows and ListenDrops (/proc/net/netstat, the
    whole network namespace): SYNs dropped because an accept queue was full,
    each costing its client a 1-s retransmission."""
    try:
        with open("/proc/net/netstat") as f:
            lines = [x.split() for x in f if x.startswith("TcpExt:")]
        d = dict(zip(lines[0][1:], lines[1][1:]))
        return {k: int(d[k]) for k in ("ListenOverflows", "ListenDrops") if k in d}
    except (OSError, IndexError, ValueError):
        return {}


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


async def amain(args) -> tuple:
    workdir = tempfile.mkdtemp(prefix="presence-abuse-")
    log(f"workdir {workdir}")
    meta = {"machine": benchrun.machine(), "load_before": loadavg()}
    results = []
    T = None
    n = 0
    try:
        for k, name in enumerate(select(args.only)):
            if T is None or not T.srv.alive():
                if T is not None:
                    T.srv.stop()
                n += 1
                T = Target(args, workdir, n)
                try:
                    await T.start()
                except Exception as e:  # e.g. an option this server does not know
                    log(f"server did not start: {e}")
                    results += [{"pattern": p, "about": ABOUT[p],
                                 "skipped": "the server did not start (see its log above)"}
                                for p in select(args.only)[k:]]
                    T = None
                    break
            try:
                results.append(await asyncio.wait_for(
                    run_pattern(T, name, k, args), args.seconds + 180))
            except Exception as e:
                log(f"{name}: failed: {e!r}")
                results.append({"pattern": name, "about": ABOUT[name], "error": repr(e)[:1000],
                                "server_alive": T.srv.alive()})
    finally:
        if T is not None:
            T.srv.stop()
        meta["load_after"] = loadavg()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results, meta


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--attacker":
        attacker_main(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description="abuse benchmark (see the module docstring)")
    ap.add_argument("--seconds", type=float, default=30.0, help="duration of each pattern")
    ap.add_argument("--only", default="", help="comma-separated patterns: " + ", ".join(PATTERNS))
    ap.add_argument("--server-args", default="", help="extra options for `twistd presence`")
    ap.add_argument("--hash-cost", type=int, default=1,
                    help="--hash-cost of the server (bench/run.py's 1 by default)")
    ap.add_argument("--attack-conns", type=int, default=4, help="attacker's connections")
    ap.add_argument("--probe-rate", type=float, default=10.0, help="probe chats per second")
    ap.add_argument("--out", default="", help="also write the results as JSON here")
    ap.add_argument("--record", action="store_true",
                    help="append a dated section to docs/benchmarks.md")
    ap.add_argument("--label", default="", help="a word for the recorded section's title")
    ap.add_argument("--note", default="", help="a paragraph for the recorded section")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server logs, data)")
    args = ap.parse_args()
    try:
        select(args.only)
    except ValueError as e:
        ap.error(str(e))
    if not 0 < args.seconds <= 600:
        ap.error("--seconds: more than 0, at most 600")
    if not 0 < args.probe_rate <= 200:
        ap.error("--probe-rate: more than 0, at most 200")
    if not 1 <= args.attack_conns <= 64:
        ap.error("--attack-conns: 1 to 64")
    results, meta = asyncio.run(amain(args))
    print(json.dumps(meta["machine"]))
    print(table(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "args": vars(args), "results": results}, f, indent=1)
    if args.record:
        with open(os.path.join(ROOT, "docs", "benchmarks.md"), "a") as f:
            f.write("\n" + markdown(results, meta, args, sys.argv[1:]))
        log("recorded in docs/benchmarks.md")


if __name__ == "__main__":
    main()
