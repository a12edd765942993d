"""The pure helpers of bench/abuse.py: which patterns ``--only`` runs, when
RSS counts as settled, how SIP answers and Retry-After are read, and the
verdict against the targets.  (The benchmark itself is run by hand.)"""

import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "bench", "abuse.py")
_spec = importlib.util.spec_from_file_location("bench_abuse", _PATH)
abuse = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(abuse)


def test_only_picks_names_and_prefixes_in_the_fixed_order():
    assert abuse.select("") == abuse.PATTERNS
    assert abuse.select("sip_tcp,guest") == ["guest", "sip_tcp"]
    assert abuse.select("chat") == ["chat_offline", "chat_spill"]
    assert abuse.select(" sip , register ") == ["register", "sip_udp", "sip_tcp"]


def test_only_refuses_unknown_names():
    with pytest.raises(ValueError, match="nope"):
        abuse.select("guest,nope")
    with pytest.raises(ValueError):
        abuse.select("gue")  # a prefix must end at an underscore


def test_rss_settles_once_two_samples_do_not_fall():
    assert not abuse.settled([100])
    assert not abuse.settled([100, 90, 80])
    assert not abuse.settled([100, 90, 95])
    assert abuse.settled([100, 90, 90, 90])
    assert abuse.settled([100, 90, 91, 92])


def test_retry_after_seconds_absent_or_unreadable():
    assert abuse.retry_after({"retry-after": "7"}) == 7.0
    assert abuse.retry_after({}) is None
    assert abuse.retry_after(None) is None
    assert abuse.retry_after({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}) == -1.0


def test_sip_answer_reads_the_code_and_call_id():
    req = abuse.sip_request("INVITE", "nobody", "127.0.0.66", 5999, 3)
    assert req.startswith(b"INVITE sip:nobody@localhost SIP/2.0\r\n")
    assert req.endswith(b"Content-Length: 0\r\n\r\n")
    code, call = abuse.sip_answer(req)
    assert code == "request" and call.startswith(b"ab3-")
    answer = b"SIP/2.0 404 Not Found\r\nVia: x\r\ni: abc@h\r\nContent-Length: 0\r\n\r\n"
    assert abuse.sip_answer(answer) == ("404", b"abc@h")
    # two requests never share a Call-ID (each answer is counted per request)
    other = abuse.sip_request("INVITE", "nobody", "127.0.0.66", 5999, 3)
    assert abuse.sip_answer(other)[1] != call


def test_percentiles_in_milliseconds():
    p = abuse.percentiles_ms([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert (p["n"], p["p50"], p["p99"], p["max"]) == (100, 51.0, 100.0, 100.0)
    assert abuse.percentiles_ms([]) == {"n": 0}


def test_verdict_needs_a_low_p99_nothing_lost_and_rss_back():
    good = {"probe": {"chat_ms": {"p99": 40.0}, "lost": 0},
            "rss_before_kb": 100_000, "rss_after_kb": 109_000}
    assert abuse.verdict(good) == {"p99_under_100ms": True, "rss_back_within_10pct": True}
    lost = {**good, "probe": {"chat_ms": {"p99": 40.0}, "lost": 3}}
    assert not abuse.verdict(lost)["p99_under_100ms"]
    slow = {**good, "probe": {"chat_ms": {"p99": 180.0}, "lost": 0}}
    assert not abuse.verdict(slow)["p99_under_100ms"]
    fat = {**good, "rss_after_kb": 111_000}
    assert not abuse.verdict(fat)["rss_back_within_10pct"]
    assert abuse.verdict({"error": "x"}) == {"p99_under_100ms": False,
                                            "rss_back_within_10pct": False}


def test_the_table_shows_skipped_and_measured_patterns():
    res = [{"pattern": "sip_udp", "about": "x", "skipped": "SIP is off"},
           {"pattern": "guest", "about": "guests", "rss_before_kb": 64 * 1024,
            "rss_peak_kb": 70 * 1024, "rss_after_kb": 65 * 1024, "disk_growth_bytes": 0,
            "tracebacks": 2, "server_alive": True,
            "attacker": {"rate": 5000.0, "statuses": {"429": 900, "200": 30},
                         "errors": {"conn-closed": 4}, "retry_after_s": [1.0, 2.0, 900]},
            "probe": {"chat_ms": {"p50": 2.0, "p99": 11.0, "max": 12.0}, "lost": 0,
                      "errors": {"chat 429": 2}, "login_ms": {"p99": 7.0}}}]
    for r in res[1:]:
        r["targets"] = abuse.verdict(r)
    text = abuse.table(res)
    assert "skipped: SIP is off" in text
    assert "2.0 / 11 / 12" in text and "64 / 70 / 65" in text and "ok / ok" in text
    assert "429:900 200:30 conn-closed:4" in text
    assert "Retry-After min/max/n [1.0, 2.0, 900]" in text
    assert '"chat 429": 2' in text
