"""What the seasonal memory costs per observation on the edge: the same LSTM (2 x 32) exported
plain and with each structure, stepped at batch 1 in one interleaved run.

    python bench/bench_structure_step.py [--repeats 6000] [--out bench/results/structure_step.json]

Weights come from one-epoch runs on the Seattle temperatures (their accuracy is irrelevant
here); the structures are the ones the trainer chooses between.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.timing import interleaved_us  # noqa: E402

DATA = ROOT / "examples/data/seattle-temps.csv"
VARIANTS = {
    "plain": {"structure": "plain"},
    "seasonal 24": {"structure": "seasonal", "season": 24, "calendar": False},
    "seasonal 24 + lag 168 + week calendar + log": {
        "structure": "seasonal", "season": [24, 168], "calendar": True, "log_target": True},
}


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=6000)
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/structure_step.json")
    args = p.parse_args()

    import onnx

    from edge.model import StepModel
    from export.api import export_model
    from trainer.config import TrainConfig
    from trainer.run import train

    models: dict[str, StepModel] = {}
    nodes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in VARIANTS.items():
            run = Path(tmp) / name.replace(" ", "_")
            train(TrainConfig(data=DATA, targets=["temp"], out=run, time_col="date",
                              horizon=6, epochs=1, quiet=True, **kw),  # type: ignore[arg-type]
                  log=lambda _: None)
            export_model(run, run / "m.onnx")
            models[name] = StepModel(run / "m.onnx")
            nodes[name] = len(onnx.load(str(run / "m.onnx")).graph.node)
        x = np.array([50.0], np.float32)
        fns: dict[str, Callable[[], Any]] = {}
        for name, m in models.items():
            state = m.zero_state()
            fns[f"{name} | step"] = functools.partial(m.step, x, state, t=1.6e9)
            fns[f"{name} | iobinding"] = functools.partial(m.stream().step, x, t=1.6e9)
        us = interleaved_us(fns, args.repeats)
    print(f"{'graph':<46} {'nodes':>5} {'step µs':>8} {'ratio':>6} {'IOBinding µs':>13} "
          f"{'ratio':>6}")
    rows = []
    for name in models:
        a, b = us[f"{name} | step"], us[f"{name} | iobinding"]
        ra, rb = a / us["plain | step"], b / us["plain | iobinding"]
        print(f"{name:<46} {nodes[name]:>5} {a:>8.1f} {ra:>5.2f}x {b:>13.1f} {rb:>5.2f}x")
        rows.append({"graph": name, "nodes": nodes[name], "step_us": a, "step_ratio": ra,
                     "iobinding_us": b, "iobinding_ratio": rb})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"repeats": args.repeats, "load": os.getloadavg(),
                                    "rows": rows}, indent=2) + "\n")
    print(f"medians of {args.repeats} interleaved steps each; load {os.getloadavg()[0]:.2f}; "
          f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
