"""The one error type the edge package raises for expected failures."""

from __future__ import annotations


class EdgeError(Exception):
    """A bad model, config, payload or argument: the message says what to fix."""
