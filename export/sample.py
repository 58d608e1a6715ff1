"""`--sample`: the user's own inputs for the proof, read from a .npy array or a CSV file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from export.errors import ExportError

SUFFIXES = (".npy", ".csv")


def _default_names(features: tuple[str, ...]) -> bool:
    """True for a plain model's unnamed features x0..x{F-1}."""
    return features == tuple(f"x{i}" for i in range(len(features)))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_npy(path: Path) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ExportError(f"--sample {path} could not be read as a .npy array ({first})") from None
    if not isinstance(data, np.ndarray):
        raise ExportError(f"--sample {path} holds several arrays; save one with numpy.save")
    if data.dtype.kind not in "biuf":
        raise ExportError(f"--sample {path} holds {data.dtype} values, not numbers")
    if data.ndim not in (2, 3):
        raise ExportError(
            f"--sample {path} is an array of shape {list(data.shape)}; expected [T, F] or "
            "[N, T, F]"
        )
    return data


def _read_csv(path: Path, features: tuple[str, ...]) -> np.ndarray:
    """The feature columns of a CSV with a header, in the model's order ([T, F])."""
    lines: list[tuple[int, list[str]]] = []  # (line number, fields), blank lines left out
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if any(cell.strip() for cell in row):
                    lines.append((reader.line_num, row))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ExportError(f"--sample {path} could not be read as a CSV file ({exc})") from None
    if len(lines) < 2:
        raise ExportError(f"--sample {path} needs a header line and at least one row of values")
    header = [name.strip() for name in lines[0][1]]
    body = lines[1:]
    for n, row in body:
        if len(row) != len(header):
            raise ExportError(f"--sample {path} line {n} has {len(row)} fields, the header "
                              f"{len(header)}")
    if all(name in header for name in features):
        columns = [header.index(name) for name in features]
    elif _default_names(features):  # unnamed features: the columns whose first value is a number
        columns = [j for j in range(len(header)) if _is_number(body[0][1][j].strip())]
        if len(columns) != len(features):
            raise ExportError(
                f"--sample {path} has {len(columns)} numeric columns but the model takes "
                f"{len(features)} features; name them with --features"
            )
    else:
        missing = [name for name in features if name not in header]
        raise ExportError(f"--sample {path} has no column {missing[0]!r} (it has: "
                          f"{', '.join(header)})")
    out = np.empty((len(body), len(columns)), np.float64)
    for i, (n, row) in enumerate(body):
        for k, j in enumerate(columns):
            try:
                out[i, k] = float(row[j])
            except ValueError:
                raise ExportError(f"--sample {path} line {n} column {header[j]!r} is not a "
                                  f"number ({row[j][:40]!r})") from None
    return out


def load_sample(path: str | Path, features: tuple[str, ...], min_steps: int = 1
                ) -> list[np.ndarray]:
    """The sequences in a sample file, raw feature units, as float32 arrays [T, F].

    A `.npy` file holds [T, F] (one sequence) or [N, T, F] (N sequences), features in the model's
    order; a `.csv` file has a header: the columns named like the features are taken, or, for a
    plain model whose features are unnamed, its numeric columns in order (those whose first value
    is a number; a later value that is not is named as an error). Each sequence needs
    `min_steps` steps. Any problem is an ExportError (status 2) naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"--sample {path} does not exist" if not path.exists()
                          else f"--sample {path} is not a file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ExportError(f"--sample {path} must be a .npy array or a .csv file")
    data = _read_npy(path) if suffix == ".npy" else _read_csv(path, features)
    seqs = data[None] if data.ndim == 2 else data
    n, t, f = seqs.shape
    if f != len(features):
        raise ExportError(f"--sample {path} has {f} values per step but the model takes "
                          f"{len(features)} features")
    if n == 0 or t == 0:
        raise ExportError(f"--sample {path} holds no observations")
    if t < min_steps:
        raise ExportError(f"--sample {path} has sequences of {t} steps but the model takes "
                          f"{min_steps}")
    seqs = seqs.astype(np.float32)
    if not np.all(np.isfinite(seqs)):
        raise ExportError(f"--sample {path} holds NaN or infinite values (or values too large "
                          "for float32)")
    return list(seqs)
