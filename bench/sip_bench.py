#!/usr/bin/env python3
"""SIP through the HTTP tunnel: calls per second and added latency, against
SIPp talking directly to SIPp in the same run.  Not a test: run by hand.

    python bench/sip_bench.py                 # defaults below, ~1 minute
    python bench/sip_bench.py --quick         # smoke run
    python bench/sip_bench.py --markdown      # also print the docs/benchmarks.md section

Set-up (all on loopback, fresh ports):

* ``direct``: a SIPp UAS (``tests/integration/sipp/phone.xml``) and a SIPp UAC
  (``caller.xml``) calling it: INVITE / 180 / 200 / ACK / BYE / 200;
* ``tunnel``: ``twistd -n presence --sip P`` with ``presence-sip-bridge``
  logged in as bob, the same SIPp UAS as bob's phone behind the bridge, the
  same SIPp UAC calling ``sip:bob@localhost`` at the proxy.  The INVITE goes
  caller -> proxy (UDP) -> heartbeat frame (HTTP) -> bridge -> phone (UDP);
  each response phone -> bridge -> ``POST /sip`` -> proxy -> caller.

Two runs per set-up:

1. latency: ``--lat-calls`` calls at ``--lat-rate`` calls/s (at most
   ``--lat-limit`` at once), SIPp's response-time trace (``-trace_rtt``):
   INVITE -> 200 ("setup") and BYE -> 200 ("bye"), mean and percentiles.
   SIPp timestamps in whole milliseconds: a mean over many calls is
   unbiased, a percentile is +- 1 ms.
2. rate: ``--calls`` calls offered at ``--rate`` calls/s with at most
   ``--limit`` at once; completed calls per second from SIPp's statistics
   (successful calls / elapsed), and the CPU seconds the server and the
   bridge used per call (from /proc).

Added latency per hop: the tunnel adds two SIP hops (the proxy and the
bridge), each crossed once by the request and once by the response, so
``(tunnel - direct) / 2`` is the round-trip cost of one hop, HTTP tunnel
included.  Results go to ``--out`` (JSON) and a table on stdout.

``--media``: RTP through the media relay instead (see :func:`media_bench`):
``--media-calls`` calls at once (100) that each carry 50 RTP packets a
second both ways for ``--media-seconds`` (30), relayed (SIPp caller ->
proxy -> bridge -> SIPp phone, the SDP rewritten to relay ports) and direct
(SIPp caller -> SIPp phone) in the same run: packets lost, the jitter the
relay adds (p99) and the server's CPU per relayed call.

    python bench/sip_bench.py --media --markdown
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "integration" / "sipp"
DEFAULT_OUT = str(ROOT / "bench" / "results" / "sip.json")
READY = re.compile(r"presence ready\b.*?\bhttp=([\d.]+):(\d+)")


def free_port() -> int:
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("0.0.0.0", port))
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.bind(("0.0.0.0", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12))
    return ticks / os.sysconf("SC_CLK_TCK")


class Procs:
    """Every process started here; all are killed at the end."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []

    #: the nice value for every process started (``--nice``), None: inherited
    nice: Optional[int] = None

    def start(self, args: List[str], log: Path, **kw: Any) -> subprocess.Popen:
        out = open(log, "wb")
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, **kw)
        out.close()
        if self.nice is not None:
            os.setpriority(os.PRIO_PROCESS, proc.pid, self.nice)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def wait_for(path: Path, pattern: re.Pattern, proc: subprocess.Popen, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = pattern.search(path.read_text(errors="replace"))
        if m:
            return m
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited: {path.read_text()[-2000:]}")
        time.sleep(0.05)  # condition wait: polling a log
    raise RuntimeError(f"timed out waiting for {pattern.pattern} in {path}")


def wait_udp(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        if proc.poll() is not None:
            raise RuntimeError("SIPp exited before listening")
        time.sleep(0.05)
    raise RuntimeError(f"nothing bound UDP {port}")


def post(base: str, path: str, fields: Dict[str, str]) -> Any:
    data = urllib.parse.urlencode(fields).encode()
    with urllib.request.urlopen(base + path, data=data, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def sipp_run(work: Path, tag: str, remote: str, ruri: str, calls: int, rate: float,
             limit: int, uas_port: int, procs: Procs, timeout: float) -> Dict[str, Any]:
    """One SIPp UAC run against a SIPp UAS already listening; returns figures."""
    run = work / tag
    run.mkdir()
    uac_port = free_port()
    args = ["sipp", remote, "-sf", str(SCENARIOS / "caller.xml"), "-key", "ruri", ruri,
            "-i", "127.0.0.1", "-p", str(uac_port), "-m", str(calls), "-r", str(rate),
            "-l", str(limit), "-nostdin", "-timeout", f"{int(timeout)}s", "-timeout_error",
            "-trace_rtt", "-rtt_freq", "1", "-trace_stat", "-fd", "1", "-timer_resol", "1"]
    started = time.monotonic()
    result = subprocess.run(args, cwd=run, stdin=subprocess.DEVNULL, capture_output=True,
                            timeout=timeout + 30)
    wall = time.monotonic() - started
    rtts: Dict[str, List[float]] = {"setup": [], "bye": []}
    for path in run.glob("caller_*_rtt.csv"):
        with open(path) as f:
            for row in csv.DictReader(f, delimiter=";"):
                rtts.setdefault(row["rtd_no"], []).append(float(row["response_time_ms"]))
    stat = {}
    for path in run.glob("caller_*_.csv"):
        rows = list(csv.reader(open(path), delimiter=";"))
        if len(rows) >= 2:
            stat = dict(zip(rows[0], rows[-1]))
    ok = int(stat.get("SuccessfulCall(C)", 0) or 0)
    failed = int(stat.get("FailedCall(C)", 0) or 0)
    elapsed = _seconds(stat.get("ElapsedTime(C)", "")) or wall
    return {"rc": result.returncode, "successful": ok, "failed": failed,
            "elapsed_s": round(elapsed, 3), "wall_s": round(wall, 3),
            "calls_per_s": round(ok / elapsed, 1) if elapsed else 0.0,
            "setup_ms": _summary(rtts.get("setup", [])), "bye_ms": _summary(rtts.get("bye", []))}


def _seconds(text: str) -> Optional[float]:
    m = re.match(r"(\d+):(\d+):(\d+):(\d+)", text or "")
    if not m:
        return None
    h, mi, s, us = (int(x) for x in m.groups())
    return h * 3600 + mi * 60 + s + us / 1e6


def _summary(values: List[float], digits: int = 2) -> Dict[str, Any]:
    if not values:
        return {"n": 0}
    values = sorted(values)

    def pct(p: float) -> float:
        return round(values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))],
                     digits)

    return {"n": len(values), "mean": round(statistics.fmean(values), digits), "p50": pct(50),
            "p95": pct(95), "p99": pct(99), "max": round(values[-1], digits)}


