"""Time models on this machine in a separate, freshly started process.

`fleetc profile` measures each round of local designs in a new process: some of this
machine's slow states belong to a process, not to the moment. In one 2-thread probe run
(session 8, run I) 69 of 577 designs were 2-3x slower than in four other runs in every one of
its four rounds, spread over seven minutes, while the designs timed between them were not;
a ResNet-26 ran 1.42x slower in 3 of 11 fresh processes and the same in every session of one
process (docs/measure.md). The fastest sample over rounds sees past such a state only when
the rounds are separate processes. A crash while timing (a bad model taking onnxruntime or
TVM down) fails that design instead of the whole run. The process is a
`toolchain.measure.child.ChildProcess`: Ctrl-C stops it at once and it dies with its parent.
"""
from __future__ import annotations

import onnx

from toolchain.errors import BadInputError
from toolchain.measure.child import ChildDiedError, ChildProcess
from toolchain.measure.timing import Timing, TimingConfig
from toolchain.target import Target

__all__ = ["MeasureProcess"]


def _measure(target: Target, data: bytes, config: TimingConfig | None) -> Timing:
    """In the worker: time the model; any failure is the design's (BadInputError)."""
    from toolchain.measure.backend import measure_model

    try:
        return measure_model(target, onnx.load_from_string(data), config)
    except BadInputError:
        raise
    except Exception as err:  # noqa: BLE001 - reported as the design's failure
        raise BadInputError(f"internal error while timing: {type(err).__name__}: "
                            f"{err}") from None


class MeasureProcess(ChildProcess):
    """`measure(target, model, config)` in one spawned worker process, started on first use
    and again after a crash; `close()` (or the with-block's end) stops it."""

    def __init__(self) -> None:
        super().__init__("fleetc-measure")

    def measure(self, target: Target, model: onnx.ModelProto,
                config: TimingConfig | None = None) -> Timing:
        try:
            return self.call(_measure, target, model.SerializeToString(), config)
        except ChildDiedError as err:
            raise BadInputError(f"the measuring process died (exit code {err.exitcode})") \
                from None
