"""Checking a server endpoint string given as an option, before anything
listens, so that a bad one is a usage error and not a traceback at start."""

from __future__ import annotations

from twisted.internet import endpoints
from twisted.python import usage


class _ParseOnly:
    """Stands in for a reactor while an endpoint string is checked."""


def check_server_endpoint(option: str, description: str, also: str = "") -> None:
    """Raise :class:`usage.UsageError` naming ``--option`` unless
    ``description`` is a server endpoint string whose port (where it has
    one) is 0-65535.  ``also`` names what else the option accepts."""
    try:
        endpoint = endpoints.serverFromString(_ParseOnly(), description)
    except Exception as e:
        raise usage.UsageError(f"--{option}: not a server endpoint string{also}: {e}")
    # Twisted checks the range only when it binds; its TCP and SSL endpoints
    # keep the number as ``_port``
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise usage.UsageError(f"--{option}: port {port} is not 0-65535")
