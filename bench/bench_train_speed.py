"""Benchmark: how fast stateful training learns at batch 64 and 256 vs batch-1 online learning.

    .venv/bin/python bench/bench_train_speed.py [--epochs 60] [--epochs-online 6]
        [--out bench/results/train.json]

Same data (Seattle hourly temperatures, 1-hour horizon), same model (2×32 stateful LSTM,
lookback 24, learning rate 0.003), same seed; only the batch size changes. For each it reports
the median seconds per epoch (gradient steps alone, and with the validation pass) and the
wall-clock seconds (sum of epoch times) until the validation loss first reaches a common target:
the lowest validation loss that every batch size reaches within its epochs.
Prints a table and writes JSON. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import TrainConfig
from trainer.run import train

ROOT = Path(__file__).resolve().parents[1]


def history(data: Path, out: Path, batch: int, epochs: int) -> list[dict[str, float]]:
    cfg = TrainConfig(data=data, targets=["temp"], out=out, time_col="date", season=24,
                      quiet=True, horizon=1, epochs=epochs, batch_size=batch,
                      patience=epochs + 1, seed=0)
    train(cfg, log=lambda _: None)
    with open(out / "history.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--data", type=Path, default=ROOT / "examples/data/seattle-temps.csv")
    p.add_argument("--epochs", type=int, default=60, help="epochs at batch 64 and 256")
    p.add_argument("--epochs-online", type=int, default=15, help="epochs at batch 1")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/train.json")
    args = p.parse_args()
    runs: dict[int, list[dict[str, float]]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for batch, epochs in ((64, args.epochs), (256, args.epochs), (1, args.epochs_online)):
            runs[batch] = history(args.data, Path(tmp) / f"b{batch}", batch, epochs)
            print(f"  batch {batch}: {len(runs[batch])} epochs, best val_loss "
                  f"{min(h['val_loss'] for h in runs[batch]):.4f}", file=sys.stderr)
    target = max(min(h["val_loss"] for h in hist) for hist in runs.values())
    near = 1.1 * min(min(h["val_loss"] for h in hist) for hist in runs.values())

    def reach(hist: list[dict[str, float]], goal: float) -> tuple[float, int] | None:
        elapsed = 0.0
        for h in hist:
            elapsed += h["seconds"]
            if h["val_loss"] <= goal:
                return elapsed, int(h["epoch"])
        return None

    rows: list[dict[str, Any]] = []
    for batch, hist in runs.items():
        later = hist[1:] or hist  # epoch 1 includes tracing
        common, best = reach(hist, target), reach(hist, near)
        rows.append({
            "batch": batch, "epochs": len(hist),
            "fit_s_per_epoch": statistics.median(h["fit_seconds"] for h in later),
            "s_per_epoch": statistics.median(h["seconds"] for h in later),
            "best_val_loss": min(h["val_loss"] for h in hist),
            "s_to_common": common[0] if common else None,
            "epochs_to_common": common[1] if common else None,
            "s_to_near_best": best[0] if best else None,
            "epochs_to_near_best": best[1] if best else None,
            "total_s": sum(h["seconds"] for h in hist),
        })
    result: dict[str, Any] = {"machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(),
              "load_before": load_before, "load_after": os.getloadavg(),
              "target_common": target, "target_near_best": near, "runs": rows}
    print(f"\nmachine: {result['cpus']} CPUs, load average before {load_before[0]:.2f}, after "
          f"{result['load_after'][0]:.2f}; validation loss is the scaled MSE; common target "
          f"{target:.4f}, near-best target {near:.4f}")
    print("| stateful training | epochs run | s/epoch, gradient steps | s/epoch, with validation "
          "| best val loss | to common target | to near-best target |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        def cell(s_key: str, e_key: str, r: dict[str, Any] = r) -> str:
            if r[s_key] is None:
                return f"not in {r['epochs']} epochs ({r['total_s']:.0f} s)"
            return f"{r[s_key]:.1f} s ({r[e_key]} epochs)"
        print(f"| batch {r['batch']} | {r['epochs']} | {r['fit_s_per_epoch']:.3f} "
              f"| {r['s_per_epoch']:.3f} | {r['best_val_loss']:.4f} "
              f"| {cell('s_to_common', 'epochs_to_common')} "
              f"| {cell('s_to_near_best', 'epochs_to_near_best')} |")
    b64 = next(r for r in rows if r["batch"] == 64)
    b1 = next(r for r in rows if r["batch"] == 1)
    ratio = b1["fit_s_per_epoch"] / b64["fit_s_per_epoch"]
    print(f"gradient steps per epoch: batch 64 is {ratio:.0f}x faster than batch 1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
