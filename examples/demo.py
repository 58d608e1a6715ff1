"""The statecast demo: train → export → broker + edge daemon → live forecasts, in about 2 minutes.

1. trains stateful LSTMs on the Seattle hourly temperatures (6-hour horizon), with and without
   a seasonal memory, and keeps the one that forecasts best on the validation split;
2. exports it to a batch-1 ONNX step graph, proven against Keras;
3. starts mosquitto on a free loopback port and `statecast-edge` against it;
4. replays a week before the held-out tail quickly (to warm the stream's state), then the last
   weeks at a visible pace, printing one line per forecast the daemon publishes with its 80 %
   prediction interval and the interval's running coverage;
5. prints the daemon's own scores (statecast/score/seattle), writes demo-out/forecast.png with
   the intervals shaded, and stops everything.

    python examples/demo.py [--out demo-out] [--weeks 2] [--rate 40]
"""

from __future__ import annotations

import argparse
import csv
import json
import queue
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.broker import Mosquitto, find_mosquitto  # noqa: E402

DATA = ROOT / "examples/data/seattle-temps.csv"
BIN = Path(sys.executable).parent
CLIENT_ID = "statecast-demo"


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        sys.exit(f"demo: '{cmd[0]}' failed with status {proc.returncode}")


def read_series() -> tuple[list[datetime], list[float]]:
    with open(DATA, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return ([datetime.strptime(r["date"], "%Y/%m/%d %H:%M") for r in rows],
            [float(r["temp"]) for r in rows])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "demo-out")
    p.add_argument("--weeks", type=int, default=2, help="held-out weeks replayed live")
    p.add_argument("--rate", type=float, default=40.0, help="live messages per second")
    p.add_argument("--epochs", type=int, default=100)
    args = p.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    run_dir, model = out / "run", out / "temps.onnx"

    step("1/4 train stateful LSTMs at batch 64 and keep the best on validation "
         "(statecast-train)")
    run([str(BIN / "statecast-train"), "--data", str(DATA), "--time-col", "date",
         "--target", "temp", "--horizon", "6", "--season", "24", "--epochs", str(args.epochs),
         "--unit", "°F", "--device-class", "temperature", "--quiet", "--out", str(run_dir)])

    step("2/4 export a batch-1 ONNX step graph with explicit state (statecast-export)")
    run([str(BIN / "statecast-export"), str(run_dir), "--out", str(model)])

    step("3/4 start mosquitto and the edge daemon (statecast-edge)")
    binary = find_mosquitto()
    if binary is None:
        print("demo: mosquitto is not installed; run 'sudo apt-get install mosquitto' "
              "(or 'make demo' as root)", file=sys.stderr)
        return 2
    broker = Mosquitto(binary, out / "broker")
    broker.start()
    # the replay starts over: a state kept from an earlier run would find every reading old
    shutil.rmtree(out / "state", ignore_errors=True)
    daemon = subprocess.Popen([
        str(BIN / "statecast-edge"), "--model", str(model), "--broker", broker.url,
        "--subscribe", "sensors/+/temp", "--publish", "forecasts/{stream}",
        "--client-id", CLIENT_ID, "--state-dir", str(out / "state"), "--qos", "1",
        "--ha-discovery", "homeassistant",
    ])
    inbox: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="statecast-demo-viewer")
    sub.on_connect = lambda c, *_: c.subscribe(
        [("forecasts/#", 1), ("statecast/errors/#", 1), (f"statecast/status/{CLIENT_ID}", 1),
         ("statecast/score/#", 1)])
    sub.on_message = lambda _c, _u, m: inbox.put((m.topic, json.loads(m.payload or b"null")))
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    try:
        code = _live(args, broker.url, inbox, out)
        _show_discovery(broker.host, broker.port)
        return code
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        sub.loop_stop()
        sub.disconnect()
        broker.stop()


