"""How each measure of `capguard run` grows with the fleet: `bench_operator.py` at each size.

Runs `bench_operator.py --json` (a subprocess per size, its own output passed through) at
each of `--sizes` and prints one table: each measure per size, the growth exponent
between consecutive sizes (log(v2/v1) / log(n2/n1) with n the engines: ~1 is linear, and
above 1.2 is flagged as superlinear; for times and memory only), and issue 14's goal
where it sets one, checked at the size it names. Arguments it does not know go to
`bench_operator.py` (say `--scrape-interval 5`, `--skip-unhandled`, `--samples 50`).

The planning side of a pass, part by part and without a server, is `bench_pass.py`.

    python bench/bench_scale.py [--sizes 10000:1000,30000:3000,50000:5000] [bench_operator args]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import subprocess
import sys
from typing import Final

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_pass  # a sibling script, not a package: its sizes and growth

OPERATOR_BENCH: Final = pathlib.Path(__file__).resolve().parent / "bench_operator.py"
GROWING_UNITS: Final = ("s", "ms", "MB")  # measures whose growth means something


@dataclasses.dataclass(frozen=True)
class Goal:
    """Issue 14: the measures matching `pattern` stay below `limit` at `engines`."""

    pattern: str
    engines: int
    limit: float

    def applies(self, key: str, engines: int) -> bool:
        return engines == self.engines and re.search(self.pattern, key) is not None


GOALS: Final = (
    Goal(r"^restart: every model status current", 50_000, 10),
    Goal(r"^idle.*: event-to-status p99", 50_000, 50),
    Goal(r"^idle.*: reconcile pass while scaling", 50_000, 500),
    Goal(r"RSS", 50_000, 500),
    Goal(r"^idle.*: event-to-status p99", 30_000, 30),  # also scraped every 5 s
    Goal(r"^unhandled: first assignment written", 10_000, 2),
    Goal(r"^unhandled: every model status current", 10_000, 8),
    Goal(r"^unhandled: every model serving / rate-limit minimum", 10_000, 1.2),
)

Results = dict[str, float | None]  # "measure [unit]" -> value, one size


def run(engines: int, models: int, extra: list[str]) -> Results:
    """bench_operator.py at one size; its rows from the JSON line it ends with."""
    command = [sys.executable, str(OPERATOR_BENCH), "--engines", str(engines),
               "--models", str(models), "--json", *extra]
    print(f"==> {OPERATOR_BENCH.name} {' '.join(command[2:])}", flush=True)
    last = ""
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            last = line
            if not line.startswith("{"):
                print(f"  [{engines:,}] {line}", end="", flush=True)
    if not last.startswith("{"):
        print(f"  [{engines:,}] no JSON rows (exit {child.returncode}): size left out")
        return {}
    results: Results = json.loads(last)
    return results


def unit(key: str) -> str:
    found = re.search(r"\[(.+)\]$", key)
    return found.group(1) if found else ""


def cell(value: float | None, *, key: str, engines: int) -> str:
    if value is None:
        return "n/a"
    shown = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    for goal in GOALS:
        if goal.applies(key, engines):
            shown += " ok" if value < goal.limit else " MISSED"
    return shown


def goals_of(key: str, sizes: list[tuple[int, int]]) -> str:
    return "; ".join(f"< {goal.limit:g} at {goal.engines // 1000}k" for goal in GOALS
                     for engines, _ in sizes if goal.applies(key, engines))


def table(sizes: list[tuple[int, int]], found: list[Results]) -> tuple[list[list[str]], list[str]]:
    """The rows to print (header first), and the superlinear growths."""
    keys = list(dict.fromkeys(k for results in found for k in results))
    pairs = list(zip(sizes, sizes[1:], found, found[1:], strict=False))
    header = ["measure", *(f"{e // 1000}k" if e >= 1000 else str(e) for e, _ in sizes),
              *(f"growth {a[0]:,}->{b[0]:,}" for a, b, _, _ in pairs), "goal (issue 14)"]
    rows, flagged = [header], []
    for key in keys:
        growths = []
        for (n1, _), (n2, _), r1, r2 in pairs:
            v1, v2 = r1.get(key), r2.get(key)
            k = (None if unit(key) not in GROWING_UNITS or v1 is None or v2 is None
                 else bench_pass.growth(v1, v2, n1=n1, n2=n2))
            growths.append(bench_pass.shown_growth(k))
            if k is not None and k > bench_pass.SUPERLINEAR:
                flagged.append(f"{key}: {k:.2f} ({n1:,} -> {n2:,} engines)")
        values = [cell(r.get(key), key=key, engines=e) for (e, _), r in zip(sizes, found,
                                                                            strict=True)]
        rows.append([key, *values, *growths, goals_of(key, sizes)])
    return rows, flagged


def print_rows(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=bench_pass.parse_sizes,
                        default=bench_pass.parse_sizes("10000:1000,30000:3000,50000:5000"),
                        help="engines:models,... (default 10000:1000,30000:3000,50000:5000)")
    args, extra = parser.parse_known_args()
    found = [run(engines, models, extra) for engines, models in args.sizes]
    rows, flagged = table(args.sizes, found)
    print(f"\ncapguard run by size (bench_operator.py {' '.join(extra)}); growth: 1 = linear, "
          f"above {bench_pass.SUPERLINEAR} superlinear")
    print_rows(rows)
    if flagged:
        print("\nsuperlinear:\n  " + "\n  ".join(flagged))
    missed = any(r[i].endswith("MISSED") for r in rows[1:] for i in range(len(r)))
    return 1 if flagged or missed else 0


if __name__ == "__main__":
    sys.exit(main())