def probe(remote: tuple, ruri: str, calls: int, timeout: float = 5.0) -> Dict[str, Any]:
    """Sequential calls from a small Python UAC timed with ``perf_counter``:
    INVITE -> 200 and BYE -> 200 at microsecond resolution (SIPp's own
    timestamps are whole milliseconds)."""
    sys.path.insert(0, str(ROOT))
    from presence.sip.message import NameAddr, Request, Response, parse

    setups: List[float] = []
    byes: List[float] = []
    failed = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        port = sock.getsockname()[1]
        me = f"127.0.0.1:{port}"

        def request(method: str, uri: str, call_id: str, cseq: int, to: str,
                    routes: List[str], body: str = "") -> bytes:
            r = Request(method, uri)
            r.add("Via", f"SIP/2.0/UDP {me};branch=z9hG4bK{os.urandom(6).hex()};rport")
            for route in routes:
                r.add("Route", route)
            r.add("Max-Forwards", "70")
            r.add("From", f"<sip:probe@{me}>;tag=p{call_id[:8]}")
            r.add("To", to)
            r.add("Call-ID", call_id)
            r.add("CSeq", f"{cseq} {method}")
            r.add("Contact", f"<sip:probe@{me}>")
            if body:
                r.add("Content-Type", "application/sdp")
                r.body = body.encode()
            return r.to_bytes()

        def final(method: str) -> Response:
            while True:
                message = parse(sock.recvfrom(65535)[0])
                if isinstance(message, Response) and message.cseq[1] == method \
                        and message.code >= 200:
                    return message

        sdp = ("v=0\r\no=probe 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
               "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\n")
        for i in range(calls):
            call_id = f"{os.urandom(8).hex()}@probe"
            try:
                t0 = time.perf_counter()
                sock.sendto(request("INVITE", ruri, call_id, 1, f"<{ruri}>", [], sdp), remote)
                ok = final("INVITE")
                t1 = time.perf_counter()
                if ok.code != 200:
                    failed += 1
                    continue
                setups.append((t1 - t0) * 1000)
                routes = list(reversed(ok.values("record-route")))
                target = NameAddr.parse(ok.get("contact")).uri
                to = ok.get("to")
                sock.sendto(request("ACK", target, call_id, 1, to, routes), remote)
                t2 = time.perf_counter()
                sock.sendto(request("BYE", target, call_id, 2, to, routes), remote)
                done = final("BYE")
                t3 = time.perf_counter()
                if done.code == 200:
                    byes.append((t3 - t2) * 1000)
                else:
                    failed += 1
            except (socket.timeout, OSError, ValueError):
                failed += 1
    return {"calls": calls, "failed": failed, "setup_ms": _summary(setups, 3),
            "bye_ms": _summary(byes, 3)}


