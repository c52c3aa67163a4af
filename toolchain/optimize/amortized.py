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
ONNX and run with onnxruntime. Decoding takes the most likely value per column; if that design
is not among the allowed ones, or the predictor says it breaks the budget, it is repaired in one
batched step over a few candidates precomputed per network output (`candidate_table`: Pareto
designs of prior devices just below it, and a ladder of faster ones): the best objective
predicted within budget; as a last resort the allowed design with the best network score
among those predicted within budget (or the fastest predicted).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain.errors import BadInputError
from toolchain.predict.conditioned import ConditionedPredictor

__all__ = [
    "AmortizedOptimizer", "DesignSpace", "train_amortized", "synthetic_fingerprints",
    "exhaustive_choice", "TrainConfig", "candidate_table",
]

logger = logging.getLogger(__name__)

CANDIDATE_DEVICES = 300   # prior devices whose Pareto fronts give the repair's candidates
NEAREST = 12              # front designs just below the network's design
LADDER = (0.85, 0.7, 0.55, 0.4)   # and the best ones below these fractions of its latency
NEAREST_UP = 1.0
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    devices: int = 3000           # synthetic devices drawn from the predictor's prior
    budgets_per_device: int = 6
    quantiles: tuple[float, float] = (0.03, 0.8)   # budget range, as quantiles of predictions
    fingerprint_noise: float = 0.03                # relative noise of a fingerprint cell
    hidden: int = 128
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
        self._radix = np.r_[1, np.cumprod(self.sizes[::-1])[:-1]][::-1]
        total = int(np.prod(self.sizes.astype(float)))
        self._dense = total <= 5_000_000
        keys = self.digits @ self._radix
        if self._dense:
            self._lookup = np.full(total, -1, dtype=np.int64)
            self._lookup[keys] = np.arange(len(keys))
        else:
            self._map = {int(k): i for i, k in enumerate(keys)}

    @property
    def head_offsets(self) -> np.ndarray:
        return np.r_[0, np.cumsum(self.sizes)]

    def rows_of(self, digits: np.ndarray) -> np.ndarray:
        """Row of each digit vector (-1 when that design is not in the space)."""
        keys = np.asarray(digits, np.int64) @ self._radix
        if self._dense:
            return self._lookup[keys]
        return np.array([self._map.get(int(k), -1) for k in np.ravel(keys)],
                        dtype=np.int64).reshape(keys.shape)


