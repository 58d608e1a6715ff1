"""The run folder contract: what `statecast-train` writes and `statecast-export` reads.

A run folder holds:
- ``model.keras``: the trained model, rebuilt without `stateful` and with a free batch size, so it
  runs a whole sequence from zero state exactly as the stateful training model stepped it;
- ``spec.json``: a `RunSpec` (feature/target order, scaler, horizon, lookback, mode, arch, task...);
- ``metrics.json``, ``history.csv``, ``report.png``;
- ``tail.npz`` (raw feature rows of the held-out tail, for the exporter's proof);
- ``forecasts.npz``: every held-out forecast beside its baselines on the same origins:
  ``origin_time`` [n], ``series`` [n], ``pred``/``actual``/``persistence`` (and ``seasonal``)
  [n, H, K] in target units (classifiers: ``pred`` is [n, H, C] probabilities).

Model output layout (last axis of the Keras output; `steps` = a time axis when the model returns
sequences, i.e. stateful mode):
- regress: ``[B, (steps,) H * K]`` for arch lstm/bilstm, ordered horizon-major (h0k0, h0k1, ...);
  ``[B, (steps,) H, K]`` for encdec;
- classify, binary (threshold): ``[B, (steps,) H]`` sigmoid p(class 1);
- classify, categorical: ``[B, (steps,) C]`` softmax (horizon 1).
All in scaled units: features as ``(x - x_mean) / x_scale``, targets as ``y * y_scale + y_mean``.
With ``residual: true`` (regression, every target also a feature) the network outputs the change
from the current observation: ``y = out * y_scale + x[feature index of the target]`` in raw units.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SPEC_FILE = "spec.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
REPORT_FILE = "report.png"
TAIL_FILE = "tail.npz"
FORECASTS_FILE = "forecasts.npz"


@dataclass(frozen=True)
class Scaler:
    """Standardisation fitted on training rows only: raw = scaled * scale + mean."""

    x_mean: list[float]
    x_scale: list[float]
    y_mean: list[float]
    y_scale: list[float]


@dataclass(frozen=True)
class RunSpec:
    """Everything the exporter needs to rebuild the graph's inputs, outputs and units."""

    arch: str  # lstm | encdec | bilstm
    mode: str  # stateful | window
    task: str  # regress | classify
    features: list[str]
    targets: list[str]
    horizon: int
    lookback: int
    layers: int
    units: int
    dropout: float
    scaler: Scaler
    freq: str | None = None
    max_gap: int = 3
    classes: list[str] | None = None
    threshold: float | None = None
    season: int | None = None
    batch_size: int = 64
    seed: int = 0
    residual: bool = False
    seasons: list[int] = field(default_factory=list)
    structure: dict[str, Any] | None = None  # trainer.structure.Structure: the LSTM's surroundings
    # the grid the data were put on (origin, closed/label, per-feature aggregation, fill): what
    # the manifest's `grid` carries to the edge; None for runs without a time column
    grid: dict[str, Any] | None = None
    ensemble: int = 1  # seeds averaged inside the model (its LSTMs have ensemble * units units)
    data: dict[str, Any] = field(default_factory=dict)
    unit: str | None = None  # the targets' unit of measurement, for dashboards
    device_class: str | None = None  # Home Assistant sensor device class of the targets
    statecast_version: str = "0.1.0"
    format: int = 1

    def save(self, run_dir: Path) -> None:
        (run_dir / SPEC_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> RunSpec:
        d = json.loads((run_dir / SPEC_FILE).read_text())
        d["scaler"] = Scaler(**d["scaler"])
        return cls(**d)
