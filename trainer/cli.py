"""`statecast-train`: fit an LSTM forecaster on a CSV/Parquet file and write a run folder."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainer.config import TrainConfig
from trainer.errors import TrainError

EPILOG = """examples:
  statecast-train --data examples/data/seattle-temps.csv --time-col date --target temp \\
      --horizon 6 --season 24 --out runs/temps
  statecast-train --data examples/data/seattle-weather.csv --time-col date \\
      --target precipitation --features precipitation,temp_max,temp_min,wind \\
      --task classify --threshold 0 --out runs/rain
  statecast-train --data record/ --time-col ts --series-col stream --target temp \\
      --horizon 6 --unit °C --device-class temperature --out runs/rooms
  statecast-train --data sensors.parquet --time-col ts --series-col sensor --target temp \\
      --mode window --arch bilstm --out runs/bi
"""


def _columns(text: str) -> list[str]:
    cols = [c.strip() for c in text.split(",") if c.strip()]
    if not cols:
        raise argparse.ArgumentTypeError("expected one or more comma-separated column names")
    return cols


def _seasons(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected whole numbers such as 24 or 48,336") from None
    if not values:
        raise argparse.ArgumentTypeError("expected whole numbers such as 24 or 48,336")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="statecast-train",
        description="Fit a Keras LSTM forecaster at large batch and write a run folder "
        "that statecast-export turns into a batch-1 ONNX step graph.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--data", required=True, type=Path,
      help="CSV or Parquet file, or a directory of them with the same columns")
    a("--target", required=True, type=_columns, help="target column(s), comma-separated")
    a("--out", required=True, type=Path, help="run folder to write")
    a("--time-col", help="timestamp column; rows are sorted and put on a regular grid")
    a("--features", type=_columns, help="input columns (default: the target)")
    a("--series-col", help="column naming independent series (e.g. one per sensor)")
    a("--freq", help="period such as 1h, 15min, 1D (default: inferred)")
    a("--max-gap", type=int, default=3, help="interpolate gaps up to N periods; split longer")
    a("--agg", type=_aggs, metavar="COL=HOW,...",
      help="how the rows within one period are combined, per column: mean (default), last, "
      "min, max or sum (e.g. rain=sum,temp=mean); the edge daemon does the same")
    a("--horizon", type=int, default=1, help="forecast the next H values (default 1)")
    a("--lookback", type=int, default=24,
      help="steps per batch (stateful) or window length (window); default 24")
    a("--layers", type=int, default=2, help="stacked LSTM layers (default 2)")
    a("--units", type=int, default=32, help="units per LSTM layer (default 32)")
    a("--dropout", type=float, default=0.0, help="dropout after each LSTM layer")
    a("--arch", choices=["lstm", "encdec", "bilstm"], default="lstm")
    a("--task", choices=["regress", "classify"], default="regress")
    a("--threshold", type=float, help="classify a numeric target as above/below X")
    a("--mode", choices=["stateful", "window"],
      help="stateful truncated BPTT (default for lstm/encdec) or independent windows")
    a("--epochs", type=int, default=100, help="maximum epochs; early stopping on validation")
    a("--batch-size", type=int, help="default 64 (stateful) or 256 (window)")
    a("--patience", type=int, default=12, help="early-stopping patience in epochs")
    a("--learning-rate", type=float, default=0.003, help="Adam learning rate")
    a("--season", type=_seasons,
      help="season length(s) in periods, comma-separated (e.g. 48,336): the seasonal memory "
      "and the seasonal-naive baselines (default: from the period: 24,168 hourly, 48,336 "
      "half-hourly, 7 daily, 52 weekly, 12 monthly)")
    a("--structure", choices=["auto", "plain", "seasonal"], default="auto",
      help="auto: try the plain LSTM and seasonal-memory LSTMs, keep the best on validation "
      "(default); plain: the LSTM alone; seasonal: seasonal memory on the first season")
    a("--calendar", action=argparse.BooleanOptionalAction, default=None,
      help="time-of-week/-year inputs from the timestamps (default: where the period suggests)")
    a("--ensemble", type=int, default=1,
      help="train the chosen model with N seeds and average them inside one wider LSTM, "
      "kept when it forecasts better on validation (default 1)")
    a("--log", dest="log_target", action=argparse.BooleanOptionalAction, default=None,
      help="forecast log(target) (default: tried when every target value is positive)")
    a("--test-frac", type=float, default=0.2, help="held-out tail of every series (0.2)")
    a("--seed", type=int, default=0)
    a("--residual", action=argparse.BooleanOptionalAction, default=None,
      help="learn the change from the current value of each target (default: on for "
      "regression when every target is also a feature)")
    a("--unit", help="the targets' unit of measurement (e.g. °C), written into the model's "
      "manifest for dashboards")
    a("--device-class", help="the targets' Home Assistant sensor device class (e.g. "
      "temperature), written into the model's manifest")
    a("--quiet", action="store_true", help="no progress line per epoch")
    return p


def _aggs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        col, sep, how = part.partition("=")
        if not sep or not col.strip() or not how.strip():
            raise argparse.ArgumentTypeError(f"{part!r} is not COL=HOW (e.g. rain=sum)")
        out[col.strip()] = how.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = "statecast-train"
    try:
        cfg = TrainConfig(
            data=args.data, targets=args.target, out=args.out, time_col=args.time_col,
            features=args.features, series_col=args.series_col, freq=args.freq,
            max_gap=args.max_gap, agg=args.agg, horizon=args.horizon, lookback=args.lookback,
            layers=args.layers, units=args.units, dropout=args.dropout, arch=args.arch,
            task=args.task, threshold=args.threshold, mode=args.mode, epochs=args.epochs,
            batch_size=args.batch_size, season=args.season, test_frac=args.test_frac,
            patience=args.patience, learning_rate=args.learning_rate, seed=args.seed,
            residual=args.residual, quiet=args.quiet, structure=args.structure,
            calendar=args.calendar, log_target=args.log_target, ensemble=args.ensemble,
            unit=args.unit, device_class=args.device_class,
        )
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from trainer.evaluate import summary_lines
        from trainer.run import train

        metrics = train(cfg, log=lambda line: print(line, flush=True))
    except TrainError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    for line in summary_lines(metrics):
        print(line)
    print(f"run written to {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
