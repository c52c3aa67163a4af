"""TVM RPC: a tracker with device servers registered under keys, and timing through them.

`start_farm` is the stand-in device farm: a tracker plus one server per key on 127.0.0.1
(ephemeral ports), each server process with its own TVM thread count - this CPU served as if it
were a fleet of remote devices. `time_rpc` does what TVM users do with real boards: compile here
(cross-compiling when the target names a cross compiler), ask the tracker for a device under the
key, upload the module, time it there with `time_evaluator`. Every step runs under a deadline:
an unreachable tracker, a key nobody serves or a device that stops answering raise
`DeviceUnreachableError` after `timeout_s`, never hang.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from toolchain.errors import BadInputError
from toolchain.measure.timing import Timing, TimingConfig

__all__ = ["Farm", "start_farm", "time_rpc", "parse_address", "DeviceUnreachableError",
           "DEFAULT_TRACKER", "tracker_keys"]

logger = logging.getLogger(__name__)

DEFAULT_TRACKER = "127.0.0.1:9190"


class DeviceUnreachableError(BadInputError):
    """The tracker or the device under a key did not answer in time."""


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise BadInputError(f"tracker address {text!r}: expected HOST:PORT")
    return host, int(port)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _init_server(threads: int, cpus: list[int]) -> None:
    """Runs in the server process before it serves: thread count and CPU pinning."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))


@dataclass
class Farm:
    """A running tracker and its servers; `stop()` ends every process it started."""

    host: str
    port: int
    keys: dict[str, int]                     # key -> threads of its server
    tracker: object = field(repr=False, default=None)
    servers: list = field(repr=False, default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        for server in self.servers:
            server.terminate()
        if self.tracker is not None:
            self.tracker.terminate()
        self.servers, self.tracker = [], None

    def __enter__(self) -> Farm:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_farm(keys: dict[str, int] | None = None, host: str = "127.0.0.1",
               port: int = 0, ready_s: float = 20.0) -> Farm:
    """Start a tracker and one server per key (value = TVM threads of that server).

    Servers with fewer threads than cores are pinned to the last cores, as `pick_cpus` does
    for local timing, so a 1-thread server and local 1-thread timing run alike.
    """
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    from toolchain.measure.timing import pick_cpus

    keys = keys or {"host-1t": 1, "host-2t": 2}
    port = port or _free_port(host)
    # Each TVM RPC process imports TVM first (seconds): start them all at once. A server that
    # comes up before the tracker retries its registration.
    jobs = {"": lambda: Tracker(host=host, port=port, port_end=port + 1, silent=True)}
    for key, threads in keys.items():
        sport = _free_port(host)
        init = _Init(threads, sorted(pick_cpus(threads)))
        jobs[key] = functools.partial(Server, host=host, port=sport, port_end=sport + 1,
                                      tracker_addr=(host, port), key=key, silent=True,
                                      server_init_callback=init)
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {k: pool.submit(job) for k, job in jobs.items()}
    started = {k: f.result() for k, f in futures.items() if f.exception() is None}
    farm = Farm(host, port, dict(keys), started.pop("", None), list(started.values()))
    try:
        errors = {k or "tracker": f.exception() for k, f in futures.items() if f.exception()}
        if errors:
            name, err = next(iter(errors.items()))
            raise DeviceUnreachableError(f"farm: could not start {name}: {err}")
        _wait_registered(farm, ready_s)
    except BaseException:
        farm.stop()
        raise
    return farm


@dataclass(frozen=True)
class _Init:
    """Picklable server init callback (the server process is started through popen)."""

    threads: int
    cpus: list[int]

    def __call__(self) -> None:
        _init_server(self.threads, self.cpus)


def tracker_keys(address: str, timeout_s: float = 10.0) -> dict[str, int]:
    """Key -> number of free servers registered at the tracker."""
    from tvm import rpc

    host, port = parse_address(address)
    summary = _deadline(lambda: rpc.connect_tracker(host, port).summary(), timeout_s,
                        f"tracker {address}")
    return {k: int(v.get("free", 0)) for k, v in summary.get("queue_info", {}).items()}


def _wait_registered(farm: Farm, ready_s: float) -> None:
    end = time.monotonic() + ready_s
    while time.monotonic() < end:
        if set(farm.keys) <= set(tracker_keys(farm.address)):
            return
        time.sleep(0.2)
    raise DeviceUnreachableError(f"farm servers did not register at {farm.address} "
                                 f"within {ready_s:.0f} s")


def _deadline(fn, timeout_s: float, what: str):
    """Run fn() in a daemon thread; raise DeviceUnreachableError if it takes over timeout_s."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise DeviceUnreachableError(f"{what}: no answer within {timeout_s:.0f} s")
    if "error" in box:
        err = box["error"]
        if isinstance(err, BadInputError):
            raise err
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DeviceUnreachableError(f"{what}: {first[:300]}") from err
    return box.get("value")


def time_rpc(model: onnx.ModelProto, tvm_target, key: str, tracker: str = DEFAULT_TRACKER,
             timeout_s: float = 60.0, config: TimingConfig | None = None,
             cross_compiler: str | None = None, executable=None) -> Timing:
    """Compile here, upload to a device under `key`, time it there (median of samples)."""
    from toolchain.measure.tvm_backend import compile_relax, input_arrays, time_vm

    config = config or TimingConfig()
    free = tracker_keys(tracker, min(timeout_s, 10.0))
    if key not in free:
        raise DeviceUnreachableError(f"no device registered under key {key!r} at tracker "
                                     f"{tracker} (keys: {', '.join(sorted(free)) or 'none'})")
    executable = executable if executable is not None else compile_relax(model, tvm_target)
    arrays = input_arrays(model)
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp, "model.so")
        _export(executable, lib, cross_compiler)

        def remote() -> Timing:
            from tvm import rpc

            host, port = parse_address(tracker)
            session = rpc.connect_tracker(host, port).request(
                key, priority=1, session_timeout=int(timeout_s) + 5, max_retry=1)
            session.upload(str(lib))
            return time_vm(session.load_module(lib.name), session.cpu(), arrays, config)
        return _deadline(remote, timeout_s, f"device {key!r} at {tracker}")


def _export(executable, path: Path, cross_compiler: str | None) -> None:
    if cross_compiler:
        from tvm.contrib import cc

        executable.export_library(str(path), fcompile=cc.cross_compiler(cross_compiler))
    else:
        executable.export_library(str(path))
