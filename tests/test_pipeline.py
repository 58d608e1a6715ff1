"""The whole product once, for real: statecast-train → statecast-export → statecast-edge over MQTT.

The forecasts the daemon publishes must equal the trained Keras model run over the same
observations from zero state, in target units.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edge.model import StepModel

pytestmark = [pytest.mark.slow, pytest.mark.broker]

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples/data/seattle-temps.csv"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("pipeline")
    run_dir, onnx_path = d / "run", d / "temps.onnx"
    train = subprocess.run(
        [str(BIN / "statecast-train"), "--data", str(DATA), "--time-col", "date",
         "--target", "temp", "--horizon", "3", "--layers", "2", "--units", "8", "--epochs", "2",
         "--lookback", "12", "--quiet", "--out", str(run_dir)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    export = subprocess.run(
        [str(BIN / "statecast-export"), str(run_dir), "--out", str(onnx_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert export.returncode == 0, export.stderr[-2000:]
    return run_dir, onnx_path


def keras_forecasts(run_dir: Path, temps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The trained model over `temps` (at epoch seconds `times`) from zero state, in °F:
    [T, H]; a run with seasonal memory through the trainer's numpy structure."""
    import keras

    from trainer.spec import RunSpec
    from trainer.structure import Structure

    spec = RunSpec.load(run_dir)
    model = keras.saving.load_model(run_dir / "model.keras")
    if spec.structure is not None:
        st = Structure.from_dict(spec.structure)
        out = np.asarray(model(st.scaled_inputs(temps[:, None], times)[None], training=False))
        return st.decode(out[0], st.base(temps[:, None]))[..., 0]
    x = ((temps - spec.scaler.x_mean[0]) / spec.scaler.x_scale[0]).astype(np.float32)
    out = np.asarray(model(x[None, :, None], training=False))[0]
    base = temps[:, None] if spec.residual else spec.scaler.y_mean[0]
    return out * spec.scaler.y_scale[0] + base


def test_daemon_forecasts_equal_keras_on_every_stream(
    exported: tuple[Path, Path], broker, collector_factory, daemon_factory, tmp_path: Path
) -> None:
    from conftest import replay

    run_dir, onnx_path = exported
    manifest = StepModel(onnx_path).manifest
    assert manifest.kind == "step" and manifest.horizon == 3 and manifest.freq == "1h"
    # the default run is chosen on validation; on these temperatures seasonal memory wins
    assert [s.input for s in manifest.state][-2:] == ["hist", "seen"], manifest.structure
    table = pd.read_csv(DATA)
    streams = {"north": 0, "south": 4000}  # two streams replaying different stretches
    n = 120
    out = collector_factory(broker, ["pipe/forecasts/#", "statecast/status/pipeline-test"])
    daemon = daemon_factory(
        "--model", str(onnx_path), "--broker", broker.url, "--subscribe", "pipe/sensors/+/temp",
        "--publish", "pipe/forecasts/{stream}", "--client-id", "pipeline-test", "--qos", "1",
    )
    assert out.wait_status("pipeline-test", "online", 0), daemon.log()[-3000:]
    for name, skip in streams.items():
        replay(broker, DATA, "pipe/sensors/{stream}/temp", "--time-col", "date", "--stream", name,
               "--features", "temp", "--skip", str(skip), "--count", str(n), "--rate", "2000")
    got = out.wait_for("pipe/forecasts/", 2 * n, timeout=60)
    assert len(got) == 2 * n, daemon.log()[-3000:]
    for name, skip in streams.items():
        mine = [m for m in got if m["stream"] == name]
        assert len(mine) == n
        temps = table["temp"].to_numpy()[skip:skip + n]
        times = pd.to_datetime(table["date"]).to_numpy()[skip:skip + n]
        want = keras_forecasts(run_dir, temps, times.astype("datetime64[s]").astype(np.int64))
        have = np.array([m["forecast"] for m in mine], dtype=np.float64)
        assert np.max(np.abs(have - want)) < 1e-3, (name, np.max(np.abs(have - want)))
        assert mine[0]["model"] == manifest.model_id
        # intervals from the first forecast: the trainer's split-conformal radii
        lo_hi = np.array(mine[0]["intervals"]["0.8"])
        seed = np.array(manifest.conformal["abs_quantiles"])[:, 0, :]  # [H, levels]
        radius = [np.interp(0.8, manifest.conformal["levels"], row) for row in seed]
        ulp = float(np.spacing(np.float32(np.abs(lo_hi).max())))  # the bounds are float32
        np.testing.assert_allclose((lo_hi[:, 1] - lo_hi[:, 0]) / 2, radius, rtol=1e-6, atol=ulp)
        assert np.all(lo_hi[:, 0] < have[0]) and np.all(have[0] < lo_hi[:, 1])
    assert daemon.stop() == 0
