"""Honest scores on the held-out tail: the model beside naive baselines on the same points."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def seasonal_index(ts: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """[n, H] row of the seasonal-naive forecast for t+h+1: the latest row one season back."""
    h = np.arange(horizon)[None, :]
    return ts[:, None] + h + 1 - season * np.ceil((h + 1) / season).astype(int)


CONFORMAL_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99)


def conformal_seed(errors: np.ndarray) -> dict[str, Any]:
    """Split-conformal radii from validation errors [n, H, K]: per horizon step and target, the
    ceil((n+1)c)/n empirical quantile of |error| at each level c of CONFORMAL_LEVELS (the edge
    interpolates between them), with the RMSE and MAE the edge scales its adaptation by."""
    a = np.abs(np.asarray(errors, dtype=np.float64))
    n = a.shape[0]
    qs = [np.quantile(a, min(1.0, math.ceil((n + 1) * c) / n), axis=0, method="higher")
          for c in CONFORMAL_LEVELS]
    return {
        "points": int(n),
        "levels": list(CONFORMAL_LEVELS),
        "abs_quantiles": np.stack(qs, axis=-1).tolist(),  # [H][K][levels]
        "rmse": np.sqrt(np.mean(a**2, axis=0)).tolist(),  # [H][K]
        "mae": np.mean(a, axis=0).tolist(),
    }


def regression_metrics(
    pred: np.ndarray,
    actual: np.ndarray,
    persistence: np.ndarray,
    seasonal: np.ndarray | None,
) -> dict[str, Any]:
    """RMSE and MAE overall and per horizon step; arrays are [n, H, K] in target units."""

    def scores(p: np.ndarray) -> tuple[float, float, list[float], list[float]]:
        err = p - actual
        rmse = math.sqrt(float(np.mean(err**2)))
        mae = float(np.mean(np.abs(err)))
        per_rmse = np.sqrt(np.mean(err**2, axis=(0, 2))).tolist()
        per_mae = np.mean(np.abs(err), axis=(0, 2)).tolist()
        return rmse, mae, per_rmse, per_mae

    rmse, mae, h_rmse, h_mae = scores(pred)
    p_rmse, p_mae, hp_rmse, hp_mae = scores(persistence)
    out: dict[str, Any] = {
        "task": "regress",
        "points": int(actual.shape[0]),
        "rmse": rmse,
        "mae": mae,
        "persistence_rmse": p_rmse,
        "persistence_mae": p_mae,
        "skill_vs_persistence": 1.0 - rmse / p_rmse if p_rmse > 0 else None,
        "per_horizon": {
            "rmse": h_rmse, "mae": h_mae,
            "persistence_rmse": hp_rmse, "persistence_mae": hp_mae,
        },
    }
    if seasonal is not None:
        s_rmse, s_mae, hs_rmse, hs_mae = scores(seasonal)
        out.update(seasonal_rmse=s_rmse, seasonal_mae=s_mae)
        out["per_horizon"].update(seasonal_rmse=hs_rmse, seasonal_mae=hs_mae)
    return out


def classification_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    prior: np.ndarray,
    persistence: np.ndarray,
) -> dict[str, Any]:
    """Accuracy and log loss beside the majority class (training prior) and persistence.

    `probs` is [n, H, C], `labels` and `persistence` are [n, H] class indices.
    """
    eps = 1e-7
    n, h, c = probs.shape
    p_true = np.take_along_axis(probs, labels[..., None].astype(int), axis=-1)[..., 0]
    majority = int(np.argmax(prior))
    prior_ll = -np.log(np.clip(prior[labels.astype(int)], eps, 1.0))
    return {
        "task": "classify",
        "points": int(n),
        "accuracy": float(np.mean(np.argmax(probs, axis=-1) == labels)),
        "log_loss": float(np.mean(-np.log(np.clip(p_true, eps, 1.0)))),
        "majority_accuracy": float(np.mean(labels == majority)),
        "majority_log_loss": float(np.mean(prior_ll)),
        "persistence_accuracy": float(np.mean(persistence == labels)),
        "per_horizon": {
            "accuracy": np.mean(np.argmax(probs, axis=-1) == labels, axis=0).tolist(),
        },
        "classes": c,
        "horizon": h,
    }


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """A short, aligned evaluation table for the terminal."""
    if metrics["task"] == "classify":
        return [
            f"held-out tail: {metrics['points']} forecasts",
            f"  accuracy   model {metrics['accuracy']:.3f}   majority class "
            f"{metrics['majority_accuracy']:.3f}   "
            f"persistence {metrics['persistence_accuracy']:.3f}",
            f"  log loss   model {metrics['log_loss']:.3f}   majority class "
            f"{metrics['majority_log_loss']:.3f}",
        ]
    ph = metrics["per_horizon"]
    head = f"  {'horizon':>7} {'model':>9} {'persist.':>9}"
    seasonal = "seasonal_rmse" in ph
    if seasonal:
        head += f" {'seasonal':>9}"
    lines = [f"held-out tail: {metrics['points']} forecast origins; RMSE in target units", head]
    for i, r in enumerate(ph["rmse"]):
        row = f"  {i + 1:>7} {r:>9.3f} {ph['persistence_rmse'][i]:>9.3f}"
        if seasonal:
            row += f" {ph['seasonal_rmse'][i]:>9.3f}"
        lines.append(row)
    row = f"  {'all':>7} {metrics['rmse']:>9.3f} {metrics['persistence_rmse']:>9.3f}"
    if seasonal:
        row += f" {metrics['seasonal_rmse']:>9.3f}"
    lines.append(row)
    lines.append(
        f"  MAE all: model {metrics['mae']:.3f}, persistence {metrics['persistence_mae']:.3f}"
    )
    return lines
