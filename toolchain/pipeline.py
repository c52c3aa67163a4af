"""Passes and the pipeline that runs them (see STYLE.md, "Passes").

A pass declares the facts it `requires`, `produces` and `invalidates` ("shapes", "kernels",
"costs", ...). The pipeline runs an explicit list in order, refuses to run a pass whose
requirements are not established, drops invalidated facts when a pass changed the graph, times
every pass, and in debug mode validates the IR after each one, naming the failing pass and the
passes before it.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import ClassVar

from toolchain.calib import CalibData
from toolchain.errors import FleetcError
from toolchain.ir import Graph, IRError

__all__ = ["Pass", "PassContext", "PassResult", "PassRecord", "Pipeline", "PipelineError"]

logger = logging.getLogger(__name__)


class PipelineError(FleetcError):
    """A pass could not run or broke the IR; says which pass and which ran before it."""


def _debug_default() -> bool:
    # `fleetc --debug` and the test suite set FLEETC_DEBUG=1: the IR is verified after each pass
    return os.environ.get("FLEETC_DEBUG") == "1"


@dataclass
class PassContext:
    """What passes share during one pipeline run: options, calibration data, facts."""

    debug: bool = field(default_factory=_debug_default)
    calib: CalibData | None = None
    facts: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class PassResult:
    changed: bool
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PassRecord:
    """What one pass did in a pipeline run."""

    name: str
    changed: bool
    seconds: float
    stats: dict


@dataclass
class Pass:
    """Base class: one graph transformation or analysis, run in place on a Graph."""

    name: ClassVar[str] = "pass"
    requires: ClassVar[frozenset[str]] = frozenset()
    produces: ClassVar[frozenset[str]] = frozenset()
    invalidates: ClassVar[frozenset[str]] = frozenset()

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:  # pragma: no cover
        raise NotImplementedError


class Pipeline:
    """An ordered list of passes."""

    def __init__(self, passes: list[Pass]) -> None:
        self.passes = list(passes)

    def run(self, graph: Graph, ctx: PassContext | None = None) -> list[PassRecord]:
        ctx = ctx or PassContext()
        records: list[PassRecord] = []
        for p in self.passes:
            before = ", ".join(r.name for r in records) or "nothing"
            missing = p.requires - ctx.facts
            if missing:
                raise PipelineError(f"pass {p.name} requires {sorted(missing)}, not established "
                                    f"by the passes before it ({before})")
            start = time.perf_counter()
            result = p.run(graph, ctx)
            seconds = time.perf_counter() - start
            if result.changed:
                ctx.facts -= p.invalidates
            ctx.facts |= p.produces
            records.append(PassRecord(p.name, result.changed, seconds, dict(result.stats)))
            logger.debug("pass %s: changed=%s %.3fs %s", p.name, result.changed, seconds,
                         result.stats)
            if ctx.debug:
                try:
                    graph.validate()
                except IRError as err:
                    raise PipelineError(f"IR invalid after pass {p.name} (run after: {before}): "
                                        f"{err}") from err
        return records
