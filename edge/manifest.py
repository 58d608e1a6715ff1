"""The graph contract: the manifest that `export/` writes into every `.onnx` and `edge/` checks.

It lives here, in the lightest layer, so the device can read it with onnxruntime alone:
``session.get_modelmeta().custom_metadata_map["statecast"]`` holds it as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from edge.errors import EdgeError

METADATA_KEY = "statecast"
FORMAT = 1
KINDS = ("step", "window")
TASKS = ("regress", "classify")
MODES = ("stateful", "window")
AGGREGATIONS = ("mean", "last", "min", "max", "sum")


@dataclass(frozen=True)
class Grid:
    """How the trainer put the data on a regular grid, which the daemon repeats on live streams.

    The period is the manifest's `freq` and gaps of up to `max_gap` periods are filled. Bins are
    ``(T - period, T]``, closed and labelled on the right, at ``T = origin + k * period`` (epoch
    seconds; calendar months ``MS`` are UTC month starts and ignore the origin). Within a bin
    each feature is aggregated as `aggregation` says (mean, last, min, max or sum); a missing
    bin between two real ones is filled linearly (`fill`) when the gap is at most `max_gap`.
    """

    origin: float
    aggregation: dict[str, str] = field(default_factory=dict)  # feature -> how; default mean
    closed: str = "right"
    label: str = "right"
    fill: str = "linear"

    def __post_init__(self) -> None:
        if self.closed != "right" or self.label != "right":
            raise EdgeError("the manifest grid must be closed and labelled on the right")
        if self.fill != "linear":
            raise EdgeError(f"the manifest grid's fill {self.fill!r} is not 'linear'")
        for name, how in self.aggregation.items():
            if how not in AGGREGATIONS:
                raise EdgeError(f"the manifest grid aggregates {name!r} by {how!r}, not one of "
                                f"{', '.join(AGGREGATIONS)}")

    def how(self, feature: str) -> str:
        return self.aggregation.get(feature, "mean")


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor: the graph input it is fed to and the output that replaces it."""

    input: str
    output: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.input or not self.output:
            raise EdgeError("every manifest state entry needs an 'input' and an 'output' name")
        if not self.shape or any(int(d) <= 0 for d in self.shape):
            raise EdgeError(f"state {self.input!r} has an invalid shape {list(self.shape)}")


