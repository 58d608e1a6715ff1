"""Read what to export: a `statecast-train` run folder or a Keras model file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from trainer.spec import METRICS_FILE, MODEL_FILE, SPEC_FILE, TAIL_FILE, RunSpec, Scaler

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass
class Source:
    """A loaded model and, for a run folder, its spec, metrics and held-out tail (raw units)."""

    path: Path
    model: Any
    model_file: Path
    spec: RunSpec | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    tail: np.ndarray | None = None
    tail_t: np.ndarray | None = None  # epoch seconds of the tail's rows, when the run had times

    @property
    def is_run(self) -> bool:
        return self.spec is not None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def load_keras(path: Path) -> Any:
    """Load a `.keras`/`.h5` file without compiling it; any failure is one ExportError."""
    import keras

    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # keras raises many unrelated types for a bad file
        raise ExportError(
            f"{path} could not be read as a Keras model ({_first_line(exc)})"
        ) from None


def load_spec(run_dir: Path) -> RunSpec:
    """Read and sanity-check a run's spec.json."""
    try:
        spec = RunSpec.load(run_dir)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ExportError(
            f"{run_dir / SPEC_FILE} is not a valid statecast run spec ({_first_line(exc)})"
        ) from None
    if not isinstance(spec.scaler, Scaler) or len(spec.scaler.x_mean) != len(spec.features):
        raise ExportError(f"{run_dir / SPEC_FILE} has a scaler that does not match its features")
    return spec


def load_source(path: str | Path) -> Source:
    """Open a run folder (spec.json + model.keras) or a Keras model file."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path} does not exist")
    if path.is_dir():
        if not (path / SPEC_FILE).is_file() or not (path / MODEL_FILE).is_file():
            raise ExportError(
                f"{path} is not a run folder (it needs {SPEC_FILE} and {MODEL_FILE} "
                "from statecast-train)"
            )
        spec = load_spec(path)
        model = load_keras(path / MODEL_FILE)
        metrics: dict[str, Any] = {}
        if (path / METRICS_FILE).is_file():
            try:
                metrics = json.loads((path / METRICS_FILE).read_text())
            except (OSError, ValueError):
                metrics = {}
        tail = tail_t = None
        if (path / TAIL_FILE).is_file():
            try:
                with np.load(path / TAIL_FILE) as data:
                    tail = np.asarray(data["x"], dtype=np.float32)
                    if "t" in data.files:
                        tail_t = np.asarray(data["t"], dtype=np.float64)
            except (OSError, ValueError, KeyError):
                tail = tail_t = None
        if tail is not None and (tail.ndim != 2 or tail.shape[1] != len(spec.features)):
            tail = tail_t = None
        if tail_t is not None and (tail is None or tail_t.shape != (len(tail),)):
            tail_t = None
        return Source(path, model, path / MODEL_FILE, spec, metrics, tail, tail_t)
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise ExportError(
            f"{path} is neither a run folder nor a Keras model file (.keras or .h5)"
        )
    return Source(path, load_keras(path), path)
