"""Collecting configuration problems as (dotted key, detail) pairs, with the usual rules and the
small text helpers the messages share."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def show(value: Any) -> str:
    """A value as a message shows it: its repr, cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def suggest(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Problems:
    """Collects (key, detail) pairs; small helpers for the usual rules."""

    show = staticmethod(show)

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def require(self, ok: bool, key: str, detail: str) -> None:
        if not ok:
            self.found.append((key, detail))

    def one_of(self, key: str, value: Any, allowed: Iterable[Any]) -> None:
        allowed = tuple(allowed)
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        self.require(value in allowed, key, f"must be one of {shown}, got {show(value)}")

    def at_least(self, key: str, value: float, minimum: float) -> None:
        self.require(value >= minimum, key, f"must be >= {minimum}, got {show(value)}")

    def not_above(self, key: str, value: float, bound_key: str, bound: float) -> None:
        """A schedule's end may not exceed its start."""
        self.require(value <= bound, key, f"must be <= {bound_key} ({bound}), got {value}")

    def positive(self, key: str, value: float) -> None:
        self.require(value > 0, key, f"must be > 0, got {show(value)}")

    def unit(self, key: str, value: float) -> None:
        self.require(0.0 <= value <= 1.0, key, f"must be in [0, 1], got {show(value)}")

    def port(self, key: str, value: int) -> None:
        self.require(0 <= value <= 65535, key, f"must be a port number in [0, 65535], got {show(value)}")

    def not_empty(self, key: str, value: str) -> None:
        self.require(bool(value.strip()), key, "must not be empty")
