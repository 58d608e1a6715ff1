"""`export_model`: a run folder or Keras model in, a verified `.onnx` with its manifest out."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge import EdgeError, __version__
from edge.manifest import METADATA_KEY, Grid, Manifest, StateSpec
from edge.model import StepModel, time_feed
from export.convert import (
    DEFAULT_OPSET,
    PRECISIONS,
    Built,
    Layout,
    apply_precision,
    attach_manifest,
    build_graph,
    model_id,
    run_layout,
)
from export.errors import ExportError
from export.load import Source, load_source
from export.structure import TIME, parity_structured
from export.verify import Parity, check_onnx, prove

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def default_kind(source: Source) -> str:
    """Window for a run trained on windows or a Bidirectional model; step otherwise."""
    if source.spec is not None:
        return "window" if source.spec.mode == "window" or source.spec.arch == "bilstm" \
            else "step"
    return "step"


def _plain_lookback(model: Any) -> int | None:
    dim = model.inputs[0].shape[1] if len(model.inputs[0].shape) == 3 else None
    return int(dim) if dim else None


def build(source: Source, *, kind: str, batch: str, opset: int,
          features: list[str] | None, targets: list[str] | None, task: str | None,
          lookback: int | None) -> tuple[Built, int | None]:
    """The fp32 graph for `source`; returns it and the lookback recorded in the manifest."""
    spec = source.spec
    if spec is not None:
        if features and list(features) != list(spec.features):
            raise ExportError("a run folder names its own features; drop --features")
        if targets and list(targets) != list(spec.targets):
            raise ExportError("a run folder names its own targets; drop --targets")
        look: int | None = lookback or spec.lookback
        layout = run_layout(spec)
        built = build_graph(source.model, kind=kind, batch=batch, opset=opset, layout=layout,
                            lookback=look)
        return built, look
    look = lookback or _plain_lookback(source.model)
    built = build_graph(source.model, kind=kind, batch=batch, opset=opset, layout=None,
                        features=features, targets=targets, task=task, lookback=look)
    return built, look


def make_manifest(source: Source, built: Built, *, kind: str, batch: str, precision: str,
                  graph_id: str, lookback: int | None, opset: int, unit: str | None = None,
                  device_class: str | None = None) -> Manifest:
    """The manifest for a graph: names, shapes, units, timing and provenance."""
    lay = built.layout
    spec = source.spec
    state = tuple(StateSpec(i, o, (1, *shape)) for i, o, shape in built.states)
    mode = spec.mode if spec is not None else ("stateful" if kind == "step" else "window")
    src: dict[str, Any] = {
        "type": "run" if spec is not None else "keras",
        "path": str(source.path),
        "opset": opset,
        "keras_output_has_time": built.output_has_time,
    }
    if spec is not None:
        src.update(arch=spec.arch, layers=spec.layers, units=spec.units, data=spec.data,
                   threshold=spec.threshold)
    return Manifest(
        kind=kind, features=lay.features, targets=lay.targets, horizon=lay.horizon,
        task=lay.task, mode=mode, model_id=graph_id, statecast_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        output_shape=lay.output_shape(1 if batch == "1" else None), state=state,
        classes=lay.classes, freq=spec.freq if spec is not None else None,
        lookback=lookback, max_gap=spec.max_gap if spec is not None else None,
        batch="1" if batch == "1" else "dynamic", precision=precision,
        metrics={k: v for k, v in source.metrics.items() if k != "conformal"}, source=src,
        **_structure_fields(lay),
        conformal=dict(source.metrics.get("conformal") or {}),
        unit=unit or (spec.unit if spec is not None else None),
        device_class=device_class or (spec.device_class if spec is not None else None),
        grid=_grid(spec.grid if spec else None),
    )


def _grid(grid: dict[str, Any] | None) -> Grid | None:
    """The run's grid (`RunSpec.grid`) for the manifest; None for runs trained before it."""
    if not grid:
        return None
    return Grid(origin=float(grid["origin"]), aggregation=dict(grid.get("aggregation", {})),
                closed=grid.get("closed", "right"), label=grid.get("label", "right"),
                fill=grid.get("fill", "linear"))


def _structure_fields(lay: Layout) -> dict[str, Any]:
    """Manifest fields of a graph with seasonal memory: its time input, calendar and warm-up."""
    st = lay.structure
    if st is None:
        return {}
    return {
        "time_input": TIME if st.calendar else None,
        "calendar": tuple(st.calendar),
        "warmup": st.memory,
        "structure": {
            "description": st.describe(), "memory": st.memory, "seasons": list(st.seasons),
            "base_lag": st.base_lag, "drift": st.drift, "log": st.log, "level": st.level,
            "inputs": st.input_names(),
            "state": {"hist": "the last `memory` target values (log if `log`), oldest first; "
                              "a fresh stream's memory holds its first value",
                      "seen": "0 for a fresh stream, 1 once it has had an observation"},
        },
    }


