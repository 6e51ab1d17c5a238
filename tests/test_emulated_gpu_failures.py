"""What a real GPU machine gets wrong first, on the emulated GPUs (tests/cpp/emulated_cupy.py), and what gpubp
says about it:

* an MPI rank under "auto" probes only its own GPU (a context on GPU 0 from every rank would fail where
  GPU 0 is in exclusive-process mode and held by another rank);
* a driver older than CuPy's CUDA names the CUDA it supports and the build to install;
* out of memory (at module load or at the first allocation), a driver too old for NVRTC's code and a busy
  GPU are named as such, not as a missing toolkit; anything that is not a CUDA error propagates;
* ``import cupy`` failing on an unwritable kernel cache folder falls back to the CPU, naming CUPY_CACHE_DIR;
* a GPU that failed its probe is probed again after ``PROBE_RETRY_SECONDS``; one that passed stays usable.
"""

from __future__ import annotations

import sys

import pytest

import gpubp
from gpubp import cli, distributed
from gpubp.backend import DeviceError, cuda_unavailable_reason, device, get_ops, kernels

pytestmark = pytest.mark.usefixtures("emulation_build")

OUT_OF_MEMORY = "CUDA_ERROR_OUT_OF_MEMORY: out of memory"
NO_BINARY = "CUDA_ERROR_NO_BINARY_FOR_GPU: no kernel image is available for execution on the device"
PTX = "CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled with an unsupported toolchain."


