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

import csv
import difflib
import functools
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import BadInputError
from toolchain.files import MAX_TEXT_BYTES, load_toml, regular_file, safe_name, sha256_file
from toolchain.measure.records import read_measurements
from toolchain.target import Target, list_targets, load_target

__all__ = ["Device", "Fleet", "load_fleet", "BUDGET_KEYS", "FLEET_JSON_VERSION", "canonical"]

logger = logging.getLogger(__name__)

BUDGET_KEYS = ("latency_ms", "energy_mj", "max_accuracy_drop")
FLEET_JSON_VERSION = 2   # the format of the fleet.json a run writes (docs/fleet.md)
_TOP_KEYS = {"model", "calib", "device", *BUDGET_KEYS}
_DEVICE_KEYS = {"name", "target", "proxy", "measurements", "fingerprint", *BUDGET_KEYS}
RESERVED_NAMES = frozenset({"fleet.json", "fleet.html"})   # files beside the device folders
MAX_DEVICES = 10000
MIN_DESIGNS = 3      # few-shot calibration and a fingerprint fit need 3 measured designs
_MAX_TARGET_NAME = 1000


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
    """A budget: a finite number, positive (max_accuracy_drop: 0 to 100 points)."""
    top = 100.0 if what == "max_accuracy_drop" else math.inf
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or not 0 <= value <= top:
        raise BadInputError(f"{where}: {what} must be a non-negative number (finite"
                            f"{', at most 100' if top < math.inf else ''}), got {value!r}")
    if what != "max_accuracy_drop" and value == 0:
        raise BadInputError(f"{where}: {what} must be positive, got 0")
    return float(value)


def _file(base: Path, value, what: str, where: str) -> Path:
    if not isinstance(value, str) or not value or "\0" in value:
        raise BadInputError(f"{where}: {what} must be a file path, got {value!r}")
    try:
        path = (base / value).resolve()
        path.exists()
    except OSError as err:   # a name too long for the file system, say
        raise BadInputError(f"{where}: {what} {value[:60]!r}...: {err.strerror}") from None
    if not path.exists():
        raise BadInputError(f"{where}: {what} file {value!r} not found ({path})")
    try:
        return regular_file(path, f"{what} file")
    except BadInputError as err:
        raise BadInputError(f"{where}: {what} {value!r}: {err}") from None


def _probe_rows(path: Path, given: str, what: str, where: str) -> None:
    """A measurements / fingerprint CSV read and checked now, before any work: the format, the
    numbers of every row, and at least MIN_DESIGNS designs pricing can use (probe names of
    `fleetc probe`, or model files beside the CSV: the rule of predict.latency.design_units).
    Errors name the file as the fleet file gives it (`given`)."""
    where = f"{where}: {what} {given!r}"
    if os.stat(path).st_size > MAX_TEXT_BYTES:
        raise BadInputError(f"{where}: larger than {MAX_TEXT_BYTES >> 20} MB")
    try:
        rows = read_measurements(path)
    except csv.Error as err:
        raise BadInputError(f"{where}: not a CSV file ({err})") from None
    except BadInputError as err:   # "<path>[:<line>]: <problem>"
        text = re.sub(rf"^{re.escape(str(path))}(:(\d+))?: ", r"line \2: ", str(err))
        raise BadInputError(f"{where}: {text.removeprefix('line : ')}") from None
    probes = _probe_names()
    usable = [r.design for r in rows if r.design in probes or (path.parent / r.design).is_file()
              or (path.parent / f"{r.design}.onnx").is_file()]
    if len(usable) < MIN_DESIGNS:
        raise BadInputError(f"{where}: {len(usable)} usable designs, at least {MIN_DESIGNS} are "
                            "needed (probe names of `fleetc probe` or model files beside it)")


@functools.lru_cache(maxsize=1)
def _probe_names() -> frozenset[str]:
    """The probe names (fixed by the code), computed once per process, not once per device."""
    from toolchain.measure.probe import probe_names  # slow to import: only when needed

    return frozenset(probe_names())


