"""Media over HTTP end to end (docs/calls.md, "Media over HTTP"): SIPp as
alice's phone (a caller streaming RTP) behind ``presence-sip-bridge --media
http``, the real server with its media relay, bob's bridge (``--media http``
or ``udp``), SIPp as bob's phone with ``-rtp_echo``.  A tcpdump capture on
loopback counts the RTP that reaches each phone, and the relay's UDP ports
(which, with both bridges on HTTP, carry nothing at all).

A call bob's phone refuses (486) closes the bridge's local ports, the
relay's call and the stream.

Skips when sipp or tcpdump is missing or tcpdump may not capture (fails
instead under PRESENCE_REQUIRE_ALL=1)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from free_ports import relay_range
from presence_harness import MAX_LOOP, register
from test_sipp import (
    SCENARIOS, Bridge, Sipp, check, free_port, rejected, udp_port,
)

pytestmark = pytest.mark.requires_program("sipp", "tcpdump")

#: 20 ms PCMU packets SIPp streams (2 s)
PACKETS = 100
#: the relay's port range for this module (random, so parallel runs differ,
#: and outside the ephemeral range: no port the kernel hands out falls in it)
RELAY_LOW, RELAY_HIGH = relay_range(100)


@pytest.fixture(scope="module")
def server_options():
    return {"keepalive": 5, "poll": 1, "linger": 2, "sip": free_port(), "relay": "127.0.0.1",
            "relay_ports": f"{RELAY_LOW}-{RELAY_HIGH}"}


@pytest.fixture(scope="module")
def users(server):
    api = server.api()
    return {name: register(api, name + "m" + str(os.getpid() % 1000))
            for name in ("alice", "bob")}


@pytest.fixture
def sipp(tmp_path, server) -> Iterator[Sipp]:
    s = Sipp(tmp_path)
    yield s
    s.close()
    assert server.running, f"the server died:\n{server.output()[-5000:]}"


class Capture:
    """tcpdump on loopback, UDP only, to a pcap file."""

    def __init__(self, path: Path, ports: List[int]) -> None:
        self.path = path
        self.err = path.with_suffix(".err")
        expr = " or ".join([f"port {p}" for p in ports]
                           + [f"portrange {RELAY_LOW}-{RELAY_HIGH}"])
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                ["tcpdump", "-i", "lo", "-n", "-U", "-w", str(path), f"udp and ({expr})"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True)
        deadline = time.monotonic() + 20
        for _ in range(MAX_LOOP):
            text = self.err.read_text(errors="replace")
            if "listening on" in text:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                reason = f"tcpdump cannot capture on lo: {text.strip()[-300:]}"
                if os.environ.get("PRESENCE_REQUIRE_ALL") == "1":
                    pytest.fail(reason)
                pytest.skip(reason)
            time.sleep(0.05)  # condition wait: polling tcpdump's stderr

    def stop(self) -> List[Datagram]:
        """Stop; the captured datagrams (:func:`read_pcap`)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return read_pcap(self.path) if self.path.exists() else []


Datagram = Tuple[int, int, int, float, int]


