"""Shared test set-up: GPU tests skip cleanly where no usable GPU exists; MPI leaves no files behind."""

from __future__ import annotations

import contextlib
import glob
import os
import time

import numpy as np
import pytest

from gpubp.backend import cuda_unavailable_reason


def pytest_collection_modifyitems(config, items):
    reason = cuda_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"no usable GPU: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def remove_hydra_topology_files():
    """MPICH's launcher writes /tmp/hydra_hwloc_xmlfile_* (a fixed path, TMPDIR is ignored) and leaves it
    behind when a job aborts, as the error tests make jobs do: remove the ones this session made once no
    launcher is left running (one still running belongs to someone else and may need its file)."""
    started = time.time()
    yield
    if not os.path.isdir("/proc"):
        return
    deadline = time.monotonic() + 3.0  # an aborted job's proxies exit a moment after mpiexec returns
    while any(_process_name(pid) == "hydra_pmi_proxy" for pid in os.listdir("/proc") if pid.isdigit()):
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)
    for path in glob.glob("/tmp/hydra_hwloc_xmlfile_*"):
        with contextlib.suppress(OSError):
            if os.stat(path).st_mtime >= started - 1 and os.stat(path).st_uid == os.getuid():
                os.unlink(path)


def _process_name(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