def exhaustive_choice(pred: np.ndarray, objective: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """Per device (row of `pred`, predicted latency of every design): the best objective among
    designs predicted within its budget, else its fastest predicted design."""
    order = np.argsort(-objective, kind="mergesort")
    ok = pred[:, order] <= budgets[:, None]
    first = np.argmax(ok, axis=1)
    chosen = order[first]
    none = ~ok[np.arange(len(pred)), first]
    chosen[none] = np.argmin(pred[none], axis=1)
    return chosen


# ---------------------------------------------------------------- training data

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
    """Scale-free inputs: log(fp / mean fp) and log(budget / mean fp)."""
    fp = np.atleast_2d(np.asarray(fingerprints, float))
    fp = np.maximum(fp, 1e-3 * np.abs(fp).mean(axis=1, keepdims=True))  # imputed cells may dip
    scale = fp.mean(axis=1, keepdims=True)
    return np.column_stack([np.log(fp / scale), np.log(np.asarray(budgets, float)[:, None]
                                                        / scale)]).astype(np.float32)


def _training_set(predictor: ConditionedPredictor, space: DesignSpace,
                  fingerprints: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg.seed + 1)
    usable = np.isfinite(space.objective)
    objective = np.where(usable, space.objective, -np.inf)
    X, Y = [], []
    for start in range(0, len(fingerprints), 256):
        fp = fingerprints[start:start + 256]
        pred = predictor.device_weights(fp) @ space.features.T
        pred[:, ~usable] = np.inf
        ranked = np.sort(pred[:, usable], axis=1)
        for _ in range(cfg.budgets_per_device):
            q = rng.uniform(*cfg.quantiles, size=len(fp))
            budgets = ranked[np.arange(len(fp)), (q * (ranked.shape[1] - 1)).astype(int)]
            chosen = exhaustive_choice(pred, objective, budgets)
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
    params = _init([X.shape[1], cfg.hidden, cfg.hidden, int(offsets[-1])], rng)
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

    def session(self):
        import onnxruntime as ort

        cached = _SESSIONS.get(id(self))
        if cached is None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            cached = ort.InferenceSession(self.onnx_model, opts,
                                          providers=["CPUExecutionProvider"])
            _SESSIONS[id(self)] = cached
        return cached

    def logits(self, fingerprints: np.ndarray, budgets: np.ndarray) -> np.ndarray:
        x = network_inputs(fingerprints, budgets)
        return self.session().run(None, {"x": x})[0]

    def log_probs(self, logits: np.ndarray) -> np.ndarray:
        offsets = np.r_[0, np.cumsum(self.sizes)]
        return np.log(np.maximum(_head_softmax(logits.astype(float), offsets), 1e-30))

    def choose(self, space: DesignSpace, weights: np.ndarray, fingerprints: np.ndarray,
               budgets: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        """Row of `space` per (fingerprint, budget), decoded and repaired.

        `weights` (n, d): the predictor's device weights (ms) for each row of `fingerprints`;
        `allowed`: mask of rows that may be chosen (default: rows with an objective)."""
        allowed = np.isfinite(space.objective) if allowed is None else allowed
        logits = self.logits(fingerprints, budgets)
        return _repair(space, self.candidates, logits, self.log_probs, self.sizes, weights,
                       budgets, allowed)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in (("optimizer.onnx", self.onnx_model),
                           ("meta.json", json.dumps({"kind": "amortized-optimizer",
                                                     "version": FORMAT_VERSION,
                                                     "sizes": list(self.sizes),
                                                     **self.meta}, indent=2).encode())):
            with tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp:
                tmp.write(data)
            os.replace(tmp.name, folder / name)
        with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".npy") as tmp:
            np.save(tmp, self.candidates)
        os.replace(tmp.name, folder / "candidates.npy")

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


_SESSIONS: dict[int, object] = {}


def candidate_table(space: DesignSpace, predictor: ConditionedPredictor, seed: int,
                    devices: int = CANDIDATE_DEVICES, nearest: int = NEAREST,
                    ladder: tuple[float, ...] = LADDER) -> np.ndarray:
    """(rows, 1 + nearest + len(ladder)) repair candidates per network output, built once.

    Front = designs on the (objective, predicted latency) Pareto front of at least one of
    `devices` devices drawn from the predictor's prior. For design r: r itself, the `nearest`
    best-objective front designs no slower than r under the prior mean weights, and for each
    ladder factor f the best-objective front design no slower than f times r (so a device
    faster or slower than the mean on r's neighbours still finds a feasible design). Uses no
    test device."""
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
    front &= usable
    mean_lat = space.features @ predictor.mean
    members = np.flatnonzero(front)
    members = members[np.argsort(mean_lat[members], kind="mergesort")]
    # top[i]: the `nearest` best-objective members among the i fastest (-1 padded)
    top = np.full((len(members) + 1, nearest), -1, dtype=np.int64)
    best: list[int] = []
    for i, m in enumerate(members):
        best = sorted(best + [int(m)], key=lambda r: -objective[r])[:nearest]
        top[i + 1, :len(best)] = best
    fastest = members[0]
    prefix = np.searchsorted(mean_lat[members], NEAREST_UP * mean_lat, side="right")
    cols = [np.arange(len(objective)), *np.where(top[prefix] >= 0, top[prefix], fastest).T]
    for f in ladder:
        first = top[np.searchsorted(mean_lat[members], f * mean_lat, side="right"), 0]
        cols.append(np.where(first >= 0, first, fastest))
    return np.column_stack(cols)


def _repair(space: DesignSpace, candidates: np.ndarray, logits: np.ndarray, log_probs, sizes,
            weights: np.ndarray, budgets: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Decode the most likely design, then one batched step over its precomputed candidates
    (`candidate_table`): the best objective predicted within budget."""
    offsets = np.r_[0, np.cumsum(sizes)]
    digits = np.column_stack([np.argmax(logits[:, a:b], axis=1)
                              for a, b in zip(offsets[:-1], offsets[1:], strict=True)])
    current = space.rows_of(digits)
    objective = np.where(allowed & np.isfinite(space.objective), space.objective, -np.inf)
    rows = candidates[np.maximum(current, 0)]
    lat = np.matmul(space.features32[rows], weights.astype(np.float32)[:, :, None])[:, :, 0]
    value = np.where(lat <= budgets[:, None], objective[rows], -np.inf)
    value[current < 0] = -np.inf
    best = np.argmax(value, axis=1)
    chosen = rows[np.arange(len(rows)), best]
    last = np.flatnonzero(value[np.arange(len(rows)), best] == -np.inf)
    logp = log_probs(logits[last]) if len(last) else logits[:0]
    for k, i in enumerate(last):   # last resort: best network score within budget
        rows_ok = np.flatnonzero(allowed)
        lat_i = space.features[rows_ok] @ weights[i]
        score = logp[k][space.digits[rows_ok] + offsets[:-1]].sum(axis=1)
        within = lat_i <= budgets[i]
        chosen[i] = rows_ok[np.argmax(np.where(within, score, -np.inf))] if within.any() \
            else rows_ok[np.argmin(lat_i)]
    return chosen


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
