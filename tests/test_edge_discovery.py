"""Home Assistant discovery configs: every key is one Home Assistant's MQTT sensor knows, the
required ones are there, and the templates render (with Jinja2, sandboxed as Home Assistant
renders them) on forecasts the real Encoder made from real ONNX runs. No broker."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edge.codec import Decoder, Encoder
from edge.config import EdgeConfig
from edge.discovery import Discovery, safe_id
from edge.manifest import Manifest
from edge.model import StepModel
from edge.service import Processor, load_model

# Home Assistant's MQTT sensor schema (https://www.home-assistant.io/integrations/sensor.mqtt/,
# and the discovery abbreviations of homeassistant/components/mqtt/abbreviations.py).
SENSOR_KEYS = {
    "availability": "avty", "availability_mode": "avty_mode",
    "availability_template": "avty_tpl", "availability_topic": "avty_t",
    "default_entity_id": "def_ent_id", "device": "dev", "device_class": "dev_cla",
    "enabled_by_default": "en", "encoding": "e", "entity_category": "ent_cat",
    "entity_picture": "ent_pic", "expire_after": "exp_aft", "force_update": "frc_upd",
    "icon": "ic", "json_attributes_template": "json_attr_tpl",
    "json_attributes_topic": "json_attr_t", "last_reset_value_template": "lrst_val_tpl",
    "name": "name", "object_id": "obj_id", "options": "ops", "origin": "o",
    "payload_available": "pl_avail", "payload_not_available": "pl_not_avail", "platform": "p",
    "qos": "qos", "state_class": "stat_cla", "state_topic": "stat_t",
    "suggested_display_precision": "sug_dsp_prc", "unique_id": "uniq_id",
    "unit_of_measurement": "unit_of_meas", "value_template": "val_tpl",
}
DEVICE_KEYS = {
    "configuration_url": "cu", "connections": "cns", "hw_version": "hw",
    "identifiers": "ids", "manufacturer": "mf", "model": "mdl", "model_id": "mdl_id",
    "name": "name", "serial_number": "sn", "suggested_area": "sa", "sw_version": "sw",
    "via_device": "via_device",
}
ORIGIN_KEYS = {"name": "name", "sw_version": "sw", "support_url": "url"}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
DISCOVERY_TOPIC = r"^[^/#+]+/sensor/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/config$"


def check_config(doc: dict[str, Any]) -> None:
    """What Home Assistant's sensor schema demands of a discovery config."""
    known = set(SENSOR_KEYS) | set(SENSOR_KEYS.values())
    assert set(doc) <= known, set(doc) - known
    full = {k: doc[k] for k in SENSOR_KEYS if k in doc}
    assert "state_topic" in full
    assert "availability" not in full or "availability_topic" not in full  # one or the other
    assert "unique_id" in full  # a device needs it
    dev = full["device"]
    assert set(dev) <= set(DEVICE_KEYS) | set(DEVICE_KEYS.values())
    assert dev.get("identifiers") or dev.get("connections")
    assert set(full.get("origin", {})) <= set(ORIGIN_KEYS) | set(ORIGIN_KEYS.values())
    assert "name" in full.get("origin", {"name": 1})
    if full.get("device_class") == "enum":
        assert full["options"] and "state_class" not in full and "unit_of_measurement" not in full
    if "state_class" in full:
        assert full["state_class"] in STATE_CLASSES
    assert full.get("qos", 0) in (0, 1, 2)
    for key in ("value_template", "json_attributes_template", "availability_template"):
        if key in full:
            ENV.parse(full[key])  # valid Jinja


ENV = ImmutableSandboxedEnvironment()  # Home Assistant's templates run in this sandbox


def render(template: str, payload: bytes) -> str:
    text = payload.decode()
    return ENV.from_string(template).render(value=text, value_json=json.loads(text))


def sensors(disc: Discovery, stream: str) -> list[tuple[str, bytes]]:
    """The forecast sensors among a stream's discovery configs (not its drift sensor)."""
    return [(t, b) for t, b in disc.configs(stream) if "/sensor/" in t]


