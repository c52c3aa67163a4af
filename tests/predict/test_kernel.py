"""Kernel-level latency predictor: units from kernels (float, QDQ, plans), fitting, packages."""
from __future__ import annotations

import json

import numpy as np
import pytest

from passes import load_and_analyze
from toolchain.errors import BadInputError, UnsupportedKernelError
from toolchain.measure.probe import build_probe, probe_set
from toolchain.measure.zoo import mobilenet_v2
from toolchain.predict.kernel import KernelPredictor, nnls, spearman
from toolchain.predict.latency import design_units, model_units, predict_plan
from toolchain.predict.units import Unit, graph_units
from toolchain.space import Choice, Plan


def test_nnls_matches_brute_force():
    rng = np.random.default_rng(0)
    A, b = rng.normal(size=(30, 4)), rng.normal(size=30)
    x = nnls(A, b)
    assert np.all(x >= 0)
    best = min((np.linalg.norm(A[:, list(s)] @ np.clip(np.linalg.lstsq(A[:, list(s)], b,
                                                                        rcond=None)[0], 0, None)
                               - b), s)
               for s in [(0,), (1,), (2,), (3,), (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3),
                         (0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3), (0, 1, 2, 3)])
    assert np.linalg.norm(A @ x - b) <= best[0] + 1e-9


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def _unit(name, kind, macs, elems):
    cls, precision = kind.split("/")
    return Unit(name, cls, precision, macs=macs, in_elems=elems, out_elems=elems, cin=16,
                cout=16, rows=elems / 8)


def test_fit_recovers_additive_costs_and_lists_unknown(tmp_path):
    """Designs made of two kinds with known linear costs: the fit predicts new sums exactly,
    the package round-trips as JSON, and a kind never seen is listed, not counted as zero."""
    rng = np.random.default_rng(1)
    designs, y = [], []
    for i in range(40):
        units = [_unit(f"c{i}{j}", "conv/fp32", rng.uniform(1e6, 5e7), rng.uniform(1e4, 1e6))
                 for j in range(rng.integers(1, 4))]
        units += [_unit(f"a{i}", "Add/fp32", 0, rng.uniform(1e4, 1e6))]
        designs.append(units)
        y.append(0.01 + sum(2e-8 * u.macs + (3e-7 if u.cls == "Add" else 1e-7) * u.in_elems
                            for u in units))
    model = KernelPredictor.fit(designs, y, {"name": "synthetic", "target": "none"})
    assert model.meta["held_out"]["median_abs_rel_err"] < 0.01
    folder = model.save(tmp_path / "pkg")
    assert sorted(p.name for p in folder.iterdir()) == ["digests.json", "meta.json", "model.json"]
    loaded = KernelPredictor.load(folder)
    new = [_unit("x", "conv/fp32", 2e7, 5e5), _unit("a", "Add/fp32", 0, 2e5),
           _unit("q", "conv/int8", 2e7, 5e5)]
    pred = loaded.predict_units(new)
    assert pred.unknown == ("q (conv/int8)",) and not pred.complete
    assert pred.latency_ms == pytest.approx(0.01 + 2e-8 * 2e7 + 1e-7 * 5e5 + 3e-7 * 2e5,
                                            rel=0.02)
    with pytest.raises(UnsupportedKernelError, match="conv/int8"):
        loaded.predict_units(new, strict=True)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format"] == "fleetc.kernel-latency" and meta["version"] == 1


def test_load_rejects_non_packages(tmp_path):
    with pytest.raises(BadInputError, match="not a predictor package"):
        KernelPredictor.load(tmp_path)
    (tmp_path / "meta.json").write_text('{"format": "pickle", "version": 1}')
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(BadInputError, match="format"):
        KernelPredictor.load(tmp_path)


