"""A seeded fuzzer for the fleetc command line (issue 21).

It mutates the five input kinds - models (models.py), plans, fleet files and user targets
(documents.py), calibration data (calib.py) - starting from the valid inputs of bases.py,
runs each case in process through click's CliRunner and checks the oracle (oracle.py: no
exit 1, no traceback, no hang, inputs unchanged, no writes outside the allowed places, no
partial outputs). Test code, not product code: tests/cli/test_fuzz.py runs a short seeded
mix within the suite, benchmarks/fuzz.py the long run."""
from __future__ import annotations

from tests.fuzzing.cases import KINDS, Case, make_case, parse_case_id, schedule
from tests.fuzzing.oracle import PROBLEMS, Outcome, memory_limit, run_case

__all__ = ["KINDS", "Case", "make_case", "parse_case_id", "schedule", "PROBLEMS", "Outcome",
           "memory_limit", "run_case"]