def forecasts(model: Path, manifest: Manifest, n: int = 3) -> list[bytes]:
    """Forecast payloads as the daemon publishes them: the real graph through the real
    Processor (so with its intervals); classifiers (whose class names a test may replace in
    `manifest`) through the real Encoder."""
    cfg = EdgeConfig(model=str(model), subscribe=("s/+/v",), client_id="t")
    sm, freq = load_model(cfg)
    out: list[bytes] = []
    if manifest.task == "classify":
        dec, enc, state = Decoder(manifest.features), Encoder(manifest, freq), sm.zero_state()
        for i in range(n):
            obs = dec.decode(json.dumps({"ts": f"2010-03-01T0{i}:00:00",
                                         **{f: 45.0 + i for f in manifest.features}}).encode())
            y, state = sm.step(obs.values, state)
            out.append(enc.prediction("kitchen", obs, y))
        return out

    def publish(topic: str, payload: bytes, qos: int) -> bool:
        if topic.startswith("forecasts/"):
            out.append(payload)
        return True

    proc = Processor(cfg, sm, freq, publish)
    for i in range(n):
        proc.handle("s/kitchen/v", json.dumps({"ts": f"2010-03-01T0{i}:00:00",
                                               **{f: 45.0 + i for f in manifest.features}})
                    .encode())
    assert len(out) == n
    return out


def discovery(model: Path, classes: tuple[str, ...] | None = None,
              **kw: Any) -> tuple[Discovery, Manifest]:
    cfg = EdgeConfig(model=str(model), subscribe=("s/+/v",), client_id="edge-1",
                     ha_discovery="homeassistant", **kw)
    manifest = StepModel(model).manifest
    if classes is not None:
        manifest = dataclasses.replace(manifest, classes=classes)
    if manifest.task == "regress":
        manifest = dataclasses.replace(manifest, unit="°C", device_class="temperature")
    return Discovery(cfg, manifest, "statecast/status/edge-1", "0.1.0"), manifest


def test_regression_configs_render_on_real_forecasts(models: dict[str, Path]) -> None:
    disc, manifest = discovery(models["step"])
    configs = sensors(disc, "kitchen")
    assert [json.loads(b)["name"] for _, b in configs] == ["kitchen forecast +1",
                                                             "kitchen forecast +3"]
    for (topic, body), step in zip(configs, (1, 3), strict=True):
        assert topic == f"homeassistant/sensor/edge-1/kitchen_step{step}/config"
        doc = json.loads(body)
        check_config(doc)
        assert doc["state_topic"] == doc["json_attributes_topic"] == "forecasts/kitchen"
        assert doc["unit_of_measurement"] == "°C"
        assert doc["device_class"] == "temperature"
        assert doc["state_class"] == "measurement"
        assert doc["device"]["model"] == manifest.model_id
        assert doc["device"]["manufacturer"] == "statecast"
        for payload in forecasts(models["step"], manifest):
            sent = json.loads(payload)
            assert float(render(doc["value_template"], payload)) == pytest.approx(
                sent["forecast"][step - 1], abs=1e-9)
            attrs = json.loads(render(doc["json_attributes_template"], payload))
            assert attrs == {"at": sent["at"][step - 1], "observed": sent["ts"],
                             "model": manifest.model_id, "step": step,
                             "interval_80": sent["intervals"]["0.8"][step - 1],
                             "interval_95": sent["intervals"]["0.95"][step - 1]}


def test_steps_and_unique_ids(models: dict[str, Path]) -> None:
    disc, _ = discovery(models["step"], ha_steps=(2, 9))
    assert disc.steps == (2,)  # 9 is beyond the horizon of 3
    uids = {json.loads(b)["unique_id"] for s in ("a", "b", "a b", "a_b")
            for _, b in disc.configs(s)}
    assert len(uids) == 8  # a sensor and a drift sensor each; "a b" and "a_b" stay distinct
    assert safe_id("a b") != safe_id("a_b")
    again, _ = discovery(models["step"], ha_steps=(2,))
    assert again.configs("a b") == disc.configs("a b")  # stable across restarts
    assert [t for t, _ in disc.removals("a b")] == [t for t, _ in disc.configs("a b")]
    assert all(body == b"" for _, body in disc.removals("a b"))