def test_qdq_units_mark_precision_and_conversions():
    """An int8 probe as onnxruntime runs it: one quantize at the input, integer convs with free
    requantization between them; the last conv, whose ReLU output leaves the model in float,
    is left unfused by onnxruntime (float compute on dequantized weights: int8w)."""
    units = model_units(build_probe("chain-32-3-56-1-int8"))
    kinds = [u.kind for u in units]
    assert kinds.count("conv/int8") == 2 and kinds.count("conv/int8w") == 1
    assert "conv/fp32" not in kinds
    assert kinds.count("quantize/int8") == 1 and kinds.count("dequantize/int8") == 1
    q = next(u for u in units if u.cls == "quantize")
    assert q.edge_in == 32 * 56 * 56 and q.inner == 0   # at the model's edge
    from toolchain.measure.probe import quantize_qdq

    float_chain = build_probe("chain-32-3-56-1-fp32")
    first = next(n.name for n in float_chain.graph.node if n.op_type == "Conv")
    mixed = [u.kind for u in model_units(quantize_qdq(float_chain, nodes=[first]))]
    assert mixed.count("conv/fp32") == 2 and mixed[:2] == ["quantize/int8", "conv/int8"]
    assert mixed.count("dequantize/int8") == 1
    # an int8 layer between float ones: both conversions are inside the model
    middle = [n.name for n in float_chain.graph.node if n.op_type == "Conv"][1]
    island = [u for u in model_units(quantize_qdq(float_chain, nodes=[middle]))
              if u.cls in ("quantize", "dequantize")]
    assert len(island) == 2 and all(u.inner == 32 * 56 * 56 and not u.edge_in for u in island)


def test_plan_units_follow_precision_width_and_resolution():
    from toolchain.predict.units import units_under_plan

    graph = load_and_analyze(mobilenet_v2(96, 0.5))
    base = graph_units(graph)
    convs = [u for u in base if u.cls in ("conv", "dwconv")]
    plan = Plan(kernels={u.name: Choice("int8") for u in convs})
    units = units_under_plan(graph, plan)
    kinds = [u.kind for u in units]
    assert units[0].cls == "quantize" and units[0].inner == 0  # the graph input
    stem = next(u for u in units if u.name == convs[0].name)
    assert stem.precision == "int8"
    # The quantize pass quantizes residual Adds with their int8 inputs: no conversions inside.
    adds = [u for u in units if u.cls == "Add"]
    assert adds and all(a.precision == "int8" for a in adds)
    assert kinds.count("quantize/int8") == 1 and kinds.count("dequantize/int8") == 1
    half = Plan(kernels={u.name: Choice("int8") for u in convs if "expand" in u.name})
    mixed_units = units_under_plan(graph, half)
    mixed = [u.kind for u in mixed_units]
    assert mixed.count("quantize/int8") == mixed.count("conv/int8") >= 5  # one per expand conv
    # conversions next to a float conv (onnxruntime changes layout there too) are `inner`:
    # every dequantize (read by the float depthwise conv), and the quantizes of a project
    # conv's output, not those of a residual Add's
    conv_out = {u.output for u in mixed_units if u.cls == "conv" and u.precision == "fp32"}
    dq = [u for u in mixed_units if u.cls == "dequantize"]
    assert dq and all(u.inner == u.in_elems > 0 for u in dq)
    q = [u for u in mixed_units if u.cls == "quantize"]
    assert all(u.inner == (u.in_elems if u.inputs[0] in conv_out else 0) for u in q)
    assert 0 < sum(u.inner > 0 for u in q) < len(q)
    last = convs[-1]
    narrow = {u.name: u for u in units_under_plan(graph, Plan(
        kernels={last.name: Choice("fp32", 0.5)}))}
    assert narrow[last.name].cout < last.cout
    small = units_under_plan(graph, Plan(input_shape={graph.inputs[0]: [1, 3, 64, 64]}))
    assert sum(u.macs for u in small) < 0.6 * sum(u.macs for u in base)


