"""
``presence-sip-bridge``: a stock SIP phone (or test tool) behind a firewall
places and receives calls through the presence server's HTTP tunnel.

    presence-sip-bridge --server http://127.0.0.1:8080 --user bob --password ... \\
        --listen 127.0.0.1:5070 --phone 127.0.0.1:5080

It logs in as the user and holds the heartbeat with the reference client
(L{presence.client.heartbeat.HeartbeatClient}: acknowledgements, reconnects,
logging in again), and gives the phone a local UDP port (C{--listen}):

 - each C{msg sipreq <METHOD> <txid>} frame becomes a request to the phone
   (C{--phone}) with the bridge's own C{Via} on top (branch C{<txid>-pb}, so
   the phone's responses come back to the bridge and a later CANCEL matches
   the INVITE), the bridge's C{Record-Route} on top for requests that may
   make a dialog (so the phone sends its in-dialog requests to the bridge),
   C{Max-Forwards} decremented and the Request-URI pointed at the phone
   (C{sip:<user part>@<phone>}); it is retransmitted over UDP until the phone
   answers (as RFC 3261 timers A and E), and answered C{408} after 32 s of
   silence;
 - each C{msg sipresp <code> <txid>} frame (the answer to a request the phone
   sent) goes to the phone, with the bridge's C{Record-Route} added last for
   a provisional or 2xx answer that makes a dialog (the phone reverses the
   list, so the bridge is its first hop);
 - whatever the phone sends to C{--listen} is posted to C{POST /sip}: a
   response with the bridge's C{Via} and C{Record-Route} taken out, a request
   with the bridge's C{Route} taken out.  Messages of one call are posted one
   after another, in order; a request the server refuses is answered to the
   phone (C{400} for a message it calls broken, C{503} otherwise).

The server rewrites the phone's C{Contact} to an address of its own (with a
token naming this session), so the phone needs no configuration beyond
C{--listen} as its outbound proxy (for calls it places) and C{--phone} as its
address.

A phone may instead register at the bridge (C{REGISTER} to C{--listen} with
the user's own name and password): the bridge relays the C{REGISTER}
through the tunnel like any request, the server answers it as the
registrar (C{401} with a digest challenge, checked against the server's
record of the user's password, then C{200} with the bindings) and the bridge
relays the answers back.  While the C{200} lists the phone's Contact with a
non-zero C{expires}, requests for the user go to the registered Contact (as
Request-URI) at the address the C{REGISTER} came from, instead of
C{--phone}; once it expires or is removed, to C{--phone} again.  With
C{--media http} the calls' RTP and RTCP travel over HTTP to the server's
media relay instead of UDP (L{presence.cli.sip_media}).
Garbage datagrams are dropped, a request the bridge cannot parse
is answered C{400}.  Datagrams from any host but the phone's are dropped:
whatever the bridge takes, it sends as the user.  See C{docs/sip.md}.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from presence.client.eventstream import FrameError, parse_frame
from presence.cli.sip_media import MEDIA_HTTP, MEDIA_UDP, MediaTunnelClient
from presence.client.heartbeat import HeartbeatClient, ServerError, _describe
from presence.sip.message import (
    MAGIC_COOKIE, NameAddr, ParseError, Request, Response, SipURI, Via, ack_for, bare_host,
    format_hostport, make_response, parse, reason_phrase, split_hostport,
)

log = Logger(namespace="presence.sip_bridge")

T1 = 0.5
T2 = 4.0
GIVE_UP = 64 * T1
#: requests that do not get the bridge's Record-Route (as the proxy's rule)
NO_RECORD_ROUTE = frozenset({"ACK", "CANCEL", "BYE", "REGISTER", "PRACK"})
#: outstanding requests to the phone kept for retransmission
MAX_PENDING = 2000

Address = Tuple[str, int]


def _to_tag() -> str:
    """A To-tag for a response the bridge makes itself: random, so that two
    such responses never look like one dialog (RFC 3261 19.3)."""
    return secrets.token_hex(5)


def parse_address(text: str) -> Address:
    """C{host:port} (C{[v6]:port} too) for the command line."""
    host, port = split_hostport(text)
    if port is None:
        raise ValueError(f"{text!r} has no port")
    return bare_host(host), port


class _Pending:
    """A request sent to the phone that waits for its answer."""

    __slots__ = ("data", "sent", "method", "txid", "request", "interval", "call", "deadline",
                 "provisional", "to")

    def __init__(self, data: bytes, sent: Request, request: Request, txid: str,
                 deadline: Any, to: Optional["Address"] = None) -> None:
        self.to = to
        self.data = data
        self.sent = sent
        self.method = request.method
        self.request = request
        self.txid = txid
        self.interval = T1
        self.call: Any = None
        self.deadline = deadline
        self.provisional = False


class SipBridge:
    """
    The bridge between one presence session and one local SIP phone.

    @param reactor: C{callLater}/C{seconds} for the timers, C{listenUDP} in
        L{listen}.
    @param listen: the bridge's UDP address for the phone.
    @param phone: the phone's UDP address.
    @param server: base URL of the presence server; C{user}, C{password} and
        C{client_options} (C{http}, C{mode}, C{register}, C{on_status} ...)
        are given to the L{HeartbeatClient} that holds the session.
    """

    def __init__(self, reactor: Any, listen: Address, phone: Address, server: str,
                 user: str, password: Optional[str], *, media: str = MEDIA_UDP,
                 listen_udp: Any = None, **client_options: Any) -> None:
        self.reactor = reactor
        self.listen_address = listen
        self.phone = phone
        self.client = HeartbeatClient(reactor, server, user, password, on_frame=self.frame,
                                      **client_options)
        #: with ``--media http``: the calls' RTP over HTTP (presence.cli.sip_media)
        self.media: Optional[MediaTunnelClient] = None
        if media == MEDIA_HTTP:
            self.media = MediaTunnelClient(reactor, self.client, listen[0], phone[0],
                                           listen_udp=listen_udp)
        elif media != MEDIA_UDP:
            raise ValueError(f"media must be {MEDIA_UDP} or {MEDIA_HTTP}, not {media!r}")
        self.transport: Any = None  # the UDP port, once listening
        self.pending: Dict[str, _Pending] = {}
        #: branch -> the ACK sent for a non-2xx final of the phone (re-sent
        #: when the phone repeats that final), kept 32 s
        self.acked: Dict[str, bytes] = {}
        self._chains: Dict[str, Deferred] = {}
        self.counters: Dict[str, int] = {}
        #: REGISTERs of the phone on their way: Call-ID -> (Contact key, Contact
        #: URI, the address it came from); a bounded few
        self._registering: Dict[str, Tuple[str, str, Address]] = {}
        #: the phone's registration, once the server's 200 lists it
        self.registration: Optional[_Registration] = None

    # -- set up -------------------------------------------------------------------

    def listen(self) -> Any:
        """Open the UDP port for the phone; return it."""
        self.transport = self.reactor.listenUDP(self.listen_address[1], _PhoneSide(self),
                                                interface=self.listen_address[0],
                                                maxPacketSize=65535)
        host = self.transport.getHost()
        self.listen_address = (self.listen_address[0], host.port)
        return self.transport

    def start(self) -> None:
        self.client.start()

    @property
    def me(self) -> str:
        return format_hostport(self.listen_address[0], self.listen_address[1])

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def _is_me(self, uri: Optional[SipURI]) -> bool:
        return uri is not None and bare_host(uri.host) == self.listen_address[0] \
            and (uri.port or 5060) == self.listen_address[1]

    def _record_route(self) -> str:
        return f"<sip:{self.me};lr>"

    # -- from the server ------------------------------------------------------------

    def frame(self, frame_id: Optional[int], text: str) -> None:
        """One frame from the heartbeat: SIP ones go to the phone."""
        try:
            frame = parse_frame(text)
        except FrameError:
            return
        if frame.kind not in ("sipreq", "sipresp") or len(frame.args) < 2:
            return
        data = frame.payload.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
        try:
            message = parse(data)
        except ParseError as e:
            log.warn("a {kind} frame does not carry a SIP message: {why}", kind=frame.kind,
                     why=e.reason)
            return
        txid = frame.args[1]
        if frame.kind == "sipreq" and isinstance(message, Request):
            self._to_phone_request(txid, message)
        elif frame.kind == "sipresp" and isinstance(message, Response):
            self._to_phone_response(message)

    def _to_phone_request(self, txid: str, request: Request) -> None:
        self._count("requests_down")
        mf = request.get("max-forwards")
        if mf is not None and mf.isdigit() and int(mf) <= 0:
            self._post_text(make_response(request, 483, "Too Many Hops", _to_tag()), request)
            return
        copy = request.copy()
        copy.set("max-forwards", str(int(mf) - 1) if mf is not None and mf.isdigit() else "70")
        branch = txid if txid.startswith(MAGIC_COOKIE) else MAGIC_COOKIE + txid
        branch += "-pb"
        copy.prepend("via", str(Via("UDP", self.listen_address[0], self.listen_address[1],
                                    [("branch", branch), ("rport", None)])))
        if copy.method not in NO_RECORD_ROUTE:
            copy.prepend("record-route", self._record_route())
        try:
            uri = SipURI.parse(copy.uri)
            user = uri.user
        except ValueError:
            user = None
        to = self.phone
        registration = self.registration
        if registration is not None:
            copy.uri, to = registration.contact, registration.address
        else:
            copy.uri = str(SipURI(self.phone[0], user, self.phone[1]))
        if self.media is not None:
            self.media.from_server(copy)
        data = copy.to_bytes()
        self._send(data, to)
        if copy.method != "ACK":
            if len(self.pending) >= MAX_PENDING:
                self._drop_pending(next(iter(self.pending)))
            old = self.pending.pop(f"{branch}:{copy.method}", None)
            if old is not None:
                self._cancel_timers(old)
            pending = _Pending(data, copy, request, txid,
                               self.reactor.callLater(GIVE_UP, self._give_up, branch,
                                                      copy.method), to)
            pending.call = self.reactor.callLater(T1, self._retransmit, branch, copy.method)
            self.pending[f"{branch}:{copy.method}"] = pending

    def _to_phone_response(self, response: Response) -> None:
        self._count("responses_down")
        copy = response.copy()
        method = copy.cseq[1]
        if method == "REGISTER" and copy.code >= 200:
            self._registered(copy)
        if copy.code > 100 and copy.code < 300 and method not in NO_RECORD_ROUTE \
                and copy.get_all("record-route"):
            mine = self._record_route()
            values = [v for v in copy.values("record-route") if not self._names_me(v)]
            copy.set_values("record-route", values + [mine])
        if self.media is not None:
            self.media.from_server(copy)
        self._send(copy.to_bytes(), self._response_address(copy))

    def _response_address(self, response: Response) -> Address:
        """Where the phone wants its response (RFC 3261 18.2.2, RFC 3581):
        the top Via's received/rport, else its sent-by, else ``--phone``."""
        try:
            via = Via.parse(response.values("via")[0])
        except (IndexError, ValueError):
            return self.phone
        host = via.param("received") or bare_host(via.host)
        if not (isIPAddress(host) or isIPv6Address(host)):
            return self.phone
        rport = via.param("rport")
        port = int(rport) if rport and rport.isdigit() else (via.port or 5060)
        return host, port

    def _send(self, data: bytes, to: Optional[Address] = None) -> None:
        if self.transport is not None:
            self.transport.write(data, to or self.phone)

    def _retransmit(self, branch: str, method: str) -> None:
        pending = self.pending.get(f"{branch}:{method}")
        if pending is None:
            return
        self._send(pending.data, pending.to)
        if method == "INVITE":
            pending.interval *= 2
        else:
            pending.interval = T2 if pending.provisional else min(2 * pending.interval, T2)
        pending.call = self.reactor.callLater(pending.interval, self._retransmit, branch, method)

    def _give_up(self, branch: str, method: str) -> None:
        pending = self.pending.pop(f"{branch}:{method}", None)
        if pending is None:
            return
        pending.deadline = None
        self._cancel_timers(pending)
        if pending.provisional and method == "INVITE":
            return  # ringing: the server's timer C decides
        self._count("phone_timeouts")
        log.info("the phone did not answer a {method} in {s:g} s", method=method, s=GIVE_UP)
        self._post_text(make_response(pending.request, 408, "Request Timeout", _to_tag()),
                        pending.request)

    def _drop_pending(self, key: str) -> None:
        pending = self.pending.pop(key, None)
        if pending is not None:
            self._cancel_timers(pending)

    def _cancel_timers(self, pending: _Pending) -> None:
        for call in (pending.call, pending.deadline):
            if call is not None and call.active():
                call.cancel()
        pending.call = pending.deadline = None

    # -- from the phone ----------------------------------------------------------------

    def datagram(self, data: bytes, addr: Address) -> None:
        """One datagram on the listening port: taken only from the phone's
        host (any port of it), since whatever is taken is sent as the user;
        anything from another host is dropped unanswered."""
        if not data.strip(b"\r\n \t"):
            return
        if bare_host(addr[0]) != self.phone[0]:
            self._count("foreign")
            log.debug("a datagram from {host}, not the phone's host, was dropped",
                      host=addr[0])
            return
        try:
            message = parse(data)
        except ParseError as e:
            self._count("malformed")
            partial = e.partial
            if isinstance(partial, Request) and partial.method != "ACK" \
                    and partial.get_all("via"):
                # the reason phrase of the status (505 and 513 are no Bad Request)
                reply = make_response(partial, e.status,
                                      f"{reason_phrase(e.status)} ({e.reason})", _to_tag())
                if self.transport is not None:
                    self.transport.write(reply.to_bytes(), addr)
            return
        if isinstance(message, Response):
            self._from_phone_response(message)
        else:
            self._from_phone_request(message, addr)

    def _from_phone_response(self, response: Response) -> None:
        vias = response.values("via")
        top = Via.parse(vias[0])
        branch = top.branch or ""
        if not (branch.endswith("-pb") and bare_host(top.host) == self.listen_address[0]
                and top.port == self.listen_address[1]):
            self._count("stray")
            log.debug("a response from the phone that is not for the bridge was dropped")
            return
        method = response.cseq[1]
        pending = self.pending.get(f"{branch}:{method}")
        if method == "INVITE" and response.code >= 300:
            # the ACK of a non-2xx final is hop by hop: the bridge sends it
            ack = self.acked.get(branch)
            if ack is None and pending is not None:
                ack = ack_for(pending.sent, response).to_bytes()
                self.acked[branch] = ack
                self.reactor.callLater(GIVE_UP, self.acked.pop, branch, None)
            if ack is not None:
                self._send(ack)
            if pending is None:
                return  # a repeated final: answered with the ACK again
        if pending is not None:
            if response.code < 200:
                pending.provisional = True
                if method == "INVITE" and pending.call is not None and pending.call.active():
                    pending.call.cancel()
            else:
                self._drop_pending(f"{branch}:{method}")
        if len(vias) < 2:
            # RFC 3261 16.7 step 3: no Via left once ours is taken out: the
            # response was for the bridge itself and goes nowhere
            self._count("no_via_left")
            log.debug("a response from the phone with no Via below the bridge's was dropped")
            return
        copy = response.copy()
        copy.set_values("via", vias[1:])
        if copy.get_all("record-route"):
            copy.set_values("record-route",
                            [v for v in copy.values("record-route") if not self._names_me(v)])
        if self.media is not None:
            self.media.from_phone(copy)
        self._post(copy, None)

    def _from_phone_request(self, request: Request, addr: Address) -> None:
        via = request.top_via()
        if via is not None and (bare_host(via.host) != addr[0] or via.param("rport") == ""):
            # where the phone really is, for the responses (as a proxy does)
            via.set_param("received", addr[0])
            if via.param("rport") == "":
                via.set_param("rport", str(addr[1]))
            request.set_top_via(via)
        routes = request.values("route")
        if routes and self._names_me(routes[0]):
            request.set_values("route", routes[1:])
        if request.method == "REGISTER":
            self._registering_from(request, addr)
        if self.media is not None:
            self.media.from_phone(request)
        self._post(request, addr)

    # -- the phone's registration ----------------------------------------------------

    def _registering_from(self, request: Request, addr: Address) -> None:
        """Note the phone's Contact in a REGISTER it sends (the server's 200
        says whether and for how long it is bound)."""
        contacts = request.values("contact")
        if len(contacts) != 1:
            return
        try:
            uri = NameAddr.parse(contacts[0]).sip_uri()
        except ValueError:
            uri = None
        if uri is None and contacts[0].strip() != "*":
            return
        while len(self._registering) >= 16:
            self._registering.pop(next(iter(self._registering)))
        if uri is None:
            self._registering[request.call_id or ""] = ("*", "*", addr)
            return
        self._registering[request.call_id or ""] = (_contact_key(uri),
                                                    str(uri), addr)

    def _registered(self, response: Response) -> None:
        """The server's final answer to a REGISTER of the phone."""
        noted = self._registering.pop(response.call_id or "", None)
        if noted is None or response.code >= 300:
            return
        key, contact, addr = noted
        expires = 0
        for value in response.values("contact"):
            try:
                address = NameAddr.parse(value)
            except ValueError:
                continue
            uri = address.sip_uri()
            if uri is not None and _contact_key(uri) == key:
                text = address.param("expires") or "0"
                expires = int(text) if text.isdigit() else 0
        old = self.registration
        if old is not None and old.timer.active():
            old.timer.cancel()
        self.registration = None
        if expires > 0 and key != "*":
            self.registration = _Registration(
                contact, addr, self.reactor.callLater(expires, self._registration_expired))
            log.info("the phone registered at {contact} for {s} s", contact=contact, s=expires)
        elif old is not None:
            log.info("the phone's registration was removed")

    def _registration_expired(self) -> None:
        log.info("the phone's registration expired: calls go to --phone again")
        self.registration = None

    def _names_me(self, value: str) -> bool:
        try:
            return self._is_me(NameAddr.parse(value).sip_uri())
        except ValueError:
            return False

    # -- posting ------------------------------------------------------------------------

    def _post(self, message, addr: Optional[Address]) -> None:
        """Post one message; the messages of one call go in order."""
        self._count("posted")
        call_id = message.call_id or ""
        body = message.to_bytes()
        previous = self._chains.get(call_id, succeed(None))
        d: Deferred = Deferred()

        def run(_: object) -> Deferred:
            posted = self.client.post_body("/sip", body, "message/sip")
            posted.addErrback(self._post_failed, message, addr)
            return posted

        previous.addBoth(lambda _: None)
        previous.addCallback(run)
        previous.addBoth(lambda _: d.callback(None))
        self._chains[call_id] = d

        def forget(_: object) -> None:
            if self._chains.get(call_id) is d:
                del self._chains[call_id]

        d.addCallback(forget)

    def _post_text(self, response: Response, request: Request) -> None:
        """Post a response the bridge made for ``request`` (which has the
        server's Via on top)."""
        if self.media is not None:
            self.media.from_phone(response)
        self._post(response, None)

    def _post_failed(self, failure: Any, message, addr: Optional[Address]) -> None:
        self._count("post_failed")
        why = _describe(failure)
        log.info("posting a SIP message failed: {why}", why=why)
        if not isinstance(message, Request) or message.method == "ACK" \
                or self.transport is None:
            return
        code = 400 if failure.check(ServerError) and failure.value.code == 400 else 503
        reply = make_response(message, code, f"{'Bad Request' if code == 400 else 'Service Unavailable'}"
                              f" (tunnel: {why[:80]})", _to_tag())
        self.transport.write(reply.to_bytes(), addr or self.phone)

    def stop(self) -> None:
        for key in list(self.pending):
            self._drop_pending(key)
        if self.registration is not None and self.registration.timer.active():
            self.registration.timer.cancel()
        self.registration = None
        if self.media is not None:
            self.media.stop()


