"""Time models on this machine in a separate, freshly started process.

`fleetc profile` measures each round of local designs in a new process: some of this
machine's slow states belong to a process, not to the moment. In one 2-thread probe run
(session 8, run I) 69 of 577 designs were 2-3x slower than in four other runs in every one of
its four rounds, spread over seven minutes, while the designs timed between them were not;
a ResNet-26 ran 1.42x slower in 3 of 11 fresh processes and the same in every session of one
process (docs/measure.md). The fastest sample over rounds sees past such a state only when
the rounds are separate processes. A crash while timing (a bad model taking onnxruntime or
TVM down) fails that design instead of the whole run.
"""
from __future__ import annotations

import multiprocessing
import signal

import onnx

from toolchain.errors import BadInputError
from toolchain.measure.timing import Timing, TimingConfig
from toolchain.target import Target

__all__ = ["MeasureProcess"]

POLL_SECONDS = 0.2


def _serve(conn) -> None:
    """The worker: (target, model bytes, config) in, ("ok", Timing) or ("error", message) out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle
    from toolchain.measure.backend import measure_model

    while True:
        try:
            target, data, config = conn.recv()
        except EOFError:
            return
        try:
            reply = ("ok", measure_model(target, onnx.load_from_string(data), config))
        except BadInputError as err:
            reply = ("error", str(err))
        except Exception as err:  # noqa: BLE001 - reported as the design's failure
            reply = ("error", f"internal error while timing: {type(err).__name__}: {err}")
        try:
            conn.send(reply)
        except OSError:   # the parent is gone or stopped waiting
            return


class MeasureProcess:
    """`measure(target, model, config)` in one spawned worker process, started on first use
    and again after a crash; `close()` (or the with-block's end) stops it."""

    def __init__(self) -> None:
        self._proc = None
        self._conn = None

    def __enter__(self) -> MeasureProcess:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(kill=exc_type is not None)   # interrupted: do not wait for the timing

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), daemon=True,
                                 name="fleetc-measure")
        self._proc.start()
        child.close()

    def measure(self, target: Target, model: onnx.ModelProto,
                config: TimingConfig | None = None) -> Timing:
        if self._proc is None or not self._proc.is_alive():
            self.close()
            self._start()
        try:
            self._conn.send((target, model.SerializeToString(), config))
            while not self._conn.poll(POLL_SECONDS) and self._proc.is_alive():
                pass
            status, value = self._conn.recv()   # EOF at once if the worker is gone
        except (EOFError, OSError):
            self._proc.join(timeout=5)
            code = self._proc.exitcode
            self.close(kill=True)
            raise BadInputError(f"the measuring process died (exit code {code})") from None
        if status == "error":
            raise BadInputError(value)
        return value

    def close(self, kill: bool = False) -> None:
        if self._conn is not None:
            self._conn.close()   # the idle worker sees EOF and ends
        if self._proc is not None:
            self._proc.join(timeout=0 if kill else 5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._proc = self._conn = None