def _live(args: argparse.Namespace, url: str, inbox: queue.Queue[tuple[str, dict[str, Any]]],
          out: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            topic, msg = inbox.get(timeout=1)
        except queue.Empty:
            continue
        if topic.startswith("statecast/status/") and isinstance(msg, dict) and \
                msg.get("status") == "online":
            print(f"daemon online, model {str(msg.get('model', ''))[:12]}", flush=True)
            break
    else:
        print("demo: the daemon did not come online within 30 s", file=sys.stderr)
        return 1
    times, temps = read_series()
    live = 24 * 7 * args.weeks
    start = len(times) - live
    warm = 24 * 7
    replay = [str(BIN / "statecast-replay"), "--data", str(DATA), "--time-col", "date",
              "--broker", url, "--topic", "sensors/{stream}/temp", "--stream", "seattle",
              "--features", "temp", "--quiet"]
    step(f"4/4 replay: {warm} warm-up hours fast, then the last {live} hours live")
    run([*replay, "--skip", str(start - warm), "--count", str(warm), "--rate", "2000"])
    _drain(inbox, warm, 30)
    actual = dict(zip(times, temps, strict=True))
    feeder = subprocess.Popen([*replay, "--skip", str(start), "--count", str(live),
                               "--rate", str(args.rate)])
    print(f"{'observation time':<19} {'actual':>7} {'+1h':>7} {'80 % interval +1h':>17} "
          f"{'+6h':>7} {'MAE +1h':>8} {'persist.':>8} {'seasonal':>8} {'coverage':>8}")
    pending: dict[datetime, float] = {}
    pending_iv: dict[datetime, tuple[float, float]] = {}
    covered: list[float] = []
    score: dict[str, Any] = {}
    errs: list[float] = []
    base: list[float] = []
    seasonal: list[float] = []
    period = times[1] - times[0]
    rows: list[tuple[datetime, float, list[float], list[list[float]], list[list[float]]]] = []
    got, errors = 0, 0
    deadline = time.monotonic() + live / args.rate + 60
    while got < live and time.monotonic() < deadline:
        try:
            topic, msg = inbox.get(timeout=1)
        except queue.Empty:
            continue
        if topic.startswith("statecast/errors/"):
            errors += 1
            print(f"error: {msg}")
            continue
        if topic.startswith("statecast/score/"):
            score = msg
            continue
        if not topic.startswith("forecasts/"):
            continue
        got += 1
        ts = datetime.fromisoformat(msg["ts"])
        now = actual[ts]
        if ts in pending_iv:
            lo, hi = pending_iv.pop(ts)
            covered.append(float(lo <= now <= hi))
        if ts in pending:
            errs.append(abs(pending.pop(ts) - now))
            prev = actual.get(ts - period)
            if prev is not None:
                base.append(abs(prev - now))
            day_before = actual.get(ts - 24 * period)
            if day_before is not None:
                seasonal.append(abs(day_before - now))
        fc = [float(v) for v in msg["forecast"]]
        ivs = msg.get("intervals", {})
        iv80, iv95 = ivs.get("0.8", [[v, v] for v in fc]), ivs.get("0.95", [[v, v] for v in fc])
        pending[datetime.fromisoformat(msg["at"][0])] = fc[0]
        pending_iv[datetime.fromisoformat(msg["at"][0])] = (iv80[0][0], iv80[0][1])
        rows.append((ts, now, fc, iv80, iv95))
        band = f"[{iv80[0][0]:6.1f}, {iv80[0][1]:6.1f}]"
        print(f"{ts:%Y-%m-%d %H:%M}    {now:7.1f} {fc[0]:7.1f} {band:>17} {fc[-1]:7.1f} "
              f"{_mean(errs):8.3f} {_mean(base):8.3f} {_mean(seasonal):8.3f} "
              f"{100 * _mean(covered):7.1f}%", flush=True)
    feeder.wait(30)
    print(f"\n{got} forecasts for {live} observations, {errors} errors; MAE at +1 h: model "
          f"{_mean(errs):.3f} °F, persistence {_mean(base):.3f} °F, seasonal naive (same hour "
          f"yesterday) {_mean(seasonal):.3f} °F; the 80 % interval covered "
          f"{100 * _mean(covered):.1f} % of the actuals at +1 h")
    time.sleep(0.5)
    while not inbox.empty():
        topic, msg = inbox.get()
        if topic.startswith("statecast/score/"):
            score = msg
    if score:
        print(f"\nthe daemon's own rolling scores (statecast/score/seattle, half-life "
              f"{score['half_life']:g} h, {score['scored']} scored):")
        print(f"  {'horizon':>7} {'MAE':>7} {'RMSE':>7} {'persist.':>8} {'seasonal':>8} "
              f"{'cov. 80%':>8} {'cov. 95%':>8} {'width 80%':>9}")
        for h in range(len(score["mae"])):
            def f(key: str, sub: str | None = None, h: int = h) -> str:
                v = score[key][sub][h] if sub else score[key][h]
                return "n/a" if v is None else f"{v:.3f}"
            print(f"  {h + 1:>7} {f('mae'):>7} {f('rmse'):>7} {f('persistence_rmse'):>8} "
                  f"{f('seasonal_rmse') if 'seasonal_rmse' in score else 'n/a':>8} "
                  f"{f('coverage', '0.8'):>8} {f('coverage', '0.95'):>8} "
                  f"{f('width', '0.8'):>9}")
    if len(rows) >= 2:
        _plot(rows, actual, out / "forecast.png")
        print(f"plot: {out / 'forecast.png'}")
    else:
        print("no plot: fewer than two forecasts came back", file=sys.stderr)
    return 0 if got == live and errors == 0 else 1


def _show_discovery(host: str, port: int) -> None:
    """What a Home Assistant on this broker would pick up: the retained discovery configs."""
    configs: dict[str, dict[str, Any]] = {}
    viewer = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="statecast-demo-ha")
    viewer.on_connect = lambda c, *_: c.subscribe("homeassistant/#", 1)
    viewer.on_message = lambda _c, _u, m: configs.__setitem__(m.topic, json.loads(m.payload))
    viewer.connect(host, port)
    viewer.loop_start()
    time.sleep(1.0)  # retained messages arrive at once
    viewer.loop_stop()
    viewer.disconnect()
    print("\nHome Assistant discovery (retained; point HA's MQTT integration at this broker and "
          "these entities appear):")
    for topic, cfg in sorted(configs.items()):
        name = cfg.get("name", cfg.get("dev", {}).get("name", ""))
        unit = cfg.get("unit_of_measurement", cfg.get("unit_of_meas", ""))
        print(f"  {topic}  ->  {name!r} {unit}")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _drain(inbox: queue.Queue[tuple[str, dict[str, Any]]], n: int, timeout: float) -> None:
    got, deadline = 0, time.monotonic() + timeout
    while got < n and time.monotonic() < deadline:
        try:
            topic, _ = inbox.get(timeout=1)
        except queue.Empty:
            continue
        got += topic.startswith("forecasts/")


