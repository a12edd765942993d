"""The SIP front-end: the proxy for ``--domain`` that reaches users through
their heartbeat (spec section 7), and the bridge for stock SIP phones.

* :mod:`presence.sip.message`: parsing and serialising SIP messages;
* :mod:`presence.sip.proxy`: the transaction-stateful proxy core (no I/O,
  clock injected);
* :mod:`presence.sip.transport`: UDP and TCP protocols and the network the
  proxy sends through;
* :mod:`presence.sip.web`: ``POST /sip``, the tunnel's way in;
* :mod:`presence.sip.digest`: digest authentication (pure, clock injected);
* :mod:`presence.sip.registrar`: ``REGISTER`` for the domain, bindings, and
  a registered phone as a presence source (``docs/calls.md``);
* :mod:`presence.sip.relay`: the media relay (RTP/RTCP port pairs per call
  leg, latching, forwarding; clock and UDP layer injected) and its seam for
  RTP over HTTP (``IMediaSink``);
* :mod:`presence.sip.sdp` and :mod:`presence.sip.media`: the SDP of relayed
  calls, read and rewritten to the relay's ports, and the proxy's hooks.

See ``docs/sip.md``.
"""