def test_predict_plan_prices_int8_cheaper_when_fitted_so():
    graph = load_and_analyze(mobilenet_v2(96, 0.5))
    units = graph_units(graph)
    weights = {k: {"kernel": 0.001, "macs": 0.02, "in_elems": 0.1} for k in
               {u.kind for u in units}}
    weights["conv/int8"] = {"kernel": 0.001, "macs": 0.005, "in_elems": 0.05}
    weights["conv/int8w"] = weights["dwconv/int8w"] = {"kernel": 0.001, "macs": 0.03,
                                                       "in_elems": 0.1}
    weights["dwconv/int8"] = weights["conv/int8"]
    for k in ("quantize/int8", "dequantize/int8", "Add/int8", "Clip/int8",
              "GlobalAveragePool/int8", "Reshape/int8"):
        weights[k] = {"kernel": 0.001, "in_elems": 0.1}
    model = KernelPredictor(weights, {"model": 0.01}, {"name": "hand"})
    fp32 = predict_plan(model, graph, Plan())
    all_int8 = Plan(kernels={u.name: Choice("int8") for u in units
                             if u.cls in ("conv", "dwconv")})
    int8 = predict_plan(model, graph, all_int8)
    assert int8.complete and fp32.complete
    assert int8.latency_ms < fp32.latency_ms


def test_probe_set_is_fixed_and_named():
    full = probe_set(("fp32", "int8"))
    names = [p.name for p in full]
    assert len(names) == len(set(names)) > 300
    assert names == [p.name for p in probe_set(("fp32", "int8"))]
    quick = probe_set(("fp32", "int8"), "quick")
    assert 40 <= len(quick) <= 100 and set(p.name for p in quick) <= set(names)
    assert not any(p.precision == "int8" for p in probe_set(("fp32",)))
    assert design_units("not-a-probe") is None
    with pytest.raises(BadInputError):
        probe_set(("fp32",), "huge")


def test_weights_turn_cold_when_the_model_outgrows_the_cache():
    from toolchain.predict.kernel import context_of, features

    conv = Unit("c", "conv", "fp32", macs=1e6, in_elems=1e4, out_elems=1e4,
                weight_elems=2e6, cin=512, cout=512, k_area=9, rows=512)   # 8 MB of fp32
    int8 = Unit("q", "conv", "int8", weight_elems=2e6)                     # 2 MB
    # the bytes one inference touches: weights plus activations written (4e4 + 0 bytes)
    assert context_of([conv, int8]) == pytest.approx(10e6 + 4e4)
    assert features(conv, context=4e6)["cold_weight_bytes"] == 0.0       # fits: stays cached
    assert features(conv, context=64 << 20)["cold_weight_bytes"] == pytest.approx(8.0)  # MB
    between = features(conv, context=20 << 20)["cold_weight_bytes"]
    assert 0.0 < between < 8.0
    # the prediction prices each kernel in the context of the whole list it is given
    model = KernelPredictor({"conv/fp32": {"cold_weight_bytes": 1.0}}, {"model": 0.0})
    alone = model.predict_units([conv]).latency_ms
    crowded = model.predict_units([conv] + [conv] * 7).latency_ms / 8
    assert alone == 0.0 and crowded == pytest.approx(8.0)


