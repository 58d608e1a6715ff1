"""Benchmark: the daemon's own per-message path, without MQTT.

    .venv/bin/python bench/bench_processor.py [--streams 1000] [--rounds 30] [--slice 256]
        [--out bench/results/processor.json] [--scoring-cost]

`Processor.handle_many` — decode, checks, the batched step of a dynamic-batch graph, encode —
over rounds of one observation per stream, in slices of 256 as the worker takes them (`--slice`:
fewer streams stepped together, as when the worker finds fewer messages waiting); the
publisher is a list. Measured with orjson (what the daemon uses when it is installed) and with
the standard library's json (its fallback), the same messages, median of 5 runs each.
With `--scoring-cost`: self-scoring on and off, alternated, over a batch-1 and a dynamic-batch
graph (bench/results/processor-scoring.json). Prints a table and writes JSON. Not part of the test
suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from edge_models import build_model

import edge.codec
from edge.config import EdgeConfig
from edge.service import Processor, load_model

ROOT = Path(__file__).resolve().parents[1]


def run(model: Path, streams: int, rounds: int, scoring: bool = True, size: int = 256) -> float:
    """µs per message of handle_many over `rounds` rounds (after one warm-up round)."""
    cfg = EdgeConfig(model=str(model), subscribe=("in/+/temp",), client_id="bench",
                     scoring=scoring)
    m, freq = load_model(cfg)
    out: list[tuple[str, bytes]] = []

    def publish(topic: str, payload: bytes, qos: int) -> bool:
        out.append((topic, payload))
        return True

    proc = Processor(cfg, m, freq, publish)
    topics = [f"in/s{i}/temp" for i in range(streams)]
    msgs = [[(topics[i], b'{"ts":%d,"temp":%.1f}' % (3600 * (k + 1), 40 + i % 17))
             for i in range(streams)] for k in range(rounds + 1)]
    proc.handle_many(msgs[0])
    t0 = time.perf_counter()
    for batch in msgs[1:]:
        for j in range(0, streams, size):
            proc.handle_many(batch[j : j + size])
    dt = time.perf_counter() - t0
    assert proc.metrics.predictions_out == streams * (rounds + 1), "messages were dropped"
    return dt / (streams * rounds) * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--slice", type=int, default=256, help="messages per handle_many call")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/processor.json")
    p.add_argument("--scoring-cost", action="store_true", help="instead: self-scoring on and off "
                   "(--no-scoring), alternated, over a batch-1 and a dynamic-batch graph")
    args = p.parse_args()
    if args.scoring_cost:
        return scoring_cost(args)
    load_before = os.getloadavg()
    fast = (edge.codec._loads, edge.codec._dumps, edge.codec._FAST_ERRORS)

    def stdlib_loads(payload: bytes) -> Any:
        return json.loads(payload.decode("utf-8"))

    def stdlib_dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    slow = (stdlib_loads, stdlib_dumps, (ValueError, RecursionError))
    times: dict[str, list[float]] = {"orjson": [], "json": []}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "m.onnx", units=32, horizon=6, batch="dynamic",
                            model_id="bench")
        for _ in range(5):
            for name, impl in (("orjson", fast), ("json", slow)):
                edge.codec._loads, edge.codec._dumps, edge.codec._FAST_ERRORS = impl
                times[name].append(run(model, args.streams, args.rounds, size=args.slice))
        edge.codec._loads, edge.codec._dumps, edge.codec._FAST_ERRORS = fast
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
              "streams": args.streams, "us_per_message": med, "runs": times}
    print(f"\n{args.streams} streams, 1x32 LSTM (H=6), dynamic batch, slices of {args.slice}; load "
          f"{load_before[0]:.2f} before, {result['load_after'][0]:.2f} after")
    print("| JSON | µs per message in Processor.handle_many |")
    print("|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0


def scoring_cost(args: argparse.Namespace) -> int:
    """µs per message with and without self-scoring (alternated, median of 7), per graph."""
    load_before = os.getloadavg()
    result: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": load_before,
                              "streams": args.streams, "slice": args.slice}
    with tempfile.TemporaryDirectory() as tmp:
        for batch in ("1", "dynamic"):
            model = build_model(Path(tmp) / f"m{batch}.onnx", units=32, horizon=6, batch=batch,
                                model_id="bench")
            runs: dict[str, list[float]] = {"with": [], "without": []}
            for _ in range(7):
                runs["with"].append(run(model, args.streams, args.rounds, True, args.slice))
                runs["without"].append(run(model, args.streams, args.rounds, False, args.slice))
            med = {k: statistics.median(v) for k, v in runs.items()}
            result[batch] = {"us_per_message": med, "runs": runs,
                             "ratio": med["with"] / med["without"]}
    result["load_after"] = os.getloadavg()
    print(f"\n{args.streams} streams, 1x32 LSTM (H=6), slices of {args.slice}, median of 7 "
          f"alternated runs; load {load_before[0]:.2f} before, {result['load_after'][0]:.2f} after")
    print("| graph | µs/message with scoring | without | with / without |")
    print("|---|---|---|---|")
    for batch in ("1", "dynamic"):
        r = result[batch]
        print(f"| batch {batch} | {r['us_per_message']['with']:.1f} | "
              f"{r['us_per_message']['without']:.1f} | {r['ratio']:.2f} |")
    out = args.out.with_name("processor-scoring.json") if args.out.name == "processor.json" \
        else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
