"""Train and export the digits accuracy fixture (tests/fixtures/digits_mbv2.onnx).

scikit-learn's bundled 8x8 digits (1797 images, 10 classes), split with a fixed seed into
train / calibration / test, upsampled to 64x64 and scaled to [-1, 1], classified by a
MobileNetV2-like body (inverted residual blocks, depthwise 3x3 and 5x5 convs, BatchNorm, ReLU6).
Writes the ONNX model (opset 17; BatchNormalization kept as separate nodes, ReLU6 as Clip),
the calibration and test sets (.npz: `inputs` float32 N x 1 x 64 x 64, `labels` int64) and
prints the test accuracy measured with onnxruntime.

Needs the `train` extra (torch==2.13.0 CPU, scikit-learn); nothing else in fleetc imports torch.

    .venv/bin/python scripts/train_digits.py --out tests/fixtures
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["load_splits", "build_model", "main"]

logger = logging.getLogger("train_digits")

RESOLUTION = 64
SPLIT_SEED = 0
N_TEST = 360
N_CALIB = 256
# (expansion, output channels, repeats, first stride, depthwise kernel) per stage.
STAGES = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 32, 3, 2, 5), (6, 64, 3, 2, 5),
          (6, 96, 2, 1, 3), (6, 160, 2, 2, 5))
STEM_CHANNELS = 24
LAST_CHANNELS = 640
BATCH = 32


def _upsample(images: np.ndarray) -> np.ndarray:
    """8x8 digits with values 0..16 -> float32 N x 1 x 64 x 64 in [-1, 1] (bilinear)."""
    import torch
    from torch.nn import functional

    x = torch.from_numpy(images.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0)
    x = functional.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear",
                               align_corners=False)
    return (x.numpy() * 2.0 - 1.0).astype(np.float32)


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train / calib / test splits of load_digits, fixed by SPLIT_SEED."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(digits.target))
    parts = {"test": order[:N_TEST], "calib": order[N_TEST:N_TEST + N_CALIB],
             "train": order[N_TEST + N_CALIB:]}
    x = _upsample(digits.data)
    y = digits.target.astype(np.int64)
    return {name: (x[idx], y[idx]) for name, idx in parts.items()}


def build_model():
    """The MobileNetV2-like classifier as a torch module (eval() before export)."""
    from torch import nn

    def conv_bn(cin, cout, k, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand, k):
            super().__init__()
            mid = cin * expand
            layers = [conv_bn(cin, mid, 1)] if expand != 1 else []
            layers += [conv_bn(mid, mid, k, stride, groups=mid), conv_bn(mid, cout, 1, act=False)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    layers, cin = [conv_bn(1, STEM_CHANNELS, 3)], STEM_CHANNELS
    for t, c, n, s, k in STAGES:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t, k))
            cin = c
    layers += [conv_bn(cin, LAST_CHANNELS, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Dropout(0.2), nn.Linear(LAST_CHANNELS, 10)]
    return nn.Sequential(*layers)


def _augment(x, generator):
    """Random shift (+-6 px), rotation (+-12 deg) and scale (0.85..1.15): digits stay legible."""
    import torch
    from torch.nn import functional

    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * np.deg2rad(12)
    scale = 0.85 + torch.rand(n, generator=generator) * 0.3
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (6 / (RESOLUTION / 2))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = functional.affine_grid(theta, list(x.shape), align_corners=False)
    # Background is -1: pad with it by shifting to 0-based values around grid_sample.
    return functional.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


def train(model, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> None:
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    # channels_last: about 2x faster convolutions on CPU (depthwise backward dominates).
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    steps_per_epoch = (len(x) + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for epoch in range(epochs):
        start, total = time.perf_counter(), 0.0
        perm = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            batch = _augment(xt[idx], generator).contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(batch), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} "
              f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    model.to(memory_format=torch.contiguous_format)
    model.eval()


def export(model, path: Path) -> None:
    """ONNX opset 17 via the TorchScript exporter (BN stays a separate node, ReLU6 -> Clip)."""
    import onnx
    import torch

    dummy = torch.zeros(1, 1, RESOLUTION, RESOLUTION)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(model, (dummy,), str(raw), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL)
        proto = onnx.load(str(raw))
    proto.producer_name = "fleetc scripts/train_digits.py"
    onnx.checker.check_model(proto, full_check=True)
    _atomic_bytes(path, proto.SerializeToString())


def _atomic_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _save_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    np.savez_compressed(tmp, inputs=x.astype(np.float32), labels=y.astype(np.int64))
    os.replace(tmp, path)


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy in %, median ms per image at batch 1 with one thread) in onnxruntime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    pred = sess.run(None, {"input": x})[0].argmax(axis=1)
    times = []
    for i in range(30):
        start = time.perf_counter()
        sess.run(None, {"input": x[i % len(x)][None]})
        times.append(time.perf_counter() - start)
    return float((pred == y).mean() * 100), float(np.median(times[5:]) * 1e3)


def _set_resolution(size: int) -> None:
    global RESOLUTION
    RESOLUTION = size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=RESOLUTION,
                        help="upsampled image size (compute grows with its square)")
    args = parser.parse_args(argv)
    _set_resolution(args.resolution)

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    splits = load_splits()
    model = build_model()
    train(model, *splits["train"], epochs=args.epochs, seed=args.seed)
    with torch.no_grad():
        x_test, y_test = splits["test"]
        torch_acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    onnx_path = args.out / "digits_mbv2.onnx"
    export(model, onnx_path)
    _save_npz(args.out / "digits_calib.npz", *splits["calib"])
    _save_npz(args.out / "digits_test.npz", *splits["test"])
    acc, ms = ort_accuracy(onnx_path, x_test, y_test)
    print(json.dumps({"train": len(splits["train"][1]), "calib": len(splits["calib"][1]),
                      "test": len(y_test), "torch_test_accuracy": round(torch_acc * 100, 2),
                      "ort_test_accuracy": round(acc, 2), "ort_ms_per_image_1t": round(ms, 2),
                      "onnx_bytes": onnx_path.stat().st_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