def _plot(rows: list[tuple[datetime, float, list[float], list[list[float]], list[list[float]]]],
          actual: dict[datetime, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step_td = rows[1][0] - rows[0][0]
    fig, ax = plt.subplots(figsize=(12, 4.5), constrained_layout=True)
    ax.plot([r[0] for r in rows], [r[1] for r in rows], color="black", lw=1.3, label="actual")
    for h, colour in ((0, "tab:blue"), (len(rows[0][2]) - 1, "tab:orange")):
        when = [r[0] + step_td * (h + 1) for r in rows]
        ax.fill_between(when, [r[4][h][0] for r in rows], [r[4][h][1] for r in rows],
                        color=colour, alpha=0.08, lw=0,
                        label=f"95 % interval, {h + 1} h ahead")
        ax.fill_between(when, [r[3][h][0] for r in rows], [r[3][h][1] for r in rows],
                        color=colour, alpha=0.18, lw=0,
                        label=f"80 % interval, {h + 1} h ahead")
        ax.plot(when, [r[2][h] for r in rows], lw=1,
                color=colour, label=f"forecast made {h + 1} h earlier")
    ax.set_ylabel("°F")
    ax.set_title("statecast-edge forecasts over MQTT, Seattle hourly temperature (held-out weeks)")
    ax.legend()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
