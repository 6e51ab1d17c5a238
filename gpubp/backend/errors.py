"""What goes wrong with a device: the install command that fixes a missing CUDA library, the CUDA errors that
mean something else, and the advice for a driver older than CuPy's CUDA (a leaf module)."""

from __future__ import annotations


class DeviceError(RuntimeError):
    """A requested device cannot be used (no CuPy, no GPU, or no such GPU); the message says why."""


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


#: CUDA errors (CUDARuntimeError, CUDADriverError, NVRTCError messages start with the name) that are not a
#: missing library: what each means, and what to do
_CUDA_CAUSES = (
    (("CUDA_ERROR_OUT_OF_MEMORY", "cudaErrorMemoryAllocation", "NVRTC_ERROR_OUT_OF_MEMORY", "OutOfMemoryError"),
     "is out of memory", "free memory on it (other processes: nvidia-smi) or choose another GPU"),
    (("CUDA_ERROR_NO_BINARY_FOR_GPU", "cudaErrorNoKernelImageForDevice"),
     "cannot run the code NVRTC compiled for it (no binary for this GPU's architecture)",
     "the installed CUDA does not support this GPU, or the driver is too old for it: upgrade the NVIDIA "
     "driver, or install the CuPy build of the CUDA the driver supports ('gpubp[cuda12]' on a CUDA 12 driver)"),
    (("CUDA_ERROR_UNSUPPORTED_PTX_VERSION", "cudaErrorUnsupportedPtxVersion"),
     "has a driver older than the NVRTC that compiled the kernel (its PTX version is unsupported)",
     "upgrade the NVIDIA driver, or install 'gpubp[cuda12]' to compile with a CUDA 12 NVRTC"),
    (("cudaErrorIllegalAddress", "CUDA_ERROR_ILLEGAL_ADDRESS", "cudaErrorLaunchFailure", "CUDA_ERROR_LAUNCH_FAILED"),
     "had a kernel fault (an illegal memory access, reported at the first synchronisation after it); its "
     "CUDA context is lost for the rest of this process",
     "restart the process; where it recurs, run 'gpubp selftest' and report it (a kernel bug or a faulty GPU)"),
    (("cudaErrorDevicesUnavailable", "CUDA_ERROR_DEVICE_UNAVAILABLE"),
     "is busy or unavailable (exclusive-process compute mode with another process on it, or disabled)",
     "use another GPU (each MPI rank takes cuda:<local rank>), or ask for the default compute mode"),
)


def cuda_error_cause(exc: BaseException, where: str) -> str | None:
    """What a CUDA error on ``where`` ("cuda:N") means when it is not a missing library, with the fix; None
    for anything else (missing NVRTC, headers or cuBLAS)."""
    text = f"{type(exc).__name__}: {exc}"
    for names, meaning, fix in _CUDA_CAUSES:
        if any(name in text for name in names):
            return f"{where} {meaning} ({text}); {fix}"
    return None


def driver_install_advice(driver_version: int, runtime_version: int) -> str:
    """What to install where the NVIDIA driver supports CUDA ``driver_version`` (e.g. 12040) only, older than
    the CUDA ``runtime_version`` of the installed CuPy (e.g. 13000)."""
    if driver_version >= 12000:
        return (f"install the CUDA 12 build instead: pip uninstall cupy-cuda{runtime_version // 1000}x && "
                "pip install 'gpubp[cuda12]' (or upgrade the NVIDIA driver)")
    return "upgrade the NVIDIA driver: gpubp needs one that supports CUDA 12 or newer"
