"""toolchain.files: process liveness for temp-folder ownership."""
from __future__ import annotations

import os
import subprocess
import time

from toolchain.files import pid_alive, remove_dead_temps


def test_a_zombie_owner_counts_as_dead_and_its_temp_folder_goes(tmp_path):
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while pid_alive(child.pid) and time.monotonic() < deadline:   # exited, not yet reaped
        time.sleep(0.05)
    assert not pid_alive(child.pid)
    assert child.poll() is None or child.returncode == 0   # the zombie existed until now
    (tmp_path / f".build-{child.pid}-x").mkdir()
    (tmp_path / f".build-{os.getpid()}-x").mkdir()
    removed = remove_dead_temps(tmp_path, ".build-")
    assert [p.name for p in removed] == [f".build-{child.pid}-x"]
    assert (tmp_path / f".build-{os.getpid()}-x").is_dir()
    child.wait()
