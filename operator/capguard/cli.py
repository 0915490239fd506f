"""The `capguard` command: the only place that wires the parts together.

Subcommands import their wing lazily so `capguard simulate` never pays for Kopf or
aiohttp, and `capguard localcluster` never imports the operator.
"""

from __future__ import annotations

import sys

import click

import capguard


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(capguard.__version__, prog_name="capguard")
def main() -> None:
    """capguard keeps a paused capacity backlog from flushing into an outage."""


@main.command(
    "localcluster",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def localcluster(ctx: click.Context) -> None:
    """Serve the embedded Kubernetes API server in the foreground (see --help)."""
    from capguard import localcluster as embedded

    sys.exit(embedded.main(list(ctx.args)))


if __name__ == "__main__":
    main()
