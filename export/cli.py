"""`statecast-export`: turn a run folder or Keras model into a verified batch-1 ONNX graph."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from export.convert import DEFAULT_OPSET, PRECISIONS
from export.errors import ExportError

EPILOG = """examples:
  statecast-export runs/temps --out temps.onnx
  statecast-export runs/bi --out bi.onnx                  # window graph (bidirectional)
  statecast-export tutorial.h5 --out t.onnx --features temp,humidity --targets temp
  statecast-export runs/temps --out temps-int8.onnx --precision int8 --batch dynamic
  statecast-export tutorial.h5 --out t.onnx --sample windows.npy  # prove on your own inputs

exit status: 0 written, 1 the proof against Keras failed (nothing written), 2 bad input.
"""


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected one or more comma-separated names")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="statecast-export",
        description="Export a statecast run folder or a Keras LSTM model (.keras, .h5) to an "
        "ONNX graph that steps one observation per run, with explicit h/c state inputs and "
        "outputs, the scaler baked in and a JSON manifest in its metadata.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("source", type=Path, help="run folder from statecast-train, or a .keras/.h5 model file")
    a("--out", required=True, type=Path, help="the .onnx file to write")
    a("--kind", choices=["step", "window"],
      help="step: one observation per run, state in/out (default); window: the whole "
      "lookback window per run (default for bidirectional and --mode window runs)")
    a("--batch", choices=["1", "dynamic"], default="1",
      help="fixed batch 1 (default) or a symbolic batch to step many streams per run")
    a("--precision", choices=list(PRECISIONS), default="fp32",
      help="fp16: half-size weights; int8: onnxruntime dynamic quantization")
    a("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    a("--features", type=_names, help="names of a plain model's inputs, comma-separated")
    a("--targets", type=_names, help="names of a plain model's outputs, comma-separated")
    a("--task", choices=["regress", "classify"],
      help="plain model only (default: classify if it ends in sigmoid or softmax)")
    a("--lookback", type=int, help="window length of a window graph (default: from the run "
      "or the model's input shape)")
    a("--sample", type=Path, metavar="FILE",
      help="inputs for the parity check, in raw feature units: a .npy array [T, F] or "
      "[N, T, F], or a CSV file with a header (columns named like the features; for a plain "
      "model, its numeric columns in order). Default: the run's held-out tail, else random data")
    a("--unit", help="the targets' unit of measurement (e.g. °C) for the manifest (default: "
      "the run's, from statecast-train --unit)")
    a("--device-class", help="the targets' Home Assistant sensor device class for the manifest "
      "(default: the run's)")
    a("--no-verify", action="store_true",
      help="skip onnx.checker and the parity check against Keras")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 written, 1 proof failed, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sample is not None and args.no_verify:
        parser.error("--sample is for the parity check; drop --no-verify")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from export.api import export_model

    try:
        export_model(
            args.source, args.out, kind=args.kind, batch=args.batch,
            precision=args.precision, opset=args.opset, features=args.features,
            targets=args.targets, task=args.task, lookback=args.lookback,
            verify=not args.no_verify, log=print, sample=args.sample, unit=args.unit,
            device_class=args.device_class,
        )
    except ExportError as exc:
        print(f"statecast-export: {exc}", file=sys.stderr)
        return exc.status
    return 0


if __name__ == "__main__":
    sys.exit(main())