def test_multi_target_gets_one_entity_per_target(models: dict[str, Path]) -> None:
    disc, manifest = discovery(models["multi"], ha_steps=(1,))
    configs = [json.loads(b) for _, b in sensors(disc, "kitchen")]
    assert [c["name"] for c in configs] == ["kitchen temp forecast +1",
                                            "kitchen hum forecast +1"]
    payload = forecasts(models["multi"], manifest)[-1]
    sent = json.loads(payload)
    for k, doc in enumerate(configs):
        check_config(doc)
        assert float(render(doc["value_template"], payload)) == pytest.approx(
            sent["forecast"][0][k], abs=1e-9)
        attrs = json.loads(render(doc["json_attributes_template"], payload))
        assert attrs["target"] == manifest.targets[k]
        assert attrs["at"] == sent["at"][0]
        assert attrs["interval_80"] == sent["intervals"]["0.8"][0][k]


@pytest.mark.parametrize(("horizon", "classes"), [
    (1, ("cold", "mild", "warm")), (2, ("cold", "mild", "warm")),
    (2, ("kalt", "mild ☀", 'w"arm\\')),  # names that need escaping in a template
])
def test_classifier_configs_give_the_label_and_probabilities(
    models: dict[str, Path], tmp_path: Path, horizon: int, classes: tuple[str, ...]
) -> None:
    from edge_models import build_model

    path = models["classify"] if horizon == 2 else build_model(
        tmp_path / "c1.onnx", task="classify", classes=("cold", "mild", "warm"), horizon=1,
        model_id="test-cls-1")
    disc, manifest = discovery(path, classes)
    configs = [json.loads(b) for _, b in sensors(disc, "kitchen")]
    assert len(configs) == len(dict.fromkeys((1, horizon)))
    for step, doc in zip(disc.steps, configs, strict=True):
        check_config(doc)
        assert doc["device_class"] == "enum"
        assert doc["options"] == list(classes)
        for payload in forecasts(path, manifest):
            sent = json.loads(payload)
            label = render(doc["value_template"], payload)
            assert label == sent["forecast"][step - 1]
            assert label in doc["options"]
            attrs = json.loads(render(doc["json_attributes_template"], payload))
            probs = {c: (v if horizon == 1 else v[step - 1])
                     for c, v in sent["probabilities"].items()}
            assert attrs["probabilities"] == pytest.approx(probs)
            assert max(probs, key=probs.__getitem__) == label


def test_availability_follows_the_status_payload(models: dict[str, Path]) -> None:
    disc, _ = discovery(models["step"])
    doc = json.loads(disc.configs("x")[0][1])
    for status, key in (("online", "payload_available"), ("offline", "payload_not_available")):
        body = json.dumps({"status": status, "model": "m", "streams": 3}).encode()
        assert render(doc["availability_template"], body) == doc[key]


BINARY_SENSOR_KEYS = {k: v for k, v in SENSOR_KEYS.items() if k not in (
    "last_reset_value_template", "options", "state_class", "suggested_display_precision",
    "unit_of_measurement")} | {"off_delay": "off_dly", "payload_off": "pl_off",
                               "payload_on": "pl_on"}


