"""Array backends: ``Ops`` (NumPy reference) and ``CupyOps`` (CUDA kernels), chosen by device string."""

from .device import DeviceError, cuda_unavailable_reason, get_ops, parse_device
from .ops import Ops

__all__ = ["DeviceError", "Ops", "cuda_unavailable_reason", "get_ops", "parse_device"]
