"""Small synthetic tables for trainer tests: known structure, a few hundred rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def hourly_sine(n: int = 600, seed: int = 0, start: str = "2024-01-01") -> pd.DataFrame:
    """A daily cycle with noise, a second feature and a categorical column."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    temp = 50 + 8 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.5, n)
    hum = 70 - 10 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 1.0, n)
    sky = np.where(temp > 52, "sun", np.where(temp > 46, "cloud", "rain"))
    return pd.DataFrame({
        "date": pd.date_range(start, periods=n, freq="h").strftime("%Y/%m/%d %H:%M"),
        "temp": temp.round(2), "hum": hum.round(2), "sky": sky,
    })


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path
