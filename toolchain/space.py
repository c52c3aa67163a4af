"""Kernels, choices, the design space and plans.

A `Kernel` is a group of nodes a runtime executes as one (conv + bn + activation), the unit of
prediction and of choice. A `Choice` is one legal option for a kernel. The `Space` lists, per
kernel, the legal options, plus the skippable residual blocks and the input resolutions. A
`Plan` picks one option per kernel (JSON, versioned); whatever it does not name keeps its form.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

from toolchain.errors import BadInputError
from toolchain.files import atomic_write, load_json

__all__ = ["Kernel", "Choice", "Space", "Plan", "PLAN_VERSION", "PRECISIONS", "BYTES_PER_PRECISION",
           "WIDTHS", "pruned_channels"]

logger = logging.getLogger(__name__)

PLAN_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
BYTES_PER_PRECISION = {"fp32": 4, "fp16": 2, "int8": 1}   # bytes per weight / activation element
WIDTHS = (1.0, 0.75, 0.5)


def pruned_channels(channels: int, width: float) -> int:
    """Channels kept at `width`: a multiple of 8 (vector-friendly) when there are 32 or more,
    else the nearest whole number; at least 1 and at most `channels`."""
    if width >= 1.0:
        return channels
    if channels >= 32:
        return min(channels, max(8, int(round(channels * width / 8)) * 8))
    return min(channels, max(1, int(round(channels * width))))


@dataclass(frozen=True)
class Kernel:
    """One fused group of nodes; shapes are of the anchor node (the first of `nodes`)."""

    name: str
    op_type: str
    nodes: tuple[str, ...]
    fused: tuple[str, ...] = ()
    input_shape: tuple | None = None
    output_shape: tuple | None = None
    weight_shape: tuple | None = None
    kernel_shape: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    group: int = 1
    macs: int = 0
    flops: int = 0
    params: int = 0
    weight_bytes: int = 0
    activation_bytes: int = 0
    dtype: str = "float32"

    @property
    def is_compute(self) -> bool:
        """Conv/Gemm/MatMul with a weight: the kernels that take precision and width choices."""
        return self.op_type in ("Conv", "Gemm", "MatMul") and self.weight_shape is not None

    @property
    def depthwise(self) -> bool:
        return (self.op_type == "Conv" and self.group > 1 and self.weight_shape is not None
                and self.weight_shape[1] == 1)


@dataclass(frozen=True)
class Choice:
    """One option for one kernel; `kernel_size` None keeps the original size."""

    precision: str = "fp32"
    width: float = 1.0
    kernel_size: int | None = None

    @property
    def label(self) -> str:
        """Short text for tables and reports: "int8", "fp32/w0.75", "fp16/k3"."""
        parts = [self.precision]
        if self.width != 1.0:
            parts.append(f"w{self.width:g}")
        if self.kernel_size is not None:
            parts.append(f"k{self.kernel_size}")
        return "/".join(parts)

    def to_json(self) -> dict:
        out: dict = {"precision": self.precision}
        if self.width != 1.0:
            out["width"] = self.width
        if self.kernel_size is not None:
            out["kernel_size"] = self.kernel_size
        return out


@dataclass
class Space:
    """Legal options: per kernel name {"precision": [...], "width": [...], "kernel_size": [...]};
    `blocks` maps a skippable residual block's name to the nodes it removes;
    `resolutions` are legal input sizes (height = width) for fully convolutional models."""

    options: dict[str, dict[str, list]] = field(default_factory=dict)
    blocks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    resolutions: list[int] = field(default_factory=list)
    input_name: str | None = None

    def size_log10(self) -> float:
        total = sum(math.log10(max(1, len(o.get("precision", [1]))))
                    + math.log10(max(1, len(o.get("width", [1]))))
                    + math.log10(max(1, len(o.get("kernel_size", [1]))))
                    for o in self.options.values())
        total += len(self.blocks) * math.log10(2)
        return total + (math.log10(len(self.resolutions)) if self.resolutions else 0.0)

    def choices(self, kernel: str, precisions: tuple[str, ...] = PRECISIONS) -> list[Choice]:
        """Every legal Choice of one kernel (cartesian product), fp32/width 1 first."""
        o = self.options[kernel]
        sizes = o.get("kernel_size") or [None]
        return [Choice(p, w, None if k == sizes[0] else k)
                for p in o.get("precision", ["fp32"]) if p in precisions
                for w in o.get("width", [1.0]) for k in sizes]


@dataclass
class Plan:
    """One choice per named kernel, skipped blocks and whole-model choices (schema version 1)."""

    kernels: dict[str, Choice] = field(default_factory=dict)
    skip_blocks: list[str] = field(default_factory=list)
    input_shape: dict[str, list[int]] = field(default_factory=dict)
    target: str | None = None

    def to_json(self) -> str:
        doc = {"version": PLAN_VERSION, "target": self.target,
               "model": {"input_shape": {k: list(v) for k, v in sorted(self.input_shape.items())}},
               "kernels": {k: c.to_json() for k, c in sorted(self.kernels.items())},
               "skip_blocks": sorted(self.skip_blocks)}
        return json.dumps(doc, indent=2, sort_keys=False) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        atomic_write(path, self.to_json())

    def summary(self) -> str:
        """The plan in a few words: "input 1x3x160x160, 12 kernels int8, 3 at width 0.5, 1
        block skipped"; "the original model" for an empty plan."""
        parts = [f"input {'x'.join(map(str, s))}" for s in self.input_shape.values()]
        counts: dict[str, int] = {}
        for c in self.kernels.values():
            if c.precision != "fp32":
                counts[c.precision] = counts.get(c.precision, 0) + 1
            if c.width != 1.0:
                counts[f"at width {c.width:g}"] = counts.get(f"at width {c.width:g}", 0) + 1
            if c.kernel_size is not None:
                counts["with smaller kernels"] = counts.get("with smaller kernels", 0) + 1
        parts += [f"{n} kernel{'s' if n > 1 else ''} {what}" for what, n in counts.items()]
        if self.skip_blocks:
            n = len(self.skip_blocks)
            parts.append(f"{n} block{'s' if n > 1 else ''} skipped")
        return ", ".join(parts) or "the original model"

    @classmethod
    def from_dict(cls, doc: dict, label: str = "plan") -> Plan:
        """A plan from its JSON document, validated against the schema (docs/rewrite.md):
        types, ranges, finite numbers, lengths. Each error is a BadInputError naming `label`,
        the key and the value. Whether the model allows the choices is `check`'s job."""
        if not isinstance(doc, dict):
            raise BadInputError(f"{label}: a plan is a JSON object, got {_kind(doc)}")
        if type(doc.get("version")) is not int or doc["version"] != PLAN_VERSION:
            raise BadInputError(f"{label}: plan version {doc.get('version')!r} is not supported "
                                f"(this fleetc reads version {PLAN_VERSION})")
        _keys(doc, _PLAN_KEYS, label)
        target = doc.get("target")
        if target is not None and not _text(target):
            raise BadInputError(f"{label}: target must be a target name (a string) or null, got "
                                f"{target!r}")
        kernels = _mapping(doc, "kernels", label)
        skip = doc.get("skip_blocks") or []
        if not isinstance(skip, list) or not all(_text(b) for b in skip):
            raise BadInputError(f"{label}: skip_blocks must be a list of block names, got "
                                f"{skip!r}")
        return cls(kernels={name: _choice(c, f"{label}: kernels.{name}")
                            for name, c in kernels.items()},
                   skip_blocks=list(skip), input_shape=_input_shapes(doc, label), target=target)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read and validate a plan file (a regular file of bounded size, depth and numbers)."""
        return cls.from_dict(load_json(path, "plan file"), str(path))

    def check(self, space: Space, precisions: tuple[str, ...] = PRECISIONS) -> None:
        """Raise BadInputError naming the first choice the space does not allow."""
        for name, c in self.kernels.items():
            if name not in space.options:
                raise BadInputError(f"plan names kernel {name!r}, which the model has no "
                                    "choices for (see `fleetc inspect` for kernel names)")
            o = space.options[name]
            legal = [p for p in o.get("precision", ["fp32"]) if p in precisions]
            if c.precision not in legal:
                raise BadInputError(f"kernel {name!r}: precision {c.precision} is not legal "
                                    f"here (allowed: {legal})")
            if c.width not in o.get("width", [1.0]):
                raise BadInputError(f"kernel {name!r}: width {c.width} is not legal (allowed: "
                                    f"{o.get('width', [1.0])})")
            if c.kernel_size is not None and c.kernel_size not in o.get("kernel_size", []):
                raise BadInputError(f"kernel {name!r}: kernel_size {c.kernel_size} is not legal "
                                    f"(allowed: {o.get('kernel_size', [])})")
        for b in self.skip_blocks:
            if b not in space.blocks:
                raise BadInputError(f"plan skips block {b!r}, which is not a skippable residual "
                                    f"block of this model (skippable: {sorted(space.blocks)})")
        for name, shape in self.input_shape.items():
            if name != space.input_name or len(shape) != 4 or shape[2] not in space.resolutions \
                    or shape[2] != shape[3]:
                raise BadInputError(f"plan input shape {name}={shape} is not legal (allowed: "
                                    f"{space.input_name} at resolutions {space.resolutions})")


_PLAN_KEYS = ("version", "target", "model", "kernels", "skip_blocks")
_CHOICE_KEYS = ("precision", "width", "kernel_size")
_MAX_NAME = 1000       # characters of a kernel, block or input name
_MAX_RANK, _MAX_DIM = 8, 1 << 16


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _text(value) -> bool:
    """A name: a non-empty string of at most _MAX_NAME characters."""
    return isinstance(value, str) and 0 < len(value) <= _MAX_NAME


def _keys(doc: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(map(str, set(doc) - set(allowed)))
    if unknown:
        raise BadInputError(f"{where}: unknown keys {unknown} (allowed: {list(allowed)})")


def _mapping(doc: dict, key: str, where: str) -> dict:
    """doc[key]: an object whose keys are names (missing or null: empty)."""
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInputError(f"{where}: {key} must be an object, got {_kind(value)} {value!r}")
    for name in value:
        if not _text(name):
            raise BadInputError(f"{where}: {key}: a name must be 1-{_MAX_NAME} characters, got "
                                f"{name!r}")
    return value


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def _choice(c, where: str) -> Choice:
    if not isinstance(c, dict):
        raise BadInputError(f"{where}: expected an object with precision / width / kernel_size, "
                            f"got {c!r}")
    _keys(c, _CHOICE_KEYS, where)
    precision = c.get("precision", "fp32")
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise BadInputError(f"{where}: precision must be one of {list(PRECISIONS)}, got "
                            f"{precision!r}")
    width = c.get("width", 1.0)
    if not _number(width) or not 0 < width <= 1:
        raise BadInputError(f"{where}: width must be a number in (0, 1], got {width!r}")
    ks = c.get("kernel_size")
    if ks is not None and (type(ks) is not int or not 1 <= ks <= _MAX_DIM or ks % 2 == 0):
        raise BadInputError(f"{where}: kernel_size must be a positive odd integer, got {ks!r}")
    return Choice(precision, float(width), ks)


def _input_shapes(doc: dict, label: str) -> dict[str, list[int]]:
    """model.input_shape: {input name: [positive integers]}."""
    model = doc.get("model")
    if model is None:
        return {}
    if not isinstance(model, dict):
        raise BadInputError(f"{label}: model must be an object, got {_kind(model)} {model!r}")
    _keys(model, ("input_shape",), f"{label}: model")
    shapes = _mapping(model, "input_shape", f"{label}: model")
    for name, dims in shapes.items():
        if not isinstance(dims, list) or not 1 <= len(dims) <= _MAX_RANK or not all(
                type(d) is int and 1 <= d <= _MAX_DIM for d in dims):
            raise BadInputError(f"{label}: model.input_shape.{name} must be a list of 1-"
                                f"{_MAX_RANK} integers in 1..{_MAX_DIM}, got {dims!r}")
    return {name: list(dims) for name, dims in shapes.items()}
