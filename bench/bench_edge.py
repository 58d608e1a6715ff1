"""Benchmark: messages per second end to end through a real mosquitto.

    .venv/bin/python bench/bench_edge.py [--messages 20000] [--streams 10] [--runs 3]

Path measured: `statecast-replay` (QoS 1, bounded window) → mosquitto → X → mosquitto → a
counting subscriber (QoS 1), where X is either

* `echo`: a paho process that only receives and re-publishes each message (the ceiling of any
  paho-based daemon on this machine), or
* `statecast-edge`: the daemon, stepping a real 1×32 LSTM step graph per message.

Each run drains a backlog, so the publisher does not set the pace: X subscribes with a
persistent session and stops, the replay queues the messages for it in mosquitto, X starts again
and the counter times the results: rate = (messages − 1) / (last arrival − first arrival).
Both paths run in the same invocation, interleaved; the table shows medians (and the replay's own
publishing rate, which bounds a live replay → X → counter pipeline).
mosquitto is found as $STATECAST_MOSQUITTO, on PATH, or /usr/sbin/mosquitto.
"""

from __future__ import annotations

import argparse
import csv
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench.broker import Mosquitto, find_mosquitto

ROOT = Path(__file__).resolve().parents[1]


def start_broker(directory: Path) -> Mosquitto:
    binary = find_mosquitto()
    if binary is None:
        sys.exit("bench_edge: mosquitto not found (install it or set $STATECAST_MOSQUITTO)")
    broker = Mosquitto(binary, directory / "mosquitto")
    broker.start()
    return broker


