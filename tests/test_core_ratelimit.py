"""Tier-1 unit tests of L{presence.core.ratelimit.RateLimiter}: token buckets
per key with a capacity, a refill rate, and a bounded number of keys."""

from __future__ import annotations

from presence.core.ratelimit import RateLimiter, RecentSet, address_key, take_all


def takes(limiter: RateLimiter, key: str, now: float, n: int) -> list:
    return [limiter.take(key, now) for _ in range(n)]


def test_capacity_then_refused() -> None:
    limiter = RateLimiter(capacity=3, rate=0.5)
    assert takes(limiter, "1.2.3.4", 0, 5) == [True, True, True, False, False]


def test_keys_are_independent() -> None:
    limiter = RateLimiter(capacity=2, rate=0.1)
    assert takes(limiter, "a", 0, 3) == [True, True, False]
    assert takes(limiter, "b", 0, 3) == [True, True, False]


def test_refill_with_time() -> None:
    limiter = RateLimiter(capacity=3, rate=0.5)  # one token every 2 s
    takes(limiter, "k", 0, 3)
    assert not limiter.take("k", 1)      # half a token
    assert limiter.take("k", 2)          # one whole token
    assert not limiter.take("k", 2)
    assert takes(limiter, "k", 6, 3) == [True, True, False]


def test_refill_is_capped_at_capacity() -> None:
    limiter = RateLimiter(capacity=3, rate=1)
    takes(limiter, "k", 0, 3)
    assert takes(limiter, "k", 1000, 5) == [True, True, True, False, False]


def test_refused_take_spends_nothing() -> None:
    limiter = RateLimiter(capacity=1, rate=0.5)
    assert limiter.take("k", 0)
    assert not limiter.take("k", 1)      # 0.5 tokens, refused
    assert limiter.take("k", 2)          # the refused try did not cost the half token


def test_allowed_does_not_spend() -> None:
    limiter = RateLimiter(capacity=2, rate=0.1)
    assert limiter.allowed("k", 0)
    assert limiter.allowed("k", 0)
    assert limiter.allowed("k", 0)
    assert takes(limiter, "k", 0, 3) == [True, True, False]
    assert not limiter.allowed("k", 0)
    assert not limiter.allowed("k", 9)   # 0.9 tokens
    assert limiter.allowed("k", 10)
    assert limiter.allowed("k", 10)      # still there: allowed() took nothing
    assert limiter.take("k", 10)
    assert not limiter.allowed("k", 10)


def test_login_policy_of_the_decisions() -> None:
    # 10 failed logins, then one more try per 6 s (docs/decisions-draft.md)
    limiter = RateLimiter(capacity=10, rate=1 / 6)
    assert takes(limiter, "ip", 0, 11) == [True] * 10 + [False]
    assert not limiter.take("ip", 5)
    assert limiter.take("ip", 6.5)
    assert not limiter.take("ip", 7)


def test_max_keys_forgets_least_recently_used() -> None:
    limiter = RateLimiter(capacity=1, rate=0.001, max_keys=2)
    assert limiter.take("a", 0)
    assert limiter.take("b", 0)
    assert not limiter.take("a", 0)      # touches a: b is now the oldest
    assert limiter.take("c", 0)          # third key: b is forgotten
    assert not limiter.take("a", 0)      # a was kept
    assert not limiter.take("c", 0)
    assert limiter.take("b", 0)          # b forgotten -> a fresh full bucket
    assert len(limiter._buckets) <= 2


def test_max_keys_bounds_memory() -> None:
    limiter = RateLimiter(capacity=1, rate=1, max_keys=100)
    for i in range(10_000):
        limiter.take(f"10.0.{i // 256}.{i % 256}", 0)
    assert len(limiter._buckets) == 100
    # the newest 100 keys are the ones remembered
    assert not limiter.take("10.0.39.15", 0)  # i = 9999
    assert limiter.take("10.0.0.0", 0)        # i = 0, forgotten


def test_allowed_does_not_create_keys() -> None:
    limiter = RateLimiter(capacity=1, rate=1, max_keys=1)
    assert limiter.take("a", 0)
    for i in range(10):
        assert limiter.allowed(f"probe{i}", 0)
    assert not limiter.take("a", 0)      # probes did not push "a" out


# -- wait, take_all and RecentSet (issue 11: abuse limits) -----------------------

def test_wait_says_when_the_next_token_comes() -> None:
    limiter = RateLimiter(capacity=2, rate=0.5)   # one token every 2 s
    assert limiter.wait("k", 0) == 0
    takes(limiter, "k", 0, 2)
    assert limiter.wait("k", 0) == 2.0
    assert limiter.wait("k", 1.5) == 0.5
    assert limiter.wait("k", 2) == 0
    assert RateLimiter(capacity=1, rate=0).wait("k", 0) == 0
    zero = RateLimiter(capacity=1, rate=0)
    zero.take("k", 0)
    assert zero.wait("k", 10 ** 6) == float("inf")


def test_take_all_spends_from_every_bucket_or_from_none() -> None:
    session = RateLimiter(capacity=3, rate=1)
    address = RateLimiter(capacity=2, rate=0.25)
    both = [(session, "s1"), (address, "1.2.3.4")]
    assert take_all(both, 0) is None
    assert take_all(both, 0) is None
    # the address is empty: nothing is spent from the session either
    assert take_all(both, 0) == 4.0
    assert takes(session, "s1", 0, 2) == [True, False]
    # another session from another address is not affected
    assert take_all([(session, "s2"), (address, "5.6.7.8")], 0) is None
    assert take_all(both, 4) is None


def test_recent_set_remembers_the_newest_keys_only() -> None:
    recent = RecentSet(max_keys=2)
    recent.add(("alice", "1.1.1.1"))
    recent.add(("bob", "2.2.2.2"))
    recent.add(("alice", "1.1.1.1"))             # refreshed: bob is the oldest now
    recent.add(("carol", "3.3.3.3"))
    assert ("alice", "1.1.1.1") in recent and ("carol", "3.3.3.3") in recent
    assert ("bob", "2.2.2.2") not in recent
    assert len(recent) == 2
    for i in range(1000):
        recent.add(i)
    assert len(recent) == 2


def test_address_key_limits_ipv6_by_its_64_and_keeps_ipv4() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("") == ""
    assert address_key("/tmp/socket") == "/tmp/socket"
