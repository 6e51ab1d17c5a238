"""Device selection, asked in one place: "cpu", "cuda", "cuda:N" or "auto" to the backend that runs there.

``resolve_device`` holds the "auto" rule (a usable GPU, else the CPU), ``visible_gpus``, ``gpu_name`` and
``gpu_names`` what CuPy sees, ``cuda_unavailable_reason`` why a GPU cannot be used, ``choose_cpu_backend``
and ``describe_cpu_backend`` which backend runs device "cpu", ``get_ops`` the backend itself.
"""

from __future__ import annotations

import functools
import os
import re
import time

import numpy as np

from .errors import DeviceError, cuda_error_cause, driver_install_advice, install_command
from .ops import Ops

DEVICE_ENV = "GPUBP_DEVICE"
#: which backend device="cpu" runs: "numba" (fused kernels), "numpy" (the reference) or "auto"
CPU_BACKEND_ENV = "GPUBP_CPU_BACKEND"
CPU_BACKENDS = ("numba", "numpy")
_CUDA = re.compile(r"^cuda(?::(\d+))?$")
#: seconds before a GPU that failed its probe is probed again (a full or busy GPU may free up); a GPU that
#: passed stays usable for the process
PROBE_RETRY_SECONDS = 30.0
#: where MPI launchers put a process's index among the ranks of its node (Open MPI, MPICH/Intel MPI,
#: MVAPICH2, Slurm's srun)
LOCAL_RANK_ENV = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")


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
    except OSError as exc:  # CuPy makes its kernel cache folder at import (FileNotFoundError, PermissionError)
        return (f"importing CuPy failed ({type(exc).__name__}: {exc}): it cannot create its kernel cache "
                "folder (~/.cupy/kernel_cache); set CUPY_CACHE_DIR to a writable folder")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, driver missing, …
        if "cudaErrorInsufficientDriver" in str(exc):
            return _old_driver_reason(cupy, exc)
        if "cudaErrorNoDevice" in str(exc):
            return _no_device_reason(exc)
        return f"CuPy cannot reach a CUDA driver or GPU: {exc}"
    if count == 0:
        return "no CUDA GPU is visible (cupy.cuda.runtime.getDeviceCount() == 0)"
    if index is not None and not 0 <= index < count:
        return f"cuda:{index} does not exist; {count} GPU(s) visible (cuda:0 … cuda:{count - 1})"
    return _gpu_unusable_reason(cupy.cuda.runtime.getDevice() if index is None else index)


def _old_driver_reason(cupy, exc: Exception) -> str:
    """The NVIDIA driver is older than the CUDA that CuPy was built for: which CUDA it supports, and the fix."""
    driver, runtime = cupy.cuda.runtime.driverGetVersion(), cupy.cuda.runtime.runtimeGetVersion()
    if driver == 0:  # cudaDriverGetVersion's answer where libcuda cannot be loaded
        return f"CuPy cannot reach a CUDA driver: no NVIDIA driver is installed or loadable ({exc})"
    return (f"the NVIDIA driver supports CUDA {driver // 1000}.{driver % 1000 // 10}, older than the CUDA "
            f"{runtime // 1000} the installed CuPy needs ({exc}); {driver_install_advice(driver, runtime)}")


