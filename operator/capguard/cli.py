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


class _OneLineUsage(click.UsageError):
    """A usage error shown as one line: what was wrong and what to type instead."""

    def show(self, file: object = None) -> None:
        click.echo(f"capguard simulate: {self.format_message()}", err=True)


class _OneLineCommand(click.Command):
    def make_context(self, *args: object, **kwargs: object) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)  # type: ignore[arg-type]
        except click.UsageError as error:
            raise _OneLineUsage(error.format_message(), error.ctx) from None


@main.command("simulate", cls=_OneLineCommand)
@click.option("--scenario", default="march-4", show_default=True, help="Scenario (see --list).")
@click.option(
    "--mode",
    type=click.Choice(["naive", "guarded", "both"]),
    default="both",
    show_default=True,
    help="naive: the queue flushes on release, as in the incident; guarded: all of the core.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="0 to 2**32-1.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True),
    help="Draw the timeline to this PNG file.",
)
@click.option("--load-seconds", type=float, help="Override the engine load time (1 to 3600).")
@click.option("--list", "list_scenarios", is_flag=True, help="List the scenarios and exit.")
def simulate(
    *,
    scenario: str,
    mode: str,
    seed: int,
    as_json: bool,
    plot: str | None,
    load_seconds: float | None,
    list_scenarios: bool,
) -> None:
    """Replay an incident scenario on a virtual clock, naive vs guarded."""
    import pathlib

    import rich.console

    from capguard import sim
    from capguard.sim import plot as sim_plot
    from capguard.sim import report, scenarios

    if list_scenarios:
        for found in scenarios.SCENARIOS.values():
            click.echo(f"{found.name}: {found.summary}")
        return
    target = pathlib.Path(plot) if plot else None
    if target is not None and not target.parent.is_dir():
        raise _OneLineUsage(f"folder {str(target.parent)!r} for --plot does not exist; create it")
    try:
        chosen = sim.scenario_named(scenario, load_seconds=load_seconds)
        timelines = sim.replay(chosen, modes=sim.modes_named(mode), seed=seed)
    except sim.InputError as error:
        raise _OneLineUsage(str(error)) from None
    if target is not None:
        sim_plot.draw(timelines, path=target)
    summaries = {t.mode: t.summary() for t in timelines}
    if as_json:
        click.echo(report.as_json(summaries))
    else:
        rich.console.Console().print(report.as_table(summaries))


if __name__ == "__main__":
    main()
