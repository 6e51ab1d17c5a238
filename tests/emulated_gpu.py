"""Running gpubp's CUDA path without a GPU: tests/cpp/emulated_cupy.py swapped in for ``cupy``.

``emulated_gpus(build_dir)`` makes ``import cupy`` (and ``from cupy.cuda import nccl``) give the emulation,
with two emulated GPUs, cuda:0 current, and gpubp's caches of the real CuPy (its CupyOps module and
instances, loaded kernels, the per-device usability probes) emptied; no device has a context (nor a cuBLAS
handle with a math mode set) yet, none is
held by another process, modules load and the driver matches the runtime on the way in and out; a stream capture
left open by a failed test is dropped on the way out.
``environment(build_dir)`` is the same for a subprocess (an MPI rank runs ``install_from_environment``).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import sys
from pathlib import Path
from typing import Iterator

from gpubp.backend import device as device_module
from gpubp.backend import kernels

EMULATED_CUPY = Path(__file__).resolve().parent / "cpp" / "emulated_cupy.py"


def load_emulated_cupy():
    """The emulation module (loaded once, as ``emulated_cupy``)."""
    module = sys.modules.get("emulated_cupy")
    if module is None:
        spec = importlib.util.spec_from_file_location("emulated_cupy", EMULATED_CUPY)
        module = importlib.util.module_from_spec(spec)
        sys.modules["emulated_cupy"] = module
        spec.loader.exec_module(module)
    return module


def _forget_cuda_state() -> None:
    device_module._cupy_ops.cache_clear()
    device_module.forget_gpu_probes()


@contextlib.contextmanager
def emulated_gpus(build_dir: Path, missing: str | None = None) -> Iterator:
    """The emulated CuPy as ``cupy`` inside the block; ``missing``: "headers" or "cublas" to leave out."""
    import pytest

    fake = load_emulated_cupy()
    with pytest.MonkeyPatch.context() as mp:
        fake.install(mp, build_dir)
        mp.setattr(fake, "MISSING", missing)
        for name, value in (("contexts", set()), ("HELD_ELSEWHERE", set()), ("LOAD_ERROR", None),
                            ("DRIVER_VERSION", fake.RUNTIME_VERSION), ("PEER_ACCESS", False), ("faults", {}),
                            ("_reported", set()), ("ran_on", collections.Counter()),
                            ("peer_reads", collections.Counter()), ("_streams", {}),
                            ("_null_streams", {}), ("_math_modes", {})):
            mp.setattr(fake, name, value)
        for module in ("gpubp.backend.cupy_ops", "gpubp.backend.cublas_gemm"):  # re-imported on the emulation
            mp.delitem(sys.modules, module, raising=False)
        mp.setattr(kernels, "_modules", {})
        mp.setattr(kernels, "_functions", {})
        fake._thread.device = 0  # whatever devices the test made visible
        _forget_cuda_state()
        try:
            yield fake
        finally:
            fake._thread.device = 0  # whatever devices the test made visible
            for stream in list(fake._capturing.values()):  # a capture a failed test left open
                stream._capture = None
            fake._capturing.clear()
            _forget_cuda_state()


def environment(build_dir: Path, missing: str | None = None) -> dict[str, str]:
    """Environment variables that make a subprocess (tests/distributed_worker.py) use the emulation."""
    fake = load_emulated_cupy()
    env = {fake.ENV_BUILD: str(build_dir)}
    if missing:
        env[fake.ENV_MISSING] = missing
    return env


def plant_in_kernel(monkeypatch, file: str, old: str, new: str) -> None:
    """A bug planted in kernel source ``file`` (``old`` replaced by ``new``), the loaded kernels forgotten so
    that the next launch compiles the planted source: for tests that a check reports a wrong kernel."""
    original = kernels.module_source

    def planted(name: str) -> str:
        source = original(name)
        if name == file:
            assert old in source, f"{old!r} is not in {file}"
            source = source.replace(old, new)
        return source

    monkeypatch.setattr(kernels, "module_source", planted)
    monkeypatch.setattr(kernels, "_modules", {})
    monkeypatch.setattr(kernels, "_functions", {})