def _name(raw: dict, where: str) -> str:
    name = raw.get("name")
    if not safe_name(name):
        raise BadInputError(f"{where}: name must be 1-64 letters, digits, '.', '_' or '-' "
                            f"(starting with a letter or digit), got {name!r}")
    if name.lower() in RESERVED_NAMES:
        raise BadInputError(f"{where}: name {name!r} is reserved (a file of the output folder)")
    return name


def _target_name(value, key: str, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_TARGET_NAME:
        raise BadInputError(f"{where}: {key} must be a target name (see `fleetc targets`), got "
                            f"{value!r}")
    return value


def _device(raw, index: int, defaults: dict, base: Path, label: str) -> Device:
    where = f"{label}: device #{index + 1}"
    if not isinstance(raw, dict):
        raise BadInputError(f"{where}: expected a [[device]] table, got {raw!r}")
    unknown = sorted(map(str, set(raw) - _DEVICE_KEYS))
    if unknown:
        raise BadInputError(f"{where}: unknown keys {unknown} (allowed: "
                            f"{sorted(_DEVICE_KEYS)})")
    name = _name(raw, where)
    where = f"{label}: device {name!r}"
    if "target" not in raw:
        raise BadInputError(f"{where}: target is required (see `fleetc targets`)")
    target = _target_name(raw["target"], "target", where)
    proxy = _target_name(raw["proxy"], "proxy", where) if "proxy" in raw else None
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
    for key, path in files.items():
        _probe_rows(path, raw[key], key, where)
    return Device(name=name, target=target, proxy=proxy, **budgets, **files)


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet file: every problem (types, ranges, finite numbers, names,
    files and the contents of the measurement CSVs, targets) is a BadInputError naming the file,
    the device and the key, raised before any work."""
    path = Path(path)
    label = str(path)
    doc = load_toml(path, "fleet file")
    unknown = sorted(map(str, set(doc) - _TOP_KEYS))
    if unknown:
        raise BadInputError(f"{label}: unknown keys {unknown} (allowed: "
                            f"{sorted(_TOP_KEYS)})")
    base = path.resolve().parent
    if "model" not in doc:
        raise BadInputError(f"{label}: model is required")
    model = _file(base, doc["model"], "model", label)
    calib = _file(base, doc["calib"], "calib", label) if "calib" in doc else None
    defaults = {k: _number(doc[k], k, label) for k in BUDGET_KEYS if k in doc}
    raw_devices = doc.get("device")
    if not isinstance(raw_devices, list) or not raw_devices:
        raise BadInputError(f"{label}: no devices: add at least one [[device]] table")
    if len(raw_devices) > MAX_DEVICES:
        raise BadInputError(f"{label}: {len(raw_devices)} devices (at most {MAX_DEVICES})")
    devices = tuple(_device(raw, i, defaults, base, label) for i, raw in enumerate(raw_devices))
    dupes = sorted(n for n, k in Counter(d.name for d in devices).items() if k > 1)
    if dupes:
        raise BadInputError(f"{label}: device names must be unique; repeated: {dupes}")
    return Fleet(path.resolve(), model, calib, devices, _targets(devices, label))


def _targets(devices: tuple[Device, ...], label: str) -> dict[str, Target]:
    """Each target and proxy named by a device, loaded once. An unknown one names the file,
    the device and the key, and the closest known name first (the line is cut at 200
    characters, the list of known targets may not fit)."""
    out: dict[str, Target] = {}
    for d in devices:
        for key, name in (("target", d.target), ("proxy", d.proxy)):
            if name and name not in out:
                try:
                    out[name] = load_target(name)
                except BadInputError as err:
                    known = list_targets()
                    if name in known:        # a broken target file: its own message
                        raise BadInputError(f"{label}: device {d.name}: {err}") from err
                    close = difflib.get_close_matches(name, known, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise BadInputError(f"{label}: device {d.name}: unknown target {name!r} "
                                        f"as its {key}{hint}; known targets: "
                                        f"{', '.join(known)}") from err
    return out


def canonical(doc) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
