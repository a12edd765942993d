"""The reusable client of a presence server (no console, no command line):
:mod:`presence.client.heartbeat` (``HeartbeatClient``, ``TreqHTTP``) and
:mod:`presence.client.eventstream` (the ``text/event-stream`` parser).  The
console scripts of :mod:`presence.cli` and the server's wireless gateway
use it."""
