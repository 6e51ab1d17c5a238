"""What benchmark figures were measured on, recorded with every result."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

from ..backend import gpu_name, gpu_names
from .contenders import torch_available


def machine_info() -> dict:
    """What the figures were measured on: CPU, cores, load, NumPy and its BLAS, PyTorch, GPU."""
    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "processor": _cpu_model(), "cpu_count": os.cpu_count(), "numpy": np.__version__,
        "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")},
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                        for p in threadpool_info()]
    except ImportError:
        pass
    if torch_available():
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["torch_gpu"] = torch.cuda.get_device_name()
    gpus = gpu_names()
    if gpus:  # every GPU this process sees; "gpu", the first one's name, also names the results file
        import cupy

        info.update(gpus=gpus, gpu=gpu_name(0), cupy=cupy.__version__)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
