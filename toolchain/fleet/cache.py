"""The fleet build cache: `$FLEETC_HOME/cache/fleet/<key>/` holds one device's finished output
folder. The key is a SHA-256 over the model bytes, the calibration bytes, the device's entry
(name, target, budgets, how it is known, the bytes of its measurements / fingerprint), its
target file, its predictor package files (with a fingerprint: every profiled target's),
fleetc's own sources and the versions of fleetc and every tool a build uses - so a changed
input always rebuilds, an unchanged one never does.

Entries verify themselves. A build runs in `.build-<pid>-<random>/` in the cache folder; the
finished folder gets `digests.json` (size and sha256 of every file, `toolchain.files`), written
last, and is renamed into place (`publish`): a reader finds a whole entry or none. A hit is
copied beside the device's output folder (`.<device>.tmp-<pid>-<random>/`) and the copy checked
against the digests (sizes, then hashes) before it replaces the output folder (`install`); a
missing, truncated or changed file or a garbled digest file makes the entry a miss, with a
warning naming the device and the problem, and the device's new build replaces the entry. A
rerun into the same OUTDIR leaves a device folder alone when it already matches its (sound)
entry file by file (`_installed`). The temporary folders are removed however their owner
ends; those of owners killed outright are removed by the next run (`sweep`, and `install` for
its own), never while the owner runs.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from toolchain.files import (
    DIGESTS,
    check_digests,
    owned_temp_dir,
    publish_dir,
    remove_dead_temps,
    sha256_file,
    sha256_once,
    tool_versions,
    write_digests,
)
from toolchain.fleet.spec import FLEET_JSON_VERSION, Device, Fleet, canonical
from toolchain.home import cache_dir
from toolchain.target import Target, measurable_targets

__all__ = ["device_key", "entry_dir", "install", "install_cached", "build_folder", "publish",
           "sweep", "plan_score", "BUILD_PREFIX"]

logger = logging.getLogger(__name__)

BUILD_PREFIX = ".build-"


def _fleet_cache() -> Path:
    return cache_dir() / "fleet"


def entry_dir(key: str) -> Path:
    """Where the build of `key` lives in the cache."""
    return _fleet_cache() / key


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


def _files_digest(paths: list[Path], memo: dict | None) -> dict[str, str]:
    """sha256 of each file (of each file below a folder), keyed by its full path: a user's
    package and the built-in one of the same name are both in it."""
    out = {}
    for p in paths:
        for f in [p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else []:
            if f.is_file():
                out[str(f.resolve())] = sha256_once(f, memo)
    return out


def tuning_digest(memo: dict | None = None) -> dict[str, str]:
    """sha256 of every file of the tuning database (`$FLEETC_HOME/tuning/`): every TVM build
    applies it, so a new record is another build."""
    from toolchain.home import tuning_dir

    return _files_digest([tuning_dir()], memo)


def _once(memo: dict | None, key: tuple, make: Callable[[], object]):
    """make(), remembered in the run's memo under `key`."""
    if memo is None:
        return make()
    if key not in memo:
        memo[key] = make()
    return memo[key]


def _check_package(target: Target, memo: dict | None) -> None:
    """The predictor package the build would read loads (a damaged one is a BadInputError
    naming the file, here: before any work); once per package and run."""
    from toolchain.predict.kernel import KernelPredictor
    from toolchain.predict.latency import predictor_dir

    folder = predictor_dir(target)
    if folder is not None:
        _once(memo, ("package", folder), lambda: KernelPredictor.load(folder))


def _target_digest(device: Device, targets: dict[str, Target],
                   measurable: list[Target], memo: dict | None) -> dict:
    """The target file and the predictor package(s) the device's build reads: with a
    fingerprint, those of every profiled target too (`fleet/pricing.py` mixes them all); the
    zero-shot model (targets never measured are priced by it) and the tuning database (every
    TVM build applies it)."""
    from toolchain.home import predictors_dir
    from toolchain.predict.latency import builtin_predictors_dir
    from toolchain.predict.zeroshot import model_path

    used = [targets[device.target]] + ([targets[device.proxy]] if device.proxy else [])
    used += measurable     # the fingerprint basis, and every device's candidate plans
    files: list[Path] = []
    for tgt in used:
        _check_package(tgt, memo)
        files.append(Path(tgt.source))
        files += [predictors_dir() / tgt.predictor, builtin_predictors_dir() / tgt.predictor]
    files.append(model_path())
    return _files_digest(files, memo)


def device_key(fleet: Fleet, device: Device, model_sha: str, calib_sha: str | None,
               measurable: list[Target] | None = None, memo: dict | None = None,
               planning: str | None = None) -> str:
    """The device's cache key; `measurable` (the targets a fingerprint mixes) is read from the
    registry when not given; `memo` (one dict per run) hashes each file, checks each package
    and asks the tool versions once per run; `planning` is what the fleet-wide candidate plans
    depend on (`toolchain.fleet.run.planning_digest`). Whether host packages are calibrated to
    this CPU (`--no-calibrate`) is part of it; the calibrated package itself is not (it is made
    on first use, after the key)."""
    from toolchain.predict.latency import calibration_enabled

    measurable = measurable_targets() if measurable is None else measurable
    target = _once(memo, ("target digest", device.target, device.proxy),   # same for devices
                   lambda: _target_digest(device, fleet.targets, measurable, memo))  # alike
    doc = {"fleet_json": FLEET_JSON_VERSION, "model": model_sha, "calib": calib_sha,
           "device": device.entry(), "target": target,
           "tools": _once(memo, ("tools",), tool_versions),
           "source": _source_digest(), "planning": planning,
           "calibrate": calibration_enabled(), "tuning": tuning_digest(memo)}
    return hashlib.sha256(canonical(doc).encode()).hexdigest()[:32]


