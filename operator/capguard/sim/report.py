"""How a run is shown: one JSON object for tools, a rich table for people."""

from __future__ import annotations

import json
from collections.abc import Mapping

from rich import table as rich_table

# The rows of the table, in the order a reader asks: did capacity hold, how much
# moved, was it safe, how long until it settled.
ROWS: tuple[tuple[str, str], ...] = (
    ("min_serving_ratio", "lowest serving / desired"),
    ("floor_ratio", "floor"),
    ("minutes_below_floor", "minutes below floor"),
    ("unserved_demand_share", "unserved demand (error proxy)"),
    ("max_engines_out_of_service", "most engines out at once"),
    ("disruption_budget", "disruption budget"),
    ("floor_breaking_actions", "floor-breaking actions"),
    ("stale_actions_executed", "stale actions executed"),
    ("actions_executed", "actions executed"),
    ("actions_refused", "actions refused"),
    ("actions_expired", "actions expired"),
    ("refused_batches", "refused post-pause batches"),
    ("backlog_at_release", "backlog at release"),
    ("converge_seconds", "seconds to converge"),
    ("converge_lower_bound_seconds", "fastest the rate limits allow"),
    # Scarcity scenarios only (`Scenario.floor_measures`): a row no summary has is left out.
    ("floors_restored_ratio", "covered floors restored in time"),
    ("floor_cases", "covered floors below (cases)"),
    ("uncovered_floor_model_minutes", "uncovered floor model-minutes"),
    ("floor_shortfall_misreported_samples", "shortfall misreported (samples)"),
    ("surplus_before_floor_actions", "surplus moves while floors wait"),
)


def as_json(summaries: Mapping[str, Mapping[str, object]]) -> str:
    """One mode: its summary; several: ``{"naive": {...}, "guarded": {...}}``."""
    if len(summaries) == 1:
        (only,) = summaries.values()
        return json.dumps(only, indent=2)
    return json.dumps(dict(summaries), indent=2)


def as_table(summaries: Mapping[str, Mapping[str, object]]) -> rich_table.Table:
    """The modes side by side, one row per measure."""
    first = next(iter(summaries.values()))
    title = f"capguard simulate: {first['scenario']} (seed {first['seed']})"
    table = rich_table.Table(title=title)
    table.add_column("measure")
    for mode in summaries:
        table.add_column(mode, justify="right")
    for key, label in ROWS:
        if any(key in s for s in summaries.values()):
            table.add_row(label, *(_cell(s.get(key)) for s in summaries.values()))
    return table


def _cell(value: object) -> str:
    if value is None:
        return "never"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)