@pytest.fixture
def launched_rank(monkeypatch):
    """This process as local rank 1 of an Open MPI launch, GPUBP_DEVICE unset."""
    for name in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(device.DEVICE_ENV, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")


def test_a_rank_under_auto_probes_only_its_own_gpu(gpus, launched_rank):
    gpus.HELD_ELSEWHERE.add(0)  # exclusive-process mode, rank 0 holds it
    assert distributed._device_for("auto", None, 1, 2) == "cuda:1"
    assert gpus.contexts == {1}


def test_a_default_device_network_of_a_launched_rank_is_on_the_ranks_gpu(gpus, launched_rank, rng):
    gpus.HELD_ELSEWHERE.add(0)
    net = gpubp.Network([3, 2], seed=1)
    assert net.device == "cuda:1" and gpus.contexts == {1}
    X, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    net.fit(X, y, epochs=1, batch_size=4, lr=0.1, progress=False,
            distributed=distributed.Communicator(0, 1, "cuda:1", None))
    assert gpus.contexts == {1}


def test_a_driver_older_than_cupys_cuda_names_the_cuda_it_supports(gpus, capsys):
    gpus.DRIVER_VERSION = 12040
    reason = cuda_unavailable_reason()
    assert "the NVIDIA driver supports CUDA 12.4, older than the CUDA 13 the installed CuPy" in reason, reason
    assert "pip install 'gpubp[cuda12]'" in reason and "gpubp[cuda13]" not in reason, reason
    assert get_ops("auto").device == "cpu"
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "GPUs:      none (the NVIDIA driver supports CUDA 12.4" in out and "auto:      cpu" in out, out


def test_no_driver_at_all_is_not_taken_for_an_old_one(gpus):
    """Without libcuda, CUDA raises cudaErrorInsufficientDriver and cudaDriverGetVersion answers 0."""
    gpus.DRIVER_VERSION = 0
    reason = cuda_unavailable_reason()
    assert reason.startswith("CuPy cannot reach a CUDA driver: no NVIDIA driver is installed"), reason


@pytest.mark.parametrize("error, cause", [(OUT_OF_MEMORY, "cuda:0 is out of memory"),
                                          (NO_BINARY, "cuda:0 cannot run the code NVRTC compiled for it"),
                                          (PTX, "cuda:0 has a driver older than the NVRTC")])
def test_driver_and_memory_errors_are_named_not_taken_for_a_missing_toolkit(gpus, capsys, error, cause):
    gpus.LOAD_ERROR = error
    reason = cuda_unavailable_reason()
    assert reason.startswith(cause) and error in reason and "headers" not in reason, reason
    with pytest.raises(DeviceError, match="cannot load gpubp kernel file optim.cu: " + cause) as raised:
        kernels.get_function(0, "gpubp_sgd_update_f32")
    assert "headers" not in str(raised.value)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"auto:      cpu (the GPU is not usable: {cause}" in out, out


def test_a_gpu_busy_in_exclusive_mode_is_named_as_such_and_the_other_gpu_stays_usable(gpus):
    gpus.HELD_ELSEWHERE.add(0)
    reason = cuda_unavailable_reason(0)
    assert reason.startswith("cuda:0 is busy or unavailable") and "cudaErrorDevicesUnavailable" in reason
    assert cuda_unavailable_reason(1) is None
    with pytest.raises(DeviceError, match="device 'cuda:0' is not usable: cuda:0 is busy"):
        gpubp.Network([3, 2], device="cuda:0")


class OutOfMemoryError(MemoryError):
    """What CuPy's memory pool raises (cupy.cuda.memory.OutOfMemoryError, a MemoryError)."""


def test_a_full_gpu_at_the_first_allocation_is_out_of_memory_not_a_missing_toolkit(gpus, monkeypatch):
    def full(*args, **kwargs):
        raise OutOfMemoryError("Out of memory allocating 512 bytes (allocated so far: 0 bytes).")

    monkeypatch.setattr(gpus, "zeros", full, raising=False)
    reason = cuda_unavailable_reason(0)
    assert reason.startswith("cuda:0 is out of memory (OutOfMemoryError: Out of memory allocating"), reason
    assert get_ops("auto").device == "cpu"


def test_an_exception_that_is_not_a_cuda_error_is_not_a_reason_to_fall_back(gpus, monkeypatch):
    def broken(self, name):
        raise TypeError("a bug, not a missing GPU")

    monkeypatch.setattr(gpus.RawModule, "get_function", broken)
    with pytest.raises(TypeError, match="a bug"):
        cuda_unavailable_reason()


class _UnwritableCache:
    """``import cupy`` as CuPy 14 fails when it cannot create its kernel cache folder."""

    def find_spec(self, name, path=None, target=None):
        if name == "cupy":
            raise FileNotFoundError(2, "No such file or directory", "/nonexistent/.cupy/kernel_cache")
        return None


def test_import_cupy_failing_on_its_cache_folder_falls_back_naming_cupy_cache_dir(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_UnwritableCache(), *sys.meta_path])
    monkeypatch.delenv(device.DEVICE_ENV, raising=False)
    reason = cuda_unavailable_reason()
    assert "FileNotFoundError" in reason and "set CUPY_CACHE_DIR to a writable folder" in reason, reason
    assert gpubp.Network([3, 2]).device == "cpu"
    assert cli.main(["info"]) == 0
    assert "set CUPY_CACHE_DIR" in capsys.readouterr().out


def test_a_failed_probe_is_retried_after_the_interval_and_a_passed_one_is_kept(gpus, monkeypatch):
    monkeypatch.setattr(device, "PROBE_RETRY_SECONDS", 3600.0, raising=False)
    gpus.LOAD_ERROR = OUT_OF_MEMORY  # a full GPU
    assert "out of memory" in cuda_unavailable_reason(0)
    gpus.LOAD_ERROR = None
    assert "out of memory" in cuda_unavailable_reason(0)  # within the interval: not probed again
    monkeypatch.setattr(device, "PROBE_RETRY_SECONDS", 0.0, raising=False)
    assert cuda_unavailable_reason(0) is None
    assert get_ops("auto").device == "cuda:0"
    gpus.LOAD_ERROR = OUT_OF_MEMORY
    assert cuda_unavailable_reason(0) is None  # passed once: kept
