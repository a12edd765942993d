"""Wireless devices (spec section 8): the SMS / WAP push simulator, WML pages
and the presence side of texting a handset.

* :mod:`~presence.wireless.simulator` - the operator network: virtual handsets
  by number, message queues, validity periods, delivery reports (pure, with
  an injected clock and HTTP fetcher);
* :mod:`~presence.wireless.operator` - its HTTP face on ``--smsc``: the
  Kannel-shaped operator API (``/cgi-bin/sendsms``, ``/wappush``) and the
  handset API (``/handset/<number>/...``) that device emulators use;
* :mod:`~presence.wireless.gateway` - the presence server as an operator
  client: one-time push tokens, texting a handset, delivery reports turned
  into frames, mobile-originated texts turned into chats;
* :mod:`~presence.wireless.web` - the WML 1.1 pages under ``/wml/`` and the
  ``/api/wireless/...`` calls; :mod:`~presence.wireless.decks` their decks;
* :mod:`~presence.wireless.wml` - WML deck building (escaping, size bound);
* :mod:`~presence.wireless.numbers`, :mod:`~presence.wireless.si`,
  :mod:`~presence.wireless.dlr` - handset numbers and SMS sizes, Service
  Indication documents (hardened parsing), Kannel delivery reports;
* :mod:`~presence.wireless.keys` - handset secrets (kept hashed) and the
  proofs that bind a push link to its handset;
* :mod:`~presence.wireless.frontend` - the ``twistd presence`` options and
  wiring;
* :mod:`~presence.wireless.browser` - the small WML browser of the handset
  emulator (``presence-handset``, :mod:`presence.cli.handset`).

The wire formats are documented in ``docs/wireless.md``.
"""
