"""The reliability settings (group commit, fsync, eviction): flags, TOML and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import build_parser, config_from_args
from edge.config import EdgeConfig
from edge.errors import EdgeError


def test_defaults() -> None:
    c = EdgeConfig(model="m.onnx", subscribe=("s/+/t",))
    assert (c.commit_interval, c.commit_max, c.fsync) == (0.005, 256, True)
    assert c.stream_ttl is None and c.max_resident is None


def test_flags_map_onto_settings() -> None:
    args = build_parser().parse_args([
        "--model", "m.onnx", "--subscribe", "s/+/t", "--commit-interval", "0.01",
        "--commit-max", "32", "--no-fsync", "--stream-ttl", "600", "--max-resident", "5000",
    ])
    c = config_from_args(args)
    assert (c.commit_interval, c.commit_max, c.fsync) == (0.01, 32, False)
    assert (c.stream_ttl, c.max_resident) == (600.0, 5000)
    assert config_from_args(build_parser().parse_args(["--model", "m", "--subscribe", "a/+"])).fsync


def test_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text('model = "m.onnx"\nsubscribe = "s/+/t"\nfsync = false\nstream_ttl = 30\n'
                   "max_resident = 10\ncommit_max = 8\n")
    c = config_from_args(build_parser().parse_args(["--config", str(cfg)]))
    assert (c.fsync, c.stream_ttl, c.max_resident, c.commit_max) == (False, 30.0, 10, 8)


@pytest.mark.parametrize("bad", [
    {"commit_interval": 0.0}, {"commit_interval": 2.0}, {"commit_max": 0}, {"stream_ttl": 0.0},
    {"stream_ttl": -1.0}, {"max_resident": 0},
])
def test_invalid(bad: dict[str, object]) -> None:
    with pytest.raises(EdgeError):
        EdgeConfig(model="m.onnx", subscribe=("s/+/t",), **bad)  # type: ignore[arg-type]


def test_fsync_must_be_boolean() -> None:
    with pytest.raises(EdgeError, match="fsync must be true or false"):
        EdgeConfig.build({"model": "m.onnx", "subscribe": "s/+/t", "fsync": "no"})
