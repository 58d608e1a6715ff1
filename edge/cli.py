"""`statecast-edge`: run an exported model over live MQTT sensor streams."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from edge.config import PASSWORD_ENV, EdgeConfig, read_toml
from edge.errors import EdgeError
from edge.service import Service, load_model

log = logging.getLogger(__name__)

EPILOG = f"""\
examples:
  statecast-edge --model seattle.onnx --broker mqtt://localhost:1883 \\
      --subscribe 'sensors/+/temp' --publish 'forecasts/{{stream}}'
  statecast-edge --config /etc/statecast/edge.toml --state-dir /var/lib/statecast
  statecast-edge --config edge.toml --check-config

The stream id is the topic level matched by the first '+' of the subscription (or --stream-level
N, or --stream-field KEY of the payload).
Payloads: {{"ts": ISO-8601 or epoch, "<feature>": number}}.
The broker password is read from --password-file or ${PASSWORD_ENV}.
--record DIR appends every accepted observation to DIR/YYYY-MM-DD.csv (statecast-train --data
DIR reads them); --ha-discovery homeassistant announces each stream's forecasts to Home Assistant.
Send 'reload', 'reset STREAM' or 'drop STREAM' to the commands topic; replacing the model file
(atomic rename) or SIGHUP also reloads it.
Exit status: 0 after SIGTERM/SIGINT, 2 bad arguments, config or model, 3 the broker refused the
credentials or the TLS handshake failed (retrying would not help), 1 an internal failure (a
thread the daemon needs died: restarting helps).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one sentence, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="statecast-edge",
        description="Step an exported statecast ONNX model once per MQTT sensor message and "
        "publish the forecasts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--model", metavar="FILE.onnx", help="exported model (statecast-export)")
    add_connection_flags(p, publish=True)
    add("--state-dir", metavar="DIR", help="checkpoint stream states here and restore them")
    add("--check-config", action="store_true",
        help="validate the model, manifest, topics and settings, then exit")
    add("--commands", metavar="TEMPLATE", help="command topic: reload, reset STREAM, drop STREAM "
        "(default statecast/cmd/{client_id})")
    add("--on-gap", choices=("reset", "keep"), help="what a gap over max_gap periods does to a "
        "stream's state (default reset)")
    add("--grace", type=float, metavar="SECONDS", help="models with a grid: close a period "
        "this long after its end and its last observation (default 10 %% of the period)")
    add("--publish-fills", choices=("latest", "all"), help="models with a grid: publish the "
        "forecasts of filled periods too (all), or only the latest period's (latest, default)")
    add("--metrics-port", type=int, metavar="PORT", help="serve /metrics and /healthz")
    add("--metrics-host", metavar="HOST", help="address for --metrics-port (default 127.0.0.1)")
    add("--max-batch", type=int, metavar="N", help="most observations stepped in one run of a "
        "dynamic-batch graph, one per stream (default 256)")
    add("--max-delay-ms", type=float, metavar="MS", help="how long the worker may wait for more "
        "messages to fill a batch (default 0: step what has arrived)")
    add("--commit-interval", type=float, metavar="SECONDS", help="group commit: states are made "
        "durable and observations acknowledged at least this often (default 0.005)")
    add("--commit-max", type=int, metavar="N", help="... or after N observations (default 256)")
    add("--no-fsync", dest="fsync", action="store_const", const=False, help="do not fsync "
        "commits: survives a daemon crash, not a power cut")
    add("--stream-ttl", type=float, metavar="SECONDS", help="evict streams idle this long from "
        "memory (with --state-dir their state is kept on disk and restored when they return)")
    add("--max-resident", type=int, metavar="N", help="keep at most N streams in memory, "
        "evicting the least recently used")
    add("--record", metavar="DIR", help="also append every accepted observation to "
        "DIR/YYYY-MM-DD.csv (one file per UTC day; statecast-train --data DIR reads them)")
    add("--ha-discovery", metavar="PREFIX", help="announce each stream's forecasts to Home "
        "Assistant by MQTT discovery under PREFIX (usually homeassistant)")
    add("--ha-steps", metavar="N[,N]", help="horizon steps announced to Home Assistant "
        "(default the first and the last)")
    add("--retain-forecasts", action="store_const", const=True, help="retain the latest "
        "forecast of each stream on its topic")
    add("--score", metavar="TEMPLATE", help="retained topic of each stream's rolling scores "
        "(default statecast/score/{stream})")
    add("--intervals", metavar="C,C", type=_coverages, help="coverages of the prediction "
        "intervals (default 0.8,0.95; '' for none)")
    add("--no-scoring", dest="scoring", action="store_const", const=False, help="no intervals, "
        "no self-scoring, no drift alarm")
    add("--score-half-life", type=float, metavar="PERIODS", help="half-life of the rolling "
        "scores (default 48)")
    add("--score-every", type=float, metavar="PERIODS", help="publish a stream's scores at most "
        "once per this many periods (default 12)")
    add("--score-lr", type=float, metavar="X", help="interval adaptation step, × the trainer's "
        "validation RMSE (default 0.05)")
    add("--score-scorecast", type=float, metavar="PERIODS", help="half-life of the intervals' "
        "scorecaster, the recent mean |error| they are built on (default 2; 0 for none)")
    add("--score-per-stream", action="store_true", default=None, help="per-stream score gauges "
        "on /metrics (one series per stream: mind the cardinality)")
    add("--drift-baseline-ratio", type=float, metavar="X", help="drift: rolling RMSE above the "
        "best baseline's × X (default 1.0)")
    add("--drift-train-ratio", type=float, metavar="X", help="... or above the trainer's "
        "validation RMSE × X (default 2.0)")
    add("--drift-periods", type=int, metavar="N", help="... for N periods raises the alarm, N "
        "good ones clear it (default 12)")
    add("--drift-min-scored", type=int, metavar="N", help="no alarm before N scored steps "
        "(default 48)")
    return p


