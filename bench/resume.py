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
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from urllib.parse import urlencode

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import ServerProc, log, presence_off_flags  # noqa: E402

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


async def main_async(args: argparse.Namespace) -> dict:
    twistd = shutil.which("twistd") or os.path.join(os.path.dirname(sys.executable), "twistd")
    workdir = tempfile.mkdtemp(prefix="presence-bench-resume-")
    data = os.path.join(workdir, "data")
    argv = [twistd, "-n", "--pidfile", os.path.join(workdir, "presence.pid"), "presence",
            "--http", "tcp:0:interface=127.0.0.1", "--data", data] + presence_off_flags(twistd)
    server = ServerProc("presence", argv, r"presence ready http=[\d.]+:(\d+)", workdir,
                        "presence")
    await server.start()
    try:
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
        resume, again = await measure(server, "resumes", "/api/resume", tokens, args.conc)
        assert all(a["resume"] == t["token"] for a, t in zip(again, tokens))
        stats = server.stats()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or
                    platform.machine(), "python": platform.python_version(),
                    "system": platform.platform()},
        "command": " ".join(["python", "bench/resume.py"] + sys.argv[1:]),
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
