"""Shared test set-up: GPU tests skip cleanly where no usable GPU exists; MPI and PyTorch leave no files behind;
``cpu_backend`` runs a test on each CPU backend."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import time

import numpy as np
import pytest

from gpubp.backend import cuda_unavailable_reason
from gpubp.backend.device import CPU_BACKEND_ENV, CPU_BACKENDS, numba_unavailable_reason


def pytest_configure(config):
    """PyTorch (the cross-check baselines) writes an inductor cache to /tmp/torchinductor_<user> when its
    optimizers load: point it into a folder of this session, removed at the end."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        config._gpubp_torch_cache = tempfile.mkdtemp(prefix="gpubp-tests-torchinductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = config._gpubp_torch_cache


def pytest_unconfigure(config):
    folder = getattr(config, "_gpubp_torch_cache", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]


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


@pytest.fixture(params=CPU_BACKENDS[::-1])
def cpu_backend(request, monkeypatch) -> str:
    """The test runs once per CPU backend: device="cpu" is NumPy's ``Ops``, then the fused Numba one.
    Without Numba its runs skip, except under CI (env CI set), which must test both."""
    if request.param == "numba":
        reason = numba_unavailable_reason()
        if reason is not None:
            if os.environ.get("CI"):
                pytest.fail(f"CI must test the fused CPU backend: {reason}")
            pytest.skip(reason)
    monkeypatch.setenv(CPU_BACKEND_ENV, request.param)
    return request.param


@pytest.fixture(scope="module")
def emulation_build(tmp_path_factory):
    """A folder for the emulated CuPy's host-compiled kernels, one per test module."""
    return tmp_path_factory.mktemp("emulated_kernels")


@pytest.fixture
def gpus(emulation_build):
    """The emulated CuPy (two emulated GPUs) as ``cupy`` for the test (tests/emulated_gpu.py)."""
    from emulated_gpu import emulated_gpus

    with emulated_gpus(emulation_build) as fake:
        yield fake


@pytest.fixture
def environment_writes(monkeypatch) -> list[str]:
    """The names of the environment variables set or unset from here to the end of the test (os.environ's
    writes go through os.putenv and os.unsetenv)."""
    writes: list[str] = []
    putenv, unsetenv = os.putenv, os.unsetenv

    def recorded_putenv(key, value) -> None:
        writes.append(os.fsdecode(key))
        putenv(key, value)

    def recorded_unsetenv(key) -> None:
        writes.append(os.fsdecode(key))
        unsetenv(key)

    monkeypatch.setattr(os, "putenv", recorded_putenv)
    monkeypatch.setattr(os, "unsetenv", recorded_unsetenv)
    return writes