def uas(work: Path, tag: str, port: int, calls: int, procs: Procs,
        timeout: float) -> subprocess.Popen:
    run = work / f"uas-{tag}"
    run.mkdir()
    proc = procs.start(["sipp", "-sf", str(SCENARIOS / "phone.xml"), "-i", "127.0.0.1",
                        "-p", str(port), "-m", str(calls), "-nostdin", "-timeout",
                        f"{int(timeout)}s"], run / "out.txt", cwd=run)
    wait_udp(port, proc)
    return proc


def start_tunnel(work: Path, procs: Procs, extra: List[str]):
    """``twistd -n presence --sip P`` (with ``extra`` options) and a bridge
    logged in as bob: ``(server, base URL, bridge, phone port, SIP port)``."""
    sip_port = free_port()
    log = work / "server.log"
    if "--relay" not in extra:
        extra = ["--relay", "127.0.0.1", *extra]  # the relay's ports on loopback too
    # the checkout this file is in, not whatever presence is installed
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    server = procs.start([sys.executable, "-c",
                          "import sys; sys.argv[0] = 'twistd'; "
                          "from twisted.scripts.twistd import run; run()",
                          "-n", "--pidfile=", "--logfile=-", "presence", "--http",
                          "tcp:0:interface=127.0.0.1", "--data", str(work / "data"),
                          "--sip", str(sip_port), "--smsc", "none", "--hash-cost", "1",
                          "--admin", "none",
                          # one caller address and one bridge session carry
                          # every call: lift the per-source and per-session
                          # limits, which are sized for one person's phone
                          "--sip-source-rate", "1000000", "--sip-session-rate", "1000000",
                          *extra],
                         log, cwd=work, env=env)
    m = wait_for(log, READY, server, 60)
    base = f"http://127.0.0.1:{m.group(2)}"
    post(base, "/api/register", {"username": "bob", "password": "bench-secret"})
    phone_port = free_port()
    bridge_log = work / "bridge.log"
    bridge = procs.start([sys.executable, "-m", "presence.cli.sip_bridge", "--server", base,
                          "--user", "bob", "--listen", f"127.0.0.1:{free_port()}",
                          "--phone", f"127.0.0.1:{phone_port}"], bridge_log, cwd=ROOT,
                         env=dict(env, PRESENCE_PASSWORD="bench-secret"))
    wait_for(bridge_log, re.compile("bridge ready"), bridge, 30)
    return server, base, bridge, phone_port, sip_port


