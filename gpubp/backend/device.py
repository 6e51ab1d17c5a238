"""Device selection, asked in one place: "cpu", "cuda", "cuda:N" or "auto" to the backend that runs there.

``resolve_device`` holds the "auto" rule (a usable GPU, else the CPU), ``visible_gpus``, ``gpu_name`` and
``gpu_names`` what CuPy sees, ``cuda_unavailable_reason`` why a GPU cannot be used, ``choose_cpu_backend``
and ``describe_cpu_backend`` which backend runs device "cpu", ``get_ops`` the backend itself.
"""

from __future__ import annotations

import functools
import os
import re

import numpy as np

from .errors import DeviceError, install_command
from .ops import Ops

DEVICE_ENV = "GPUBP_DEVICE"
#: which backend device="cpu" runs: "numba" (fused kernels), "numpy" (the reference) or "auto"
CPU_BACKEND_ENV = "GPUBP_CPU_BACKEND"
CPU_BACKENDS = ("numba", "numpy")
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


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


def visible_gpus() -> int:
    """How many GPUs this process sees, usable or not (0 where CuPy or the driver is missing:
    ``cuda_unavailable_reason`` says why)."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # ImportError, CUDARuntimeError, …
        return 0


def gpu_name(index: int) -> str:
    """The name the driver gives GPU ``index`` (one that ``visible_gpus`` counts)."""
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
    return name.decode() if isinstance(name, bytes) else name


def gpu_names() -> list[str]:
    """"cuda:N <name>" for each GPU this process sees, usable or not."""
    return [f"cuda:{index} {gpu_name(index)}" for index in range(visible_gpus())]


def resolve_device(device: str | None = None) -> str:
    """What ``device`` means on this machine: "cpu", "cuda" (the current GPU) or "cuda:N". "auto" (and
    None without env GPUBP_DEVICE) is the current GPU when it is usable, else the CPU."""
    kind, index = parse_device(device)
    if kind == "auto":
        kind = "cpu" if cuda_unavailable_reason() is not None else "cuda"
    return kind if index is None else f"{kind}:{index}"


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


def get_ops(device: str | None = None, cpu_backend: str | None = None) -> Ops:
    """The backend for ``device`` (one shared instance per device and backend). ``cpu_backend`` names the
    backend that runs device "cpu": "numba", "numpy" or "auto" (None: env GPUBP_CPU_BACKEND, else "auto")."""
    kind, index = parse_device(resolve_device(device))
    if kind == "cpu":
        return _cpu_ops(choose_cpu_backend(cpu_backend))
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
    """The CPU backend device="cpu" uses by default: env GPUBP_CPU_BACKEND (see ``choose_cpu_backend``)."""
    return choose_cpu_backend(None)


def describe_cpu_backend() -> str:
    """Which backend device="cpu" runs by default, how that was chosen, and how to choose the other one."""
    setting = os.environ.get(CPU_BACKEND_ENV)
    how = f"{CPU_BACKEND_ENV}={setting}" if setting else f"{CPU_BACKEND_ENV} unset"
    try:
        backend = cpu_backend()
    except (ValueError, RuntimeError) as exc:
        return f"unusable: {exc}"
    if backend == "numba":
        import numba

        from .numba_ops import _NUMBA_BLAS

        blas = "small layers' matmuls in the same call through SciPy's BLAS; fit runs compiled chunks of " \
            "mini-batches (built-in activations, costs and optimizers; others step by step)" if _NUMBA_BLAS else \
            "matmuls by NumPy, fit step by step (install scipy for whole small layers in one call and " \
            "compiled chunks of mini-batches)"
        return f"numba {numba.__version__}: fused kernels, {blas} ({how}; {CPU_BACKEND_ENV}=numpy forces " \
               "the NumPy reference)"
    reason = numba_unavailable_reason()
    return f"numpy: the NumPy reference ({how}" + (f"; {reason})" if reason else ")")


def choose_cpu_backend(choice: str | None) -> str:
    """"numba" or "numpy" for ``choice``: "numba", "numpy", or "auto" (numba when it is installed, else
    numpy); None reads env GPUBP_CPU_BACKEND (unset: "auto"). Forcing "numba" without Numba raises
    DeviceError saying why."""
    source = "cpu_backend" if choice is not None else CPU_BACKEND_ENV
    if choice is None:
        choice = os.environ.get(CPU_BACKEND_ENV) or "auto"
    if not isinstance(choice, str) or choice.strip().lower() not in (*CPU_BACKENDS, "auto"):
        raise ValueError(f"{source}={choice!r} is not a CPU backend; expected one of "
                         f"{', '.join(CPU_BACKENDS)} or auto")
    choice = choice.strip().lower()
    reason = numba_unavailable_reason() if choice != "numpy" else None
    if choice == "numba" and reason is not None:
        raise DeviceError(f"{source}=numba: {reason}")
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
