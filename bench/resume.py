#!/usr/bin/env python3
"""Session setup cost: password logins (scrypt) against resume tokens
(SHA-256), in one run against the real server.  Not a test: run by hand.

    python bench/resume.py                 # 500 logins, then 5,000 resumes
    python bench/resume.py -n 200 --resumes 200 --conc 32

It starts ``twistd -n presence`` on a free loopback port with the DEFAULT
``--hash-cost`` (the point is scrypt's cost; bench/run.py uses cost 1) and
the fixed-port listeners and per-address limits off (bench/run.py's
``presence_off_flags``), registers --users users, then:

  1. logins: N ``POST /api/login`` with the password, over --conc
     keep-alive connections; each answer's resume token is kept;
  2. resumes: --resumes ``POST /api/resume`` with those tokens (in turn),
     the same way.  More of them than logins, so that the CPU clock's 10-ms
     ticks are small beside the total; each user's sessions past the
     per-user bound end as ``replaced``, which the figure includes.

For each phase: sessions set up per second (N / wall time) and the server's
CPU per setup (utime + stime of the server process from /proc/<pid>/stat,
before and after, divided by N; the hashing threads are in the same
process).  Every answer must be 200, else the run fails.  The figures are
printed and written to --out (JSON).  The client runs on the same machine
and takes CPU from the server: the rates are a floor.

    python bench/resume.py --redis --against main --profile /tmp/prof

``--redis`` runs the node in cluster mode: a ``redis-server`` on a free
loopback port (append-only, as ``presence-cluster`` starts it) and the node
with ``--redis`` and ``--host-box`` (one box: the figures are a node's own
cost of a resume through Redis).  ``--against REV`` runs the same phases a
second time, in the same run, against the server of git revision REV
(``git archive`` of its ``presence/`` and ``twisted/``, on PYTHONPATH), so
that the figures are a ratio (``--rounds`` times each, in turn: the
medians).  ``--profile DIR`` runs each server under
cProfile, on during the resumes only, and writes ``DIR/<label>.prof``.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlencode

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import ROOT, ServerProc, log, presence_off_flags  # noqa: E402

mono = time.monotonic
PASSWORD = "bench-resume-pw"


class Connection:
    """One keep-alive HTTP/1.1 connection: a request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, form: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        body = urlencode(form).encode("ascii")
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: "
            b"application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s"
            % (path.encode("ascii"), self.port, len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        else:                                   # chunked
            data = b""
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def run_phase(port: int, path: str, forms: list, conc: int) -> list:
    """POST every form of ``forms`` to ``path`` over ``conc`` connections;
    the decoded answers, in order."""
    answers: list = [None] * len(forms)
    queue = list(enumerate(forms))[::-1]

    async def worker() -> None:
        conn = Connection(port)
        try:
            while queue:
                i, form = queue.pop()
                status, data = await conn.post(path, form)
                if status != 200:
                    raise RuntimeError(f"{path}: HTTP {status}: {data[:200]!r}")
                answers[i] = json.loads(data)
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(conc)))
    return answers


async def measure(server: ServerProc, what: str, path: str, forms: list, conc: int) -> tuple:
    before = server.status()["cpu_s"]
    t0 = mono()
    answers = await run_phase(server.port, path, forms, conc)
    wall = mono() - t0
    cpu = server.status()["cpu_s"] - before
    n = len(forms)
    figures = {"n": n, "wall_s": round(wall, 3), "setups_per_s": round(n / wall, 1),
               "server_cpu_s": round(cpu, 3), "cpu_ms_per_setup": round(1000 * cpu / n, 3)}
    log(f"{what}: {figures}")
    return figures, answers


def fs_type(path: str) -> str:
    """The file system the directory's SQLite file is on (its fsyncs)."""
    best, kind = "", "?"
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and path.startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


# cProfile in the server, on between SIGUSR1 and SIGUSR2 (which writes it)
PROFILED = """
import cProfile, signal, sys, time
from twisted.internet import reactor
from twisted.scripts.twistd import run
out = sys.argv.pop(1)
profile = cProfile.Profile(time.process_time)   # CPU, not the wall clock
def on(*_):
    profile.enable()
def off(*_):
    profile.disable()
    profile.dump_stats(out)
def install():
    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
reactor.callWhenRunning(install)
run()
"""


def start_redis(workdir: str) -> tuple:
    """A redis-server on a free loopback port, as presence-cluster starts it."""
    from presence.cli.cluster import _ping, free_port
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes",
         "--save", "", "--dir", workdir, "--logfile", "redis.log"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = mono() + 30
    while not _ping(port):
        if proc.poll() is not None or mono() > deadline:
            proc.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)   # polling a condition, with a deadline
    return proc, f"redis://127.0.0.1:{port}/0"


def tree_of(rev: str, workdir: str) -> str:
    """The ``presence/`` and ``twisted/`` of git revision ``rev``, unpacked."""
    tree = os.path.join(workdir, "tree")
    os.makedirs(tree)
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "presence", "twisted"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


