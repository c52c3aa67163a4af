"""A measurement CSV left with only its header by an interrupted run resumes from zero."""
from __future__ import annotations

from toolchain.measure.records import measured_designs


def test_header_only_csv_means_nothing_measured(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("design,latency_ms,energy_mj\n")
    assert measured_designs(path) == set()
    path.write_text("design,latency_ms,energy_mj\nconv-a,1.5,\n")
    assert measured_designs(path) == {"conv-a"}
