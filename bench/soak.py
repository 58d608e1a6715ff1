"""Soak: many observations across many churning streams through mosquitto and statecast-edge.

    .venv/bin/python bench/soak.py [--messages 1000000] [--streams 1000] [--active 200]
        [--max-resident 400] [--stream-ttl 20] [--window 200] [--out soak.json]
    make soak

A paho publisher sends QoS 1 observations with at most `--window` of them still without their
prediction (so the daemon sets the pace and latency is not a growing broker backlog); the
streams churn: at any moment `--active` of the `--streams` are sending, and the active set
slides, so idle streams are evicted from memory (`--stream-ttl`, `--max-resident`),
checkpointed, and restored when their turn comes again. Each stream's
timestamps advance one hour per observation, so a restored stream continues without a gap.

Reported: daemon RSS at 20 % and 100 % of the run and its growth (goal < 10 %), median and p99
latency (publish → prediction received) per tenth of the run (goal: no creep), throughput,
resident streams, predictions and errors (must be all and none). Figures go to stdout and JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench.broker import Mosquitto, find_mosquitto, free_port

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_300_000_000.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def gauge(port: int, name: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return float("nan")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


class Counter:
    """Counts predictions and errors; records latency of sampled observations."""

    def __init__(self, broker: Mosquitto, prefix: str) -> None:
        self.predictions = 0
        self.errors = 0
        self.sent_at: dict[tuple[str, float], float] = {}
        self.latencies: list[tuple[int, float]] = []  # (prediction number, seconds)
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.slots: threading.Semaphore | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(f"{prefix}-out/#", 1), (f"{prefix}-err/#", 1)]
        )
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.ready.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        if self.slots is not None:
            self.slots.release()
        if "-err/" in msg.topic:
            self.errors += 1
            return
        self.predictions += 1
        if self.sent_at:
            doc = json.loads(msg.payload)
            with self.lock:
                t = self.sent_at.pop((doc["stream"], float(doc["ts"])), None)
            if t is not None:
                self.latencies.append((self.predictions, now - t))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--active", type=int, default=200)
    ap.add_argument("--max-resident", type=int, default=400)
    ap.add_argument("--stream-ttl", type=float, default=20.0)
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--sample-every", type=int, default=50)
    ap.add_argument("--out", default="soak.json")
    a = ap.parse_args(argv)
    binary = find_mosquitto()
    if binary is None:
        sys.exit("soak: mosquitto not found (install it or set $STATECAST_MOSQUITTO)")
    work = Path(tempfile.mkdtemp(prefix="statecast-soak-"))
    from edge_models import build_model  # needs tests/ on the path

    model = build_model(work / "soak.onnx", units=32, horizon=6, model_id="soak")
    broker = Mosquitto(binary, work / "mosquitto")
    broker.start()
    port = free_port()
    cid = "soak"
    counter = Counter(broker, cid)
    log = open(work / "daemon.log", "wb")  # noqa: SIM115 - closed at the end
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--model", str(model), "--broker", broker.url,
         "--subscribe", f"{cid}/+/temp", "--publish", f"{cid}-out/{{stream}}",
         "--errors", f"{cid}-err/{{stream}}", "--client-id", cid, "--state-dir",
         str(work / "state"), "--metrics-port", str(port), "--stream-ttl", str(a.stream_ttl),
         "--max-resident", str(a.max_resident), "--log-level", "WARNING"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while gauge(port, "statecast_edge_connected") != 1 and time.monotonic() < deadline:
        time.sleep(0.1)

    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.max_inflight_messages_set(a.window)
    slots = counter.slots = threading.Semaphore(a.window)
    pub.connect(broker.host, broker.port)
    pub.loop_start()

    samples: list[dict[str, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            samples.append({
                "t": time.monotonic(), "predictions": counter.predictions,
                "rss_kib": rss_kib(daemon.pid),
                "resident": gauge(port, "statecast_edge_active_streams"),
            })

    sampler = threading.Thread(target=sample, name="soak-sampler", daemon=True)
    sampler.start()
    counts = [0] * a.streams
    slide = max(1, a.active // 4)
    per_phase = a.active * 20  # every active stream sends ~20 observations per phase
    t_start = time.monotonic()
    for i in range(a.messages):
        phase = i // per_phase
        s = (phase * slide + i % a.active) % a.streams
        ts = T0 + 3600.0 * counts[s]
        counts[s] += 1
        slots.acquire()
        if i % a.sample_every == 0:
            with counter.lock:
                counter.sent_at[(f"s{s}", ts)] = time.perf_counter()
        pub.publish(f"{cid}/s{s}/temp", b'{"ts": %.1f, "temp": %.3f}' % (ts, 50 + (i % 97) / 10),
                    qos=1)
        if i % 100_000 == 0 and i:
            print(f"  {i:,} sent, {counter.predictions:,} predictions, "
                  f"RSS {rss_kib(daemon.pid) / 1024:.1f} MiB", flush=True)
    deadline = time.monotonic() + 120
    while counter.predictions + counter.errors < a.messages and time.monotonic() < deadline:
        time.sleep(0.1)
    elapsed = time.monotonic() - t_start
    done.set()
    sampler.join()
    resident = gauge(port, "statecast_edge_active_streams")
    daemon.terminate()
    status = daemon.wait(60)
    pub.disconnect()
    pub.loop_stop()
    broker.stop()
    log.close()

    def rss_at(fraction: float) -> float:
        want = fraction * a.messages
        return next((s["rss_kib"] for s in samples if s["predictions"] >= want),
                    samples[-1]["rss_kib"])

    rss20, rss100 = rss_at(0.2), samples[-1]["rss_kib"]
    tenths: list[dict[str, float]] = []
    for k in range(10):
        lo, hi = k * a.messages / 10, (k + 1) * a.messages / 10
        lat = sorted(x for n, x in counter.latencies if lo < n <= hi)
        if lat:
            tenths.append({"tenth": k + 1, "p50_ms": 1000 * statistics.median(lat),
                           "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))]})
    early = statistics.median([t["p50_ms"] for t in tenths[2:4]]) if len(tenths) >= 4 else 0
    late = statistics.median([t["p50_ms"] for t in tenths[-2:]]) if tenths else 0
    state_files = [p for p in (work / "state").rglob("*") if p.is_file()]
    state_bytes = sum(p.stat().st_size for p in state_files)
    result = {
        "messages": a.messages, "streams": a.streams, "active": a.active,
        "max_resident": a.max_resident, "stream_ttl": a.stream_ttl,
        "predictions": counter.predictions, "errors": counter.errors,
        "seconds": round(elapsed, 1), "msg_per_s": round(counter.predictions / elapsed),
        "rss_mib_at_20pct": round(rss20 / 1024, 1), "rss_mib_at_100pct": round(rss100 / 1024, 1),
        "rss_growth_pct": round(100 * (rss100 - rss20) / rss20, 1),
        "max_resident_seen": max(s["resident"] for s in samples),
        "resident_at_end": resident, "state_dir_mib": round(state_bytes / 2**20, 2),
        "spill_files": sum(1 for p in state_files if p.suffix == ".st"),
        "latency_p50_ms_20_40pct": round(early, 2), "latency_p50_ms_80_100pct": round(late, 2),
        "latency_by_tenth": tenths, "exit_status": status,
    }
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "latency_by_tenth"}, indent=2))
    print("tenth  p50 ms  p99 ms")
    for t in tenths:
        print(f"{t['tenth']:>5} {t['p50_ms']:7.2f} {t['p99_ms']:7.2f}")
    ok = (counter.predictions == a.messages and counter.errors == 0
          and result["rss_growth_pct"] < 10 and status == 0)
    print("soak:", "OK" if ok else "FAILED", f"(work files in {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
