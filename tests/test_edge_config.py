"""config: settings from TOML and flags, validated on construction. No broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import build_parser, config_from_args
from edge.config import BrokerURL, EdgeConfig, read_toml
from edge.errors import EdgeError


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [("mqtt://localhost:1883", "localhost", 1883, False), ("mqtt://10.0.0.2", "10.0.0.2", 1883,
     False), ("mqtts://broker.example:8884", "broker.example", 8884, True),
     ("mqtts://b", "b", 8883, True)],
)
def test_broker_url(url: str, host: str, port: int, tls: bool) -> None:
    u = BrokerURL.parse(url)
    assert (u.host, u.port, u.tls) == (host, port, tls)


@pytest.mark.parametrize(
    "url", ["localhost:1883", "http://localhost", "mqtt://", "mqtt://h:99999", "mqtt://h:x",
            "mqtt://h/path", "mqtt://u:secret@h"],
)
def test_bad_broker_url(url: str) -> None:
    with pytest.raises(EdgeError):
        BrokerURL.parse(url)


def test_defaults_and_validation() -> None:
    c = EdgeConfig(model="m.onnx", subscribe=("sensors/+/temp",))
    assert c.qos == 1 and c.publish == "forecasts/{stream}"
    assert c.errors == "statecast/errors/{stream}"
    assert c.client_id.startswith("statecast-edge-")
    bad: list[dict[str, object]] = [
        {"subscribe": ()}, {"subscribe": ("a/#/b",)}, {"publish": "f/+"}, {"qos": 2},
        {"client_id": "a/b"}, {"on_gap": "maybe"}, {"stream_level": -1},
        {"stream_level": 1, "stream_field": "id"}, {"checkpoint_interval": 5.0},
        {"broker": "mqtts://h", "ca_file": "/nonexistent/ca.crt"}, {"mqtt_version": "4"},
        {"ca_file": __file__}, {"tls_insecure": True}, {"commands": "cmd/{stream}"},
        {"broker": "mqtts://h", "cert_file": __file__},
    ]
    for kw in bad:
        args: dict[str, object] = {"model": "m.onnx", "subscribe": ("s/+/t",), **kw}
        with pytest.raises(EdgeError):
            EdgeConfig(**args)  # type: ignore[arg-type]


def test_tls_names_and_their_earlier_aliases(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not checked here")
    c = EdgeConfig.build({"model": "m.onnx", "subscribe": "s/+/t", "broker": "mqtts://h",
                          "tls-ca": str(ca), "tls_insecure": True})
    assert c.ca_file == str(ca) and c.tls and c.tls_insecure
    cfg = tmp_path / "edge.toml"
    cfg.write_text('model = "m.onnx"\nbroker = "mqtts://h"\nca_file = "ca.crt"\n')
    assert read_toml(cfg)["ca_file"] == str(ca)


def test_toml_and_flags_override(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        'model = "models/m.onnx"\n'
        'broker = "mqtt://broker:1884"\n'
        'subscribe = ["sensors/+/temp"]\n'
        'client-id = "edge-1"\n'
        'qos = 0\n'
        'password_file = "pw"\n'
        'username = "edge"\n'
        "[field_map]\n"
        'temp = "t"\n'
    )
    raw = read_toml(cfg)
    assert raw["model"] == str(tmp_path / "models/m.onnx")
    args = build_parser().parse_args(
        ["--config", str(cfg), "--qos", "1", "--publish", "f/{stream}"]
    )
    c = config_from_args(args)
    assert c.qos == 1
    assert c.client_id == "edge-1"
    assert c.publish == "f/{stream}"
    assert c.field_map == {"temp": "t"}
    assert c.broker_url.port == 1884
    assert c.password() == "s3cret"


def test_toml_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text("model = \n")
    with pytest.raises(EdgeError, match="not valid TOML"):
        read_toml(cfg)
    cfg.write_text('model = "m.onnx"\nsubscribe = "a/+"\ncolour = "red"\n')
    with pytest.raises(EdgeError, match="unknown setting"):
        EdgeConfig.build(read_toml(cfg))
    cfg.write_text('model = "m.onnx"\nsubscribe = "a/+"\nqos = "one"\n')
    with pytest.raises(EdgeError, match="qos must be an integer"):
        EdgeConfig.build(read_toml(cfg))
    with pytest.raises(EdgeError, match="does not exist"):
        read_toml(tmp_path / "missing.toml")
