"""The safety core: pure, clock-injected, no I/O. See docs/api-contract.md.

Import the modules, not their names: ``from capguard.core import gate`` then
``gate.Gate``, so a reader always sees where a name lives.
"""

from capguard.core import breaker, clock, drift, fleet, gate, planner, queue, specs

__all__ = ["breaker", "clock", "drift", "fleet", "gate", "planner", "queue", "specs"]