def bench(args: argparse.Namespace) -> Dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sip-bench-"))
    procs = Procs()
    results: Dict[str, Any] = {}
    try:
        server, base, bridge, phone_port, sip_port = start_tunnel(work, procs, [])

        # precise sequential latency: the same Python UAC against both
        port = free_port()
        phone = uas(work, "direct-probe", port, args.probe_calls, procs, args.timeout)
        results["direct_probe"] = probe(("127.0.0.1", port), f"sip:uas@127.0.0.1:{port}",
                                        args.probe_calls)
        phone.wait(args.timeout + 30)
        phone = uas(work, "tunnel-probe", phone_port, args.probe_calls, procs, args.timeout)
        results["tunnel_probe"] = probe(("127.0.0.1", sip_port), "sip:bob@localhost",
                                        args.probe_calls)
        phone.wait(args.timeout + 30)

        plan = [("latency", args.lat_calls, args.lat_rate, args.lat_limit),
                ("rate", args.calls, args.rate, args.limit)]
        for phase, calls, rate, limit in plan:
            # direct: SIPp -> SIPp
            port = free_port()
            phone = uas(work, f"direct-{phase}", port, calls, procs, args.timeout)
            results[f"direct_{phase}"] = sipp_run(
                work, f"direct-{phase}", f"127.0.0.1:{port}", f"sip:uas@127.0.0.1:{port}",
                calls, rate, limit, port, procs, args.timeout)
            phone.wait(args.timeout + 30)
            # tunnel: SIPp -> proxy -> bridge -> SIPp
            phone = uas(work, f"tunnel-{phase}", phone_port, calls, procs, args.timeout)
            cpu0 = (cpu_seconds(server.pid), cpu_seconds(bridge.pid))
            results[f"tunnel_{phase}"] = r = sipp_run(
                work, f"tunnel-{phase}", f"127.0.0.1:{sip_port}", "sip:bob@localhost",
                calls, rate, limit, phone_port, procs, args.timeout)
            cpu1 = (cpu_seconds(server.pid), cpu_seconds(bridge.pid))
            done = max(r["successful"], 1)
            r["server_cpu_ms_per_call"] = round((cpu1[0] - cpu0[0]) * 1000 / done, 2)
            r["bridge_cpu_ms_per_call"] = round((cpu1[1] - cpu0[1]) * 1000 / done, 2)
            phone.wait(args.timeout + 30)
        def sip_stats() -> Dict[str, Any]:
            with urllib.request.urlopen(base + "/api/stats", timeout=10) as resp:
                return json.loads(resp.read()).get("sip") or {}

        results["server_stats_after"] = sip_stats()
        # the transaction tables must drain by their timers (32 s)
        ended = time.monotonic()
        results["drained_after_s"] = None
        while time.monotonic() - ended < 45:
            now = sip_stats()
            if now.get("server_transactions") == 0 and now.get("client_transactions") == 0:
                results["drained_after_s"] = round(time.monotonic() - ended, 1)
                break
            time.sleep(0.5)  # condition wait: polling the stats
        results["server_stats_drained"] = sip_stats()
    finally:
        procs.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}", file=sys.stderr)
    added = {}
    for source in ("probe", "latency"):
        d, t = results[f"direct_{source}"], results[f"tunnel_{source}"]
        for what in ("setup_ms", "bye_ms"):
            if d[what].get("n") and t[what].get("n"):
                added[f"{source}_{what}"] = round((t[what]["mean"] - d[what]["mean"]) / 2, 3)
    results["added_ms_per_hop"] = added
    dr, tr = results["direct_rate"], results["tunnel_rate"]
    results["rate_ratio"] = round(tr["calls_per_s"] / dr["calls_per_s"], 3) \
        if dr["calls_per_s"] else None
    results["machine"] = machine()
    results["command"] = "python bench/sip_bench.py " + " ".join(sys.argv[1:])
    results["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results["args"] = vars(args)
    return results


# -- media: RTP through the relay ---------------------------------------------------------

#: 20 ms of PCMU a packet: 50 packets a second a stream
PTIME = 0.02
SSRC_BASE = 0x5EED0000


def relay_range(span: int = 1000) -> str:
    """A free range of UDP ports below the ephemeral ones, for ``--relay-ports``."""
    import random
    for _ in range(50):
        low = random.randrange(20000, 32000 - span, 2)
        probes = range(low, low + span, 37)
        taken = 0
        for port in probes:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    taken += 1
        if not taken:
            return f"{low}-{low + span - 1}"
    raise RuntimeError("no free relay port range")


def rtp_streams(sock: socket.socket, targets: List[tuple], seconds: float) -> Dict[str, Any]:
    """One RTP stream per target (SSRC ``SSRC_BASE + i``), 50 packets a second
    each, staggered evenly; every packet carries its send time.  The far end
    echoes them (SIPp's ``-rtp_echo``); for each echo: the round trip, and the
    interarrival jitter sample |D| of RFC 3550 6.4.1 (the change of transit
    time between consecutive packets of a stream, in ms)."""
    import select
    n = len(targets)
    per_stream = int(seconds / PTIME)
    total = per_stream * n
    step = PTIME / n
    sent = [0] * n
    got: List[set] = [set() for _ in range(n)]
    last: List[Optional[tuple]] = [None] * n
    rtts: List[float] = []
    jitter: List[float] = []
    rfc_j = [0.0] * n
    foreign = 0
    start = time.perf_counter() + 0.2
    j = 0
    sock.setblocking(False)
    drain_until = None
    while True:
        now = time.perf_counter()
        while j < total and start + j * step <= now:
            i, seq = j % n, j // n
            t = time.perf_counter()
            packet = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, SSRC_BASE + i) + \
                struct.pack("!d", t) + b"\xff" * 152
            try:
                sock.sendto(packet, targets[i])
                sent[i] += 1
            except BlockingIOError:
                pass
            j += 1
            now = time.perf_counter()
        if j >= total and drain_until is None:
            drain_until = now + 1.0
        if drain_until is not None and now >= drain_until:
            break
        wait = (start + j * step - now) if j < total else (drain_until - now)
        readable, _, _ = select.select([sock], [], [], max(0.0, wait))
        if not readable:
            continue
        while True:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                break
            arrived = time.perf_counter()
            if len(data) < 20:
                foreign += 1
                continue
            seq, ssrc = struct.unpack("!H", data[2:4])[0], struct.unpack("!I", data[8:12])[0]
            i = ssrc - SSRC_BASE
            if not 0 <= i < n:
                foreign += 1
                continue
            t_sent = struct.unpack("!d", data[12:20])[0]
            got[i].add(seq)
            rtts.append((arrived - t_sent) * 1000)
            transit = arrived - t_sent
            if last[i] is not None:
                d = abs(transit - last[i]) * 1000
                jitter.append(d)
                rfc_j[i] += (d - rfc_j[i]) / 16
            last[i] = transit
    sock.setblocking(True)
    total_sent = sum(sent)
    received = sum(len(g) for g in got)
    return {"streams": n, "seconds": seconds, "sent": total_sent, "received": received,
            "lost": total_sent - received, "foreign": foreign,
            "rtt_ms": _summary(rtts, 3), "jitter_ms": _summary(jitter, 3),
            "rfc3550_jitter_ms_mean": round(statistics.fmean(rfc_j), 3)
            if rfc_j else None}