def plan_score(prep, plan) -> tuple[float, float]:
    """(measured accuracy drop, accuracy) of the model under `plan` (`prep.score`), kept in
    `$FLEETC_HOME/cache/fleet/accuracy/` under a key of the model and calibration bytes, the
    plan, fleetc's sources and the tool versions: the next run of the fleet (a changed budget,
    more devices) measures no plan twice. A damaged file is measured again."""
    from dataclasses import replace

    from toolchain.files import atomic_write

    doc = {"accuracy": 1, "model": prep.model_sha256, "calib": prep.calib_sha256,
           "plan": replace(plan, target=None).to_json(), "tools": tool_versions(),
           "source": _source_digest()}
    path = _fleet_cache() / "accuracy" / (hashlib.sha256(canonical(doc).encode())
                                          .hexdigest()[:32] + ".json")
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        got = json.loads(path.read_bytes())
        return float(got["drop"]), float(got["accuracy"])
    score = prep.score(plan)
    out = (round(prep.estimator.baseline.value - score.value, 6), score.value)
    with contextlib.suppress(OSError):   # a read-only cache costs a measurement next time
        atomic_write(path, json.dumps({"drop": out[0], "accuracy": out[1]}) + "\n")
    return out


def sweep() -> list[Path]:
    """Remove the build folders left in the cache by runs that were killed (owner gone)."""
    return remove_dead_temps(_fleet_cache(), BUILD_PREFIX)


def build_folder() -> contextlib.AbstractContextManager[Path]:
    """A `.build-<pid>-<random>` folder in the cache, removed however the block ends."""
    return owned_temp_dir(_fleet_cache(), BUILD_PREFIX)


def publish(out: Path, key: str, scratch: Path) -> None:
    """Make the finished output folder `out` the cache entry of `key`: its digests written
    last, then renamed into place; an existing entry (older, damaged, or a concurrent build of
    the same key) is moved into `scratch`, the caller's build folder."""
    write_digests(out)
    publish_dir(out, entry_dir(key), scratch)


def install_cached(name: str, key: str, dest: Path) -> bool:
    """Install the cached build of `key` at `dest` when there is one that checks out. A damaged
    entry is a miss with a warning naming the device and the problem (its rebuild replaces it)."""
    entry = entry_dir(key)
    if not os.path.lexists(entry):
        return False
    remove_dead_temps(dest.parent, f".{dest.name}.tmp-")   # as `install` does
    if _installed(entry, dest):
        return True
    problem = install(entry, dest)
    if problem is not None:
        logger.warning("%s: cached build %s is damaged (%s): building it again", name, key,
                       problem)
    return problem is None


def _installed(entry: Path, dest: Path) -> bool:
    """`dest` already holds exactly the entry's files (a rerun into the same OUTDIR) and the
    entry is sound: nothing to copy. Both are checked against the entry's digests - the entry
    in full (a damaged entry is still a miss), then `dest`: the same file names, sizes and
    sha256 (a changed, added or removed file in `dest` means it is installed again)."""
    if not dest.is_dir() or dest.is_symlink() or check_digests(entry) is not None:
        return False
    try:
        listed = json.loads((entry / DIGESTS).read_bytes())["files"]
        names = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if not p.is_dir()}
        if names != set(listed):
            return False
        for name, want in listed.items():
            f = dest / name
            if f.is_symlink() or not f.is_file() or f.stat().st_size != want["size"]:
                return False
        return all(sha256_file(dest / name) == want["sha256"] for name, want in listed.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def install(entry: Path, dest: Path, attempts: int = 3) -> str | None:
    """Copy a cache entry to `dest` (created, or replaced whole): the copy is made beside `dest`
    and checked against the entry's digests before the rename, so `dest` only ever holds a
    verified copy (without digests.json). None when installed, else what is wrong (`dest` is
    then untouched); the copy is retried, as another run may be replacing the entry."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{dest.name}.tmp-"
    remove_dead_temps(dest.parent, prefix)
    problem = None
    for _ in range(attempts):
        with owned_temp_dir(dest.parent, prefix) as tmp:
            problem = _copy_checked(entry, tmp / "copy")
            if problem is None:
                publish_dir(tmp / "copy", dest, tmp)
                return None
    return problem


def _copy_checked(entry: Path, copy: Path) -> str | None:
    """Copy `entry`'s files to the new folder `copy` (modes from the umask) and check them."""
    try:
        copy.mkdir()
        for src in sorted(entry.rglob("*")):
            target = copy / src.relative_to(entry)
            if src.is_dir():
                target.mkdir()
            else:
                shutil.copyfile(src, target)
    except OSError as err:
        return f"cannot copy it: {err.strerror or type(err).__name__}"
    problem = check_digests(copy)
    if problem is None:
        (copy / DIGESTS).unlink()
    return problem
