"""The run's picture: forecast vs actual on the held-out tail, and the loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainer.spec import REPORT_FILE, RunSpec


def write_report(
    out: Path, history: list[dict[str, Any]], curves: dict[str, Any], spec: RunSpec
) -> Path:
    """Write report.png; matplotlib is imported here so the rest never needs a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_f, ax_l) = plt.subplots(2, 1, figsize=(11, 7), constrained_layout=True)
    n = min(len(curves["pred"]), 24 * 14)
    times = curves["times"][:n]
    pred, actual = curves["pred"][:n], curves["actual"][:n]
    steps = sorted({0, (spec.horizon - 1) // 2, spec.horizon - 1})
    if spec.task == "regress":
        ax_f.plot(times, actual[:, 0, 0], color="black", lw=1.2, label="actual (t+1)")
        for h in steps:
            # The forecast made at origin t for t+h+1, drawn at its origin shifted by h.
            ax_f.plot(times[h:], pred[: n - h, h, 0] if h else pred[:, 0, 0], lw=1,
                      label=f"forecast {h + 1} step(s) ahead")
        ax_f.set_ylabel(spec.targets[0])
    else:
        ax_f.plot(times, actual[:, 0], "k.", ms=3, label="actual class (t+1)")
        ax_f.plot(times, np.argmax(pred[:, 0], axis=-1), lw=1, label="predicted class (t+1)")
        ax_f.set_ylabel("class index")
    ax_f.set_title(f"held-out tail, series {curves['series']} ({spec.arch}, {spec.mode})")
    ax_f.legend(loc="upper right", fontsize=8)
    epochs = [h["epoch"] for h in history]
    ax_l.plot(epochs, [h["loss"] for h in history], label="train loss")
    if any(h["val_loss"] is not None for h in history):
        ax_l.plot(epochs, [h["val_loss"] for h in history], label="validation loss")
    ax_l.set_xlabel("epoch")
    ax_l.set_yscale("log")
    ax_l.legend()
    path = out / REPORT_FILE
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
