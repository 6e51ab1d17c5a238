"""Just enough of CuPy 14, on the CPU, to run ``CupyOps``, gpubp's CUDA kernels and its NCCL path without a GPU,
and as strict as CuPy where gpubp could go wrong.

Devices. Two emulated GPUs (``PHYSICAL_GPUS``), of which CUDA_VISIBLE_DEVICES selects and renumbers the
visible ones, as the CUDA runtime does; each has a PCI bus id and a UUID (``PCI_BUS_IDS``, ``UUIDS``: a
test gives two GPUs one bus id to make them two MIG slices of one GPU). Each host thread has a current
device (``cupy.cuda.Device(i)`` as a context or ``.use()``); arrays live in host memory but belong to the
device that was current when they were made (``a.device.id``). As in CuPy's _kernel.pyx / _reduction.pyx, an
elementwise operation, reduction, matmul, fill, astype, indexed read or assignment on an array of another
device than the current one raises ValueError ("... Peer access is unavailable between these devices."), and
a kernel given another device's memory faults (see Contexts and failures). With ``PEER_ACCESS`` (NVLink
machines, where CuPy enables peer access) both run on the current device instead, reading across (CuPy warns
with a PerformanceWarning). A kernel launched while another device is current than the one its module was
loaded on fails as the CUDA driver would. ``ran_on`` counts every operation by the device it ran on,
``peer_reads`` those that read another device's memory. Copies
(``cupy.asarray``, ``.copy()``: synchronous between devices) and ``get``/``asnumpy`` work across devices, as
in CuPy. As CuPy's kernels (``_scalar.CScalar``), operations take CuPy arrays, Python and NumPy scalars, and
refuse a NumPy array of any shape, 0-d included (TypeError); assigning one (``a[...] = host``, ``fill``)
takes a 0-d one's value and refuses any other (ValueError), as ``ndarray.fill`` does. Each device has ``GPU_MEMORY`` bytes, of which ``cuda.runtime.memGetInfo()`` reports
those its live arrays leave free; ``get_default_memory_pool().free_bytes()`` is ``POOL_FREE_BYTES``.

Kernels. ``RawModule(code=..., options=...)`` compiles the source it is given (as NVRTC would get it;
``-D`` options are honoured) with g++ and tests/cpp/cuda_emulator.h into a shared library, cached on disk
under ``BUILD_DIR`` (several processes may share it); calling a function runs the grid on CPU threads.
Each call checks its arguments against the kernel's C signature the way the CUDA driver would need them:
pointers get arrays of the pointee type (or a null), ``int`` an ``np.int32``, ``size_t`` an ``np.uint64``,
``float``/``double`` an ``np.float32``/``np.float64``. ``MISSING = "headers"`` makes every compile raise
the RuntimeError CuPy raises without the CUDA headers; ``MISSING = "cublas"`` makes cuBLAS fail to load.

Streams and NCCL. Every stream, the default (null) one included, queues its work (kernels, in-place
operations, copies, NCCL collectives, graph launches) and runs it in order, but only when something needs
it: a synchronisation, an event synchronised or waited on (``wait_event`` runs the other stream up to the
event), a copy to or from the host, or an operation that the emulation computes at once because it
allocates its result (it runs its own stream's queue first, then publishes its result through that queue:
the new array holds NaN until then). So work on two streams is ordered only where an event orders it: a
stream reading what another has not written yet gets stale data or NaN, and one reading late sees what the
other wrote after, as races would on a GPU. The null stream and blocking streams wait for each other, as
CUDA's legacy default stream does. ``cuda.nccl`` has
CuPy 14's API (``get_unique_id() -> bytes``, ``NcclCommunicator(int ndev, bytes commId, int rank,
config=None)``, ``allReduce``/``broadcast`` on device pointers and a stream handle) and sums between
processes over MPI (mpi4py), so several ranks under ``mpiexec`` train on "their" GPUs. As NCCL, it refuses
two ranks on one bus id (MIG slices included) unless NCCL_MULTI_RANK_GPU_ENABLE=1.

Matmuls. As cuBLAS under CuPy: with CUPY_TF32 > 0 CuPy's own float32 matmul (``cupy.matmul``, ``@``) reads
its operands as TF32 (10-bit mantissa), then sums in float32. cuBLAS itself, as CuPy 14 wraps it
(``cupy_backends.cuda.libs.cublas``: ``gemmEx``, ``getMathMode``/``setMathMode``; the handle from
``cupy.cuda.device.get_cublas_handle()``), takes raw device pointers, column-major matrices with leading
dimensions, host α and β, and an explicit compute type, checked as cuBLAS checks them: CUBLAS_COMPUTE_32F
is float32 (TF32 only where the handle's math mode is CUBLAS_TF32_TENSOR_OP_MATH),
CUBLAS_COMPUTE_32F_FAST_TF32 rounds both operands to TF32 and sums in float32, CUBLAS_COMPUTE_64F is
float64; CUPY_TF32 does not reach it, env NVIDIA_TF32_OVERRIDE=0 turns its TF32 off. A matrix outside the
current device's memory fails as an illegal address; the product is device work on the current stream
(captured in a CUDA graph like a kernel launch).

Sparse matrices. ``cupyx.scipy.sparse`` has ``csr_matrix`` (and ``csc_matrix``, its transpose) with CuPy's
dtypes (bool, float32, float64, complex; others raise ValueError) and int32 ``indices``/``indptr``: made from a
SciPy or CuPy sparse matrix, ``@`` a dense device array, rows gathered by a device index array or a slice,
``.T``, ``astype``, ``get``; operands of another device are refused as for dense arrays.

Stream capture (CUDA graphs), as strict as CUDA. ``Stream.begin_capture()`` / ``end_capture() -> Graph`` and
``graph.launch(stream=None)`` as in CuPy 14 (``cupy.cuda.graph.Graph``); the default stream cannot capture.
While a stream captures, the work issued to it (kernel launches, matmuls, elementwise operations and
reductions into ``out=``, copies between device arrays) is recorded, not run; a launch of the graph runs it
again, on the same pointers. Whatever CUDA refuses during a capture raises CUDARuntimeError
``cudaErrorStreamCaptureUnsupported`` and invalidates it (``end_capture`` then raises
``cudaErrorStreamCaptureInvalidated``): allocating (``cupy.empty``, an operation without ``out=``, …),
synchronising (a device, stream or event) and copying to or from the host (``get``, ``asnumpy``, ``set``,
reading an element). ``graph_calls`` counts captures and launches.

Contexts and failures. A device gets this process's context at its first allocation, kernel launch or cuBLAS
handle (``contexts`` holds the devices that have one). A device in ``HELD_ELSEWHERE`` is in exclusive-process
compute mode with another process (another rank) holding its context: creating one raises CUDARuntimeError
``cudaErrorDevicesUnavailable``, as CUDA does. ``DRIVER_VERSION`` below the runtime's 13000 makes
``getDeviceCount()`` raise ``cudaErrorInsufficientDriver`` (``driverGetVersion()`` still answers, as in
CUDA). ``LOAD_ERROR`` (a ``CUDA_ERROR_…`` message) makes loading a module fail with CUDADriverError, as
``cuModuleLoadData`` does for an out-of-memory, NO_BINARY_FOR_GPU or UNSUPPORTED_PTX_VERSION.
CUDA_VISIBLE_DEVICES empty, or naming no existing GPU, makes ``getDeviceCount()`` (and every device call)
raise ``cudaErrorNoDevice``. A kernel fault (a call to the emulator's ``emu_illegal_address()``, which a test
plants where a kernel would access out of bounds, or another device's memory without peer access) is
asynchronous as on a GPU: the launch reports nothing, the device's later work does not run, the next
synchronising call (a synchronisation, a host copy) raises CUDARuntimeError ``cudaErrorIllegalAddress``, and
from then on every call on that device does (``faults``: the context is lost).

A test calls :func:`install` (monkeypatch, in one process) or sets the environment of
:func:`install_from_environment` (a subprocess, e.g. an MPI rank).
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import json
import numbers
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import types
import warnings
import weakref
from pathlib import Path

import numpy as np

EMULATOR = Path(__file__).parent / "cuda_emulator.h"
PHYSICAL_GPUS = 2
#: per physical GPU: its PCI bus id and its 16-byte UUID (``getDeviceProperties(i)["uuid"]``). A test may give
#: two GPUs one bus id (two MIG slices of one GPU: one bus, two UUIDs)
PCI_BUS_IDS = [f"0000:{gpu + 1:02X}:00.0" for gpu in range(PHYSICAL_GPUS)]
UUIDS = [bytes([0xE7, gpu]) + bytes(14) for gpu in range(PHYSICAL_GPUS)]
SM_COUNT = 1
#: where the emulated kernel libraries are built (set by the test, or env GPUBP_EMULATED_CUPY_BUILD)
BUILD_DIR: Path | None = None
#: a piece of the CUDA toolkit to pretend is not installed: None, "headers" or "cublas"
MISSING: str | None = None
#: what CuPy raises where the CUDA headers cannot be found (no CUDA toolkit, no cuda-toolkit wheels)
HEADERS_MISSING_MESSAGE = ("Failed to find CUDA headers. Please install the CUDA Toolkit, or pip install "
                           "cupy-cuda13x[ctk]")
CUBLAS_MISSING_MESSAGE = ("CuPy failed to load libcublas.so.13: OSError: libcublas.so.13: cannot open shared "
                          "object file: No such file or directory")
ENV_BUILD, ENV_MISSING = "GPUBP_EMULATED_CUPY_BUILD", "GPUBP_EMULATED_CUPY_MISSING"
#: in a subprocess: the physical GPUs' PCI bus ids, comma-separated (for PCI_BUS_IDS)
ENV_BUS_IDS = "GPUBP_EMULATED_CUPY_PCI_BUS_IDS"
#: the memory of each emulated GPU, and the bytes the emulated memory pool holds unused (tests may set them)
GPU_MEMORY = 16 * 10**9
POOL_FREE_BYTES = 0
__version__ = "14.2.0 (emulated)"
#: the CUDA version the emulated CuPy wheel was built for, and the one the emulated driver supports
RUNTIME_VERSION = 13000
DRIVER_VERSION = 13000
#: the devices this process has a context on; those in exclusive-process mode held by another process
contexts: set[int] = set()
HELD_ELSEWHERE: set[int] = set()
#: a CUDA_ERROR_… message that loading any module raises (None: modules load)
LOAD_ERROR: str | None = None
#: whether the GPUs have peer-to-peer access (NVLink): then an operation given another device's array runs on
#: the current device, reading across the link, as CuPy enables peer access; without, it fails (env
#: GPUBP_EMULATED_CUPY_PEER_ACCESS=1 in a subprocess)
PEER_ACCESS = False
ENV_PEER_ACCESS = "GPUBP_EMULATED_CUPY_PEER_ACCESS"
#: every device operation by the device it ran on: (what, device) -> count ("alloc", "cupy.add", a kernel's
#: name, "graph", "set", "get", …)
ran_on: collections.Counter = collections.Counter()
#: operations that read another device's memory through peer access: (what, array's device, current) -> count
peer_reads: collections.Counter = collections.Counter()
#: devices whose context a kernel fault destroyed, with the CUDA error: raised by the next synchronising call
#: on that device, then (sticky) by every CUDA call on it
faults: dict[int, str] = {}
_reported: set[int] = set()
ILLEGAL_ADDRESS = "cudaErrorIllegalAddress: an illegal memory access was encountered"
NO_DEVICE = "cudaErrorNoDevice: no CUDA-capable device is detected"


class CUDARuntimeError(RuntimeError):
    pass


class CUDADriverError(RuntimeError):
    pass


class CompileException(Exception):
    pass


def _fault(device: int, synchronising: bool = False) -> None:
    """A kernel fault on ``device`` surfaces at a synchronising call, and after that at every call (sticky)."""
    error = faults.get(device)
    if error is not None and (synchronising or device in _reported):
        _reported.add(device)
        raise CUDARuntimeError(error)


def _context(device: int) -> None:
    """This process's context on (visible) ``device``, created on first use as CUDA does."""
    _fault(device)
    if device in contexts:
        return
    if _visible()[device] in HELD_ELSEWHERE:
        raise CUDARuntimeError("cudaErrorDevicesUnavailable: CUDA-capable device(s) is/are busy or unavailable")
    contexts.add(device)


