#!/usr/bin/env python3
"""Run ``twistd`` with a watch on the garbage collector: a diagnostic for
``bench/run.py --gc-watch``.  The server code is untouched; this only adds a
``gc.callbacks`` hook that times every collection and, once a second (from a
daemon thread), writes a summary to the JSON file named by
``PRESENCE_GCWATCH``:

    {"gen": {"0": [count, total_ms, max_ms], "1": [...], "2": [...]},
     "long": [[monotonic_start, generation, ms, collected], ...],   # >= 5 ms
     "objects": len(gc.get_objects()) at the last gen-2 collection}

    PRESENCE_GCWATCH=/tmp/gc.json python bench/gcwatch.py -n presence --http ...

On SIGUSR2 it also counts the objects the collector tracks, by type, into
``$PRESENCE_GCWATCH.objects.json`` (a one-off pause of its own: send it only
between phases).
"""
from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time

OUT = os.environ.get("PRESENCE_GCWATCH", "gcwatch.json")
gens = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
long_: list = []
state = {"t": 0.0, "objects": None}


def hook(phase: str, info: dict) -> None:
    if phase == "start":
        state["t"] = time.perf_counter()
        return
    ms = (time.perf_counter() - state["t"]) * 1000
    g = gens[info["generation"]]
    g[0] += 1
    g[1] += ms
    g[2] = max(g[2], ms)
    if ms >= 5:
        long_.append([round(time.monotonic() - ms / 1000, 4), info["generation"],
                      round(ms, 2), info.get("collected", 0)])
        del long_[:-500]


def dump() -> None:
    while True:
        time.sleep(1.0)
        try:
            with open(OUT + ".tmp", "w") as f:
                json.dump({"gen": {k: [v[0], round(v[1], 1), round(v[2], 2)]
                                   for k, v in gens.items()},
                           "long": long_, "threshold": gc.get_threshold(),
                           "count": gc.get_count()}, f)
            os.replace(OUT + ".tmp", OUT)
        except OSError:
            pass


def count_objects(signum, frame) -> None:
    import collections
    objs = gc.get_objects()
    c = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objs)
    out = {"tracked": len(objs), "allocated_blocks": sys.getallocatedblocks(),
           "by_type": c.most_common(40)}
    del objs
    with open(OUT + ".objects.json", "w") as f:
        json.dump(out, f)


def main() -> None:
    import signal
    gc.callbacks.append(hook)
    signal.signal(signal.SIGUSR2, count_objects)
    threading.Thread(target=dump, daemon=True, name="gcwatch").start()
    from twisted.scripts.twistd import run
    sys.argv = ["twistd"] + sys.argv[1:]
    run()


if __name__ == "__main__":
    main()
