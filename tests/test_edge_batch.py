"""Micro-batching: many streams in one run of a dynamic-batch graph give exactly what stepping each
stream alone in the batch-1 graph gives — on real onnxruntime sessions, without a broker."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Sink
from edge_models import build_model

from edge.config import EdgeConfig
from edge.model import StepModel
from edge.runner import Runner
from edge.service import Processor, load_model
from edge.state import StreamState


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same weights as a batch-1 graph and as a dynamic-batch graph."""
    d = tmp_path_factory.mktemp("batch")
    kw: dict[str, Any] = {"units": 16, "horizon": 4, "features": ("temp", "hum"),
                          "model_id": "twin", "seed": 5}
    return build_model(d / "one.onnx", **kw), build_model(d / "dyn.onnx", batch="dynamic", **kw)


def test_step_many_equals_step_one(twins: tuple[Path, Path]) -> None:
    """Batches of changing membership, more streams than the state tables first hold, streams
    replaced (as a gap reset does) and stepped alone in between: always what stepping alone
    gives."""
    one, dyn = Runner(StepModel(twins[0])), Runner(StepModel(twins[1]))
    assert dyn.batched and not one.batched
    rng = np.random.default_rng(0)
    n = 300  # the tables start with 256 rows
    alone = [StreamState(state=[rng.normal(0, 0.5, (1, 16)).astype(np.float32)
                                for _ in range(2)]) for _ in range(n)]
    together = [StreamState(state=[s.copy() for s in st.state]) for st in alone]
    for step in range(6):
        members = sorted(rng.choice(n, size=int(rng.integers(2, n)), replace=False).tolist())
        x = rng.normal(50, 10, (len(members), 2)).astype(np.float32)
        ys = dyn.step_many([together[i] for i in members], x)
        assert ys.shape == (len(members), 4)
        for k, i in enumerate(members):
            y = one.step_one(alone[i], x[k])
            assert y is not None
            np.testing.assert_allclose(ys[k : k + 1], y, atol=1e-6, rtol=0)
        if step % 2:  # replace some streams by fresh ones, step one stream alone
            for i in rng.choice(n, size=40, replace=False).tolist():
                alone[i] = StreamState(state=[np.zeros((1, 16), np.float32)] * 2)
                together[i] = StreamState(state=[np.zeros((1, 16), np.float32)] * 2)
            xi = np.full(2, 45.0, np.float32)
            dyn.step_one(together[7], xi)
            one.step_one(alone[7], xi)
    for a_st, b_st in zip(alone, together, strict=True):
        assert a_st.count == b_st.count
        for a, b in zip(a_st.state, b_st.state, strict=True):
            assert b.shape == (1, 16)
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    # states are not shared between streams: stepping one leaves the others alone
    before = [s.copy() for s in together[1].state]
    dyn.step_many(together[:1], np.ones((1, 2), np.float32))
    dyn.step_many([together[0], together[2]], np.ones((2, 2), np.float32))
    for a, b in zip(before, together[1].state, strict=True):
        np.testing.assert_array_equal(a, b)


def processor(model: Path, **kw: Any) -> tuple[Processor, Sink]:
    cfg = EdgeConfig(model=str(model), subscribe=("sensors/+/x",), client_id="b", **kw)
    m, freq = load_model(cfg)
    sink = Sink()
    return Processor(cfg, m, freq, sink), sink


def traffic(seed: int = 1) -> list[tuple[str, bytes]]:
    """Interleaved messages of 40 streams with every kind of trouble mixed in."""
    rng = random.Random(seed)
    msgs: list[tuple[str, bytes]] = []
    streams = [f"s{i}" for i in range(40)]
    for hour in range(12):
        order = streams[:]
        rng.shuffle(order)
        for s in order:
            day, h = divmod(hour, 24)
            if s == "s3" and hour >= 6:  # a gap of 3 days: the state is reset
                day += 3
            body = {"ts": f"2010-03-{day + 1:02d}T{h:02d}:00:00",
                    "temp": round(rng.uniform(30, 70), 2), "hum": round(rng.uniform(20, 90), 1)}
            msgs.append((f"sensors/{s}/x", json.dumps(body).encode()))
            if rng.random() < 0.1:  # the same stream again at once: a duplicate timestamp
                msgs.append((f"sensors/{s}/x", json.dumps(body).encode()))
            if rng.random() < 0.05:
                msgs.append((f"sensors/{s}/x", b"{not json"))
            if rng.random() < 0.05:
                msgs.append((f"sensors/{s}/x", b'{"ts": 5, "temp": "warm", "hum": 1}'))
        # a stream that reports twice in a row, a later hour first: out of order
        msgs.append(("sensors/late/x", json.dumps(
            {"ts": 3600 * (hour + 2), "temp": 40.0 + hour, "hum": 50}).encode()))
        msgs.append(("sensors/late/x", json.dumps(
            {"ts": 3600 * (hour + 1.5), "temp": 41.0, "hum": 50}).encode()))
    msgs.append(("sensors/bad+id/x", b"1"))
    return msgs


