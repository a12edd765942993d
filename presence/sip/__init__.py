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
  a registered phone as a presence source (``docs/calls.md``).

See ``docs/sip.md``.
"""
