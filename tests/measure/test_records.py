"""Measurement CSVs and timing summaries: validation, resumable writing, outliers."""
from __future__ import annotations

import pytest

from toolchain.errors import BadInputError
from toolchain.measure.records import COLUMNS, RowWriter, measured_designs, read_measurements
from toolchain.measure.timing import TimingConfig, summarize, time_callable


@pytest.mark.parametrize("text,message", [
    ("design,latency\nconv,1.0\n", "missing column"),
    ("latency_ms\n1.0\n", "missing column.*design"),
    ("design,latency_ms\nconv,0\n", "positive"),
    ("design,latency_ms\nconv,-2\n", "positive"),
    ("design,latency_ms\nconv,fast\n", "not a number"),
    ("design,latency_ms\nconv,nan\n", "positive"),
    ("design,latency_ms\nconv,1\nconv,2\n", "appears twice"),
    ("design,latency_ms,energy_mj\nconv,1,0\n", "energy_mj must be a positive"),
    ("design,latency_ms\n", "no measurements"),
])
def test_bad_measurement_csv(tmp_path, text, message):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(BadInputError, match=message) as err:
        read_measurements(path)
    assert "\n" not in str(err.value)


def test_user_csv_minimal_columns(tmp_path):
    path = tmp_path / "rpi4.csv"
    path.write_text("design,latency_ms,energy_mj\nconv-a,12.5,80\ngemm-b,0.5,\n")
    rows = read_measurements(path)
    assert [(r.design, r.latency_ms, r.energy_mj) for r in rows] == [
        ("conv-a", 12.5, 80.0), ("gemm-b", 0.5, None)]


def test_writer_resumes_and_repairs_torn_line(tmp_path):
    path = tmp_path / "out.csv"
    with RowWriter(path) as w:
        w.write({"design": "a", "latency_ms": 1.0})
        w.write({"design": "b", "latency_ms": 2.0})
    with open(path, "a") as f:          # killed in the middle of a row
        f.write("c,3.0,,1")
    assert measured_designs(path) == {"a", "b"}
    with RowWriter(path) as w:
        w.write({"design": "c", "latency_ms": 3.5})
    rows = read_measurements(path)
    assert [r.design for r in rows] == ["a", "b", "c"] and rows[-1].latency_ms == 3.5
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)


def test_writer_refuses_foreign_csv(tmp_path):
    path = tmp_path / "user.csv"
    path.write_text("design,latency_ms\na,1\n")
    with pytest.raises(BadInputError, match="other columns"):
        RowWriter(path)


def test_summarize_drops_high_outliers():
    t = summarize([1.0, 1.01, 0.99, 1.02, 0.98, 5.0, 1.0])
    assert t.outliers == 1 and t.repeats == 6
    assert t.median_ms == pytest.approx(1.0, abs=0.01)
    assert t.spread_pct < 5


def test_time_callable_counts_runs():
    calls = []
    t = time_callable(lambda: calls.append(1), TimingConfig(warmup=2, repeats=5,
                                                              min_sample_ms=0.5), clock="thread")
    assert t.repeats + t.outliers == 5 and t.number >= 1 and t.clock == "thread"
    assert len(calls) == 2 + 1 + 5 * t.number
