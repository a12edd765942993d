"""The Twisted side of a host box: Redis connections, the subscription and
the refresh timer of a :class:`~presence.cluster.hub.ClusterHub`."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger

from presence.cluster.hub import REFRESH, ClusterHub, make_loop
from presence.core.hub import HubConfig
from presence.store.redis import RedisAddress, TxRedis, parse_url


def _endpoint(reactor, address: RedisAddress, timeout: float):
    if address.path is not None:
        return endpoints.UNIXClientEndpoint(reactor, address.path, timeout=timeout)
    return endpoints.HostnameEndpoint(reactor, address.host, address.port, timeout=timeout)


class _Subscriber(protocol.Factory):
    """Builds the subscription's protocol: it subscribes to the box's
    channels on every (re)connection, then reloads the view."""

    def __init__(self, owner: "ClusterService") -> None:
        self.owner = owner

    def buildProtocol(self, addr):
        import txredisapi
        owner = self.owner

        from presence.store.resp import FastReplies
        # (replies read in one pass unless hiredis reads them: presence/store/resp.py)
        bases = (txredisapi.SubscriberProtocol,) if txredisapi.hiredis is not None \
            else (FastReplies, txredisapi.SubscriberProtocol)

        class Subscription(*bases):  # type: ignore[misc]
            def connectionMade(self):
                d = defer.maybeDeferred(super().connectionMade)
                d.addCallback(lambda _: self.subscribe(owner.hub.channels()))
                d.addCallback(lambda _: owner.subscribed())
                d.addErrback(lambda f: owner.log.failure("cluster: subscribing failed", f))
                return d

            def connectionLost(self, why):
                super().connectionLost(why)
                if owner.running:
                    owner.hub.lost("the subscription's connection was lost",
                                   "routing between boxes")

            def messageReceived(self, pattern, channel, message):
                owner.hub.received(channel, message)

        sub = Subscription(charset=None, password=owner.address.password,
                           username=owner.address.username, convertNumbers=False)
        sub.factory = self
        return sub

    noisy = False
    # what RedisProtocol may call on its factory when AUTH fails
    isLazy = True

    def stopTrying(self) -> None:
        pass

    def connectionError(self, message: str) -> None:
        self.owner.log.error("cluster: {message}", message=message)


class ClusterService(Service):
    """Starts the box: one command connection, one subscription, the
    refresh every ``REFRESH`` seconds; at a clean stop it ends its sessions
    (their unread chat to the message boxes) and leaves the directory."""

    log = Logger()

    def __init__(self, url: str, config: HubConfig, reactor: Any, timeout: float = 2.0) -> None:
        self.address = parse_url(url)
        self.reactor = reactor
        self.timeout = timeout
        self.redis = None
        self.hub = ClusterHub(reactor, config, _LazyRedis(self), prefix=self.address.prefix)
        self.loop = make_loop(self.hub, reactor)
        self._sub = None
        self.ready = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        self.redis = TxRedis(self.address, self.timeout, poolsize=1)
        self._sub = ClientService(_endpoint(self.reactor, self.address, self.timeout),
                                  _Subscriber(self), clock=self.reactor,
                                  retryPolicy=backoffPolicy(1.0, 10.0))
        self._sub.startService()

    def subscribed(self) -> defer.Deferred:
        d = self.hub.load()
        d.addCallback(lambda _: self.hub.refresh())

        def started(_):
            if not self.loop.running:
                self.loop.start(REFRESH, now=False)
            if not self.ready.called:
                self.ready.callback(None)
        d.addCallback(started)
        d.addErrback(lambda f: self.log.failure("cluster: loading the directory failed", f))
        return d

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self.loop.running:
            self.loop.stop()
        self.hub.close_all("shutdown")
        yield self.hub.bury(self.hub.me, alive=True)
        if self._sub is not None:
            yield self._sub.stopService()
        if self.redis is not None:
            yield self.redis.close()


class _LazyRedis:
    """The hub's command seam, the connection made at start."""

    def __init__(self, owner: ClusterService) -> None:
        self.owner = owner

    def eval(self, script, keys, args):
        return self.owner.redis.eval(script, keys, args)

    def unavailable(self, error) -> bool:
        return self.owner.redis.unavailable(error)
