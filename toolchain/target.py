"""Targets: one TOML file per device, loaded into a frozen `Target`.

Built-in targets live in `targets/devices/*.toml`; user targets in `$FLEETC_HOME/targets/*.toml`
(same schema; a user file with a built-in name replaces the built-in). Schema:

    name = "rpi4"                       # must equal the file's stem
    description = "..."
    precisions = ["fp32", "int8"]       # subset of fp32, fp16, int8
    predictor = "rpi4"                  # predictor package name (see toolchain.predict.kernel)
    tvm_target = "raspberry-pi/4b-aarch64"   # a TVM tag, or a table / dict (kind, mtriple, host...)
    cross_compiler = "aarch64-linux-gnu-g++" # optional: how to link the module for the device
    power_w = 6.4                       # optional: average power for energy estimates
    [measure]
    kind = "rpc"                        # local-ort | local-tvm | rpc
    threads = 4                         # 0 = one per core
    rpc_key = "rpi4"                    # rpc only: the key the device server registers under
    tracker = "127.0.0.1:9190"          # rpc only, optional (else $FLEETC_TRACKER)
    timeout_s = 120
    [features]                          # specs (numbers, booleans, strings)
    cores = 4
    fingerprint = "rpi4_fp.csv"         # optional: latencies of the probe designs (path)
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.errors import BadInputError
from toolchain.files import load_toml, safe_name
from toolchain.home import targets_dir
from toolchain.space import PRECISIONS

__all__ = [
    "Target", "Measure", "load_target", "resolve_target", "list_targets", "measurable_targets",
    "builtin_dir", "parse_target", "PRECISIONS", "MEASURE_KINDS",
]

logger = logging.getLogger(__name__)

MEASURE_KINDS = ("local-ort", "local-tvm", "rpc")
_TOP_KEYS = {"name", "description", "precisions", "predictor", "tvm_target", "cross_compiler",
             "power_w", "measure", "features"}
_MEASURE_KEYS = {"kind", "threads", "rpc_key", "tracker", "timeout_s"}


@dataclass(frozen=True)
class Measure:
    """How a target is timed: a local runtime or a TVM RPC device under `rpc_key`."""

    kind: str
    threads: int = 1            # intra-op threads; 0 = one per core
    rpc_key: str | None = None
    tracker: str | None = None  # "host:port"; None = $FLEETC_TRACKER or 127.0.0.1:9190
    timeout_s: float = 60.0


@dataclass(frozen=True)
class Target:
    """A device: its TVM target, precisions, how to measure it, its features and predictor."""

    name: str
    description: str
    tvm_target: str | dict[str, Any]
    precisions: tuple[str, ...]
    measure: Measure
    predictor: str
    features: dict[str, Any] = field(default_factory=dict)
    cross_compiler: str | None = None
    power_w: float | None = None
    source: str = ""            # the TOML file it came from

    def __hash__(self) -> int:  # dict fields are not hashable; the name identifies a target
        return hash(self.name)

    @property
    def measurable_here(self) -> bool:
        """Local targets run on this machine; RPC ones need a device (or the stand-in farm)."""
        return self.measure.kind != "rpc"

    @property
    def fingerprint(self) -> str | None:
        value = self.features.get("fingerprint")
        return str(value) if value is not None else None

    def tvm(self):
        """The `tvm.target.Target` (imports TVM; mcpu "native" becomes this machine's CPU)."""
        import tvm

        spec = self.tvm_target
        if isinstance(spec, dict):
            spec = _resolve_native(spec)
        try:
            return tvm.target.Target(spec)
        except Exception as err:  # TVM raises ValueError / TVMError with long messages
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BadInputError(f"target {self.name}: TVM rejects its tvm_target: {first}") from err

    def energy_mj(self, latency_ms: float) -> float | None:
        """Energy estimate from the average power figure, when the target has one."""
        return None if self.power_w is None else latency_ms * self.power_w


def _resolve_native(spec: dict[str, Any]) -> dict[str, Any]:
    out = dict(spec)
    if out.get("mcpu") == "native":
        from tvm.target import codegen

        out["mcpu"] = codegen.llvm_get_system_cpu()
    if isinstance(out.get("host"), dict):
        out["host"] = _resolve_native(out["host"])
    return out


def builtin_dir() -> Path:
    """The folder of built-in target files (`targets/devices`)."""
    import targets

    return Path(targets.__file__).parent / "devices"


def _files() -> dict[str, Path]:
    found = {p.stem: p for p in sorted(builtin_dir().glob("*.toml"))}
    user = targets_dir()
    if user.is_dir():
        for path in sorted(user.glob("*.toml")):
            if path.stem in found:
                logger.info("user target %s replaces the built-in one", path)
            found[path.stem] = path
    return found


def list_targets() -> list[str]:
    """Names of all known targets (built-in and user), sorted."""
    return sorted(_files())


def load_target(name: str | Path) -> Target:
    """Load a target by name, or from a TOML path. Unknown names raise BadInputError."""
    if isinstance(name, Path) or str(name).endswith(".toml"):
        return _load_file(Path(name))
    files = _files()
    if name not in files:
        raise BadInputError(f"unknown target {name!r}; known targets: {', '.join(sorted(files))}")
    return _load_file(files[name])


def measurable_targets() -> list[Target]:
    """Every known target this machine can measure (the host's), in name order. A broken user
    target file is left out with a warning; a command that names it fails naming the file."""
    out = []
    for name in list_targets():
        try:
            target = load_target(name)
        except BadInputError as err:
            logger.warning("%s (target left out)", str(err)[:200])
            continue
        if target.measurable_here:
            out.append(target)
    return out


def resolve_target(target: str | Path | Target) -> Target:
    """A target at the API edge: a Target as it is; a name or a TOML path loaded once. Code
    below the edge takes a Target."""
    return target if isinstance(target, Target) else load_target(target)


def _load_file(path: Path) -> Target:
    data = load_toml(path, "target file")
    target = parse_target(data, source=str(path))
    if target.name != path.stem:
        raise BadInputError(f"target file {path}: name {target.name!r} differs from the file name")
    return target


def parse_target(data: dict[str, Any], source: str = "<dict>") -> Target:
    """Validate a parsed TOML table against the schema (module docstring) and build the Target;
    each error names the file, the key and the value."""
    def bad(msg: str) -> BadInputError:
        return BadInputError(f"target file {source}: {msg}")

    if not isinstance(data, dict):
        raise bad(f"expected a table, got {data!r}")
    unknown = sorted(map(str, set(data) - _TOP_KEYS))
    if unknown:
        raise bad(f"unknown keys {unknown} (allowed: {sorted(_TOP_KEYS)})")
    for key in ("name", "tvm_target", "measure"):
        if key not in data:
            raise bad(f"missing key {key!r}")
    name = data["name"]
    if not safe_name(name):
        raise bad(f"name must be 1-64 letters, digits, '.', '_' or '-', got {name!r}")
    predictor = data.get("predictor", name)
    if not safe_name(predictor):
        raise bad(f"predictor must be a package name (1-64 letters, digits, '.', '_' or '-'), "
                  f"got {predictor!r}")
    for key in ("description", "cross_compiler"):
        if key in data and not _text(data[key], key == "description"):
            raise bad(f"{key} must be a string of at most {_MAX_TEXT} characters, got "
                      f"{data[key]!r}")
    power = data.get("power_w")
    if power is not None and not _positive(power, _MAX_POWER_W):
        raise bad(f"power_w must be a number in (0, {_MAX_POWER_W:g}] (watts), got {power!r}")
    return Target(
        name=name, description=data.get("description", ""), tvm_target=_tvm_target(data, bad),
        precisions=_precisions(data, bad), measure=_parse_measure(data["measure"], bad),
        predictor=predictor, features=_features(data, bad),
        cross_compiler=data.get("cross_compiler"),
        power_w=float(power) if power is not None else None, source=source,
    )


_MAX_TEXT = 1000            # characters of a description, key, path or compiler command
_MAX_POWER_W = 1e5
MAX_THREADS = 1024
_MAX_TIMEOUT_S = 86400.0
_TRACKER = re.compile(r"[^\s]+:[0-9]{1,5}")


def _text(value, empty_ok: bool = False) -> bool:
    return isinstance(value, str) and (empty_ok or bool(value)) and len(value) <= _MAX_TEXT


def _positive(value, most: float) -> bool:
    """A finite number in (0, most] (booleans are not numbers)."""
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value) and 0 < value <= most


