"""Lean watchers for ``bench/fanout.py``: the held heartbeats of a
``fanout_client.py --lean`` process, received with as little Python per
frame as the protocol allows, so that the benchmark measures the server
rather than its own clients.

What the old client (``bench/loadclient.py``'s ``HTTPConn`` and ``Session``)
does per frame: an asyncio transport callback, the HTTP chunk parser's state
machine over a ``bytearray``, a copy of the chunk, the event-stream parser
line by line, a list of data lines, ``on_frame`` and ``_saw`` by name.  Here:

* every held heartbeat is a plain non-blocking socket in one ``select.epoll``
  of the process; asyncio watches only that epoll's descriptor, and while
  frames come it drains the epoll on a timer (``--lean-interval``, 2 ms by
  default) instead of waking for each socket: one ``recv`` per ready socket,
  a few ready sockets per wake-up become a few hundred;
* a receive that is one whole chunk (what the server writes: one chunk per
  frame, or per the frames written together, web/heartbeat.py) is cut with
  one ``find`` and slices; the event-stream text is split on blank lines, and
  a frame is its ``id`` and its first ``data`` line;
* a watcher (:class:`Watcher`, ``__slots__``) keeps its view (member ->
  state, bytes) and, for the storm's check, how many of the tracked users it
  sees in the wanted state, kept up to date as updates arrive (``views`` is a
  count over the watchers, not 3,000 x 1,000 look-ups);
* the target update's arrival is timed once per watcher (a generation number,
  no set of names).

The login, the storm's resume or password login and ``POST /api/active`` stay
on the old client's asyncio connections; the heartbeat then takes that
connection's socket over (``os.dup`` of its descriptor), as the old client
held its heartbeat on the connection it logged in on.
"""
from __future__ import annotations

import asyncio
import os
import select
import socket

import loadclient
from loadclient import HTTPError, Session, build, mono
from fanout_client import FanClient

_IN = select.EPOLLIN | select.EPOLLRDHUP
#: what ``recv`` takes at most.  Not asyncio's 256 KiB: Python allocates
#: the whole size for each ``recv`` (then shrinks it), and above malloc's mmap
#: threshold that is an mmap and munmap per call, ~16 µs of a 20 µs receive
#: on this machine (a few hundred bundle lines still fit; more is read next
#: drain: the epoll is level-triggered)
_RECV = 1 << 16


class Watcher:
    """One held member: its heartbeat's socket (``conn``) and its view."""

    __slots__ = ("name", "sess", "sid", "conn", "held", "view", "last_id", "acked",
                 "cnt", "gen")

    def __init__(self, name: str) -> None:
        self.name = name
        self.sess = None
        self.sid = None
        self.conn = None
        self.held = False
        self.view: dict[bytes, bytes] = {}
        self.last_id = 0
        self.acked = 0
        self.cnt = 0   # tracked users seen in the tracked state
        self.gen = -1  # the target generation this watcher had the update of


class Conn:
    """One heartbeat socket: the response's head, then its chunked body."""

    __slots__ = ("sock", "fd", "w", "buf", "sse", "stream", "fut")

    def __init__(self, sock: socket.socket, w: Watcher, fut) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.w = w
        self.buf = b""     # bytes of a chunk (or of the head) not complete yet
        self.sse = b""     # event-stream text of a frame not complete yet
        self.stream = False
        self.fut = fut


