"""Project-wide test configuration.

External programs
-----------------
Integration tests that need a program the machine may lack (``redis-server``,
``sipp``, ``chromium``, ...) must not fail on a developer's laptop that does
not have it: they *skip* with a clear reason.  CI installs those programs and
sets ``PRESENCE_REQUIRE_ALL=1``; under that setting a missing program is a
*failure*, so a broken CI image can never turn the suite silently green.

Three equivalent ways to use the rule::

    # 1. the fixture (returns the program's absolute path)
    def test_cluster(require_program):
        redis = require_program("redis-server")

    # 2. a marker (several names allowed)
    @pytest.mark.requires_program("sipp")
    def test_sip_call(): ...

    # 3. inside another fixture
    @pytest.fixture
    def redis_server(request):
        path = request.getfixturevalue("require_program")("redis-server")
        ...
"""
from __future__ import annotations

import os
import shutil
from typing import Callable, Iterable

import pytest

REQUIRE_ALL_ENV = "PRESENCE_REQUIRE_ALL"

#: Alternative executable names tried for a few well-known programs.
ALTERNATIVE_NAMES: dict[str, tuple[str, ...]] = {
    "chromium": ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"),
    "redis-server": ("redis-server",),
    "sipp": ("sipp",),
}


def require_all() -> bool:
    """True when missing programs must fail instead of skip."""
    return os.environ.get(REQUIRE_ALL_ENV, "").strip() == "1"


def find_program(name: str) -> str | None:
    """The absolute path of ``name`` (or of a known alternative name), or None."""
    for candidate in ALTERNATIVE_NAMES.get(name, (name,)):
        path = shutil.which(candidate)
        if path:
            return path
    return None


def require_program(name: str) -> str:
    """Return the path of program ``name``; skip the test if it is missing.

    With ``PRESENCE_REQUIRE_ALL=1`` in the environment a missing program fails
    the test instead of skipping it.
    """
    path = find_program(name)
    if path is not None:
        return path
    tried = ", ".join(ALTERNATIVE_NAMES.get(name, (name,)))
    if require_all():
        pytest.fail(
            f"required program {name!r} is not installed (looked for: {tried} on PATH) "
            f"and {REQUIRE_ALL_ENV}=1 forbids skipping",
            pytrace=False,
        )
    pytest.skip(
        f"program {name!r} is not installed (looked for: {tried} on PATH); "
        f"install it or set {REQUIRE_ALL_ENV}=1 to make this a failure"
    )
    raise AssertionError("unreachable")  # pragma: no cover


def require_programs(names: Iterable[str]) -> list[str]:
    return [require_program(n) for n in names]


@pytest.fixture(name="require_program", scope="session")
def require_program_fixture() -> Callable[[str], str]:
    """Fixture form of :func:`require_program`: ``require_program("sipp")``."""
    return require_program


def pytest_configure(config: pytest.Config) -> None:
    # Until someone begins logging, Twisted keeps the last 65,536 log events
    # in memory, and with them every object an event names (a service, a
    # request, a whole test's world).  The objects of one test would then be
    # freed, as cyclic garbage, during a later test, which the reference-
    # cycle tests (test_gc_cycles.py) would count as that test's.  Tests
    # that read log events add their own observers; nothing reads the buffer.
    from twisted.logger import globalLogBeginner
    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)
    config.addinivalue_line(
        "markers",
        "requires_program(*names): skip (or fail under PRESENCE_REQUIRE_ALL=1) "
        "when one of the named external programs is missing",
    )
    config.addinivalue_line(
        "markers", "integration: starts the real server or other real programs"
    )
    config.addinivalue_line(
        "markers",
        "blocking: the test body runs outside the reactor's greenlet, so that it "
        "may wait for a Deferred of the real reactor (redis_support.settle)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="requires_program"):
        require_programs(marker.args)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """A ``blocking`` test is called as plain pytest calls it, in the main
    greenlet; pytest-twisted would call it inside the reactor's greenlet,
    where ``pytest_twisted.blockon`` cannot wait (see redis_support.py)."""
    if pyfuncitem.get_closest_marker("blocking") is None:
        return None
    names = pyfuncitem._fixtureinfo.argnames
    pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names})
    return True