def step_latency_us(path: Path, repeats: int = 300) -> float:
    """Median microseconds of one `session.run` of the graph at batch 1 (one thread)."""
    sm = StepModel(path)
    m = sm.manifest
    shape = (1, m.lookback or 1, m.n_features) if m.kind == "window" else (1, m.n_features)
    feeds = {m.input: np.zeros(shape, np.float32)}
    feeds.update(zip([s.input for s in m.state], sm.zero_state(), strict=True))
    if m.time_input:  # a graph with calendar inputs also takes the observation's time
        feeds[m.time_input] = time_feed(0.0, 1)
    names = [m.output] + [s.output for s in m.state]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        sm.session.run(names, feeds)
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)) / 1e3


def _verify(path: Path, source: Source, built: Built, *, kind: str, lookback: int | None,
            precision: str, sample: str | Path | None = None) -> Parity:
    if built.layout.structure is not None:
        return parity_structured(path, source, built.layout, precision, sample)
    return prove(path, source.model, built.layout, kind=kind, lookback=lookback,
                 output_has_time=built.output_has_time, precision=precision, tail=source.tail,
                 sample=sample)


def export_model(
    source: str | Path | Source,
    out: str | Path,
    *,
    kind: str | None = None,
    batch: str = "1",
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    features: list[str] | None = None,
    targets: list[str] | None = None,
    task: str | None = None,
    lookback: int | None = None,
    verify: bool = True,
    log: Log = _quiet,
    sample: str | Path | None = None,
    unit: str | None = None,
    device_class: str | None = None,
) -> Manifest:
    """Export a run folder or Keras model to a batch-1 ONNX graph with its manifest.

    With `verify` the graph is checked and stepped against Keras first; if that fails, nothing is
    written and an ExportError with status 1 is raised. `sample` (.npy or .csv, raw units) gives
    the inputs for that proof instead of the run's tail or random data. `unit` and
    `device_class` (for dashboards) override the run's.
    """
    if sample is not None and not verify:
        raise ExportError("--sample is for the proof against Keras; drop --no-verify")
    if batch not in ("1", "dynamic"):
        raise ExportError(f"--batch must be 1 or dynamic, not {batch!r}")
    if precision not in PRECISIONS:
        raise ExportError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if kind not in (None, "step", "window"):
        raise ExportError(f"--kind must be step or window, not {kind!r}")
    if task not in (None, "regress", "classify"):
        raise ExportError(f"--task must be regress or classify, not {task!r}")
    src = source if isinstance(source, Source) else load_source(source)
    kind = kind or default_kind(src)
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name such as model.onnx")
    built, look = build(src, kind=kind, batch=batch, opset=opset, features=features,
                        targets=targets, task=task, lookback=lookback)
    proto = apply_precision(built.model, precision)
    graph_id = model_id(proto)
    manifest = make_manifest(src, built, kind=kind, batch=batch, precision=precision,
                             graph_id=graph_id, lookback=look, opset=opset, unit=unit,
                             device_class=device_class)
    attach_manifest(proto, METADATA_KEY, manifest.to_json())
    with tempfile.TemporaryDirectory(prefix="statecast-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(proto, str(path))
        if verify:
            check_onnx(proto)
            try:
                parity = _verify(path, src, built, kind=kind, lookback=look,
                                 precision=precision, sample=sample)
            except EdgeError as exc:
                raise ExportError(f"the exported graph fails edge's checks ({exc})",
                                  status=1) from None
            log(f"parity vs Keras ({precision}, {parity.compared} predictions on "
                f"{parity.inputs}): max abs error {parity.max_abs:.3g} (tolerance "
                f"{parity.tolerance:.3g} + {parity.rtol:.3g} x |Keras|)")
            if not parity.ok:
                raise ExportError(
                    f"the exported graph differs from Keras by {parity.worst_err:.3g} where "
                    f"Keras gives {parity.worst_ref:.3g}, more than the tolerance "
                    f"{parity.allowed:.3g}; nothing was written", status=1
                )
            if precision != "fp32":
                base = Path(tmp) / "fp32.onnx"
                ref = onnx.ModelProto()
                ref.CopyFrom(built.model)
                attach_manifest(ref, METADATA_KEY, manifest.to_json())
                onnx.save(ref, str(base))
                size0, size1 = base.stat().st_size, path.stat().st_size
                lat0, lat1 = step_latency_us(base), step_latency_us(path)
                log(f"{precision} vs fp32: size {size0 / 1024:.1f} KiB -> {size1 / 1024:.1f} KiB "
                    f"({size1 / size0:.0%}), median run {lat0:.1f} us -> {lat1:.1f} us")
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".part")
        shutil.copyfile(path, partial)
        os.replace(partial, out)
    log(f"wrote {out} ({kind} graph, {len(manifest.state)} state tensors, "
        f"y {list(manifest.output_shape)}, {out.stat().st_size / 1024:.1f} KiB)")
    return manifest
