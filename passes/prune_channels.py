"""Channel pruning with least-squares reconstruction of the consumers (post-training, numpy).

Rule: a pruned kernel (a group-1 Conv or a Gemm, named by its anchor node) keeps
`pruned_channels(C, width)` of its C output channels. The kept set propagates along the
channels' path, traced by `common.prune_site` (the rule discover_space offers widths by):
per-channel ops (BatchNormalization, activations, pooling, Flatten of a 1x1 map, Add/Mul by a
per-channel weight) are sliced, depthwise Convs shrink with their input (weights, bias,
`group`), and the path ends in the input channels of group-1 Convs and Gemms (the consumers),
whose weights are sliced. Channels that reach a graph output, an Add/Concat/Mul of two
activations (tied channels) or anything else cannot be pruned: BadInputError names the kernel
and the op. Which channels stay: the largest importance E[x_c^2] * ||W_consumer[:, c]||^2
summed over consumers (x: the consumer's input on calibration data). Reconstruction (default
on): each consumer's new weights and bias solve the ridge least-squares problem
min ||[X_S, 1] A - X W^T|| over calibration activations, where X are the consumer's original
inputs (im2col patches for a KxK Conv), W its original weights, S the kept channels - so the
consumer's output is matched as well as the kept channels allow, without fine-tuning (a solution
not finite in float32 leaves that consumer's weights only sliced). The statistics come from one
run over the calibration data per call, unless the calibration data carries them
(`CalibData.prune_grams`, from `reference_grams`: every consumer's statistics on the fp32 model,
one run): compile's sensitivity step prunes one kernel of the fp32 model at a time, whose
consumers see exactly the fp32 model's inputs, so it collects them once per model.
Post-conditions: graph outputs keep their shapes; shapes are re-inferred.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from passes.common import PruneSite, prune_site, run_collect
from passes.infer_shapes import infer_shapes
from toolchain.calib import CalibData, synthetic_calib
from toolchain.ir import Graph, TensorInfo
from toolchain.pipeline import Pass, PassContext, PassResult
from toolchain.space import pruned_channels

__all__ = ["PruneChannelsPass", "PruneSite", "prune_site", "prune_channels", "reference_grams"]

logger = logging.getLogger(__name__)

# Calibration rows (positions) per consumer: a few per regression feature, capped for speed;
# consumers with more features (e.g. a 3x3 Conv over 256 channels) are sliced, not refit.
_ROWS_PER_FEATURE, _MIN_ROWS, _MAX_ROWS = 4, 4096, 24_000
_MAX_FEATURES = 1200


# --- calibration statistics --------------------------------------------------------------------

def _rows(graph: Graph, consumer: str, x: np.ndarray, rng: np.random.Generator,
          limit: int) -> np.ndarray:
    """The consumer's input as regression rows: (positions, C*k*k) for a Conv, (N, F) for Gemm."""
    d = graph.node(consumer)
    if d["op_type"] == "Gemm":
        rows = x.reshape(x.shape[0], -1)
    else:
        W = graph.initializers[d["inputs"][1]]
        kh, kw = W.shape[2:]
        a = d["attrs"]
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID"):
            ph, pw = kh - 1, kw - 1  # SAME_*: stride 1 in practice; total pad k-1
            pads = [ph // 2, pw // 2, ph - ph // 2, pw - pw // 2]
        sh, sw = a.get("strides", [1, 1])
        xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
        win = win[:, :, ::sh, ::sw]  # N, C, Ho, Wo, kh, kw
        rows = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kh * kw)
    if len(rows) > limit:
        rows = rows[rng.choice(len(rows), limit, replace=False)]
    return rows.astype(np.float32)


@dataclass
class _Gram:
    """Running E[[x, 1][x, 1]^T] of one consumer's input rows (only its diagonal if not `full`).
    Rows are buffered so that the products are few large matrix multiplications."""

    full: bool
    sum: np.ndarray | None = None
    count: int = 0
    _rows: list = field(default_factory=list)
    _buffered: int = 0
    _frozen: bool = False    # `sum` holds the mean, float32

    def add(self, rows: np.ndarray) -> None:
        self._rows.append(rows)
        self._buffered += len(rows)
        if self._buffered >= 4096:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        rows = np.concatenate(self._rows)
        self._rows, self._buffered = [], 0
        # float32 BLAS on rows scaled by a power of two (exact) to at most 1 in magnitude, so
        # the products cannot overflow (constant-fill models reach 1e20 activations); the
        # float64 running sum is scaled back.
        top = float(np.max(np.abs(rows))) if rows.size else 0.0
        scale = 2.0 ** np.ceil(np.log2(top)) if np.isfinite(top) and top > 0 else 1.0
        aug = np.hstack([rows / np.float32(scale), np.ones((len(rows), 1), rows.dtype)])
        back = np.append(np.full(rows.shape[1], scale), 1.0)
        if self.full:
            g = (aug.T @ aug).astype(np.float64) * np.outer(back, back)
        else:
            g = (aug * aug).sum(axis=0).astype(np.float64) * back ** 2
        self.sum = g if self.sum is None else self.sum + g
        self.count += len(rows)

    def freeze(self) -> None:
        """Keep only the mean, in float32 (half the memory: a cached one lives long)."""
        if not self._frozen:
            self.sum, self._frozen = self.mean.astype(np.float32), True

    @property
    def mean(self) -> np.ndarray:
        if self._frozen:
            return self.sum.astype(np.float64)
        self._flush()
        return self.sum / max(1, self.count)

    @property
    def diag(self) -> np.ndarray:
        return np.diag(self.mean) if self.full else self.mean


