"""The `capguard` command: the only place that wires the parts together.

Subcommands import their wing lazily so `capguard simulate` never pays for Kopf or
aiohttp, and `capguard localcluster` never imports the operator. The base install is
the image's (the operator, the engine agent, the gateway); a subcommand that needs one
of pyproject.toml's extras checks for it first and, when it is missing, names it in one
line (`_needs`) instead of failing with an ImportError.
"""

from __future__ import annotations

import datetime
import json
import logging
import pathlib
import re
import socket
import sys
from importlib import metadata
from typing import Any

import click

import capguard
from capguard import commandline, defaults
from capguard.commandline import OneLineCommand, OneLineUsage


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
    _needs("localcluster")
    from capguard import localcluster as embedded

    sys.exit(embedded.main(list(ctx.args)))


@main.command("simulate", cls=OneLineCommand)
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
    _needs("console", *(["plot"] if plot else []))
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
        raise OneLineUsage(f"folder {str(target.parent)!r} for --plot does not exist; create it")
    if target is not None and target.suffix.lower() != ".png":
        raise OneLineUsage(f"--plot {str(target)!r} draws a PNG file; end it in .png")
    try:
        chosen = sim.scenario_named(scenario, load_seconds=load_seconds)
        timelines = sim.replay(chosen, modes=sim.modes_named(mode), seed=seed)
    except sim.InputError as error:
        raise OneLineUsage(str(error)) from None
    if target is not None:
        try:
            sim_plot.draw(timelines, path=target)
        except OSError as error:
            raise OneLineUsage(f"cannot write --plot {str(target)!r}: {error.strerror}") from None
    summaries = {t.mode: t.summary() for t in timelines}
    if as_json:
        click.echo(report.as_json(summaries))
    else:
        rich.console.Console().print(report.as_table(summaries))


@main.command("run", cls=OneLineCommand)
@click.option("--namespace", "namespaces", multiple=True, metavar="NS",
              help="Watch this namespace (repeatable). Default: all namespaces.")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Kubeconfig file. Default: KUBECONFIG, ~/.kube/config, or in-cluster.")
@click.option("--metrics-port", type=int, default=defaults.METRICS_PORT, show_default=True,
              help="Port of the Prometheus /metrics endpoint (every replica serves it).")
@click.option("--metrics-host", default=defaults.METRICS_HOST, show_default=True)
@click.option("--driver", "engine_driver", type=click.Choice(defaults.DRIVERS),
              default=defaults.DRIVER, show_default=True,
              help="Who moves engines through their phases: agent (`capguard engine` next "
              "to each engine, docs/engines.md), or simulated (the operator fakes them: "
              "demos and tests only).")
@click.option("--heartbeat-timeout", default=defaults.seconds(defaults.HEARTBEAT_TIMEOUT),
              show_default=True, callback=commandline.duration,
              help="Agent driver: an engine whose agent is silent this long is out of "
              "service (0: believe any status, for agents that send no heartbeat).")
@click.option("--load-time", default=defaults.seconds(defaults.LOAD_TIME), show_default=True,
              callback=commandline.duration,
              help="Simulated driver: time to load a model.")
@click.option("--drain-time", default=None, callback=commandline.duration,
              help="Simulated driver: time to drain. Default: a quarter of --load-time.")
@click.option("--failure-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Simulated driver: share of loads that fail.")
@click.option("--seed", type=int, default=None, help="Simulated driver: random seed.")
@click.option("--leader-election/--no-leader-election", default=True, show_default=True,
              help="Act only while holding the capguard-leader Lease.")
@click.option("--lease-namespace", default=None,
              help="Namespace of the Lease. Default: POD_NAMESPACE, the pod's, or the first "
                   "--namespace, else default.")
@click.option("--lease-duration", default=defaults.seconds(defaults.LEASE_DURATION),
              show_default=True, callback=commandline.lease_duration)
@click.option("--lease-renew", default=defaults.seconds(defaults.LEASE_RENEW), show_default=True,
              callback=commandline.duration)
@click.option("--identity", default=None, help="This replica's name in the Lease and to "
              "Kopf. Default: POD_NAME, else hostname-pid.")
