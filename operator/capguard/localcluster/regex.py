"""A schema's `pattern`, read and matched as a real API server does: by RE2.

Go's `regexp` (what apiextensions compiles a CRD's patterns with) has RE2's syntax and
meaning, and Python's `re` differs from both where it matters to admission: `$` also
matches before a final newline (so `"h100-a\\n"` passed `^[a-z0-9-]+$`), `\\d` and `\\w`
match any Unicode digit and letter, and look-arounds and back-references compile.
`google-re2` (which cel-python already needs for CEL's `matches()`) is RE2 itself.
"""

from __future__ import annotations

from typing import Any, Final

import re2

_OPTIONS: Final = re2.Options()
_OPTIONS.log_errors = False  # an invalid pattern is an answer to the client, not a log line
_REMEMBERED: Final = 4096  # answers kept a pattern: the values patterns guard repeat


class Invalid(ValueError):
    """The pattern is not one Go's regexp.Compile takes; the message says why, as Go does."""


class Pattern:
    """One compiled pattern; `search` is Go's `regexp.MatchString` (unanchored)."""

    def __init__(self, source: str) -> None:
        try:
            self._compiled: Any = re2.compile(source, options=_OPTIONS)
        except re2.error as error:
            raise Invalid(_reason(error)) from None
        self.source = source
        self._answers: dict[str, bool] = {}

    def search(self, value: str) -> bool:
        found = self._answers.get(value)
        if found is None:
            found = self._compiled.search(value) is not None
            if len(self._answers) < _REMEMBERED:
                self._answers[value] = found
        return found


def _reason(error: Exception) -> str:
    detail = error.args[0] if error.args else ""
    if isinstance(detail, bytes):
        detail = detail.decode(errors="replace")
    return f"error parsing regexp: {detail}"
