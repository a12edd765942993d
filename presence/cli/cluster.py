"""``presence-cluster``: a whole cluster on one machine, for development and
benchmarks (docs/cluster.md, "One command").

    presence-cluster --nodes 3 --port 8080 --data ./presence-cluster

starts a ``redis-server`` (unless ``--redis`` names one) on a free loopback
port with append-only persistence under ``--data``, then ``--nodes`` nodes
(``twistd -n presence --redis ... --host-box HOST:PORT``) on consecutive
ports from ``--port``, waits until each logs ``presence ready``, prints where
everything is, and stops them all (nodes first, then Redis) on Ctrl-C or
SIGTERM, or as soon as one of them exits on its own.  Arguments after
``--`` go to every node (``-- --keepalive 10``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional, Sequence

#: seconds a node or Redis may take to be ready
START_TIMEOUT = 60.0
#: seconds a process may take to stop before it is killed
STOP_TIMEOUT = 15.0
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="presence-cluster",
        description="Start a Redis and several presence nodes on this machine; Ctrl-C"
                    " stops them all.")
    parser.add_argument("--nodes", type=int, default=2, help="how many nodes (default 2)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address the nodes listen on and are reached at"
                             " (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080,
                        help="the first node's HTTP port; the others follow (default 8080)")
    parser.add_argument("--admin-port", type=int, default=None,
                        help="the first node's operator endpoint (--admin, on 127.0.0.1);"
                             " the others follow (default: --port + 1000; 0 turns it off)")
    parser.add_argument("--redis", default=None,
                        help="use this Redis (redis://... or unix:...) instead of starting one")
    parser.add_argument("--data", default="./presence-cluster",
                        help="where the nodes' directories, logs and Redis's files go")
    parser.add_argument("node_args", nargs="*",
                        help="after --: more options for every node")
    return parser


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Cluster:
    def __init__(self, options: argparse.Namespace, out=sys.stdout) -> None:
        self.options = options
        self.out = out
        self.data = os.path.abspath(options.data)
        self.redis: Optional[subprocess.Popen] = None
        self.nodes: List[subprocess.Popen] = []
        self.logs: List[str] = []

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def start_redis(self) -> str:
        program = shutil.which("redis-server")
        if program is None:
            raise SystemExit("presence-cluster: no redis-server on PATH: install it, or give"
                             " --redis URL of a running one")
        directory = os.path.join(self.data, "redis")
        os.makedirs(directory, exist_ok=True)
        port = free_port()
        self.redis = subprocess.Popen(
            [program, "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--save", "", "--dir", directory, "--logfile", "redis.log"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            # Ctrl-C reaches this program only: Redis stops after the nodes
            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(port):
            if self.redis.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"presence-cluster: redis-server did not start; see"
                                 f" {os.path.join(directory, 'redis.log')}")
            time.sleep(0.05)   # polling a condition, with a deadline
        url = f"redis://127.0.0.1:{port}/0"
        self.say(f"redis    {url}  (appendonly, files in {directory})")
        return url

    def start_node(self, index: int, url: str) -> None:
        o = self.options
        port = o.port + index
        box = f"{o.host}:{port}"
        directory = os.path.join(self.data, f"node-{index + 1}")
        os.makedirs(directory, exist_ok=True)
        log = os.path.join(self.data, f"node-{index + 1}.log")
        with open(log, "ab"):
            pass
        start = os.path.getsize(log)
        admin = self.admin_port(index)
        args = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", f"--logfile={log}",
                "presence", "--http", f"tcp:{port}:interface={o.host}", "--data", directory,
                "--redis", url, "--host-box", box,
                "--admin", f"tcp:{admin}:interface=127.0.0.1" if admin else "none",
                *o.node_args]
        node = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(node)
        self.logs.append(log)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready(log, start):
            if node.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"presence-cluster: node {index + 1} ({box}) did not start;"
                                 f" see {log}")
            time.sleep(0.05)   # polling a condition, with a deadline
        where = f"  admin http://127.0.0.1:{admin}/" if admin else ""
        self.say(f"node {index + 1}   http://{box}/{where}  (log {log})")

    def admin_port(self, index: int) -> int:
        """Node ``index``'s operator port, 0 for none (one port per node: K
        nodes on one machine never share the default 8081)."""
        o = self.options
        first = o.port + 1000 if o.admin_port is None else o.admin_port
        return first + index if first else 0

    @staticmethod
    def _ready(log: str, start: int) -> bool:
        with open(log, "rb") as f:
            f.seek(start)
            return b"presence ready" in f.read()

    def stop(self) -> None:
        for node in self.nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in self.nodes:
            _wait(node)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.send_signal(signal.SIGTERM)
            _wait(self.redis)

    def run(self) -> int:
        o = self.options
        if not 1 <= o.nodes <= 64:
            raise SystemExit("presence-cluster: --nodes must be 1-64")
        if not 1 <= o.port <= 65535 - o.nodes:
            raise SystemExit("presence-cluster: --port leaves no room for the nodes")
        if o.admin_port is not None and not 0 <= o.admin_port <= 65535 - o.nodes or \
                o.admin_port is None and o.port + 1000 > 65535 - o.nodes:
            raise SystemExit("presence-cluster: --admin-port leaves no room for the nodes"
                             " (0 turns the operator endpoint off)")
        stopping = []

        def stop(signum, frame):
            stopping.append(signum)
        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            url = o.redis or self.start_redis()
            for i in range(o.nodes):
                if stopping:
                    break
                self.start_node(i, url)
            if not stopping:
                self.say(f"presence-cluster: {o.nodes} nodes ready; Ctrl-C stops them all")
            while not stopping:
                gone = [i for i, n in enumerate(self.nodes) if n.poll() is not None]
                if gone or (self.redis is not None and self.redis.poll() is not None):
                    self.say("presence-cluster: "
                             + (f"node {gone[0] + 1} exited" if gone else "redis-server exited")
                             + "; stopping the rest")
                    return 1
                time.sleep(0.2)   # waiting for a signal or a child's exit
            return 0
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.say("presence-cluster: stopped")


def _wait(process: subprocess.Popen) -> None:
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = build_parser().parse_args(argv)
    return Cluster(options).run()


if __name__ == "__main__":
    sys.exit(main())
