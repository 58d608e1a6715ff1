"""The paho-mqtt wrapper: connect, persistent session, subscriptions, last will, reconnects.

paho's own network thread (`loop_start`) does all socket I/O; it runs with
`reconnect_on_failure=False`, and a named supervisor thread here reconnects with capped
exponential backoff and jitter. Messages are acknowledged by the application (`manual_ack`) once
they are processed, so a message in hand at a crash or shutdown is delivered again by the broker.
paho's return codes become exceptions or log lines here and go no further.

Faults that retrying cannot mend end the connection for good and set `fatal` (one sentence): the
broker refusing the credentials, a failed TLS handshake, or a broker that keeps closing the
connection before it answers CONNECT (a plain client on a TLS listener, or the reverse).

An unexpected exception in the supervisor, or in one of our callbacks on paho's network thread
(which would end that thread silently: no disconnect callback, nothing reconnects), is logged,
sets `failure` and ends the supervisor; `alive()` turns False, and the daemon exits for a restart.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import EdgeConfig
from edge.errors import EdgeError
from edge.metrics import Metrics
from edge.sockbuf import buffer_reads

log = logging.getLogger(__name__)

# (topic, payload, mid, qos)
MessageHandler = Callable[[str, bytes, int, int], None]

# CONNACK reason codes (MQTT 5 numbering; paho maps 3.1.1 return codes 4 and 5 onto 134 and 135).
BAD_CREDENTIALS = {134, 135, 140}  # bad user name or password, not authorized, bad auth method
EARLY_CLOSES = 4  # closed before CONNACK this many times in a row, never connected: fatal


def forecast_properties(model_id: str, period: float | None) -> Properties:
    """MQTT 5 properties of a forecast, built once per model: it expires after one period (the
    next observation's forecast replaces it), is JSON, and names its model."""
    props = Properties(PacketTypes.PUBLISH)
    if period is not None and period > 0:
        props.MessageExpiryInterval = max(1, math.ceil(period))
    props.ContentType = "application/json"
    props.UserProperty = [("model", model_id)]
    return props


def backoff(attempt: int, low: float, high: float) -> float:
    """Capped exponential backoff with jitter: uniform in [d/2, d], d = min(high, low·2^attempt)."""
    d = min(high, low * (2 ** min(attempt, 30)))
    return random.uniform(d / 2, d)


class Transport:
    """One MQTT connection for the daemon."""

    def __init__(
        self,
        config: EdgeConfig,
        on_message: MessageHandler,
        *,
        status_topic: str,
        online: Callable[[], bytes],
        offline: bytes,
        metrics: Metrics | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.on_fatal = on_fatal
        self.fatal: str | None = None
        self.failure: str | None = None  # an internal fault ended the supervisor (see alive)
        self._early_closes = 0
        self._connack = False
        self._denied_logged = 0.0
        self.url = config.broker_url
        self.handler = on_message
        self.status_topic = status_topic
        self.online = online
        self.offline = offline
        self.metrics = metrics or Metrics()
        self.v5 = config.mqtt_version == "5"
        self.accepting = True
        self.connected = threading.Event()
        self._down = threading.Event()
        self._closing = threading.Event()
        self._ever_connected = False
        self.connects = 0
        self._attempt = 0
        self._supervisor = threading.Thread(
            target=self._supervise, name="statecast-mqtt-supervisor", daemon=True
        )
        kwargs: dict[str, Any] = {
            "callback_api_version": CallbackAPIVersion.VERSION2,
            "client_id": config.client_id,
            "protocol": mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            "manual_ack": True,
            "reconnect_on_failure": False,
        }
        if not self.v5:
            kwargs["clean_session"] = False
        client = mqtt.Client(**kwargs)
        buffer_reads(client)  # one recv() for many packets, TCP_NODELAY from the start
        # No in-flight cap: paho 2.x rescans every unacknowledged message on each PUBACK when
        # one is set (O(n) per ack; QoS 1 ran at half the QoS 0 rate with 1000). The queue cap
        # below still bounds what waits for acknowledgement.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(100_000)
        username = config.username or self.url.username
        if username is not None:
            client.username_pw_set(username, config.password())
        if config.tls:
            try:
                client.tls_set(
                    ca_certs=config.ca_file,
                    certfile=config.cert_file,
                    keyfile=config.key_file,
                    cert_reqs=ssl.CERT_NONE if config.tls_insecure else ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError) as exc:
                raise EdgeError(f"TLS settings cannot be used ({exc})") from None
            if config.tls_insecure:
                client.tls_insecure_set(True)
                log.warning(
                    "tls_insecure is set: the broker's certificate is NOT verified, so anyone "
                    "on the path can read and forge messages. Use ca_file in production."
                )
        client.will_set(status_topic, offline, qos=1, retain=True)
        client.on_connect = self._guarded(self._on_connect)
        client.on_disconnect = self._guarded(self._on_disconnect)
        client.on_message = self._guarded(self._on_message)
        if self.v5 and config.qos > 0:
            # Only an MQTT 5 PUBACK can carry a refusal; for QoS 0 paho would build a reason
            # code and a property set per message just to call this.
            client.on_publish = self._guarded(self._on_publish)
        self.command_topic = config.commands.format(client_id=config.client_id)
        self.client = client

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._supervisor.start()

    def alive(self) -> bool:
        """True while the supervisor runs: it keeps the connection, and paho's network thread,
        going. False once it has ended (after `close` or a fatal refusal) or an internal fault
        has doomed it (`failure`)."""
        return self._supervisor.is_alive() and self.failure is None

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def pause(self) -> None:
        """Stop taking messages: later ones stay unacknowledged and the broker keeps them."""
        self.accepting = False

    def close(self, timeout: float = 5.0) -> None:
        """Publish `offline` (retained), flush what is queued, disconnect, stop the threads."""
        self._closing.set()
        deadline = time.monotonic() + timeout
        if self.connected.is_set() and self.failure is None:  # else the broker sends the will
            info = self.client.publish(self.status_topic, self.offline, qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("Could not publish the offline status (%s)", exc)
            self.client.disconnect()
        self._down.set()
        self._supervisor.join(max(0.1, deadline - time.monotonic()))
        self.client.loop_stop()

    # -- publishing ----------------------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool = False,
        properties: Properties | None = None,
    ) -> bool:
        """Queue a message; QoS 1 messages survive a reconnect. False if paho refused it."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        rc = info.rc
        return rc == mqtt.MQTT_ERR_SUCCESS or (rc == mqtt.MQTT_ERR_NO_CONN and qos > 0)

    def publish_tracked(
        self, topic: str, payload: bytes, qos: int, retain: bool = False,
        properties: Properties | None = None,
    ) -> mqtt.MQTTMessageInfo | None:
        """Queue a message and return paho's handle for `delivered`; None if paho refused it."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            return info
        return None

    def delivered(self, info: mqtt.MQTTMessageInfo, timeout: float) -> bool:
        """True once the broker acknowledged the message (QoS 1) or it was written (QoS 0).

        paho's `is_published` raises for a message queued while disconnected (it keeps the
        NO_CONN code) although paho sends it after reconnecting and marks it on the broker's
        acknowledgement, so the mark is read here, under paho's own condition."""
        cond = info._condition
        with cond:
            if not info._published and timeout > 0:
                cond.wait(timeout)
            return bool(info._published)

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)

    # -- paho callbacks (network thread: keep short) -------------------------------------------

    def _guarded(self, callback: Callable[..., None]) -> Callable[..., None]:
        """`callback` for paho, made safe: an exception would end paho's network thread without
        a disconnect callback (a connection that nothing serves or mends), so it is logged and
        ends the supervisor instead, which the daemon sees as a dead MQTT thread."""
        name = callback.__name__

        def run(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as exc:
                log.exception("The MQTT callback %s failed", name)
                self._broken(f"the MQTT callback {name} failed ({type(exc).__name__}: {exc})")

        return run

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connack = True
        if reason.is_failure:
            if reason.value in BAD_CREDENTIALS:
                user = self.config.username or self.url.username
                who = f"of user {user!r}" if user else "(no user name given)"
                self._fail(
                    f"broker {self.url.host}:{self.url.port} refused the credentials {who} "
                    f"({reason})"
                )
                return
            log.warning("Broker %s refused the connection: %s", self.url, reason)
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._attempt = 0
        self._early_closes = 0
        if self._ever_connected:
            self.metrics.reconnects += 1
        self._ever_connected = True
        self.connects += 1
        session = bool(getattr(flags, "session_present", False))
        log.info(
            "Connected to %s as %s (MQTT %s, session %s)",
            self.url, self.config.client_id, self.config.mqtt_version,
            "resumed" if session else "new",
        )
        subs = [(p, self.config.qos) for p in self.config.subscribe]
        subs.append((self.command_topic, 1))
        result, _ = client.subscribe(subs)
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.warning("Subscribing failed: %s", mqtt.error_string(result))
        client.publish(self.status_topic, self.online(), qos=1, retain=True)
        self.metrics.connected = 1
        self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.connected.clear()
        self.metrics.connected = 0
        if not self._closing.is_set():
            log.warning("Disconnected from %s: %s", self.url, reason)
        self._down.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not self.accepting:
            return  # not acknowledged: the broker delivers it again to the next session
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # a broker should never send this; drop it, don't die
            log.warning("Dropped a message whose topic is not UTF-8")
            self.metrics.drop("bad_topic")
            self.ack(msg.mid, msg.qos)
            return
        self.handler(topic, bytes(msg.payload), msg.mid, msg.qos)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        """A QoS 1 publish the broker refused (MQTT 5 PUBACK reason, e.g. an ACL denial): count
        it and log at most once a minute; the daemon carries on. MQTT 3.1.1 brokers drop denied
        publishes silently, so only MQTT 5 can report them."""
        if not getattr(reason, "is_failure", False):
            return
        self.metrics.drop("publish_denied")
        now = time.monotonic()
        if now - self._denied_logged >= 60.0:
            self._denied_logged = now
            log.warning(
                "Broker %s refused a publication (%s): check its ACL for this daemon's user "
                "(further refusals are counted in drops{reason=\"publish_denied\"} and logged "
                "at most once a minute)", self.url, reason,
            )

    # -- supervisor ----------------------------------------------------------------------------

    def _connect_once(self) -> None:
        kwargs: dict[str, Any] = {"keepalive": self.config.keepalive}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.config.session_expiry
            props.ReceiveMaximum = 1000
            kwargs["clean_start"] = False
            kwargs["properties"] = props
        self.client.connect(self.url.host, self.url.port, **kwargs)
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _fail(self, why: str) -> None:
        """End for good: retrying cannot mend this."""
        if self.fatal is None:
            self.fatal = why
            log.error("%s", why)
        if self.on_fatal is not None:  # first: the daemon is stopping before this thread ends
            self.on_fatal(why)
        self._closing.set()
        self._down.set()

    def _broken(self, why: str) -> None:
        """End the supervisor after an internal fault (the daemon exits and is restarted)."""
        if self.failure is None:
            self.failure = why
        self._closing.set()
        self._down.set()

    def _supervise(self) -> None:
        """The supervisor thread: connect and reconnect until `close`. An unexpected exception
        ends it, logged, with `failure` set: nothing would reconnect any more."""
        try:
            self._reconnect_loop()
        except Exception as exc:
            log.exception("The MQTT supervisor failed; nothing reconnects any more")
            self._broken(f"the MQTT supervisor failed ({type(exc).__name__}: {exc})")

    def _reconnect_loop(self) -> None:
        where = f"{self.url.host}:{self.url.port}"
        while not self._closing.is_set():
            self._down.clear()
            self._connack = False
            try:
                self._connect_once()
            except ssl.SSLCertVerificationError as exc:
                self._fail(f"TLS handshake with broker {where} failed: its certificate could not "
                           f"be verified ({exc.verify_message}); check that ca_file is the CA "
                           "that signed it")
                break
            except (
                ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError, ConnectionResetError
            ) as exc:
                self._closed_early(where, f"{self.url} closed the connection at once ({exc})")
                continue
            except ssl.SSLError as exc:
                self._fail(f"TLS handshake with broker {where} failed ({exc.reason or exc})")
                break
            except (OSError, ValueError) as exc:
                self._wait_before_retry(f"cannot reach {self.url} ({exc})")
                continue
            self.client.loop_start()
            while not self._down.wait(1.0):
                pass
            self.client.loop_stop()
            if self._closing.is_set():
                break
            if not self._connack:
                self._closed_early(where, "connection closed before the broker answered")
            else:
                self._wait_before_retry("connection lost")

    def _closed_early(self, where: str, why: str) -> None:
        """Closed before CONNACK. Repeated on a daemon that never connected, it is a protocol
        mismatch (mqtt:// against a TLS listener or mqtts:// against a plain one), not a fault."""
        self._early_closes += 1
        if not self._ever_connected and self._early_closes >= EARLY_CLOSES:
            other = "mqtt://" if self.url.tls else "mqtts://"
            self._fail(
                f"broker {where} closed the connection {self._early_closes} times before "
                f"answering; if that port is a {'plain TCP' if self.url.tls else 'TLS'} "
                f"listener, use {other}"
            )
            return
        self._wait_before_retry(why)

    def _wait_before_retry(self, why: str) -> None:
        delay = backoff(self._attempt, self.config.reconnect_min, self.config.reconnect_max)
        self._attempt += 1
        log.warning("MQTT %s. Reconnecting in %.2f seconds", why, delay)
        self._closing.wait(delay)