@pytest.mark.parametrize("chunks", [(1, 5, 64, 1000), (400, 400, 400, 400)])
def test_handle_many_equals_handle_alone(twins: tuple[Path, Path], chunks: tuple[int, ...]) -> None:
    msgs = traffic()
    alone, want = processor(twins[0])
    for topic, payload in msgs:
        alone.handle(topic, payload)
    batched, got = processor(twins[1], max_batch=16)
    sizes: list[int] = []
    step_many = batched.runner.step_many

    def recording(sts: list[StreamState], x: np.ndarray,
                  t: np.ndarray | None = None) -> np.ndarray:
        sizes.append(len(sts))
        assert len({id(st) for st in sts}) == len(sts)
        return step_many(sts, x, t)

    batched.runner.step_many = recording  # type: ignore[method-assign]
    i = 0
    for size in chunks:
        batched.handle_many(msgs[i : i + size])
        i += size
    batched.handle_many(msgs[i:])
    assert max(sizes) == 16 and sum(sizes) == alone.metrics.predictions_out
    assert batched.metrics.model_runs == len(sizes) < alone.metrics.model_runs / 4

    want_by, got_by = want.by_stream(), got.by_stream()
    assert sorted(want_by) == sorted(got_by)
    n_forecasts = 0
    for stream, expected in want_by.items():
        actual = got_by[stream]
        assert [t for t, _ in actual] == [t for t, _ in expected], stream
        for (_, a), (_, e) in zip(actual, expected, strict=True):
            if "forecast" in e:
                n_forecasts += 1
                np.testing.assert_allclose(a.pop("forecast"), e.pop("forecast"), atol=1e-6,
                                           rtol=0)
            assert a == e
    assert n_forecasts > 400
    reasons = {r for _, d in want.messages if "reason" in d for r in [d["reason"]]}
    assert {"duplicate", "out_of_order", "malformed_json", "not_numeric", "gap",
            "bad_stream"} <= reasons
    for name in ("messages_in", "predictions_out", "errors_out", "dropped", "resets"):
        assert getattr(batched.metrics, name) == getattr(alone.metrics, name), name
    assert batched.store.streams.keys() == alone.store.streams.keys()
    for stream, st in alone.store.streams.items():
        other = batched.store.streams[stream]
        assert (other.last_t, other.count) == (st.last_t, st.count)
        for a, b in zip(st.state, other.state, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_batch_one_graph_is_stepped_one_by_one(twins: tuple[Path, Path]) -> None:
    proc, _ = processor(twins[0], max_batch=16)
    assert not proc.runner.batched
    made = proc.handle_many(traffic()[:100])
    assert made == proc.metrics.model_runs == proc.metrics.predictions_out > 50


def test_batch_one_graph_scores_streams_together_and_a_failed_run_costs_its_stream_alone(
        twins: tuple[Path, Path]) -> None:
    """A batch-1 graph steps the streams of one call one by one and scores and publishes them
    together (intervals on every forecast); when the run fails for one stream, that stream alone
    gets an internal error and keeps its state and time, and the others go on."""
    proc, sink = processor(twins[0], max_batch=16)
    streams = [f"s{i}" for i in range(5)]

    def hour(h: int) -> list[tuple[str, bytes]]:
        return [(f"sensors/{s}/x", json.dumps({"ts": 3600 * (h + 1), "temp": 40.0 + i + h,
                                               "hum": 50.0}).encode())
                for i, s in enumerate(streams)]

    assert proc.handle_many(hour(0)) == 5
    sizes: list[int] = []
    step_many = proc.scorer.step_states if proc.scorer is not None else None
    assert step_many is not None

    def recording(states: Any, *args: Any) -> Any:
        sizes.append(len(states))
        return step_many(states, *args)

    proc.scorer.step_states = recording  # type: ignore[union-attr,method-assign]
    broken = proc.store.streams["s2"]
    before = [a.copy() for a in broken.state]
    step_one = proc.runner.step_one

    def failing(st: StreamState, x: np.ndarray, t: float = 0.0) -> np.ndarray | None:
        if st is broken:
            raise RuntimeError("boom")
        return step_one(st, x, t)

    proc.runner.step_one = failing  # type: ignore[method-assign]
    sink.messages.clear()
    assert proc.handle_many(hour(1)) == 4
    assert sizes == [4]  # the four stepped streams, scored in one call
    forecasts = [d for d in sink.messages if "forecast" in d[1]]
    assert sorted(d["stream"] for _, d in forecasts) == ["s0", "s1", "s3", "s4"]
    assert all("intervals" in d for _, d in forecasts)
    errors = [d for _, d in sink.messages if d.get("reason") == "internal"]
    assert [e["stream"] for e in errors] == ["s2"] and "boom" in errors[0]["detail"]
    assert broken.count == 1 and broken.last_t == 3600.0
    for a, b in zip(before, broken.state, strict=True):
        np.testing.assert_array_equal(a, b)
    assert proc.store.streams["s1"].count == 2


def test_batch_settings_from_flags_toml_and_their_limits(tmp_path: Path) -> None:
    from edge.cli import build_parser, config_from_args
    from edge.errors import EdgeError

    args = build_parser().parse_args(["--model", "m.onnx", "--subscribe", "s/+/t",
                                      "--max-batch", "64", "--max-delay-ms", "2.5"])
    cfg = config_from_args(args)
    assert (cfg.max_batch, cfg.max_delay_ms) == (64, 2.5)
    toml = tmp_path / "edge.toml"
    toml.write_text('model = "m.onnx"\nsubscribe = "s/+/t"\nmax_batch = 8\nmax_delay_ms = 1\n')
    cfg = config_from_args(build_parser().parse_args(["--config", str(toml)]))
    assert (cfg.max_batch, cfg.max_delay_ms) == (8, 1.0)
    defaults = EdgeConfig(model="m.onnx", subscribe=("s/+/t",))
    assert (defaults.max_batch, defaults.max_delay_ms) == (256, 0.0)
    for bad in ({"max_batch": 0}, {"max_batch": 70_000}, {"max_delay_ms": -1.0},
                {"max_delay_ms": 5000.0}):
        with pytest.raises(EdgeError):
            EdgeConfig(model="m.onnx", subscribe=("s/+/t",), **bad)  # type: ignore[arg-type]