@click.option("--naive", is_flag=True,
              help="Be the incident's capacity manager: the guard off (only an Open breaker "
              "holds), plans built on a cached view while Open, writes without a "
              "resourceVersion precondition.")
@click.option("--reconcile-interval", default=defaults.seconds(defaults.RECONCILE_INTERVAL),
              show_default=True, callback=commandline.duration,
              help="Longest time between reconcile passes (changes trigger one sooner).")
@click.option("--max-write-delay", default=defaults.seconds(defaults.MAX_WRITE_DELAY),
              show_default=True, callback=commandline.duration,
              help="An action decided longer ago than this is not written; it is re-planned.")
@click.option("--liveness", default=None, metavar="URL",
              help="Kopf's liveness endpoint, e.g. http://0.0.0.0:8081/healthz.")
@click.option("--connection-limit", type=int, default=defaults.CONNECTION_LIMIT,
              show_default=True,
              help="Most HTTP connections to the API server at once for reads and "
              "writes; each watch (3 or 4 kinds a namespace) has one more of its own.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON object per line (time, level, logger, "
              "message), for log collectors.")
def run(**flags: Any) -> None:
    """Run the operator against any cluster (a kubeconfig or in-cluster)."""
    from capguard import operator

    verbose = flags.pop("verbose")
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonLines() if flags.pop("log_format") == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    if not verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    flags["namespaces"] = tuple(flags["namespaces"])
    _port_free(flags["metrics_host"], flags["metrics_port"])
    if flags["identity"] is None:
        flags["identity"] = operator.default_identity()
    operator.run(operator.Options(**flags))


class _JsonLines(logging.Formatter):
    """One JSON object per log record: what log collectors parse without a regex."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
                .isoformat(timespec="milliseconds"), "level": record.levelname,
                "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def _port_free(host: str, port: int) -> None:
    """A busy metrics port is the user's to fix: say so in one line, not a traceback."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((host, port))
        except OSError as error:
            raise click.BadParameter(
                f"{host}:{port} is not free ({error.strerror}): stop what listens there or "
                f"choose another port", param_hint="'--metrics-port'") from None


@main.command("demo", cls=OneLineCommand)
@click.option("--mode", type=click.Choice(["both", "guarded", "naive"]), default="both",
              show_default=True, help="both: the incident with the guard on, then with it "
              "off (the incident's capacity manager), each on a fresh fleet.")
@click.option("--naive", is_flag=True, help="Only the naive run: --mode naive.")
@click.option("--engines", type=click.Choice(["real", "simulated"]), default="real",
              show_default=True, help="real: an agent and a model server per engine, a "
              "gateway and request traffic, measured in requests; simulated: the operator "
              "plays the engines (faster, no requests).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the measures as one JSON object, the last line of output.")
@click.option("--plot", type=click.Path(dir_okay=False), default="out/demo-timeline.png",
              show_default=True, help="Draw the timeline to this PNG ('' for none).")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Play on this cluster (kind, say) instead of the embedded API server.")
