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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.errors import BadInputError
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
    """Every known target this machine can measure (the host's), in name order."""
    return [t for t in map(load_target, list_targets()) if t.measurable_here]


def resolve_target(target: str | Path | Target) -> Target:
    """A target at the API edge: a Target as it is; a name or a TOML path loaded once. Code
    below the edge takes a Target."""
    return target if isinstance(target, Target) else load_target(target)


def _load_file(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise BadInputError(f"target file {path} not found") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"malformed target file {path}: {err}") from err
    target = parse_target(data, source=str(path))
    if target.name != path.stem:
        raise BadInputError(f"target file {path}: name {target.name!r} differs from the file name")
    return target


def parse_target(data: dict[str, Any], source: str = "<dict>") -> Target:
    """Validate a parsed TOML table and build the Target; errors name the file and the key."""
    def bad(msg: str) -> BadInputError:
        return BadInputError(f"target file {source}: {msg}")

    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise bad(f"unknown keys {sorted(unknown)} (allowed: {sorted(_TOP_KEYS)})")
    for key in ("name", "tvm_target", "measure"):
        if key not in data:
            raise bad(f"missing key {key!r}")
    name = data["name"]
    if not isinstance(name, str) or not name:
        raise bad("name must be a non-empty string")
    precisions = tuple(data.get("precisions", ["fp32"]))
    wrong = [p for p in precisions if p not in PRECISIONS]
    if wrong or not precisions:
        raise bad(f"precisions must be a non-empty subset of {list(PRECISIONS)}, got {wrong}")
    tvm_target = data["tvm_target"]
    if not isinstance(tvm_target, str | dict) or (isinstance(tvm_target, dict)
                                                  and "kind" not in tvm_target):
        raise bad("tvm_target must be a TVM tag or a table with a 'kind'")
    if isinstance(tvm_target, str) and " " in tvm_target.strip():
        raise bad(f"tvm_target {tvm_target!r}: TVM 0.27 rejects target strings with options; "
                  "use a tag or a table")
    power = data.get("power_w")
    if power is not None and (not isinstance(power, int | float) or power <= 0):
        raise bad("power_w must be a positive number")
    features = data.get("features", {})
    if not isinstance(features, dict):
        raise bad("[features] must be a table")
    return Target(
        name=name, description=str(data.get("description", "")), tvm_target=tvm_target,
        precisions=precisions, measure=_parse_measure(data["measure"], bad),
        predictor=str(data.get("predictor", name)), features=dict(features),
        cross_compiler=data.get("cross_compiler"),
        power_w=float(power) if power is not None else None, source=source,
    )


def _parse_measure(table: Any, bad) -> Measure:
    if not isinstance(table, dict):
        raise bad("[measure] must be a table")
    unknown = set(table) - _MEASURE_KEYS
    if unknown:
        raise bad(f"[measure] unknown keys {sorted(unknown)}")
    kind = table.get("kind")
    if kind not in MEASURE_KINDS:
        raise bad(f"[measure] kind must be one of {list(MEASURE_KINDS)}, got {kind!r}")
    threads = table.get("threads", 1)
    if not isinstance(threads, int) or threads < 0:
        raise bad("[measure] threads must be an integer >= 0")
    if kind == "rpc" and not table.get("rpc_key"):
        raise bad("[measure] kind 'rpc' needs an rpc_key")
    timeout = table.get("timeout_s", 60.0)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise bad("[measure] timeout_s must be a positive number")
    return Measure(kind=kind, threads=threads, rpc_key=table.get("rpc_key"),
                   tracker=table.get("tracker"), timeout_s=float(timeout))