class _Registration:
    """Where the phone registered: its Contact URI and the address its
    REGISTER came from, until the timer ends it."""

    __slots__ = ("contact", "address", "timer")

    def __init__(self, contact: str, address: Address, timer: Any) -> None:
        self.contact = contact
        self.address = address
        self.timer = timer


def _contact_key(uri: SipURI) -> str:
    return f"{uri.user or ''}@{bare_host(uri.host).lower()}:{uri.port or 5060}"


class _PhoneSide(DatagramProtocol):
    noisy = False

    def __init__(self, bridge: SipBridge) -> None:
        self.bridge = bridge

    def datagramReceived(self, data: bytes, addr: Tuple[Any, ...]) -> None:
        try:
            self.bridge.datagram(data, (addr[0], addr[1]))
        except Exception:
            log.failure("a datagram from {host}:{port} could not be handled",
                        host=addr[0], port=addr[1])


# -- the console script -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="presence-sip-bridge",
        description="Log in to a presence server, hold the heartbeat, and give a local SIP "
        "phone a UDP port: calls for the user reach the phone through the HTTP tunnel, "
        "and the phone's calls go out through it.",
    )
    p.add_argument("--server", default="http://127.0.0.1:8080",
                   help="base URL of the presence server (default %(default)s)")
    p.add_argument("--user", required=True, help="the user the phone answers for")
    p.add_argument("--password",
                   help="password (default: $PRESENCE_PASSWORD, else asked on the terminal)")
    p.add_argument("--register", action="store_true",
                   help="register the user first (an existing name is fine)")
    p.add_argument("--listen", default="127.0.0.1:5070", type=parse_address,
                   help="UDP address the phone sends to (default %(default)s)")
    p.add_argument("--phone", default="127.0.0.1:5080", type=parse_address,
                   help="UDP address of the phone while it has not registered at the bridge"
                   " (default %(default)s); only datagrams from its host are taken")
    p.add_argument("--media", choices=(MEDIA_UDP, MEDIA_HTTP), default=MEDIA_UDP,
                   help="how the calls' RTP/RTCP reach the server's media relay: 'udp' (the"
                   " phone sends to the relay's ports itself; SDP untouched) or 'http' (the"
                   " bridge gives the phone local UDP ports per m= line and carries the"
                   " packets over its HTTP connection to the server, for a side that"
                   " blocks UDP; see docs/calls.md) (default %(default)s)")
    p.add_argument("--mode", choices=("stream", "poll"), default="stream",
                   help="heartbeat mode (default %(default)s)")
    p.add_argument("--resume-file", metavar="PATH",
                   help="keep the resume token in this file (mode 0600): a restarted bridge"
                   " resumes without the password")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log to standard error (-vv: debug)")
    return p