class LeanClient(FanClient):
    def __init__(self, args) -> None:
        super().__init__(args)
        self.interval = args.lean_interval
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.watchers: dict[str, Watcher] = {}
        self.loop = None
        self.armed = False    # asyncio watches the epoll (no timer running)
        self.ticking = False
        self.gen = 0
        self.drains = self.events = 0  # epoll drains, sockets read
        self.t_user = self.t_state = None  # the target update
        self.arrivals: list[float] = []
        #: the storm's check: the users tracked, the state wanted, their number
        self.track: frozenset | None = None
        self.track_key = None
        self.want = b""

    # -- the receive loop -------------------------------------------------------
    def _arm(self) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        if not self.armed and not self.ticking:
            self.loop.add_reader(self.ep.fileno(), self._readable)
            self.armed = True

    def _readable(self) -> None:
        # a socket is ready: take what is there now, then come back on a timer
        # while frames keep coming (many sockets per wake-up, not one or two)
        if self.interval <= 0:
            self._drain()
            return
        self.loop.remove_reader(self.ep.fileno())
        self.armed = False
        self.ticking = True
        self._drain()
        self.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        if self._drain():
            self.loop.call_later(self.interval, self._tick)
        else:  # a quiet interval: wait on the epoll again
            self.ticking = False
            self._arm()

    def _drain(self) -> int:
        conns = self.conns
        events = self.ep.poll(0)
        self.drains += 1
        self.events += len(events)
        for fd, _ in events:
            c = conns.get(fd)
            if c is None:
                continue
            try:
                data = c.sock.recv(_RECV)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self._lost(c, "lost")
                continue
            try:
                if c.stream:
                    self._chunks(c, data)
                else:
                    self._head(c, data)
            except Exception as e:  # a malformed response: drop that connection
                self.released["parse error"] = self.released.get("parse error", 0) + 1
                if c.fut is not None:
                    self._fail(c, HTTPError(f"parse error: {e!r}"))
                else:
                    self._lost(c, "parse error")
        return len(events)

    def _head(self, c: Conn, data: bytes) -> None:
        data = c.buf + data
        i = data.find(b"\r\n\r\n")
        if i < 0:
            c.buf = data
            if len(data) > 65536:
                self._fail(c, HTTPError("response head too long"))
            return
        c.buf = b""
        head = data[:i]
        try:
            status = int(head[9:12])
        except ValueError:
            self._fail(c, HTTPError(f"bad status line {head[:40]!r}"))
            return
        if status != 200:
            self._fail(c, HTTPError(f"jchat {status} {data[i + 4:i + 84]!r}"))
            return
        if b"chunked" not in head.lower():
            self._fail(c, HTTPError("jchat answer not chunked"))
            return
        w = c.w
        c.stream = True
        if not w.held:
            w.held = True
            self.held_now += 1
            self.held_peak = max(self.held_peak, self.held_now)
        w.conn = c
        if w.sess is not None:
            w.sess.held = True
        if c.fut is not None and not c.fut.done():
            c.fut.set_result(None)
        c.fut = None
        if len(data) > i + 4:
            self._chunks(c, data[i + 4:])

    def _chunks(self, c: Conn, data: bytes) -> None:
        if c.buf:
            data = c.buf + data
            c.buf = b""
        # the usual receive: exactly one whole chunk
        i = data.find(b"\r\n")
        if i > 0:
            end = i + 2 + int(data[:i], 16)
            if end + 2 == len(data) and end > i + 2:
                text = data[i + 2:end]
            else:
                text = self._many(c, data)
                if text is None:
                    return
        else:
            c.buf = data
            return
        if c.sse:
            text = c.sse + text
            c.sse = b""
        if text == b"\n":  # a keep-alive
            return
        frames = text.split(b"\n\n")
        tail = frames.pop()
        if tail.strip(b"\n"):
            c.sse = tail
        w = c.w
        for fr in frames:
            if fr[:1] == b"\n":
                fr = fr.lstrip(b"\n")
                if not fr:
                    continue
            # fr: b"id: <n>\ndata: <first line>[\ndata: <more>...]"
            j = fr.find(b"\ndata: ")
            if j < 0 or fr[:4] != b"id: ":
                continue
            ident = int(fr[4:j])
            if ident <= w.last_id:  # sent again (a new heartbeat): had it
                continue
            w.last_id = ident
            body = fr[j + 7:]
            if body[:11] == b"msg update ":
                k = body.find(b"\n")
                p = (body if k < 0 else body[:k]).split(b" ")
                if len(p) >= 4 and p[2] != b"address":
                    self.updates += 1
                    self._saw_one(w, p[3], p[2])
            elif body[:11] == b"msg updates":
                self.bundles += 1
                for line in body.split(b"\ndata: ")[1:]:
                    state, _, user = line.partition(b" ")
                    self.updates += 1
                    self._saw_one(w, user, state)

    def _many(self, c: Conn, data: bytes):
        """The chunks' payloads of ``data`` joined (the tail of a chunk not
        complete kept in ``c.buf``); ``None`` when there is none, or the
        stream ended (its last chunk)."""
        out = []
        pos, n = 0, len(data)
        while pos < n:
            i = data.find(b"\r\n", pos)
            if i < 0:
                break
            size = int(data[pos:i], 16)
            if size == 0:  # the last chunk: the server ended the response
                self._lost(c, "ended")
                return None
            end = i + 2 + size
            if end + 2 > n:
                break
            out.append(data[i + 2:end])
            pos = end + 2
        if pos < n:
            c.buf = data[pos:]
        return b"".join(out) if out else None

    def _saw_one(self, w: Watcher, user: bytes, state: bytes) -> None:
        view = w.view
        old = view.get(user)
        if old != state:
            view[user] = state
            track = self.track
            if track is not None and user in track:
                want = self.want
                if old == want:
                    w.cnt -= 1
                elif state == want:
                    w.cnt += 1
        if user == self.t_user and state == self.t_state and w.gen != self.gen:
            w.gen = self.gen
            self.arrivals.append(mono())

    def _close(self, c: Conn) -> None:
        if self.conns.pop(c.fd, None) is not None:
            try:
                self.ep.unregister(c.fd)
            except OSError:
                pass
        c.sock.close()

    def _fail(self, c: Conn, e: Exception) -> None:
        self._close(c)
        if c.fut is not None and not c.fut.done():
            c.fut.set_exception(e)
        c.fut = None

    def _lost(self, c: Conn, reason: str) -> None:
        self._close(c)
        if c.fut is not None:
            self._fail(c, ConnectionError("connection lost"))
            return
        w = c.w
        if w.conn is c:
            w.conn = None
            self._unheld(w, reason)

    def _unheld(self, w: Watcher, reason: str) -> None:
        if w.held:
            w.held = False
            self.held_now -= 1
            self.released[reason] = self.released.get(reason, 0) + 1
        if w.sess is not None:
            w.sess.held = False

    # -- holding -------------------------------------------------------------------
    def _watcher(self, s: Session) -> Watcher:
        w = self.watchers.get(s.name)
        if w is None:
            w = self.watchers[s.name] = Watcher(s.name)
        w.sess = s
        if w.sid != s.sid:  # a new session (the storm's): its ids count from 1
            w.sid, w.last_id, w.acked = s.sid, 0, 0
        return w

    async def _socket(self, s: Session) -> tuple:
        """The socket ``s`` logged in on, taken over from asyncio (and True);
        or a new connection when that one is gone (and False)."""
        conn = s.conn
        s.conn = None
        if conn is not None and conn.alive and conn.fut is None and not conn.buf:
            sock = socket.socket(fileno=os.dup(conn.transport.get_extra_info("socket").fileno()))
            conn.transport.abort()  # closes asyncio's descriptor, not the connection
            sock.setblocking(False)
            return sock, True
        if conn is not None:
            conn.close()
        delay, last = 0.05, None
        for _ in range(6):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                if self.src:
                    sock.bind((self.src, 0))
                await asyncio.wait_for(self.loop.sock_connect(sock, (self.host, self.port)), 10)
                return sock, False
            except (OSError, asyncio.TimeoutError) as e:
                sock.close()
                last = e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise ConnectionError(f"connect failed: {last!r}")

    async def _open(self, s: Session, w: Watcher) -> Conn:
        self._arm()
        sock, reused = await self._socket(s)
        try:
            return await self._request(s, w, sock)
        except ConnectionError:
            if not reused:
                raise
            # the server closed the idle keep-alive connection (Twisted does
            # after 60 s) as the request went out: once more, on a new one
            sock, _ = await self._socket(s)
            return await self._request(s, w, sock)

    async def _request(self, s: Session, w: Watcher, sock: socket.socket) -> Conn:
        fut = self.loop.create_future()
        c = Conn(sock, w, fut)
        ack = f"&ack={w.last_id}" if w.last_id else ""
        req = build("GET", f"/jchat?me={s.name}&id={s.qsid}&mode=stream{self.hold_extra}{ack}",
                    extra="Accept: text/event-stream\r\n")
        self.conns[c.fd] = c
        self.ep.register(c.fd, _IN)
        try:
            try:
                sent = sock.send(req)
            except OSError as e:
                raise ConnectionError(f"send: {e!r}") from None
            if sent != len(req):
                raise HTTPError("request not sent whole")
            await fut
        except BaseException:
            self._close(c)
            c.fut = None
            raise
        w.acked = max(w.acked, w.last_id)
        return c

    async def hold_one(self, s: Session) -> None:
        w = self._watcher(s)
        if w.held:
            return
        await self._open(s, w)

    async def cmd_rehold(self, bundle: bool, conc=64, seconds=120, names=None):
        """A new heartbeat for every held watcher (acknowledging what it has);
        the server releases the one held before, which is closed."""
        t0 = mono()
        self.hold_extra = "&bundle=1" if bundle else ""
        names = names if names is not None else self.users
        todo = [w for w in (self.watchers.get(n) for n in names)
                if w is not None and w.held and w.sess is not None and w.sess.sid]

        async def one(w: Watcher) -> None:
            old = w.conn
            try:
                await self._open(w.sess, w)
            except (ConnectionError, HTTPError, asyncio.TimeoutError):
                # once more (a loaded machine): a watcher left unbundled would
                # get a storm's every change one frame at a time
                await asyncio.sleep(0.5)
                await self._open(w.sess, w)
            if old is not None and old is not w.conn:
                self._close(old)
        ok, errors, sample = await self.bounded(todo, one, conc, t0 + seconds)
        return {"n_ok": ok, "errors": errors, "sample": sample, "elapsed": mono() - t0}

    async def cmd_drop(self, names):
        n = 0
        for name in names:
            w = self.watchers.get(name)
            if w is None or not w.held:
                continue
            if w.conn is not None:
                self._close(w.conn)
                w.conn = None
            self._unheld(w, "dropped")
            n += 1
        return {"n_ok": n}

    async def cmd_logout(self, names, seconds=60):
        r = await super().cmd_logout(names, seconds)
        for name in names:
            w = self.watchers.get(name)
            if w is not None and w.conn is not None:
                self._close(w.conn)
                w.conn = None
                self._unheld(w, "logout")
        return r

    async def cmd_ack_all(self, conc=8, seconds=120):
        calls = []
        for w in self.watchers.values():
            s = w.sess
            if w.held and s is not None and s.sid == w.sid and w.last_id > w.acked:
                calls.append(["POST", f"/ack?me={w.name}&id={s.qsid}&ack={w.last_id}",
                              {}, [200, 204]])
                w.acked = w.last_id
        return await self.cmd_api(calls, conc, seconds)

    # -- what the orchestrator measures ------------------------------------------------
    async def cmd_target(self, user: str, state: str):
        self.t_user, self.t_state = user.encode(), state.encode()
        self.gen += 1
        self.arrivals = []
        return {}

    async def cmd_arrivals(self):
        a = self.arrivals
        return {"count": len(a), "held": self.held_now,
                "first": a[0] if a else None, "last": max(a) if a else None,
                "updates": self.updates, "bundles": self.bundles,
                "drains": self.drains, "reads": self.events}

    async def cmd_views(self, users: list, state: str, names=None):
        """How many held watchers (of ``names``; the users themselves left
        out) see every one of ``users`` in ``state``: counted as updates
        arrive; a new (users, state) is counted once over the views."""
        key = (tuple(users), state)
        if key != self.track_key:
            want = state.encode()
            track = frozenset(u.encode() for u in users)
            wanted = {u: want for u in track}.items()
            for w in self.watchers.values():
                w.cnt = len(wanted & w.view.items())
            self.track, self.want, self.track_key = track, want, key
        need = len(self.track)
        own = set(users)
        right = wrong = 0
        for n in (names if names is not None else self.users):
            if n in own:
                continue
            w = self.watchers.get(n)
            if w is None or not w.held:
                continue
            if w.cnt == need:
                right += 1
            else:
                wrong += 1
        return {"right": right, "wrong": wrong}

    def closing(self) -> None:
        for c in list(self.conns.values()):
            c.sock.close()


loadclient.LeanClient = LeanClient