def _device_count() -> int:
    if DRIVER_VERSION < RUNTIME_VERSION:
        raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA "
                               "runtime version")
    if not _visible():  # CUDA_VISIBLE_DEVICES="" or naming no existing GPU
        raise CUDARuntimeError(NO_DEVICE)
    return len(_visible())


# ---- devices ------------------------------------------------------------------------------------------
def _visible() -> list[int]:
    """The physical GPUs this process sees, in CUDA_VISIBLE_DEVICES order (all when it is unset)."""
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(range(PHYSICAL_GPUS))
    visible = []
    for item in spec.split(","):
        if not item.strip().isdigit() or int(item) >= PHYSICAL_GPUS:
            break  # the CUDA runtime stops at the first invalid entry
        visible.append(int(item))
    return visible


_thread = threading.local()


def _current() -> int:
    return getattr(_thread, "device", 0)


def _check_ordinal(index: int) -> int:
    if not _visible():  # no visible device: every call raises cudaErrorNoDevice
        raise CUDARuntimeError(NO_DEVICE)
    if not isinstance(index, numbers.Integral) or not 0 <= index < len(_visible()):
        raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
    return int(index)


class Device:
    """cupy.cuda.Device: a context that makes the device current, and restores the previous one."""

    def __init__(self, device=None) -> None:
        self.id = _current() if device is None else _check_ordinal(device)
        self._previous: list[int] = []

    def __enter__(self):
        self._previous.append(_current())
        _thread.device = self.id
        return self

    def __exit__(self, *exc) -> None:
        _thread.device = self._previous.pop()

    def __eq__(self, other) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return self.id

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"

    def use(self) -> None:
        _thread.device = self.id

    def synchronize(self) -> None:
        _refuse_in_capture("synchronising the device")
        for stream in [*_null_streams.values(), *_streams.values()]:
            if stream.device_id == self.id:
                stream._run_until(stream._issued)
        _fault(self.id, synchronising=True)

    @property
    def pci_bus_id(self) -> str:
        return PCI_BUS_IDS[_visible()[self.id]]

    @property
    def compute_capability(self) -> str:
        return "90"

    @property
    def cublas_handle(self) -> int:
        _context(self.id)
        if MISSING == "cublas":
            raise RuntimeError(CUBLAS_MISSING_MESSAGE)
        return 0x1000 + self.id


def _device_attribute(attr: int, device: int) -> int:
    _check_ordinal(device)
    return SM_COUNT


def _device_properties(device: int) -> dict:
    _check_ordinal(device)
    gpu = _visible()[device]
    return {"name": f"Emulated GPU {gpu}".encode(), "major": 9, "minor": 0, "uuid": UUIDS[gpu],
            "pciBusID": int(PCI_BUS_IDS[gpu].split(":")[1], 16)}


def _set_device(device: int) -> None:
    _thread.device = _check_ordinal(device)


def _mem_get_info() -> tuple[int, int]:
    """cudaMemGetInfo: (free, total) bytes of the current device, its live arrays taken from GPU_MEMORY."""
    _fault(_current())
    used = sum(size for size, device in list(_allocations.values()) if device == _current())
    return GPU_MEMORY - used, GPU_MEMORY


runtime = types.SimpleNamespace(
    cudaDevAttrMultiProcessorCount=16, CUDARuntimeError=CUDARuntimeError, getDevice=_current,
    setDevice=_set_device, getDeviceCount=_device_count, deviceGetAttribute=_device_attribute,
    getDeviceProperties=_device_properties, runtimeGetVersion=lambda: RUNTIME_VERSION,
    driverGetVersion=lambda: DRIVER_VERSION, memGetInfo=_mem_get_info,
    is_hip=False, streamCaptureModeGlobal=0, streamCaptureModeThreadLocal=1, streamCaptureModeRelaxed=2)


# ---- arrays -------------------------------------------------------------------------------------------
#: live allocations: start address -> (bytes, device); what a raw device pointer (NCCL) may point into
_allocations: dict[int, tuple[int, int]] = {}
#: start address -> the array owning that device memory (weakly: as long as the program holds it)
_owners: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()


