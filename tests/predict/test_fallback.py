"""Every op priced: kinds never measured get the memory-traffic fallback, labelled and listed."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from passes import load_and_analyze
from toolchain.cli import cli
from toolchain.compile.report import Point, svg_plot
from toolchain.errors import UnsupportedKernelError
from toolchain.predict.kernel import KernelPredictor, fit_fallback
from toolchain.predict.latency import load_predictor, predict_plan
from toolchain.predict.units import Unit
from toolchain.space import Choice, Plan
from toolchain.target import load_target


def _op(name, kind, elems):
    cls, precision = kind.split("/")
    return Unit(name, cls, precision, in_elems=elems, out_elems=elems, rows=elems)


def test_fallback_is_fitted_on_memory_bound_designs_and_measured_on_unseen_kinds():
    """Designs of three element-wise kinds costing 2 us + 0.01 ms per MB: the fit recovers it
    and its leave-one-kind-out error is ~0; a conv design (compute) is not used."""
    rng = np.random.default_rng(0)
    designs, y = [], []
    for kind in ("Add/fp32", "Relu/fp32", "Concat/fp32") * 5:
        elems = rng.uniform(1e4, 1e6)
        designs.append([_op("x", kind, elems)])
        y.append(0.005 + 0.002 + 0.01 * 8 * elems * 1e-6)
    designs.append([Unit("c", "conv", "fp32", macs=1e9, in_elems=1e5, out_elems=1e5)])
    y.append(50.0)
    weights, meta = fit_fallback(designs, y, 0.005)
    assert weights["kernel"] == pytest.approx(0.002, rel=1e-3)
    assert weights["bytes"] == pytest.approx(0.01, rel=1e-3)
    assert meta["designs"] == 15 and meta["held_out"]["median_abs_rel_err"] < 1e-3

    package = KernelPredictor({"Add/fp32": {"kernel": 0.001}}, {"model": 0.005},
                              {"fallback": meta}, weights)
    pred = package.predict_units([_op("a", "Add/fp32", 1e5), _op("p", "Pad/int8", 1e6),
                                  Unit("q", "conv", "int8", macs=1e6)])
    assert pred.fallback == ("p (Pad/int8)",) and pred.unknown == ("q (conv/int8)",)
    assert pred.latency_ms == pytest.approx(0.005 + 0.001 + 0.002 + 0.01 * 2, rel=1e-6)
    assert "leave one kind out" in pred.fallback_error
    with pytest.raises(UnsupportedKernelError, match=r"Pad/int8\) \(fallback"):
        package.predict_units([_op("p", "Pad/int8", 1e6)], strict=True)


def concat_model() -> onnx.ModelProto:
    """conv -> two conv branches -> Concat -> conv -> global pool: a fire module's shape."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def conv(x, cin, cout, k, name):
        w = numpy_helper.from_array(rng.normal(0, 0.2, (cout, cin, k, k)).astype(np.float32),
                                    f"{name}_w")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [x, w.name], [f"{name}_c"], name=name,
                                      kernel_shape=[k, k], pads=[k // 2] * 4))
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [name + "_r"], name=name + "_relu"))
        return name + "_r"
    s = conv("x", 3, 8, 1, "squeeze")
    a, b = conv(s, 8, 16, 1, "expand1"), conv(s, 8, 16, 3, "expand3")
    nodes.append(helper.make_node("Concat", [a, b], ["cat"], name="cat", axis=1))
    y = conv("cat", 32, 16, 1, "head")
    nodes.append(helper.make_node("GlobalAveragePool", [y], ["y"], name="gap"))
    graph = helper.make_graph(nodes, "fire", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 16, 16])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 16, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_shipped_package_prices_an_int8_concat_by_its_fallback(tmp_path):
    """The shipped host package never measured Concat/int8: a plan with int8 on both sides of
    the concat is priced (fallback, listed), never infinite; `predict --strict` fails on it."""
    predictor = load_predictor(load_target("host-ort-1t"))
    assert predictor.fallback is not None and "leave one kind out" in predictor.fallback_error
    graph = load_and_analyze(concat_model())
    plan = Plan(kernels={k: Choice(precision="int8")
                         for k in ("expand1", "expand3", "head")})
    pred = predict_plan(predictor, graph, plan)
    assert any("Concat/int8" in k for k in pred.fallback) and not pred.unknown
    assert 0 < pred.latency_ms < predict_plan(predictor, graph, Plan()).latency_ms * 3

    path = tmp_path / "m.onnx"
    onnx.save(concat_model(), path)
    plan_path = tmp_path / "plan.json"
    plan.save(plan_path)
    ok = CliRunner().invoke(cli, ["predict", str(path), "-t", "host-ort-1t",
                                  "--plan", str(plan_path)])
    assert ok.exit_code == 0 and "(fallback: memory-traffic model)" in ok.output
    strict = CliRunner().invoke(cli, ["predict", str(path), "-t", "host-ort-1t",
                                      "--plan", str(plan_path), "--strict"])
    assert strict.exit_code == 2 and "Concat/int8) (fallback)" in strict.output


def test_plan_summary():
    plan = Plan(kernels={"a": Choice("int8"), "b": Choice("int8", 0.5), "c": Choice(width=0.5)},
                skip_blocks=["b1"], input_shape={"x": [1, 3, 96, 96]})
    assert plan.summary() == ("input 1x3x96x96, 2 kernels int8, 2 kernels at width 0.5, "
                              "1 block skipped")
    assert Plan().summary() == "the original model"


def test_plot_leaves_out_unpriced_points():
    """A plan priced at infinity used to crash the report (OverflowError in the ticks)."""
    pts = [Point(1.0, 2.0, "a", "front"), Point(float("inf"), 0.5, "b", "candidate")]
    svg = svg_plot(pts, "latency", "drop", vline=1.8)
    assert svg.count("<title>") == 1 and "1 plan(s) the predictor could not price" in svg
    assert "no points" in svg_plot([pts[1]], "latency", "drop")
