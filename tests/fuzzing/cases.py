"""A fuzz case (the files it lays out, the fleetc command, the paths it may write) and the
seeded schedule of cases: case `index` of a run with seed `seed` is always the same case, so
every failure replays from its id (`kind:seed:index[:heavy]`)."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["KINDS", "Case", "make_case", "parse_case_id", "schedule", "pick", "WEIRD",
           "doc_paths", "get_path", "set_path", "delete_path"]

KINDS = ("model", "plan", "fleet", "target", "calib")


@dataclass
class Case:
    """Files are relative to the case folder (the working directory of the run); `home/...`
    is $FLEETC_HOME. `expect_bad`: the generator made the input invalid on purpose (exit 2
    expected; an exit 0 is counted as "accepted invalid", a figure, not an oracle failure)."""

    mutation: str
    args: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)   # path -> link target
    fifos: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)      # -o, --depfile
    output_kind: str | None = None                        # "onnx", "compile" or "fleet"
    expect_bad: bool | None = None
    kind: str = ""
    seed: int = 0
    index: int = 0
    heavy: bool = False

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.seed}:{self.index}" + (":heavy" if self.heavy else "")

    @property
    def command(self) -> str:
        return "fleetc " + shlex.join(self.args)

    def protected(self) -> list[str]:
        """Every path the case laid out: none may change (inputs and a user's other files)."""
        return [*self.files, *self.links, *self.fifos, *self.dirs]


def pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def make_case(kind: str, seed: int, index: int, heavy: bool = False) -> Case:
    """Case `index` of kind `kind` for `seed`; heavy cases run the slow command (compile, a
    fleet build) where the kind has one."""
    from tests.fuzzing import calib, documents, models

    make = {"model": models.model_case, "plan": documents.plan_case,
            "fleet": documents.fleet_case, "target": documents.target_case,
            "calib": calib.calib_case}[kind]
    rng = np.random.default_rng([seed, index, KINDS.index(kind)])
    return replace(make(rng, heavy), kind=kind, seed=seed, index=index, heavy=heavy)


def parse_case_id(text: str) -> tuple[str, int, int, bool]:
    parts = text.split(":")
    if len(parts) not in (3, 4) or parts[0] not in KINDS or parts[3:] not in ([], ["heavy"]):
        raise ValueError(f"a case id is KIND:SEED:INDEX[:heavy], got {text!r}")
    return parts[0], int(parts[1]), int(parts[2]), len(parts) == 4


def schedule(n: int, mix: dict[str, tuple[int, int]]) -> list[tuple[str, int, bool]]:
    """(kind, index, heavy) for n cases. `mix` gives per kind (cases, heavy cases) out of
    every sum-of-cases: kinds are interleaved in that proportion (smooth weighted round
    robin) and each kind's heavy cases are spread evenly over its cases."""
    order = _interleave({k: c for k, (c, _) in mix.items() if c})
    seen = dict.fromkeys(KINDS, 0)
    out = []
    for i in range(n):
        kind = order[i % len(order)]
        count, heavy = mix[kind]
        j = seen[kind] % count
        seen[kind] += 1
        out.append((kind, i, (j + 1) * heavy // count > j * heavy // count))
    return out


def _interleave(weights: dict[str, int]) -> list[str]:
    total = sum(weights.values())
    credit = dict.fromkeys(weights, 0)
    order = []
    for _ in range(total):
        for k, w in weights.items():
            credit[k] += w
        best = max(credit, key=credit.__getitem__)
        credit[best] -= total
        order.append(best)
    return order


# --- documents (plans, fleet files, targets) as trees of dicts and lists -------------------

def _weird() -> list:
    from tests.fuzzing.bases import Raw

    return ["x", "", 0, -1, 1.5, True, [], {}, ["host-ort-1t"], {"a": 1}, 1e308,
            float("nan"), float("inf"), float("-inf"), Raw("9" * 5000),
            Raw("[" * 100_000 + "]" * 100_000), "a" * 300_000, "../../x", "host\n", "\u0000",
            "é", 2 ** 63, -(2 ** 63) - 1, 10 ** 30]


WEIRD = _weird()


def doc_paths(doc, prefix: tuple = ()) -> list[tuple]:
    """Every node's path (dict keys and list indexes), the root () included."""
    out = [prefix]
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) \
        if isinstance(doc, list) else []
    for key, value in items:
        out += doc_paths(value, (*prefix, key))
    return out


def get_path(doc, path: tuple):
    for key in path:
        doc = doc[key]
    return doc


def set_path(doc, path: tuple, value):
    """`doc` with the node at `path` replaced (the root replaced: `value` itself)."""
    if not path:
        return value
    get_path(doc, path[:-1])[path[-1]] = value
    return doc


def delete_path(doc, path: tuple) -> None:
    parent = get_path(doc, path[:-1])
    del parent[path[-1]]