async def _run(reactor: Any, args: argparse.Namespace, password: Optional[str]) -> None:
    def say(text: str) -> None:
        sys.stderr.write(f"* {text}\n")
        sys.stderr.flush()

    bridge = SipBridge(reactor, args.listen, args.phone, args.server, args.user, password,
                       media=args.media, mode=args.mode, register=args.register,
                       resume_file=args.resume_file,
                       on_status=say if not args.verbose else None)
    client = bridge.client
    try:
        bridge.listen()
    except CannotListenError as e:
        # a port already in use (or not permitted): one clear line, no traceback
        say(f"error: cannot listen on --listen {format_hostport(*args.listen)}: "
            f"{e.socketError}")
        raise SystemExit(1)
    stopped = client.when_stopped()

    def connected(_: object) -> None:
        say(f"bridge ready: phone {format_hostport(*args.phone)} <-> "
            f"listen {bridge.me} <-> {args.server} as {args.user}")

    client.when_connected().addCallbacks(connected, lambda f: None)

    def before_shutdown() -> Deferred:
        bridge.stop()
        d = client.logout()
        d.addTimeout(3, reactor)
        d.addErrback(lambda f: None)
        return d

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    client.start()
    try:
        reason = await stopped
    except Exception as e:
        say(f"error: {_describe_failure(e)}")
        raise SystemExit(1)
    if reason != "logout":
        say(f"stopped: {reason}")
        raise SystemExit(2)


def _describe_failure(e: Exception) -> str:
    from twisted.python.failure import Failure
    return _describe(Failure(e))


def main(argv: Optional[List[str]] = None) -> None:
    """The ``presence-sip-bridge`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    password = args.password
    if password is None:
        password = os.environ.get("PRESENCE_PASSWORD")
        if password is None and args.resume_file and os.path.exists(args.resume_file):
            pass  # resume with the token
        elif password is None:
            if not sys.stdin.isatty():
                parser.error("--password or $PRESENCE_PASSWORD is needed when stdin is not "
                             "a terminal")
            import getpass
            password = getpass.getpass(f"password for {args.user}: ")
    from twisted.logger import (
        FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner,
        textFileLogObserver,
    )
    level = {0: LogLevel.warn, 1: LogLevel.info}.get(args.verbose, LogLevel.debug)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=level)])],
        redirectStandardIO=False)
    from twisted.internet.task import react

    react(lambda reactor: Deferred.fromCoroutine(_run(reactor, args, password)))


if __name__ == "__main__":  # pragma: no cover
    main()
