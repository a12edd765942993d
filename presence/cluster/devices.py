"""Which resume token each session of the cluster was opened or issued with
(docs/cluster.md, "Resume tokens in a cluster"): the service's view of the
hash ``devices`` in Redis, so that a logout through any node revokes the
token of that session's device, whichever node answered the login."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer


class SharedDevices:
    """What :class:`~presence.service.PresenceService` uses as its
    ``shared_devices``; the :class:`~presence.cluster.hub.ClusterHub` keeps
    the hash (it forgets a session's entry when the session ends, or its
    box is buried)."""

    def __init__(self, hub: Any) -> None:
        self._hub = hub

    def remember_device(self, sid: str, digest: str) -> None:
        self._hub.remember_device(sid, digest)

    def recall_device(self, sid: str) -> defer.Deferred:
        """The token hash of session ``sid``'s device, or None."""
        return self._hub.recall_device(sid)