@click.option("--namespace", default="capguard-demo", show_default=True,
              help="The demo's own namespace (created, and on an existing cluster removed).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="The simulator's seed: the moments of the routine refreshes.")
@click.option("--speed", type=click.FloatRange(10, 600), default=60.0, show_default=True,
              help="Virtual seconds per real second (60: a minute of the incident a second).")
@click.option("--keep", is_flag=True,
              help="Keep the cluster and the operator running at the end (Ctrl-C stops them).")
@click.option("--crds", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of the CRDs. Default: the ones capguard carries (capguard crds).")
def demo(
    *, mode: str, naive: bool, engines: str, as_json: bool, plot: str, kubeconfig: str | None,
    namespace: str, seed: int, speed: float, keep: bool, crds: str | None,
) -> None:
    """Play the march-4 incident live: embedded cluster, real operator, measured."""
    _needs("demo")
    import pathlib

    from capguard import demo as demo_

    if plot:
        # Checked before a minute of demo, not when the timeline is drawn at its end.
        if pathlib.Path(plot).suffix.lower() != ".png":
            raise click.BadParameter(f"{plot!r} draws a PNG file; end it in .png",
                                     param_hint="--plot")
        try:
            pathlib.Path(plot).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise click.BadParameter(f"cannot create the folder of {plot!r}: {error.strerror}",
                                     param_hint="--plot") from None
    modes = ("naive",) if naive else ("guarded", "naive") if mode == "both" else (mode,)
    options = demo_.Options(
        naive=modes[0] == "naive", seed=seed, speed=speed, namespace=namespace, keep=keep,
        engines=engines,
        kubeconfig=pathlib.Path(kubeconfig) if kubeconfig else None,
        crds=pathlib.Path(crds) if crds else _packaged_crds(),
        plot=pathlib.Path(plot) if plot else None,
    )
    sys.exit(demo_.main(options, as_json=as_json, modes=modes))


def _packaged_crds() -> pathlib.Path:
    from capguard import manifests

    try:
        return manifests.crds_dir()
    except manifests.ManifestsMissing as error:
        raise click.ClickException(str(error)) from None


@main.command("crds", cls=OneLineCommand)
def crds() -> None:
    """Print capguard's CRDs as one YAML stream: capguard crds | kubectl apply -f -"""
    from capguard import manifests

    try:
        click.echo(manifests.crds_stream(), nl=False)
    except manifests.ManifestsMissing as error:
        raise click.ClickException(str(error)) from None


@main.command("status", cls=OneLineCommand)
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Kubeconfig file. Default: KUBECONFIG, ~/.kube/config, or in-cluster.")
@click.option("-n", "--namespace", default=None,
              help="Namespace. Default: the kubeconfig context's, else default.")
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@commandline.context_option
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
              show_default=True, help="Tables for people, or one JSON or YAML document.")
def status(*, kubeconfig: str | None, namespace: str | None, all_namespaces: bool,
           context: str | None, output: str) -> None:
    """Show the fleet, its models and breakers as tables, from any cluster."""
    if output == "table":
        _needs("console")  # -o json and -o yaml print without it (in the image, say)
    import asyncio
    import os

    from capguard import status as status_

    if context is not None:
        kubeconfig = commandline.with_context(kubeconfig, context)
    if kubeconfig:
        # Kopf's kubeconfig login reads only KUBECONFIG; this process does nothing else.
        os.environ["KUBECONFIG"] = kubeconfig
    console = None
    if output == "table":
        import rich.console

        console = rich.console.Console()
        if not console.is_terminal:
            console = rich.console.Console(width=160)  # a pipe gets whole rows, not 80
    sys.exit(asyncio.run(status_.show(namespace=namespace, all_namespaces=all_namespaces,
                                      console=console, output=output)))


def _needs(*extras: str) -> None:
    """A subcommand whose extras are not all installed names them in one line (exit 2)."""
    missing = [extra for extra in extras if not _installed(extra)]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise OneLineUsage(f"needs the {' and '.join(missing)} extra{plural}: "
                           f"pip install 'capguard[{','.join(missing)}]'",
                           click.get_current_context(silent=True))


def _installed(extra: str) -> bool:
    """Whether every distribution that capguard's metadata lists for `extra` is installed.

    pyproject.toml stays the one list of what each extra holds. capguard run from a
    source tree without metadata has nothing to check against: the import decides.
    """
    try:
        requirements = metadata.requires("capguard") or []
    except metadata.PackageNotFoundError:
        return True
    for requirement in requirements:
        named, _, marker = requirement.partition(";")
        if not re.search(rf"""extra\s*==\s*["']{re.escape(extra)}["']""", marker):
            continue
        found = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?", named)
        assert found is not None, requirement  # a name starts every requirement
        if found[1] == "capguard":  # an extra made of others: capguard[console,plot]
            if not all(_installed(inner.strip()) for inner in (found[2] or "").split(",")):
                return False
            continue
        try:
            metadata.distribution(found[1])
        except metadata.PackageNotFoundError:
            return False
    return True


def _serving_commands() -> None:
    """The engines' side (issue 12, docs/engines.md): their modules define their commands
    and import their wings lazily, like the ones above."""
    from capguard.serving import agent, gateway, loadgen, modelserver

    for command in (agent.command, modelserver.command, gateway.command, loadgen.command):
        main.add_command(command)


_serving_commands()

if __name__ == "__main__":
    main()