def read_pcap(path: Path) -> List[Datagram]:
    """``(source port, destination port, UDP payload length, time, RTP
    sequence number or -1)`` of each IPv4 UDP datagram of a pcap file."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    unit = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    skip = {1: 14, 113: 16, 276: 20, 0: 4, 12: 0, 101: 0}.get(linktype)
    assert skip is not None, f"pcap link type {linktype}"
    out = []
    at = 24
    while at + 16 <= len(data):
        sec, frac, incl = struct.unpack(endian + "III", data[at:at + 12])
        frame = data[at + 16:at + 16 + incl]
        at += 16 + incl
        ip = frame[skip:]
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        sport, dport, length = struct.unpack("!HHH", ip[ihl:ihl + 6])
        payload = ip[ihl + 8:]
        seq = struct.unpack("!H", payload[2:4])[0] if len(payload) >= 12 \
            and payload[0] >> 6 == 2 else -1
        out.append((sport, dport, length - 8, sec + frac * unit, seq))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def relay_stats(server) -> Dict[str, int]:
    stats = server.api().get("/api/stats").json()
    return {k: v for k, v in stats.get("sip", {}).items()
            if k.startswith(("relay_", "media_http_"))}


def rtp_call(tmp_path: Path, sipp: Sipp, server, users, bob_media: str):
    alice, bob = users["alice"], users["bob"]
    bridges = []
    try:
        for user, media in ((alice, "http"), (bob, bob_media)):
            bridges.append(Bridge(server.base, user.name, user.password, udp_port(),
                                  udp_port(), tmp_path / f"bridge-{user.name}.log",
                                  ["--media", media, "-v"]))
        alice_bridge, bob_bridge = bridges
        uac_media, uas_media = udp_port(4), udp_port(4)  # SIPp's -mp: port and port + 2
        capture = Capture(tmp_path / "media.pcap", [uac_media, uas_media])
        (tmp_path / "tone.pcmu").write_bytes(b"\xff" * (160 * PACKETS))
        scenario = tmp_path / "caller_stream.xml"
        scenario.write_text((SCENARIOS / "caller_stream.xml").read_text()
                            .replace("STREAM_MS", str(PACKETS * 20 + 1500)))
        phone = sipp.phone(bob_bridge.phone, 1, extra=["-rtp_echo", "-mp", str(uas_media)])
        cpu = cpu_seconds(server.proc.pid)
        result = subprocess.run(
            sipp.args(scenario, alice_bridge.phone, 1,
                      [f"127.0.0.1:{alice_bridge.listen}", "-key", "ruri",
                       f"sip:{bob.name}@localhost", "-mp", str(uac_media)]),
            stdin=subprocess.DEVNULL, capture_output=True, cwd=tmp_path, timeout=120)
        check(result, [phone], f"a call with RTP, bob's bridge --media {bob_media}")
        cpu = cpu_seconds(server.proc.pid) - cpu
        packets = capture.stop()
        logs = f"server CPU during the call: {cpu * 1000:.0f} ms\n" + \
            "\n".join(b.output() for b in bridges)
        return packets, uac_media, uas_media, logs
    finally:
        for bridge in bridges:
            bridge.kill()


def rtp(packets, *, to=None, source=None):
    return [p for p in packets if p[2] >= 12 and (to is None or p[1] == to)
            and (source is None or p[0] == source)]


def delays(sent, arrived) -> str:
    """p50/p99/max of the time from each RTP packet sent to its arrival
    (matched by sequence number), in ms."""
    when = {p[4]: p[3] for p in sent}
    ms = sorted((p[3] - when[p[4]]) * 1000 for p in arrived if p[4] in when)
    if not ms:
        return "no delays"
    return (f"p50 {ms[len(ms) // 2]:.2f} ms, p99 {ms[min(len(ms) - 1, len(ms) * 99 // 100)]:.2f}"
            f" ms, max {ms[-1]:.2f} ms")


def in_relay(port: int) -> bool:
    return RELAY_LOW <= port <= RELAY_HIGH


def wait_for_closed(server) -> Dict[str, int]:
    deadline = time.monotonic() + 10
    for _ in range(MAX_LOOP):
        stats = relay_stats(server)
        if stats.get("relay_calls") == 0 and stats.get("media_http_streams") == 0:
            return stats
        assert time.monotonic() < deadline, f"the relay still holds the call: {stats}"
        time.sleep(0.1)  # condition wait: polling the stats


def test_rtp_over_http_on_both_sides_reaches_both_phones(tmp_path, sipp, server, users):
    packets, uac, uas, logs = rtp_call(tmp_path, sipp, server, users, "http")
    to_uas = rtp(packets, to=uas)
    echoed = rtp(packets, source=uas)
    to_uac = rtp(packets, to=uac)
    relay_udp = [p for p in packets if in_relay(p[0]) or in_relay(p[1])]
    sent = rtp(packets, source=uac)
    figures = (f"sent by alice's phone {len(sent)}, at bob's phone"
               f" {len(to_uas)}, echoed {len(echoed)}, at alice's phone {len(to_uac)},"
               f" relay UDP {len(relay_udp)}; alice -> bob {delays(sent, to_uas)};"
               f" bob -> alice {delays(echoed, to_uac)}; {logs.splitlines()[0]}"
               f"\n{logs[-6000:]}")
    print(figures.split("\n")[0])  # the figures, with -s
    assert len(to_uas) >= PACKETS * 0.95, figures
    assert len(echoed) == len(to_uas), figures
    assert len(to_uac) >= len(echoed) - 2, figures
    # with both bridges on HTTP, nothing travelled over the relay's UDP ports
    assert relay_udp == [], figures
    # both bridges closed their local ports at the BYE
    assert logs.count("closed: BYE passed") == 2, logs[-6000:]
    stats = wait_for_closed(server)
    assert stats["media_http_attached"] >= 2 and stats["media_http_injected"] >= 2 * len(
        to_uas) - 4, stats


def test_rtp_over_http_on_one_side_and_udp_on_the_other(tmp_path, sipp, server, users):
    packets, uac, uas, logs = rtp_call(tmp_path, sipp, server, users, "udp")
    to_uas = rtp(packets, to=uas)
    echoed = rtp(packets, source=uas)
    to_uac = rtp(packets, to=uac)
    figures = (f"at bob's phone {len(to_uas)}, echoed {len(echoed)}, at alice's phone"
               f" {len(to_uac)}; {logs.splitlines()[0]}\n{logs[-6000:]}")
    print(figures.split("\n")[0])
    assert len(to_uas) >= PACKETS * 0.95, figures
    # bob's phone got them from the relay itself, and echoed them there
    assert all(in_relay(p[0]) for p in to_uas), figures
    assert all(in_relay(p[1]) for p in echoed), figures
    assert len(to_uac) >= len(echoed) - 2, figures
    assert logs.count("closed: BYE passed") == 1, logs[-6000:]  # alice's bridge; bob's has none
    wait_for_closed(server)


def test_a_call_the_phone_refuses_closes_the_bridges_ports_and_the_relays(
        tmp_path, sipp, server, users):
    bob = users["bob"]
    bridge = Bridge(server.base, bob.name, bob.password, udp_port(), udp_port(),
                    tmp_path / "bridge-busy.log", ["--media", "http", "-v"])
    try:
        sip = int(server.extra_args[server.extra_args.index("--sip") + 1])
        phone = sipp.phone(bridge.phone, 1, scenario="busy_phone.xml")
        result = sipp.call(f"127.0.0.1:{sip}", f"sip:{bob.name}@localhost", 1,
                           scenario=rejected(tmp_path, 486))
        check(result, [phone], "a call bob's phone refuses")
        deadline = time.monotonic() + 10
        for _ in range(MAX_LOOP):
            if "closed: the call failed (486)" in bridge.output():
                break
            assert time.monotonic() < deadline, bridge.output()[-3000:]
            time.sleep(0.05)  # condition wait: polling the bridge's log
        wait_for_closed(server)  # the relay's ports and the stream too
    finally:
        bridge.kill()
