"""Published multi-device tables, loaded the way BENCH_PROTOCOL.md says, and the access rule.

API (stable; `bench fewshot` / `bench amortize` build on it):

    table = load_table(["data/nb201.csv.gz", "more.csv"])   # outer join on the one `*_idx` column
    table.index_name, table.index, table.n_rows
    table.encoding / .latency / .energy / .objectives      # column names by role, file order
    table.column("lat_pixel3")                             # float64 array, NaN = empty cell
    table.encoding_matrix()                                # (n_rows, n_encoding) float64
    table.check(["lat_pixel3"], role="latency")            # BadInputError on unknown / wrong role
    names = parse_names("lat_a,lat_b")                     # comma-separated option -> list

    access = TargetAccess("lat_raspi4", table.column("lat_raspi4"), limit=K + V)
    access.rows            # the rows that exist for this target (its filled cells): free to know
    access.measure(rows)   # their values; each distinct row counts once toward `limit`
    access.measurements    # target cells read so far (goes into the JSON)

Column roles, by name: `*_idx` index; `lat_*` latency (ms); `energy_*` energy (mJ); `acc*`
objectives; non-numeric columns (e.g. `arch_str`) ignored; every other numeric column is the
design encoding. A method gets the target column only through a `TargetAccess`, which refuses
to hand out more than `limit` distinct cells (a method that asks for more has a bug).
"""
from __future__ import annotations

import csv
import gzip
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain.errors import BadInputError

__all__ = ["Table", "TargetAccess", "AccessLimitError", "load_table", "parse_names", "ROLES"]

logger = logging.getLogger(__name__)

ROLES = ("index", "latency", "energy", "objective", "encoding", "ignored")


def role_of(name: str) -> str:
    """The protocol role of a numeric column, from its name alone."""
    if name.endswith("_idx"):
        return "index"
    if name.startswith("lat_"):
        return "latency"
    if name.startswith("energy_"):
        return "energy"
    if name.startswith("acc"):
        return "objective"
    return "encoding"


@dataclass(frozen=True)
class Table:
    """Joined columns of one or more files; cells are float64, NaN where empty."""

    index_name: str
    index: np.ndarray
    columns: dict[str, np.ndarray] = field(repr=False)
    encoding: tuple[str, ...]
    latency: tuple[str, ...]
    energy: tuple[str, ...]
    objectives: tuple[str, ...]
    ignored: tuple[str, ...] = ()

    @property
    def n_rows(self) -> int:
        return len(self.index)

    def column(self, name: str) -> np.ndarray:
        """The cells of one column (a read-only view); BadInputError names unknown columns."""
        self.check([name])
        return self.columns[name]

    def encoding_matrix(self) -> np.ndarray:
        """Every encoding column side by side, (n_rows, len(encoding))."""
        if not self.encoding:
            return np.zeros((self.n_rows, 0))
        return np.column_stack([self.columns[c] for c in self.encoding])

    def check(self, names: Iterable[str], role: str | None = None) -> None:
        """Every name is a numeric column of the table (and of `role`, if given)."""
        for name in names:
            if name not in self.columns:
                hint = " (non-numeric columns are ignored)" if name in self.ignored else ""
                raise BadInputError(f"unknown column {name!r}{hint}; known: "
                                    f"{', '.join(self.latency + self.energy + self.objectives)}")
            if role is not None and role_of(name) != role:
                raise BadInputError(f"column {name!r} is a {role_of(name)} column, "
                                    f"expected a {role} column")


def parse_names(text: str | None) -> list[str]:
    """`"a,b, c"` -> `["a", "b", "c"]`; empty or None -> `[]`."""
    if not text:
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", newline="") as handle:
                text = handle.read()
        else:
            text = path.read_text()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise BadInputError(f"cannot read {path}: {err}") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or not rows[0]:
        raise BadInputError(f"{path}: empty file, expected a CSV header")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if r]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise BadInputError(f"{path}:{number}: {len(row)} cells, header has {len(header)}")
    return header, body


def _to_float(cells: Sequence[str]) -> np.ndarray | None:
    """The cells as float64 (empty -> NaN), or None if any filled cell is not a number."""
    out = np.full(len(cells), np.nan)
    for i, cell in enumerate(cells):
        cell = cell.strip()
        if cell:
            try:
                out[i] = float(cell)
            except ValueError:
                return None
    return out


def _index_column(path: Path, header: list[str]) -> str:
    found = [h for h in header if h.endswith("_idx")]
    if len(found) != 1:
        what = "no index column" if not found else f"several index columns {found}"
        raise BadInputError(f"{path}: {what}; expected exactly one column named '*_idx'")
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise BadInputError(f"{path}: repeated column names {duplicates}")
    return found[0]


