"""The one error type the exporter raises for expected failures."""

from __future__ import annotations


class ExportError(Exception):
    """Bad input the user can fix (source, layer, option); the message is one sentence.

    `status` is the exit status the command line uses: 2 for bad input, 1 for a failed proof.
    """

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status