def _precisions(data: dict, bad) -> tuple[str, ...]:
    value = data.get("precisions", ["fp32"])
    if not isinstance(value, list) or not value or len(set(map(repr, value))) != len(value) \
            or not all(isinstance(p, str) and p in PRECISIONS for p in value):
        raise bad(f"precisions must be a non-empty list of distinct values from "
                  f"{list(PRECISIONS)}, got {value!r}")
    return tuple(value)


def _tvm_target(data: dict, bad) -> str | dict[str, Any]:
    tvm_target = data["tvm_target"]
    if isinstance(tvm_target, dict):
        if not isinstance(tvm_target.get("kind"), str) or not tvm_target["kind"]:
            raise bad(f"tvm_target table needs a 'kind' string, got {tvm_target!r}")
        return tvm_target
    if not _text(tvm_target):
        raise bad(f"tvm_target must be a TVM tag or a table with a 'kind', got {tvm_target!r}")
    if any(c.isspace() for c in tvm_target.strip()):
        raise bad(f"tvm_target {tvm_target!r}: TVM 0.27 rejects target strings with options; "
                  "use a tag or a table")
    return tvm_target


def _features(data: dict, bad) -> dict[str, Any]:
    """[features]: specs, each a finite number, a boolean or a string."""
    features = data.get("features", {})
    if not isinstance(features, dict):
        raise bad(f"[features] must be a table, got {features!r}")
    for key, value in features.items():
        ok = isinstance(value, bool) or _text(value, empty_ok=True) or (
            isinstance(value, int | float) and math.isfinite(value))
        if not ok:
            raise bad(f"[features] {key} must be a finite number, a boolean or a string, got "
                      f"{value!r}")
    return dict(features)