def _register(root: np.ndarray, device: int) -> None:
    start = root.__array_interface__["data"][0]
    if root.nbytes and start not in _allocations:
        _refuse_in_capture(f"allocating {root.nbytes} bytes")
        _context(device)
        ran_on["alloc", device] += 1
        _allocations[start] = (root.nbytes, device)
        _owners[start] = root
        weakref.finalize(root, _allocations.pop, start, None)


def _owner_of(ptr: int) -> np.ndarray | None:
    """The array whose device memory holds ``ptr``: queued work that reads raw pointers keeps it alive, as
    CuPy's stream-ordered memory pool does not reuse freed memory before the work queued on it has run."""
    for start, (size, _) in _allocations.items():
        if start <= ptr < start + size:
            return _owners.get(start)
    return None


def _device_of_pointer(ptr: int, nbytes: int) -> int:
    for start, (size, device) in _allocations.items():
        if start <= ptr and ptr + nbytes <= start + size:
            return device
    raise CUDARuntimeError(f"cudaErrorInvalidValue: {ptr:#x} (+{nbytes} bytes) is not device memory")


class MemoryPointer:
    def __init__(self, ptr: int, device_id: int) -> None:
        self.ptr, self.device_id = ptr, device_id


class PerformanceWarning(RuntimeWarning):
    """cupy._util.PerformanceWarning: CuPy warns so when it enables peer access for an operation."""


def _device_op(arrays, what: str) -> None:
    """An operation ``what`` on the current device: CuPy's check of every operand against it (_kernel.pyx's
    _check_peer_access: ValueError without peer access, a warning where CuPy enables it), and a record of
    where it ran."""
    current = _current()
    _fault(current)
    for x in arrays:
        if isinstance(x, ndarray) and x._device_id != current:
            message = (f"{what}: the device where the array resides ({x._device_id}) is different from the "
                       f"current device ({current}).")
            if not PEER_ACCESS:
                raise ValueError(f"{message} Peer access is unavailable between these devices.")
            warnings.warn(f"{message} Peer access has been activated automatically.", PerformanceWarning)
            peer_reads[what, x._device_id, current] += 1
    ran_on[what, current] += 1


def _refuse_host(arrays, what: str) -> None:
    """CuPy's kernels take CuPy arrays, Python scalars and NumPy scalars; a NumPy array of any shape, 0-d
    included, is refused (_kernel.pyx: _preprocess_arg wraps a non-CuPy argument in _scalar.CScalar, which
    takes only Python and NumPy scalars)."""
    for x in arrays:
        if isinstance(x, np.ndarray) and not isinstance(x, ndarray):
            raise TypeError(f"{what}: Unsupported type <class 'numpy.ndarray'> (a host array of shape "
                            f"{x.shape} where CuPy needs a device array or a scalar)")


def _flat(items):
    for x in items:
        if isinstance(x, (list, tuple)):
            yield from _flat(x)
        else:
            yield x


def _plain(x):
    return x.view(np.ndarray) if isinstance(x, ndarray) else x