@dataclass(frozen=True)
class Manifest:
    """What a device needs to know about a graph: names, shapes, units, timing and provenance.

    ``y`` has shape ``[1, horizon]`` for one target, ``[1, horizon, len(targets)]`` for several, and
    ``[1, horizon, len(classes)]`` (probabilities) for classifiers; ``output_shape`` records it.
    """

    kind: str
    features: tuple[str, ...]
    targets: tuple[str, ...]
    horizon: int
    task: str
    mode: str
    model_id: str
    statecast_version: str
    created: str
    output_shape: tuple[int | None, ...]
    state: tuple[StateSpec, ...] = ()
    input: str = "x"
    output: str = "y"
    classes: tuple[str, ...] | None = None
    freq: str | None = None
    lookback: int | None = None
    max_gap: int | None = None
    batch: str = "1"
    precision: str = "fp32"
    metrics: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    # The graph input fed the observation's time as float64 epoch seconds ([B, 1]; naive
    # timestamps read as UTC), or None. The graph derives sin and cos of
    # 2*pi*fmod(t, period) / period for each `calendar` period (seconds) from it.
    time_input: str | None = None
    calendar: tuple[float, ...] = ()
    # Observations a fresh stream needs before its forecasts have their full skill (the
    # seasonal memory is full); forecasts before that fall back on the last value.
    warmup: int = 0
    # What surrounds the LSTM (seasonal memory, base forecast, log, derived inputs), for people.
    structure: dict[str, Any] = field(default_factory=dict)
    # The targets' unit of measurement ("°C") and Home Assistant sensor device class
    # ("temperature"), from `statecast-train --unit/--device-class`; for dashboards.
    unit: str | None = None
    device_class: str | None = None
    # The grid the training data were put on; None (older manifests, plain Keras models): the
    # daemon steps once per observation.
    grid: Grid | None = None
    # Split-conformal seed of the prediction intervals, from the trainer's validation errors:
    # {"points": n, "levels": [c...], "abs_quantiles": [H][K][levels], "rmse": [H][K],
    #  "mae": [H][K]} in target units; empty when the run had none (see edge/score.py).
    conformal: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise EdgeError(
                f"manifest format {self.format} is not supported (this statecast reads {FORMAT})"
            )
        if self.kind not in KINDS:
            raise EdgeError(f"manifest kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.task not in TASKS:
            raise EdgeError(f"manifest task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.mode not in MODES:
            raise EdgeError(f"manifest mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not self.features:
            raise EdgeError("the manifest names no features")
        if self.horizon < 1:
            raise EdgeError(f"manifest horizon must be at least 1, not {self.horizon}")
        if self.kind == "window" and (self.lookback is None or self.lookback < 1):
            raise EdgeError("a window graph's manifest needs a positive lookback")
        if self.kind == "window" and self.state:
            raise EdgeError("a window graph carries no state, but its manifest lists some")
        if self.task == "classify" and not self.classes:
            raise EdgeError("a classifier's manifest must list its classes")
        if self.calendar and not self.time_input:
            raise EdgeError("the manifest lists calendar periods but no time input")
        if self.warmup < 0:
            raise EdgeError(f"manifest warmup must be at least 0, not {self.warmup}")
        names = [self.input, self.output]
        if self.time_input:
            names.append(self.time_input)
        for s in self.state:
            names += [s.input, s.output]
        if len(set(names)) != len(names):
            raise EdgeError("the manifest uses one tensor name twice")
        if self.grid is not None:
            if self.freq is None:
                raise EdgeError("the manifest has a grid but no freq (its period)")
            unknown = [k for k in self.grid.aggregation if k not in self.features]
            if unknown:
                raise EdgeError(f"the manifest grid aggregates {unknown[0]!r}, not a feature")

    @property
    def n_features(self) -> int:
        return len(self.features)

    def to_json(self) -> str:
        """Serialise for the ONNX metadata; keys as the acceptance contract names them."""
        d = asdict(self)
        d["state"] = [
            {"input": s.input, "output": s.output, "shape": list(s.shape)} for s in self.state
        ]
        for key in ("features", "targets", "output_shape", "calendar"):
            d[key] = list(d[key])
        if self.classes is not None:
            d["classes"] = list(self.classes)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse and validate; any problem becomes one EdgeError sentence."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EdgeError(f"the statecast manifest is not valid JSON ({exc.msg})") from None
        if not isinstance(d, dict):
            raise EdgeError("the statecast manifest is not a JSON object")
        try:
            state = tuple(
                StateSpec(str(s["input"]), str(s["output"]), tuple(int(v) for v in s["shape"]))
                for s in d.pop("state", [])
            )
            classes = d.pop("classes", None)
            grid = d.pop("grid", None)
            known = set(cls.__dataclass_fields__)
            extra = {k: v for k, v in d.items() if k in known}
            return cls(
                state=state,
                classes=tuple(str(c) for c in classes) if classes is not None else None,
                grid=Grid(
                    origin=float(grid["origin"]),
                    aggregation={str(k): str(v) for k, v in grid.get("aggregation", {}).items()},
                    closed=str(grid.get("closed", "right")), label=str(grid.get("label", "right")),
                    fill=str(grid.get("fill", "linear")),
                ) if grid is not None else None,
                **{
                    **extra,
                    "features": tuple(str(f) for f in d["features"]),
                    "targets": tuple(str(t) for t in d.get("targets", ())),
                    "output_shape": tuple(
                        None if v is None else int(v) for v in d.get("output_shape", ())
                    ),
                    "calendar": tuple(float(v) for v in d.get("calendar", ())),
                },
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgeError(
                f"the statecast manifest is incomplete or malformed ({exc!r})"
            ) from None
