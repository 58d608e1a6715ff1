"""Per-stream state and its checkpoint. No network, no model: tested on its own.

A checkpoint is one `.npz` file per model id in the state directory, written to a temporary file
and renamed over the old one, so a crash leaves either the previous or the new checkpoint. Stream
ids never become file names: they are stored in the JSON header inside the file, and the file name
is derived from the model id alone (percent-encoded), so no stream id can escape the directory.
Arrays are stacked over streams; nothing is pickled.

Between snapshots, `commit` appends the streams that changed since the last commit to a journal
(`<checkpoint>.journal`): one frame per commit, each with a sequence number, its length and a
CRC32, so a frame torn by a crash is recognised and ignored on `load`. A commit costs one write of
the changed streams (and an fsync if asked), not a rewrite of every stream; when the journal grows
past `COMPACT_BYTES` a snapshot is written and the journal starts again. Streams idle longer than
`ttl` seconds, or beyond `max_resident` (least recently used first), are evicted: their state is
written to a spill file named by the hash of the stream id (`<checkpoint>.spill/`) and read back
when the stream comes back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import struct
import tempfile
import time
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from edge.errors import EdgeError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
PREFIX = "statecast-state-"
JOURNAL_MAGIC = b"SCJ1"
FRAME = struct.Struct("<4sIIQ")  # magic, payload length, CRC32 of the payload, sequence number
COMPACT_BYTES = 4 << 20


@dataclass
class StreamState:
    """What the daemon remembers about one stream.

    `state`: the recurrent tensors (step graphs), each [1, ...]; `window`: the last L observations
    in order, oldest first (window graphs), with `filled` of them real; `last_t`: epoch seconds of
    the last accepted observation; `count`: observations accepted since the last reset;
    `extra`: named float64 arrays other parts of the daemon keep per stream (the partial bin of
    the grid, the scoring trackers), each shaped like the store's template of that name and
    checkpointed with the rest.
    """

    state: list[np.ndarray] = field(default_factory=list)
    window: np.ndarray | None = None
    filled: int = 0
    last_t: float | None = None
    count: int = 0
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    used: float = 0.0  # time.monotonic() of the last change (eviction); not checkpointed

    @property
    def warming(self) -> bool:
        return self.window is not None and self.filled < self.window.shape[0]


class RowTables:
    """Arrays that every stream has, kept as the rows of shared tables, so that streams stepped
    together are gathered and scattered with one numpy call per table.

    `get(st)` gives a stream's arrays; `put(st, r, tables)` makes them views of row r. A stream
    whose arrays are not views of the current tables (new, reset, restored from a checkpoint,
    carried over from another model) is copied in by `row`. Rows of streams that no longer exist
    are reused; the tables double when full.
    """

    def __init__(
        self,
        shapes: list[tuple[int, ...]],
        dtype: Any,
        get: Callable[[StreamState], list[np.ndarray]],
        put: Callable[[StreamState, int, list[np.ndarray]], None],
        capacity: int = 256,
    ) -> None:
        self.tables = [np.zeros((capacity, *shape), dtype) for shape in shapes]
        self._get, self._put = get, put
        self._owners: list[weakref.ref[StreamState] | None] = [None] * capacity
        self._row: dict[int, int] = {}  # id(stream state) -> row
        self._free = list(range(capacity - 1, -1, -1))
        self._views: list[np.ndarray | None] = [None] * capacity  # the first array put in each

    def row(self, st: StreamState) -> int:
        """The row of `st`, copying its arrays in first when they are not views of our tables."""
        return int(self.rows((st,))[0])

    def rows(self, sts: Sequence[StreamState]) -> np.ndarray:
        """The rows of `sts` (see `row`), as an index array. The common case — the stream's
        first array is the very view it was given, and the row is still its own — is checked
        inline; the rest are adopted."""
        row_of, views, owners, get = self._row, self._views, self._owners, self._get
        out = []
        for st in sts:
            r = row_of.get(id(st))
            if r is None or get(st)[0] is not views[r] or (ref := owners[r]) is None \
                    or ref() is not st:
                r = self._adopt(st, r)
            out.append(r)
        return np.array(out, dtype=np.intp)

    def _adopt(self, st: StreamState, r: int | None) -> int:
        """Copy `st`'s arrays into its row (a new one unless `r` is still its own) and make
        them views of it."""
        if r is None or self._owner(r) is not st:
            r = self._take()
            self._owners[r] = weakref.ref(st)
            self._row[id(st)] = r
        for table, value in zip(self.tables, self._get(st), strict=True):
            table[r] = value.reshape(table.shape[1:])
        self._put(st, r, self.tables)
        self._views[r] = self._get(st)[0]
        return r

    def _owner(self, r: int) -> StreamState | None:
        ref = self._owners[r]
        return ref() if ref is not None else None

    def _take(self) -> int:
        if not self._free:
            for r, ref in enumerate(self._owners):  # rows of streams that are gone
                st = ref() if ref is not None else None
                if st is None or self._row.get(id(st)) != r:
                    self._owners[r] = self._views[r] = None
                    self._free.append(r)
            self._row = {i: r for i, r in self._row.items()
                         if self._owners[r] is not None and id(self._owner(r)) == i}
        if not self._free:
            self._grow()
        return self._free.pop()

    def _grow(self) -> None:
        n = len(self._owners)
        old = self.tables
        self.tables = [np.zeros((2 * n, *t.shape[1:]), t.dtype) for t in old]
        for new, t in zip(self.tables, old, strict=True):
            new[:n] = t
        self._owners += [None] * n
        self._views += [None] * n
        self._free = list(range(2 * n - 1, n - 1, -1))
        for r in range(n):  # point the live streams at the new tables
            st = self._owner(r)
            if st is None:
                continue
            if self._get(st)[0] is self._views[r]:
                self._put(st, r, self.tables)
                self._views[r] = self._get(st)[0]
            else:  # adopted again on its next step; the old table is not kept for it
                self._views[r] = None


class StateStore:
    """The states of all streams of one model; owned by a single worker thread (no locks).

    It alone keeps the bookkeeping (what changed since the last commit, what is least recently
    used): callers say what happened (`advance`, `reset`, `drop`) and never edit it themselves.
    """

    def __init__(
        self,
        model_id: str,
        zero_state: list[np.ndarray],
        lookback: int | None = None,
        n_features: int = 1,
        max_streams: int = 100_000,
        ttl: float | None = None,
        max_resident: int | None = None,
        fsync: bool = True,
        extras: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.model_id = model_id
        self._zero = [np.asarray(z, dtype=np.float32) for z in zero_state]
        # name -> the value a new stream starts with; float64, any fixed shape
        self.extras = {k: np.asarray(v, dtype=np.float64) for k, v in (extras or {}).items()}
        self.lookback = lookback
        self.n_features = n_features
        self.max_streams = max_streams
        self._streams: OrderedDict[str, StreamState] = OrderedDict()  # least recently used first
        self._dirty = False  # something to write: changed or evicted streams, a new model id
        self.ttl = ttl
        self.max_resident = max_resident
        self.fsync = fsync
        self.directory: Path | None = None  # set by load/save: where commits and spills go
        self.seq = 0  # sequence number of the last commit
        self._changed: set[str] = set()  # streams changed since the last commit
        self._evicted: list[str] = []  # evicted or dropped since the last commit
        self.restored = 0  # streams read back from spill files
        self.evictions = 0
        self._journal_bytes = 0

    @property
    def streams(self) -> Mapping[str, StreamState]:
        """The resident streams, least recently used first (read-only: changes go through
        `create`, `advance`, `reset`, `drop` and `evict`, which keep the bookkeeping)."""
        return MappingProxyType(self._streams)

    @property
    def dirty(self) -> bool:
        """True while something awaits the next commit."""
        return self._dirty

    def new(self) -> StreamState:
        window = None
        if self.lookback is not None:
            window = np.zeros((self.lookback, self.n_features), dtype=np.float32)
        return StreamState(
            state=[z.copy() for z in self._zero], window=window,
            extra={k: v.copy() for k, v in self.extras.items()},
        )

    def get(self, stream: str) -> StreamState | None:
        st = self._streams.get(stream)
        if st is None and self.directory is not None and (self.ttl or self.max_resident):
            st = self._unspill(stream)
        return st

    def create(self, stream: str) -> StreamState:
        if len(self._streams) >= self.max_streams:
            raise EdgeError(f"the daemon already tracks {self.max_streams} streams")
        st = self._streams[stream] = self.new()
        return st

    def reset(
        self, stream: str, *, keep_last_t: bool = False, keep: tuple[str, ...] = ()
    ) -> StreamState:
        """Zero a stream's state (a gap, a `reset` command), recorded for the next commit; with
        `keep_last_t` its last timestamp stays, so older observations are still refused; the
        extras named in `keep` stay too."""
        old = self._streams[stream]
        st = self._streams[stream] = self.new()
        st.last_t = old.last_t if keep_last_t else None
        for name in keep:
            if name in old.extra:
                st.extra[name] = old.extra[name]
        self._touch(stream, st)
        return st

    def advance(self, stream: str, t: float) -> None:
        """Record that `stream` was stepped by an observation at `t` (epoch seconds): its last
        timestamp moves forward (never back: `late = "accept"` steps older ones too), the next
        commit writes it, and it becomes the most recently used. The only way a step is
        recorded, whatever path stepped it."""
        st = self._streams[stream]
        if st.last_t is None or t > st.last_t:
            st.last_t = t
        self._touch(stream, st)

    def rename(self, model_id: str, extras: Mapping[str, np.ndarray] | None = None) -> None:
        """Keep these states for another model with the same layout (a reload): they belong to
        `model_id` from now on, and the next commit must write them under it. With `extras`
        (the new model's templates), an extra whose shape changed starts afresh in every
        resident stream (spilled ones get the same on restore); the others carry over."""
        self.model_id = model_id
        if extras is not None:
            self.extras = {k: np.asarray(v, dtype=np.float64) for k, v in extras.items()}
            for name, st in self._streams.items():
                st.extra = self._fit_extra(st.extra)
                self._changed.add(name)
        self._dirty = True

    def _fit_extra(self, extra: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`extra` made to match the templates: kept where the shape fits, fresh elsewhere."""
        out = {}
        for name, zero in self.extras.items():
            v = extra.get(name)
            out[name] = v if v is not None and v.shape == zero.shape else zero.copy()
        return out

    def _touch(self, stream: str, st: StreamState) -> None:
        st.used = time.monotonic()
        self._streams.move_to_end(stream)
        self._changed.add(stream)
        self._dirty = True

    # -- eviction ------------------------------------------------------------------------------

    def evict(self, now: float | None = None) -> int:
        """Evict streams idle for more than `ttl` seconds, then the least recently used beyond
        `max_resident`. With a directory their state goes to a spill file first (written before
        the commit that records the eviction); without one it is forgotten. Returns how many."""
        if not self.ttl and not self.max_resident:
            return 0
        now = time.monotonic() if now is None else now
        victims: list[str] = []
        excess = len(self._streams) - self.max_resident if self.max_resident else 0
        for name, st in self._streams.items():  # least recently used first
            if len(victims) < excess or (self.ttl and now - st.used > self.ttl):
                victims.append(name)
            else:
                break
        for name in victims:
            st = self._streams[name]
            if self.directory is not None:
                self._spill(name, st)
            del self._streams[name]
            self._changed.discard(name)
            self._evicted.append(name)
        if victims:
            self._dirty = True
            self.evictions += len(victims)
        return len(victims)

    def spill_dir(self, directory: str | Path) -> Path:
        return Path(directory) / (checkpoint_name(self.model_id)[:-4] + ".spill")

    def _spill_path(self, stream: str) -> Path:
        assert self.directory is not None
        digest = hashlib.sha256(stream.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return self.spill_dir(self.directory) / (digest + ".st")

    def _spill(self, stream: str, st: StreamState) -> None:
        path = self._spill_path(stream)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, self._frame({stream: st}, []), self.fsync)

    def _unspill(self, stream: str) -> StreamState | None:
        path = self._spill_path(stream)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        frames = list(self._frames(data))
        if not frames or stream not in frames[0][1]:
            log.warning("Ignoring damaged spill file %s", path)
            return None
        st = frames[0][1][stream]
        st.used = time.monotonic()
        self._streams[stream] = st
        self.restored += 1
        return st

    def drop(self, stream: str) -> bool:
        """Forget a stream entirely, in memory and on disk (it starts afresh if it comes back);
        False if unknown. The next commit records it like an eviction."""
        known = self._streams.pop(stream, None) is not None
        if self.directory is not None:
            try:
                self._spill_path(stream).unlink()
                known = True
            except OSError:
                pass
        if not known:
            return False
        self._changed.discard(stream)
        self._evicted.append(stream)
        self._dirty = True
        return True

    def same_layout(self, other: StateStore) -> bool:
        """True when `other`'s states fit this store's model (so states can carry over)."""
        return (
            self.lookback == other.lookback
            and self.n_features == other.n_features
            and [z.shape for z in self._zero] == [z.shape for z in other._zero]
        )

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[str]:
        return iter(self._streams)

    def warming(self) -> int:
        return sum(1 for st in self._streams.values() if st.warming)

    # -- checkpoints ---------------------------------------------------------------------------

    def path(self, directory: str | Path) -> Path:
        return Path(directory) / checkpoint_name(self.model_id)

    def journal_path(self, directory: str | Path) -> Path:
        return Path(directory) / (checkpoint_name(self.model_id)[:-4] + ".journal")

    def commit(self, directory: str | Path, snapshot: bool = False) -> int:
        """Make every change since the last commit durable: append one journal frame with the
        changed streams and the evicted names (fsync'd if `fsync`), or write a snapshot when
        asked or when the journal has grown past COMPACT_BYTES. Returns the bytes written."""
        directory = Path(directory)
        self.directory = directory
        if snapshot or self._journal_bytes >= COMPACT_BYTES:
            path = self.save(directory)
            return path.stat().st_size
        if not self._changed and not self._evicted:
            self._dirty = False
            return 0
        self.seq += 1
        frame = self._frame(
            {n: self._streams[n] for n in self._changed if n in self._streams}, self._evicted
        )
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.journal_path(directory), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, frame)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._journal_bytes += len(frame)
        self._changed.clear()
        self._evicted.clear()
        self._dirty = False
        return len(frame)

    def _frame(self, updates: dict[str, StreamState], evicted: list[str]) -> bytes:
        names = list(updates)
        states = list(updates.values())
        head = {
            "streams": names,
            "last_t": [s.last_t for s in states],
            "count": [s.count for s in states],
            "filled": [s.filled for s in states],
            "evicted": list(evicted),
            "extra": {k: int(v.size) for k, v in self.extras.items()},
        }
        parts: list[bytes] = []
        for s in states:
            parts.extend(np.ascontiguousarray(a, dtype=np.float32).tobytes() for a in s.state)
            if self.lookback is not None and s.window is not None:
                parts.append(np.ascontiguousarray(s.window, dtype=np.float32).tobytes())
        for s in states:  # float64 extras after every float32 part
            parts.extend(
                np.ascontiguousarray(s.extra[k], dtype=np.float64).tobytes() for k in self.extras
            )
        text = json.dumps(head, ensure_ascii=True).encode()
        payload = b"".join([struct.pack("<I", len(text)), text, *parts])
        return FRAME.pack(JOURNAL_MAGIC, len(payload), zlib.crc32(payload), self.seq) + payload

    def _frames(self, data: bytes) -> Iterator[tuple[int, dict[str, StreamState], list[str], int]]:
        """(seq, updates, evicted, end offset) for each intact frame, stopping at the first torn
        or damaged one."""
        sizes = [int(z.size) for z in self._zero]
        shapes = [z.shape for z in self._zero]
        wsize = self.lookback * self.n_features if self.lookback is not None else 0
        per = sum(sizes) + wsize
        pos = 0
        while pos + FRAME.size <= len(data):
            magic, length, crc, seq = FRAME.unpack_from(data, pos)
            start, end = pos + FRAME.size, pos + FRAME.size + length
            if magic != JOURNAL_MAGIC or end > len(data):
                return
            payload = data[start:end]
            if zlib.crc32(payload) != crc:
                return
            try:
                (n,) = struct.unpack_from("<I", payload)
                head = json.loads(payload[4 : 4 + n])
                names = [str(x) for x in head["streams"]]
                xsizes = {str(k): int(v) for k, v in head.get("extra", {}).items()}
                xper = sum(xsizes.values())
                f32 = len(names) * per * 4
                flat = np.frombuffer(payload, dtype=np.float32, count=len(names) * per,
                                     offset=4 + n).reshape(len(names), per)
                xflat = np.frombuffer(payload, dtype=np.float64, offset=4 + n + f32)
                xflat = xflat.reshape(len(names), xper)
            except (ValueError, KeyError, TypeError, AttributeError, struct.error):
                return
            updates: dict[str, StreamState] = {}
            for j, name in enumerate(names):
                row, off, state = flat[j], 0, []
                for size, shape in zip(sizes, shapes, strict=True):
                    state.append(row[off : off + size].reshape(shape).copy())
                    off += size
                window = None
                if self.lookback is not None:
                    window = row[off:].reshape(self.lookback, self.n_features).copy()
                last_t = head["last_t"][j]
                extra, xoff = {}, 0
                for key, size in xsizes.items():
                    extra[key] = xflat[j, xoff : xoff + size].copy()
                    xoff += size
                    zero = self.extras.get(key)
                    if zero is not None and zero.size == size:
                        extra[key] = extra[key].reshape(zero.shape)
                updates[name] = StreamState(
                    state=state, window=window, filled=int(head["filled"][j]),
                    last_t=None if last_t is None else float(last_t),
                    count=int(head["count"][j]), extra=self._fit_extra(extra),
                )
            yield int(seq), updates, [str(x) for x in head.get("evicted", [])], end
            pos = end

    def save(self, directory: str | Path) -> Path:
        """Write all states atomically (temporary file, fsync, rename); returns the path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        names = list(self._streams)
        states = [self._streams[n] for n in names]
        header = {
            "format": CHECKPOINT_FORMAT,
            "model_id": self.model_id,
            "streams": names,
            "saved": time.time(),
            "seq": self.seq,
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
        for name, template in self.extras.items():
            rows = [s.extra[name] for s in states]
            arrays[f"extra_{name}"] = (
                np.stack(rows) if rows else np.zeros((0, *template.shape), dtype=np.float64)
            )
        target = self.path(directory)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        _write_atomic(target, buf.getvalue(), fsync=True)
        _fsync_dir(directory)
        # the snapshot holds everything the journal did (frames up to `seq`): start it again
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.journal_path(directory), 0)
        self._journal_bytes = 0
        self._changed.clear()
        self._evicted.clear()
        self.directory = directory
        self._dirty = False
        return target

    def load(self, directory: str | Path) -> int:
        """Restore the checkpoint of this model id, if any; returns the number of streams.

        Checkpoints of other model ids are ignored with a warning; a damaged one too.
        """
        directory = Path(directory)
        self.directory = directory
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
            return self._replay(directory, OrderedDict(), 0)
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
                extras = {k[6:]: data[k] for k in data.files if k.startswith("extra_")}
                for name, arr in extras.items():
                    if len(arr) != len(names):
                        raise ValueError(f"extra {name} has shape {arr.shape}")
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            log.warning("Ignoring damaged checkpoint %s (%s)", target, exc)
            return 0
        streams: OrderedDict[str, StreamState] = OrderedDict()
        for j, name in enumerate(names):
            t = float(last_t[j])
            streams[name] = StreamState(
                state=[np.array(p[j : j + 1], dtype=np.float32) for p in parts],
                window=None if window is None else np.array(window[j], dtype=np.float32),
                filled=0 if filled is None else int(filled[j]),
                last_t=None if np.isnan(t) else t,
                count=int(count[j]),
                extra=self._fit_extra({k: np.array(v[j]) for k, v in extras.items()}),
            )
        return self._replay(directory, streams, int(header.get("seq", 0)))

    def _replay(self, directory: Path, streams: OrderedDict[str, StreamState], seq: int) -> int:
        """Apply the journal's frames newer than the snapshot (`seq`); cut a torn tail off."""
        journal = self.journal_path(directory)
        try:
            data = journal.read_bytes()
        except OSError:
            data = b""
        good = 0
        replayed = 0
        for frame_seq, updates, evicted, end in self._frames(data):
            good = end
            if frame_seq <= seq:
                continue
            for name, st in updates.items():
                streams.pop(name, None)
                streams[name] = st
            for name in evicted:
                streams.pop(name, None)
            seq = frame_seq
            replayed += 1
        if good < len(data):
            log.warning("Ignoring %d damaged bytes at the end of %s", len(data) - good, journal)
            os.truncate(journal, good)
        if replayed:
            log.info("Replayed %d journal commits from %s", replayed, journal)
        now = time.monotonic()
        for st in streams.values():
            st.used = now
        self._streams = streams
        self.seq = seq
        self._journal_bytes = good
        self._changed.clear()
        self._evicted.clear()
        self._dirty = False
        return len(streams)


def checkpoint_name(model_id: str) -> str:
    """A file name for a model id that stays inside the directory whatever the id holds."""
    return PREFIX + quote(model_id, safe="")[:200].replace(".", "%2E") + ".npz"


def _write_atomic(path: Path, data: bytes, fsync: bool) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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