def udp_drops() -> int:
    """The kernel's UDP ``RcvbufErrors`` counter (all sockets of the machine)."""
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
                 if line.startswith("Udp:")]
        return int(dict(zip(lines[0], lines[1]))["RcvbufErrors"])
    except (OSError, KeyError, IndexError, ValueError):
        return 0


def logged_ports(run: Path, count: int, proc: subprocess.Popen, timeout: float) -> List[int]:
    """The ``RELAYPORT n`` lines SIPp's caller logged, once there are ``count``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ports: List[int] = []
        for log in run.glob("*_logs.log"):
            ports += [int(p) for p in re.findall(r"RELAYPORT (\d+)", log.read_text(errors="replace"))]
        if len(ports) >= count:
            return ports[:count]
        if proc.poll() is not None:
            raise RuntimeError(f"the SIPp caller exited early ({proc.returncode}) in {run}")
        time.sleep(0.1)  # condition wait: polling SIPp's log
    raise RuntimeError(f"only {len(ports)} of {count} calls were set up in {timeout} s")


def media_phase(work: Path, tag: str, procs: Procs, sock: socket.socket, remote: str,
                ruri: str, phone_port: int, args: argparse.Namespace,
                server: Optional[subprocess.Popen] = None, base: str = "") -> Dict[str, Any]:
    """``--media-calls`` calls at once from a SIPp caller (``caller_rtp.xml``:
    its SDP names ``sock``) to a SIPp phone with ``-rtp_echo``; RTP for
    ``--media-seconds`` to the port each call's 200 named; then BYE."""
    run = work / f"media-{tag}"
    run.mkdir()
    calls, seconds = args.media_calls, args.media_seconds
    hold_ms = int((seconds + 25) * 1000)
    bound = seconds + 90
    echo = free_port()
    phone = procs.start(["sipp", "-sf", str(SCENARIOS / "phone.xml"), "-i", "127.0.0.1",
                         "-p", str(phone_port), "-m", str(calls), "-nostdin", "-timeout",
                         f"{int(bound)}s", "-rtp_echo", "-mp", str(echo), "-mi", "127.0.0.1"],
                        run / "phone.txt", cwd=run)
    wait_udp(phone_port, phone)
    scenario = run / "caller_rtp.xml"
    scenario.write_text((SCENARIOS / "caller_rtp.xml").read_text())
    port = sock.getsockname()[1]
    caller = procs.start(["sipp", remote, "-sf", str(scenario), "-key", "ruri", ruri,
                          "-key", "rtp_port", str(port), "-i", "127.0.0.1", "-p",
                          str(free_port()), "-m", str(calls), "-l", str(calls), "-r", "50",
                          "-d", str(hold_ms), "-nostdin", "-timeout", f"{int(bound)}s",
                          "-timeout_error", "-trace_logs", "-trace_stat", "-fd", "1"],
                         run / "caller.txt", cwd=run)
    setup_started = time.monotonic()
    ports = logged_ports(run, calls, caller, 20)
    setup_s = time.monotonic() - setup_started
    targets = [("127.0.0.1", p) for p in ports]
    result: Dict[str, Any] = {"calls": calls, "setup_s": round(setup_s, 2),
                              "distinct_ports": len(set(ports))}
    cpu0 = cpu_seconds(server.pid) if server is not None else None
    drops0 = udp_drops()
    t0 = time.monotonic()
    result["rtp"] = rtp_streams(sock, targets, seconds)
    wall = time.monotonic() - t0
    # datagrams the kernel dropped for full receive buffers, machine-wide
    # (other people's programs included): where lost packets went
    result["kernel_udp_rcvbuf_drops"] = udp_drops() - drops0
    if server is not None:
        cpu = cpu_seconds(server.pid) - cpu0
        result["server_cpu_s"] = round(cpu, 3)
        result["server_cpu_percent_of_a_core"] = round(100 * cpu / wall, 1)
        result["server_cpu_ms_per_call_second"] = round(1000 * cpu / wall / calls, 3)
        with urllib.request.urlopen(base + "/api/stats", timeout=10) as resp:
            sip = json.loads(resp.read()).get("sip") or {}
        result["relay_during"] = {k: v for k, v in sip.items() if k.startswith("relay_")}
    rc = caller.wait(bound + 30)
    result["caller_rc"] = rc
    phone.wait(30)
    if server is not None:
        with urllib.request.urlopen(base + "/api/stats", timeout=10) as resp:
            sip = json.loads(resp.read()).get("sip") or {}
        result["relay_after"] = {k: v for k, v in sip.items() if k.startswith("relay_")}
    return result


