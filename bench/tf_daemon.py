"""The TensorFlow-based equivalent of `statecast-edge`, for the memory and start-up comparison.

    python bench/tf_daemon.py MODEL.keras PORT PATTERN PUBLISH_PREFIX CLIENT_ID

It does what the daemon does in the simplest way a TensorFlow user would: load the Keras model,
build the batch-1 step model with the state as inputs and outputs (bench/models.py), keep one
state per stream in a dict, and on each JSON message call the model directly (faster than
`predict` at batch 1) and publish the forecast. No checkpoints, no error topic. Benchmark only.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    path, port, pattern, prefix, cid = sys.argv[1:6]
    import keras
    import paho.mqtt.client as mqtt
    import tensorflow as tf
    from paho.mqtt.enums import CallbackAPIVersion

    from bench.models import keras_step_model

    model = keras.saving.load_model(path)
    step = keras_step_model(model)
    n_state = len(step.inputs) - 1
    zero = [tf.zeros(tuple(i.shape), tf.float32) for i in step.inputs[1:]]
    states: dict[str, list[Any]] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid)

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        sock = c.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe(pattern, qos=0)
        c.publish(f"statecast/status/{cid}", b'{"status": "online"}', qos=1, retain=True)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        stream = msg.topic.split("/")[1]
        doc = json.loads(msg.payload)
        state = states.get(stream) or zero
        x = tf.constant(np.array([[[doc["temp"]]]], np.float32))
        out = step([x, *state], training=False)
        states[stream] = list(out[1 : 1 + n_state])
        y = keras.ops.convert_to_numpy(out[0])[0]
        body = {"stream": stream, "ts": doc["ts"], "forecast": y.tolist()}
        c.publish(prefix + stream, json.dumps(body), qos=0)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", int(port))
    client.loop_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
