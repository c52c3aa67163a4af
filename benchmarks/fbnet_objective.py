"""A synthetic objective for FBNet-style tables (no accuracy is published for that space), so
that `fleetc bench amortize` can be smoke-checked there: writes `<index>,acc_capacity`.

acc_capacity = sum over the 22 layers of log2(1 + e * k^2 / 9) for block choice (k, e) of the
data README's order (0 k3_e1, 1 k3_e1_g2, 2 k3_e3, 3 k3_e6, 4 k5_e1, 5 k5_e1_g2, 6 k5_e3,
7 k5_e6, 8 skip = 0; g2 halves the capacity): a stand-in that grows with the block's size, as
accuracy tends to. It is not an accuracy; figures with it check that the bench runs.

Run: .venv/bin/python benchmarks/fbnet_objective.py data/fbnet.csv.gz OUT.csv
then: fleetc bench amortize --data data/fbnet.csv.gz --data OUT.csv --objective acc_capacity ...
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolchain.bench.table import load_table  # noqa: E402
from toolchain.files import atomic_write  # noqa: E402

KERNEL = np.array([3, 3, 3, 3, 5, 5, 5, 5, 0], float)
EXPANSION = np.array([1, 1, 3, 6, 1, 1, 3, 6, 0], float)
GROUPED = np.array([1, 0.5, 1, 1, 1, 0.5, 1, 1, 0])


def capacity(codes: np.ndarray) -> np.ndarray:
    c = codes.astype(int)
    return (np.log2(1 + EXPANSION[c] * KERNEL[c] ** 2 / 9) * GROUPED[c]).sum(axis=1)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    table = load_table([sys.argv[1]])
    codes = table.encoding_matrix()
    if codes.size == 0 or np.nanmax(codes) > 8 or np.nanmin(codes) < 0:
        sys.exit("expected block choices 0..8 in every encoding column")
    value = capacity(codes)
    lines = [f"{table.index_name},acc_capacity"]
    lines += [f"{i},{v:.6f}" for i, v in zip(table.index, value, strict=True)]
    atomic_write(sys.argv[2], "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
