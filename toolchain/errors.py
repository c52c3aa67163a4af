"""Errors that the CLI turns into a one-line message and a documented exit code."""
from __future__ import annotations

__all__ = [
    "FleetcError", "BadInputError", "InfeasibleError", "PartialFailureError",
    "UnsupportedOpError", "UnsupportedKernelError",
]


class FleetcError(Exception):
    """Base class: `exit_code` is what the CLI exits with (see README, exit codes)."""

    exit_code = 1


class BadInputError(FleetcError):
    """Bad input or usage: a file, model, plan, data set, target or option (exit 2)."""

    exit_code = 2


class UnsupportedOpError(BadInputError):
    """A command must transform or compile through an op the toolchain does not understand."""


class UnsupportedKernelError(BadInputError):
    """A predictor has no model for a kernel; it never counts as zero."""


class InfeasibleError(FleetcError):
    """No plan meets the budgets; the message gives the best reachable value (exit 3)."""

    exit_code = 3


class PartialFailureError(FleetcError):
    """Some devices of a fleet failed; the others were built (exit 4)."""

    exit_code = 4
