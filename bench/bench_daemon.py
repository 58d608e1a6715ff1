"""Benchmark: `statecast-edge` end to end through a local mosquitto, beside its own floor.

    .venv/bin/python bench/bench_daemon.py [--seconds 5] [--out bench/results/daemon.json]

The model is a 2×32 Keras LSTM (1 feature, 6-step forecast: the demo's shape) exported with
`--batch dynamic`; the floor is the same daemon running an identity graph with the same contract
(bench/models.py), so the difference is what the LSTM costs. The load comes from one bare-socket
MQTT client (bench/mqttload.py) that publishes observations and receives the forecasts on the
same connection:

* throughput: 1, 100 and 1,000 streams, QoS 0 and QoS 1 both ways, a closed loop that keeps
  `--window` observations outstanding; sustained observations/s over `--seconds`;
* latency: 1,000 streams at an open-loop 1,000 observations/s; p50/p99 from the moment the
  observation is written to the socket to the moment its forecast is read;
* memory and start: the daemon's RSS after the 1,000-stream run, the time from process start to
  the first forecast, beside the TensorFlow equivalent (bench/tf_daemon.py);
* grid (`--grid`, or `--only-grid` for this case alone): 1,000 streams sending 10 observations
  per period into the same LSTM with an hourly grid in its manifest (one aggregation per
  message, one model step per period) beside one-message-one-step (the same LSTM without a
  grid, one observation per period), in the same run: messages/s and their ratio.

Prints tables and writes JSON. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.broker import Mosquitto, find_mosquitto, free_port
from bench.mqttload import RawClient

ROOT = Path(__file__).resolve().parents[1]
# --pin: the CPUs the daemon runs on (the broker and the load client keep the others), so that
# runs compared with each other are not also comparing where the scheduler put the processes
DAEMON_CPUS: set[int] = set()  # empty: not pinned


class Load:
    """The load client: counts forecasts, records their arrival times by sequence number."""

    def __init__(self, port: int, tag: str, streams: int, qos: int, per: int = 1) -> None:
        self.per = per  # observations per period: one forecast per stream per `per` sent
        self.tag = tag
        self.streams = streams
        self.qos = qos
        self.got = 0
        self.online = False
        self.sent_at: list[float] = []
        self.latency: list[float] = []
        self.track = False
        self.client = RawClient("127.0.0.1", port, f"load-{tag}", self.on_message)
        self.client.subscribe([(f"out{tag}/#", qos), (f"statecast/status/{tag}", 1)])
        self.topics = [f"in{tag}/s{i}/temp".encode() for i in range(streams)]
        self.seq = 0

    def on_message(self, topic: str, payload: bytes, now: float) -> None:
        if topic.startswith("statecast/status/"):
            self.online = b'"online"' in payload
            return
        self.got += 1
        if self.track:
            k = payload.index(b'"ts":') + 5
            ts = int(payload[k : payload.index(b",", k)])
            stream = int(topic.rsplit("/s", 1)[1])
            seq = (ts // 3600 - 1) * self.streams + stream
            if seq < len(self.sent_at):
                self.latency.append(now - self.sent_at[seq])

    def send(self, n: int) -> None:
        """Queue the next n observations, round-robin over the streams."""
        s = self.streams
        publish = self.client.publish
        for _ in range(n):
            seq = self.seq
            k, i = divmod(seq, s)
            payload = b'{"ts":%d,"temp":%.1f}' % (3600 * (k + 1) // self.per,
                                                  40.0 + (seq % 17))
            publish(self.topics[i], payload, self.qos)
            self.seq += 1

    def wait(self, cond: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                return False
            self.client.pump(0.01)
        return True

    def close(self) -> None:
        self.client.close()


def daemon(model: Path, port: int, tag: str, qos: int, extra: list[str],
           metrics_port: int | None = None) -> subprocess.Popen[bytes]:
    more = ["--metrics-port", str(metrics_port)] if metrics_port is not None else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--model", str(model), *more,
         "--broker", f"mqtt://127.0.0.1:{port}", "--subscribe", f"in{tag}/+/temp",
         "--publish", f"out{tag}/{{stream}}", "--client-id", tag, "--qos", str(qos),
         "--log-level", "WARNING", *extra],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if DAEMON_CPUS:  # before the interpreter has started its threads: they inherit it
        os.sched_setaffinity(proc.pid, DAEMON_CPUS)
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def step_counts(metrics_port: int) -> tuple[float, float]:
    """(messages taken in, model runs) from the daemon's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {}
    for name in ("messages_received_total", "model_runs_total"):
        m = re.search(rf"^statecast_edge_{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        values[name] = float(m.group(1)) if m else math.nan
    return values["messages_received_total"], values["model_runs_total"]


def rss_mib(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def profiler(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the daemon for `seconds` into a folded-stacks file (bench extra)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print("bench_daemon: py-spy not installed (pip install '.[bench]')", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(spy), "record", "-p", str(pid), "-d", str(int(seconds)),
                             "-r", "250", "-f", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_frames(folded: Path, n: int = 12) -> list[tuple[str, float]]:
    """The functions with the most samples on top of the stack (self time), as fractions."""
    counts: dict[str, int] = {}
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, k = line.rpartition(" ")
        frame = stack.rsplit(";", 1)[-1]
        counts[frame] = counts.get(frame, 0) + int(k)
        total += int(k)
    return [(f, c / total) for f, c in sorted(counts.items(), key=lambda kv: -kv[1])[:n]]


def throughput(model: Path, port: int, tag: str, streams: int, qos: int, seconds: float,
               window: int, extra: list[str], profile: Path | None = None,
               per: int = 1) -> dict[str, Any]:
    """Observations/s through the daemon; with `per` > 1 (a grid model) each stream sends `per`
    observations per period and gets one forecast per period, so the observations counted are
    those of the periods whose forecast came back."""
    load = Load(port, tag, streams, qos, per)
    metrics_port = free_port()
    proc = daemon(model, port, tag, qos, extra, metrics_port)
    try:
        if not load.wait(lambda: load.online, 30):
            raise RuntimeError(f"daemon {tag} did not come online")
        load.send(streams * per)  # every stream's first period: create the states
        if not load.wait(lambda: load.got >= streams, 60):
            raise RuntimeError(f"daemon {tag}: {load.got} of {streams} warm-up forecasts")
        spy = profiler(proc.pid, seconds, profile) if profile is not None else None
        got0, t0, counts0 = load.got, time.perf_counter(), step_counts(metrics_port)
        cpu0 = cpu_seconds(proc.pid)
        end = t0 + seconds
        while time.perf_counter() < end:
            room = window - (load.seq - load.got * per)
            if room > 0:
                load.send(min(room, 200))
            load.client.pump(0.001 if room <= 0 else 0)
        t1 = time.perf_counter()
        got1 = load.got
        cpu1 = cpu_seconds(proc.pid)
        counts1 = step_counts(metrics_port)
        rate = (got1 - got0) * per / (t1 - t0)
        whole = load.seq - load.seq % (streams * per)  # the periods that can close
        complete = load.wait(lambda: load.got * per >= whole, 30)
        rss = rss_mib(proc.pid)
        if spy is not None:
            spy.wait(30)
        return {"obs_per_s": rate, "sent": load.seq, "received": load.got,
                "lost": whole - load.got * per if not complete else 0, "rss_mib": rss[0],
                "peak_rss_mib": rss[1],
                # the daemon's CPU time per observation (µs), and its share of the wall time
                "cpu_us_per_obs": (cpu1 - cpu0) / max(1, (got1 - got0) * per) * 1e6,
                "cpu_share": (cpu1 - cpu0) / (t1 - t0),
                # observations per model run: how many streams the worker stepped together
                "streams_per_step": (counts1[0] - counts0[0]) / max(1.0, counts1[1] - counts0[1])}
    finally:
        proc.terminate()
        proc.wait(30)
        load.close()


def latency(model: Path, port: int, tag: str, streams: int, qos: int, rate: float,
            seconds: float, extra: list[str]) -> dict[str, Any]:
    load = Load(port, tag, streams, qos)
    proc = daemon(model, port, tag, qos, extra)
    try:
        if not load.wait(lambda: load.online, 30):
            raise RuntimeError(f"daemon {tag} did not come online")
        load.send(streams)
        if not load.wait(lambda: load.got >= streams, 60):
            raise RuntimeError(f"daemon {tag}: warm-up incomplete")
        load.sent_at = [0.0] * load.seq
        load.track = True
        start = time.perf_counter()
        base = load.seq
        end = start + seconds
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            due = base + int((now - start) * rate) - load.seq
            if due > 0:
                for _ in range(due):
                    load.send(1)
                    load.client.pump(0)
                    load.sent_at.append(time.perf_counter())
            load.client.pump(0.0002)
        load.wait(lambda: load.got >= load.seq, 10)
        lat = np.array(load.latency[int(rate * 0.5):]) * 1e3  # skip the first half second
        return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                "max_ms": float(lat.max()), "n": len(lat), "lost": load.seq - load.got}
    finally:
        proc.terminate()
        proc.wait(30)
        load.close()


def first_forecast(cmd: list[str], port: int, tag: str) -> tuple[float, float]:
    """Seconds from process start to the first forecast, and the RSS after 1,000 streams."""
    load = Load(port, tag, 1000, 0)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        k = 0
        while load.got == 0:
            if time.perf_counter() - t0 > 120:
                raise RuntimeError(f"{tag}: no forecast within 120 s")
            load.client.publish(load.topics[0], b'{"ts":%d,"temp":40.0}' % (3600 * (k + 1)), 0)
            k += 1
            load.client.pump(0.002)
        elapsed = time.perf_counter() - t0
        load.seq = 1000 * (k + 1)  # later observations of every stream
        load.send(1000)
        if not load.wait(lambda: load.got >= 1001, 120) or proc.poll() is not None:
            raise RuntimeError(f"{tag}: {load.got - 1} of 1000 forecasts, exit {proc.poll()}")
        time.sleep(0.5)
        return elapsed, rss_mib(proc.pid)[0]
    finally:
        proc.terminate()
        proc.wait(30)
        load.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=5.0, help="throughput measuring time")
    p.add_argument("--window", type=int, default=2000, help="observations kept outstanding")
    p.add_argument("--rate", type=float, default=1000.0, help="latency test rate (obs/s)")
    p.add_argument("--streams", default="1,100,1000")
    p.add_argument("--no-tf", action="store_true", help="skip the TensorFlow comparison")
    p.add_argument("--profile", type=Path, metavar="DIR", help="sample the daemon with py-spy "
                   "during the largest runs (LSTM, QoS 0 and 1) into DIR/daemon-qosN.txt "
                   "(folded stacks); slows those runs")
    p.add_argument("--mqtt-version", choices=("3.1.1", "5"), default="3.1.1",
                   help="the daemon's protocol version (5 reports ACL refusals; paho parses "
                   "properties on every message)")
    p.add_argument("--grid", action="store_true", help="also 1,000 streams at 10 observations "
                   "per period into a grid model beside one-message-one-step")
    p.add_argument("--only-grid", action="store_true", help="run only that comparison")
    p.add_argument("--scoring-cost", type=int, metavar="ROUNDS", help="only measure what "
                   "self-scoring costs: the LSTM daemon with and without --no-scoring, at the "
                   "largest --streams and QoS 0, alternated ROUNDS times")
    p.add_argument("--scoring-flags", default="", metavar="'FLAGS'", help="with --scoring-cost: "
                   "extra daemon flags for the run with scoring, e.g. '--score-every 6'")
    p.add_argument("--record-cost", type=int, metavar="ROUNDS", help="only measure what "
                   "--record costs, the same way")
    p.add_argument("--pin", action="store_true", help="run the daemon on the last CPU and "
                   "the broker and load client on the others (Linux), so that runs differ less "
                   "by where the scheduler puts them")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/daemon.json")
    args = p.parse_args()
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            sys.exit("bench_daemon: --pin needs at least 2 CPUs")
        DAEMON_CPUS.add(cpus[-1])
        os.sched_setaffinity(0, set(cpus[:-1]))  # the broker started below inherits it
    binary = find_mosquitto()
    if binary is None:
        sys.exit("bench_daemon: mosquitto not found (install it or set $STATECAST_MOSQUITTO)")
    from bench.models import export_pair, identity_graph, keras_model, with_grid

    extra = ["--mqtt-version", args.mqtt_version]
    results: dict[str, Any] = {"mqtt_version": args.mqtt_version,
                               "machine": platform.processor() or platform.machine(),
                               "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        d.chmod(0o755)
        keras_net = keras_model(2, 32, 1, 6)
        _, lstm = export_pair(keras_net, d, "lstm")
        ident = identity_graph(lstm, d / "identity.onnx")
        keras_net.save(d / "lstm.keras")
        broker = Mosquitto(binary, d / "mosquitto")
        broker.start()
        if args.scoring_cost:
            try:
                return ab_cost(args, lstm, broker.port, extra, "scoring", args.scoring_cost,
                               args.scoring_flags.split(), ["--no-scoring"])
            finally:
                broker.stop()
        if args.record_cost:
            try:
                return ab_cost(args, lstm, broker.port, extra, "record", args.record_cost,
                               ["--record", str(d / "record")], [])
            finally:
                broker.stop()
        try:
            if args.grid or args.only_grid:
                results["grid"] = grid_case(lstm, with_grid(lstm, d / "grid.onnx"), broker,
                                            args.seconds, args.window, extra)
            if args.only_grid:
                return finish(results, args.out)
            streams = [int(s) for s in args.streams.split(",")]
            rows = []
            n = 0
            for s in streams:
                for qos in (0, 1):
                    row: dict[str, Any] = {"streams": s, "qos": qos}
                    for name, model in (("lstm", lstm), ("identity", ident)):
                        n += 1
                        spy_out = None
                        if args.profile is not None and s == max(streams) and name == "lstm":
                            spy_out = args.profile / f"daemon-qos{qos}.txt"
                        r = throughput(model, broker.port, f"t{n}", s, qos, args.seconds,
                                       args.window, extra, spy_out)
                        if spy_out is not None and spy_out.exists():
                            r["profile_top"] = top_frames(spy_out)
                            for frame, share in r["profile_top"]:
                                print(f"    {share:6.1%}  {frame}", file=sys.stderr)
                        row[name] = r
                        print(f"  {s} streams QoS {qos} {name}: {r['obs_per_s']:,.0f} obs/s "
                              f"(lost {r['lost']}, RSS {r['rss_mib']:.1f} MiB)", file=sys.stderr)
                    rows.append(row)
            results["throughput"] = rows
            lat = []
            for qos in (0, 1):
                row = {"streams": 1000, "qos": qos, "rate": args.rate}
                for name, model in (("lstm", lstm), ("identity", ident)):
                    n += 1
                    row[name] = latency(model, broker.port, f"l{n}", 1000, qos, args.rate,
                                        args.seconds, extra)
                    print(f"  latency QoS {qos} {name}: {row[name]}", file=sys.stderr)
                lat.append(row)
            results["latency"] = lat
            edge_cmd = [sys.executable, "-m", "edge.cli", "--model", str(lstm), "--broker",
                        f"mqtt://127.0.0.1:{broker.port}", "--subscribe", "ins1/+/temp",
                        "--publish", "outs1/{stream}", "--client-id", "s1", "--qos", "0",
                        "--log-level", "WARNING"]
            start = {"edge": first_forecast(edge_cmd, broker.port, "s1")}
            if not args.no_tf:
                tf_cmd = [sys.executable, str(ROOT / "bench/tf_daemon.py"),
                          str(d / "lstm.keras"), str(broker.port), "ins2/+/temp", "outs2/", "s2"]
                start["tensorflow"] = first_forecast(tf_cmd, broker.port, "s2")
            results["start"] = {k: {"first_forecast_s": v[0], "rss_mib_1000_streams": v[1]}
                                for k, v in start.items()}
        finally:
            broker.stop()
    return finish(results, args.out)


def grid_case(plain: Path, grid: Path, broker: Mosquitto, seconds: float, window: int,
              extra: list[str]) -> dict[str, Any]:
    """1,000 streams, QoS 1: one message per period into the plain LSTM (one step each) beside
    10 messages per period into the same LSTM on an hourly grid (one step per 10 messages)."""
    # A period closes only when all 1,000 streams have sent their 10 observations (round
    # robin), so the closed loop keeps two periods of every stream outstanding, in both cases.
    window = max(window, 2 * 1000 * 10)
    out: dict[str, Any] = {"streams": 1000, "qos": 1, "messages_per_period": 10,
                           "window": window}
    for name, model, per in (("one_message_one_step", plain, 1), ("grid_10_per_period", grid, 10)):
        r = throughput(model, broker.port, f"g{name[:4]}", 1000, 1, seconds, window, extra,
                       per=per)
        out[name] = r
        print(f"  grid case {name}: {r['obs_per_s']:,.0f} messages/s (lost {r['lost']})",
              file=sys.stderr)
    out["ratio"] = (out["grid_10_per_period"]["obs_per_s"]
                    / out["one_message_one_step"]["obs_per_s"])
    return out


def finish(results: dict[str, Any], path: Path) -> int:
    results["load_after"] = os.getloadavg()
    report(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")
    return 0


def ab_cost(args: argparse.Namespace, model: Path, port: int, extra: list[str], what: str,
            rounds: int, on: list[str], off: list[str]) -> int:
    """Throughput with and without a feature (`on` / `off` daemon flags), alternated; prints
    and writes the ratio to daemon-<what>.json."""
    s = max(int(v) for v in args.streams.split(","))
    runs: dict[str, list[float]] = {"with": [], "without": []}
    rss: dict[str, list[float]] = {"with": [], "without": []}
    per_step: dict[str, list[float]] = {"with": [], "without": []}
    cpu: dict[str, list[float]] = {"with": [], "without": []}
    for k in range(rounds):
        for name, flags in (("with", on), ("without", off)):
            r = throughput(model, port, f"c{k}{what[:2]}{name[:2]}", s, 0, args.seconds,
                           args.window, extra + flags)
            runs[name].append(r["obs_per_s"])
            rss[name].append(r["rss_mib"])
            per_step[name].append(r["streams_per_step"])
            cpu[name].append(r["cpu_us_per_obs"])
            print(f"  {s} streams QoS 0 {name} {what}: {r['obs_per_s']:,.0f} obs/s "
                  f"(lost {r['lost']}, RSS {r['rss_mib']:.1f} MiB, "
                  f"{r['streams_per_step']:.0f} streams per step, daemon CPU "
                  f"{r['cpu_us_per_obs']:.1f} µs/obs at {r['cpu_share']:.0%})", file=sys.stderr)
    a, b = float(np.median(runs["with"])), float(np.median(runs["without"]))
    ra, rb = float(np.median(rss["with"])), float(np.median(rss["without"]))
    # each "with" run against the "without" run next to it: less sensitive to the machine's drift
    paired = float(np.median([1 - x / y for x, y in zip(runs["with"], runs["without"],
                                                          strict=True)]))
    print(f"\n{what} cost {' '.join(on)}, {s} streams, QoS 0 (median of {rounds} alternated "
          f"runs of {args.seconds:g} s): {a:,.0f} obs/s with, {b:,.0f} without: "
          f"{1 - a / b:+.1%} throughput lost (median of the paired ratios {paired:+.1%}); "
          f"RSS {ra:.1f} MiB with, {rb:.1f} without "
          f"({ra / rb - 1:+.1%}); streams per step {np.median(per_step['with']):.0f} with, "
          f"{np.median(per_step['without']):.0f} without; daemon CPU "
          f"{np.median(cpu['with']):.1f} µs/obs with, {np.median(cpu['without']):.1f} without"
          f"{' (pinned to one CPU)' if DAEMON_CPUS else ''}")
    out = args.out.with_name(f"daemon-{what}.json") if args.out.name == "daemon.json" \
        else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"streams": s, "qos": 0, "flags": on, "runs": runs, "rss_mib": rss,
                               "with_obs_per_s": a, "without_obs_per_s": b, "cost": 1 - a / b,
                               "paired_cost_median": paired, "streams_per_step": per_step,
                               "cpu_us_per_obs": cpu, "pinned": bool(DAEMON_CPUS),
                               "load": os.getloadavg()}, indent=2))
    print(f"wrote {out}")
    return 0


def report(r: dict[str, Any]) -> None:
    if "grid" in r:
        g = r["grid"]
        a, b = g["one_message_one_step"]["obs_per_s"], g["grid_10_per_period"]["obs_per_s"]
        print(f"\nGrid: 1,000 streams, QoS 1 (load {r['load_before'][0]:.2f} before)")
        print(f"| {'case':<40} | {'messages/s':>10} | {'model steps/s':>13} |")
        print(f"|{'-' * 42}|{'-' * 12}|{'-' * 15}|")
        print(f"| {'one message, one step':<40} | {a:>10,.0f} | {a:>13,.0f} |")
        print(f"| {'10 messages per period, one step each':<40} | {b:>10,.0f} "
              f"| {b / 10:>13,.0f} |")
        print(f"  ratio (grid / one-message-one-step): {g['ratio']:.2f}")
    if "throughput" not in r:
        return
    print(f"\nmachine: {r['cpus']} CPUs ({r['machine']}), load average before "
          f"{r['load_before'][0]:.2f}, after {r['load_after'][0]:.2f}")
    print("\nSustained observations/s end to end (closed loop, forecasts received)")
    print(f"| {'streams':>7} | {'QoS':>3} | {'LSTM obs/s':>10} | {'identity obs/s':>14} "
          f"| {'LSTM / identity':>15} | {'RSS MiB':>7} |")
    print(f"|{'-' * 9}|{'-' * 5}|{'-' * 12}|{'-' * 16}|{'-' * 17}|{'-' * 9}|")
    for row in r["throughput"]:
        a, b = row["lstm"]["obs_per_s"], row["identity"]["obs_per_s"]
        print(f"| {row['streams']:>7,} | {row['qos']:>3} | {a:>10,.0f} | {b:>14,.0f} "
              f"| {a / b:>15.0%} | {row['lstm']['rss_mib']:>7.1f} |")
    by = {(row["streams"], row["qos"]): row["lstm"]["obs_per_s"] for row in r["throughput"]}
    for s in sorted({k[0] for k in by}):
        if (s, 0) in by and (s, 1) in by:
            print(f"  {s} streams: QoS 0 / QoS 1 = {by[(s, 0)] / by[(s, 1)]:.2f}x")
    print("\nPublish → forecast latency, 1,000 streams, open loop")
    print(f"| {'QoS':>3} | {'obs/s':>6} | {'LSTM p50 ms':>11} | {'LSTM p99 ms':>11} "
          f"| {'identity p50 ms':>15} | {'identity p99 ms':>15} |")
    print(f"|{'-' * 5}|{'-' * 8}|{'-' * 13}|{'-' * 13}|{'-' * 17}|{'-' * 17}|")
    for row in r["latency"]:
        a, b = row["lstm"], row["identity"]
        print(f"| {row['qos']:>3} | {row['rate']:>6,.0f} | {a['p50_ms']:>11.2f} "
              f"| {a['p99_ms']:>11.2f} | {b['p50_ms']:>15.2f} | {b['p99_ms']:>15.2f} |")
    print("\nStart and memory")
    print(f"| {'daemon':<28} | {'first forecast s':>16} | {'RSS MiB, 1,000 streams':>22} |")
    print(f"|{'-' * 30}|{'-' * 18}|{'-' * 24}|")
    names = {"edge": "statecast-edge (onnxruntime)", "tensorflow": "TensorFlow equivalent"}
    for k, v in r["start"].items():
        print(f"| {names[k]:<28} | {v['first_forecast_s']:>16.2f} "
              f"| {v['rss_mib_1000_streams']:>22.1f} |")


if __name__ == "__main__":
    sys.exit(main())