class ndarray(np.ndarray):
    """A host array standing in for an array on device ``device.id``."""

    _device_id = 0

    def __array_finalize__(self, obj) -> None:
        self._device_id = obj._device_id if isinstance(obj, ndarray) else _current()
        if self.base is None:  # a new allocation (astype, copy, …)
            _register(self, self._device_id)

    @property
    def device(self) -> Device:
        return Device(self._device_id)

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "strides": None if self.flags.c_contiguous
                else self.strides, "data": (self.__array_interface__["data"][0], False), "version": 3}

    @property
    def data(self) -> MemoryPointer:
        return MemoryPointer(self.__array_interface__["data"][0], self._device_id)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        outs = kwargs.get("out") or ()
        operands = [*inputs, *outs]
        _refuse_host(operands, f"cupy.{ufunc.__name__}")
        _device_op(operands, f"cupy.{ufunc.__name__}")
        read = _tf32 if ufunc is np.matmul and _tf32_matmuls() else _plain
        if outs or method == "at":  # in place: device work on the current stream
            kwargs["out"] = tuple(_plain(o) for o in outs)
            if method == "at":
                del kwargs["out"]
            _submit(lambda: getattr(ufunc, method)(*(read(x) for x in inputs), **kwargs))
            return outs[0] if len(outs) == 1 else (outs or None)
        _refuse_in_capture(f"cupy.{ufunc.__name__} allocates its result")
        _issue_now()
        result = getattr(ufunc, method)(*(read(x) for x in inputs), **kwargs)
        if isinstance(result, tuple):
            return tuple(_wrap(np.asarray(r)) for r in result)
        return _wrap(np.asarray(result)) if isinstance(result, (np.ndarray, np.generic)) else result

    def __array_function__(self, func, types_, args, kwargs):
        if not func.__name__.endswith("_like"):
            operands = list(_flat([*args, *kwargs.values()]))
            _refuse_host(operands, f"cupy.{func.__name__}")
            _device_op(operands, f"cupy.{func.__name__}")
        if func is np.copyto:  # device work on the current stream
            _submit(lambda: super(ndarray, self).__array_function__(func, types_, args, kwargs))
            return None
        _issue_now()
        result = super().__array_function__(func, types_, args, kwargs)
        if isinstance(result, np.ndarray):
            return _wrap(result)  # a new array refuses to be allocated during a capture
        if result is not None:
            _to_host(self, f"cupy.{func.__name__} returns a host value")
        return result

    # methods NumPy runs in C (no ufunc): the kernels CuPy launches for them check the device too
    def __setitem__(self, key, value) -> None:
        _device_op([self, value, *_flat([key])], "cupy.ndarray.__setitem__")
        if isinstance(value, np.ndarray) and not isinstance(value, ndarray):
            value = _fill_value(value)
        _submit(lambda: super(ndarray, self).__setitem__(key, value))

    def __getitem__(self, key):
        if any(isinstance(k, (np.ndarray, list)) for k in _flat([key])):  # advanced indexing: a kernel
            _device_op([self, *_flat([key])], "cupy.ndarray.__getitem__")
            _issue_now()
            return _wrap(np.asarray(self.view(np.ndarray)[tuple(_plain(k) for k in _flat([key]))]
                                    if isinstance(key, tuple) else self.view(np.ndarray)[_plain(key)]))
        result = super().__getitem__(key)
        if not isinstance(result, np.ndarray):
            _to_host(self, "copying an element to the host")
            result = super().__getitem__(key)
        return result

    def __float__(self) -> float:
        _to_host(self, "copying an element to the host")
        return super().__float__()

    def __int__(self) -> int:
        _to_host(self, "copying an element to the host")
        return super().__int__()

    def __bool__(self) -> bool:
        _to_host(self, "copying an element to the host")
        return super().__bool__()

    def item(self, *args):
        _to_host(self, "copying an element to the host")
        return super().item(*args)

    def fill(self, value) -> None:
        _device_op([self], "cupy.ndarray.fill")
        if isinstance(value, np.ndarray):
            value = _fill_value(value)
        _submit(lambda: super(ndarray, self).fill(value))

    def astype(self, dtype, *args, **kwargs):
        _device_op([self], "cupy.ndarray.astype")
        _issue_now()
        return _wrap(self.view(np.ndarray).astype(dtype, *args, **kwargs))

    def argmax(self, *args, **kwargs):
        _device_op([self], "cupy.ndarray.argmax")
        _issue_now()
        return _wrap(np.asarray(self.view(np.ndarray).argmax(*args, **kwargs)))

    def argmin(self, *args, **kwargs):
        _device_op([self], "cupy.ndarray.argmin")
        _issue_now()
        return _wrap(np.asarray(self.view(np.ndarray).argmin(*args, **kwargs)))

    def copy(self, order="C"):
        """A copy on the current device, from any device: from another one as CuPy copies between devices
        (a synchronous cudaMemcpy, after the work queued on both devices)."""
        ran_on["copy", _current()] += 1
        _issue_now()
        if self._device_id == _current():
            return _wrap(np.array(self.view(np.ndarray), order=order, copy=True))
        _to_host(self, "copying between devices")
        copied = np.array(self.view(np.ndarray), order=order, copy=True)
        _register(copied, _current())
        return copied.view(ndarray)

    def get(self, stream=None) -> np.ndarray:
        _to_host(self, "copying to the host")
        return np.array(self, copy=True).view(np.ndarray)

    def set(self, arr, stream=None) -> None:
        """A copy from host memory, checked as CuPy checks it (a NumPy array of this size and dtype): on
        ``stream``, the host data staged at the call as for pageable memory; without one, synchronously."""
        if not isinstance(arr, np.ndarray) or isinstance(arr, ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray; got {type(arr)}")
        if arr.size != self.size:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if arr.dtype != self.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        _refuse_in_capture("copying from the host")
        staged, target = arr.reshape(self.shape).copy(), self.view(np.ndarray)
        with Device(self._device_id):
            ran_on["set", self._device_id] += 1
            if stream is None:
                _to_host(self, "copying from the host")
                np.copyto(target, staged)
            else:
                _submit(lambda: np.copyto(target, staged), stream)


def _fill_value(value: np.ndarray):
    """A host array assigned to a device array: CuPy fills with a 0-d one's value and refuses any other
    (core.pyx, ndarray.fill, where ``a[...] = value`` goes for anything but a CuPy array)."""
    if value.shape != ():
        raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
    return value.item()


def _tf32_matmuls() -> bool:
    """CuPy's rule (_routines_linalg.get_compute_type): float32 matmuls use TF32 where int(CUPY_TF32) > 0.
    CuPy reads it at its first float32 matmul; the emulation at every one."""
    return int(os.environ.get("CUPY_TF32", "0")) > 0


def _tf32(x):
    """A matmul operand as TF32 tensor cores read it: a float32's mantissa rounded to its 10 leading bits
    (to nearest, ties to even; NaN stays NaN); other dtypes as they are."""
    x = _plain(x)
    if getattr(x, "dtype", None) != np.float32:
        return x
    x = np.ascontiguousarray(x)
    bits = x.view(np.uint32)
    bits = (bits + np.uint32(0xFFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    return np.where(np.isnan(x), x, bits.view(np.float32))


def _wrap(x):
    """A NumPy result as an emulated array on the current device (emulated arrays pass through). A view of
    a device array stays a view; anything else is a new allocation whose values the current stream writes
    in its turn: until then it holds NaN (zeros for integers), which another stream reading it unordered
    gets, as it would get stale memory on a GPU."""
    if not isinstance(x, np.ndarray) or isinstance(x, ndarray):
        return x
    root = x
    while isinstance(root.base, np.ndarray):
        root = root.base
    start = root.__array_interface__["data"][0]
    if root.nbytes and start in _allocations:  # a view of a device array
        with Device(_allocations[start][1]):
            return x.view(ndarray)
    unwritten = np.full(x.shape, np.nan if x.dtype.kind in "fc" else 0, dtype=x.dtype)
    _register(unwritten, _current())
    _submit(lambda: np.copyto(unwritten, x))
    return unwritten.view(ndarray)


def asarray(x, dtype=None):
    """On the current device: host data is uploaded (staged at the call, written in the current stream's
    turn); an array of another device is copied over."""
    if isinstance(x, ndarray) and x._device_id != _current():
        x = x.copy()
    if isinstance(x, ndarray):
        return x if dtype is None or x.dtype == np.dtype(dtype) else x.astype(dtype)
    ran_on["upload", _current()] += 1
    return _wrap(np.array(x, dtype=dtype, copy=True))


def array(x, dtype=None, copy=True):
    return asarray(x, dtype).copy() if copy else asarray(x, dtype)


def asnumpy(x):
    if isinstance(x, ndarray):
        _to_host(x, "copying to the host")
    return np.asarray(x).view(np.ndarray)


def ascontiguousarray(x, dtype=None):
    _device_op([x], "cupy.ascontiguousarray")
    if x.flags.c_contiguous and (dtype is None or x.dtype == np.dtype(dtype)):
        return x
    _issue_now()
    return _wrap(np.ascontiguousarray(_plain(x), dtype=dtype))


class _MemoryPool:
    """cupy.get_default_memory_pool(): it holds POOL_FREE_BYTES unused on every device."""

    def free_bytes(self) -> int:
        return POOL_FREE_BYTES


_memory_pool = _MemoryPool()


def get_default_memory_pool() -> _MemoryPool:
    return _memory_pool


def get_array_module(*args):
    return sys.modules[__name__]


def take(a, indices, axis=None, out=None):
    """cupy.take: no ``mode`` argument (out-of-range indices wrap)."""
    operands = [a, indices] + ([] if out is None else [out])
    _refuse_host(operands, "cupy.take")
    _device_op(operands, "cupy.take")
    if out is not None:
        _submit(lambda: np.take(_plain(a), _plain(indices), axis=axis, out=_plain(out), mode="wrap"))
        return out
    _refuse_in_capture("cupy.take allocates its result")
    _issue_now()
    return _wrap(np.take(_plain(a), _plain(indices), axis=axis, mode="wrap"))


def __getattr__(name):
    """Everything else: NumPy's function, refusing host arrays and other devices' arrays as CuPy does,
    returning emulated arrays on the current device."""
    attr = getattr(np, name)
    if not callable(attr) or isinstance(attr, type):
        return attr

    def call(*args, **kwargs):
        operands = list(_flat([*args, *kwargs.values()]))
        _refuse_host(operands, f"cupy.{name}")
        _device_op(operands, f"cupy.{name}")
        _issue_now()
        return _wrap(attr(*args, **kwargs))

    return call


class RandomState:
    def __init__(self, seed: int) -> None:
        self._rng = np.random.RandomState(seed % 2 ** 32)

    def permutation(self, n: int):
        return _wrap(self._rng.permutation(n))


random = types.SimpleNamespace(RandomState=RandomState)


# ---- streams, events and CUDA graphs -------------------------------------------------------------------
_streams: dict[int, "Stream"] = {}
_null_streams: dict[int, "Stream"] = {}
#: the streams capturing now (any thread): CUDA refuses allocation, synchronisation and host copies meanwhile
_capturing: dict[int, "Stream"] = {}
#: how many graphs have been captured and launched in this process
graph_calls = {"captures": 0, "launches": 0}


class _Capture:
    """The work recorded on a capturing stream, and why the capture was invalidated (None while valid)."""

    def __init__(self) -> None:
        self.work: list = []
        self.invalidated: str | None = None


def _refuse_in_capture(what: str) -> None:
    """What CUDA refuses while a stream captures: raise cudaErrorStreamCaptureUnsupported and invalidate
    every capture in progress."""
    if not _capturing:
        return
    for stream in list(_capturing.values()):
        if stream._capture.invalidated is None:  # the first error is the one reported
            stream._capture.invalidated = what
    raise CUDARuntimeError(f"cudaErrorStreamCaptureUnsupported: operation not permitted when stream is "
                           f"capturing ({what})")


def _submit(work, stream: "Stream | None" = None) -> None:
    """Device work on ``stream`` (the current one): queued there, or recorded for the graph while it
    captures."""
    stream = stream or get_current_stream()
    _fault(stream.device_id)
    capture = stream._capture
    if capture is None:
        stream.enqueue(work)
        return
    if capture.invalidated is not None:
        raise CUDARuntimeError(f"cudaErrorStreamCaptureInvalidated: the capture was invalidated by an "
                               f"earlier error ({capture.invalidated})")
    capture.work.append(work)


def _issue_now() -> None:
    """Before an operation the emulation computes at once (it allocates its result): the current stream's
    queued work, which comes before it; other streams' work stays queued."""
    stream = get_current_stream()
    stream._run_until(stream._issued)


def _to_host(x: "ndarray", what: str) -> None:
    """A synchronous copy to or from the host of ``x``: on the current stream of its device, which it waits
    for; it reports a kernel fault on that device."""
    _refuse_in_capture(what)
    with Device(x._device_id):
        stream = get_current_stream()
        stream._run_until(stream._issued)
    _fault(x._device_id, synchronising=True)


class Graph:
    """cupy.cuda.graph.Graph: the work a stream captured, launched as a whole on a stream of its device."""

    def __init__(self, work: list, device_id: int) -> None:
        self._work, self._device_id = list(work), device_id

    def launch(self, stream: "Stream | None" = None) -> None:
        stream = stream or get_current_stream()
        if stream.device_id != self._device_id or _current() != self._device_id:
            raise CUDARuntimeError(f"cudaErrorInvalidResourceHandle: a graph of device {self._device_id} "
                                   f"launched on a stream of device {stream.device_id} with device "
                                   f"{_current()} current")
        graph_calls["launches"] += 1
        ran_on["graph", self._device_id] += 1

        def replay() -> None:
            for work in self._work:
                work()

        _submit(replay, stream)  # on a capturing stream: the graph becomes part of that capture

    def upload(self, stream: "Stream | None" = None) -> None:
        """Nothing to upload in host memory."""


class Stream:
    """A queue of work on the device current at its creation, run in order but only when something needs
    it: a stream or device synchronisation, an event synchronised or waited on, a host copy on it, or an
    operation the emulation computes at once issued on it. So work on two streams is ordered only where an
    event orders it (``wait_event``): without, one stream reads what the other has not written yet, or
    writes over what the other has not read yet. As in CUDA, the legacy default (null) stream and the
    blocking streams (``non_blocking=False``) of a device wait for each other; non-blocking ones do not. As a
    context, the current stream of its device (``cupy.cuda.get_current_stream()``)."""

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False) -> None:
        self.device_id = _current()
        _fault(self.device_id)
        self._work: collections.deque = collections.deque()
        self._issued = self._done = 0  # how many items were queued, how many have run
        self._capture: _Capture | None = None
        self.ptr = 0 if null else id(self)
        self.blocking = not (null or non_blocking)
        if not null:
            _streams[self.ptr] = self

    def __enter__(self) -> "Stream":
        if self.device_id != _current():
            raise RuntimeError(f"The device that the stream is created on ({self.device_id}) does not match "
                               f"with the current device ({_current()})")
        _stream_stack(self.device_id).append(self)
        return self

    def __exit__(self, *exc) -> None:
        _stream_stack(self.device_id).pop()

    def begin_capture(self, mode=None) -> None:
        if self.ptr == 0:
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if self._capture is not None:
            raise CUDARuntimeError("cudaErrorIllegalState: the stream is already capturing")
        self._capture = _Capture()
        _capturing[self.ptr] = self

    def end_capture(self) -> Graph:
        capture = self._capture
        if capture is None:
            raise CUDARuntimeError("cudaErrorIllegalState: the stream is not capturing")
        self._capture = None
        del _capturing[self.ptr]
        if capture.invalidated is not None:
            raise CUDARuntimeError(f"cudaErrorStreamCaptureInvalidated: the capture was invalidated by an "
                                   f"earlier error ({capture.invalidated})")
        graph_calls["captures"] += 1
        return Graph(capture.work, self.device_id)

    def is_capturing(self) -> bool:
        return self._capture is not None

    def enqueue(self, work) -> None:
        """``work`` after this stream's queued work: after the null stream's too for a blocking stream, and
        after every blocking stream's for the null stream (CUDA's legacy default stream)."""
        for other in self._implicitly_after():
            other._run_until(other._issued)
        self._work.append(work)
        self._issued += 1

    def _implicitly_after(self) -> list["Stream"]:
        if self.ptr == 0:
            return [s for s in _streams.values() if s.blocking and s.device_id == self.device_id]
        null = _null_streams.get(self.device_id)
        return [null] if self.blocking and null is not None else []

    def _run_until(self, count: int) -> None:
        """Run the queued work up to item ``count`` (none where a kernel fault has killed the context)."""
        while self._done < count:
            work = self._work.popleft()
            self._done += 1
            if self.device_id not in faults:
                work()

    def record(self, event: "Event | None" = None) -> "Event":
        if self.device_id != _current():
            raise CUDARuntimeError("cudaErrorInvalidResourceHandle: an event recorded on a stream of device "
                                   f"{self.device_id} while device {_current()} is current")
        _fault(self.device_id)
        event = event or Event()
        event.stream, event.count = self, self._issued
        return event

    def wait_event(self, event: "Event") -> None:
        """This stream's later work after ``event``: the work before it runs now (earlier than a GPU might,
        which no correct program can tell)."""
        _fault(self.device_id)
        if event.stream is not None:
            event.stream._run_until(event.count)

    def synchronize(self) -> None:
        _refuse_in_capture("synchronising a stream")
        self._run_until(self._issued)
        _fault(self.device_id, synchronising=True)


class Event:
    def __init__(self, *args, **kwargs) -> None:
        self.stream: Stream | None = None
        self.count = 0

    def synchronize(self) -> None:
        _refuse_in_capture("synchronising an event")
        if self.stream is not None:
            self.stream._run_until(self.count)
            _fault(self.stream.device_id, synchronising=True)


def _stream_stack(device: int) -> list:
    """The streams made current on ``device`` by this thread (``with stream:``), innermost last."""
    stacks = getattr(_thread, "streams", None)
    if stacks is None:
        stacks = _thread.streams = {}
    return stacks.setdefault(device, [])


def get_current_stream() -> Stream:
    device = _current()
    stack = _stream_stack(device)
    if stack:
        return stack[-1]
    if device not in _null_streams:
        _null_streams[device] = Stream(null=True)
    return _null_streams[device]


# ---- RawModule ----------------------------------------------------------------------------------------
_SCALARS = {"int": np.int32, "size_t": np.uint64, "float": np.float32, "double": np.float64}
_POINTEES = {"float": np.float32, "double": np.float64, "long long": np.int64}
_CTYPES = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.uint64): ctypes.c_uint64,
           np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}
