"""Benchmark: the daemon's throughput from several checkouts, interleaved, in one run.

    .venv/bin/python bench/bench_trees.py . ../other-checkout ".:--mqtt-version 5" [--reps 3]

Each argument is a checkout (its `edge/` runs the daemon) optionally followed by `:` and extra
daemon flags. Runs alternate between the trees so that a VM that speeds up or slows down during
the run affects them all alike; the medians are what to compare. 1,000 streams, the 2×32 LSTM
of bench_daemon.py, QoS 0 and 1. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench.bench_daemon as bd
from bench.broker import Mosquitto, find_mosquitto
from bench.models import export_pair, keras_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trees", nargs="+", metavar="DIR[:FLAGS]")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--streams", type=int, default=1000)
    args = p.parse_args()
    binary = find_mosquitto()
    if binary is None:
        sys.exit("bench_trees: mosquitto not found")
    rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        d.chmod(0o755)
        _, lstm = export_pair(keras_model(2, 32, 1, 6), d, "lstm")
        broker = Mosquitto(binary, d / "mosquitto")
        broker.start()
        n = 0
        try:
            for _ in range(args.reps):
                for spec in args.trees:
                    root, _, flags = spec.partition(":")
                    bd.ROOT = Path(root).resolve()
                    for qos in (0, 1):
                        n += 1
                        r = bd.throughput(lstm, broker.port, f"tree{n}", args.streams, qos,
                                          args.seconds, 2000, flags.split())
                        rates.setdefault((spec, qos), []).append(r["obs_per_s"])
                        print(f"  {spec} QoS {qos}: {r['obs_per_s']:,.0f} obs/s", file=sys.stderr)
        finally:
            broker.stop()
    print(f"\n{args.streams} streams, median of {args.reps} interleaved runs (obs/s)")
    print("| tree | QoS 0 | QoS 1 |\n|---|---|---|")
    for spec in args.trees:
        q0, q1 = (statistics.median(rates[(spec, q)]) for q in (0, 1))
        print(f"| {spec} | {q0:,.0f} | {q1:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
