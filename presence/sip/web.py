"""``POST /sip?me&id``: the tunnel's way into the proxy (spec section 7).

The body is one SIP message (``Content-Type: message/sip``; lines may end in
``\\n`` as in frames, ``CRLF`` is restored): a response to a ``msg sipreq``
the session received, or a request of the user.  Answers are JSON:

* ``307`` (a cluster): the session is held by another box, whose proxy
  handles its SIP messages; the ``Location`` is this request on that box
  (POST the same body there).
* ``202 {"txid": ...}``: taken.  For a request, ``txid`` is the branch of
  its top ``Via``; the responses to it come back as
  ``msg sipresp <code> <txid>`` frames to this session (SIP errors such as
  ``404`` or ``480`` too: they are the SIP answer, not the HTTP one).
* ``400`` not a SIP message (the reason says what is wrong; text that is
  not UTF-8 too), ``403`` no such session, ``404`` a response that matches
  no transaction of this session, ``405`` a method other than POST, ``413``
  too large, ``415`` another content type, ``429`` the session posts faster
  than ``--sip-session-rate``.  A request the user may not send (a guest's,
  or one to an address outside what the user's role allows) is still
  ``202``: its ``403`` comes as the SIP answer, a ``msg sipresp`` frame.

Like every call that acts for a user it takes ``ack=n`` (acknowledges frames
up to ``n``) and the session cookie in place of ``me``/``id``.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from twisted.logger import Logger
from twisted.web import resource, server

from presence.errors import BadRequest, ClientError, NotFound
from presence.sip.mediaframe import NO_RELAY
from presence.sip.proxy import SipProxy, UnsupportedMedia
from presence.web.api import request_session
from presence.web.boxes import box_location
from presence.web.http import params, write_json

log = Logger(namespace="presence.sip")

CONTENT_TYPES = (b"message/sip",)


class SipTunnelResource(resource.Resource):
    isLeaf = True

    def __init__(self, service, proxy: SipProxy, media=None) -> None:
        super().__init__()
        self.service = service
        self.proxy = proxy
        #: the media tunnel (presence.sip.media_web.MediaTunnel) for
        #: ``/sip/media/<port>``, when the server relays media
        self.media = media

    def render_POST(self, request: server.Request) -> bytes:
        try:
            status, body = self._post(request)
        except ClientError as e:
            status, body = e.status, {"error": e.message}
        except Exception:
            log.failure("POST /sip failed")
            status, body = 500, {"error": "internal error; it has been logged"}
        request.setHeader(b"cache-control", b"no-store")
        return write_json(request, status, body)

    def _post(self, request: server.Request) -> Tuple[int, Dict[str, Any]]:
        if request.postpath not in ([], [b""]):
            raise NotFound("no such endpoint")
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype not in CONTENT_TYPES:
            raise UnsupportedMedia("the body must be one SIP message with "
                                   "Content-Type: message/sip")
        p = params(request)
        session = request_session(self.service, request, p)
        hub = self.service.hub
        if session.host_box != hub.config.host_box:
            # a cluster: the session's calls are the proxy of its box's
            # (transactions, dialogs, Contact tokens): the message goes there
            by_cookie = None if p.get("id") or p.get("sessionId") else session.id
            request.setHeader(b"location",
                              box_location(request, hub, session.host_box, by_cookie))
            return 307, {"error": "this session is held by another box: send its SIP"
                                  " messages there", "host_box": session.host_box}
        request.content.seek(0)
        data = request.content.read()
        if not data.strip():
            raise BadRequest("the body is empty: send one SIP message")
        return 202, self.proxy.from_session(session, data)

    def render(self, request: server.Request) -> bytes:
        if request.postpath[:1] == [b"media"]:
            if self.media is not None:
                return self.media.render(request, request.postpath[1:])
            return write_json(request, 404, {"error": NO_RELAY})
        if request.method == b"POST":
            return self.render_POST(request)
        request.setHeader(b"allow", b"POST")
        return write_json(request, 405, {"error": "method not allowed here: POST a SIP message"})
