"""The pure helpers of bench/cluster.py and its client and Prosody
harness: how users are split over processes, how a login answer's
``host_box`` is read, ratios, and the client's SCRAM-SHA-1 proof (the
benchmark itself is run by hand)."""

import importlib.util
import os
import sys

import pytest

_BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _load(name):
    sys.path.insert(0, _BENCH)
    try:
        spec = importlib.util.spec_from_file_location("bench_" + name,
                                                      os.path.join(_BENCH, name + ".py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(_BENCH)


cluster = _load("cluster")
client = _load("cluster_client")
prosody = _load("prosody")


def test_users_are_split_into_counts_that_differ_by_at_most_one():
    assert cluster.split(100000, 8) == [12500] * 8
    assert cluster.split(10, 3) == [4, 3, 3]
    assert sum(cluster.split(14287, 7)) == 14287


def test_a_ratio_of_a_missing_figure_is_none():
    assert cluster.ratio(3000, 2000) == 1.5
    assert cluster.ratio(None, 2000) is None and cluster.ratio(3000, 0) is None


def test_the_heartbeat_goes_to_the_port_of_the_host_box_or_the_one_that_answered():
    assert client.box_port("127.0.0.1:8082", 8081) == 8082
    assert client.box_port("", 8081) == 8081
    assert client.box_port("box-without-port", 8081) == 8081


def test_a_full_run_is_refused_where_the_survivors_could_not_hold_a_dead_boxs_users():
    assert cluster.parse_args([]).nodes == 7            # 100,000 / 6 fit in 20,000 fds
    with pytest.raises(SystemExit):
        cluster.parse_args(["--nodes", "5"])          # 25,000 each after a death


def test_the_scram_proof_is_rfc_5802s():
    # RFC 5802, section 5: user "user", password "pencil"
    bare = "n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    first = "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    cache = {}
    final = prosody.scram_final("pencil", bare, first, cache, "user")
    assert final == ("c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
                     "p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
    assert len(cache) == 1                             # the salted password is kept
    assert prosody.scram_parse(first)["i"] == "4096"
