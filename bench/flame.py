"""Summaries of py-spy profiles (``py-spy record --format raw``: one collapsed stack per line).

The own time of the busiest functions and the inclusive time of the busiest frames, as
percentages of all samples: the text form of a flame graph that fits in a closing note.

    .venv/bin/python -m bench.flame PROFILE.txt [--top 15]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r" \((.*?):\d+\)")


def summarise(path: Path, top: int = 15) -> str:
    """Own and inclusive time per function (``name (file)``, line numbers folded) in `path`."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_LINE.sub(r" (\1)", f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples", "", "| own % | function |", "|---|---|"]
    lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in own.most_common(top)]
    lines += ["", "| inclusive % | frame |", "|---|---|"]
    skip = ("_bootstrap", "Thread.run", "_worker (", "_WorkItem.run", "<frozen", "runpy", "run_until_complete",
            "run_forever", "_run_once", "Runner.run", "run (asyncio", "Handle._run")
    busiest = [(f, n) for f, n in inclusive.most_common() if not any(s in f for s in skip)]
    lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in busiest[:top]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    for path in args.profiles:
        print(summarise(path, args.top))


if __name__ == "__main__":
    main()
