"""RTP through the media relay, end to end: uac -> presence-sip-bridge ->
server -> presence-sip-bridge -> uas, with SIPp carrying RTP.

The real ``twistd -n presence --sip <free port> --relay 127.0.0.1
--relay-ports <a free range>``, bridges logged in as alice and bob (from
test_sipp), SIPp as both phones:

* bob's phone (uas, ``phone_rtp.xml``) answers with ``-rtp_echo`` on its
  media port and plays ``tests/data/relay-tone.pcmu`` (50 RTP packets, 1 s
  of PCMU) after the ACK;
* alice's phone (uac, ``caller_rtp.xml``) signals through alice's bridge;
  its SDP names a UDP socket of this test, which sends 50 RTP packets of its
  own to the relay port of the 200's SDP and counts what comes back: its own
  packets echoed by bob's SIPp (they crossed the relay twice) and the tone
  bob's SIPp played (RTP sent by the far side).

The relay ports each phone was given (logged by the scenarios) are bound
by the server during the call and free again after the BYE; a call that
rings and is cancelled (``caller_cancel.xml`` / ``phone_ring.xml``) frees
its ports too.  ``/api/stats`` says the same from inside.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Dict, Optional

import pytest

from free_ports import relay_range, udp_bound
from presence_harness import MAX_LOOP
from test_sipp import (  # noqa: F401  (fixtures)
    SCENARIOS, bridges, free_port, sipp, udp_port,
)

pytestmark = pytest.mark.requires_program("sipp")

TONE = Path(__file__).parent.parent / "data" / "relay-tone.pcmu"
#: the tone is 8000 bytes of PCMU: 50 packets of 20 ms
TONE_PACKETS = 50
OUR_PACKETS = 50
OUR_SSRC = 0x5EED0001
RELAY_SPAN = 200


@pytest.fixture(scope="module")
def server_options():
    low, high = relay_range(RELAY_SPAN)
    return {"keepalive": 5, "poll": 1, "linger": 2, "sip": free_port(),
            "relay": "127.0.0.1", "relay_ports": f"{low}-{high}", "relay_timeout": 20}


@pytest.fixture(scope="module")
def sip_port(server) -> int:
    return int(server.extra_args[server.extra_args.index("--sip") + 1])


def media_port() -> int:
    """Free UDP ports for SIPp's ``-mp``: ``-rtp_echo`` takes the port and
    port + 2 (their RTCP neighbours are kept free too)."""
    return udp_port(4)


def scenario(tmp: Path, name: str) -> Path:
    """A copy of a scenario in ``tmp`` (SIPp writes its logs beside it)."""
    path = tmp / name
    path.write_text((SCENARIOS / name).read_text().replace("TONE_FILE", str(TONE)))
    return path


def relay_port(tmp: Path, deadline: float) -> int:
    """The relay port a SIPp scenario logged ("RELAYPORT n") in ``tmp``."""
    for _ in range(MAX_LOOP):
        for log in tmp.glob("*_logs.log"):
            m = re.search(r"RELAYPORT (\d+)", log.read_text(errors="replace"))
            if m:
                return int(m.group(1))
        if time.monotonic() > deadline:
            raise AssertionError(f"no RELAYPORT logged in {tmp}: "
                                 f"{[p.name for p in tmp.iterdir()]}")
        time.sleep(0.02)  # condition wait: polling SIPp's log
    raise AssertionError("unreachable")



def relay_stats(server) -> Dict[str, int]:
    r = server.api().get("/api/stats")
    assert r.status == 200, r.body
    return {k[len("relay_"):]: v for k, v in r.json()["sip"].items() if k.startswith("relay_")}


def rtp(seq: int) -> bytes:
    return bytes([0x80, 0]) + struct.pack("!HII", seq, seq * 160, OUR_SSRC) + b"\xff" * 160


def test_rtp_of_each_side_reaches_the_other_through_the_relay_and_bye_frees_the_ports(
        sipp, server, sip_port, bridges, tmp_path):
    bob, bob_bridge = bridges["bob"]
    alice, alice_bridge = bridges["alice"]
    uas_dir, uac_dir = tmp_path / "uas", tmp_path / "uac"
    uas_dir.mkdir()
    uac_dir.mkdir()
    sipp.tmp = uas_dir
    phone = sipp.phone(bob_bridge.phone, 1, scenario=str(scenario(uas_dir, "phone_rtp.xml")),
                       extra=["-rtp_echo", "-mp", str(media_port()), "-mi", "127.0.0.1",
                              "-trace_logs"])
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ours.bind(("127.0.0.1", 0))
    ours.settimeout(0.02)
    our_port = ours.getsockname()[1]
    sipp.tmp = uac_dir
    caller = subprocess.Popen(
        sipp.args(scenario(uac_dir, "caller_rtp.xml"), alice_bridge.phone, 1, [
            f"127.0.0.1:{alice_bridge.listen}", "-key", "ruri", f"sip:{bob.name}@localhost",
            "-key", "rtp_port", str(our_port), "-d", "4000", "-trace_logs"]),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=uac_dir, start_new_session=True)
    sipp.background.append(caller)
    try:
        deadline = time.monotonic() + 30
        to_alice = relay_port(uac_dir, deadline)  # the caller-facing leg
        to_bob = relay_port(uas_dir, deadline)  # the callee-facing leg
        assert to_alice != to_bob
        for port in (to_alice, to_alice + 1, to_bob, to_bob + 1):
            assert udp_bound(port), f"relay port {port} is not open during the call"
        echoed: set = set()
        tone = 0
        sources = set()
        sent = 0
        next_at = time.monotonic()
        for _ in range(MAX_LOOP):
            now = time.monotonic()
            if sent < OUR_PACKETS and now >= next_at:
                ours.sendto(rtp(sent), ("127.0.0.1", to_alice))
                sent += 1
                next_at += 0.02
            try:
                data, source = ours.recvfrom(2048)
            except socket.timeout:
                data = None
            if data is not None and len(data) >= 12:
                sources.add(source)
                ssrc = struct.unpack("!I", data[8:12])[0]
                if ssrc == OUR_SSRC:
                    echoed.add(struct.unpack("!H", data[2:4])[0])
                else:
                    tone += 1
            if (len(echoed) == OUR_PACKETS and tone >= TONE_PACKETS) or now > deadline:
                break
        # everything came from the relay's port that faces alice, nothing direct
        assert sources == {("127.0.0.1", to_alice)}
        assert len(echoed) == OUR_PACKETS, f"{len(echoed)} of our {OUR_PACKETS} packets came back"
        assert tone == TONE_PACKETS, f"{tone} of the {TONE_PACKETS} tone packets arrived"
        stats = relay_stats(server)
        assert stats["calls"] >= 1 and stats["forwarded"] >= 2 * OUR_PACKETS + TONE_PACKETS
        assert caller.wait(60) == 0, caller.stdout.read().decode(errors="replace")[-3000:]
        check_phone = finished_phone(phone)
        assert check_phone == 0
    finally:
        ours.close()
    # the BYE closed the call's ports
    for port in (to_alice, to_alice + 1, to_bob, to_bob + 1):
        assert not udp_bound(port), f"relay port {port} still open after the BYE"
    stats = relay_stats(server)
    assert stats["calls"] == 0 and stats["port_pairs_in_use"] == 0
    assert stats["closed_bye"] >= 1


def finished_phone(proc) -> Optional[int]:
    try:
        return proc.wait(60)
    except Exception:
        proc.kill()
        return None


def test_a_call_that_is_never_answered_frees_its_ports(sipp, server, sip_port, bridges,
                                                       tmp_path):
    bob, bob_bridge = bridges["bob"]
    alice, alice_bridge = bridges["alice"]
    before = relay_stats(server).get("closed_cancel", 0)
    uas_dir = tmp_path / "uas"
    uas_dir.mkdir()
    sipp.tmp = uas_dir
    phone = sipp.phone(bob_bridge.phone, 1, scenario=str(scenario(uas_dir, "phone_ring.xml")),
                       extra=["-d", "3000", "-trace_logs"])
    sipp.tmp = tmp_path
    caller = subprocess.Popen(
        sipp.args(scenario(tmp_path, "caller_cancel.xml"), alice_bridge.phone, 1, [
            f"127.0.0.1:{alice_bridge.listen}", "-key", "ruri", f"sip:{bob.name}@localhost",
            "-key", "rtp_port", str(udp_port())]),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=tmp_path, start_new_session=True)
    sipp.background.append(caller)
    to_bob = relay_port(uas_dir, time.monotonic() + 30)
    # ringing: the ports are open
    assert udp_bound(to_bob) and udp_bound(to_bob + 1)
    assert relay_stats(server)["calls"] >= 1
    assert caller.wait(60) == 0, caller.stdout.read().decode(errors="replace")[-3000:]
    assert finished_phone(phone) == 0
    assert not udp_bound(to_bob) and not udp_bound(to_bob + 1)
    stats = relay_stats(server)
    assert stats["calls"] == 0 and stats["port_pairs_in_use"] == 0
    assert stats["closed_cancel"] == before + 1