_compiled: dict[str, tuple] = {}
_lock = threading.Lock()


def _compiler() -> str:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("the CUDA emulator needs a C++ compiler (g++ or $CXX)")
    return compiler


def _signatures(preprocessed: str) -> dict[str, list[tuple[str, str]]]:
    """kernel name -> [(param type, param name)] from ``extern "C" void name(...)`` declarations."""
    found = {}
    for name, params in re.findall(r'extern\s+"C"\s+void\s+(gpubp_\w+)\s*\(([^)]*)\)', preprocessed):
        found[name] = [tuple(p.strip().rsplit(None, 1)) for p in params.split(",")]
    return found


def _build(code: str, defines: tuple[str, ...]) -> tuple:
    """(library, signatures) of ``code``, built once per source and options (on disk, across processes)."""
    key = hashlib.sha256(repr((code, defines)).encode() + EMULATOR.read_bytes()).hexdigest()[:16]
    with _lock:
        if key in _compiled:
            return _compiled[key]
        folder = Path(BUILD_DIR or os.environ[ENV_BUILD]) / key
        lib, sig_file = folder / "kernels.so", folder / "signatures.json"
        if not (lib.exists() and sig_file.exists()):
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:  # build aside, then rename into place
                source = Path(tmp) / "kernels.cpp"
                source.write_text(code)
                flags = ["-std=c++17", "-D__CUDACC__", *defines, "-include", str(EMULATOR), "-x", "c++"]
                pre = subprocess.run([_compiler(), *flags, "-E", str(source)], capture_output=True, text=True)
                built = subprocess.run([_compiler(), *flags, "-O1", "-shared", "-fPIC", "-pthread",
                                        str(source), "-o", str(Path(tmp) / "kernels.so")],
                                       capture_output=True, text=True)
                if pre.returncode or built.returncode:
                    raise CompileException(f"emulated compile failed:\n{pre.stderr}\n{built.stderr}")
                (Path(tmp) / "signatures.json").write_text(json.dumps(_signatures(pre.stdout)))
                os.replace(Path(tmp) / "kernels.so", lib)
                os.replace(Path(tmp) / "signatures.json", sig_file)
        signatures = {name: [tuple(p) for p in params]
                      for name, params in json.loads(sig_file.read_text()).items()}
        _compiled[key] = (ctypes.CDLL(str(lib)), signatures)
        return _compiled[key]


class _ThreadPool:
    """``size`` persistent threads, one per CUDA thread of a block (OS threads: thread_local indices)."""

    def __init__(self, size: int) -> None:
        self._start, self._done = threading.Barrier(size + 1), threading.Barrier(size + 1)
        self._job = None
        for t in range(size):
            threading.Thread(target=self._work, args=(t,), daemon=True).start()

    def _work(self, t: int) -> None:
        while True:
            self._start.wait()
            self._job(t)
            self._done.wait()

    def run(self, job) -> None:
        self._job = job
        self._start.wait()
        self._done.wait()


_pools: dict[int, _ThreadPool] = {}