def _no_device_reason(exc: Exception) -> str:
    """CUDA sees no GPU: where CUDA_VISIBLE_DEVICES hides them all (empty, or naming none that exists), say so."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return f"no CUDA GPU is detected ({exc})"
    return (f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU (it is empty or names no GPU that exists; the "
            f"CUDA runtime stops at the first invalid entry) ({exc}); unset it or name the GPUs to use, e.g. "
            "CUDA_VISIBLE_DEVICES=0")


def launcher_local_rank() -> int | None:
    """This process's index among the MPI ranks of its node, as the launcher tells it (None: not launched)."""
    for name in LOCAL_RANK_ENV:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


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
    None without env GPUBP_DEVICE) is the current GPU when it is usable, else the CPU; in a process an MPI
    launcher started, the rank's GPU ``cuda:(local rank % visible GPUs)`` instead of the current one (only
    that GPU is probed, so the ranks of a node do not all make a context on GPU 0)."""
    kind, index = parse_device(device)
    if kind == "auto":
        local_rank, count = launcher_local_rank(), visible_gpus()
        if local_rank is not None and count:
            index = local_rank % count
        kind = "cpu" if cuda_unavailable_reason(index) is not None else "cuda"
        if kind == "cpu":
            index = None
    return kind if index is None else f"{kind}:{index}"


#: the smallest kernel compiled and launched the way gpubp's own are (RawModule, NVRTC, CUDA headers)
_PROBE_KERNEL = 'extern "C" __global__ void gpubp_probe(float* x) { if (threadIdx.x == 0) x[0] = 1.0f; }'


#: probe results: the GPUs that passed (kept), and those that failed with when and why (probed again after
#: PROBE_RETRY_SECONDS)
_usable: set[int] = set()
_failed: dict[int, tuple[float, str]] = {}


def forget_gpu_probes() -> None:
    """Probe every GPU again when next asked (after the CUDA set-up changed)."""
    _usable.clear()
    _failed.clear()


def _gpu_unusable_reason(index: int) -> str | None:
    """``_probe_gpu(index)``, kept when the GPU passed and for PROBE_RETRY_SECONDS when it failed."""
    if index in _usable:
        lost = _context_lost_reason(index)
        if lost is None:
            return None
        _usable.discard(index)
        _failed[index] = (time.monotonic(), lost)
        return lost
    failed = _failed.get(index)
    if failed is not None and time.monotonic() - failed[0] < PROBE_RETRY_SECONDS:
        return failed[1]
    reason = _probe_gpu(index)
    if reason is None:
        _usable.add(index)
        _failed.pop(index, None)
    else:
        _failed[index] = (time.monotonic(), reason)
    return reason


def _context_lost_reason(index: int) -> str | None:
    """Why a GPU that passed its probe is no longer usable (a kernel fault since: every CUDA call on it then
    raises the fault's error), or None; one cheap call (cudaMemGetInfo), no synchronisation."""
    import cupy

    try:
        with cupy.cuda.Device(index):
            cupy.cuda.runtime.memGetInfo()
    except RuntimeError as exc:
        return cuda_error_cause(exc, f"cuda:{index}") or f"cuda:{index} fails ({type(exc).__name__}: {exc})"
    return None


def _probe_gpu(index: int) -> str | None:
    """Why cuda:``index`` cannot run gpubp (a context, NVRTC with the CUDA headers, cuBLAS), or None.

    A CUDA error names its cause (busy GPU, out of memory, driver too old for NVRTC's code) and a missing
    library the install command; any other exception is a bug and propagates."""
    import cupy

    from .kernels import NVRTC_OPTIONS

    where = f"cuda:{index}"
    with cupy.cuda.Device(index):
        try:
            x = cupy.zeros((1,), dtype=np.float32)
            cupy.RawModule(code=_PROBE_KERNEL, options=NVRTC_OPTIONS).get_function("gpubp_probe")(
                (1,), (32,), (x,))
            if float(x.get()[0]) != 1.0:
                return f"a test kernel ran on {where} but did not write its result"
        except (RuntimeError, OSError, ImportError, MemoryError) as exc:  # MemoryError: CuPy's OutOfMemoryError
            return cuda_error_cause(exc, where) or (
                f"NVRTC and the CUDA headers cannot compile and run a kernel on {where} "
                f"({type(exc).__name__}: {exc}); install them with: {install_command()}")
        try:
            cupy.cuda.Device(index).cublas_handle
        except (RuntimeError, OSError, ImportError) as exc:  # the cuBLAS library cannot be loaded
            return cuda_error_cause(exc, where) or (
                f"cuBLAS cannot be loaded on {where} ({type(exc).__name__}: {exc}); install it with: "
                f"{install_command()}")
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
