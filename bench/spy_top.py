#!/usr/bin/env python3
"""Summarize a py-spy ``--format raw`` profile (as ``bench/run.py --profile``
writes): where the sampled CPU time went, by function.

    python bench/spy_top.py DIR/presence-presence-main-rate.txt [--top 25] [--grep presence/]

Self: samples whose innermost frame is the function.  Inclusive: samples
with the function anywhere on the stack (counted once per sample).  Line
numbers are folded away so a function is one row.
"""
from __future__ import annotations

import argparse
import collections
import re

FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def norm(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    func, path = m.groups()
    for cut in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if cut in path:
            path = path.split(cut, 1)[1]
    return f"{func} ({path})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--grep", default="", help="inclusive table: only functions whose path has this")
    a = ap.parse_args()
    self_c: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    with open(a.file) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(n)
            total += n
            frames = [norm(x) for x in stack.split(";")]
            self_c[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    print(f"{total} samples")
    print("\nself time")
    for fr, n in self_c.most_common(a.top):
        print(f"{100 * n / total:6.1f}%  {fr}")
    print("\ninclusive time" + (f" ({a.grep})" if a.grep else ""))
    rows = [(fr, n) for fr, n in incl.most_common() if a.grep in fr]
    for fr, n in rows[:a.top]:
        print(f"{100 * n / total:6.1f}%  {fr}")


if __name__ == "__main__":
    main()
