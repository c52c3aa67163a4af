"""The fleet build cache: `$FLEETC_HOME/cache/fleet/<key>/` holds one device's finished output
folder. The key is a SHA-256 over the model bytes, the calibration bytes, the device's entry
(name, target, budgets, how it is known, the bytes of its measurements / fingerprint), its
target file, its predictor package files (with a fingerprint: every profiled target's),
fleetc's own sources and the versions of fleetc and every tool a build uses - so a changed
input always rebuilds, an unchanged one never does.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
from pathlib import Path

from toolchain.files import sha256_file, tool_versions
from toolchain.fleet.spec import FLEET_JSON_VERSION, Device, Fleet, canonical
from toolchain.home import cache_dir
from toolchain.target import Target, measurable_targets

__all__ = ["device_key", "cached", "install", "entry_dir"]


def entry_dir(key: str) -> Path:
    """Where the build of `key` lives in the cache."""
    return cache_dir() / "fleet" / key


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """sha256 of fleetc's own Python sources (toolchain/, passes/): in an editable checkout
    a code change rebuilds too, not only a new version."""
    project = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for package in ("toolchain", "passes"):
        root = project / package
        for f in sorted(root.rglob("*.py")):
            digest.update(str(f.relative_to(root.parent)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:32]


def _files_digest(paths: list[Path]) -> dict[str, str]:
    """sha256 of each file (of each file below a folder), keyed by its full path: a user's
    package and the built-in one of the same name are both in it."""
    out = {}
    for p in paths:
        for f in [p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else []:
            if f.is_file():
                out[str(f.resolve())] = sha256_file(f)
    return out


def _target_digest(device: Device, targets: dict[str, Target],
                   measurable: list[Target]) -> dict:
    """The target file and the predictor package(s) the device's build reads: with a
    fingerprint, those of every profiled target too (`fleet/pricing.py` mixes them all)."""
    from toolchain.home import predictors_dir
    from toolchain.predict.latency import builtin_predictors_dir

    used = [targets[device.target]] + ([targets[device.proxy]] if device.proxy else [])
    if device.known_by == "fingerprint":
        used += measurable
    files: list[Path] = []
    for tgt in used:
        files.append(Path(tgt.source))
        files += [predictors_dir() / tgt.predictor, builtin_predictors_dir() / tgt.predictor]
    return _files_digest(files)


def device_key(fleet: Fleet, device: Device, model_sha: str, calib_sha: str | None,
               measurable: list[Target] | None = None) -> str:
    """The device's cache key; `measurable` (the targets a fingerprint mixes) is read from the
    registry when not given."""
    measurable = measurable_targets() if measurable is None else measurable
    doc = {"fleet_json": FLEET_JSON_VERSION, "model": model_sha, "calib": calib_sha,
           "device": device.entry(), "target": _target_digest(device, fleet.targets, measurable),
           "tools": tool_versions(),
           "source": _source_digest()}
    return hashlib.sha256(canonical(doc).encode()).hexdigest()[:32]


def cached(key: str) -> Path | None:
    entry = entry_dir(key)
    return entry if (entry / "manifest.json").is_file() else None


def install(entry: Path, dest: Path) -> None:
    """Copy a cached device folder into the output folder (atomic per device)."""
    tmp = dest.parent / f".{dest.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(entry, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
