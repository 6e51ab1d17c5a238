"""The CUDA path on two emulated GPUs (tests/cpp/emulated_cupy.py), as strict as CuPy about devices:

* every device operation of gpubp runs on the network's GPU, whichever GPU is current for the caller, and
  takes the caller's CuPy arrays from another GPU;
* "usable GPU" means usable: without the CUDA headers (or cuBLAS) "auto" picks the CPU and says why, and
  "cuda" raises DeviceError naming the missing piece and the install command;
* ``fit(distributed=comm)`` trains on ``comm.device``, moving a network from another GPU there;
* a rank takes ``cuda:(local_rank % visible GPUs)``; two ranks of a node never share a GPU, but may use two
  MIG slices of one (same PCI bus id, another UUID);
* the compare-and-swap atomicAdd(double*) of pre-Pascal GPUs sums correctly.
"""

from __future__ import annotations

import os
import threading
from uuid import UUID

import numpy as np
import pytest
from emulated_gpu import emulated_gpus

import gpubp
from gpubp import cli, distributed
from gpubp.backend import DeviceError, cuda_unavailable_reason, get_ops, kernels

pytestmark = pytest.mark.usefixtures("emulation_build")


def test_the_emulation_refuses_operations_on_another_devices_arrays(gpus):
    with gpus.cuda.Device(1):
        a = gpus.arange(6.0)
    assert a.device.id == 1 and gpus.cuda.runtime.getDevice() == 0
    for operation in (lambda: a + 1, lambda: a.sum(), lambda: a.argmax(), lambda: a > 0.5,
                      lambda: gpus.isfinite(a), lambda: a.fill(0), lambda: a.__setitem__(0, 1.0)):
        with pytest.raises(ValueError, match="Peer access is unavailable"):
            operation()
    copied = gpus.asarray(a)  # copies between devices are allowed, as in CuPy
    assert copied.device.id == 0 and a.copy().device.id == 0
    np.testing.assert_array_equal(a.get(), np.arange(6.0))
    with gpus.cuda.Device(1):
        function = gpus.RawModule(code=kernels.module_source("optim.cu")).get_function("gpubp_sgd_update_f64")
    x = gpus.zeros(4)
    with pytest.raises(gpus.CUDADriverError, match="INVALID_HANDLE"):
        function((1,), (32,), (x, x, np.uint64(4), np.uint64(0), np.float64(1), np.float64(1)))


