"""The tuning database: MetaSchedule records per code-generation target, under
`$FLEETC_HOME/tuning/`.

Key: an LLVM target's code generation - `mtriple` (this machine's triple when the target names
none), `mcpu` and `mattr` (sorted). Every target with the same key shares one folder
`tuning/<mcpu>-<hash>/` (the key itself in `key.json`), so records tuned for one model or device
serve every other model and device that generates the same code, and records for one feature set
are never applied to another (`+dotprod` and plain NEON are two keys). The thread count is not
part of the key: a schedule is correct for any thread count (it is tuned for the target's
`num-cores`).

Files: `workloads.json` and `records.json` in TVM's JSONDatabase format. Records refer to
workloads by line number, so two processes must never append at once: writers (`save_records`)
merge under an exclusive `flock` on `.lock`, write both files beside them and rename them into
place; readers (`load_database`) read under a shared `flock`. A killed writer leaves the old
pair intact (and at most a temporary folder, removed by the next writer).

Tuning extracts its workloads from the module `passes.emit_tvm.tuning_module` gives - the
module the build's `apply_tuning_records` hook passes to `apply_database` - after
`inline_scalars` on both sides, so a workload a model was tuned with is found again when any
model with that function is built.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from toolchain.home import tuning_dir

__all__ = ["codegen_key", "database_dir", "load_database", "save_records", "inline_scalars",
           "apply_database", "count_records", "KEEP_PER_WORKLOAD"]

logger = logging.getLogger(__name__)

KEEP_PER_WORKLOAD = 8      # best records kept per workload (the search starts from them)
_WORKLOADS, _RECORDS, _LOCK, _KEY = "workloads.json", "records.json", ".lock", "key.json"


def codegen_key(tgt) -> dict:
    """What the generated code depends on: kind, mtriple, mcpu, mattr of a tvm Target (its host
    for a non-llvm target)."""
    t = tgt if tgt.kind.name == "llvm" or tgt.host is None else tgt.host
    attrs = t.attrs
    triple = str(attrs.get("mtriple", "") or "")
    if not triple and t.kind.name == "llvm":
        from tvm.target import codegen

        triple = str(codegen.llvm_get_system_triple())
    return {"kind": tgt.kind.name, "mtriple": triple, "mcpu": str(attrs.get("mcpu", "") or ""),
            "mattr": sorted(str(a) for a in (attrs.get("mattr") or []))}


def database_dir(tgt, home: Path | None = None) -> Path:
    """The folder of the target's records: `<tuning>/<mcpu or kind>-<hash of the key>`."""
    key = codegen_key(tgt)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", key["mcpu"] or key["kind"])[:40]
    return (home or tuning_dir()) / f"{stem}-{digest}"