def test_grouped_convs_are_priced_apart_from_dense_and_depthwise():
    """A grouped (not depthwise) conv carries its group count and the grouped features; dense
    and depthwise convs have them at zero. The new probes are in the full set only, so the
    quick and fingerprint subsets (and measurements made with them) stay as they were."""
    from toolchain.predict.kernel import features

    def conv_unit(name):
        [u] = [u for u in design_units(name) if u.cls in ("conv", "dwconv")]
        return u

    grouped = conv_unit("conv-96-96-1-1-28-4-relu-fp32")
    dense = conv_unit("conv-64-64-3-1-56-1-relu-fp32")
    depthwise = conv_unit("conv-144-144-3-1-56-144-clip-fp32")
    assert (grouped.cls, grouped.groups, grouped.cin, grouped.cout) == ("conv", 4, 24, 96)
    assert dense.groups == 1 and depthwise.cls == "dwconv" and depthwise.groups == 1
    f = features(grouped)
    assert f["grouped"] == 1.0 and f["macs_grouped"] == pytest.approx(grouped.macs * 1e-6)
    # alone in a model its input and output are the model's edges, NCHW already: no layout
    # change there, unlike a dense conv's
    assert f["edge_in"] == f["edge_out"] == 0.0 and grouped.edge_in == grouped.in_elems
    assert features(dense)["edge_in"] > 0
    assert f["im2col_elems"] == 0.0 and f["group_calls"] == pytest.approx(4e-6)
    [g3x3] = [u for u in design_units("conv-64-64-3-1-56-8-relu-fp32") if u.cls == "conv"]
    assert features(g3x3)["im2col_elems"] == pytest.approx(56 * 56 * 9 * 64 * 1e-6)
    assert all(features(u)[k] == 0.0 for u in (dense, depthwise)
               for k in ("grouped", "macs_grouped", "group_calls", "im2col_elems"))
    full = {p.name for p in probe_set(("fp32", "int8"))}
    assert {"block-shuffle-96-96-1-28-4-int8", "op-shuffle-96-28-4-fp32",
            "op-lrn-96-55-fp32"} <= full
    for subset, count in (("quick", 88), ("fingerprint", 17)):   # as before session 6
        names = [p.name for p in probe_set(("fp32", "int8"), subset)]
        assert len(names) == count and not any("shuffle" in n for n in names)


def test_big_gemms_are_probed_in_a_row_never_alone():
    """Gemms whose weights come from DRAM are measured as `mlp` probes, three in a row, whose
    every gemm counts as cold in that context; no probe is such a gemm alone. The `mlp` probes
    hold the places of the two big gemms of earlier versions, so the fingerprint subset is
    unchanged and the quick one keeps its size."""
    from toolchain.predict.kernel import context_of, features

    units = design_units("mlp-4608-4096-1000-fp32")
    gemms = [u for u in units if u.cls == "gemm"]
    assert [u.weight_elems for u in gemms] == [4608 * 4096, 4096 * 4096, 4096 * 1000]
    context = context_of(units)
    assert context > 150e6
    assert all(features(u, context)["cold_weight_bytes"]
               == pytest.approx(4 * u.weight_elems * 1e-6) for u in gemms)
    full = probe_set(("fp32", "int8"))
    assert {"mlp-4608-4096-1000-int8", "mlp-2048-4096-512-fp32"} <= {p.name for p in full}
    assert all(p.params[0] * p.params[1] < 8e6 for p in full if p.family == "gemm")
    quick = [p.name for p in probe_set(("fp32", "int8"), "quick")]
    assert "mlp-4608-4096-1000-fp32" in quick and "mlp-2048-4096-512-fp32" not in quick


def test_layout_changes_where_blocked_and_plain_float_units_meet():
    """onnxruntime runs dense and depthwise float convs in its blocked NCHWc layout and grouped
    convs, reshapes and transposes in NCHW; where the two meet inside a model it reorders
    (ReorderInput / ReorderOutput in its optimized graph), once per tensor and direction."""
    def reorders(name):
        return sorted((u.cls, u.in_elems) for u in design_units(name)
                      if u.cls.startswith("Reorder"))

    # grouped 1x1 -> shuffle -> depthwise 3x3 (blocked) -> grouped 1x1, 24 channels at 28x28
    assert reorders("block-shuffle-96-96-1-28-4-fp32") == [("ReorderInput", 24 * 28 * 28),
                                                          ("ReorderOutput", 24 * 28 * 28)]
    # a global pool (blocked) read by Flatten -> Gemm (plain): one ReorderOutput
    assert reorders("block-head-1280-7-1000-globalaveragepool-fp32") == [
        ("ReorderOutput", 1280.0)]
    # dense convs only, and the model's own edges (priced by edge features): none
    assert reorders("chain-64-3-28-1-fp32") == [] and reorders("op-lrn-96-55-fp32") == []
    # int8 units are in neither float layout (their conversions are priced instead)
    units = design_units("net-mbv2-64-1.0-3-mixed")
    made_by = {u.output: u for u in units}
    layout = [u for u in units if u.cls.startswith("Reorder")]
    assert layout and all(made_by[u.inputs[0]].precision == "fp32" for u in layout)
