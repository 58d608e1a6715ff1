"""Keras 3 model builders for every architecture, in training and inference shapes.

The same builder makes the stateful training model (fixed batch, `stateful=True`) and the
inference model saved in the run (free batch, no `stateful`): their weights are identical, so
running the inference model over a whole sequence equals stepping the trained one with its state
carried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.errors import TrainError

ARCHS = ("lstm", "encdec", "bilstm")


@dataclass(frozen=True)
class ModelShape:
    """What the network must map: F features to H steps of `per_step` outputs each."""

    arch: str
    features: int
    horizon: int
    per_step: int  # K targets, 1 for a binary classifier, C classes for a categorical one
    activation: str | None  # None (regression), "sigmoid" or "softmax"
    layers: int
    units: int
    dropout: float


def build_model(
    shape: ModelShape,
    *,
    sequences: bool,
    lookback: int | None = None,
    batch_size: int | None = None,
    stateful: bool = False,
) -> Any:
    """Build the network.

    `sequences=True` gives an output at every time step ([B, T, ...], stateful training and
    inference); otherwise only after the last one ([B, ...], window mode).
    """
    import keras
    from keras import layers as kl

    if shape.arch == "bilstm" and (sequences or stateful):
        raise TrainError("bilstm sees the future of its window, so it trains in window mode only")
    if stateful:
        inputs = keras.Input(batch_shape=(batch_size, lookback, shape.features), name="x")
    else:
        inputs = keras.Input(shape=(lookback, shape.features), name="x")
    h = inputs
    n_enc = shape.layers
    for i in range(n_enc):
        last = i == n_enc - 1
        keep_seq = sequences or not last
        if shape.arch == "bilstm":
            h = kl.Bidirectional(
                kl.LSTM(shape.units, return_sequences=keep_seq), name=f"bilstm_{i}"
            )(h)
        else:
            h = kl.LSTM(shape.units, return_sequences=keep_seq, stateful=stateful,
                        name=f"lstm_{i}")(h)
        if shape.dropout > 0:
            h = kl.Dropout(shape.dropout, name=f"dropout_{i}")(h)
    if shape.arch == "encdec":
        decoder = kl.LSTM(shape.units, return_sequences=True, name="decoder")
        head = kl.Dense(shape.per_step, activation=shape.activation, name="head")
        if sequences:
            h = kl.TimeDistributed(kl.RepeatVector(shape.horizon), name="repeat")(h)
            h = kl.TimeDistributed(decoder, name="decode")(h)
            out = head(h)
        else:
            h = kl.RepeatVector(shape.horizon, name="repeat")(h)
            h = decoder(h)
            out = kl.TimeDistributed(head, name="head_td")(h)
    else:
        out = kl.Dense(shape.horizon * shape.per_step, activation=shape.activation,
                       name="head")(h)
        if shape.activation == "softmax" and shape.horizon != 1:
            raise TrainError(
                "a categorical classifier with --arch lstm or bilstm forecasts one step; "
                "use --horizon 1 or --arch encdec"
            )
    return keras.Model(inputs, out, name=f"statecast_{shape.arch}")


def reset_states(model: Any) -> None:
    """Zero the state of every stateful LSTM (Keras 3 has it per layer)."""
    for layer in model.layers:
        if getattr(layer, "stateful", False) and hasattr(layer, "reset_state"):
            layer.reset_state()
