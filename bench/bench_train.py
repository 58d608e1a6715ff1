"""Trainer benchmark: accuracy on the Seattle hourly temperatures and the speed of batch training.

Prints a Markdown table: RMSE at horizons 1, 6 and 24 (the trainer's defaults: the structure
chosen on validation) beside persistence and seasonal naive (24 h) on the same held-out points,
with the structure chosen and the training time; then seconds per epoch in stateful mode at
batch 64 and at batch 1 (the tutorials' online learning) for the same network on the same data.

    python bench/bench_train.py [--data examples/data/seattle-temps.csv] [--epochs 100]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from trainer.config import TrainConfig
from trainer.run import train

ROOT = Path(__file__).resolve().parents[1]


def run(data: Path, out: Path, **kw: Any) -> dict[str, Any]:
    cfg = TrainConfig(data=data, targets=["temp"], out=out, time_col="date", season=24,
                      quiet=True, **kw)
    return train(cfg, log=lambda _: None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "examples/data/seattle-temps.csv")
    p.add_argument("--epochs", type=int, default=100, help="maximum epochs (early stopping)")
    p.add_argument("--speed-epochs", type=int, default=4, help="epochs timed per batch size")
    p.add_argument("--speed-only", action="store_true", help="only the batch 64 vs 1 timing")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for h in () if args.speed_only else (1, 6, 24):
            m = run(args.data, Path(tmp) / f"h{h}", horizon=h, epochs=args.epochs)
            ph = m["per_horizon"]
            rows.append((h, ph["rmse"][-1], ph["persistence_rmse"][-1], ph["seasonal_rmse"][-1],
                         m["rmse"], m["persistence_rmse"], m["seasonal_rmse"], m["structure"],
                         m["train_seconds"]))
        if rows:
            print("| horizon H | model RMSE at H | persistence at H | seasonal naive at H "
                  "| model RMSE 1..H | persistence 1..H | seasonal 1..H | structure chosen "
                  "| training s |")
            print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]:.3f} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} "
                  f"| {r[6]:.3f} | {r[7]} | {r[8]:.0f} |")
        speed: dict[int, tuple[float, float]] = {}
        for batch in (64, 1):
            run(args.data, Path(tmp) / f"b{batch}", horizon=1, epochs=args.speed_epochs,
                batch_size=batch, patience=args.speed_epochs + 1, structure="seasonal")
            with open(Path(tmp) / f"b{batch}" / "history.csv", newline="") as fh:
                hist = list(csv.DictReader(fh))[1:]
            # epoch 1 includes tracing; "fit" is the gradient steps, "epoch" adds validation.
            speed[batch] = (statistics.median(float(h["fit_seconds"]) for h in hist),
                            statistics.median(float(h["seconds"]) for h in hist))
        print()
        print("| stateful training, 1 h horizon | median s per epoch, gradient steps "
              "| median s per epoch, with validation pass |")
        print("|---|---|---|")
        for batch in (64, 1):
            print(f"| batch {batch} | {speed[batch][0]:.3f} | {speed[batch][1]:.3f} |")
        print(f"| speed-up, batch 64 vs 1 | {speed[1][0] / speed[64][0]:.0f}x "
              f"| {speed[1][1] / speed[64][1]:.0f}x |")


if __name__ == "__main__":
    main()