def _load_one(path: Path) -> tuple[str, list[str], dict[str, np.ndarray], list[str]]:
    header, body = _read_rows(path)
    index_name = _index_column(path, header)
    cells = list(zip(*body, strict=True)) if body else [() for _ in header]
    keys = [k.strip() for k in cells[header.index(index_name)]]
    if len(set(keys)) != len(keys) or any(not k for k in keys):
        raise BadInputError(f"{path}: index column {index_name!r} has empty or repeated values")
    numeric, ignored = {}, []
    for name, column in zip(header, cells, strict=True):
        if name == index_name:
            continue
        values = _to_float(column)
        if values is None:
            ignored.append(name)
        else:
            numeric[name] = values
    return index_name, keys, numeric, ignored


def _sorted_keys(keys: list[str]) -> list[str]:
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


def _merge(name: str, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Fill a column seen in an earlier file; the same cell filled twice must agree."""
    both = ~np.isnan(old) & ~np.isnan(new)
    if np.any(both & ~np.isclose(old, new, rtol=1e-9, atol=0.0)):
        raise BadInputError(f"column {name!r} appears in several files with different values")
    return np.where(np.isnan(old), new, old)


def load_table(paths: Sequence[str | Path]) -> Table:
    """Read and outer-join the files on their one shared `*_idx` column."""
    if not paths:
        raise BadInputError("no data file given (--data FILE)")
    loaded = [(Path(p), *_load_one(Path(p))) for p in paths]
    index_names = {index_name for _, index_name, _, _, _ in loaded}
    if len(index_names) > 1:
        raise BadInputError("data files have different index columns: "
                            + ", ".join(f"{p} ({i})" for p, i, _, _, _ in loaded))
    keys = _sorted_keys(list({k for _, _, ks, _, _ in loaded for k in ks}))
    position = {k: i for i, k in enumerate(keys)}
    columns: dict[str, np.ndarray] = {}
    ignored: list[str] = []
    for _path, _index, file_keys, numeric, file_ignored in loaded:
        rows = np.array([position[k] for k in file_keys], dtype=np.int64)
        for name, values in numeric.items():
            full = np.full(len(keys), np.nan)
            full[rows] = values
            columns[name] = _merge(name, columns[name], full) if name in columns else full
        ignored += [n for n in file_ignored if n not in ignored and n not in numeric]
    ignored = [n for n in ignored if n not in columns]
    for values in columns.values():
        values.setflags(write=False)
    try:
        index = np.array([int(k) for k in keys], dtype=np.int64)
    except ValueError:
        index = np.array(keys)
    by_role = {role: tuple(n for n in columns if role_of(n) == role) for role in ROLES}
    logger.info("loaded %d rows, %d columns from %d file(s)", len(keys), len(columns), len(paths))
    return Table(index_name=index_names.pop(), index=index, columns=columns,
                 encoding=by_role["encoding"], latency=by_role["latency"],
                 energy=by_role["energy"], objectives=by_role["objective"],
                 ignored=tuple(ignored))


class AccessLimitError(RuntimeError):
    """A method asked for more target cells than the protocol allows (a bug in the method)."""


class TargetAccess:
    """Hands a method the cells of one target column, at most `limit` distinct ones.

    `rows` (the filled rows) may be read freely: per the protocol only those rows exist for the
    target. Values come only from `measure`; asking again for a row already read is free."""

    def __init__(self, name: str, values: np.ndarray, limit: int):
        self.name = name
        self.limit = int(limit)
        self._values = np.asarray(values, dtype=float)
        self.rows = np.flatnonzero(~np.isnan(self._values))
        self._filled = ~np.isnan(self._values)
        self._seen: dict[int, float] = {}

    @property
    def measurements(self) -> int:
        return len(self._seen)

    @property
    def remaining(self) -> int:
        return self.limit - len(self._seen)

    def measured(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows read so far (in reading order) and their values."""
        rows = np.fromiter(self._seen, dtype=np.int64, count=len(self._seen))
        return rows, np.array([self._seen[int(r)] for r in rows], dtype=float)

    def measure(self, rows: Iterable[int] | np.ndarray) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if rows.size and not np.all(self._filled[rows]):
            raise AccessLimitError(f"{self.name}: asked for an empty cell (row not measured)")
        new = {int(r) for r in rows} - self._seen.keys()
        if len(self._seen) + len(new) > self.limit:
            raise AccessLimitError(f"{self.name}: {len(self._seen) + len(new)} cells asked, "
                                   f"the protocol allows {self.limit}")
        for r in new:
            self._seen[r] = float(self._values[r])
        return np.array([self._seen[int(r)] for r in rows], dtype=float)