def _parse_measure(table: Any, bad) -> Measure:
    if not isinstance(table, dict):
        raise bad(f"[measure] must be a table, got {table!r}")
    unknown = sorted(map(str, set(table) - _MEASURE_KEYS))
    if unknown:
        raise bad(f"[measure] unknown keys {unknown} (allowed: {sorted(_MEASURE_KEYS)})")
    kind = table.get("kind")
    if not isinstance(kind, str) or kind not in MEASURE_KINDS:
        raise bad(f"[measure] kind must be one of {list(MEASURE_KINDS)}, got {kind!r}")
    threads = table.get("threads", 1)
    if type(threads) is not int or not 0 <= threads <= MAX_THREADS:
        raise bad(f"[measure] threads must be an integer in 0..{MAX_THREADS} (0 = one per "
                  f"core), got {threads!r}")
    rpc_key = table.get("rpc_key")
    if rpc_key is not None and not _text(rpc_key):
        raise bad(f"[measure] rpc_key must be a non-empty string, got {rpc_key!r}")
    if kind == "rpc" and rpc_key is None:
        raise bad("[measure] kind 'rpc' needs an rpc_key")
    tracker = table.get("tracker")
    if tracker is not None and not (isinstance(tracker, str) and len(tracker) <= _MAX_TEXT
                                    and _TRACKER.fullmatch(tracker)
                                    and int(tracker.rsplit(":", 1)[1]) <= 65535):
        raise bad(f"[measure] tracker must be HOST:PORT, got {tracker!r}")
    timeout = table.get("timeout_s", 60.0)
    if not _positive(timeout, _MAX_TIMEOUT_S):
        raise bad(f"[measure] timeout_s must be a number in (0, {_MAX_TIMEOUT_S:g}] (seconds), "
                  f"got {timeout!r}")
    return Measure(kind=kind, threads=threads, rpc_key=rpc_key, tracker=tracker,
                   timeout_s=float(timeout))
