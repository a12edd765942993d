"""The interfaces at the seams are the real contract.

* ``verifyObject`` on the real implementations: the ``Hub`` the server
  runs, the ``HeartbeatChannel`` a held ``GET /jchat`` makes, the listener
  ``PresenceService`` gives the hub (fakes are checked in test_core_hub.py).
* Read from the source with ``ast``: every attribute of the hub that a module
  outside ``presence/core/`` and ``presence/cluster/`` (the two
  implementations of ``IHub``), or in ``bench/``, uses is declared on
  ``IHub``, so that a second implementation of ``IHub`` (cluster mode) serves
  every front-end; and no front-end touches the directory (``service.store``,
  or an import of ``presence.store``) except ``presence/service.py``, the
  store itself and the wiring in ``presence/tap.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from zope.interface.verify import verifyObject

import presence
from presence.core.hub import IChannel, IHub, IHubListener
from presence.web.heartbeat import HeartbeatChannel

from helpers import World

ROOT = Path(presence.__file__).parent
BENCH = ROOT.parent / "bench"
#: may use the directory: the service, the store, the wiring that opens it,
#: and the cluster (it shares the store's Redis connection code)
STORE_OWNERS = ("service.py", "store", "tap.py", "cluster")


def test_the_real_hub_channel_and_listener_provide_their_interfaces():
    w = World()
    w.user("alice")
    bob = w.user("bob")
    hb = bob.heartbeat()
    channel = bob.hub_session.channel
    assert type(channel) is HeartbeatChannel
    assert verifyObject(IChannel, channel)
    assert verifyObject(IHub, w.hub)
    assert verifyObject(IHubListener, w.hub.listener)
    assert w.hub.listener is not None and type(w.hub.listener).__module__ == "presence.service"
    assert not hb.finished


# -- the source checks -------------------------------------------------------

def _is_hub(node: ast.AST) -> bool:
    """``hub``, ``self.hub``, ``service.hub``, ``self.service.hub``, ..."""
    return (isinstance(node, ast.Name) and node.id == "hub") or (
        isinstance(node, ast.Attribute) and node.attr == "hub")


def _is_service(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "service") or (
        isinstance(node, ast.Attribute) and node.attr == "service")


def hub_offences(source: str, declared: set) -> list:
    """Hub attributes ``source`` uses that are not in ``declared``, and hubs
    it binds to another name (which would hide their use from this check)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _is_hub(node.value) and node.attr not in declared:
            out.append(f"{node.lineno}: hub.{node.attr}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and \
                node.value is not None and _is_hub(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if not _is_hub(target):
                    out.append(f"{node.lineno}: the hub bound to {ast.unparse(target)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("getattr", "setattr") and node.args and _is_hub(node.args[0]):
            out.append(f"{node.lineno}: {node.func.id} on the hub")
    return out


def _imports_store(node: ast.AST, package: str) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "presence.store" or a.name.startswith("presence.store.")
                   for a in node.names)
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")
            module = ".".join(base[:len(base) - node.level + 1] + [node.module or ""])
        else:
            module = node.module or ""
        module = module.rstrip(".")
        return module == "presence.store" or module.startswith("presence.store.") or (
            module == "presence" and any(a.name == "store" for a in node.names))
    return False


def store_offences(source: str, package: str = "presence.web") -> list:
    """Where ``source`` reaches the directory: ``service.store`` or an import
    of ``presence.store``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "store" and _is_service(node.value):
            out.append(f"{node.lineno}: {ast.unparse(node)}")
        elif _imports_store(node, package):
            out.append(f"{node.lineno}: imports the store")
    return out


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        yield path, path.relative_to(ROOT)
    for path in sorted(BENCH.glob("*.py")) if BENCH.is_dir() else ():
        yield path, None


def test_every_hub_attribute_used_outside_the_core_is_declared_on_IHub():
    declared = set(IHub.names(all=True))
    offenders = {}
    for path, rel in _modules():
        # the core and the cluster are the implementations of IHub
        if rel is not None and rel.parts[0] in ("core", "cluster"):
            continue
        found = hub_offences(path.read_text(encoding="utf-8"), declared)
        if found:
            offenders[str(path)] = found
    assert offenders == {}


def test_no_front_end_touches_the_directory():
    offenders = {}
    for path, rel in _modules():
        if rel is not None and rel.parts[0] in STORE_OWNERS:
            continue
        package = "bench" if rel is None else ".".join(("presence",) + rel.parent.parts)
        found = store_offences(path.read_text(encoding="utf-8"), package)
        if found:
            offenders[str(path)] = found
    assert offenders == {}


def test_the_checks_see_every_form():
    declared = {"deliver", "clock"}
    bad = {
        "self.hub.users.user(name)": "hub.users",
        "hub.groups": "hub.groups",
        "self.service.hub.guest_sessions": "hub.guest_sessions",
        "h = self.hub": "bound to h",
        "self.h = service.hub": "bound to self.h",
        "getattr(self.hub, 'users')": "getattr on the hub",
        "self.hub.held += 1": "hub.held",
    }
    for source, what in bad.items():
        found = hub_offences(source, declared)
        assert len(found) == 1 and what in found[0], (source, found)
    assert hub_offences("self.hub.deliver(u, f)\nhub.clock.seconds()\n"
                        "self.hub = service.hub\nhub.users_x = 1 if 0 else 2\n"
                        "other.users.user(x)\n", declared | {"users_x"}) == []
    for source in ("self.service.store.get_user(n)", "service.store", "import presence.store",
                   "from presence.store.sqlite import run_now",
                   "from presence import store", "from ..store import interface",
                   "from ..store.interface import NameTaken"):
        assert store_offences(source, "presence.pages"), source
    assert store_offences("self.store.start()\nrequest.setHeader(b'no-store')\n"
                          "from presence.storage import x\nfrom ..core import frames\n",
                          "presence.pages") == []
