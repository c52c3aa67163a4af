"""`fleetc bench`: the cross-device methods measured on published multi-device tables.

The methods live in `toolchain.bench` (proxy, fewshot, amortize); this module parses options,
calls them and prints. See docs/bench.md."""
from __future__ import annotations

import json
import logging

import click

from toolchain.bench.amortize import AmortizeOptions, run_amortize
from toolchain.bench.fewshot import METHODS, FewshotOptions, run_fewshot, target_columns
from toolchain.bench.scores import write_json
from toolchain.bench.table import Table, load_table, parse_names
from toolchain.errors import BadInputError

__all__ = ["bench", "data_option", "load_data", "parse_budgets", "emit", "progress"]

logger = logging.getLogger(__name__)

data_option = click.option(
    "--data", "data", multiple=True, required=True, type=click.Path(dir_okay=False),
    help="CSV table (.csv or .csv.gz); repeat to outer-join files on their *_idx column.")


selection_option = click.option(
    "--selection", type=click.Choice(["fixed", "random"]), default="fixed", show_default=True,
    help="Which K rows to measure: the method's fixed rule, or random (seed i draws them).")


def load_data(paths: tuple[str, ...]) -> Table:
    return load_table(list(paths))


def parse_budgets(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in parse_names(text))
    except ValueError:
        raise BadInputError(
            f"--budgets: expected quantiles like 0.1,0.25,0.5, got {text!r}") from None
    if not values or any(not 0 < q < 1 for q in values):
        raise BadInputError(f"--budgets: quantiles must be strictly between 0 and 1: {text!r}")
    return values


def progress(text: str) -> None:
    click.echo(text, err=True)


def emit(result: dict, json_out: str | None) -> None:
    """Write the JSON (if asked) and print the scalar results on stdout."""
    if json_out:
        write_json(json_out, result)
    scalars = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) or v is None}
    click.echo(json.dumps(scalars, indent=None))


@click.group()
def bench() -> None:
    """Evidence on published multi-device tables (protocol: docs/bench.md)."""


@bench.command("proxy")
@data_option
@click.option("--proxy", required=True, help="Proxy device column (lat_*), read in full.")
@click.option("--targets", default=None,
              help="Target columns, comma-separated (default: every other lat_* column).")
@click.option("--samples", "-k", type=int, required=True, help="K target cells for adaptation.")
@click.option("--verify", "-v", type=int, default=0, show_default=True,
              help="V more target cells to verify candidates before choosing (per target).")
@click.option("--objective", default=None, help="Objective column (acc*) for budget choices.")
@click.option("--budgets", default="0.1,0.25,0.5", show_default=True,
              help="Budget quantiles of each target's latencies.")
@click.option("--seeds", type=int, default=5, show_default=True, help="Seeds 0..N-1.")
@click.option("--method", type=click.Choice(["transfer", "reference"]), default="transfer",
              show_default=True, help="transfer: this toolchain's; reference: AdaProxy baseline.")
@selection_option
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Write the full results here.")
def proxy_cmd(data, proxy, targets, samples, verify, objective, budgets, seeds, method,
              selection, json_out) -> None:
    """Reuse the PROXY device's predictor on each target after K (+V) measurements."""
    from toolchain.bench.proxy import ProxyOptions, run_proxy

    table = load_data(data)
    table.check([proxy], role="latency")
    names = parse_names(targets) or [c for c in table.latency if c != proxy]
    opts = ProxyOptions(proxy=proxy, targets=tuple(names), samples=samples, verify=verify,
                        objective=objective, budgets=parse_budgets(budgets), seeds=seeds,
                        method=method, selection=selection)
    emit(run_proxy(table, opts, progress=progress), json_out)


@bench.command("fewshot")
@data_option
@click.option("--train", required=True, help="Training device columns (lat_*), read in full.")
@click.option("--test", default=None,
              help="Test columns, comma-separated (default: every other lat_* column).")
@click.option("--samples", "-k", type=int, default=10, show_default=True,
              help="K target cells (the fingerprint counts within K).")
@click.option("--seeds", type=int, default=5, show_default=True, help="Seeds 0..N-1.")
@click.option("--method", type=click.Choice(METHODS), default="conditioned", show_default=True,
              help="conditioned: this toolchain's predictor; reference: the issue's baseline.")
@selection_option
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Write the full results here.")
def fewshot_cmd(data, train, test, samples, seeds, method, selection, json_out) -> None:
    """Device-conditioned latency prediction on test devices measured only K times."""
    table = load_data(data)
    names = tuple(parse_names(train))
    opts = FewshotOptions(train=names, targets=target_columns(table, names, test),
                          samples=samples, seeds=seeds, method=method, selection=selection)
    emit(run_fewshot(table, opts, progress=progress), json_out)


@bench.command("amortize")
@data_option
@click.option("--train", required=True, help="Training device columns (lat_*), read in full.")
@click.option("--test", default=None,
              help="Test columns, comma-separated (default: every other lat_* column).")
@click.option("--objective", required=True, help="Objective column (acc*), higher is better.")
@click.option("--budgets", default="0.1,0.25,0.5", show_default=True,
              help="Budget quantiles of each target's latencies.")
@click.option("--samples", "-k", type=int, default=10, show_default=True,
              help="K target cells (the fingerprint counts within K).")
@click.option("--verify", "-v", type=int, default=0, show_default=True,
              help="V more target cells per target to verify candidates before choosing.")
@click.option("--seeds", type=int, default=5, show_default=True, help="Seeds 0..N-1.")
@selection_option
@click.option("--confidence", type=float, default=0.9, show_default=True,
              help="Direct choice: P(latency <= budget) at least this under the predictor.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Write the full results here.")
def amortize_cmd(data, train, test, objective, budgets, samples, verify, seeds, selection,
                 confidence, json_out) -> None:
    """Amortized optimizer (one network pass per device) on test devices measured K (+V) times."""
    table = load_data(data)
    names = tuple(parse_names(train))
    opts = AmortizeOptions(train=names, targets=target_columns(table, names, test),
                           objective=objective, budgets=parse_budgets(budgets), samples=samples,
                           verify=verify, seeds=seeds, selection=selection,
                           confidence=confidence)
    emit(run_amortize(table, opts, progress=progress), json_out)
