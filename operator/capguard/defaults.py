"""The defaults of `capguard run`, each defined once.

The command's flags, `operator.Options` and the configs of the parts (`reconcile.Config`,
`leases.LeaseConfig`, the API client, the simulated driver's timing) all read them
here. A light module on purpose: the CLI imports it for `--help` without paying for
Kopf or aiohttp.
"""

from __future__ import annotations

from typing import Final

from capguard.core import engines

# Who moves engines through their phases: an engine agent next to each engine
# (`capguard engine`, docs/engines.md), or the operator's own simulated driver (the
# simulator's engines, for demos and fast tests).
DRIVERS: Final = ("agent", "simulated")
DRIVER: Final = DRIVERS[0]
# With agents: an engine whose agent is silent this long counts as out of service.
HEARTBEAT_TIMEOUT: Final = engines.HEARTBEAT_TIMEOUT
LOAD_TIME: Final = engines.LOAD_SECONDS  # the simulated driver's; drain: a quarter of it

METRICS_HOST: Final = "0.0.0.0"
METRICS_PORT: Final = 8080

LEASE_NAME: Final = "capguard-leader"
LEASE_DURATION: Final = 15.0  # how long a silent holder keeps the lease
LEASE_RENEW: Final = 5.0  # how often the holder renews (and candidates retry)

RECONCILE_INTERVAL: Final = 1.0  # longest time between full passes
CONNECTION_LIMIT: Final = 32  # HTTP connections to the API server at once
# An action triaged longer ago than this is not written: it goes back to planning.
MAX_WRITE_DELAY: Final = 5.0


def seconds(value: float) -> str:
    """A default duration as the flags spell it (`120s`)."""
    return f"{value:g}s"
