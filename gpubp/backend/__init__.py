"""Array backends: ``Ops`` (NumPy reference) and ``CupyOps`` (CUDA kernels), chosen by device string, and
every question about devices (``arrays``: which device an array is on; ``device``: which devices exist and
what "auto" means)."""

from .arrays import array_module, is_device_array, to_host
from .device import (choose_cpu_backend, cuda_unavailable_reason, describe_cpu_backend, get_ops, gpu_name,
                     gpu_names, numba_unavailable_reason, parse_device, resolve_device, visible_gpus)
from .errors import DeviceError
from .ops import Ops

__all__ = ["DeviceError", "Ops", "array_module", "choose_cpu_backend", "cuda_unavailable_reason",
           "describe_cpu_backend", "get_ops", "gpu_name", "gpu_names", "is_device_array", "numba_unavailable_reason",
           "parse_device", "resolve_device", "to_host", "visible_gpus"]
