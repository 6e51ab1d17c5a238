"""Device selection: "cpu", "cuda", "cuda:N" or "auto" to the backend that runs there."""

from __future__ import annotations

import functools
import os
import re

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
    """Why CUDA device ``index`` (default: the current one) cannot be used, or None if it can."""
    try:
        import cupy
    except ImportError as exc:
        return (f"CuPy is not installed ({exc}); install gpubp[cuda12] or gpubp[cuda13] "
                "to match your CUDA driver")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, driver missing, …
        return f"CuPy cannot reach a CUDA driver or GPU: {exc}"
    if count == 0:
        return "no CUDA GPU is visible (cupy.cuda.runtime.getDeviceCount() == 0)"
    if index is not None and not 0 <= index < count:
        return f"cuda:{index} does not exist; {count} GPU(s) visible (cuda:0 … cuda:{count - 1})"
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