def _grams(graph: Graph, consumers: list[str], calib: CalibData, seed: int,
           full: bool) -> dict[str, _Gram]:
    if not consumers:
        return {}
    rng = np.random.default_rng(seed)
    tensors = sorted({graph.node(c)["inputs"][0] for c in consumers})
    limits, grams = {}, {}
    for c in consumers:
        features = _consumer_matrix(graph, c)[0].shape[1]
        grams[c] = _Gram(full and features <= _MAX_FEATURES)
        total = min(_MAX_ROWS, max(_MIN_ROWS, _ROWS_PER_FEATURE * features))
        limits[c] = max(1, -(-total // max(1, len(calib))))
    for values in run_collect(graph, calib, tensors):
        for c in consumers:
            grams[c].add(_rows(graph, c, values[graph.node(c)["inputs"][0]], rng, limits[c]))
    return grams


def reference_grams(graph: Graph, kernels: list[str], calib: CalibData,
                    seed: int = 0) -> dict[str, _Gram]:
    """The input statistics of every consumer of the named kernels on `graph`, in one run over
    the calibration data (for `CalibData.with_grams`; see the module doc)."""
    sites = [prune_site(graph, k) for k in kernels]
    grams = _grams(graph, sorted({c for s in sites for c in s.consumers}), calib, seed, True)
    for g in grams.values():
        g.freeze()
    return grams


# --- weight views ------------------------------------------------------------------------------

def _consumer_matrix(graph: Graph, consumer: str) -> tuple[np.ndarray, int]:
    """The consumer's weight as (outputs, inputs*taps) and its taps per input channel."""
    d = graph.node(consumer)
    W = graph.initializers[d["inputs"][1]]
    if d["op_type"] == "Gemm":
        return (W.T if not d["attrs"].get("transB", 0) else W), 1
    return W.reshape(W.shape[0], -1), int(np.prod(W.shape[2:]))


def _features(keep: np.ndarray, taps: int) -> np.ndarray:
    return (keep[:, None] * taps + np.arange(taps)[None, :]).reshape(-1)


def _importance(graph: Graph, site: PruneSite, grams: dict[str, _Gram]) -> np.ndarray:
    score = np.zeros(site.channels)
    for c in site.consumers:
        M, taps = _consumer_matrix(graph, c)
        energy = grams[c].diag[:-1] * (M.astype(np.float64) ** 2).sum(axis=0)
        score += energy.reshape(site.channels, taps).sum(axis=1)
    return score


def _reconstruct(M: np.ndarray, gram: _Gram, feats: np.ndarray) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Ridge LS: new weights (outputs, |feats|) and bias delta matching X W^T from [X_S, 1].
    The ridge only keeps a well-posed problem solvable, unless there are few rows per feature
    (a Gemm after global pooling sees one row per sample), where it also limits overfitting."""
    mean = gram.mean
    idx = np.append(feats, mean.shape[0] - 1)
    A = mean[np.ix_(idx, idx)]
    rel = 1e-6 if gram.count >= _ROWS_PER_FEATURE * len(idx) else 1e-2
    ridge = rel * np.mean(np.diag(A)) + 1e-12
    B = mean[idx, :-1] @ M.T.astype(np.float64)
    sol = np.linalg.solve(A + ridge * np.eye(len(idx)), B)
    return sol[:-1].T, sol[-1]


# --- graph edits -------------------------------------------------------------------------------

def _set_weight(graph: Graph, node: str, index: int, array: np.ndarray) -> None:
    """Give input `index` of `node` a new, private initializer (others may share the old one)."""
    old = graph.node(node)["inputs"][index]
    name = graph.fresh_name(f"{old}.pruned")
    graph.initializers[name] = np.ascontiguousarray(array.astype(graph.initializers[old].dtype))
    graph.tensors[name] = TensorInfo(tuple(array.shape), graph.initializers[name].dtype.name)
    graph.set_input(node, index, name)


def _slice_producer(graph: Graph, site: PruneSite, keep: np.ndarray) -> None:
    d = graph.node(site.kernel)
    W = graph.initializers[d["inputs"][1]]
    rows = d["op_type"] == "Conv" or d["attrs"].get("transB", 0)
    _set_weight(graph, site.kernel, 1, W[keep] if rows else W[:, keep])
    if len(d["inputs"]) > 2 and d["inputs"][2] and graph.is_weight(d["inputs"][2]):
        b = graph.initializers[d["inputs"][2]]
        if b.ndim >= 1 and b.shape[-1] == site.channels:
            _set_weight(graph, site.kernel, 2, b[..., keep])


def _slice_path_node(graph: Graph, node: str, keep: np.ndarray, channels: int) -> None:
    d = graph.node(node)
    op = d["op_type"]
    if op == "BatchNormalization":
        for i in range(1, 5):
            _set_weight(graph, node, i, graph.initializers[d["inputs"][i]][keep])
    elif op == "Conv":  # depthwise
        _set_weight(graph, node, 1, graph.initializers[d["inputs"][1]][keep])
        if len(d["inputs"]) > 2 and d["inputs"][2]:
            _set_weight(graph, node, 2, graph.initializers[d["inputs"][2]][keep])
        d["attrs"]["group"] = len(keep)
    elif op in ("Add", "Mul"):
        i = next(i for i, t in enumerate(d["inputs"]) if graph.is_weight(t))
        w = graph.initializers[d["inputs"][i]]
        rank = len(graph.shape(next(t for t in d["inputs"] if not graph.is_weight(t))))
        axis = w.ndim - (rank - 1)
        if axis >= 0 and w.shape[axis] == channels:
            _set_weight(graph, node, i, np.take(w, keep, axis=axis))


def _slice_consumer(graph: Graph, consumer: str, keep: np.ndarray, gram: _Gram | None) -> None:
    d = graph.node(consumer)
    W = graph.initializers[d["inputs"][1]]
    M, taps = _consumer_matrix(graph, consumer)
    feats = _features(keep, taps)
    new, delta = M[:, feats], None
    if gram is not None and gram.full:
        fit, bias = _reconstruct(M, gram, feats)
        if np.all(np.isfinite(fit)) and np.all(np.isfinite(bias)) \
                and np.abs(fit).max(initial=0) < np.finfo(np.float32).max:
            new, delta = fit, bias
        else:   # statistics out of float range: the consumer keeps its sliced weights
            logger.info("prune: no finite reconstruction for %s; its weights are sliced",
                        consumer)
    if d["op_type"] == "Gemm":
        _set_weight(graph, consumer, 1, new if d["attrs"].get("transB", 0) else new.T)
    else:
        _set_weight(graph, consumer, 1, new.reshape(W.shape[0], len(keep), *W.shape[2:]))
    if delta is not None:
        _add_bias(graph, consumer, delta)


def _add_bias(graph: Graph, node: str, delta: np.ndarray) -> None:
    d = graph.node(node)
    if len(d["inputs"]) > 2 and d["inputs"][2]:
        b = graph.initializers[d["inputs"][2]]
        _set_weight(graph, node, 2, b + delta.reshape(b.shape))
        return
    if d["op_type"] == "Gemm":
        d["attrs"].setdefault("beta", 1.0)
    name = graph.fresh_name(f"{node}.bias")
    graph.initializers[name] = delta.astype(np.float32)
    graph.tensors[name] = TensorInfo(tuple(delta.shape), "float32")
    if len(d["inputs"]) == 2:
        d["inputs"].append("")
    graph.set_input(node, 2, name)


def prune_channels(graph: Graph, widths: dict[str, float], calib: CalibData | None,
                   reconstruct: bool = True, seed: int = 0) -> dict[str, int]:
    """Prune every named kernel to its width; returns kernel -> channels kept."""
    sites = [prune_site(graph, k) for k, w in sorted(widths.items()) if w < 1.0]
    sites = [s for s in sites if pruned_channels(s.channels, widths[s.kernel]) < s.channels]
    if not sites:
        return {}
    calib = calib or synthetic_calib(graph)
    consumers = sorted({c for s in sites for c in s.consumers})
    known = calib.prune_grams or {}
    grams = {c: known[c] for c in consumers if c in known}
    grams.update(_grams(graph, [c for c in consumers if c not in grams], calib, seed,
                        full=reconstruct))
    kept = {}
    for site in sites:
        n = pruned_channels(site.channels, widths[site.kernel])
        # Stable top-n, back in channel order so the surviving channels keep their order.
        keep = np.sort(np.argsort(-_importance(graph, site, grams), kind="stable")[:n])
        kept[site.kernel] = n
        for c in site.consumers:
            _slice_consumer(graph, c, keep, grams[c] if reconstruct else None)
        _slice_producer(graph, site, keep)
        for node in site.path:
            _slice_path_node(graph, node, keep, site.channels)
    graph.remove_unused()
    infer_shapes(graph)
    return kept


@dataclass
class PruneChannelsPass(Pass):
    """Prune kernels' output channels to the plan's widths and reconstruct their consumers."""

    name = "prune_channels"
    requires = frozenset({"shapes"})
    invalidates = frozenset({"kernels", "costs", "space"})
    widths: dict[str, float] = field(default_factory=dict)  # kernel name -> width in (0, 1]
    reconstruct: bool = True  # least-squares refit of the consumers on calibration data
    seed: int = 0  # sampling of calibration positions

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        calib = ctx.calib
        kept = prune_channels(graph, self.widths, calib, self.reconstruct, self.seed)
        return PassResult(changed=bool(kept), stats={"kernels_pruned": len(kept),
                                                     "channels_kept": kept})
