"""Property: any legal plan on the built models gives a valid model with the original outputs."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passes import load_and_analyze
from toolchain.calib import synthetic_calib
from toolchain.compile.rewrite import apply_plan
from toolchain.measure import zoo

MODELS = {
    "mbv2": lambda: zoo.mobilenet_v2(32, 0.25, 10, se=True, hard_swish=True,
                                     kernel_sizes=[3, 3, 5, 5, 5, 3, 3]),
    "resnet": lambda: zoo.resnet(32, 26, 0.25, 10),
}
_CACHE: dict = {}


def _prepared(name):
    if name not in _CACHE:
        model = MODELS[name]()
        graph = load_and_analyze(model)
        _CACHE[name] = (model, graph.space, synthetic_calib(graph, n=8, warn=False))
    return _CACHE[name]


@st.composite
def plans(draw, space):
    kernels = {}
    for name, options in space.options.items():
        if not draw(st.booleans()):
            continue
        choice = {"precision": draw(st.sampled_from(options["precision"]))}
        width = draw(st.sampled_from(options.get("width", [1.0])))
        size = draw(st.sampled_from(options.get("kernel_size", [None])))
        if width != 1.0:
            choice["width"] = width
        if size is not None:
            choice["kernel_size"] = size
        kernels[name] = choice
    skip = draw(st.lists(st.sampled_from(sorted(space.blocks)), unique=True, max_size=3))
    shape = {}
    if space.resolutions and draw(st.booleans()):
        r = draw(st.sampled_from(space.resolutions))
        shape = {space.input_name: [1, 3, r, r]}
    return {"version": 1, "target": None, "model": {"input_shape": shape}, "kernels": kernels,
            "skip_blocks": skip}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_random_legal_plans_keep_models_valid(name):
    model, space, calib = _prepared(name)

    @settings(max_examples=4, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(plan=plans(space))
    def check(plan):
        out = apply_plan(model, plan, calib=calib)  # raises if checker / ORT / shapes fail
        sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
        (inp,) = sess.get_inputs()
        x = np.random.default_rng(0).normal(size=inp.shape).astype(np.float32)
        (y,) = sess.run(None, {inp.name: x})
        assert y.shape == (1, 10) and np.all(np.isfinite(y))

    check()