class RawModule:
    """Compiled and loaded on the current device when a function is first asked for, as in CuPy."""

    def __init__(self, code: str, options: tuple = ()) -> None:
        self.code, self.options = code, tuple(options)

    def get_function(self, name: str) -> "Function":
        if MISSING == "headers":
            raise RuntimeError(HEADERS_MISSING_MESSAGE)
        lib, signatures = _build(self.code, tuple(o for o in self.options if o.startswith("-D")))
        _context(_current())
        if LOAD_ERROR is not None:
            raise CUDADriverError(LOAD_ERROR)
        if name not in signatures:
            raise KeyError(f"no kernel {name} in the module")
        return Function(lib, name, signatures[name], _current())


class Function:
    def __init__(self, lib, name: str, signature: list[tuple[str, str]], device_id: int) -> None:
        self.lib, self.name, self.signature, self.device_id = lib, name, signature, device_id
        self.fn = getattr(lib, name)
        self.launches = 0

    def _convert(self, args: tuple) -> tuple[list, str | None]:
        """The C arguments, and what makes the launch fault where it runs (an array of another device
        without peer access: an address the GPU cannot reach) or None."""
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments, got {len(args)}")
        converted, fault = [], None
        for (ctype, pname), arg in zip(self.signature, args):
            if ctype.endswith("*"):
                pointee = ctype.replace("const", "").rstrip("*").strip()
                if isinstance(arg, np.uint64) and arg == 0:
                    converted.append(ctypes.c_void_p(None))
                    continue
                if not isinstance(arg, ndarray):
                    raise TypeError(f"{self.name}: {pname} ({ctype}) needs a device array, got {type(arg)}")
                if arg._device_id != self.device_id and PEER_ACCESS:
                    peer_reads[self.name, arg._device_id, self.device_id] += 1
                elif arg._device_id != self.device_id:
                    fault = (f"{ILLEGAL_ADDRESS} ({self.name} ran on device {self.device_id} but {pname} "
                             f"is on device {arg._device_id}, with no peer access)")
                if arg.dtype != _POINTEES[pointee]:
                    raise TypeError(f"{self.name}: {pname} is {ctype}, got an array of {arg.dtype}")
                if not arg.flags.c_contiguous:
                    raise TypeError(f"{self.name}: {pname} must be C-contiguous")
                converted.append(ctypes.c_void_p(arg.ctypes.data))
            else:
                want = np.dtype(_SCALARS[ctype])
                if not isinstance(arg, np.generic) or arg.dtype != want:
                    raise TypeError(f"{self.name}: {pname} is {ctype} ({want}), got {arg!r} "
                                    f"({type(arg).__name__})")
                converted.append(_CTYPES[want](arg))
        return converted, fault

    def __call__(self, grid: tuple, block: tuple, args: tuple) -> None:
        if _current() != self.device_id:
            raise CUDADriverError(f"CUDA_ERROR_INVALID_HANDLE: {self.name} was loaded on device "
                                  f"{self.device_id} and launched while device {_current()} is current")
        cargs, fault = self._convert(args)
        _context(self.device_id)
        blocks, threads = int(grid[0]), int(block[0])
        if blocks < 1 or threads < 1 or threads % 32 or threads > 1024:
            raise ValueError(f"bad launch configuration grid={grid} block={block}")
        ran_on[self.name, self.device_id] += 1
        # the closure holds the arrays, so that they live until the queued launch has run
        _submit(lambda: self._run(cargs, blocks, threads, fault, keep_alive=args))

    def _run(self, cargs: list, blocks: int, threads: int, fault: str | None, keep_alive: tuple) -> None:
        """The grid on CPU threads (when its stream runs it, or at each launch of a graph that captured it).
        A fault (a foreign address, or a planted ``emu_illegal_address()``) kills the device's context; the
        launch itself reports nothing, as a launch does not wait for its kernel."""
        self.launches += 1
        if fault is not None:
            faults.setdefault(self.device_id, fault)
            return
        lib = self.lib
        lib.emu_configure(blocks, threads)

        def run(t: int) -> None:
            for b in range(blocks):
                lib.emu_set_thread(b, t)
                self.fn(*cargs)
                lib.emu_block_end()

        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = _ThreadPool(threads)
        pool.run(run)
        if lib.emu_launch_failed():
            raise RuntimeError(f"{self.name}: a thread missed a barrier (deadlock in the emulated launch)")
        if lib.emu_launch_faulted():
            faults.setdefault(self.device_id, f"{ILLEGAL_ADDRESS} (in {self.name})")


# ---- NCCL (CuPy 14's cupy.cuda.nccl), summing over MPI --------------------------------------------------
class NcclError(RuntimeError):
    pass


#: how many collectives this process has queued, by name (a test's proof that the NCCL path ran)
nccl_calls = {"allReduce": 0, "broadcast": 0}


_NCCL_TYPES = {7: np.float32, 8: np.float64}
_NCCL_OPS = {0: "SUM"}


def _get_unique_id() -> bytes:
    return os.urandom(128)


class NcclCommunicator:
    """``NcclCommunicator(int ndev, bytes commId, int rank, config=None)``: made collectively by ``ndev``
    MPI processes, one per GPU, on the device current at construction."""

    def __init__(self, ndev, commId, rank, config=None) -> None:
        for name, value in (("ndev", ndev), ("rank", rank)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"an integer is required for {name!r}; got {type(value).__name__}")
        if not isinstance(commId, bytes):
            raise TypeError(f"Argument 'commId' has incorrect type (expected bytes, got "
                            f"{type(commId).__name__})")
        if len(commId) != 128:
            raise ValueError(f"commId must be the 128 bytes of get_unique_id(); got {len(commId)}")
        from mpi4py import MPI

        self._device = _current()
        bus = Device(self._device).pci_bus_id
        peers = MPI.COMM_WORLD.allgather((commId, int(ndev), int(rank), bus))
        if any(p[0] != commId or p[1] != ndev for p in peers) or len(peers) != ndev:
            raise NcclError("NCCL_ERROR_INVALID_USAGE: the ranks passed different ids or sizes")
        if sorted(p[2] for p in peers) != list(range(ndev)):
            raise NcclError(f"NCCL_ERROR_INVALID_ARGUMENT: ranks {[p[2] for p in peers]} are not 0…{ndev - 1}")
        buses = [p[3] for p in peers]  # NCCL tells GPUs apart by bus id: MIG slices of one GPU look alike
        if len(set(buses)) != len(buses) and os.environ.get("NCCL_MULTI_RANK_GPU_ENABLE") != "1":
            raise NcclError(f"NCCL_ERROR_INVALID_USAGE: Duplicate GPU detected (PCI bus ids {buses}); "
                            "Multiple Ranks are using the same GPU/Partition. Set NCCL_MULTI_RANK_GPU_ENABLE=1 "
                            "to enable this.")
        self._mpi = MPI.COMM_WORLD.Split(0, int(rank))
        self._rank, self._size = int(rank), int(ndev)

    def rank_id(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    def device_id(self) -> int:
        return self._device

    def destroy(self) -> None:
        self._mpi.Free()

    def _buffer(self, ptr: int, count: int, datatype: int) -> np.ndarray:
        if datatype not in _NCCL_TYPES:
            raise NcclError(f"NCCL_ERROR_INVALID_ARGUMENT: datatype {datatype}")
        itemsize = np.dtype(_NCCL_TYPES[datatype]).itemsize
        device = _device_of_pointer(ptr, count * itemsize)
        if device != self._device:
            raise NcclError(f"NCCL_ERROR_INVALID_ARGUMENT: a buffer on device {device} for a communicator "
                            f"of device {self._device}")
        raw = (ctypes.c_char * (count * itemsize)).from_address(ptr)
        return np.frombuffer(raw, dtype=_NCCL_TYPES[datatype], count=count)

    def _stream(self, handle: int) -> Stream:
        stream = get_current_stream() if handle == 0 else _streams.get(handle)
        if stream is None or stream.device_id != self._device:
            raise NcclError(f"NCCL_ERROR_INVALID_ARGUMENT: stream {handle:#x} is not a stream of device "
                            f"{self._device}")
        return stream

    def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int, stream: int) -> None:
        from mpi4py import MPI

        if op not in _NCCL_OPS:
            raise NcclError(f"NCCL_ERROR_INVALID_ARGUMENT: op {op}")
        send, recv = self._buffer(sendbuf, count, datatype), self._buffer(recvbuf, count, datatype)
        nccl_calls["allReduce"] += 1

        def work() -> None:
            self._mpi.Allreduce(MPI.IN_PLACE if sendbuf == recvbuf else send, recv, op=MPI.SUM)

        _submit(work, self._stream(stream))

    def broadcast(self, sendbuf: int, recvbuf: int, count: int, datatype: int, root: int,
                  stream: int) -> None:
        send, recv = self._buffer(sendbuf, count, datatype), self._buffer(recvbuf, count, datatype)
        nccl_calls["broadcast"] += 1

        def work() -> None:
            if self._rank == root and sendbuf != recvbuf:
                recv[...] = send
            self._mpi.Bcast(recv, root=root)

        _submit(work, self._stream(stream))


