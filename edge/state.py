"""Per-stream state and its checkpoint. No network, no model: tested on its own.

A checkpoint is one `.npz` file per model id in the state directory, written to a temporary file
and renamed over the old one, so a crash leaves either the previous or the new checkpoint. Stream
ids never become file names: they are stored in the JSON header inside the file, and the file name
is derived from the model id alone (percent-encoded), so no stream id can escape the directory.
Arrays are stacked over streams; nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np

from edge.errors import EdgeError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
PREFIX = "statecast-state-"


@dataclass
class StreamState:
    """What the daemon remembers about one stream.

    `state`: the recurrent tensors (step graphs), each [1, ...]; `window`: the last L observations
    in order, oldest first (window graphs), with `filled` of them real; `last_t`: epoch seconds of
    the last accepted observation; `count`: observations accepted since the last reset.
    """

    state: list[np.ndarray] = field(default_factory=list)
    window: np.ndarray | None = None
    filled: int = 0
    last_t: float | None = None
    count: int = 0

    @property
    def warming(self) -> bool:
        return self.window is not None and self.filled < self.window.shape[0]


class StateStore:
    """The states of all streams of one model; owned by a single worker thread (no locks)."""

    def __init__(
        self,
        model_id: str,
        zero_state: list[np.ndarray],
        lookback: int | None = None,
        n_features: int = 1,
        max_streams: int = 100_000,
    ) -> None:
        self.model_id = model_id
        self._zero = [np.asarray(z, dtype=np.float32) for z in zero_state]
        self.lookback = lookback
        self.n_features = n_features
        self.max_streams = max_streams
        self.streams: dict[str, StreamState] = {}
        self.dirty = False

    def new(self) -> StreamState:
        window = None
        if self.lookback is not None:
            window = np.zeros((self.lookback, self.n_features), dtype=np.float32)
        return StreamState(state=[z.copy() for z in self._zero], window=window)

    def get(self, stream: str) -> StreamState | None:
        return self.streams.get(stream)

    def create(self, stream: str) -> StreamState:
        if len(self.streams) >= self.max_streams:
            raise EdgeError(f"the daemon already tracks {self.max_streams} streams")
        st = self.streams[stream] = self.new()
        return st

    def reset(self, stream: str) -> StreamState:
        """Zero a stream's state (its last timestamp is kept by the caller if it wants)."""
        st = self.streams[stream] = self.new()
        self.dirty = True
        return st

    def drop(self, stream: str) -> bool:
        """Forget a stream entirely (it starts afresh if it comes back); False if unknown."""
        if self.streams.pop(stream, None) is None:
            return False
        self.dirty = True
        return True

    def same_layout(self, other: StateStore) -> bool:
        """True when `other`'s states fit this store's model (so states can carry over)."""
        return (
            self.lookback == other.lookback
            and self.n_features == other.n_features
            and [z.shape for z in self._zero] == [z.shape for z in other._zero]
        )

    def __len__(self) -> int:
        return len(self.streams)

    def __iter__(self) -> Iterator[str]:
        return iter(self.streams)

    def warming(self) -> int:
        return sum(1 for st in self.streams.values() if st.warming)

    # -- checkpoints ---------------------------------------------------------------------------

    def path(self, directory: str | Path) -> Path:
        return Path(directory) / checkpoint_name(self.model_id)

    def save(self, directory: str | Path) -> Path:
        """Write all states atomically (temporary file, fsync, rename); returns the path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        names = list(self.streams)
        states = [self.streams[n] for n in names]
        header = {
            "format": CHECKPOINT_FORMAT,
            "model_id": self.model_id,
            "streams": names,
            "saved": time.time(),
        }
        arrays: dict[str, np.ndarray] = {
            "header": np.array(json.dumps(header)),
            "last_t": np.array(
                [np.nan if s.last_t is None else s.last_t for s in states], dtype=np.float64
            ),
            "count": np.array([s.count for s in states], dtype=np.int64),
        }
        for i, zero in enumerate(self._zero):
            arrays[f"state_{i}"] = (
                np.concatenate([s.state[i] for s in states])
                if states
                else np.zeros((0, *zero.shape[1:]), dtype=np.float32)
            )
        if self.lookback is not None:
            arrays["window"] = (
                np.stack([s.window for s in states if s.window is not None])
                if states
                else np.zeros((0, self.lookback, self.n_features), dtype=np.float32)
            )
            arrays["filled"] = np.array([s.filled for s in states], dtype=np.int64)
        target = self.path(directory)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)
        self.dirty = False
        return target

    def load(self, directory: str | Path) -> int:
        """Restore the checkpoint of this model id, if any; returns the number of streams.

        Checkpoints of other model ids are ignored with a warning; a damaged one too.
        """
        directory = Path(directory)
        if not directory.is_dir():
            return 0
        target = self.path(directory)
        for other in sorted(directory.glob(PREFIX + "*.npz")):
            if other.name != target.name:
                log.warning(
                    "Ignoring checkpoint %s: it belongs to model %s, not %s",
                    other, unquote(other.name[len(PREFIX):-4]), self.model_id,
                )
        if not target.is_file():
            return 0
        try:
            with np.load(target, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                if header.get("model_id") != self.model_id:
                    log.warning(
                        "Ignoring checkpoint %s: it belongs to model %s, not %s",
                        target, header.get("model_id"), self.model_id,
                    )
                    return 0
                if header.get("format") != CHECKPOINT_FORMAT:
                    log.warning("Ignoring checkpoint %s: unknown format", target)
                    return 0
                names = [str(n) for n in header["streams"]]
                last_t = data["last_t"]
                count = data["count"]
                parts = [data[f"state_{i}"] for i in range(len(self._zero))]
                for i, zero in enumerate(self._zero):
                    if parts[i].shape[1:] != zero.shape[1:] or len(parts[i]) != len(names):
                        raise ValueError(f"state {i} has shape {parts[i].shape}")
                window = filled = None
                if self.lookback is not None:
                    window = data["window"]
                    filled = data["filled"]
                    if window.shape != (len(names), self.lookback, self.n_features):
                        raise ValueError(f"window has shape {window.shape}")
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            log.warning("Ignoring damaged checkpoint %s (%s)", target, exc)
            return 0
        streams: dict[str, StreamState] = {}
        for j, name in enumerate(names):
            t = float(last_t[j])
            streams[name] = StreamState(
                state=[np.array(p[j : j + 1], dtype=np.float32) for p in parts],
                window=None if window is None else np.array(window[j], dtype=np.float32),
                filled=0 if filled is None else int(filled[j]),
                last_t=None if np.isnan(t) else t,
                count=int(count[j]),
            )
        self.streams = streams
        self.dirty = False
        return len(streams)


def checkpoint_name(model_id: str) -> str:
    """A file name for a model id that stays inside the directory whatever the id holds."""
    return PREFIX + quote(model_id, safe="")[:200].replace(".", "%2E") + ".npz"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

