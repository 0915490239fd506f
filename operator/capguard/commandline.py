"""How every `capguard` subcommand reports a user's mistake: one line, exit code 2.

Subcommands defined outside cli.py (the serving parts) use the same class, so the
rule has one source; so do the flags they share (`--context`, durations). It stays light: every
command imports it, `capguard --help` too.
"""

from __future__ import annotations

import pathlib
from typing import Any, Final

import click

from capguard import durations


class OneLineUsage(click.UsageError):
    """A usage error shown as one line: what was wrong and what to type instead (exit 2)."""

    def show(self, file: object = None) -> None:
        name = f"capguard {self.ctx.info_name}" if self.ctx is not None else "capguard"
        click.echo(f"{name}: {self.format_message()}", err=True)


class OneLineCommand(click.Command):
    """Every subcommand reports a user's mistake the same way: one line, exit code 2."""

    def make_context(self, *args: object, **kwargs: object) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)  # type: ignore[arg-type]
        except click.UsageError as error:
            raise OneLineUsage(error.format_message(), error.ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:  # a check inside the command (BadParameter)
            raise OneLineUsage(error.format_message(), ctx) from None


def duration(ctx: click.Context | None, param: click.Parameter | None,
             value: str | None) -> float | None:
    """A click callback: seconds, written as 5s, 200ms, 1m30s or a plain number; an
    option without a default stays None."""
    if value is None:
        return None
    try:
        return durations.parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None


def lease_duration(ctx: click.Context | None, param: click.Parameter | None,
                   value: str | None) -> float | None:
    """`duration`, at least a second: a Lease says it in whole seconds, and a real API
    server refuses a leaseDurationSeconds of 0."""
    seconds = duration(ctx, param, value)
    if seconds is not None and seconds < 1:
        raise click.BadParameter(f"{value} is shorter than a Lease can say (whole seconds, "
                                 "at least 1): use 1s or more", ctx=ctx, param=param)
    return seconds


# --context, for every command that logs in; with_context() applies it.
context_option: Final = click.option(
    "--context", default=None, help="The kubeconfig context to use, as kubectl's.")


def with_context(kubeconfig: str | None, context: str) -> str:
    """A copy of the kubeconfig whose current-context is `context`, for `--context` (Kopf
    logs in with the current one); a context it does not have is the user's mistake, said in
    one line. The copy is deleted when the process ends."""
    import atexit
    import os
    import tempfile

    import yaml

    path = pathlib.Path(kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
                        or pathlib.Path.home() / ".kube" / "config")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise click.BadParameter(f"cannot read {path}: {error.strerror}",
                                 param_hint="'--context'") from None
    names = [c.get("name") for c in config.get("contexts") or [] if isinstance(c, dict)]
    if context not in names:
        raise click.BadParameter(f"{context!r} is not a context of {path}; it has "
                                 f"{', '.join(map(str, names)) or 'none'}",
                                 param_hint="'--context'")
    config["current-context"] = context
    try:  # next to the original, so paths in it relative to its folder still resolve
        handle, copy = tempfile.mkstemp(prefix=".capguard-", suffix=".yaml", dir=path.parent)
    except OSError:
        handle, copy = tempfile.mkstemp(prefix="capguard-kubeconfig-", suffix=".yaml")
    atexit.register(os.unlink, copy)  # it holds credentials: gone when the command ends
    with os.fdopen(handle, "w") as written:
        yaml.safe_dump(config, written)
    return copy
