"""The `fleetc` command line. Each command group lives in its own module and is added here."""
from __future__ import annotations

import logging
import os
import sys
import traceback

import click

from toolchain.errors import FleetcError

__all__ = ["main", "cli"]


class _Group(click.Group):
    """Turns FleetcError and bad files into one line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FleetcError as err:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"fleetc: error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("fleetc: interrupted", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as err:  # a bug: one line by default, the traceback with --debug
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"fleetc: internal error: {type(err).__name__}: {err} "
                       "(run with --debug for the traceback and report it)", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and verify the IR after every pass.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.version_option(package_name="fleetc")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int) -> None:
    """fleetc: compile one ONNX model into device-tuned builds for a fleet of edge devices."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if debug:
        os.environ["FLEETC_DEBUG"] = "1"  # passes verify the IR after each one
    level = logging.DEBUG if verbose > 1 or debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    # One import per command module; a module adds its commands to `cli`.
    from toolchain import commands  # noqa: F401


def main() -> None:
    _register()
    cli(prog_name="fleetc")
