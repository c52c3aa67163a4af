"""Amortized optimizer: a network g(device fingerprint, latency budget) -> design, so that
optimizing for a new device is one forward pass instead of a search.

Training. Devices are drawn from the device-conditioned predictor's prior (its Gaussian over
scale-free device weights, fitted on the training devices; `toolchain.predict.conditioned`)
plus the training devices themselves; each gets a noisy fingerprint, and the predictor turns
that fingerprint into its predicted latency of every design. A budget is a random quantile of
those predictions; the label is the exact optimum under the predictor (exhaustive scoring:
the best objective among designs predicted within budget). The network is an MLP with one
softmax head per encoding column, trained with cross-entropy (numpy, Adam, seeded).

Inference. Inputs are the log of the fingerprint divided by its mean and the log of the budget
divided by the same mean (so the network is scale-free). The trained network is exported to
ONNX; for a design space it is extended (`_chooser_onnx`) with the decoding and repair, and
with `choose_from_fingerprints` with the predictor's weights too, so a whole batch is one
onnxruntime call. Candidates per (device, budget): the designs formed by the first or second
most likely value of each head (at most MAX_FLIPS heads at their second), and a ladder of
faster Pareto designs precomputed per network output (`candidate_table`); the choice is the
best objective predicted within budget; when no candidate is predicted within budget (rare),
exhaustive scoring for that device.

A table whose space is too large to address by key (e.g. FBNet's 9^22 designs, of which a
table holds a sample) is chosen from in numpy instead (`_choose_sampled`): the network's heads
score every row of the table (sum of the log-probabilities of its values), the SAMPLED_TOP best
rows are the candidates, and the same best-within-budget rule applies.
"""
from __future__ import annotations

import io
import json
import logging
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from toolchain.errors import BadInputError
from toolchain.files import atomic_write
from toolchain.optimize.costs import CostTable
from toolchain.predict.conditioned import ConditionedPredictor

__all__ = [
    "AmortizedOptimizer", "DesignSpace", "train_amortized", "synthetic_fingerprints",
    "exhaustive_choice", "ExhaustiveSearch", "TrainConfig", "candidate_table", "refine",
    "TableFamily", "TablePlanner", "train_table_planner", "exact_tables", "repair_tables",
    "plan_costs", "budget_range",
]

logger = logging.getLogger(__name__)

CANDIDATE_DEVICES = 300   # prior devices whose Pareto fronts give the faster fallbacks
MAX_FLIPS = 3             # designs tried: heads at their 2nd most likely value, at most this many
LADDER = ()               # per-design faster fallbacks: front designs below these fractions
                          # of it (the fastest front design is always a candidate)
REFINE_STEPS = 6           # hill-climbing steps of `refine`
QUANTIZE = True           # int8 MLP in the chooser graph (`_quantized`)
SLACK_SCALE = 2.0 ** 80   # scales the chooser's budget slack far above every value
SAMPLED_TOP = 32          # candidates per (device, budget) on a table too large for keys
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    devices: int = 3000           # synthetic devices drawn from the predictor's prior
    budgets_per_device: int = 6
    quantiles: tuple[float, float] = (0.03, 0.8)   # budget range, as quantiles of predictions
    fingerprint_noise: float = 0.03                # relative noise of a fingerprint cell
    hidden: tuple[int, ...] = (128, 128)           # widths of the hidden layers
    epochs: int = 30
    batch: int = 256
    learning_rate: float = 2e-3
    seed: int = 0


# ---------------------------------------------------------------- the design space

class DesignSpace:
    """The designs a choice may return (rows of a table), their encodings and basis features,
    and a fast code -> row lookup."""

    def __init__(self, codes: np.ndarray, features: np.ndarray, objective: np.ndarray):
        self.codes = np.asarray(codes, float)
        self.features = np.asarray(features, float)
        self.features32 = self.features.astype(np.float32)   # the repair's gathers: half the bytes
        self.objective = np.asarray(objective, float)
        self.alphabets = [np.unique(self.codes[:, j]) for j in range(self.codes.shape[1])]
        self.sizes = np.array([len(a) for a in self.alphabets])
        self.digits = np.column_stack([np.searchsorted(a, self.codes[:, j])
                                       for j, a in enumerate(self.alphabets)])
        self.radix = np.r_[1, np.cumprod(self.sizes[::-1])[:-1]][::-1]
        total = int(np.prod(self.sizes.astype(float)))
        self.dense = total <= 5_000_000
        keys = self.digits @ self.radix
        self.keys = keys
        if self.dense:
            self.lookup = np.full(total, -1, dtype=np.int64)
            self.lookup[keys] = np.arange(len(keys))
        else:
            self._map = {int(k): i for i, k in enumerate(keys)}

    @cached_property
    def neighbours(self) -> np.ndarray:
        """(rows, 1 + sum(sizes)): each design, then every single-column change of it (-1 where
        that design is not in the space). Built once; `refine` only gathers from it."""
        col = np.concatenate([np.full(s, j) for j, s in enumerate(self.sizes)])
        val = np.concatenate([np.arange(s) for s in self.sizes])
        out = [np.arange(len(self.codes))]
        for j, v in zip(col, val, strict=True):
            changed = self.digits.copy()
            changed[:, j] = v
            out.append(self.rows_of(changed))
        return np.column_stack(out)

    @cached_property
    def value32(self) -> np.ndarray:
        """`values_by_key` with every design that has an objective allowed."""
        return self.values_by_key(None)

    def values_by_key(self, allowed: np.ndarray | None) -> np.ndarray:
        """(keys + 1, 1) float32 values of the chooser graph: objective - lowest + 1 (so at
        least 1) for designs that may be chosen (`allowed` mask over rows, default all with an
        objective), -1 for the rest and for keys that are not designs, 0 for the sentinel."""
        ok = np.isfinite(self.objective) if allowed is None else \
            allowed & np.isfinite(self.objective)
        out = np.full((len(self.lookup) + 1, 1), -1.0, np.float32)
        if ok.any():
            out[self.keys[ok], 0] = self.objective[ok] - self.objective[ok].min() + 1.0
        out[-1] = 0.0   # the chooser's sentinel key (`_chooser_onnx`)
        return out

    @property
    def head_offsets(self) -> np.ndarray:
        return np.r_[0, np.cumsum(self.sizes)]

    def rows_of(self, digits: np.ndarray) -> np.ndarray:
        """Row of each digit vector (-1 when that design is not in the space)."""
        keys = np.asarray(digits, np.int64) @ self.radix
        if self.dense:
            return self.lookup[keys]
        return np.array([self._map.get(int(k), -1) for k in np.ravel(keys)],
                        dtype=np.int64).reshape(keys.shape)


