"""``gpubp info``, ``gpubp selftest`` and ``gpubp bench``: what this machine offers gpubp, whether every
backend computes what the NumPy reference does, and how fast training runs."""

from __future__ import annotations

import argparse
import os
import platform
from typing import Any

from .. import datasets
from ..backend import (cuda_unavailable_reason, describe_cpu_backend, get_ops, gpu_names, parse_device,
                       visible_gpus)
from ..backend.precision import MATMUL_PRECISIONS, describe_cupy_matmuls, describe_gpu_matmuls
from .common import MISMATCH, say


def add_commands(commands: Any) -> None:
    """The ``info``, ``bench`` and ``selftest`` sub-commands and their options."""
    info = commands.add_parser("info", help="versions, GPUs, the device 'auto' picks, kernel check")
    info.set_defaults(run=cmd_info)

    bench = commands.add_parser("bench", help="training-step samples/s against plain NumPy (and PyTorch)")
    bench.add_argument("--configs", default="S,M,L", help="comma-separated configs among S, M, L")
    bench.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto")
    bench.add_argument("--seconds", type=float, default=10.0, help="time budget per config (default 10)")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                       help="include PyTorch when installed (default yes)")
    bench.set_defaults(run=cmd_bench)

    selftest = commands.add_parser("selftest", help="check every backend's kernels, backprop and training "
                                                    "steps against the NumPy reference (exit 1 on a mismatch)")
    selftest.add_argument("--backends", default=None, metavar="LIST",
                          help="comma-separated backends among numpy, numba, cuda:N (default: every one "
                               "usable here)")
    selftest.add_argument("--matmul-precision", choices=MATMUL_PRECISIONS, default="fp32",
                          help="the float32 rows' matmul precision on a GPU: fp32 (default) or tf32, checked "
                               "within TF32's tolerance")
    selftest.set_defaults(run=cmd_selftest)


# ---- info -------------------------------------------------------------------------------------------
def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    except OSError as exc:  # CuPy cannot create its kernel cache folder (the GPUs line says what to do)
        return f"installed, but the import fails ({type(exc).__name__}: {exc})"
    return getattr(mod, "__version__", "installed")


def kernel_check() -> str:
    """Whether every CUDA kernel compiles (NVRTC) on the current GPU; where their sources are."""
    from ..backend import kernels

    try:
        folder = kernels.kernel_dir()
    except FileNotFoundError as exc:
        return f"MISSING: {exc}"
    reason = cuda_unavailable_reason()
    if reason is not None:  # no GPU: compile with NVRTC for sm_90 as the run time would
        try:
            for file in kernels.KERNELS:
                kernels.compile_offline(file)
        except kernels.KernelCompileError as exc:
            return f"FAILED: {exc}"
        except Exception as exc:  # NVRTC itself is not installed
            return f"sources in {folder}; not compiled (no usable GPU, and NVRTC unavailable: {exc})"
        return f"all {len(kernels.KERNELS)} source files compile with NVRTC for sm_90 (no GPU to load " \
               f"them on; sources in {folder})"
    ops = get_ops("cuda")  # the current GPU
    index = parse_device(ops.device)[1]
    names = [name for file_names in kernels.KERNELS.values() for name in file_names]
    try:
        with ops.activate():
            for name in names:
                kernels.get_function(index, name)
    except kernels.KernelCompileError as exc:
        return f"FAILED: {exc}"
    return f"all {len(names)} compile on {ops.device} (sources in {folder})"


def graph_check() -> str:
    """Whether each usable GPU trains a chunk of mini-batches as one CUDA graph launch, or why not."""
    cells = []
    for index in range(visible_gpus()):
        reason = cuda_unavailable_reason(index)
        if reason is None:
            reason = get_ops(f"cuda:{index}").graph_unavailable_reason()
        cells.append(f"cuda:{index} " + ("CUDA graphs (one launch per chunk of mini-batches)" if reason is None
                                         else f"eager launches ({reason})"))
    return "; ".join(cells) if cells else "no GPU"


def matmul_check() -> str:
    """What "fp32" and "tf32" networks' matmuls get on each usable GPU here, and what CUPY_TF32 changes."""
    cells = []
    for index in range(visible_gpus()):
        if cuda_unavailable_reason(index) is None:
            import cupy

            capability = int(cupy.cuda.Device(index).compute_capability)
            cells.append(describe_gpu_matmuls(f"cuda:{index}", capability))
    gpus = "; ".join(cells) if cells else "no usable GPU: the CPU computes fp32 and tf32 networks in float32"
    return f"{gpus}; {describe_cupy_matmuls()}"


def cmd_info(args: argparse.Namespace) -> int:
    from .. import __version__

    say(f"gpubp {__version__}  Python {platform.python_version()}  {platform.platform()}")
    for module in ("numpy", "scipy", "numba", "cupy", "tqdm", "matplotlib", "sklearn", "onnx", "onnxruntime",
                   "safetensors"):
        say(f"{module:<10} {_version(module)}")
    gpus = gpu_names()
    reason = cuda_unavailable_reason()
    say("GPUs:      " + ("; ".join(gpus) if gpus else f"none ({reason})"))
    auto = get_ops("auto")
    say(f"auto:      {auto.device}" + ("" if reason is None else " (no usable GPU)" if not gpus else
                                         f" (the GPU is not usable: {reason})"))
    say(f"cpu:       {describe_cpu_backend()}")
    say(f"env GPUBP_DEVICE={os.environ.get('GPUBP_DEVICE', '(unset)')}  "
        f"GPUBP_DATA={os.environ.get(datasets.DATA_ENV, '(unset)')}")
    say(f"kernels:   {kernel_check()}")
    say(f"graphs:    {graph_check()}")
    say(f"matmuls:   {matmul_check()}")
    return 0


# ---- selftest ---------------------------------------------------------------------------------------
def cmd_selftest(args: argparse.Namespace) -> int:
    from ..selftest import format_report, run_selftest

    backends = None if args.backends is None else [b.strip().lower() for b in args.backends.split(",")]
    rows, missing = run_selftest(backends, log=lambda line: say(line, err=True),
                                 matmul_precision=args.matmul_precision)
    say(format_report(rows, missing))
    return 0 if all(row.ok for row in rows) else MISMATCH


# ---- bench ------------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from ..benchmark import format_table, get_config, run_benchmarks

    configs = [get_config(name.strip()).name for name in args.configs.split(",")]
    rows = run_benchmarks(configs, args.device or "auto", seconds=args.seconds, torch=args.torch,
                          repeats=args.repeats, log=lambda line: say(line, err=True))
    say(format_table(rows))
    return 0
