"""Options and defaults have one definition: `capguard.defaults`, read by the flags, by
`operator.Options` and by the parts' own configs."""

from __future__ import annotations

import dataclasses

from capguard import cli, defaults, operator
from capguard.handlers import driver, reconcile
from capguard.kube import client, leases


def test_every_run_flag_defaults_to_what_options_default_to() -> None:
    """`capguard run` with no flags builds exactly `operator.Options()` (identity aside:
    it is this process's own)."""
    params = dict(cli.run.make_context("run", []).params)
    params.pop("verbose")  # logging, set up by the command itself
    params.pop("log_format")
    params["namespaces"] = tuple(params["namespaces"])
    built = operator.Options(**{**params, "identity": "me"})
    assert built == dataclasses.replace(operator.Options(), identity="me")
    assert set(params) == {f.name for f in dataclasses.fields(operator.Options)}


def test_the_parts_configs_take_their_defaults_from_the_same_place() -> None:
    config = reconcile.Config()
    options = operator.Options()
    assert config.interval == options.reconcile_interval == defaults.RECONCILE_INTERVAL
    assert config.engine_driver == options.engine_driver == driver.AGENT == defaults.DRIVER
    assert config.heartbeat_timeout == options.heartbeat_timeout == defaults.HEARTBEAT_TIMEOUT
    timing = driver.DriverConfig().timing
    assert timing.load == options.load_time == defaults.LOAD_TIME
    lease = leases.LeaseConfig(namespace="ns", identity="me")
    assert (lease.duration, lease.renew) == (options.lease_duration, options.lease_renew)
    assert options.connection_limit == client.DEFAULT_CONNECTION_LIMIT
