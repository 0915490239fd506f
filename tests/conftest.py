"""Hypothesis profiles for the whole suite.

``ci`` (the default): every run draws the same examples (``derandomize``), so a run of
the suite fails only for a change, never for a rare example it happened to draw; a
failing example can be run again as it is. ``explore`` draws new examples each run,
as many as each test asks for, for ``make properties``, which prints what it finds:
`pytest --hypothesis-profile=explore`.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile("ci")
