"""The training configuration: one frozen dataclass that the CLI fills and `run.train` reads."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import TrainError
from trainer.models import ARCHS


@dataclass(frozen=True)
class TrainConfig:
    """Every `statecast-train` option; validated on construction."""

    data: Path
    targets: list[str]
    out: Path
    time_col: str | None = None
    features: list[str] | None = None
    series_col: str | None = None
    freq: str | None = None
    max_gap: int = 3
    agg: dict[str, str] | None = None  # column -> aggregation within a period (default mean)
    horizon: int = 1
    lookback: int = 24
    layers: int = 2
    units: int = 32
    dropout: float = 0.0
    arch: str = "lstm"
    task: str = "regress"
    threshold: float | None = None
    mode: str | None = None  # None: stateful for lstm/encdec, window for bilstm
    epochs: int = 100
    batch_size: int | None = None  # None: 64 stateful, 256 window
    season: int | list[int] | tuple[int, ...] | None = None  # None: from the grid's period
    structure: str = "auto"  # auto (chosen on validation) | plain | seasonal
    calendar: bool | None = None  # None: time-of-week/-year inputs where the grid suggests them
    log_target: bool | None = None  # None: tried when every target value is positive
    ensemble: int = 1  # seeds of the chosen candidate averaged in one model (kept if it helps)
    test_frac: float = 0.2
    val_frac: float = 0.1
    patience: int = 12
    learning_rate: float = 0.003
    seed: int = 0
    residual: bool | None = None  # None: on for regression when every target is a feature
    quiet: bool = False
    unit: str | None = None  # the targets' unit, carried into the manifest
    device_class: str | None = None  # Home Assistant sensor device class of the targets

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise TrainError(f"--arch must be one of {', '.join(ARCHS)}, not {self.arch!r}")
        if self.task not in ("regress", "classify"):
            raise TrainError(f"--task must be regress or classify, not {self.task!r}")
        if self.mode not in (None, "stateful", "window"):
            raise TrainError(f"--mode must be stateful or window, not {self.mode!r}")
        if self.arch == "bilstm" and self.mode == "stateful":
            raise TrainError(
                "--arch bilstm sees the future of its window, so it trains with --mode window only"
            )
        for name, value, low in (
            ("--horizon", self.horizon, 1), ("--lookback", self.lookback, 1),
            ("--layers", self.layers, 1), ("--units", self.units, 1),
            ("--epochs", self.epochs, 1), ("--max-gap", self.max_gap, 0),
            ("--ensemble", self.ensemble, 1),
        ):
            if value < low:
                raise TrainError(f"{name} must be at least {low}, not {value}")
        if self.batch_size is not None and self.batch_size < 1:
            raise TrainError(f"--batch-size must be at least 1, not {self.batch_size}")
        if isinstance(self.season, int):
            object.__setattr__(self, "season", (self.season,))
        elif self.season is not None:
            object.__setattr__(self, "season", tuple(int(s) for s in self.season))
        for s in self.seasons:
            if s < 2:
                raise TrainError(f"--season must be at least 2, not {s}")
        if self.structure not in ("auto", "plain", "seasonal"):
            raise TrainError(
                f"--structure must be auto, plain or seasonal, not {self.structure!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise TrainError(f"--dropout must be in [0, 1), not {self.dropout}")
        if not 0.0 < self.test_frac < 0.9:
            raise TrainError(f"--test-frac must be between 0 and 0.9, not {self.test_frac}")
        if self.task == "regress" and self.threshold is not None:
            raise TrainError("--threshold only applies with --task classify")
        if self.task == "classify" and len(self.targets) != 1:
            raise TrainError("--task classify takes exactly one --target column")
        if self.device_class is not None and not re.fullmatch(r"[a-z][a-z0-9_]*",
                                                              self.device_class):
            raise TrainError(
                f"--device-class {self.device_class!r} is not a Home Assistant sensor device "
                "class such as temperature, humidity or power"
            )

    @property
    def seasons(self) -> list[int]:
        """The seasons given (empty: infer them from the grid's period)."""
        season = self.season
        if season is None:
            return []
        return [season] if isinstance(season, int) else list(season)

    @property
    def resolved_mode(self) -> str:
        return self.mode or ("window" if self.arch == "bilstm" else "stateful")

    @property
    def resolved_batch(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 64 if self.resolved_mode == "stateful" else 256