# ---- cuBLAS (cupy_backends.cuda.libs.cublas) -----------------------------------------------------------
class CUBLASError(RuntimeError):
    pass


#: cudaDataType (library_types.h), cublasComputeType_t and cublasMath_t (cublas_api.h) as CuPy names them
CUDA_R_32F, CUDA_R_64F = 0, 1
_DATA_TYPES = {CUDA_R_32F: np.float32, CUDA_R_64F: np.float64}
CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_COMPUTE_32F_FAST_TF32 = 68, 69, 77
CUBLAS_COMPUTE_64F, CUBLAS_COMPUTE_64F_PEDANTIC = 70, 71
#: the data type each emulated compute type multiplies (α and β are host scalars of it)
_COMPUTE_DATA = {CUBLAS_COMPUTE_32F: CUDA_R_32F, CUBLAS_COMPUTE_32F_PEDANTIC: CUDA_R_32F,
                 CUBLAS_COMPUTE_32F_FAST_TF32: CUDA_R_32F, CUBLAS_COMPUTE_64F: CUDA_R_64F,
                 CUBLAS_COMPUTE_64F_PEDANTIC: CUDA_R_64F}
CUBLAS_DEFAULT_MATH, CUBLAS_TENSOR_OP_MATH, TF32_TENSOR_OP_MATH = 0, 1, 3
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_GEMM_DEFAULT, CUBLAS_GEMM_DEFAULT_TENSOR_OP = -1, 99
#: each cuBLAS handle's math mode (a new handle's is CUBLAS_DEFAULT_MATH)
_math_modes: dict[int, int] = {}


def _cublas_device(handle: int) -> int:
    """The device whose context made ``handle`` (``Device.cublas_handle``); it must be the current one."""
    device = handle - 0x1000
    if device not in contexts:
        raise CUBLASError("CUBLAS_STATUS_NOT_INITIALIZED: not a cuBLAS handle of this process")
    if device != _current():
        raise CUBLASError(f"CUBLAS_STATUS_EXECUTION_FAILED: a handle of device {device} used while device "
                          f"{_current()} is current")
    return device


def _get_math_mode(handle: int) -> int:
    _cublas_device(handle)
    return _math_modes.get(handle, CUBLAS_DEFAULT_MATH)


def _set_math_mode(handle: int, mode: int) -> None:
    _cublas_device(handle)
    _math_modes[handle] = int(mode)


def _matrix(ptr: int, data_type: int, rows: int, cols: int, ld: int, device: int) -> np.ndarray:
    """The column-major (rows, cols) matrix at device address ``ptr`` with leading dimension ``ld``."""
    dtype = np.dtype(_DATA_TYPES[data_type])
    nbytes = ((cols - 1) * ld + rows) * dtype.itemsize
    try:
        where = _device_of_pointer(ptr, nbytes)
    except CUDARuntimeError:
        where = None
    if where != device:
        raise CUDARuntimeError(f"cudaErrorIllegalAddress: cuBLAS read {nbytes} bytes at {ptr:#x}, which is not "
                               f"memory of device {device}")
    raw = np.frombuffer((ctypes.c_char * nbytes).from_address(ptr), dtype=dtype)
    return np.lib.stride_tricks.as_strided(raw, (rows, cols), (dtype.itemsize, ld * dtype.itemsize))


def _host_scalar(ptr: int, data_type: int) -> float:
    dtype = np.dtype(_DATA_TYPES[data_type])
    return np.frombuffer((ctypes.c_char * dtype.itemsize).from_address(ptr), dtype=dtype)[0]


def _gemm_ex(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc,
             computeType, algo) -> None:
    """cublasGemmEx (CUDA 11's, with a cublasComputeType_t): C = α op(A) op(B) + β C, column-major, on the
    current stream; β = 0 leaves C unread."""
    device = _cublas_device(handle)
    if not Atype == Btype == Ctype == _COMPUTE_DATA.get(computeType, -1) or \
            algo not in (CUBLAS_GEMM_DEFAULT, CUBLAS_GEMM_DEFAULT_TENSOR_OP):
        raise CUBLASError(f"CUBLAS_STATUS_NOT_SUPPORTED: data types {Atype}, {Btype}, {Ctype}, compute type "
                          f"{computeType}, algo {algo} (emulated: one of CUDA_R_32F, CUDA_R_64F with its "
                          "compute types)")
    a_shape = (m, k) if transa == CUBLAS_OP_N else (k, m)
    b_shape = (k, n) if transb == CUBLAS_OP_N else (n, k)
    if transa not in (CUBLAS_OP_N, CUBLAS_OP_T) or transb not in (CUBLAS_OP_N, CUBLAS_OP_T) or \
            min(m, n, k) < 0 or lda < max(1, a_shape[0]) or ldb < max(1, b_shape[0]) or ldc < max(1, m):
        raise CUBLASError("CUBLAS_STATUS_INVALID_VALUE")
    if m == 0 or n == 0:
        return
    c = _matrix(C, Ctype, m, n, ldc, device)
    a = _matrix(A, Atype, *a_shape, lda, device) if k else np.zeros(a_shape, c.dtype)
    b = _matrix(B, Btype, *b_shape, ldb, device) if k else np.zeros(b_shape, c.dtype)
    a, b = (a if transa == CUBLAS_OP_N else a.T), (b if transb == CUBLAS_OP_N else b.T)
    alpha, beta = _host_scalar(alpha, Ctype), _host_scalar(beta, Ctype)  # read now, as cuBLAS does
    mode = _math_modes.get(handle, CUBLAS_DEFAULT_MATH) & 0xF
    tf32 = os.environ.get("NVIDIA_TF32_OVERRIDE", "").strip() != "0" and (
        computeType == CUBLAS_COMPUTE_32F_FAST_TF32
        or (computeType == CUBLAS_COMPUTE_32F and mode == TF32_TENSOR_OP_MATH))
    read = _tf32 if tf32 else np.asarray
    owners = [_owner_of(ptr) for ptr in (A, B, C)]

    def work(owners=owners) -> None:  # the operands stay allocated until this work has run
        product = np.matmul(read(a), read(b))  # float32 sums for float32 (BLAS sgemm), float64 for float64
        c[...] = alpha * product + beta * c if beta else (product if alpha == 1 else alpha * product)

    _submit(work)


_cublas = types.ModuleType("cupy_backends.cuda.libs.cublas")
_cublas.__dict__.update(
    CUBLASError=CUBLASError, gemmEx=_gemm_ex, getMathMode=_get_math_mode, setMathMode=_set_math_mode,
    CUBLAS_OP_N=CUBLAS_OP_N, CUBLAS_OP_T=CUBLAS_OP_T, CUBLAS_DEFAULT_MATH=CUBLAS_DEFAULT_MATH,
    CUBLAS_TENSOR_OP_MATH=CUBLAS_TENSOR_OP_MATH, CUBLAS_GEMM_DEFAULT=CUBLAS_GEMM_DEFAULT,
    CUBLAS_GEMM_DEFAULT_TENSOR_OP=CUBLAS_GEMM_DEFAULT_TENSOR_OP, CUBLAS_COMPUTE_32F=CUBLAS_COMPUTE_32F,
    CUBLAS_COMPUTE_32F_PEDANTIC=CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_COMPUTE_32F_FAST_TF32=CUBLAS_COMPUTE_32F_FAST_TF32,
    CUBLAS_COMPUTE_64F=CUBLAS_COMPUTE_64F, CUBLAS_COMPUTE_64F_PEDANTIC=CUBLAS_COMPUTE_64F_PEDANTIC)
