"""Benchmark: what one group commit of the stream states costs.

    .venv/bin/python bench/bench_state.py [--streams 1000] [--changed 64] [--repeats 200]
        [--dir DIR]

`--streams` streams with a 1×32 LSTM state (h and c, [1, 32] float32 each), of which `--changed`
changed since the last commit (one worker batch). Compared: a full snapshot of every stream
(`StateStore.save`, temporary file + fsync + rename: what the daemon did before it had a
journal), and one journal append of the changed streams (`StateStore.commit`), with and without
fsync. Median and p99 milliseconds per commit; the directory defaults to a temporary one (pass
`--dir` to measure the disk the state will live on).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.state import StateStore


def store(n: int, fsync: bool) -> StateStore:
    zero = [np.zeros((1, 32), np.float32), np.zeros((1, 32), np.float32)]
    s = StateStore("bench", zero, fsync=fsync)
    rng = np.random.default_rng(0)
    for i in range(n):
        st = s.create(f"sensor-{i:05d}")
        st.state = [rng.normal(size=(1, 32)).astype(np.float32) for _ in range(2)]
        s.advance(f"sensor-{i:05d}", 1.3e9)
    return s


def timed(fn: object, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(1000 * (time.perf_counter() - t0))
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--changed", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args(argv)
    base = Path(a.dir or tempfile.mkdtemp(prefix="statecast-bench-state-"))
    rows = []
    for label, fsync, journal in (
        ("full snapshot (save), fsync", True, False),
        ("journal append (commit), fsync", True, True),
        ("journal append (commit), no fsync", False, True),
    ):
        d = base / label.split()[0] / ("f" if fsync else "n")
        s = store(a.streams, fsync)
        s.commit(d, snapshot=True)
        names = list(s.streams)
        k = 0

        def one(
            s: StateStore = s, d: Path = d, journal: bool = journal, names: list[str] = names
        ) -> None:
            nonlocal k
            for j in range(a.changed):
                name = names[(k + j) % len(names)]
                s.streams[name].state[0] += 1
                s.advance(name, 1.3e9)
            k += a.changed
            if journal:
                s.commit(d)
            else:
                s.save(d)

        ms = timed(one, a.repeats)
        rows.append((label, statistics.median(ms), ms[int(0.99 * (len(ms) - 1))]))
    print(f"{a.streams} streams, {a.changed} changed per commit, {a.repeats} commits, in {base}")
    print(f"{'commit':36} {'median ms':>10} {'p99 ms':>8}")
    for label, med, p99 in rows:
        print(f"{label:36} {med:10.3f} {p99:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
