"""The one error type the trainer raises for expected failures (bad data, bad options)."""

from __future__ import annotations


class TrainError(Exception):
    """Bad input the user can fix; the message is one sentence that says what and where."""