def test_drift_binary_sensor_reads_the_retained_score_document(
    models: dict[str, Path], tmp_path: Path,
) -> None:
    """With self-scoring, each stream's device also gets a `problem` binary sensor on its score
    topic: ON exactly in the score documents (from a real processor whose forecasts go wrong)
    that carry a raised drift alarm, OFF in the others; removed with the stream; absent
    without scoring."""
    from edge_models import build_model

    h = 3
    model = build_model(tmp_path / "d.onnx", horizon=h, model_id="drift", freq="1h",
                        conformal={"points": 100, "levels": [0.5, 0.8],
                                   "abs_quantiles": [[[0.34, 0.64]]] * h, "rmse": [[0.5]] * h,
                                   "mae": [[0.4]] * h})
    disc, _ = discovery(model)
    (topic, body), = [(t, b) for t, b in disc.configs("kitchen") if "/binary_sensor/" in t]
    assert topic == "homeassistant/binary_sensor/edge-1/kitchen_drift/config"
    doc = json.loads(body)
    assert set(doc) <= set(BINARY_SENSOR_KEYS), set(doc) - set(BINARY_SENSOR_KEYS)
    assert doc["device_class"] == "problem" and doc["entity_category"] == "diagnostic"
    assert doc["state_topic"] == doc["json_attributes_topic"] == "statecast/score/kitchen"
    sensor = json.loads(sensors(disc, "kitchen")[0][1])
    assert doc["device"] == sensor["device"] and doc["unique_id"] != sensor["unique_id"]
    assert doc["availability_topic"] == sensor["availability_topic"]
    ENV.parse(doc["value_template"])
    # real score documents: an untrained model is far off the trainer's RMSE of 0.5
    cfg = EdgeConfig(model=str(model), subscribe=("s/+/v",), client_id="t", score_every=1,
                     drift_min_scored=1, drift_periods=3)
    sm, freq = load_model(cfg)
    docs: list[bytes] = []
    proc = Processor(cfg, sm, freq, lambda t, p, q: docs.append(p) if t.startswith(
        "statecast/score/") else True)
    rng = np.random.default_rng(0)
    for i in range(12):
        proc.handle("s/kitchen/v", json.dumps({"ts": f"2010-03-01T{i:02d}:00:00",
                                               "temp": 50 + 5 * rng.normal()}).encode())
    states = [render(doc["value_template"], d) for d in docs]
    assert states == ["ON" if json.loads(d)["alarm"] else "OFF" for d in docs]
    assert {"ON", "OFF"} <= set(states)
    assert (topic, b"") in disc.removals("kitchen")
    off, _ = discovery(model, scoring=False)
    assert all("/binary_sensor/" not in t for t, _ in off.configs("kitchen") + off.removals(
        "kitchen"))


def test_forecast_payload_shape_is_what_the_templates_read(models: dict[str, Path]) -> None:
    """The fast path of the Encoder (cached fragments) gives the same document."""
    _, manifest = discovery(models["step"])
    payload = forecasts(models["step"], manifest, 1)[0]
    doc = json.loads(payload)
    assert set(doc) == {"stream", "ts", "forecast", "at", "model", "intervals"}
    assert np.asarray(doc["forecast"]).shape == (manifest.horizon,)
    assert np.asarray(doc["intervals"]["0.8"]).shape == (manifest.horizon, 2)


def test_settings_from_toml_and_flags(models: dict[str, Path], tmp_path: Path) -> None:
    from edge.cli import build_parser, config_from_args
    from edge.errors import EdgeError

    toml = tmp_path / "edge.toml"
    toml.write_text(f'model = "{models["step"]}"\nsubscribe = ["s/+/v"]\n'
                    'ha_discovery = "homeassistant"\nha_steps = [1, 2]\n'
                    'retain_forecasts = true\nrecord = "rec"\n')
    cfg = config_from_args(build_parser().parse_args(["--config", str(toml)]))
    assert (cfg.ha_discovery, cfg.ha_steps, cfg.retain_forecasts) == ("homeassistant", (1, 2),
                                                                      True)
    assert cfg.record == str(tmp_path / "rec")  # relative to the file
    cfg = config_from_args(build_parser().parse_args(
        ["--config", str(toml), "--ha-steps", "3", "--ha-discovery", "ha", "--record", "/r"]))
    assert (cfg.ha_discovery, cfg.ha_steps, cfg.record) == ("ha", (3,), "/r")
    for bad in ({"ha_steps": [0]}, {"ha_steps": "x"}, {"ha_discovery": "a/+"},
                {"retain_forecasts": "yes"}):
        with pytest.raises(EdgeError):
            EdgeConfig.build({"model": "m.onnx", "subscribe": ["s/+/v"], **bad})
    off = EdgeConfig(model="m.onnx", subscribe=("s/+/v",))
    assert (off.ha_discovery, off.record, off.retain_forecasts) == (None, None, False)
