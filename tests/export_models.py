"""Tiny Keras models like the tutorials' (and helpers) for the export tests and the benchmark.

Weights are drawn at random (biases too) so a wrong gate order or a dropped bias shows up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

F = 3  # features of every plain model here
T = 16  # steps of the test sequences


def to_numpy(value: Any) -> np.ndarray:
    """A Keras (TensorFlow) tensor as a numpy array."""
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def randomize(model: Any, seed: int = 0, scale: float = 0.4) -> Any:
    """Give every weight (biases included) a random value; returns the model."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, scale, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    return model


def relu_vanilla() -> Any:
    """The tutorials' vanilla LSTM: relu, many-to-one, one output."""
    import keras
    from keras import layers as kl

    return keras.Sequential([keras.Input((None, F)), kl.LSTM(6, activation="relu"), kl.Dense(1)])


def relu_stacked() -> Any:
    """Stacked relu LSTMs with a vector output: a 3-step forecast."""
    import keras
    from keras import layers as kl

    return keras.Sequential([
        keras.Input((5, F)),
        kl.LSTM(6, activation="relu", return_sequences=True),
        kl.Dropout(0.2),
        kl.LSTM(4, activation="relu"),
        kl.Dense(3),
    ])


def encoder_decoder() -> Any:
    """The tutorials' encoder–decoder: LSTM → RepeatVector → LSTM → TimeDistributed(Dense)."""
    import keras
    from keras import layers as kl

    return keras.Sequential([
        keras.Input((None, F)),
        kl.LSTM(6, activation="relu"),
        kl.RepeatVector(3),
        kl.LSTM(5, activation="relu", return_sequences=True),
        kl.TimeDistributed(kl.Dense(2)),
    ])


def tutorial_encoder_decoder() -> Any:
    """Exactly the tutorial's encoder–decoder: 3 steps of 1 value in, 3 steps out, relu."""
    import keras
    from keras import layers as kl

    return keras.Sequential([
        keras.Input((3, 1)),
        kl.LSTM(100, activation="relu"),
        kl.RepeatVector(3),
        kl.LSTM(100, activation="relu", return_sequences=True),
        kl.TimeDistributed(kl.Dense(1)),
    ])


def tutorial_series() -> np.ndarray:
    """The tutorial's data: a ramp of values 10..99, divided by 300 as it does ([90, 1])."""
    return (np.arange(10.0, 100.0) / 300.0).astype(np.float32)[:, None]


def trained_tutorial(epochs: int = 30) -> Any:
    """The tutorial encoder–decoder trained as the tutorial does: 3 values in, the next 3 out.

    Trained this long, its relu LSTMs blow up over sequences much longer than 3 steps.
    """
    import keras

    keras.utils.set_random_seed(0)
    model = tutorial_encoder_decoder()
    model.compile("adam", "mse")
    s = tutorial_series()
    n = len(s) - 6
    x = np.stack([s[i : i + 3] for i in range(n)])
    y = np.stack([s[i + 3 : i + 6] for i in range(n)])
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return model


def many_to_many() -> Any:
    """Functional API: Masking → LSTM(return_sequences) → TimeDistributed(Dense(2))."""
    import keras
    from keras import layers as kl

    inp = keras.Input((None, F))
    h = kl.Masking(mask_value=-999.0)(inp)
    h = kl.LSTM(5, return_sequences=True, recurrent_activation="hard_sigmoid")(h)
    out = kl.TimeDistributed(kl.Dense(2))(h)
    return keras.Model(inp, out)


def sigmoid_classifier() -> Any:
    """A binary classifier: LSTM → Dense(1, sigmoid)."""
    import keras
    from keras import layers as kl

    return keras.Sequential([keras.Input((None, F)), kl.LSTM(5), kl.Dense(1, "sigmoid")])


def softmax_classifier() -> Any:
    import keras
    from keras import layers as kl

    return keras.Sequential([keras.Input((None, F)), kl.LSTM(5), kl.Dense(4, "softmax")])


