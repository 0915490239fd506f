"""Go-style durations (90s, 5m, 1h30m, 250ms), as capguard's flags are written.

A leaf that imports only `re`: the model server parses its flags with it and starts in
about 70 ms, which importing `capguard.core` (its package imports every core module,
about 90 ms) would double. `capguard.core.specs.parse_duration` (the CRDs' durations)
is `parse_go`: one format, one source.
"""

from __future__ import annotations

import re
from typing import Final

_DURATION: Final = re.compile(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+\Z")
_DURATION_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_NUMBER: Final = re.compile(r"^[0-9]+(\.[0-9]+)?\Z")
_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse(text: str) -> float:
    """Seconds, from 5s, 200ms, 1m30s, or a plain number of seconds (a flag's value)."""
    if _NUMBER.match(text):
        return float(text)
    return parse_go(text, example="5s, 200ms or 1m30s")


def parse_go(text: str, *, example: str = "90s, 5m or 1h30m") -> float:
    """Seconds, from a Go-style duration only (what the CRDs' fields accept)."""
    if not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration like {example}")
    return sum(float(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
