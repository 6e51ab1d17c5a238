"""Just enough of CuPy, on the CPU, to run ``CupyOps`` and gpubp's CUDA kernels without a GPU.

Arrays are NumPy arrays of a subclass (``ndarray``) in host memory, "device 0". ``RawModule(code=...)``
compiles the kernel source it is given (gpubp.backend.kernels.module_source, as NVRTC would get it) with
g++ and tests/cpp/cuda_emulator.h into a shared library; calling a function runs the grid on CPU threads.
Each call checks its arguments against the kernel's C signature (read from the preprocessed source) the
way the CUDA driver would need them: pointers get arrays of the pointee type (or a null), ``int`` an
``np.int32``, ``size_t`` an ``np.uint64``, ``float``/``double`` an ``np.float32``/``np.float64``, so a
wrong argument order, width or dtype fails here instead of silently reading garbage on a GPU.

A test sets ``BUILD_DIR`` (where the kernel libraries go) and puts this module in ``sys.modules["cupy"]``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import threading
import types
from pathlib import Path

import numpy as np

EMULATOR = Path(__file__).parent / "cuda_emulator.h"
SM_COUNT = 1
#: where the emulated kernel libraries are built (set by the test)
BUILD_DIR: Path | None = None
_current_device = 0


class ndarray(np.ndarray):
    """A host array standing in for a device array (always on device 0)."""

    @property
    def device(self):
        return types.SimpleNamespace(id=0)

    def get(self) -> np.ndarray:
        return np.array(self, copy=True).view(np.ndarray)

    def set(self, value) -> None:
        self[...] = value


def _wrap(x):
    return x.view(ndarray) if isinstance(x, np.ndarray) and not isinstance(x, ndarray) else x


def asarray(x, dtype=None):
    return _wrap(np.asarray(x, dtype=dtype))


def asnumpy(x):
    return np.asarray(x).view(np.ndarray)


def ascontiguousarray(x):
    return _wrap(np.ascontiguousarray(x))


def get_array_module(*args):
    return np


def _refuse_host_arrays(name: str, args, kwargs) -> None:
    """CuPy's functions refuse NumPy arrays (host memory); so does the emulation."""
    for x in (*args, *kwargs.values()):
        if isinstance(x, np.ndarray) and not isinstance(x, ndarray):
            raise TypeError(f"cupy.{name}: Unsupported type <class 'numpy.ndarray'> (a host array where "
                            "CuPy needs a device array)")


def take(a, indices, axis=None, out=None):
    """cupy.take: no ``mode`` argument (out-of-range indices wrap)."""
    _refuse_host_arrays("take", (a, indices), {} if out is None else {"out": out})
    return _wrap(np.take(a, indices, axis=axis, out=out, mode="wrap"))


def __getattr__(name):
    """Everything else: NumPy's function, refusing host arrays as CuPy does, returning emulated arrays."""
    attr = getattr(np, name)
    if not callable(attr) or isinstance(attr, type):
        return attr

    def call(*args, **kwargs):
        _refuse_host_arrays(name, args, kwargs)
        return _wrap(attr(*args, **kwargs))

    return call


# ---- cupy.cuda ------------------------------------------------------------------------------------
class Device:
    def __init__(self, index: int = 0) -> None:
        if index != 0:
            raise ValueError(f"the emulator has one device (0), not {index}")
        self.id = index

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def synchronize(self) -> None:
        pass


class CompileException(Exception):
    pass


runtime = types.SimpleNamespace(cudaDevAttrMultiProcessorCount=16, getDevice=lambda: _current_device,
                                getDeviceCount=lambda: 1,
                                deviceGetAttribute=lambda attr, dev: SM_COUNT)
cuda = types.SimpleNamespace(Device=Device, runtime=runtime,
                             compiler=types.SimpleNamespace(CompileException=CompileException))


class RandomState:
    def __init__(self, seed: int) -> None:
        self._rng = np.random.RandomState(seed % 2 ** 32)

    def permutation(self, n: int):
        return _wrap(self._rng.permutation(n))


random = types.SimpleNamespace(RandomState=RandomState)


# ---- RawModule ----------------------------------------------------------------------------------
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


def _build(code: str) -> tuple:
    key = hashlib.sha256(code.encode()).hexdigest()[:16]
    with _lock:
        if key in _compiled:
            return _compiled[key]
        folder = BUILD_DIR / key
        folder.mkdir(parents=True, exist_ok=True)
        source, lib = folder / "kernels.cpp", folder / "kernels.so"
        source.write_text(code)
        flags = ["-std=c++17", "-D__CUDACC__", "-include", str(EMULATOR), "-x", "c++"]
        pre = subprocess.run([_compiler(), *flags, "-E", str(source)], capture_output=True, text=True)
        built = subprocess.run([_compiler(), *flags, "-O1", "-shared", "-fPIC", "-pthread", str(source),
                                "-o", str(lib)], capture_output=True, text=True)
        if pre.returncode or built.returncode:
            raise CompileException(f"emulated compile failed:\n{pre.stderr}\n{built.stderr}")
        _compiled[key] = (ctypes.CDLL(str(lib)), _signatures(pre.stdout))
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
    def __init__(self, code: str, options: tuple = ()) -> None:
        self.code, self.options = code, options

    def get_function(self, name: str) -> "Function":
        lib, signatures = _build(self.code)
        if name not in signatures:
            raise KeyError(f"no kernel {name} in the module")
        return Function(lib, name, signatures[name])


class Function:
    def __init__(self, lib, name: str, signature: list[tuple[str, str]]) -> None:
        self.lib, self.name, self.signature = lib, name, signature
        self.fn = getattr(lib, name)
        self.launches = 0

    def _convert(self, args: tuple) -> list:
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments, got {len(args)}")
        converted = []
        for (ctype, pname), arg in zip(self.signature, args):
            if ctype.endswith("*"):
                pointee = ctype.replace("const", "").rstrip("*").strip()
                if isinstance(arg, np.uint64) and arg == 0:
                    converted.append(ctypes.c_void_p(None))
                    continue
                if not isinstance(arg, ndarray):
                    raise TypeError(f"{self.name}: {pname} ({ctype}) needs a device array, got {type(arg)}")
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
        return converted

    def __call__(self, grid: tuple, block: tuple, args: tuple) -> None:
        cargs = self._convert(args)
        blocks, threads = int(grid[0]), int(block[0])
        if blocks < 1 or threads < 1 or threads % 32 or threads > 1024:
            raise ValueError(f"bad launch configuration grid={grid} block={block}")
        self.launches += 1
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