def exhaustive_choice(pred: np.ndarray, objective: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """Per device (row of `pred`, predicted latency of every design): the best objective among
    designs predicted within its budget, else its fastest predicted design."""
    order = np.argsort(-objective, kind="mergesort")
    return order[first_within(pred[:, order], budgets)]


def first_within(pred: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """Per row of `pred` (designs in decreasing objective): the first column predicted within
    the row's budget, else the fastest column."""
    ok = pred <= budgets[:, None]
    first = np.argmax(ok, axis=1)
    none = ~ok[np.arange(len(pred)), first]
    first[none] = np.argmin(pred[none], axis=1)
    return first


class ExhaustiveSearch:
    """Per-device search with the linear predictor: every design that may be chosen is
    scored and the best objective predicted within budget wins (`exhaustive_choice`). The
    designs are stored once in decreasing objective (ties in table order), so a batch costs
    one product and a scan for the first design within budget, with no sort or gather. From
    fingerprints, the product is with the R + 1 columns of `fingerprint_basis` instead of
    the d features (the same predictions, as the amortized optimizer's graph computes them)."""

    def __init__(self, space: DesignSpace, allowed: np.ndarray | None = None,
                 predictor: ConditionedPredictor | None = None) -> None:
        allowed = np.isfinite(space.objective) if allowed is None else \
            allowed & np.isfinite(space.objective)
        rows = np.flatnonzero(allowed)
        self.rows = rows[np.argsort(-space.objective[rows], kind="mergesort")]
        features = space.features[self.rows]
        self.features_t = np.ascontiguousarray(features.T)
        self.basis_t = None if predictor is None else \
            np.ascontiguousarray(fingerprint_basis(features, predictor).T)

    def choose(self, weights: np.ndarray, budgets: np.ndarray) -> np.ndarray:
        """Row of the space per (device weights, budget)."""
        return self.rows[first_within(weights @ self.features_t, np.asarray(budgets, float))]

    def choose_from_fingerprints(self, fingerprints: np.ndarray,
                                 budgets: np.ndarray) -> np.ndarray:
        """Row of the space per (fingerprint, budget); needs the predictor."""
        fp = np.asarray(fingerprints, float)
        pred = np.column_stack([fp.mean(axis=1), fp]) @ self.basis_t
        return self.rows[first_within(pred, np.asarray(budgets, float))]


def fingerprint_basis(features: np.ndarray, predictor: ConditionedPredictor) -> np.ndarray:
    """(designs, R + 1) B with predicted latency = B (mean(fp), fp) for a fingerprint fp:
    (F mean - G prior_fp, G), G = F gain_t^T (`ConditionedPredictor.device_weights`)."""
    prior_fp, gain_t = predictor._fingerprint_map
    G = features @ gain_t.T
    return np.column_stack([features @ predictor.mean - G @ prior_fp, G])


def synthetic_fingerprints(predictor: ConditionedPredictor, count: int, seed: int,
                           noise: float = 0.03, features: np.ndarray | None = None) -> np.ndarray:
    """(count, R) fingerprints of devices drawn from the predictor's prior, mean 1.

    A draw whose predicted latency is not positive on every design of `features` (default: the
    reference designs) is redrawn."""
    rng = np.random.default_rng(seed)
    F_ref = predictor.features(predictor.reference)
    check = F_ref if features is None else features
    chol = np.linalg.cholesky(predictor.cov + 1e-12 * np.eye(len(predictor.cov)))
    out: list[np.ndarray] = []
    while sum(len(o) for o in out) < count:
        w = predictor.mean + rng.standard_normal((2 * count, len(chol))) @ chol.T
        lowest = np.concatenate([np.min(part @ check.T, axis=1)     # bounded memory
                                 for part in np.array_split(w, max(1, len(w) // 500))])
        w = w[lowest > 0.05 * np.abs(w @ F_ref.T).mean(axis=1)]
        fp = w @ F_ref.T
        fp *= np.exp(noise * rng.standard_normal(fp.shape))
        out.append(fp / fp.mean(axis=1, keepdims=True))
    return np.vstack(out)[:count]


def network_inputs(fingerprints: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """Scale-free inputs: log(fp / mean fp) and log(budget / mean fp), each ratio at least
    1e-3 (imputed cells may dip; `_fingerprint_nodes` does the same in the chooser graph)."""
    fp = np.atleast_2d(np.asarray(fingerprints, float))
    ratios = np.column_stack([fp, np.asarray(budgets, float)]) / fp.mean(axis=1, keepdims=True)
    return np.log(np.maximum(ratios, 1e-3)).astype(np.float32)


def _training_set(predictor: ConditionedPredictor, space: DesignSpace,
                  fingerprints: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg.seed + 1)
    search = ExhaustiveSearch(space)
    X, Y = [], []
    for start in range(0, len(fingerprints), 256):
        fp = fingerprints[start:start + 256]
        pred = predictor.device_weights(fp) @ search.features_t   # designs that may be chosen
        ranked = np.sort(pred, axis=1)
        for _ in range(cfg.budgets_per_device):
            q = rng.uniform(*cfg.quantiles, size=len(fp))
            budgets = ranked[np.arange(len(fp)), (q * (ranked.shape[1] - 1)).astype(int)]
            chosen = search.rows[first_within(pred, budgets)]
            X.append(network_inputs(fp, budgets))
            Y.append(space.digits[chosen])
    return np.vstack(X), np.vstack(Y)


# ---------------------------------------------------------------- the network (numpy)

def _init(sizes: list[int], rng: np.random.Generator) -> list[list[np.ndarray]]:
    return [[rng.standard_normal((a, b)) * np.sqrt(2.0 / a), np.zeros(b)]
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)]


def _forward(params, X):
    acts = [X]
    for i, (W, b) in enumerate(params):
        z = acts[-1] @ W + b
        acts.append(np.maximum(z, 0) if i < len(params) - 1 else z)
    return acts


def _head_softmax(logits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    probs = np.empty_like(logits)
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        z = logits[:, a:b] - logits[:, a:b].max(axis=1, keepdims=True)
        e = np.exp(z)
        probs[:, a:b] = e / e.sum(axis=1, keepdims=True)
    return probs


def _fit_network(X: np.ndarray, Y: np.ndarray, offsets: np.ndarray,
                 cfg: TrainConfig) -> tuple[list, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-6
    Xn = (X - mu) / sd
    onehot = np.zeros((len(Y), offsets[-1]))
    for j in range(Y.shape[1]):
        onehot[np.arange(len(Y)), offsets[j] + Y[:, j]] = 1.0
    params = _init([X.shape[1], *cfg.hidden, int(offsets[-1])], rng)
    moments = [[np.zeros_like(p) for p in layer] for layer in params]
    second = [[np.zeros_like(p) for p in layer] for layer in params]
    step = 0
    for _ in range(cfg.epochs):
        for batch in np.array_split(rng.permutation(len(X)), max(1, len(X) // cfg.batch)):
            acts = _forward(params, Xn[batch])
            grad = (_head_softmax(acts[-1], offsets) - onehot[batch]) / len(batch)
            step += 1
            for i in reversed(range(len(params))):
                W, _ = params[i]
                grads = [acts[i].T @ grad, grad.sum(axis=0)]
                if i:
                    grad = (grad @ W.T) * (acts[i] > 0)
                for k, g in enumerate(grads):
                    moments[i][k] = 0.9 * moments[i][k] + 0.1 * g
                    second[i][k] = 0.999 * second[i][k] + 0.001 * g * g
                    m_hat = moments[i][k] / (1 - 0.9 ** step)
                    v_hat = second[i][k] / (1 - 0.999 ** step)
                    params[i][k] -= cfg.learning_rate * m_hat / (np.sqrt(v_hat) + 1e-8)
    return params, mu, sd


# ---------------------------------------------------------------- ONNX export and inference

def _to_onnx(params, mu: np.ndarray, sd: np.ndarray) -> bytes:
    """MLP as ONNX (input standardization folded into the first layer)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folded = [[p.copy() for p in layer] for layer in params]
    W0, b0 = folded[0]
    folded[0] = [W0 / sd[:, None], b0 - (mu / sd) @ W0]
    nodes, inits, last = [], [], "x"
    for i, (W, b) in enumerate(folded):
        inits += [numpy_helper.from_array(W.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        out = "logits" if i == len(folded) - 1 else f"h{i}"
        gemm = f"g{i}" if i < len(folded) - 1 else out
        nodes.append(helper.make_node("Gemm", [last, f"W{i}", f"b{i}"], [gemm]))
        if i < len(folded) - 1:
            nodes.append(helper.make_node("Relu", [gemm], [out]))
        last = out
    graph = helper.make_graph(
        nodes, "amortized_optimizer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", len(mu)])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       ["n", int(folded[-1][1].shape[0])])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass(frozen=True)
class AmortizedOptimizer:
    """g(fingerprint, budget) -> design, run through onnxruntime; see the module docstring."""

    onnx_model: bytes = field(repr=False)
    sizes: tuple[int, ...]
    candidates: np.ndarray = field(repr=False, compare=False)   # candidate_table
    meta: dict = field(default_factory=dict, compare=False)

    def session(self, space: DesignSpace | None = None,
                predictor: ConditionedPredictor | None = None):
        """onnxruntime session (1 thread) of the network, or with `space` of the network plus
        decoding and repair (`_chooser_onnx`, from fingerprints with `predictor`)."""
        key = (id(self), id(space), id(predictor))
        cached = _SESSIONS.get(key)
        if cached is None:
            import onnxruntime as ort  # here, not per call: the timed path is this lookup

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            data = self.onnx_model if space is None else _chooser_onnx(
                self.onnx_model, space, self.candidates, predictor)
            cached = (ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]),
                      self, space, predictor)   # keeps them alive so their ids stay unique
            _SESSIONS[key] = cached
        return cached[0]

    def _run(self, space: DesignSpace, predictor: ConditionedPredictor | None, feeds: dict):
        """The chooser graph's outputs (rows, lowest) for `feeds`."""
        return self.session(space, predictor).run(_OUTPUTS, feeds)

    def logits(self, fingerprints: np.ndarray, budgets: np.ndarray) -> np.ndarray:
        x = network_inputs(fingerprints, budgets)
        return self.session().run(None, {"x": x})[0]

    def choose(self, space: DesignSpace, weights: np.ndarray, fingerprints: np.ndarray,
               budgets: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        """Row of `space` per (fingerprint, budget), decoded and repaired in one onnxruntime
        call.

        `weights` (n, d): the predictor's device weights (ms) for each row of `fingerprints`;
        `allowed`: mask of rows that may be chosen (default: rows with an objective)."""
        budgets = np.asarray(budgets, float)
        if not space.dense:
            return self._choose_sampled(space, np.asarray(weights, float), fingerprints, budgets,
                                        allowed)
        value = space.value32 if allowed is None or allowed.all() else \
            space.values_by_key(allowed)
        feeds = {"x": network_inputs(fingerprints, budgets),
                 "w": np.asarray(weights, np.float32), "budgets": budgets.reshape(-1, 1),
                 "value": value}
        return self._finish(space, self._run(space, None, feeds), weights, budgets, allowed)

    def choose_from_fingerprints(self, space: DesignSpace, predictor: ConditionedPredictor,
                                 fingerprints: np.ndarray, budgets: np.ndarray) -> np.ndarray:
        """As `choose` with the predictor's weights from the fingerprints and every design
        with an objective allowed, all in the one onnxruntime call (float32 inside). Kept
        lean: the Python around the call is part of the timed cost, and after the call it runs
        with cold caches (a few us per numpy operation)."""
        budgets = np.asarray(budgets, float)
        if not space.dense:
            return self._choose_sampled(space, predictor.device_weights(fingerprints),
                                        fingerprints, budgets, None)
        # float64 in (the graph casts), budget (n, 1) by reshape: a [:, None] view has a zero
        # stride, which costs onnxruntime a copy
        out = self._run(space, predictor, {"fingerprints": np.asarray(fingerprints, float),
                                           "budgets": budgets.reshape(-1, 1)})
        return self._finish(space, out, None, budgets, None, predictor, fingerprints)

    def _choose_sampled(self, space: DesignSpace, weights: np.ndarray, fingerprints: np.ndarray,
                        budgets: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        """`choose` on a table that holds a sample of a large space: the SAMPLED_TOP rows the
        network's heads find most likely, best objective predicted within budget among them,
        else exhaustive scoring (module docstring)."""
        logits = self.logits(fingerprints, budgets).astype(float)
        offsets = space.head_offsets
        logp = np.empty_like(logits)
        for a, b in zip(offsets[:-1], offsets[1:], strict=True):
            z = logits[:, a:b] - logits[:, a:b].max(axis=1, keepdims=True)
            logp[:, a:b] = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        ok = np.isfinite(space.objective) if allowed is None else \
            allowed & np.isfinite(space.objective)
        rows = np.flatnonzero(ok)
        score = logp[:, offsets[:-1] + space.digits[rows]].sum(axis=2)      # (n, rows)
        top = min(SAMPLED_TOP, len(rows))
        cand = rows[np.argpartition(-score, top - 1, axis=1)[:, :top]]      # (n, top)
        lat = np.einsum("ntd,nd->nt", space.features[cand], weights)
        value = np.where(lat <= budgets[:, None], space.objective[cand], -np.inf)
        best = np.argmax(value, axis=1)
        chosen = cand[np.arange(len(cand)), best]
        missed = ~np.isfinite(value[np.arange(len(cand)), best])
        if missed.any():
            objective = np.where(ok, space.objective, -np.inf)
            pred = weights[missed] @ space.features.T
            pred[:, ~ok] = np.inf
            chosen[missed] = exhaustive_choice(pred, objective, budgets[missed])
        return chosen

    @staticmethod
    def _finish(space: DesignSpace, out, weights, budgets, allowed, predictor=None,
                fingerprints=None) -> np.ndarray:
        """The graph's rows, with exhaustive scoring where it found none (-1: no candidate
        predicted within budget; rare). The graph also returns the lowest row: a Python
        int test, cheaper than a numpy reduction right after the call (cold caches)."""
        rows = out[0][0]
        if out[1].item() >= 0:
            return rows
        missed = np.flatnonzero(rows < 0)
        if weights is None:
            weights = predictor.device_weights(np.asarray(fingerprints)[missed])
        else:
            weights = np.asarray(weights)[missed]
        value = np.where(allowed if allowed is not None else True, space.objective, -np.inf)
        pred = weights @ space.features.T
        pred[:, ~np.isfinite(value)] = np.inf
        rows[missed] = exhaustive_choice(pred, value, budgets[missed])
        return rows

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "optimizer.onnx", self.onnx_model)
        atomic_write(folder / "meta.json", json.dumps(
            {"kind": "amortized-optimizer", "version": FORMAT_VERSION,
             "sizes": list(self.sizes), **self.meta}, indent=2))
        buffer = io.BytesIO()
        np.save(buffer, self.candidates)
        atomic_write(folder / "candidates.npy", buffer.getvalue())

    @staticmethod
    def load(folder: str | Path) -> AmortizedOptimizer:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            data = (folder / "optimizer.onnx").read_bytes()
            candidates = np.load(folder / "candidates.npy")
        except (OSError, ValueError) as err:
            raise BadInputError(f"cannot load amortized optimizer from {folder}: {err}") from None
        if meta.get("kind") != "amortized-optimizer" or meta.get("version") != FORMAT_VERSION:
            raise BadInputError(f"{folder}: not an amortized optimizer of version "
                                f"{FORMAT_VERSION}")
        sizes = tuple(meta.pop("sizes"))
        return AmortizedOptimizer(data, sizes, candidates, meta)


_SESSIONS: dict[tuple, tuple] = {}
_OUTPUTS = ["rows", "lowest"]   # of the chooser graph


def candidate_table(space: DesignSpace, predictor: ConditionedPredictor, seed: int,
                    devices: int = CANDIDATE_DEVICES,
                    ladder: tuple[float, ...] | None = None) -> np.ndarray:
    """(rows, len(ladder) + 1) faster fallbacks per network output, built once.

    Front = designs on the (objective, predicted latency) Pareto front of at least one of
    `devices` devices drawn from the predictor's prior, ordered by latency under the prior
    mean weights. For design r and each ladder factor f: the front design just faster than f
    times r (for devices much faster or slower than the network expected on r's
    operations); last, the fastest front design. Uses no test device."""
    ladder = LADDER if ladder is None else ladder
    usable = np.isfinite(space.objective)
    objective = np.where(usable, space.objective, -np.inf)
    order = np.argsort(-objective, kind="mergesort")
    front = np.zeros(len(objective), bool)
    fps = synthetic_fingerprints(predictor, devices, seed + 7, features=space.features)
    for part in np.array_split(fps, max(1, devices // 100)):
        lat = (predictor.device_weights(part) @ space.features.T)[:, order]
        before = np.minimum.accumulate(lat, axis=1)
        front[order[np.any(np.c_[np.ones(len(lat), bool), lat[:, 1:] < before[:, :-1]],
                           axis=0)]] = True
    mean_lat = space.features @ predictor.mean
    members = np.flatnonzero(front & usable)
    members = members[np.argsort(mean_lat[members], kind="mergesort")]
    sorted_lat = mean_lat[members]
    cols = [members[np.clip(np.searchsorted(sorted_lat, f * mean_lat) - 1, 0, len(members) - 1)]
            for f in ladder]
    cols.append(np.full(len(objective), members[0]))
    return np.column_stack(cols)


def _flip_patterns(heads: int) -> np.ndarray:
    """(K, heads): which heads take their second most likely value; every pattern with at
    most MAX_FLIPS of them."""
    patterns = (np.arange(1 << heads)[:, None] >> np.arange(heads)) & 1 if heads <= 16 else \
        np.vstack([np.zeros(heads, int), np.eye(heads, dtype=int)])
    return patterns[patterns.sum(axis=1) <= MAX_FLIPS].astype(bool)


def _latency_basis(space: DesignSpace, predictor: ConditionedPredictor | None) -> np.ndarray:
    """Per design, what the graph's `w` multiplies: its features, or from fingerprints
    (F mean - G prior_fp, G) with G = F gain_t^T (see `_fingerprint_nodes`)."""
    if predictor is None:
        return space.features32
    return fingerprint_basis(space.features, predictor).astype(np.float32)


def _fingerprint_nodes(graph, predictor: ConditionedPredictor) -> list:
    """Nodes fp (n, R), budget (n, 1) -> wb (n, R + 3): (fingerprint mean, fingerprint,
    budget, budget), the weights of `_latency_basis` and the budget columns of the scoring
    (see `_chooser_onnx`), and x (`network_inputs`), with their constants added to `graph`."""
    from onnx import helper, numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.array(1e-3, np.float32), "tiny"))
    N = helper.make_node
    # latency = F w = scale (F mean - G prior_fp) + G fp, G = F gain_t^T: the graph gathers
    # these R + 1 columns per design instead of d (`_latency_basis`), w = (scale, fp)
    return [
        N("ReduceMean", ["fp"], ["fp_mean"], axes=[1], keepdims=1),
        N("Concat", ["fp_mean", "fp", "budget", "budget"], ["wb"], axis=1),
        # network_inputs: ratios to the mean, at least 1e-3 (imputed cells may dip)
        N("Concat", ["fp", "budget"], ["fp_b"], axis=1),
        N("Div", ["fp_b", "fp_mean"], ["fp_b_rel"]),
        N("Max", ["fp_b_rel", "tiny"], ["fp_b_low"]),
        N("Log", ["fp_b_low"], ["x"]),
    ]


def _quantized(mlp: bytes) -> bytes:
    """The MLP with int8 weights and dynamically quantized activations (onnxruntime's
    quantize_dynamic): its GEMMs are most of the network's time at the bench's batch.
    (A static version, fixed calibrated activation scales with QGemm, was as fast at 78
    rows and chose slightly worse on the leave-out splits: not kept.)"""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from passes.quantize import PRE_PROCESSED

    model = onnx.load_from_string(mlp)
    # nothing to pre-process in an MLP: the mark stops quantize_dynamic's advice to do it
    onnx.helper.set_model_props(model, {PRE_PROCESSED[0]: PRE_PROCESSED[1]})
    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder) / "mlp.onnx", Path(folder) / "mlp_int8.onnx"
        src.write_bytes(model.SerializeToString())
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def _chooser_onnx(mlp: bytes, space: DesignSpace, candidates: np.ndarray,
                  predictor: ConditionedPredictor | None = None) -> bytes:
    """The MLP plus decoding and repair as one ONNX graph, so a batch is one onnxruntime call.

    Inputs: x (network inputs), w (n, d) predictor weights in ms, budgets (n, 1) float64,
    value (keys, 1) (`DesignSpace.values_by_key`). With `predictor`: fingerprints (n, R)
    float64 and budgets only; the predictor's weights and the network inputs are computed in
    the graph (`_fingerprint_nodes`) and every design with an objective may be chosen.
    Output rows (1, n): the chosen row of `space`, -1 where no candidate that may be chosen
    is predicted within budget. Designs are addressed by key (`DesignSpace.keys`) inside.

    Candidates per (device, budget): the designs formed by the first or second most likely
    value of each head (`_flip_patterns`), keys from one Gemm, and the ladder of faster front
    designs of the most likely one (`candidate_table`), then a sentinel; the choice is the
    best value predicted within budget. Each candidate gathers one row of a table by key,
    (-S latency basis, 0.999996 S, value) with S = 2^80; times (w, budget, budget) its terms
    sum to S (0.999996 budget - latency) and budget x value, and its score is the smaller
    of the two: budget x value (> 0) when predicted within budget, far below 0 otherwise
    (S is a power of two, so the sign of the slack is that of the unscaled sum; the budget
    is shaved so that float32 rounding of the latency cannot break it). Keys that are not
    designs and designs that may not be chosen have value -1 (score < 0); the sentinel
    scores 0 and maps to row -1, so it is picked exactly when nothing else is feasible.

    Laid out for onnxruntime at the bench's batch (78), where each node costs a fixed
    overhead, each gathered index about 8 ns and each pass over the (candidates, n, columns)
    block a few us: candidates are the leading axis, so weighting the gathered rows by each
    device's (w, budget) is one broadcasting Mul, and the two sums per candidate are two
    Gemms with a transposed operand, (1, cols) x (C n, cols)^T. Batched MatMuls, one
    (candidates, cols) x (cols, 1) product per device, cost about twice as much (one small
    GEMM per device); one M = 2 Gemm and a ReduceMin over its two rows cost more than two
    M = 1 Gemms and a Min."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not space.dense:
        raise BadInputError("design space too large for the amortized optimizer's lookup")
    model = onnx.load_from_string(_quantized(mlp) if QUANTIZE else mlp)
    graph = model.graph
    heads, width = len(space.sizes), int(space.sizes.max())
    flips = _flip_patterns(heads)
    keys = len(space.lookup)
    exists = space.lookup >= 0
    row = np.maximum(space.lookup, 0)
    # keys of every flip pattern from the interleaved (first, second) indices, one Gemm,
    # whose bias adds two constant candidates: the fastest front design (`candidate_table`'s
    # last column, the same for every design) and the sentinel key (a zero table row, so
    # score 0, and row -1: chosen exactly when nothing else is feasible)
    keymat = np.zeros((len(flips) + 2, 2 * heads))
    keymat[:len(flips), 0::2] = space.radix * ~flips
    keymat[:len(flips), 1::2] = space.radix * flips
    key_bias = np.r_[np.zeros(len(flips)), space.keys[candidates[0, -1]], keys][:, None]
    # per-design rungs of the ladder (LADDER): keys by the decoded design's key
    rungs = np.where(exists[:, None], space.keys[candidates[row, :-1]],
                     np.arange(keys)[:, None])
    # table by key, (basis, 1) x (-S, 0.999996 S): the Mul by (w, budget) gives the slack's
    # terms; keys that are not designs: a zero basis row (their value is -1); last, the
    # sentinel's zero row
    basis = np.where(exists[:, None], _latency_basis(space, predictor)[row], 0)
    table = np.vstack([np.column_stack([-SLACK_SCALE * basis,
                                        np.full(keys, SLACK_SCALE * (1 - 4e-6))]),
                       np.zeros(basis.shape[1] + 1)])
    cols = table.shape[1] + 1
    consts = {"keymat": keymat, "key_bias": key_bias,
              "sum_slack": (np.arange(cols) < cols - 1)[None],    # S (shaved budget - latency)
              "sum_value": (np.arange(cols) == cols - 1)[None],   # budget x value
              "k2": np.array([2]), "grid_shape": np.array([0, heads, width]),
              "pair_shape": np.array([0, 2 * heads]),
              "score_shape": np.array([len(keymat) + rungs.shape[1], -1]),
              "flat_shape": np.array([-1, cols])}
    if predictor is not None:
        consts["table"] = np.column_stack([table, space.value32])
    else:
        consts["table_w"] = table
    consts = {k: v.astype(np.float32 if v.dtype.kind in "fb" else np.int64)
              for k, v in consts.items()}
    if rungs.shape[1]:
        consts["rungs"] = rungs.T.astype(np.int32)   # keys: half the table's bytes
        consts["zero_s"] = np.array(0, np.int64)
    consts["row_of_key"] = np.r_[space.lookup, -1]
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    N = helper.make_node
    if np.all(space.sizes == width):
        nodes = [N("Reshape", ["logits", "grid_shape"], ["grid"])]          # (n, H, M)
    else:   # pad short heads with -1e9 logits
        index = np.full((heads, width), int(space.sizes.sum()), np.int64)
        for h, (a, size) in enumerate(zip(space.head_offsets[:-1], space.sizes, strict=True)):
            index[h, :size] = a + np.arange(size)
        graph.initializer.extend([numpy_helper.from_array(index, "index"),
                                  numpy_helper.from_array(np.array([1], np.int64), "one"),
                                  numpy_helper.from_array(np.full((1, 1), -1e9, np.float32),
                                                          "pad")])
        nodes = [N("Shape", ["logits"], ["shape"], start=0, end=1),
                 N("Concat", ["shape", "one"], ["padshape"], axis=0),
                 N("Expand", ["pad", "padshape"], ["padcol"]),
                 N("Concat", ["logits", "padcol"], ["padded"], axis=1),
                 N("Gather", ["padded", "index"], ["grid"], axis=1)]
    if predictor is not None:
        nodes = [N("Cast", ["fingerprints"], ["fp"], to=TensorProto.FLOAT),
                 *_fingerprint_nodes(graph, predictor), *graph.node, *nodes]
        del graph.node[:]
    else:
        nodes += [N("Concat", ["w", "budget", "budget"], ["wb"], axis=1),
                  N("Concat", ["table_w", "value"], ["table"], axis=1)]
    nodes = [N("Cast", ["budgets"], ["budget"], to=TensorProto.FLOAT), *nodes]
    graph.node.extend(nodes + [
        N("TopK", ["grid", "k2"], ["_top", "best2"], axis=-1),             # (n, H, 2)
        N("Cast", ["best2"], ["best2_f"], to=TensorProto.FLOAT),
        N("Reshape", ["best2_f", "pair_shape"], ["pairs"]),                 # (n, 2H)
        N("Gemm", ["keymat", "pairs", "key_bias"], ["keys_f"], transB=1),  # (K + 2, n)
        N("Cast", ["keys_f"], ["fixed" if rungs.shape[1] else "cand"], to=TensorProto.INT32),
        *([] if not rungs.shape[1] else [
            N("Gather", ["fixed", "zero_s"], ["decoded"], axis=0),          # (n,)
            N("Gather", ["rungs", "decoded"], ["rung_keys"], axis=1),       # (L, n)
            N("Concat", ["fixed", "rung_keys"], ["cand"], axis=0)]),        # (C, n)
        N("Gather", ["table", "cand"], ["cf"]),                             # (C, n, cols)
        N("Mul", ["cf", "wb"], ["terms"]),
        N("Reshape", ["terms", "flat_shape"], ["terms_2d"]),                # (C n, cols)
        N("Gemm", ["sum_slack", "terms_2d"], ["slack"], transB=1),         # (1, C n)
        N("Gemm", ["sum_value", "terms_2d"], ["value_b"], transB=1),
        N("Min", ["slack", "value_b"], ["score_flat"]),
        N("Reshape", ["score_flat", "score_shape"], ["score"]),             # (C, n)
        # the first best: a candidate predicted within budget if any, else the sentinel
        N("ArgMax", ["score"], ["pick"], axis=0, keepdims=1),              # (1, n)
        N("GatherElements", ["cand", "pick"], ["choice"], axis=0),
        N("Gather", ["row_of_key", "choice"], ["rows"]),
        N("ReduceMin", ["rows"], ["lowest"], keepdims=0),   # < 0: some row needs a search
    ])
    if predictor is not None:
        del graph.input[:]
        graph.input.extend([helper.make_tensor_value_info(
            "fingerprints", TensorProto.DOUBLE, ["n", predictor.n_reference])])
    else:
        graph.input.extend([helper.make_tensor_value_info(
            "w", TensorProto.FLOAT, ["n", space.features.shape[1]])])
    graph.input.extend([helper.make_tensor_value_info("budgets", TensorProto.DOUBLE,
                                                      ["n", 1])])
    if predictor is None:
        graph.input.extend([helper.make_tensor_value_info("value", TensorProto.FLOAT,
                                                          [keys + 1, 1])])
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info("rows", TensorProto.INT64, [1, "n"]),
                         helper.make_tensor_value_info("lowest", TensorProto.INT64, [])])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def refine(space: DesignSpace, rows: np.ndarray, weights: np.ndarray, budgets: np.ndarray,
           allowed: np.ndarray, steps: int = REFINE_STEPS) -> np.ndarray:
    """Hill-climb from `rows` over single-column changes: move to the best objective predicted
    within budget (or, while none is, to the fastest change). For the verification short list,
    which is not timed: the direct choice stays one onnxruntime call."""
    objective = np.where(allowed & np.isfinite(space.objective), space.objective, -np.inf)
    current = np.asarray(rows, np.int64).copy()
    todo = np.arange(len(current))
    for _ in range(steps):
        if not len(todo):
            break
        cand = space.neighbours[current[todo]]            # column 0: the design itself
        safe = np.maximum(cand, 0)
        lat = np.einsum("nmd,nd->nm", space.features[safe], weights[todo])
        lat = np.where(cand >= 0, lat, np.inf)
        value = np.where(lat <= budgets[todo, None], objective[safe], -np.inf)
        best = np.argmax(value, axis=1)
        got = np.isfinite(value[np.arange(len(todo)), best])
        step = np.where(got, best, np.argmin(np.where(objective[safe] > -np.inf, lat, np.inf),
                                             axis=1))
        current[todo] = cand[np.arange(len(todo)), step]
        todo = todo[step != 0]
    return current


# ---------------------------------------------------------------- training entry point

def train_amortized(predictor: ConditionedPredictor, space: DesignSpace,
                    training_fingerprints: np.ndarray | None = None,
                    cfg: TrainConfig | None = None) -> AmortizedOptimizer:
    """Train g on synthetic devices of the predictor's prior (+ the training devices'
    fingerprints), labels from exhaustive scoring with the predictor. Seeded by `cfg.seed`."""
    cfg = cfg or TrainConfig()
    if not np.isfinite(space.objective).any():
        raise BadInputError("the objective column has no value: nothing to optimize")
    fps = synthetic_fingerprints(predictor, cfg.devices, cfg.seed, cfg.fingerprint_noise,
                                 space.features)
    if training_fingerprints is not None and len(training_fingerprints):
        real = np.asarray(training_fingerprints, float)
        real = real / real.mean(axis=1, keepdims=True)
        fps = np.vstack([fps, np.repeat(real, 20, axis=0)])
    X, Y = _training_set(predictor, space, fps, cfg)
    params, mu, sd = _fit_network(X, Y, space.head_offsets, cfg)
    logger.info("amortized optimizer trained on %d (device, budget) pairs", len(X))
    return AmortizedOptimizer(_to_onnx(params, mu, sd), tuple(int(s) for s in space.sizes),
                              candidate_table(space, predictor, cfg.seed),
                              {"examples": int(len(X)), "seed": cfg.seed,
                               "alphabets": [a.tolist() for a in space.alphabets]})


# ---------------------------------------------------------------- additive tables (fleet planner)
#
# The same network idea on compile's additive cost tables (toolchain/optimize/costs.py), for
# the fleet's planner (toolchain/fleet/planner.py): one model, every device. A device is a
# weight vector w of a predictor linear in its weights, so each option's latency on it is
# X_opt @ w and each resolution's base latency X_base @ w (`TableFamily`); predicted drops do
# not depend on the device. g(device, budget) -> (input resolution, one option per decision)
# is an MLP with one softmax head per decision plus one for the resolution, trained on labels
# from the exact latency/drop front of each training device's tables (`pareto_front`), exported
# to ONNX and run by onnxruntime over all devices in one batch; its plan is then repaired with
# each device's own latencies (`repair_tables`).

TABLE_COMPONENTS = 32   # principal components of the device features fed to the network
TABLE_BUDGETS = 12      # training budgets per training device (log-uniform, `budget_range`)
TABLE_FRONT_CELLS = 500   # latency cells of the training devices' fronts (labels)
REPAIR_STEPS = 64       # greedy moves of the repair, at most, per phase
TABLE_RESOLUTIONS = 2   # most likely resolutions repaired per device; the better plan is kept


@dataclass(frozen=True)
class TableFamily:
    """One model's additive tables at every input resolution, for any device (see above).

    Options are numbered across decisions (`decision[o]`, options of a decision contiguous,
    the original form first) and are the same at every resolution; `X_base` (R, F) and `X_opt`
    (R, O, F) give base and per-option latency as a product with a device's weights (the
    predictor's constant is in `const`), `drop_base` (R,) the resolution's drop, `drop` (O,)
    each option's. `labels` name the options (CostTable labels)."""

    X_base: np.ndarray
    X_opt: np.ndarray
    drop_base: np.ndarray
    drop: np.ndarray
    decision: np.ndarray
    labels: tuple[str, ...]
    names: tuple[str, ...]          # decision names

    @cached_property
    def starts(self) -> np.ndarray:
        return np.r_[0, np.flatnonzero(np.diff(self.decision)) + 1, len(self.decision)]

    def latencies(self, W: np.ndarray, const: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(base (n, R), options (n, R, O)) latencies of devices with weights W (n, F)."""
        base = W @ self.X_base.T + np.asarray(const, float)[:, None]
        opt = np.einsum("rof,nf->nro", self.X_opt, W, optimize=True)
        return base, opt

    def table(self, r: int, base: float, opt: np.ndarray, allowed: np.ndarray | None = None
              ) -> CostTable:
        """Resolution r's CostTable for one device (options not `allowed` left out; option
        payloads are global option indices)."""
        from toolchain.optimize.costs import Decision, Metrics, Option

        decisions = []
        for d, (a, b) in enumerate(zip(self.starts[:-1], self.starts[1:], strict=True)):
            opts = tuple(Option(self.labels[o], float(opt[o]), float(self.drop[o]), payload=o)
                         for o in range(a, b) if allowed is None or allowed[o])
            decisions.append(Decision(self.names[d], opts))
        return CostTable(tuple(decisions), Metrics(float(base), float(self.drop_base[r]),
                                                   0.0, 0.0, 0.0))


def exact_tables(family: TableFamily, base: np.ndarray, opt: np.ndarray, budget: float,
                 allowed: np.ndarray | None = None) -> tuple[int, np.ndarray] | None:
    """The exact optimum (least predicted drop within the latency budget) of one device over
    every resolution: the MILP of toolchain/optimize/exact.py per resolution, resolutions in
    order of their own drop, skipped once that drop alone is no better than the best found.
    (resolution, option per decision) or None when nothing fits."""
    from toolchain.errors import InfeasibleError
    from toolchain.optimize.costs import Budget
    from toolchain.optimize.exact import solve_exact

    best = None
    for r in np.argsort(family.drop_base, kind="stable"):
        if best is not None and family.drop_base[r] >= best[0]:
            break
        table = family.table(int(r), base[r], opt[r], allowed)
        try:
            sol = solve_exact(table, Budget(latency_ms=float(budget)))
        except InfeasibleError:
            continue
        if best is None or sol.metrics.drop < best[0] - 1e-12:
            picks = np.array([d.options[j].payload for d, j in
                              zip(table.decisions, sol.picks, strict=True)])
            best = (sol.metrics.drop, int(r), picks)
    return None if best is None else (best[1], best[2])


def plan_costs(family: TableFamily, base: np.ndarray, opt: np.ndarray, r: np.ndarray,
               picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(latency, drop) per device of plans given as resolution (n,) and options (n, D)."""
    n = np.arange(len(r))
    lat = base[n, r] + opt[n[:, None], r[:, None], picks].sum(axis=1)
    drop = family.drop_base[r] + family.drop[picks].sum(axis=1)
    return lat, drop


def budget_range(family: TableFamily, base: np.ndarray, opt: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per device: (its fastest plan's latency, the unchanged model's latency). The rule both
    training and the benchmark draw budgets from (log-uniform, from 1.05 x the first, at most
    the second, to the second); it reads only the device's own latencies."""
    lo = np.full(len(base), np.inf)
    for r in range(base.shape[1]):
        fastest = base[:, r] + np.array([opt[:, r, a:b].min(axis=1) for a, b in
                                         zip(family.starts[:-1], family.starts[1:],
                                             strict=True)]).sum(axis=0)
        lo = np.minimum(lo, fastest)
    return lo, base[:, int(np.argmin(family.drop_base))]


def _table_features(base: np.ndarray, opt: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """Scale-free network inputs: every latency over the device's unchanged-model latency,
    then log(budget / that latency)."""
    ref = base[:, :1]
    n = len(base)
    return np.column_stack([base / ref, opt.reshape(n, -1) / ref,
                            np.log(np.asarray(budgets, float)[:, None] / ref)])


def _front_labels(family: TableFamily, base: np.ndarray, opt: np.ndarray,
                  budgets: np.ndarray) -> list[tuple[int, np.ndarray] | None]:
    """Labels for one training device at several budgets: its exact fronts (one DP per
    resolution, toolchain/optimize/pareto.py) read at each budget."""
    from toolchain.optimize.pareto import pareto_front

    points = []   # (latency, drop, r, options)
    for r in range(base.shape[0]):
        table = family.table(r, base[r], opt[r])
        for sol in pareto_front(table, cells=TABLE_FRONT_CELLS):
            picks = np.array([d.options[j].payload for d, j in
                              zip(table.decisions, sol.picks, strict=True)])
            points.append((sol.metrics.latency_ms, sol.metrics.drop, r, picks))
    out = []
    for b in budgets:
        fit = [p for p in points if p[0] <= b]
        best = min(fit, key=lambda p: (p[1], p[0])) if fit else None
        out.append(None if best is None else (best[2], best[3]))
    return out


@dataclass(frozen=True)
class TablePlanner:
    """g(device, budget) -> plan over a TableFamily, as ONNX (see the section comment)."""

    onnx_model: bytes = field(repr=False)
    meta: dict = field(default_factory=dict, compare=False)

    @cached_property
    def _session(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(self.onnx_model, opts, providers=["CPUExecutionProvider"])

    def choose(self, family: TableFamily, base: np.ndarray, opt: np.ndarray,
               budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(resolution (n,), options (n, D)) per device: the network's plan for all devices
        in one onnxruntime call, decoded and repaired (`repair_tables`) first at its most
        likely resolution, then at the others in order of their own drop for the devices
        whose best repaired drop so far is above that drop (as `exact_tables` prunes); the
        best plan within budget is kept (none: the fastest repaired)."""
        budgets = np.asarray(budgets, float)
        x = _table_features(base, opt, budgets).astype(np.float32)
        logits = self._session.run(None, {"x": x})[0]
        R = base.shape[1]
        heads = logits[:, R:]
        picks = np.stack([family.starts[d] + np.argmax(heads[:, a:b], axis=1)
                          for d, (a, b) in enumerate(zip(family.starts[:-1], family.starts[1:],
                                                         strict=True))], axis=1)
        best_r = np.argmax(logits[:, :R], axis=1)
        best_p = repair_tables(family, base, opt, budgets, best_r, picks)
        lat, drop = plan_costs(family, base, opt, best_r, best_p)
        score = np.where(lat <= budgets * (1 + 1e-9), drop, 1e12 + lat)
        for r in np.argsort(family.drop_base, kind="stable"):
            todo = np.flatnonzero((best_r != r) & (score > family.drop_base[r]))
            if not len(todo):
                continue
            rr = np.full(len(todo), r)
            p = repair_tables(family, base[todo], opt[todo], budgets[todo], rr, picks[todo])
            lat, drop = plan_costs(family, base[todo], opt[todo], rr, p)
            new = np.where(lat <= budgets[todo] * (1 + 1e-9), drop, 1e12 + lat)
            better = new < score[todo] - 1e-12
            idx = todo[better]
            best_r[idx], best_p[idx], score[idx] = r, p[better], new[better]
        return best_r, best_p

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "planner.onnx", self.onnx_model)
        atomic_write(folder / "meta.json", json.dumps({"kind": "table-planner", **self.meta},
                                                      indent=2))


def repair_tables(family: TableFamily, base: np.ndarray, opt: np.ndarray, budgets: np.ndarray,
                  r: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Make every device's plan fit its budget by its own latencies, then improve it; all
    devices at once (greedy, each move changes one decision; each step works only on the
    devices that still move):
    1. while over budget: the move that saves latency at the least drop added per ms saved;
    2. while some move lowers the drop and keeps the plan within budget: the one that lowers
       it most.
    A device nothing brings within budget ends at the fastest plan phase 1 reached."""
    # (n, O) at each device's resolution; float32 halves the bytes each step reads (the
    # plan's latency is summed in float64 below and checked by the caller)
    lat_o = opt[np.arange(len(r)), r].astype(np.float32)
    drop_o = family.drop.astype(np.float32)
    dec = family.decision
    picks = picks.copy()
    budgets = np.asarray(budgets, float) * (1 - 1e-6)   # float32 steps stay within budget
    rows_all = np.arange(len(r))[:, None]
    lat = base[np.arange(len(r)), r] + opt[np.arange(len(r)), r][rows_all, picks].sum(axis=1)
    for phase in (1, 2):
        todo = np.flatnonzero(lat > budgets) if phase == 1 else np.flatnonzero(lat <= budgets)
        for _ in range(REPAIR_STEPS):
            if not len(todo):
                break
            L = lat_o[todo]
            cur = picks[todo][:, dec]                                  # (m, O)
            dlat = L - L[np.arange(len(todo))[:, None], cur]
            ddrop = drop_o - drop_o[cur]
            if phase == 1:
                score = np.where(dlat < -1e-12, ddrop / np.maximum(-dlat, 1e-12), np.inf)
            else:
                fits = dlat <= (budgets[todo] - lat[todo])[:, None]
                score = np.where((ddrop < -1e-12) & fits, ddrop, np.inf)
            move = np.argmin(score, axis=1)
            rows = np.arange(len(todo))
            moving = np.isfinite(score[rows, move])
            todo, move, rows = todo[moving], move[moving], rows[moving]
            picks[todo, dec[move]] = move
            lat[todo] += dlat[rows, move]
            if phase == 1:
                todo = todo[lat[todo] > budgets[todo]]
    return picks


def train_table_planner(family: TableFamily, W: np.ndarray, const: np.ndarray,
                        cfg: TrainConfig | None = None) -> TablePlanner:
    """Train g on the training devices (weights W (n, F), constants (n,)): TABLE_BUDGETS
    budgets each (`budget_range`, seeded), labels from their exact fronts; seeded by cfg.seed."""
    cfg = cfg or TrainConfig(hidden=(128, 128), epochs=60, batch=128)
    rng = np.random.default_rng(cfg.seed)
    base, opt = family.latencies(W, const)
    lo, hi = budget_range(family, base, opt)
    X, Y = [], []
    R = base.shape[1]
    for i in range(len(W)):
        budgets = np.exp(rng.uniform(np.log(min(1.05 * lo[i], hi[i])), np.log(hi[i]),
                                     TABLE_BUDGETS))
        for b, label in zip(budgets, _front_labels(family, base[i], opt[i], budgets),
                            strict=True):
            if label is None:
                continue
            X.append(_table_features(base[i:i + 1], opt[i:i + 1], [b])[0])
            Y.append(np.r_[label[0], label[1] - family.starts[:-1]])
    X, Y = np.array(X), np.array(Y)
    offsets = np.cumsum(np.r_[0, R, np.diff(family.starts)])
    # principal components of the device features (the budget column is kept as it is)
    dev = X[:, :-1]
    centre = dev.mean(axis=0)
    _, _, Vt = np.linalg.svd(dev - centre, full_matrices=False)
    P = Vt[:TABLE_COMPONENTS].T
    Z = np.column_stack([(dev - centre) @ P, X[:, -1]])
    params, mu, sd = _fit_network(Z, Y, offsets, cfg)
    # fold the projection and the standardization into the first layer: g reads raw features
    W0, b0 = params[0]
    Pfull = np.zeros((X.shape[1], Z.shape[1]))
    Pfull[:-1, :-1] = P
    Pfull[-1, -1] = 1.0
    shift = np.r_[centre @ P, 0.0]
    W0s = W0 / sd[:, None]
    folded = [[Pfull @ W0s, b0 - ((shift + mu) / sd) @ W0]] + params[1:]
    onnx_model = _to_onnx(folded, np.zeros(X.shape[1]), np.ones(X.shape[1]))
    logger.info("table planner trained on %d (device, budget) pairs", len(X))
    return TablePlanner(onnx_model, {"examples": int(len(X)), "devices": int(len(W)),
                                     "seed": cfg.seed})
