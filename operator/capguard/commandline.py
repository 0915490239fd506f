"""How every `capguard` subcommand reports a user's mistake: one line, exit code 2.

Subcommands defined outside cli.py (the serving parts) use the same class, so the
rule has one source.
"""

from __future__ import annotations

from typing import Any

import click


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