def stateful_batch9() -> Any:
    """Trained at a fixed batch of 9 with stateful=True (Keras 3: Input(batch_shape=...))."""
    import keras
    from keras import layers as kl

    inp = keras.Input(batch_shape=(9, None, F))
    h = kl.LSTM(6, stateful=True, return_sequences=True)(inp)
    h = kl.LSTM(4, stateful=True, return_sequences=True, activation="relu")(h)
    return keras.Model(inp, kl.Dense(1)(h))


def bidirectional() -> Any:
    """Bidirectional layers (window graphs only)."""
    import keras
    from keras import layers as kl

    return keras.Sequential([
        keras.Input((6, F)),
        kl.Bidirectional(kl.LSTM(4, return_sequences=True)),
        kl.Bidirectional(kl.LSTM(3), merge_mode="sum"),
        kl.Dense(2),
    ])


def with_conv() -> Any:
    """A layer statecast cannot step (Conv1D)."""
    import keras
    from keras import layers as kl

    return keras.Sequential([keras.Input((None, F)), kl.Conv1D(4, 2, name="my_conv"),
                             kl.LSTM(4), kl.Dense(1)])


def bench_lstm(units: int, layers: int, features: int = 4) -> Any:
    """The benchmark's stacked LSTM with a one-step forecast head."""
    import keras
    from keras import layers as kl

    inp = keras.Input((None, features))
    h = inp
    for i in range(layers):
        h = kl.LSTM(units, return_sequences=i < layers - 1)(h)
    return keras.Model(inp, kl.Dense(1)(h))


PLAIN: dict[str, Callable[[], Any]] = {
    "relu_vanilla": relu_vanilla,
    "relu_stacked": relu_stacked,
    "encoder_decoder": encoder_decoder,
    "many_to_many": many_to_many,
    "sigmoid_classifier": sigmoid_classifier,
    "softmax_classifier": softmax_classifier,
    "stateful_batch9": stateful_batch9,
}


def save(model: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.keras"
    model.save(path)
    return path


def sequence(seed: int = 1, length: int = T, features: int = F) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((length, features)).astype(np.float32)


def make_run(folder: Path, *, arch: str, mode: str, task: str = "regress", horizon: int = 2,
             features: tuple[str, ...] = ("temp", "hum"), targets: tuple[str, ...] = ("temp",),
             classes: list[str] | None = None, threshold: float | None = None, layers: int = 1,
             units: int = 4, lookback: int = 6, tail: bool = True, seed: int = 0,
             residual: bool = False) -> Path:
    """A run folder as statecast-train writes it, with the trainer's own model builder and
    random weights (no training): model.keras, spec.json, metrics.json, tail.npz."""
    from trainer.models import ModelShape, build_model
    from trainer.spec import RunSpec, Scaler

    binary = task == "classify" and threshold is not None
    if task == "regress":
        per_step, act = len(targets), None
    else:
        per_step = 1 if binary else len(classes or [])
        act = "sigmoid" if binary else "softmax"
    shape = ModelShape(arch, len(features), horizon, per_step, act, layers, units, 0.1)
    stateful = mode == "stateful"
    model = build_model(shape, sequences=stateful, lookback=None if stateful else lookback)
    randomize(model, seed)
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    rng = np.random.default_rng(seed)
    x_mean, x_scale = rng.uniform(0, 50, len(features)), rng.uniform(1, 10, len(features))
    y_mean, y_scale = rng.uniform(0, 50, len(targets)), rng.uniform(1, 10, len(targets))
    scaler = Scaler([float(v) for v in x_mean], [float(v) for v in x_scale],
                    [float(v) for v in y_mean], [float(v) for v in y_scale])
    if binary and classes is None:
        classes = [f"{targets[0]}<={threshold:g}", f"{targets[0]}>{threshold:g}"]
    RunSpec(arch=arch, mode=mode, task=task, features=list(features), targets=list(targets),
            horizon=horizon, lookback=lookback, layers=layers, units=units, dropout=0.1,
            scaler=scaler, freq="1h", max_gap=3, classes=classes, threshold=threshold,
            residual=residual).save(folder)
    (folder / "metrics.json").write_text('{"mae": 1.25, "epochs": 1}\n')
    if tail:
        x = x_mean + x_scale * rng.standard_normal((40, len(features)))
        np.savez(folder / "tail.npz", x=x.astype(np.float32))
    return folder
