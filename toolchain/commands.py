"""Imports every command module so that each registers its commands on `toolchain.cli.cli`.

One line per module; keep the list sorted. A command module defines its click commands with
`@cli.command()` / `@cli.group()` from `toolchain.cli`.
"""
from __future__ import annotations

import toolchain.bench.amortize  # noqa: F401
import toolchain.bench.cli  # noqa: F401
import toolchain.bench.fewshot  # noqa: F401
import toolchain.calibrate_cmd  # noqa: F401
import toolchain.compile_cmd  # noqa: F401
import toolchain.fleet_cmd  # noqa: F401
import toolchain.inspect_cmd  # noqa: F401
import toolchain.measure_cmd  # noqa: F401
import toolchain.predict_cmd  # noqa: F401
import toolchain.rewrite_cmd  # noqa: F401
import toolchain.targets_cmd  # noqa: F401