def nodelay(client: mqtt.Client) -> None:
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def echo(port: int, pattern: str, cid: str) -> None:
    """The ceiling: receive each message and publish it again, nothing else."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
    client.max_inflight_messages_set(1000)

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        nodelay(c)
        c.subscribe(pattern, qos=1)

    def on_subscribe(c: mqtt.Client, u: Any, mid: Any, rc: Any, p: Any) -> None:
        c.publish(f"statecast/status/{cid}", b'{"status": "online"}', qos=1)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        c.publish("out/" + msg.topic.split("/")[1], msg.payload, qos=1)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_forever()


class Counter:
    def __init__(self, port: int, topics: list[str]) -> None:
        self.lock = threading.Lock()
        self.n = 0
        self.first = 0.0
        self.last = 0.0
        self.online: set[str] = set()
        self.ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter")
        c.max_inflight_messages_set(1000)

        def on_connect(cl: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
            nodelay(cl)
            cl.subscribe([(t, 1) for t in topics])

        c.on_connect = on_connect
        c.on_subscribe = lambda *a: self.ready.set()
        c.on_message = self.on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c
        if not self.ready.wait(10):
            sys.exit("bench_edge: counter did not subscribe")

    def on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        if msg.topic.startswith("statecast/status/"):
            if b'"online"' in msg.payload:
                self.online.add(msg.topic.rsplit("/", 1)[1])
            return
        with self.lock:
            if self.n == 0:
                self.first = now
            self.n += 1
            self.last = now

    def reset(self) -> None:
        with self.lock:
            self.n = 0

    def wait(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.n >= n:
                return True
            time.sleep(0.01)
        return False

    def wait_online(self, cid: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while cid not in self.online:
            if time.monotonic() > deadline:
                sys.exit(f"bench_edge: {cid} did not come online")
            time.sleep(0.02)


def start_x(kind: str, port: int, model: Path, tag: str) -> subprocess.Popen[bytes]:
    py = sys.executable
    cid = f"bench-{kind}-{tag}"
    if kind == "echo":
        return subprocess.Popen([py, __file__, "--echo", str(port), f"{tag}/+/temp", cid])
    return subprocess.Popen(
        [py, "-m", "edge.cli", "--model", str(model), "--broker", f"mqtt://127.0.0.1:{port}",
         "--subscribe", f"{tag}/+/temp", "--publish", "out/{stream}", "--client-id", cid,
         "--log-level", "WARNING"],
        cwd=ROOT,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def replay(port: int, data: Path, tag: str) -> float:
    """Publish every row; returns the publisher's own rate."""
    result = subprocess.run(
        [sys.executable, "-m", "edge.replay", "--data", str(data), "--time-col", "date",
         "--series-col", "stream", "--features", "temp", "--broker", f"mqtt://127.0.0.1:{port}",
         "--topic", f"{tag}/{{stream}}/temp", "--window", "500"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    return float(result.stderr.rsplit("(", 1)[1].split()[0])


def one_run(kind: str, port: int, model: Path, data: Path, n: int, counter: Counter,
            tag: str) -> tuple[float, float]:
    """Drain a backlog: X subscribes (persistent session) and stops, the replay queues n
    messages for it, then X starts again and the counter times the n results."""
    cid = f"bench-{kind}-{tag}"
    proc = start_x(kind, port, model, tag)
    counter.wait_online(cid)
    stop(proc)
    publisher_rate = replay(port, data, tag)
    counter.reset()
    proc = start_x(kind, port, model, tag)
    try:
        if not counter.wait(n, timeout=300):
            print(f"  {kind}: only {counter.n} of {n} arrived", file=sys.stderr)
        with counter.lock:
            got, dt = counter.n, counter.last - counter.first
        return ((got - 1) / dt if dt > 0 else float("nan")), publisher_rate
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", type=Path, help="an exported .onnx (default: a 1×32 LSTM)")
    parser.add_argument("--echo", nargs=3, metavar=("PORT", "PATTERN", "ID"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        echo(int(args.echo[0]), args.echo[1], args.echo[2])
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        d.chmod(0o755)
        model = args.model
        if model is None:
            from edge_models import build_model

            model = build_model(d / "bench.onnx", units=32, horizon=24, model_id="bench")
        data = d / "obs.csv"
        with data.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["stream", "date", "temp"])
            per = args.messages // args.streams
            start = datetime(2010, 1, 1)
            for i in range(per):
                stamp = (start + timedelta(hours=i)).isoformat()
                for s in range(args.streams):
                    w.writerow([f"s{s}", stamp, 50 + (i % 20)])
        n = per * args.streams
        broker = start_broker(d)
        port = broker.port
        try:
            counter = Counter(port, ["out/#", "statecast/status/+"])
            rates: dict[str, list[float]] = {"replay": [], "echo": [], "edge": []}
            for r in range(args.runs):
                for kind in ("echo", "edge"):
                    rate, pub = one_run(kind, port, model, data, n, counter, f"r{r}{kind}")
                    rates[kind].append(rate)
                    rates["replay"].append(pub)
                    print(f"  run {r + 1} {kind}: {rate:,.0f} msg/s (replay {pub:,.0f} msg/s)",
                          file=sys.stderr)
        finally:
            broker.stop()
    labels = {"replay": "statecast-replay publishing (QoS 1)",
              "echo": "paho receive + re-publish (ceiling)",
              "edge": "statecast-edge (1x32 LSTM, H=24)" if args.model is None
              else f"statecast-edge ({args.model.name})"}
    print(f"\n{n} messages on {args.streams} streams, QoS 1, backlog drained through mosquitto, "
          f"{args.runs} runs")
    print(f"| {'path':<38} | {'msg/s (median)':>14} | {'runs':<44} |")
    print(f"|{'-' * 40}|{'-' * 16}|{'-' * 46}|")
    for kind in ("replay", "echo", "edge"):
        runs = ", ".join(f"{x:,.0f}" for x in rates[kind])
        print(f"| {labels[kind]:<38} | {statistics.median(rates[kind]):>14,.0f} | {runs:<44} |")
    edge, ceiling = statistics.median(rates["edge"]), statistics.median(rates["echo"])
    print(f"\nstatecast-edge reaches {edge / ceiling:.0%} of the paho ceiling.")
    return 0



if __name__ == "__main__":
    sys.exit(main())
