"""codec: payloads, timestamps, frequencies, topics. No broker, no model."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.codec import (
    Decoder,
    Encoder,
    PayloadError,
    StreamRouter,
    check_filter,
    check_template,
    parse_freq,
    parse_ts,
    topic_matches,
)
from edge.errors import EdgeError
from edge.manifest import Manifest


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600), ("H", 3600), ("h", 3600), ("1D", 86400), ("D", 86400), ("15min", 900),
     ("15T", 900), ("30s", 30), ("30S", 30), ("500ms", 0.5), ("2W", 1209600), ("1.5h", 5400)],
)
def test_parse_freq(text: str, seconds: float) -> None:
    assert parse_freq(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["M", "MS", "1Y", "W-SUN", "", "h1", "0h", "fortnight"])
def test_parse_freq_rejects_calendar_and_junk(text: str) -> None:
    with pytest.raises(EdgeError):
        parse_freq(text)


def test_parse_freq_none() -> None:
    assert parse_freq(None) is None


def test_parse_ts_forms() -> None:
    assert parse_ts("2010-03-01T05:00:00") == datetime(2010, 3, 1, 5)
    assert parse_ts("2010-03-01T05:00:00Z") == datetime(2010, 3, 1, 5, tzinfo=timezone.utc)
    utc = datetime(2010, 3, 1, 5, tzinfo=timezone.utc)
    assert parse_ts(utc.timestamp()) == utc
    assert parse_ts(int(utc.timestamp() * 1000)) == utc
    for bad in ["yesterday", "", True, None, [1], float("nan"), 1e300]:
        with pytest.raises(PayloadError) as info:
            parse_ts(bad)
        assert info.value.reason == "bad_ts"


@given(st.integers(min_value=100_000_000, max_value=4_000_000_000))
def test_epoch_seconds_and_millis_agree(seconds: int) -> None:
    assert parse_ts(seconds) == parse_ts(seconds * 1000)


def test_decode_named_value_and_bare() -> None:
    dec = Decoder(["temp"])
    obs = dec.decode(b'{"ts": "2010-03-01T05:00:00", "temp": 51.3}')
    assert obs.ts_raw == "2010-03-01T05:00:00"
    assert obs.values.dtype == np.float32
    assert obs.values.tolist() == [np.float32(51.3)]
    assert dec.decode(b'{"ts": 1267419600, "value": 7}').values.tolist() == [7.0]
    bare = dec.decode(b"51.5")
    assert bare.values.tolist() == [51.5]
    assert isinstance(bare.ts_raw, str)


def test_decode_field_map_and_multivariate() -> None:
    dec = Decoder(["temp", "hum"], field_map={"temp": "t", "ts": "time"})
    obs = dec.decode(b'{"time": "2010-03-01T05:00:00", "t": 1.5, "hum": 80}')
    assert obs.values.tolist() == [1.5, 80.0]
    with pytest.raises(PayloadError) as info:
        dec.decode(b"12.5")
    assert info.value.reason == "not_an_object"
    with pytest.raises(PayloadError) as info:
        dec.decode(b'{"time": "2010-03-01T05:00:00", "value": 1}')
    assert info.value.reason == "missing_field"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe\x00", "not_utf8"),
        (b'{"ts": "2010-03-01T05:00:00"}', "missing_field"),
        (b'{"temp": 1.0}', "missing_field"),
        (b'{"ts": "2010-03-01T05:00:00", "temp": "warm"}', "not_numeric"),
        (b'{"ts": "2010-03-01T05:00:00", "temp": true}', "not_numeric"),
        (b'{"ts": "2010-03-01T05:00:00", "temp": null}', "not_numeric"),
        (b'{"ts": "2010-03-01T05:00:00", "temp": NaN}', "not_finite"),
        (b'{"ts": "2010-03-01T05:00:00", "temp": Infinity}', "not_finite"),
        (b'{"ts": "2010-03-01T05:00:00", "temp": -Infinity}', "not_finite"),
        (b'{"ts": "2010-03-01T05:00:00", "temp": 1e39}', "not_finite"),
        (b'{"ts": "not a time", "temp": 1.0}', "bad_ts"),
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b"NaN", "not_finite"),
        (b'{"ts": "2010-03-01T05:00:00", "temp": 1.0, "pad": "' + b"x" * 300 + b'"}', "too_large"),
    ],
)
def test_decode_rejects(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        Decoder(["temp"], max_payload=256).decode(payload)
    assert info.value.reason == reason


@given(st.binary(max_size=64))
def test_decode_never_raises_anything_but_payload_error(payload: bytes) -> None:
    try:
        obs = Decoder(["temp"]).decode(payload)
    except PayloadError:
        return
    assert np.isfinite(obs.values).all()


def test_stream_field() -> None:
    dec = Decoder(["temp"], stream_field="id")
    assert dec.decode(b'{"id": "a1", "ts": 0, "temp": 1}').stream == "a1"
    for bad in [b'{"ts": 0, "temp": 1}', b'{"id": "a/b", "ts": 0, "temp": 1}',
                b'{"id": "#", "ts": 0, "temp": 1}', b'{"id": "", "ts": 0, "temp": 1}']:
        with pytest.raises(PayloadError) as info:
            dec.decode(bad)
        assert info.value.reason == "bad_stream"


def _manifest(**kw: object) -> Manifest:
    base: dict[str, object] = dict(
        kind="step", features=("temp",), targets=("temp",), horizon=2, task="regress",
        mode="stateful", model_id="m1", statecast_version="0", created="", output_shape=(1, 2),
    )
    base.update(kw)
    return Manifest(**base)  # type: ignore[arg-type]


def test_encode_prediction_regress() -> None:
    enc = Encoder(_manifest(), timedelta(hours=1))
    obs = Decoder(["temp"]).decode(b'{"ts": "2010-03-01T23:00:00", "temp": 1}')
    doc = json.loads(enc.prediction("s1", obs, np.array([[1.5, 2.5]], np.float32)))
    assert doc == {
        "stream": "s1", "ts": "2010-03-01T23:00:00", "forecast": [1.5, 2.5],
        "at": ["2010-03-02T00:00:00", "2010-03-02T01:00:00"], "model": "m1",
    }


def test_encode_prediction_epoch_ts_is_echoed() -> None:
    enc = Encoder(_manifest(), timedelta(minutes=15))
    obs = Decoder(["temp"]).decode(b'{"ts": 1267419600000, "temp": 1}')
    doc = json.loads(enc.prediction("s1", obs, np.array([[1.0, 2.0]], np.float32)))
    assert doc["ts"] == 1267419600000
    assert doc["at"] == ["2010-03-01T05:15:00+00:00", "2010-03-01T05:30:00+00:00"]


def test_encode_prediction_classify_and_multi() -> None:
    cls = _manifest(task="classify", classes=("a", "b"), output_shape=(1, 2, 2))
    obs = Decoder(["temp"]).decode(b'{"ts": 0, "temp": 1}')
    y = np.array([[[0.25, 0.75], [0.875, 0.125]]], np.float32)
    doc = json.loads(Encoder(cls, None).prediction("s", obs, y))
    assert doc["forecast"] == ["b", "a"]
    assert doc["probabilities"] == {"a": [0.25, 0.875], "b": [0.75, 0.125]}
    assert doc["at"] is None
    one = _manifest(task="classify", classes=("a", "b"), horizon=1, output_shape=(1, 1, 2))
    doc = json.loads(Encoder(one, None).prediction("s", obs, y[:, :1]))
    assert doc["probabilities"] == {"a": 0.25, "b": 0.75}
    multi = _manifest(features=("t", "h"), targets=("t", "h"), output_shape=(1, 2, 2))
    doc = json.loads(Encoder(multi, None).prediction("s", obs, y))
    assert doc["forecast"] == [[0.25, 0.75], [0.875, 0.125]]
    assert doc["targets"] == ["t", "h"]


def test_router_first_plus_level_and_overrides() -> None:
    r = StreamRouter(["sensors/+/temp", "plant/+/+/obs"])
    assert r.stream("sensors/s1/temp") == "s1"
    assert r.stream("plant/p1/line2/obs") == "p1"
    assert StreamRouter(["plant/+/+/obs"], level=2).stream("plant/p1/line2/obs") == "line2"
    assert StreamRouter(["sensors/#"]).stream("sensors/x/y") == "x"
    assert StreamRouter(["exact/topic"]).stream("exact/topic") == "topic"


def test_topic_matches() -> None:
    assert topic_matches("a/+/c", "a/b/c")
    assert not topic_matches("a/+/c", "a/b/d")
    assert topic_matches("a/#", "a/b/c")
    assert not topic_matches("a/+", "a/b/c")


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b+/c", "a#"])
def test_check_filter(bad: str) -> None:
    with pytest.raises(EdgeError):
        check_filter(bad)


@pytest.mark.parametrize("bad", ["", "f/+", "f/#", "f/{nope}", "f/{stream"])
def test_check_template(bad: str) -> None:
    with pytest.raises(EdgeError):
        check_template(bad, "publish")
