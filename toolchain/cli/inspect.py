"""`fleetc inspect`."""
from __future__ import annotations

import json

import click

from passes.import_onnx import MAX_INPUT_DIM, parse_input_shape
from toolchain.compile.inspection import format_table, inspect
from toolchain.errors import BadInputError

__all__ = ["inspect_command"]


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (schema in README).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
              help="Fix an input's shape (needed for symbolic dims other than batch).")
def inspect_command(model: str, as_json: bool, input_shapes: tuple[str, ...]) -> None:
    """Show what fleetc sees in MODEL: summary, per-kernel costs and legal rewrite options."""
    shapes = dict(parse_input_shape(s) for s in input_shapes)
    for name, dims in shapes.items():
        if max(dims) > MAX_INPUT_DIM:   # ONNX shapes are int64; shape arithmetic overflows
            raise BadInputError(f"--input-shape {name}: a dimension above {MAX_INPUT_DIM} "
                                f"(2^31 - 1): {'x'.join(map(str, dims))}")
    report = inspect(model, shapes)
    click.echo(json.dumps(report, indent=1) if as_json else format_table(report))
