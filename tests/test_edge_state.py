"""state: per-stream states and atomic checkpoints. No broker."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import Sink

from edge.config import EdgeConfig
from edge.service import Processor, load_model
from edge.state import StateStore, checkpoint_name


def _store(model_id: str = "m1", lookback: int | None = None) -> StateStore:
    zero = [] if lookback else [np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32)]
    return StateStore(model_id, zero, lookback=lookback, n_features=2)


def test_new_streams_start_at_zero_and_are_independent() -> None:
    s = _store()
    a = s.create("a")
    b = s.create("b")
    a.state[0] += 1
    assert not b.state[0].any()
    assert s.new().state[0].sum() == 0


def test_checkpoint_roundtrip_step(tmp_path: Path) -> None:
    s = _store()
    rng = np.random.default_rng(0)
    names = ["a", "../../etc/passwd", "ünï/cødé", "", "x" * 300]
    for i, name in enumerate(names):
        st = s.create(name)
        st.state = [rng.normal(size=(1, 3)).astype(np.float32) for _ in range(2)]
        st.last_t = 1000.0 + i
        st.count = i
    s.create("fresh")
    path = s.save(tmp_path)
    assert path.parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
    t = _store()
    assert t.load(tmp_path) == len(names) + 1
    for name in names:
        assert t.streams[name].last_t == s.streams[name].last_t
        assert t.streams[name].count == s.streams[name].count
        for x, y in zip(t.streams[name].state, s.streams[name].state, strict=True):
            np.testing.assert_array_equal(x, y)
    assert t.streams["fresh"].last_t is None


def test_checkpoint_roundtrip_window(tmp_path: Path) -> None:
    s = _store(lookback=4)
    st = s.create("w")
    assert st.window is not None
    st.window[:] = np.arange(8, dtype=np.float32).reshape(4, 2)
    st.filled = 3
    assert s.warming() == 1
    s.save(tmp_path)
    t = _store(lookback=4)
    t.load(tmp_path)
    restored = t.streams["w"]
    assert restored.filled == 3
    np.testing.assert_array_equal(restored.window, st.window)


def test_other_model_checkpoint_is_ignored_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = _store("model-a")
    s.create("a").last_t = 5.0
    s.save(tmp_path)
    other = _store("model-b")
    with caplog.at_level(logging.WARNING, logger="edge.state"):
        assert other.load(tmp_path) == 0
    assert "model-a" in caplog.text
    assert other.streams == {}
    # a file renamed to look like ours but holding another model id is ignored too
    (tmp_path / checkpoint_name("model-a")).rename(tmp_path / checkpoint_name("model-b"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge.state"):
        assert other.load(tmp_path) == 0
    assert "belongs to model model-a" in caplog.text


def test_damaged_checkpoint_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = _store()
    s.path(tmp_path).write_bytes(b"not a zip")
    with caplog.at_level(logging.WARNING, logger="edge.state"):
        assert s.load(tmp_path) == 0
    assert "damaged" in caplog.text


def test_checkpoint_name_stays_in_directory() -> None:
    for model_id in ["../../x", "/abs", "..", "a/b\\c", "\x00"]:
        name = checkpoint_name(model_id)
        assert "/" not in name and "\\" not in name and ".." not in name and "\x00" not in name


def test_checkpoint_is_not_pickled(tmp_path: Path) -> None:
    s = _store()
    s.create("a")
    path = s.save(tmp_path)
    with np.load(path, allow_pickle=False) as data:
        assert {"header", "last_t", "count", "state_0", "state_1"} <= set(data.files)


# -- journal, group commit and eviction ---------------------------------------------------------


def _step(s: StateStore, name: str, t: float) -> None:
    st = s.get(name) or s.create(name)
    st.state = [x + 1 for x in st.state]
    st.count += 1
    s.advance(name, t)


def test_commit_appends_only_changed_streams_and_replays(tmp_path: Path) -> None:
    s = _store()
    for i in range(100):
        _step(s, f"s{i}", 1.0)
    first = s.commit(tmp_path)
    _step(s, "s3", 2.0)
    second = s.commit(tmp_path)
    assert second < first / 20  # one stream, not a hundred
    assert s.commit(tmp_path) == 0  # nothing changed
    assert not s.path(tmp_path).exists()  # no snapshot needed yet
    t = _store()
    assert t.load(tmp_path) == 100
    assert t.streams["s3"].last_t == 2.0 and t.streams["s3"].count == 2
    np.testing.assert_array_equal(t.streams["s3"].state[0], s.streams["s3"].state[0])


def test_torn_journal_tail_is_ignored_and_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = _store()
    _step(s, "a", 1.0)
    s.commit(tmp_path)
    _step(s, "a", 2.0)
    s.commit(tmp_path)
    journal = s.journal_path(tmp_path)
    data = journal.read_bytes()
    for cut in (len(data) - 1, len(data) - 30):
        journal.write_bytes(data[:cut])
        t = _store()
        with caplog.at_level(logging.WARNING, logger="edge.state"):
            assert t.load(tmp_path) == 1
        assert t.streams["a"].last_t == 1.0  # the torn second commit is not applied
        assert "damaged bytes" in caplog.text
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF  # a damaged (not torn) last frame fails its CRC
    journal.write_bytes(bytes(flipped))
    t = _store()
    t.load(tmp_path)
    assert t.streams["a"].last_t == 1.0


def test_snapshot_supersedes_journal(tmp_path: Path) -> None:
    s = _store()
    _step(s, "a", 1.0)
    s.commit(tmp_path)
    _step(s, "a", 2.0)
    s.commit(tmp_path, snapshot=True)
    assert s.journal_path(tmp_path).stat().st_size == 0
    _step(s, "a", 3.0)
    s.commit(tmp_path)
    t = _store()
    t.load(tmp_path)
    assert t.streams["a"].last_t == 3.0 and t.streams["a"].count == 3


def test_eviction_spills_and_restores(tmp_path: Path) -> None:
    s = _store()
    s.max_resident = 2
    s.ttl = 100.0
    s.load(tmp_path)
    for i, name in enumerate(["a", "b", "c"]):
        _step(s, name, float(i))
    assert s.evict() == 1  # the least recently used: a
    assert list(s.streams) == ["b", "c"]
    s.commit(tmp_path)
    assert s.evict(now=time.monotonic() + 1000) == 2  # idle past the TTL
    s.commit(tmp_path)
    assert len(s) == 0
    # a restart finds no resident stream, and each comes back from its spill file on demand
    t = _store()
    t.ttl = 100.0
    assert t.load(tmp_path) == 0
    a = t.get("a")
    assert a is not None and a.last_t == 0.0 and a.count == 1
    np.testing.assert_array_equal(a.state[0], np.ones((1, 3), np.float32))
    assert t.get("never-seen") is None
    spilled = sorted(p.name for p in t.spill_dir(tmp_path).iterdir())
    assert len(spilled) == 3 and not any(n == "a" or "/" in n for n in spilled)


def test_eviction_without_directory_forgets() -> None:
    s = _store()
    s.max_resident = 1
    _step(s, "a", 1.0)
    _step(s, "b", 1.0)
    assert s.evict() == 1
    assert s.get("a") is None and s.get("b") is not None


def test_journal_roundtrip_window(tmp_path: Path) -> None:
    s = _store(lookback=4)
    st = s.create("w")
    assert st.window is not None
    st.window[:] = np.arange(8, dtype=np.float32).reshape(4, 2)
    st.filled = 3
    s.advance("w", 7.0)
    s.commit(tmp_path)
    t = _store(lookback=4)
    assert t.load(tmp_path) == 1
    assert t.streams["w"].filled == 3 and t.streams["w"].last_t == 7.0
    np.testing.assert_array_equal(t.streams["w"].window, st.window)


# -- the processor tells the store about every step, in both serving modes --------------------


def test_every_stepped_stream_is_committed_and_stays_recent(
    step_models: dict[str, Path], tmp_path: Path, batch: str
) -> None:
    """Three streams stepped together (dynamic batch) or one by one (batch 1), committed after
    each round: none of them counts as idle right after its step, and a restart restores every
    state exactly."""
    cfg = EdgeConfig(model=str(step_models["step"]), subscribe=("x/+/temp",), client_id="t",
                     state_dir=str(tmp_path), stream_ttl=60.0)

    def processor() -> Processor:
        model, freq = load_model(cfg)
        proc = Processor(cfg, model, freq, Sink())
        proc.store.load(tmp_path)
        return proc

    proc = processor()
    for hour in range(5):
        proc.handle_many([
            (f"x/s{i}/temp", json.dumps({"ts": hour * 3600, "temp": 40.0 + i + hour}).encode())
            for i in range(3)
        ])
        assert proc.store.evict(now=time.monotonic() + 30.0) == 0  # idle for 30 s < ttl 60 s
        proc.store.commit(tmp_path)
    assert proc.metrics.predictions_out == 15
    assert proc.metrics.model_runs == (5 if batch == "dynamic" else 15)
    restarted = processor()
    assert sorted(restarted.store) == ["s0", "s1", "s2"]
    for name in ("s0", "s1", "s2"):
        want, got = proc.store.streams[name], restarted.store.streams[name]
        assert (got.last_t, got.count) == (want.last_t, want.count) == (4 * 3600.0, 5)
        for x, y in zip(got.state, want.state, strict=True):
            np.testing.assert_array_equal(x, y)


def _extra_store(model_id: str = "m1", **shapes: tuple[int, ...]) -> StateStore:
    extras = {k: np.full(v, np.nan) for k, v in shapes.items()}
    return StateStore(model_id, [np.zeros((1, 3), np.float32)], extras=extras)


@pytest.mark.parametrize("how", ["journal", "snapshot", "spill"])
def test_extras_survive_every_way_a_state_is_written(tmp_path: Path, how: str) -> None:
    s = _extra_store(bin=(3,), score=(2, 4))
    s.commit(tmp_path, snapshot=True)
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        st = s.create(name)
        st.extra["bin"][:] = rng.normal(size=3)
        st.extra["score"][:] = rng.normal(size=(2, 4))
        s.advance(name, 10.0)
    if how == "spill":
        s.ttl = 1e-9
        s.evict(now=time.monotonic() + 1)
        assert len(s) == 0
    s.commit(tmp_path, snapshot=how == "snapshot")
    t = _extra_store(bin=(3,), score=(2, 4))
    t.load(tmp_path)
    t.ttl = 1e9  # spilled streams come back on `get`
    for name in ("a", "b"):
        back = t.get(name)
        assert back is not None
        want = s.get(name)
        assert want is not None
        for key in ("bin", "score"):
            assert back.extra[key].shape == want.extra[key].shape
            np.testing.assert_array_equal(back.extra[key], want.extra[key])


def test_an_extra_whose_shape_changed_starts_afresh_and_the_others_carry_over(
    tmp_path: Path,
) -> None:
    s = _extra_store(bin=(3,), score=(2, 4))
    st = s.create("a")
    st.extra["bin"][:] = 1.0
    st.extra["score"][:] = 2.0
    s.advance("a", 1.0)
    s.rename("m2", {"bin": np.zeros(3), "score": np.zeros((3, 4))})
    assert (s.streams["a"].extra["bin"] == 1.0).all()
    score = s.streams["a"].extra["score"]
    assert (score == 0.0).all() and score.shape == (3, 4)
    s.commit(tmp_path, snapshot=True)
    # a checkpoint written with other extras loads into the templates of this store
    t = _extra_store("m2", bin=(3,), other=(1,))
    t.load(tmp_path)
    assert (t.streams["a"].extra["bin"] == 1.0).all()
    assert np.isnan(t.streams["a"].extra["other"]).all()
    assert set(t.streams["a"].extra) == {"bin", "other"}


def test_reset_keeps_only_the_extras_it_is_told_to() -> None:
    s = _extra_store(bin=(3,), score=(2,))
    st = s.create("a")
    st.extra["bin"][:] = 1.0
    st.extra["score"][:] = 2.0
    after = s.reset("a", keep=("score",))
    assert np.isnan(after.extra["bin"]).all()
    assert (after.extra["score"] == 2.0).all()