def test_a_network_on_the_second_gpu_works_while_the_first_is_current(gpus, rng, tmp_path):
    """Before every device operation ran in the backend's device context, predict (argmax, > 0.5), weight
    assignment, the input checks of a CuPy array from cuda:0 and restoring optimizer state raised here."""
    X, y = rng.standard_normal((30, 5)), rng.integers(0, 3, 30)
    W = rng.standard_normal((7, 5))
    nets = [gpubp.Network([5, 7, 3], activation="tanh", output="softmax", cost="log_likelihood",
                          device=device, dtype="float64", seed=2) for device in ("cpu", "cuda:1")]
    binary = [gpubp.Network([5, 4, 1], device=device, dtype="float64", seed=3) for device in ("cpu", "cuda:1")]
    results = []
    with gpus.cuda.Device(0):
        X_gpu0, y_gpu0 = gpus.asarray(X), gpus.asarray(y)
        for net, single in zip(nets, binary):
            net.weights[0] = W
            history = net.fit(X, y, epochs=2, batch_size=8, lr=0.1, shuffle=False, progress=False,
                              optimizer="momentum", validation_data=(X_gpu0 if net.device != "cpu" else X, y))
            net.save(tmp_path / "net.npz")
            net = gpubp.load(tmp_path / "net.npz", device=net.device)  # with the momentum buffer
            history["loss"] += net.fit(X, y, epochs=1, batch_size=8, lr=0.1, shuffle=False, progress=False,
                                       optimizer="momentum")["loss"]
            data = (X_gpu0, y_gpu0) if net.device != "cpu" else (X, y)
            results.append((history["loss"], net.predict(data[0]), net.evaluate(*data)["loss"],
                            net.loss(*data), gpubp.to_numpy(net.backprop(*data)[0][0]),
                            single.predict(data[0]), gpubp.to_numpy(net.parameters())))
        assert gpus.cuda.runtime.getDevice() == 0
    assert nets[1].parameters().device.id == 1
    for cpu, emulated in zip(*results):
        np.testing.assert_allclose(emulated, cpu, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("missing, piece", [("headers", "Failed to find CUDA headers"),
                                            ("cublas", "cuBLAS cannot be loaded")])
def test_without_cuda_headers_or_cublas_auto_picks_the_cpu_and_says_why(emulation_build, missing, piece,
                                                                        capsys):
    with emulated_gpus(emulation_build, missing=missing):
        reason = cuda_unavailable_reason()
        assert piece in reason and "pip install 'gpubp[cuda13]'" in reason
        assert get_ops("auto").device == "cpu"
        assert gpubp.Network([3, 2], device="auto").device == "cpu"
        with pytest.raises(DeviceError, match=rf"device 'cuda' is not usable: .*{piece}.*gpubp\[cuda13\]"):
            gpubp.Network([3, 2], device="cuda")
        assert cli.main(["info"]) == 0
        out = capsys.readouterr().out
        assert "auto:      cpu" in out and piece in out, out


def test_info_selftest_and_the_benchmark_see_every_gpu(gpus, capsys):
    """gpubp info, selftest's backends and the benchmark's machine info ask the backend which GPUs exist."""
    from gpubp.benchmark import machine_info
    from gpubp.selftest import usable_backends

    names = ["cuda:0 Emulated GPU 0", "cuda:1 Emulated GPU 1"]
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"GPUs:      {names[0]}; {names[1]}\n" in out and "auto:      cuda:0\n" in out, out
    assert "kernels:   all " in out and " compile on cuda:0 (sources in " in out, out
    usable, missing = usable_backends()
    assert [name for name in usable if name.startswith("cuda")] == ["cuda:0", "cuda:1"] and "cuda" not in missing
    assert usable["cuda:1"]().device == "cuda:1"
    info = machine_info()
    assert info["gpus"] == names and info["gpu"] == "Emulated GPU 0" and info["cupy"] == "14.2.0 (emulated)"


def test_a_kernel_without_cuda_headers_is_a_device_error_with_the_install_command(emulation_build):
    """CuPy raises RuntimeError, not CompileException, when the headers are missing."""
    with emulated_gpus(emulation_build, missing="headers"):
        with pytest.raises(DeviceError, match=r"optim\.cu on cuda:0: NVRTC or the CUDA headers are missing "
                                              r"\(RuntimeError: Failed to find CUDA headers.*gpubp\[cuda13\]"):
            kernels.get_function(0, "gpubp_sgd_update_f32")


def test_fit_distributed_trains_on_the_communicators_gpu(gpus, rng):
    X, y = rng.standard_normal((24, 4)), rng.integers(0, 3, 24)
    fit = dict(epochs=2, batch_size=6, lr=0.1, optimizer="momentum", shuffle=False, progress=False)
    reference = gpubp.Network([4, 6, 3], output="softmax", cost="log_likelihood", device="cpu",
                              dtype="float64", seed=1)
    reference.fit(X, y, **fit)
    net = gpubp.Network([4, 6, 3], output="softmax", cost="log_likelihood", device="cuda:0", dtype="float64",
                        seed=1)
    comm = distributed.Communicator(0, 1, "cuda:1", None)  # one process: the collectives do nothing
    net.fit(X, y, **fit, distributed=comm)
    assert net.device == "cuda:1" and net.parameters().device.id == 1
    np.testing.assert_allclose(gpubp.to_numpy(net.parameters()), reference.parameters(), rtol=1e-10)
    cpu_net = gpubp.Network([4, 6, 3], device="cpu", seed=1)
    with pytest.raises(ValueError, match="network is on 'cpu' but the communicator of this rank is for "
                                         "'cuda:1'"):
        cpu_net.fit(X, y, **fit, distributed=comm)
    with pytest.raises(ValueError, match="network is on 'cuda:1' but the communicator of this rank is for "
                                         "'cpu'"):
        net.fit(X, y, **fit, distributed=distributed.Communicator(0, 1, "cpu", None))


@pytest.mark.parametrize("visible, local_rank, local_size, expected", [
    (None, 0, 2, "cuda:0"), (None, 1, 2, "cuda:1"), (None, 3, 4, "cuda:1"),
    ("1", 1, 2, "cuda:0"),  # one GPU per rank (SLURM --gpus-per-task=1): local rank 1 sees only cuda:0
])
def test_a_rank_takes_local_rank_modulo_the_visible_gpus(gpus, monkeypatch, visible, local_rank, local_size,
                                                         expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert distributed._device_for("cuda", None, local_rank, local_size) == expected


def test_compare_and_swap_atomic_add_sums_like_the_native_one(gpus, rng):
    """The sm_5x fallback of common.cuh (forced by -DGPUBP_CAS_ATOMIC_ADD): many blocks add their partial
    loss sums into one double."""
    a = gpus.asarray(rng.random((997, 5)))
    y = gpus.asarray(rng.random((997, 5)))
    sums = []
    for options in ((), ("-DGPUBP_CAS_ATOMIC_ADD",)):
        module = gpus.RawModule(code=kernels.module_source("output.cu"), options=kernels.NVRTC_OPTIONS + options)
        total = gpus.zeros((1,))
        module.get_function("gpubp_output_delta_f64_f64")(
            (8,), (64,), (np.int32(kernels.ACTIVATION_IDS["identity"]), np.int32(kernels.COST_IDS["quadratic"]),
                          np.int32(0), np.uint64(0), a, y, np.uint64(0), np.uint64(0), total, np.float64(1e-12),
                          np.uint64(997), np.uint64(5)))
        sums.append(float(total.get()[0]))
    expected = 0.5 * ((a.get() - y.get()) ** 2).sum()
    assert sums[0] == pytest.approx(expected, rel=1e-12) and sums[1] == pytest.approx(expected, rel=1e-12)


# ---- the NCCL unique id, from rank 0 to every rank, for both CuPy APIs -----------------------------------
class _Wire:
    """An MPI stand-in for two ranks run one after the other: rank 0's broadcast is what rank 1 receives."""

    def __init__(self, rank: int, sent: dict) -> None:
        self.rank, self.sent = rank, sent

    def Ibcast(self, buf, root):
        if self.rank == root:
            self.sent["data"] = buf.copy()
        else:
            buf[...] = self.sent["data"]
        return type("Done", (), {"Test": lambda self: True})()


def _nccl_module(unique_id, id_type: type, char_range: tuple[int, int] | None):
    """A cupy.cuda.nccl whose get_unique_id gives ``unique_id`` and whose NcclCommunicator takes only
    ``id_type`` (CuPy ≥ 14: bytes; before: a tuple of 128 C chars in ``char_range``)."""
    made = []

    class NcclCommunicator:
        def __init__(self, ndev, commId, rank, config=None):
            if type(commId) is not id_type or len(commId) != 128:
                raise TypeError(f"Argument 'commId' has incorrect type (expected {id_type.__name__}, got "
                                f"{type(commId).__name__})")
            if char_range and not all(char_range[0] <= v <= char_range[1] for v in commId):
                raise OverflowError("value too large to convert to char")
            made.append((ndev, commId, rank))

    return type("nccl", (), dict(available=True, get_unique_id=staticmethod(lambda: unique_id),
                                 NcclCommunicator=NcclCommunicator, made=made))


@pytest.mark.parametrize("api", ["cupy14-bytes", "tuple-signed-char", "tuple-unsigned-char"])
def test_the_nccl_unique_id_reaches_every_rank_in_the_form_cupy_takes(gpus, monkeypatch, api):
    """CuPy ≥ 14: get_unique_id() -> bytes, NcclCommunicator(int, bytes, int); before: tuples of chars."""
    raw = bytes(range(0, 256, 2))  # 128 bytes, half of them above 127
    unique_id, id_type, chars = {
        "cupy14-bytes": (raw, bytes, None),
        "tuple-signed-char": (tuple(np.frombuffer(raw, np.int8).tolist()), tuple, (-128, 127)),
        "tuple-unsigned-char": (tuple(raw), tuple, (0, 255)),
    }[api]
    nccl = _nccl_module(unique_id, id_type, chars)
    monkeypatch.setattr(gpus.cuda, "nccl", nccl)
    sent: dict = {}
    for rank in (0, 1):
        comm = distributed.Communicator(rank, 2, "cuda:0", None, mpi_comm=_Wire(rank, sent))
        distributed._nccl_communicator(comm, 0)
    assert nccl.made == [(2, unique_id, 0), (2, unique_id, 1)]


def test_selftest_checks_the_second_gpu_while_the_first_is_current(gpus):
    from gpubp import selftest

    row = selftest.check_backend("cuda:1", lambda: get_ops("cuda:1"), "float32")
    failed = {check: result.note for check, result in row.results.items() if not result.ok}
    assert not failed and len(row.results) > 5, failed


def _node_check(gpus, devices: list[str]) -> list:
    """``distributed._shared_gpu_error`` on one thread per local rank, ``devices[r]`` being rank r's: the
    outcome of init's shared-GPU check on each rank of one node."""
    barrier, rows, outcomes = threading.Barrier(len(devices)), [None] * len(devices), [None] * len(devices)

    class Node:  # the node communicator of one rank: an allgather across the threads
        size = len(devices)

        def __init__(self, rank):
            self.rank = rank

        def _allgather(self, row, what):
            rows[self.rank] = row
            barrier.wait()
            return np.stack(rows)

    def rank(r):
        outcomes[r] = distributed._shared_gpu_error(Node(r), devices[r])

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(devices))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_two_mig_slices_of_one_gpu_are_two_gpus_and_one_gpu_twice_is_refused(gpus, monkeypatch):
    """MIG slices share their GPU's PCI bus id but have a UUID each: ranks on two slices may train (NCCL,
    which tells GPUs apart by bus id, is told to allow it); two ranks on one UUID are refused."""
    monkeypatch.delenv("NCCL_MULTI_RANK_GPU_ENABLE", raising=False)
    assert _node_check(gpus, ["cuda:0", "cuda:1"]) == [None, None]
    assert "NCCL_MULTI_RANK_GPU_ENABLE" not in os.environ  # two whole GPUs need nothing
    monkeypatch.setattr(gpus, "PCI_BUS_IDS", ["0000:41:00.0", "0000:41:00.0"])
    assert _node_check(gpus, ["cuda:0", "cuda:1"]) == [None, None]
    assert os.environ["NCCL_MULTI_RANK_GPU_ENABLE"] == "1"
    for outcome in _node_check(gpus, ["cuda:0", "cuda:0"]):
        assert isinstance(outcome, DeviceError)
        assert f"local ranks 0, 1 of this node would share the GPU GPU-{UUID(bytes=gpus.UUIDS[0])}" in str(outcome)