def add_connection_flags(p: argparse.ArgumentParser, *, publish: bool) -> None:
    """The flags of the MQTT connection and of reading observations, shared by
    `statecast-edge` and `statecast-record`."""
    add = p.add_argument
    add("--broker", metavar="URL", help="mqtt://HOST:PORT or mqtts://HOST:PORT "
        "(default mqtt://localhost:1883)")
    add("--subscribe", metavar="PATTERN", action="append",
        help="topic filter to read observations from (repeatable)")
    if publish:
        add("--publish", metavar="TEMPLATE", help="prediction topic (default forecasts/{stream})")
    add("--errors", metavar="TEMPLATE", help="error topic (default statecast/errors/{stream})")
    add("--client-id", metavar="ID", help="stable MQTT client id (default "
        f"statecast-{'edge' if publish else 'record'}-HOST-HASH, the hash of the topics)")
    add("--qos", type=int, choices=(0, 1), help="QoS of subscriptions and publications (default 1)")
    add("--config", metavar="FILE.toml", help="settings file; flags override it")
    add("--mqtt-version", choices=("3.1.1", "5"), help="protocol version (default 3.1.1; "
        "5 reports publications the broker's ACL refuses, at some cost per message)")
    add("--username", help="broker user name")
    add("--password-file", metavar="FILE", help=f"file holding the broker password "
        f"(or set ${PASSWORD_ENV})")
    add("--ca-file", "--tls-ca", dest="ca_file", metavar="FILE",
        help="CA certificate that signed the broker's (enables TLS)")
    add("--cert-file", "--tls-cert", dest="cert_file", metavar="FILE",
        help="client certificate, if the broker asks for one")
    add("--key-file", "--tls-key", dest="key_file", metavar="FILE", help="its private key")
    add("--tls-insecure", action="store_true", default=None,
        help="do not verify the broker's certificate (testing only; logged at every start)")
    add("--stream-level", type=int, metavar="N", help="topic level (from 0) holding the stream id")
    add("--stream-field", metavar="KEY", help="payload field holding the stream id")
    add("--max-payload", type=int, metavar="BYTES", help="larger payloads are dropped "
        "(default 16384)")
    add("--late", choices=("drop", "accept"), help="duplicate or out-of-order timestamps "
        "(default drop)")
    add("--ts-field", metavar="KEY", help="payload key of the timestamp (default ts)")
    add("--ts", choices=("payload", "arrival"), help="arrival: stamp payloads without a "
        "timestamp with the time they arrive (default payload: refuse them)")
    add("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default INFO")


def _coverages(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of coverages") from None


FLAG_KEYS = (
    "model", "broker", "subscribe", "publish", "errors", "state_dir", "client_id", "qos",
    "mqtt_version", "username", "password_file", "ca_file", "cert_file", "key_file",
    "tls_insecure", "commands",
    "stream_level", "stream_field", "max_payload", "on_gap", "late", "metrics_port",
    "metrics_host", "log_level", "max_batch", "max_delay_ms", "commit_interval", "commit_max",
    "fsync", "stream_ttl", "max_resident", "record", "ha_discovery", "ha_steps",
    "retain_forecasts", "ts_field", "ts", "grace", "publish_fills",
    "score", "intervals", "scoring", "score_half_life", "score_scorecast",
    "score_every", "score_lr", "score_per_stream", "drift_baseline_ratio", "drift_train_ratio",
    "drift_periods", "drift_min_scored",
)


def config_from_args(args: argparse.Namespace) -> EdgeConfig:
    settings: dict[str, Any] = read_toml(args.config) if args.config else {}
    for key in FLAG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = tuple(value) if key == "subscribe" else value
    return EdgeConfig.build(settings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, (args.log_level or "INFO")),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from_args(args)
        if not config.model:
            raise EdgeError("no model given; pass --model FILE.onnx")
        logging.getLogger().setLevel(config.log_level.upper())
        model, freq = load_model(config)
        service = Service(config, model, freq)
    except EdgeError as exc:
        parser.exit(2, f"statecast-edge: error: {_sentence(exc)}\n")
    m = model.manifest
    if args.check_config:
        print(
            f"Configuration OK: model {m.model_id} ({m.kind}, {m.task}, features "
            f"{', '.join(m.features)}, horizon {m.horizon}, freq {m.freq}); broker "
            f"{config.broker_url}; subscribe {', '.join(config.subscribe)}; publish "
            f"{config.publish}; errors {config.errors}; status {service.status_topic}"
            + (f"; record {config.record}" if config.record else "")
            + (f"; Home Assistant discovery under {config.ha_discovery}/"
               if config.ha_discovery else "")
        )
        return 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("Received %s", signal.Signals(signum).name)
        service.stop()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        log.info("Received SIGHUP: reloading the model file")
        service.request_reload()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    log.info(
        "Starting statecast-edge: model %s (%s, %s, features %s, horizon %d, freq %s) from %s",
        m.model_id, m.kind, m.task, ",".join(m.features), m.horizon, m.freq, config.model,
    )
    log.info("Broker %s as %s; subscribe %s; publish %s", config.broker_url, config.client_id,
             " ".join(config.subscribe), config.publish)
    try:
        status = service.run()
    except EdgeError as exc:
        log.error("%s", exc)
        return 2
    if service.fatal is not None:
        print(f"statecast-edge: error: {_sentence(service.fatal)}", file=sys.stderr)
    return status


def _sentence(exc: Exception | str) -> str:
    text = " ".join(str(exc).split())
    return text if text.endswith(".") else text + "."


if __name__ == "__main__":
    sys.exit(main())
