"""The exception a published row is left out with (:mod:`app.accuracy.rows`, :mod:`app.accuracy.recipes`)."""

from __future__ import annotations


class Skip(Exception):
    """A row the check leaves out; ``reason`` groups the skip list."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
