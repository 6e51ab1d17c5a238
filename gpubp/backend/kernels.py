"""The CUDA kernels: where their source lives, the ids and constants shared with it, and loading them with
NVRTC.

The source is ``kernels/`` at the top of a checkout, or ``gpubp/kernels/`` inside an installed wheel. Each
``.cu`` file becomes one ``cupy.RawModule`` per device, compiled once per process (CuPy also caches the
binary on disk) when its first function is asked for. Local ``#include "x.cuh"`` lines are expanded into
the source text before compiling, so CuPy's cache key covers the headers too.
"""

from __future__ import annotations

import functools
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..activations import ACTIVATIONS
from .errors import DeviceError, cuda_error_cause, install_command

#: the activation ids of ``kernels/activations.cuh`` (enum Activation), from the registry
ACTIVATION_IDS = {name: act.kernel_id for name, act in ACTIVATIONS.items()}
#: the cost ids of ``kernels/costs.cuh`` (enum Cost), which the built-in costs carry as ``Cost.kernel_id``
COST_IDS = {"quadratic": 0, "cross_entropy": 1, "log_likelihood": 2}
#: probabilities are clipped to [EPS, 1 − EPS] inside the costs' logarithms, per dtype (1e-7 for others);
#: the same in every backend, and re-exported by gpubp.costs
LOG_EPS = {np.dtype(np.float32): 1e-7, np.dtype(np.float64): 1e-15}

#: the kernels of each source file (extern "C" names, one per dtype suffix)
KERNELS: dict[str, tuple[str, ...]] = {
    "backprop.cu": ("gpubp_backprop_f32", "gpubp_backprop_f64",
                    "gpubp_softmax_backward_f32", "gpubp_softmax_backward_f64"),
    "forward.cu": ("gpubp_bias_activation_f32", "gpubp_bias_activation_f64",
                   "gpubp_bias_softmax_f32", "gpubp_bias_softmax_f64"),
    "output.cu": ("gpubp_output_delta_f32_f32", "gpubp_output_delta_f32_f64",
                  "gpubp_output_delta_f64_f64"),
    # each update twice: scalars by value, and ``_indirect`` reading them from device memory (CUDA graphs)
    "optim.cu": tuple(f"gpubp_{kind}_update{variant}_{suffix}" for kind in ("sgd", "momentum", "nesterov",
                                                                             "adam")
                      for variant in ("", "_indirect") for suffix in ("f32", "f64")),
    "gather.cu": ("gpubp_gather_rows_f32", "gpubp_gather_rows_f64", "gpubp_gather_rows_i64"),
}
_FILE_OF = {name: file for file, names in KERNELS.items() for name in names}


# The optimizer kernels' scalars, computed in double on the host (rounded to the dtype at the launch, or when
# a CUDA graph's step buffer is filled), in each kernel's argument order (optim.cu).
def sgd_scalars(lr: float, grad_scale: float, weight_decay: float) -> tuple[float, ...]:
    """decay = 1 − ηλ, step = η s."""
    return 1.0 - lr * weight_decay, lr * grad_scale


def velocity_scalars(lr: float, momentum: float, grad_scale: float, weight_decay: float) -> tuple[float, ...]:
    """s, λ, η, μ."""
    return grad_scale, weight_decay, lr, momentum


def adam_scalars(lr: float, beta1: float, beta2: float, eps: float, step: int, grad_scale: float,
                 weight_decay: float) -> tuple[float, ...]:
    """s, λ, β₁, 1 − β₁, β₂, 1 − β₂, α̂ = η √(1−β₂ᵗ) / (1−β₁ᵗ), ε̂ = ε √(1−β₂ᵗ)."""
    step_size = lr * np.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
    eps_hat = eps * np.sqrt(1.0 - beta2 ** step)
    return grad_scale, weight_decay, beta1, 1.0 - beta1, beta2, 1.0 - beta2, step_size, eps_hat


#: options gpubp passes to NVRTC (CuPy adds -arch=sm_XX for the device, -ftz=true and
#: --device-as-default-execution-space)
NVRTC_OPTIONS = ("-std=c++17",)

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