@contextlib.contextmanager
def _locked(folder: Path, exclusive: bool) -> Iterator[None]:
    with open(folder / _LOCK, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_database(tgt, folder: Path | None = None):
    """The target's records in a MemoryDatabase (None when there are none). Reading never
    changes the files."""
    from tvm.s_tir import meta_schedule as ms

    folder = folder or database_dir(tgt)
    if not (folder / _RECORDS).is_file():
        return None
    with _locked(folder, exclusive=False):
        stored = ms.database.JSONDatabase(str(folder / _WORKLOADS), str(folder / _RECORDS),
                                          allow_missing=False)
        records = stored.get_all_tuning_records()
    memory = ms.database.MemoryDatabase()
    _commit(memory, records)
    return memory


def count_records(db) -> tuple[int, int]:
    """(workloads with a record, records) of a database."""
    records = db.get_all_tuning_records() if db is not None else []
    return len({_workload_id(r) for r in records}), len(records)


def save_records(tgt, records: Iterable, folder: Path | None = None) -> Path:
    """Merge records (successful ones; the best KEEP_PER_WORKLOAD per workload) into the
    target's database, safely while other processes read or write it. Returns its folder."""
    from tvm.s_tir import meta_schedule as ms

    folder = folder or database_dir(tgt)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder, exclusive=True):
        for old in folder.glob(".merge-*"):      # a killed writer's leftovers (we hold the lock)
            shutil.rmtree(old, ignore_errors=True)
        merged = list(records)
        if (folder / _RECORDS).is_file():
            stored = ms.database.JSONDatabase(str(folder / _WORKLOADS), str(folder / _RECORDS),
                                              allow_missing=False)
            merged += list(stored.get_all_tuning_records())
        tmp = Path(tempfile.mkdtemp(prefix=".merge-", dir=folder))
        try:
            out = ms.database.JSONDatabase(str(tmp / _WORKLOADS), str(tmp / _RECORDS),
                                           allow_missing=True)
            _commit(out, _best(merged))
            del out
            (tmp / _KEY).write_text(json.dumps(codegen_key(tgt), indent=1) + "\n")
            for name in (_KEY, _WORKLOADS, _RECORDS):
                os.replace(tmp / name, folder / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _workload_id(record) -> str:
    import tvm_ffi

    return str(tvm_ffi.structural_hash(record.workload.mod))


def _best(records: list) -> list:
    """Successful records, the fastest KEEP_PER_WORKLOAD of each workload, duplicates out."""
    by_workload: dict[str, list] = {}
    for r in records:
        secs = [float(s) for s in (r.run_secs or [])]
        if secs and all(0 < s < 1e9 for s in secs):
            by_workload.setdefault(_workload_id(r), []).append((sum(secs) / len(secs), r))
    out = []
    for rows in by_workload.values():
        seen: set[str] = set()
        for _, r in sorted(rows, key=lambda row: row[0]):
            trace = str(r.trace.as_json())
            if trace not in seen and len(seen) < KEEP_PER_WORKLOAD:
                seen.add(trace)
                out.append(r)
    return out


def _commit(db, records: Iterable) -> None:
    from tvm.s_tir import meta_schedule as ms

    for r in records:
        workload = db.commit_workload(r.workload.mod)
        db.commit_tuning_record(ms.database.TuningRecord(
            r.trace, workload, r.run_secs, r.target, r.args_info))


def inline_scalars(mod):
    """Every PrimFunc with its scalar intermediate blocks inlined into their consumers.

    The build legalizes without constant folding, so a Clip's bounds stay computations inside
    the fused conv (`T_where(isnan(min), ...)` blocks writing 0-d buffers); MetaSchedule's rules
    cannot tile such a function (reverse_compute_at fails on the epilogue: 18 of the 47
    workloads of MobileNetV2-160). Inlined, the bounds are expressions of the epilogue."""
    from tvm import s_tir, tirx

    out = mod
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tirx.PrimFunc):
            continue
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        local = list(getattr(sch.get(root), "alloc_buffers", []))   # intermediate buffers
        scalars = [b for b in sch.get_child_blocks(root)
                   if len(sch.get(b).writes) == 1 and not sch.get(b).writes[0].region
                   and any(sch.get(b).writes[0].source.same_as(a) for a in local)]
        if not scalars:
            continue
        try:
            for block in scalars:
                sch.compute_inline(block)
        except Exception:      # left as it is: tuning skips a function it cannot schedule
            continue
        out = out if out is not mod else mod.clone()
        out[gv] = sch.mod["main"].with_attrs(func.attrs) if func.attrs else sch.mod["main"]
    return out


def apply_database(mod, tgt, folder: Path | None = None, mark: str | None = None):
    """Schedule the functions of a legalized and fused relax module that the target's database
    has records for (MetaSchedule's ApplyDatabase; `mark`: one more attribute set on them).

    Returns (module, functions from records, functions). Without records for the target the
    module comes back unchanged (and 0 hits)."""
    from tvm import relax, tirx

    db = load_database(tgt, folder)
    if db is None:
        return mod, 0, 0
    with tgt, db:
        scheduled = relax.transform.MetaScheduleApplyDatabase()(inline_scalars(mod))
    hits = 0
    mod = mod.clone()
    for gv, func in list(scheduled.functions_items()):   # the others stay as they were
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None \
                and func.attrs.get("tirx.is_scheduled"):
            hits += 1
            mod[gv] = func.with_attr(mark, True) if mark else func
    total = sum(1 for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc))
    logger.info("tuning database %s: %d of %d functions scheduled from records",
                folder or database_dir(tgt), hits, total)
    return mod, hits, total
