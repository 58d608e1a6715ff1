"""A seed ensemble as one wider LSTM: N members side by side, their forecasts averaged.

N stacked LSTMs of U units that share their input are exactly one stack of N*U units whose
weights are block-diagonal (every member's gates see only its own units), and the mean of their
linear heads is one head with the members' kernels stacked and divided by N. So the ensemble is
an ordinary Keras model that the exporter turns into the same fused ONNX LSTM nodes as any run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from trainer.models import ModelShape, build_model


def _gate_blocks(w: np.ndarray, units: int) -> list[np.ndarray]:
    """Split the last axis of a Keras LSTM weight into its four gates (i, f, c, o)."""
    return [w[..., g * units:(g + 1) * units] for g in range(4)]


def merge(members: list[Any], shape: ModelShape) -> Any:
    """One model equal to the mean of `members` (same shape, regression head, arch lstm)."""
    n, u = len(members), shape.units
    merged = build_model(replace(shape, units=n * u), sequences=True)
    for i in range(shape.layers):
        name = f"lstm_{i}"
        parts = [m.get_layer(name).get_weights() for m in members]  # kernel, recurrent, bias
        d_in = parts[0][0].shape[0]
        first = i == 0
        kernel = np.zeros((d_in if first else n * u, 4 * n * u), np.float32)
        rec = np.zeros((n * u, 4 * n * u), np.float32)
        bias = np.zeros(4 * n * u, np.float32)
        for m, (k, r, b) in enumerate(parts):
            rows = slice(None) if first else slice(m * u, (m + 1) * u)
            for g, (kg, rg, bg) in enumerate(zip(_gate_blocks(k, u), _gate_blocks(r, u),
                                                 _gate_blocks(b, u), strict=True)):
                cols = slice(g * n * u + m * u, g * n * u + (m + 1) * u)
                kernel[rows, cols] = kg
                rec[m * u:(m + 1) * u, cols] = rg
                bias[cols] = bg
        merged.get_layer(name).set_weights([kernel, rec, bias])
    heads = [m.get_layer("head").get_weights() for m in members]
    merged.get_layer("head").set_weights([
        np.concatenate([k for k, _ in heads], axis=0) / n,
        np.mean([b for _, b in heads], axis=0),
    ])
    return merged
