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
from pathlib import Path

from toolchain.errors import BadInputError
from toolchain.files import atomic_write

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

    @classmethod
    def from_dict(cls, doc: dict, label: str = "plan") -> Plan:
        if not isinstance(doc, dict):
            raise BadInputError(f"{label}: a plan is a JSON object")
        if doc.get("version") != PLAN_VERSION:
            raise BadInputError(f"{label}: plan version {doc.get('version')!r} is not supported "
                                f"(this fleetc reads version {PLAN_VERSION})")
        unknown = set(doc) - {"version", "target", "model", "kernels", "skip_blocks"}
        if unknown:
            raise BadInputError(f"{label}: unknown keys {sorted(unknown)}")
        kernels = {}
        for name, c in (doc.get("kernels") or {}).items():
            if not isinstance(c, dict) or set(c) - {"precision", "width", "kernel_size"}:
                raise BadInputError(f"{label}: kernel {name!r}: expected an object with "
                                    "precision / width / kernel_size")
            precision = c.get("precision", "fp32")
            if precision not in PRECISIONS:
                raise BadInputError(f"{label}: kernel {name!r}: precision {precision!r} is not "
                                    f"one of {list(PRECISIONS)}")
            width = c.get("width", 1.0)
            if not isinstance(width, (int, float)) or not 0 < width <= 1:
                raise BadInputError(f"{label}: kernel {name!r}: width {width!r} must be in (0, 1]")
            ks = c.get("kernel_size")
            if ks is not None and (not isinstance(ks, int) or ks < 1 or ks % 2 == 0):
                raise BadInputError(f"{label}: kernel {name!r}: kernel_size {ks!r} must be a "
                                    "positive odd integer")
            kernels[name] = Choice(precision, float(width), ks)
        model = doc.get("model") or {}
        shapes = {k: [int(d) for d in v] for k, v in (model.get("input_shape") or {}).items()}
        return cls(kernels=kernels, skip_blocks=list(doc.get("skip_blocks") or []),
                   input_shape=shapes, target=doc.get("target"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise BadInputError(f"{path}: no such plan file")
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadInputError(f"{path}: not valid JSON ({err})") from err
        return cls.from_dict(doc, str(path))

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
