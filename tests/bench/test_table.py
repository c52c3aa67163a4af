"""Loading tables per BENCH_PROTOCOL.md, the K + V access rule, and the shared scores."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from toolchain.bench.scores import (
    BudgetTally,
    acc10,
    budget_of,
    choose_direct,
    outcome,
    rankdata,
    spearman,
    write_json,
)
from toolchain.bench.table import AccessLimitError, TargetAccess, load_table, parse_names
from toolchain.errors import BadInputError


def _write(path, text: str):
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def two_files(tmp_path):
    a = _write(tmp_path / "a.csv.gz",
               "net_idx,name,x0,x1,acc_top1,lat_dev1\n"
               "2,n2,1,0,70.5,3.0\n0,n0,0,1,60.0,1.0\n1,n1,1,1,65.0,\n")
    b = _write(tmp_path / "b.csv", "net_idx,lat_dev2,energy_dev2,x0\n1,5.0,9.0,1\n3,7.0,11.0,0\n")
    return a, b


def test_outer_join_roles_and_empty_cells(two_files):
    table = load_table(two_files)
    assert table.index_name == "net_idx"
    assert table.index.tolist() == [0, 1, 2, 3]
    assert table.encoding == ("x0", "x1")
    assert table.latency == ("lat_dev1", "lat_dev2")
    assert table.energy == ("energy_dev2",)
    assert table.objectives == ("acc_top1",)
    assert table.ignored == ("name",)
    np.testing.assert_array_equal(table.column("lat_dev1"), [1.0, np.nan, 3.0, np.nan])
    np.testing.assert_array_equal(table.column("lat_dev2"), [np.nan, 5.0, np.nan, 7.0])
    # x0 comes from both files: filled where either has it, and they agree on row 1
    np.testing.assert_array_equal(table.column("x0"), [0.0, 1.0, 1.0, 0.0])
    assert table.encoding_matrix().shape == (4, 2)


def test_columns_are_read_only(two_files):
    table = load_table(two_files)
    with pytest.raises(ValueError):
        table.column("lat_dev1")[0] = 5.0


@pytest.mark.parametrize("texts, message", [
    (["x,lat_a\n1,2\n"], "no index column"),
    (["a_idx,lat_a\n1,2\n", "b_idx,lat_b\n1,2\n"], "different index columns"),
    (["a_idx,b_idx,lat_a\n1,1,2\n"], "several index columns"),
    (["a_idx,lat_a\n1,2\n1,3\n"], "repeated values"),
    (["a_idx,lat_a\n1,2,3\n"], "cells"),
    (["a_idx,lat_a\n1,2\n", "a_idx,lat_a\n1,4\n"], "different values"),
    ([""], "empty file"),
])
def test_bad_tables(tmp_path, texts, message):
    paths = [_write(tmp_path / f"t{i}.csv", t) for i, t in enumerate(texts)]
    with pytest.raises(BadInputError, match=message):
        load_table(paths)


def test_unknown_and_wrong_role_columns(two_files):
    table = load_table(two_files)
    with pytest.raises(BadInputError, match="unknown column 'lat_nope'"):
        table.column("lat_nope")
    with pytest.raises(BadInputError, match="non-numeric"):
        table.check(["name"])
    with pytest.raises(BadInputError, match="objective column"):
        table.check(["acc_top1"], role="latency")
    with pytest.raises(BadInputError, match="cannot read"):
        load_table([two_files[0].parent / "missing.csv"])


def test_parse_names():
    assert parse_names(" lat_a, lat_b ,,") == ["lat_a", "lat_b"]
    assert parse_names(None) == []


def test_access_counts_distinct_cells_and_enforces_the_limit():
    values = np.array([1.0, np.nan, 3.0, 4.0, 5.0])
    access = TargetAccess("lat_t", values, limit=3)
    assert access.rows.tolist() == [0, 2, 3, 4]
    np.testing.assert_array_equal(access.measure([0, 2]), [1.0, 3.0])
    np.testing.assert_array_equal(access.measure([2, 0]), [3.0, 1.0])  # again: free
    assert access.measurements == 2 and access.remaining == 1
    with pytest.raises(AccessLimitError, match="empty cell"):
        access.measure([1])
    with pytest.raises(AccessLimitError, match="allows 3"):
        access.measure([3, 4])
    access.measure(4)
    rows, got = access.measured()
    assert rows.tolist() == [0, 2, 4] and got.tolist() == [1.0, 3.0, 5.0]


def test_spearman_with_ties_matches_the_definition():
    pred = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 4.0])
    true = np.array([2.0, 1.0, 3.0, 3.0, 6.0, 5.0])
    assert rankdata(pred).tolist() == [1.0, 2.5, 2.5, 4.0, 6.0, 5.0]
    a, b = rankdata(pred), rankdata(true)
    assert spearman(pred, true) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert spearman(pred, -pred) == pytest.approx(-1.0)
    assert spearman(np.ones(4), np.arange(4.0)) == 0.0


def test_acc10_and_budget_choice():
    assert acc10(np.array([1.0, 1.2, 0.95]), np.array([1.0, 1.0, 1.0])) == pytest.approx(2 / 3)
    true = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    objective = np.array([50.0, 60.0, 70.0, 80.0, 90.0])
    rows = np.arange(5)
    budget = budget_of(true, 0.5)
    assert budget == 3.0
    pred = np.array([1.0, 2.0, 2.9, 3.5, 6.0])
    chosen = choose_direct(pred, objective, rows, budget)
    assert chosen == 2 and outcome(chosen, true, objective, rows, budget) == (True, 0.0)
    # nothing predicted feasible: the fastest predicted design
    assert choose_direct(pred + 10, objective, rows, budget) == 0
    assert outcome(0, true, objective, rows, budget) == (True, 20.0)
    assert outcome(3, true, objective, rows, budget) == (False, None)


def test_tally_follows_the_protocol(tmp_path):
    tally = BudgetTally()
    tally.add("lat_a", 0.1, True, 1.0)
    tally.add("lat_a", 0.1, False, None, near=True)
    tally.add("lat_a", 0.5, True, 0.0)
    tally.add("lat_b", 0.1, False, None)
    assert tally.regret("lat_a") == {"0.1": 1.0, "0.5": 0.0}
    assert tally.regret("lat_b") == {"0.1": None}
    assert tally.violation_rate("lat_a") == {"0.1": 0.5, "0.5": 0.0}
    assert tally.median_regret() == 0.5
    assert tally.overall_violation_rate() == 0.5
    assert tally.near_violation_rate() == 0.25
    write_json(tmp_path / "out" / "r.json", {"x": 1})
    assert (tmp_path / "out" / "r.json").read_text().strip().startswith("{")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["r.json"]