class KernelCompileError(RuntimeError):
    """A kernel source file failed to compile; the message names the file and holds the NVRTC log."""


def kernel_dir() -> Path:
    """The folder of the CUDA sources: inside the installed package, else the checkout's ``kernels/``."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "kernels", package.parent / "kernels"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise FileNotFoundError(f"gpubp's CUDA kernel sources are missing: looked in {package / 'kernels'} "
                            f"and {package.parent / 'kernels'}")


@functools.lru_cache(maxsize=None)
def module_source(file: str) -> str:
    """The source of ``file`` with its local includes expanded (each header once), as NVRTC compiles it."""
    if file not in KERNELS:
        raise ValueError(f"unknown kernel file {file!r}; known: {', '.join(KERNELS)}")
    folder = kernel_dir()
    seen: set[str] = set()

    def expand(name: str) -> str:
        text = (folder / name).read_text(encoding="utf-8")

        def include(match: re.Match) -> str:
            header = match.group(1)
            if header in seen:
                return ""
            seen.add(header)
            line = text.count("\n", 0, match.end()) + 2
            return f'#line 1 "{header}"\n{expand(header)}\n#line {line} "{name}"'

        return _INCLUDE.sub(include, text)

    return expand(file)


_lock = threading.Lock()
_modules: dict[tuple[int, str], Any] = {}
_functions: dict[tuple[int, str], Any] = {}


def get_function(device_id: int, name: str) -> Any:
    """The kernel ``name`` loaded on CUDA device ``device_id`` (compiled on first use, then cached).

    Call it with that device current. Raises KernelCompileError with the NVRTC log if its file does not
    compile.
    """
    key = (device_id, name)
    function = _functions.get(key)
    if function is not None:
        return function
    file = _FILE_OF.get(name)
    if file is None:
        raise ValueError(f"unknown kernel {name!r}")
    import cupy

    with _lock:
        try:
            module = _modules.get((device_id, file))
            if module is None:
                module = cupy.RawModule(code=module_source(file), options=NVRTC_OPTIONS)
            function = module.get_function(name)
        except cupy.cuda.compiler.CompileException as exc:
            raise KernelCompileError(f"NVRTC failed to compile gpubp kernel file {file} "
                                     f"({kernel_dir() / file}):\n{exc}") from exc
        except (RuntimeError, OSError, ImportError) as exc:  # a CUDA error, or no NVRTC or CUDA headers
            cause = cuda_error_cause(exc, f"cuda:{device_id}")
            if cause is not None:
                raise DeviceError(f"cannot load gpubp kernel file {file}: {cause}") from exc
            raise DeviceError(f"cannot compile gpubp kernel file {file} on cuda:{device_id}: NVRTC or the "
                              f"CUDA headers are missing ({type(exc).__name__}: {exc}); install them with: "
                              f"{install_command()}") from exc
        _modules[(device_id, file)] = module
        _functions[key] = function
    return function


def compile_offline(file: str, arch: str = "compute_90", ptx: bool = True) -> bytes:
    """Compile ``file`` with NVRTC as ``cupy.RawModule`` does on a device of ``arch``, but with no GPU.

    CuPy adds -ftz=true, -arch and --device-as-default-execution-space to gpubp's options (and include
    paths that the self-contained sources do not use); the same list is used here. Returns the PTX (or
    CUBIN); KernelCompileError with the NVRTC log on failure; ImportError or OSError where NVRTC is not
    installed (``pip install gpubp[nvrtc]``).
    """
    from cupy.cuda import nvrtc

    nvrtc.getVersion()  # raises when libnvrtc cannot be loaded
    options = [*NVRTC_OPTIONS, "-ftz=true", f"-arch={arch}", "--device-as-default-execution-space"]
    program = nvrtc.createProgram(module_source(file), file, [], [])
    try:
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError as exc:
            raise KernelCompileError(f"NVRTC failed to compile gpubp kernel file {file} for {arch} "
                                     f"({exc}):\n{nvrtc.getProgramLog(program)}") from exc
        return nvrtc.getPTX(program) if ptx else nvrtc.getCUBIN(program)
    finally:
        nvrtc.destroyProgram(program)
