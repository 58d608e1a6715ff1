"""systemd's notify protocol (`Type=notify`): READY, STATUS and WATCHDOG datagrams.

The protocol is one datagram of `KEY=value` lines to the AF_UNIX socket named by $NOTIFY_SOCKET
(a leading `@` is the abstract namespace), so it needs no library. Without $NOTIFY_SOCKET
(not under systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to systemd; a missing or broken socket is logged once, never fatal."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        # Ping at half the interval systemd waits, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval: float | None = int(usec) / 2e6 if watched else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """Send one message, e.g. send(READY="1", STATUS="connected"); True if it went out."""
        if self.address is None:
            return False
        text = "\n".join(f"{k}={v}" for k, v in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(text.encode(), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("Cannot notify systemd on %s (%s)", os.environ.get("NOTIFY_SOCKET"),
                            exc)
            return False
        return True