async def main_async(args: argparse.Namespace) -> dict:
    if not args.against:
        return await one_server(args, ROOT, "this-tree")
    # the two servers in turn, --rounds times (the machine's load moves)
    runs: dict = {"this tree": [], args.against: []}
    with tempfile.TemporaryDirectory(prefix="presence-bench-resume-rev-") as tmp:
        trees = {"this tree": ROOT, args.against: tree_of(args.against, tmp)}
        for i in range(args.rounds):
            for label, tree in trees.items():
                runs[label].append(await one_server(args, tree, f"{label[:4]}-{i}"))
    results: dict = {"runs": runs}
    for figure in ("setups_per_s", "cpu_ms_per_setup"):
        medians = [statistics.median(r["resume"][figure] for r in runs[label])
                   for label in runs]
        results["median_" + figure] = dict(zip(runs, medians))
        results["ratio_" + figure] = round(medians[0] / medians[1], 3)
    log(f"resumes, medians of {args.rounds}: "
        f"{ {k: v for k, v in results.items() if k != 'runs'} }")
    return results


async def one_server(args: argparse.Namespace, tree: str, label: str) -> dict:
    from presence.cli.cluster import free_port
    twistd = shutil.which("twistd") or os.path.join(os.path.dirname(sys.executable), "twistd")
    workdir = tempfile.mkdtemp(prefix="presence-bench-resume-")
    data = os.path.join(workdir, "data")
    redis = None
    listen = ["--http", "tcp:0:interface=127.0.0.1"]
    if args.redis:
        redis, url = start_redis(workdir)
        port = free_port()
        listen = ["--http", f"tcp:{port}:interface=127.0.0.1", "--redis", url,
                  "--host-box", f"127.0.0.1:{port}"]
    head = [twistd]
    prof = None
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        prof = os.path.join(os.path.abspath(args.profile), label + ".prof")
        head = [sys.executable, "-c", PROFILED, prof]
    argv = head + ["-n", "--pidfile", os.path.join(workdir, "presence.pid"), "presence",
                   "--data", data] + listen + presence_off_flags(twistd)
    server = ServerProc("presence", argv, r"presence ready .*?http=[\d.]+:(\d+)", workdir,
                        "presence", env={"PYTHONPATH": tree})
    try:
        await server.start()
        names = [f"r{i:04d}" for i in range(args.users)]
        conn = Connection(server.port)
        for name in names:   # one scrypt each, at the default cost
            status, body = await conn.post("/api/register",
                                           {"username": name, "password": PASSWORD})
            if status != 201:
                raise RuntimeError(f"register {name}: HTTP {status}: {body[:200]!r}")
        conn.close()
        logins = [{"username": names[i % len(names)], "password": PASSWORD}
                  for i in range(args.n)]
        login, answers = await measure(server, "password logins", "/api/login", logins,
                                       args.conc)
        tokens = [{"token": answers[i % len(answers)]["resume"]} for i in range(args.resumes)]
        if prof:
            os.kill(server.proc.pid, signal.SIGUSR1)
        resume, again = await measure(server, "resumes", "/api/resume", tokens, args.conc)
        if prof:
            os.kill(server.proc.pid, signal.SIGUSR2)
        assert all(a["resume"] == t["token"] for a, t in zip(again, tokens))
        stats = server.stats()
    finally:
        server.stop()
        if redis is not None:
            redis.terminate()
            redis.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or
                    platform.machine(), "python": platform.python_version(),
                    "system": platform.platform()},
        "command": " ".join(["python", "bench/resume.py"] + sys.argv[1:]),
        "tree": tree, "cluster": bool(args.redis), "load_average": os.getloadavg(),
        "hash_cost": "default", "data_dir_fs": fs_type(workdir), "users": args.users,
        "connections": args.conc,
        "login": login, "resume": resume,
        "ratio_setups_per_s": round(resume["setups_per_s"] / login["setups_per_s"], 1),
        "ratio_cpu_per_setup": round(login["cpu_ms_per_setup"]
                                     / max(resume["cpu_ms_per_setup"], 1e-9), 1),
        "sessions_at_end": stats.get("sessions"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=500, help="logins, and as many resumes (%(default)s)")
    p.add_argument("--resumes", type=int, default=5000,
                   help="resumes, with the logins' tokens in turn (%(default)s)")
    p.add_argument("--users", type=int, default=50,
                   help="users registered (each login is one device of one of them)")
    p.add_argument("--conc", type=int, default=16, help="keep-alive connections (%(default)s)")
    p.add_argument("--out", default="bench-resume.json", help="JSON results (%(default)s)")
    p.add_argument("--redis", action="store_true",
                   help="cluster mode: a redis-server and the node with --redis")
    p.add_argument("--against", metavar="REV",
                   help="the same phases against the server of git revision REV too")
    p.add_argument("--profile", metavar="DIR", help="cProfile of the resumes into DIR")
    p.add_argument("--rounds", type=int, default=3,
                   help="with --against: each server this many times, in turn (%(default)s)")
    args = p.parse_args()
    if (not 1 <= args.users <= args.n <= 100000 or not 1 <= args.conc <= 60
            or not 1 <= args.resumes <= 1000000):
        p.error("need 1 <= --users <= -n <= 100000, 1 <= --resumes <= 1000000 and"
                " 1 <= --conc <= 60 (the server hashes at most 64 passwords at once)")
    results = asyncio.run(main_async(args))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
