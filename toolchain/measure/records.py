"""Measurement CSVs: `design,latency_ms[,energy_mj]` plus optional spread / environment columns.

The same format is written by `fleetc profile` and handed in by users for remote devices.
Writing is resumable: rows are appended and flushed one at a time, so an interrupted run keeps
every finished row; a torn last line (killed mid-write) is cut off before appending again.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import BadInputError

__all__ = ["Row", "COLUMNS", "read_measurements", "measured_designs", "RowWriter"]

logger = logging.getLogger(__name__)

COLUMNS = ("design", "latency_ms", "energy_mj", "spread_pct", "min_ms", "repeats", "number",
           "outliers", "clock", "target", "backend", "threads", "measured_at")
REQUIRED = ("design", "latency_ms")


@dataclass(frozen=True)
class Row:
    """One measured design (other columns of the CSV are kept as text in `extra`)."""

    design: str
    latency_ms: float
    energy_mj: float | None = None
    extra: tuple[tuple[str, str], ...] = ()


def _number(text: str, column: str, where: str, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadInputError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value) or (positive and value <= 0):
        raise BadInputError(f"{where}: {column} must be a positive number, got {text!r}")
    return value


def read_measurements(path: str | os.PathLike) -> list[Row]:
    """Validated rows; a missing column, a bad number, a non-positive latency or a repeated
    design raise BadInputError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such measurement file")
    text = path.read_text(errors="replace")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a torn last line from an interrupted run
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise BadInputError(f"{path}: missing column(s) {', '.join(missing)} (a measurement CSV "
                            f"has columns design,latency_ms[,energy_mj])")
    rows, seen = [], set()
    for line, rec in enumerate(reader, start=2):
        where = f"{path}:{line}"
        design = (rec.get("design") or "").strip()
        if not design:
            raise BadInputError(f"{where}: empty design name")
        if design in seen:
            raise BadInputError(f"{where}: design {design!r} appears twice")
        seen.add(design)
        latency = _number(rec.get("latency_ms") or "", "latency_ms", where, positive=True)
        energy_text = (rec.get("energy_mj") or "").strip()
        energy = _number(energy_text, "energy_mj", where, True) if energy_text else None
        extra = tuple((k, v) for k, v in rec.items()
                      if k not in ("design", "latency_ms", "energy_mj") and k and v)
        rows.append(Row(design, latency, energy, extra))
    if not rows:
        raise BadInputError(f"{path}: no measurements")
    return rows


def measured_designs(path: str | os.PathLike) -> set[str]:
    """Designs already in a (possibly partial) CSV; empty when the file does not exist."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if len(lines) <= 1:  # only the header (or a torn first line) of an interrupted run
        return set()
    return {r.design for r in read_measurements(path)}


class RowWriter:
    """Appends rows to a CSV, one flushed and fsynced line at a time (resumable)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            self._csv.writeheader()
            self._flush()
        elif self._header() != list(COLUMNS):
            self._file.close()
            raise BadInputError(f"{self.path}: exists with other columns; resume only into a "
                                "CSV written by fleetc profile")

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            logger.warning("%s: dropping a torn last line", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def _header(self) -> list[str]:
        with open(self.path, newline="") as f:
            return next(csv.reader(f), [])

    def _flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def write(self, values: dict) -> None:
        self._csv.writerow({k: _fmt(v) for k, v in values.items()})
        self._flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
