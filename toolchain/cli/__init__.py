"""The `fleetc` command line: the root group. Each command group lives in its own module of this
package and is added here explicitly."""
from __future__ import annotations

import logging
import os
import re
import sys
import traceback

import click

from toolchain.errors import FleetcError

__all__ = ["main", "cli"]


MAX_ERROR_CHARS = 200   # of an error message: inputs are echoed, and may be megabytes long
_LONG_PATH = re.compile(r"(?<![\w.])/[^\s'\"]{60,}")   # shown as .../<file> when too long


def _line(text: str) -> str:
    """An error message as one line of at most MAX_ERROR_CHARS characters. A longer one loses
    its middle: it starts with what was wrong (the file) and ends with why."""
    if len(text) > 8 * MAX_ERROR_CHARS:
        text = text[:4 * MAX_ERROR_CHARS] + "\n" + text[-4 * MAX_ERROR_CHARS:]
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if len(text) <= MAX_ERROR_CHARS:
        return text
    text = _LONG_PATH.sub(lambda m: ".../" + m.group(0).rsplit("/", 1)[-1], text)
    if len(text) <= MAX_ERROR_CHARS:
        return text
    head = (MAX_ERROR_CHARS - 3) // 2
    return text[:head] + "..." + text[len(text) - (MAX_ERROR_CHARS - 3 - head):]


class _Group(click.Group):
    """Turns FleetcError and bad files into one line on stderr and the documented exit code;
    the one place where error messages are cut to one line of MAX_ERROR_CHARS."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FleetcError as err:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"fleetc: error: {_line(str(err))}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("fleetc: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as err:   # a usage error echoes the option's value
            err.message = _line(err.message)
            raise
        except (click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as err:  # a bug: one line by default, the traceback with --debug
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"fleetc: internal error: {type(err).__name__}: {_line(str(err))} "
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


def _add_commands() -> None:
    # Every command, added explicitly: command modules never import this one.
    from toolchain.cli.bench import bench
    from toolchain.cli.compile import compile_cmd
    from toolchain.cli.fleet import cache_group, fleet_command
    from toolchain.cli.inspect import inspect_command
    from toolchain.cli.measure import farm, probe_cmd, profile_cmd
    from toolchain.cli.predict import predict_cmd, predictor
    from toolchain.cli.rewrite import rewrite_command
    from toolchain.cli.targets import targets
    from toolchain.cli.tune import tune_command

    for command in (bench, cache_group, compile_cmd, farm, fleet_command, inspect_command,
                    predict_cmd, predictor, probe_cmd, profile_cmd, rewrite_command, targets,
                    tune_command):
        cli.add_command(command)


_add_commands()


def main() -> None:
    cli(prog_name="fleetc")