runtime.CUDA_R_32F, runtime.CUDA_R_64F = CUDA_R_32F, CUDA_R_64F
_backends = {name: types.ModuleType(name) for name in ("cupy_backends", "cupy_backends.cuda",
                                                        "cupy_backends.cuda.libs")}
_backends["cupy_backends"].cuda = _backends["cupy_backends.cuda"]
_backends["cupy_backends.cuda"].libs = _backends["cupy_backends.cuda.libs"]
_backends["cupy_backends.cuda.libs"].cublas = _cublas
_backends["cupy_backends.cuda.libs.cublas"] = _cublas
_device_module = types.ModuleType("cupy.cuda.device")
_device_module.get_cublas_handle = lambda: Device(_current()).cublas_handle


# ---- cupyx.scipy.sparse: CSR matrices (and their transposes, CSC) on an emulated device --------------------
#: the dtypes CuPy's sparse matrices take (cuSPARSE's): anything else is refused, as CuPy refuses it
SPARSE_DTYPES = tuple(np.dtype(t) for t in (np.bool_, np.float32, np.float64, np.complex64, np.complex128))


class _CompressedMatrix:
    """What ``cupyx.scipy.sparse.csr_matrix`` and ``csc_matrix`` share: ``data``, ``indices`` and ``indptr``
    (int32, as CuPy's) as emulated arrays of the device that was current when the matrix was made. Made from a
    SciPy sparse matrix (uploaded) or from another emulated one (converted); products and row gathers run
    SciPy's on the host views."""

    format = ""
    ndim = 2

    def __init__(self, arg1, shape=None, dtype=None, copy=False) -> None:
        import scipy.sparse

        if isinstance(arg1, _CompressedMatrix):
            _device_op([arg1.data], f"cupyx.scipy.sparse.{self.format}_matrix")
            host = arg1._host()
        elif scipy.sparse.issparse(arg1):
            host = arg1
        else:
            raise TypeError(f"cupyx.scipy.sparse.{self.format}_matrix (emulated) takes a SciPy or CuPy sparse "
                            f"matrix; got {type(arg1).__name__}")
        host = host.asformat(self.format)
        dtype = np.dtype(host.dtype if dtype is None else dtype)
        if dtype not in SPARSE_DTYPES:
            raise ValueError("Only bool, float32, float64, complex64 and complex128 are supported")
        self._set(asarray(host.data, dtype), asarray(host.indices, np.int32), asarray(host.indptr, np.int32),
                  host.shape)

    def _set(self, data, indices, indptr, shape) -> "_CompressedMatrix":
        self.data, self.indices, self.indptr, self.shape = data, indices, indptr, tuple(shape)
        return self

    @classmethod
    def _of(cls, data, indices, indptr, shape) -> "_CompressedMatrix":
        """A matrix of these device arrays as they are (no copy)."""
        return cls.__new__(cls)._set(data, indices, indptr, shape)

    def _host(self):
        """The SciPy matrix over this one's arrays (host views: no copy)."""
        import scipy.sparse

        make = scipy.sparse.csr_matrix if self.format == "csr" else scipy.sparse.csc_matrix
        _issue_now()  # the work queued before this read comes first
        return make((_plain(self.data), _plain(self.indices), _plain(self.indptr)), shape=self.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def get(self, stream=None):
        """A SciPy copy on the host."""
        _refuse_in_capture("copying to the host")
        return self._host().copy()

    def astype(self, t):
        _device_op([self.data], "cupyx.scipy.sparse astype")
        return type(self)._of(self.data.astype(t), self.indices.copy(), self.indptr.copy(), self.shape)

    def tocsr(self, copy=False):
        return csr_matrix(self)

    def tocsc(self, copy=False):
        return csc_matrix(self)

    def __matmul__(self, other):
        """The product with a dense device array (cuSPARSE's SpMM), a new dense array."""
        if not isinstance(other, ndarray):
            raise TypeError(f"cupyx.scipy.sparse @ (emulated) takes a CuPy array; got {type(other).__name__}")
        _device_op([self.data, other], "cupyx.scipy.sparse matmul")
        return _wrap(np.asarray(self._host() @ _plain(other)))

    def __len__(self) -> int:
        raise TypeError("sparse matrix length is ambiguous; use getnnz() or shape[0]")


class csr_matrix(_CompressedMatrix):
    format = "csr"

    @property
    def T(self) -> "csc_matrix":
        """The transpose: the CSC matrix over the same arrays."""
        return csc_matrix._of(self.data, self.indices, self.indptr, self.shape[::-1])

    def __getitem__(self, key):
        """Rows: a slice, or an integer device array (a gather of those rows, in that order)."""
        if isinstance(key, slice):
            rows = self._host()[key]
        else:
            _refuse_host([key], "cupyx.scipy.sparse.csr_matrix.__getitem__")
            if not isinstance(key, ndarray) or key.ndim != 1 or key.dtype.kind not in "iu":
                raise IndexError(f"csr_matrix (emulated) indexes rows by a slice or a 1-D integer array; got {key!r}")
            _device_op([self.data, key], "cupyx.scipy.sparse.csr_matrix.__getitem__")
            rows = self._host()[_plain(key)]
        return csr_matrix(rows)


class csc_matrix(_CompressedMatrix):
    format = "csc"

    @property
    def T(self) -> csr_matrix:
        return csr_matrix._of(self.data, self.indices, self.indptr, self.shape[::-1])


def _issparse(x) -> bool:
    return isinstance(x, _CompressedMatrix)


csr_matrix.__module__ = "cupyx.scipy.sparse._csr"
csc_matrix.__module__ = "cupyx.scipy.sparse._csc"
sparse = types.ModuleType("cupyx.scipy.sparse")
sparse.__dict__.update(csr_matrix=csr_matrix, csc_matrix=csc_matrix, issparse=_issparse)
cupyx_scipy = types.ModuleType("cupyx.scipy")
cupyx_scipy.sparse = sparse
cupyx = types.ModuleType("cupyx")
cupyx.scipy = cupyx_scipy


nccl = types.ModuleType("cupy.cuda.nccl")
nccl.__dict__.update(available=True, NcclError=NcclError, NcclCommunicator=NcclCommunicator,
                     get_unique_id=_get_unique_id, get_version=lambda: 22707, NCCL_SUM=0,
                     NCCL_FLOAT32=7, NCCL_FLOAT=7, NCCL_FLOAT64=8, NCCL_DOUBLE=8)

graph = types.ModuleType("cupy.cuda.graph")
graph.Graph = Graph

cuda = types.ModuleType("cupy.cuda")
cuda.__dict__.update(Device=Device, device=_device_module, runtime=runtime, Stream=Stream, Event=Event, graph=graph,
                     get_current_stream=get_current_stream, nccl=nccl, CUDARuntimeError=CUDARuntimeError,
                     compiler=types.SimpleNamespace(CompileException=CompileException))


def modules() -> dict[str, types.ModuleType]:
    """What to put in ``sys.modules`` for ``import cupy``, ``from cupy.cuda import nccl`` and
    ``import cupyx.scipy.sparse`` to find this."""
    return {"cupy": sys.modules[__name__], "cupy.cuda": cuda, "cupy.cuda.nccl": nccl, "cupy.cuda.graph": graph,
            "cupy.cuda.device": _device_module, **_backends,
            "cupyx": cupyx, "cupyx.scipy": cupyx_scipy, "cupyx.scipy.sparse": sparse}


def install(monkeypatch, build_dir: Path) -> types.ModuleType:
    """This module as ``cupy`` for the rest of a test (pytest's monkeypatch undoes it)."""
    global BUILD_DIR
    BUILD_DIR = build_dir
    for name, module in modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    return sys.modules[__name__]


def install_from_environment() -> None:
    """In a subprocess: be ``cupy`` when env GPUBP_EMULATED_CUPY_BUILD names a build folder."""
    global MISSING, PCI_BUS_IDS, PEER_ACCESS
    if os.environ.get(ENV_BUILD):
        MISSING = os.environ.get(ENV_MISSING) or None
        PEER_ACCESS = os.environ.get(ENV_PEER_ACCESS) == "1"
        if os.environ.get(ENV_BUS_IDS):
            PCI_BUS_IDS = os.environ[ENV_BUS_IDS].split(",")
        sys.modules.update(modules())
