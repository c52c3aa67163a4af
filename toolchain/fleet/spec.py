"""The fleet file: one model, its calibration data, default budgets and the devices.

```toml
model = "mbv2.onnx"               # paths are relative to the fleet file
calib = "calib.npz"               # optional (without it accuracy is unmeasured, said loudly)
max_accuracy_drop = 1.0           # defaults for every device: latency_ms, energy_mj,
                                  # max_accuracy_drop
[[device]]
name = "shelf-cam-rpi4"           # unique; letters, digits, . _ - (output folder, cache key)
target = "rpi4"                   # a target of `fleetc targets`
latency_ms = 30                   # the device's own budgets override the defaults
proxy = "host-ort-1t"             # few-shot: calibrate the proxy's predictor with ...
measurements = "rpi4.csv"         # ... these measurements of probe designs on the device

[[device]]
name = "dock-nano"
target = "jetson-nano"
fingerprint = "nano_fp.csv"       # device-conditioned path: latencies of the probe designs
```

A device is known in one of three ways: profiled here (its target's own predictor), few-shot
(`proxy` + `measurements`) or by a `fingerprint`. Every problem is a BadInputError naming the
file and the device.
"""
from __future__ import annotations

import json
import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import BadInputError
from toolchain.files import sha256_file
from toolchain.target import Target, load_target

__all__ = ["Device", "Fleet", "load_fleet", "BUDGET_KEYS", "FLEET_JSON_VERSION", "canonical"]

logger = logging.getLogger(__name__)

BUDGET_KEYS = ("latency_ms", "energy_mj", "max_accuracy_drop")
FLEET_JSON_VERSION = 1   # the format of the fleet.json a run writes (docs/fleet.md)
_TOP_KEYS = {"model", "calib", "device", *BUDGET_KEYS}
_DEVICE_KEYS = {"name", "target", "proxy", "measurements", "fingerprint", *BUDGET_KEYS}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Device:
    """One device of a fleet, its budgets resolved against the fleet's defaults."""

    name: str
    target: str
    latency_ms: float | None = None
    energy_mj: float | None = None
    max_accuracy_drop: float | None = None
    proxy: str | None = None
    measurements: Path | None = None
    fingerprint: Path | None = None

    @property
    def known_by(self) -> str:
        """"profiled" (its target's predictor), "fewshot" or "fingerprint"."""
        if self.measurements is not None:
            return "fewshot"
        return "fingerprint" if self.fingerprint is not None else "profiled"

    def budgets(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in BUDGET_KEYS if getattr(self, k) is not None}

    def entry(self) -> dict:
        """Everything about the device that can change its build (for the cache key)."""
        out: dict = {"name": self.name, "target": self.target, "budgets": self.budgets(),
                     "known_by": self.known_by, "proxy": self.proxy}
        for key in ("measurements", "fingerprint"):
            path = getattr(self, key)
            out[key] = sha256_file(path) if path is not None else None
        return out


@dataclass(frozen=True)
class Fleet:
    path: Path
    model: Path
    calib: Path | None
    devices: tuple[Device, ...]
    targets: dict[str, Target]   # every device's target and proxy, resolved when the file is read

    def inputs(self) -> list[Path]:
        """Every file the fleet's builds read (for --depfile)."""
        files = [self.path, self.model] + ([self.calib] if self.calib else [])
        for d in self.devices:
            files += [p for p in (d.measurements, d.fingerprint) if p is not None]
        return list(dict.fromkeys(files))


def _number(value, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
            or value != value:
        raise BadInputError(f"{where}: {what} must be a non-negative number, got {value!r}")
    if what != "max_accuracy_drop" and value == 0:
        raise BadInputError(f"{where}: {what} must be positive, got 0")
    return float(value)


def _file(base: Path, value, what: str, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise BadInputError(f"{where}: {what} must be a file path")
    path = (base / value).resolve()
    if not path.is_file():
        raise BadInputError(f"{where}: {what} file {value!r} not found ({path})")
    return path


def _device(raw, index: int, defaults: dict, base: Path, label: str) -> Device:
    where = f"{label}: device #{index + 1}"
    if not isinstance(raw, dict):
        raise BadInputError(f"{where}: expected a [[device]] table")
    unknown = set(raw) - _DEVICE_KEYS
    if unknown:
        raise BadInputError(f"{where}: unknown keys {sorted(unknown)} (allowed: "
                            f"{sorted(_DEVICE_KEYS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadInputError(f"{where}: name must be 1-64 letters, digits, '.', '_' or '-', got "
                            f"{name!r}")
    where = f"{label}: device {name!r}"
    target = raw.get("target")
    if not isinstance(target, str) or not target:
        raise BadInputError(f"{where}: target is required (see `fleetc targets`)")
    budgets = {k: _number(raw.get(k, defaults.get(k)), k, where)
               for k in BUDGET_KEYS if raw.get(k, defaults.get(k)) is not None}
    if not budgets:
        raise BadInputError(f"{where}: no budget: give latency_ms, energy_mj or "
                            "max_accuracy_drop (on the device or at the top of the file)")
    if "measurements" in raw and "fingerprint" in raw:
        raise BadInputError(f"{where}: give either measurements (few-shot, with proxy) or a "
                            "fingerprint, not both")
    if ("measurements" in raw) != ("proxy" in raw):
        raise BadInputError(f"{where}: few-shot calibration needs both proxy and measurements")
    files = {k: _file(base, raw[k], k, where) for k in ("measurements", "fingerprint")
             if k in raw}
    return Device(name=name, target=target, proxy=raw.get("proxy"), **budgets, **files)


def load_fleet(path: str | Path) -> Fleet:
    path = Path(path)
    label = str(path)
    if not path.is_file():
        raise BadInputError(f"{label}: no such fleet file")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"{label}: malformed TOML: {err}") from err
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise BadInputError(f"{label}: unknown keys {sorted(unknown)} (allowed: "
                            f"{sorted(_TOP_KEYS)})")
    base = path.resolve().parent
    if "model" not in doc:
        raise BadInputError(f"{label}: model is required")
    model = _file(base, doc["model"], "model", label)
    calib = _file(base, doc["calib"], "calib", label) if "calib" in doc else None
    defaults = {k: doc[k] for k in BUDGET_KEYS if k in doc}
    raw_devices = doc.get("device")
    if not isinstance(raw_devices, list) or not raw_devices:
        raise BadInputError(f"{label}: no devices: add at least one [[device]] table")
    devices = tuple(_device(raw, i, defaults, base, label) for i, raw in enumerate(raw_devices))
    names = [d.name for d in devices]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadInputError(f"{label}: device names must be unique; repeated: {dupes}")
    return Fleet(path.resolve(), model, calib, devices, _targets(devices, label))


def _targets(devices: tuple[Device, ...], label: str) -> dict[str, Target]:
    """Each target and proxy named by a device, loaded once; an unknown one names the device."""
    out: dict[str, Target] = {}
    for d in devices:
        for name in (d.target, d.proxy):
            if name and name not in out:
                try:
                    out[name] = load_target(name)
                except BadInputError as err:
                    raise BadInputError(f"{label}: device {d.name}: {err}") from err
    return out


def canonical(doc) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