def media_bench(args: argparse.Namespace) -> Dict[str, Any]:
    """Direct, then relayed; see the module docstring."""
    work = Path(tempfile.mkdtemp(prefix="sip-media-bench-"))
    procs = Procs()
    if args.nice is not None:
        # this process (the RTP streams) and every one it starts alike, so
        # that direct and relayed get the same share of a busy machine
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        procs.nice = args.nice
    results: Dict[str, Any] = {"loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.bind(("127.0.0.1", 0))
        ports = relay_range()
        server, base, bridge, phone_port, sip_port = start_tunnel(work, procs, [
            "--relay", "127.0.0.1", "--relay-ports", ports,
            "--relay-calls", str(max(200, 2 * args.media_calls))])
        results["relay_ports"] = ports
        direct_port = free_port()
        results["direct"] = media_phase(work, "direct", procs, sock,
                                        f"127.0.0.1:{direct_port}",
                                        f"sip:uas@127.0.0.1:{direct_port}", direct_port, args)
        results["relayed"] = media_phase(work, "relayed", procs, sock,
                                         f"127.0.0.1:{sip_port}", "sip:bob@localhost",
                                         phone_port, args, server, base)
    finally:
        sock.close()
        procs.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}", file=sys.stderr)
    d, r = results["direct"]["rtp"], results["relayed"]["rtp"]
    results["added_jitter_p99_ms"] = round(r["jitter_ms"]["p99"] - d["jitter_ms"]["p99"], 3) \
        if r["jitter_ms"].get("n") and d["jitter_ms"].get("n") else None
    results["added_rtt_p50_ms"] = round(r["rtt_ms"]["p50"] - d["rtt_ms"]["p50"], 3) \
        if r["rtt_ms"].get("n") and d["rtt_ms"].get("n") else None
    results["machine"] = machine()
    results["command"] = "python bench/sip_bench.py " + " ".join(sys.argv[1:])
    results["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results["args"] = vars(args)
    return results


def media_table(r: Dict[str, Any]) -> str:
    lines = []
    for tag in ("direct", "relayed"):
        p = r[tag]
        t = p["rtp"]
        lines.append(f"{tag}: {p['calls']} calls (set up in {p['setup_s']} s, "
                     f"{p['distinct_ports']} distinct media ports), SIPp caller rc "
                     f"{p['caller_rc']}")
        lines.append(f"  RTP {t['streams']} streams x {t['seconds']} s: sent {t['sent']} "
                     f"received {t['received']} lost {t['lost']}; kernel UDP buffer drops "
                     f"{p['kernel_udp_rcvbuf_drops']}")
        lines.append(f"  round trip ms {t['rtt_ms']}")
        lines.append(f"  jitter |D| ms {t['jitter_ms']} (RFC 3550 J mean "
                     f"{t['rfc3550_jitter_ms_mean']} ms)")
        if "server_cpu_s" in p:
            lines.append(f"  server CPU {p['server_cpu_s']} s = "
                         f"{p['server_cpu_percent_of_a_core']} % of a core, "
                         f"{p['server_cpu_ms_per_call_second']} ms per call per second")
            lines.append(f"  relay during {p['relay_during']}")
            lines.append(f"  relay after  {p['relay_after']}")
    lines.append(f"added jitter p99: {r['added_jitter_p99_ms']} ms; added round trip p50: "
                 f"{r['added_rtt_p50_ms']} ms (the echo crosses the relay twice)")
    return "\n".join(lines)


def media_markdown(r: Dict[str, Any]) -> str:
    m = r["machine"]
    d, x = r["direct"], r["relayed"]
    dt, xt = d["rtp"], x["rtp"]
    rows = [
        "| figure | SIPp -> SIPp direct | through the relay (proxy, bridge, relay ports) |",
        "|---|---|---|",
        f"| calls at once, each 50 RTP packets/s both ways for {dt['seconds']:g} s "
        f"| {d['calls']} | {x['calls']} ({x['distinct_ports']} relay ports facing the caller) |",
        f"| RTP packets sent / echoed back / lost | {dt['sent']} / {dt['received']} / "
        f"{dt['lost']} | {xt['sent']} / {xt['received']} / {xt['lost']} |",
        f"| the relay: packets taken / forwarded (both ways) | | "
        f"{x['relay_after'].get('relay_received')} / {x['relay_after'].get('relay_forwarded')} |",
        f"| UDP datagrams the kernel dropped (full buffers, whole machine) | "
        f"{d['kernel_udp_rcvbuf_drops']} | {x['kernel_udp_rcvbuf_drops']} |",
        f"| jitter sample abs(D) (RFC 3550), ms: p50 / p99 / max | {dt['jitter_ms']['p50']} / "
        f"{dt['jitter_ms']['p99']} / {dt['jitter_ms']['max']} | {xt['jitter_ms']['p50']} / "
        f"{xt['jitter_ms']['p99']} / {xt['jitter_ms']['max']} |",
        f"| added jitter p99 (relayed - direct) | | {r['added_jitter_p99_ms']} ms |",
        f"| round trip, ms: p50 / p99 | {dt['rtt_ms']['p50']} / {dt['rtt_ms']['p99']} | "
        f"{xt['rtt_ms']['p50']} / {xt['rtt_ms']['p99']} |",
        f"| server CPU while the media flowed | | {x['server_cpu_percent_of_a_core']} % of a core"
        f" = {x['server_cpu_ms_per_call_second']} ms per call per second |",
        f"| relayed calls during / after the BYEs | | {x['relay_during'].get('relay_calls')} / "
        f"{x['relay_after'].get('relay_calls')} (port pairs in use after: "
        f"{x['relay_after'].get('relay_port_pairs_in_use')}) |",
    ]
    return "\n".join([
        "## SIP media relay",
        "",
        f"Command: `{r['command'].strip()}`  ",
        f"Date: {r['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}, Python {m['python']}, "
        f"Twisted {m['twisted']}, {m['sipp']}; load average at the start "
        f"{r['loadavg_at_start']}, at the end {m['loadavg_at_end']}; nice "
        f"{r['args'].get('nice')}",
        "",
        *rows,
        "",
    ])


def machine() -> Dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    sipp = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout
    m = re.search(r"SIPp v[\w.\-]+", sipp)
    import twisted
    load = os.getloadavg()
    return {"cpu": cpu, "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "twisted": twisted.__version__,
            "sipp": m.group(0) if m else "?", "loadavg_at_end": [round(x, 2) for x in load]}


def table(r: Dict[str, Any]) -> str:
    lines = []
    d, t = r["direct_probe"], r["tunnel_probe"]
    lines.append(f"probe ({d['calls']} sequential calls, perf_counter): failed direct "
                 f"{d['failed']} tunnel {t['failed']}")
    for what in ("setup_ms", "bye_ms"):
        ds, ts = d[what], t[what]
        if ds.get("n") and ts.get("n"):
            lines.append(f"  {what:<17} direct mean {ds['mean']:>7} p50 {ds['p50']:>7} "
                         f"p95 {ds['p95']:>7} | tunnel mean {ts['mean']:>7} p50 {ts['p50']:>7} "
                         f"p95 {ts['p95']:>7} p99 {ts['p99']:>7}")
    for phase in ("latency", "rate"):
        d, t = r[f"direct_{phase}"], r[f"tunnel_{phase}"]
        lines.append(f"{phase} run: direct {d['successful']} ok / {d['failed']} failed, "
                     f"tunnel {t['successful']} ok / {t['failed']} failed")
        lines.append(f"  calls/s           direct {d['calls_per_s']:>8}   tunnel {t['calls_per_s']:>8}")
        for what in ("setup_ms", "bye_ms"):
            ds, ts = d[what], t[what]
            if ds.get("n") and ts.get("n"):
                lines.append(f"  {what:<17} direct mean {ds['mean']:>6} p50 {ds['p50']:>5} "
                             f"p95 {ds['p95']:>5} | tunnel mean {ts['mean']:>6} p50 "
                             f"{ts['p50']:>5} p95 {ts['p95']:>5} p99 {ts['p99']:>5}")
        lines.append(f"  CPU per call      server {t.get('server_cpu_ms_per_call')} ms, "
                     f"bridge {t.get('bridge_cpu_ms_per_call')} ms")
    lines.append(f"added per hop (round trip through one of the 2 added hops): "
                 f"{r['added_ms_per_hop']} ms")
    lines.append(f"tunnel/direct calls per second: {r['rate_ratio']}")
    lines.append(f"proxy transactions right after: {r['server_stats_after']}; "
                 f"all gone after {r['drained_after_s']} s")
    return "\n".join(lines)


def markdown(r: Dict[str, Any]) -> str:
    m = r["machine"]
    d, t = r["direct_latency"], r["tunnel_latency"]
    dr, tr = r["direct_rate"], r["tunnel_rate"]
    pd, pt = r["direct_probe"], r["tunnel_probe"]
    added = r["added_ms_per_hop"]
    a = r["args"]
    rows = [
        "| figure | SIPp -> SIPp direct | SIPp -> proxy -> tunnel -> bridge -> SIPp | tunnel / direct |",
        "|---|---|---|---|",
        f"| calls/s completed (offered {a['rate']}/s, <= {a['limit']} at once, {a['calls']} calls) "
        f"| {dr['calls_per_s']} | {tr['calls_per_s']} | {r['rate_ratio']} |",
        f"| INVITE -> 200, Python probe, one call at a time ({a['probe_calls']} calls): "
        f"mean / p50 / p95 ms | {pd['setup_ms']['mean']} / {pd['setup_ms']['p50']} / "
        f"{pd['setup_ms']['p95']} | {pt['setup_ms']['mean']} / {pt['setup_ms']['p50']} / "
        f"{pt['setup_ms']['p95']} | |",
        f"| BYE -> 200, Python probe: mean / p50 / p95 ms | {pd['bye_ms']['mean']} / "
        f"{pd['bye_ms']['p50']} / {pd['bye_ms']['p95']} | {pt['bye_ms']['mean']} / "
        f"{pt['bye_ms']['p50']} / {pt['bye_ms']['p95']} | |",
        f"| added round trip per added hop (2 hops: proxy, bridge), probe: INVITE -> 200 / "
        f"BYE -> 200 | | {added.get('probe_setup_ms')} / {added.get('probe_bye_ms')} ms | |",
        f"| INVITE -> 200, SIPp ({a['lat_calls']} calls at {a['lat_rate']}/s, <= "
        f"{a['lat_limit']} at once; whole ms): mean / p50 / p95 "
        f"| {d['setup_ms']['mean']} / {d['setup_ms']['p50']:g} / {d['setup_ms']['p95']:g} "
        f"| {t['setup_ms']['mean']} / {t['setup_ms']['p50']:g} / {t['setup_ms']['p95']:g} | |",
        f"| BYE -> 200, SIPp: mean / p50 / p95 ms | {d['bye_ms']['mean']} / "
        f"{d['bye_ms']['p50']:g} / {d['bye_ms']['p95']:g} | {t['bye_ms']['mean']} / "
        f"{t['bye_ms']['p50']:g} / {t['bye_ms']['p95']:g} | |",
        f"| INVITE -> 200 in the rate run, SIPp: mean / p95 ms | {dr['setup_ms']['mean']} / "
        f"{dr['setup_ms']['p95']:g} | {tr['setup_ms']['mean']} / {tr['setup_ms']['p95']:g} | |",
        f"| CPU per call (rate run): server / bridge | | {tr['server_cpu_ms_per_call']} / "
        f"{tr['bridge_cpu_ms_per_call']} ms | |",
        f"| proxy transactions right after the runs -> all gone after | | "
        f"{r['server_stats_after'].get('server_transactions')} server + "
        f"{r['server_stats_after'].get('client_transactions')} client -> "
        f"{r['drained_after_s']} s | |",
        f"| failed calls (all runs) | {d['failed'] + dr['failed'] + pd['failed']} | "
        f"{t['failed'] + tr['failed'] + pt['failed']} | |",
    ]
    return "\n".join([
        "## SIP",
        "",
        f"Command: `{r['command'].strip()}`  ",
        f"Date: {r['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}, Python {m['python']}, "
        f"Twisted {m['twisted']}, {m['sipp']}; load average at the end {m['loadavg_at_end']}",
        "",
        *rows,
        "",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000, help="calls in the rate run")
    p.add_argument("--rate", type=float, default=1000, help="calls/s offered in the rate run")
    p.add_argument("--limit", type=int, default=40, help="calls at once in the rate run")
    p.add_argument("--lat-calls", type=int, default=300, help="calls in the latency run")
    p.add_argument("--lat-rate", type=float, default=30, help="calls/s in the latency run")
    p.add_argument("--lat-limit", type=int, default=5, help="calls at once in the latency run")
    p.add_argument("--probe-calls", type=int, default=200,
                   help="sequential calls of the Python probe")
    p.add_argument("--timeout", type=float, default=120, help="bound of each SIPp run, s")
    p.add_argument("--quick", action="store_true", help="a smoke run (small numbers)")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--media", action="store_true",
                   help="RTP through the media relay against direct, instead of calls/s")
    p.add_argument("--media-calls", type=int, default=100, help="calls at once with RTP")
    p.add_argument("--media-seconds", type=float, default=30, help="seconds of RTP")
    p.add_argument("--nice", type=int, default=None,
                   help="--media: nice value of this process and all it starts (a negative"
                        " one needs root; it keeps other people's load on a shared machine"
                        " from being measured as the relay's jitter)")
    p.add_argument("--markdown", action="store_true", help="print the docs section too")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = p.parse_args()
    if shutil.which("sipp") is None:
        sys.exit("sipp is not installed (Debian: apt-get install sip-tester)")
    if args.quick:
        args.calls, args.rate, args.limit = 100, 100, 10
        args.lat_calls, args.lat_rate, args.probe_calls = 40, 20, 30
        args.media_calls, args.media_seconds = 10, 5
    if args.media:
        if not 1 <= args.media_calls <= 400 or not 1 <= args.media_seconds <= 300:
            sys.exit("--media-calls must be 1 to 400 and --media-seconds 1 to 300")
        if args.out == DEFAULT_OUT:
            args.out = str(ROOT / "bench" / "results" / "sip_media.json")
        results = media_bench(args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(media_table(results))
        if args.markdown:
            print()
            print(media_markdown(results))
        return
    results = bench(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(table(results))
    if args.markdown:
        print()
        print(markdown(results))


if __name__ == "__main__":
    main()
