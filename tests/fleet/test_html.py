"""fleet.html: the device rows, the inline SVG plot, no external URLs, and a render in headless
Chromium (`.ci/run` installs it) to a PNG that is not blank."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from types import SimpleNamespace

from toolchain.fleet.html import render_fleet_html
from toolchain.fleet.run import DeviceOutcome, FleetResult
from toolchain.fleet.spec import Device


def _result(tmp_path: Path):
    devices = tuple(Device(f"dev{i}", "host-ort-1t", latency_ms=1.0 + 0.2 * i)
                    for i in range(5))
    fleet = SimpleNamespace(path=tmp_path / "fleet.toml", model=tmp_path / "m.onnx",
                            devices=devices)
    outcomes = tuple(DeviceOutcome(
        d.name, "built", 1.0, "k", summary={
            "predicted": {"latency_ms": d.latency_ms * 0.9},
            "measured": {"latency_ms": d.latency_ms * (1.2 if i == 4 else 0.95),
                         "accuracy_drop": 0.1},
            "budget_met": i != 4, "plan_id": i % 2,
            "shares_build_with": [x.name for x in devices if x is not d][:2]})
        for i, d in enumerate(devices))
    plans = ({"id": 0, "plan": {"kernels": {"a": {}}}, "devices": ["dev0", "dev2", "dev4"],
              "predicted_accuracy_drop": 0.1, "measured_accuracy_drop": 0.12},
             {"id": 1, "plan": {"kernels": {}}, "devices": ["dev1", "dev3"],
              "predicted_accuracy_drop": 0.0, "measured_accuracy_drop": 0.0})
    return fleet, FleetResult(tmp_path, outcomes, plans, ({"key": "k"},), {})


def _png_pixels(path: Path) -> set[bytes]:
    """The distinct pixels of an 8-bit RGB(A) PNG (non-interlaced), decoded here."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    pixels: set[bytes] = set()
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) \
                    & 255
        if y % 4 == 0:
            pixels.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp * 2))
        prev = line
    return pixels


def test_fleet_html_rows_svg_no_urls_and_it_renders(tmp_path):
    fleet, result = _result(tmp_path)
    page = render_fleet_html(fleet, result)
    rows = re.findall(r"<tr class=\"[a-z]*\"><td>(dev\d)</td>", page)
    assert rows == [f"dev{i}" for i in range(5)]
    assert page.count("OVER BUDGET") == 1 and 'class="over"' in page
    svg = re.search(r"<svg .*?</svg>", page, re.S).group(0)
    assert svg.count("<circle") == 5 and svg.count("<rect") == 1 + 5   # frame + measured
    assert not re.search(r"(https?:|//[a-z]|src=|href=|@import|url\()", page, re.I)
    path = tmp_path / "fleet.html"
    path.write_text(page)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed (.ci/run installs it: apt-get install chromium)"
    png = tmp_path / "fleet.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={png}", "--window-size=1000,900", path.as_uri()],
                   check=True, capture_output=True, timeout=60)
    assert len(_png_pixels(png)) > 5        # text, dots, lines: not one blank colour
