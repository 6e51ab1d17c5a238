"""Device selection: "cpu", "cuda", "cuda:N" or "auto" to the backend that runs there."""

from __future__ import annotations

import functools
import os
import re

import numpy as np

from .ops import Ops

DEVICE_ENV = "GPUBP_DEVICE"
#: which backend device="cpu" runs: "numba" (fused kernels), "numpy" (the reference) or "auto"
CPU_BACKEND_ENV = "GPUBP_CPU_BACKEND"
CPU_BACKENDS = ("numba", "numpy")
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


class DeviceError(RuntimeError):
    """A requested device cannot be used (no CuPy, no GPU, or no such GPU); the message says why."""


def parse_device(device: str | None) -> tuple[str, int | None]:
    """("cpu", None), ("cuda", N or None) or ("auto", None); None means env GPUBP_DEVICE, else "auto"."""
    if device is None:
        device = os.environ.get(DEVICE_ENV) or "auto"
    if not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'cpu', 'cuda', 'cuda:1' or 'auto'; "
                         f"got {device!r}")
    name = device.strip().lower()
    if name in ("cpu", "auto"):
        return name, None
    match = _CUDA.match(name)
    if match is None:
        raise ValueError(f"unknown device {device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'")
    return "cuda", None if match.group(1) is None else int(match.group(1))


def cuda_unavailable_reason(index: int | None = None) -> str | None:
    """Why CUDA device ``index`` (default: the current one) cannot be used, or None if it can.

    Usable means that gpubp can run there: besides CuPy and a visible GPU, NVRTC and the CUDA headers
    compile and run a small kernel, and cuBLAS makes a handle (checked once per device and process).
    """
    try:
        import cupy
    except ImportError as exc:
        return f"CuPy is not installed ({exc}); install it with: {install_command()}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, driver missing, …
        return f"CuPy cannot reach a CUDA driver or GPU: {exc}"
    if count == 0:
        return "no CUDA GPU is visible (cupy.cuda.runtime.getDeviceCount() == 0)"
    if index is not None and not 0 <= index < count:
        return f"cuda:{index} does not exist; {count} GPU(s) visible (cuda:0 … cuda:{count - 1})"
    return _toolkit_unusable_reason(cupy.cuda.runtime.getDevice() if index is None else index)


def install_command() -> str:
    """The pip command that installs CuPy with the CUDA libraries gpubp needs, for the installed CuPy."""
    from importlib import metadata

    for major in (13, 12):
        try:
            metadata.distribution(f"cupy-cuda{major}x")
        except metadata.PackageNotFoundError:
            continue
        return f"pip install 'gpubp[cuda{major}]'"
    return "pip install 'gpubp[cuda13]' (or 'gpubp[cuda12]' for a CUDA 12 driver)"


#: the smallest kernel compiled and launched the way gpubp's own are (RawModule, NVRTC, CUDA headers)
_PROBE_KERNEL = 'extern "C" __global__ void gpubp_probe(float* x) { if (threadIdx.x == 0) x[0] = 1.0f; }'


@functools.lru_cache(maxsize=None)
def _toolkit_unusable_reason(index: int) -> str | None:
    """Why NVRTC (with the CUDA headers) or cuBLAS does not work on cuda:``index``; None when both do."""
    import cupy

    from .kernels import NVRTC_OPTIONS

    with cupy.cuda.Device(index):
        try:
            x = cupy.zeros((1,), dtype=np.float32)
            cupy.RawModule(code=_PROBE_KERNEL, options=NVRTC_OPTIONS).get_function("gpubp_probe")(
                (1,), (32,), (x,))
            if float(x.get()[0]) != 1.0:
                raise RuntimeError("the test kernel ran but did not write its result")
        except Exception as exc:  # CuPy's RuntimeError('Failed to find CUDA headers…'), NVRTC load errors, …
            return (f"NVRTC and the CUDA headers cannot compile and run a kernel on cuda:{index} "
                    f"({type(exc).__name__}: {exc}); install them with: {install_command()}")
        try:
            cupy.cuda.Device(index).cublas_handle
        except Exception as exc:  # the cuBLAS library cannot be loaded
            return (f"cuBLAS cannot be loaded on cuda:{index} ({type(exc).__name__}: {exc}); install it "
                    f"with: {install_command()}")
    return None


def get_ops(device: str | None = None) -> Ops:
    """The backend for ``device`` (one shared instance per device)."""
    kind, index = parse_device(device)
    if kind == "auto":
        kind = "cpu" if cuda_unavailable_reason() is not None else "cuda"
    if kind == "cpu":
        return _cpu_ops(cpu_backend())
    reason = cuda_unavailable_reason(index)
    if reason is not None:
        raise DeviceError(f"device {device!r} is not usable: {reason}")
    if index is None:
        import cupy

        index = cupy.cuda.runtime.getDevice()
    return _cupy_ops(index)


@functools.lru_cache(maxsize=None)
def numba_unavailable_reason() -> str | None:
    """Why the fused CPU backend cannot be used (Numba missing or too old), or None if it can."""
    try:
        from . import cpu_kernels  # noqa: F401
    except ImportError as exc:
        return f"Numba is not installed or not usable ({exc}); install gpubp[fast]"
    return None


def cpu_backend() -> str:
    """The CPU backend device="cpu" uses: env GPUBP_CPU_BACKEND ("numba", "numpy"; unset or "auto": numba
    when it is installed, else numpy). Forcing "numba" without Numba raises DeviceError saying why."""
    choice = (os.environ.get(CPU_BACKEND_ENV) or "auto").strip().lower()
    if choice not in (*CPU_BACKENDS, "auto"):
        raise ValueError(f"{CPU_BACKEND_ENV}={os.environ[CPU_BACKEND_ENV]!r} is not a CPU backend; "
                         f"expected one of {', '.join(CPU_BACKENDS)} or auto")
    reason = numba_unavailable_reason() if choice != "numpy" else None
    if choice == "numba" and reason is not None:
        raise DeviceError(f"{CPU_BACKEND_ENV}=numba: {reason}")
    return "numba" if choice != "numpy" and reason is None else "numpy"


@functools.lru_cache(maxsize=None)
def _cpu_ops(backend: str) -> Ops:
    """The shared CPU backend called ``backend`` ("numba" or "numpy")."""
    if backend == "numba":
        from .numba_ops import NumbaOps

        return NumbaOps()
    from .numpy_ops import NumpyOps

    return NumpyOps()


@functools.lru_cache(maxsize=None)
def _cupy_ops(index: int) -> Ops:
    from .cupy_ops import CupyOps

    return CupyOps(index)
