"""The emulated CuPy as strict as CuPy 14 and CUDA where gpubp could go wrong (issue 23), and what gpubp does
there:

* a NumPy array of any shape, 0-d included, is refused as an operand (TypeError) and in an assignment
  (ValueError), as CuPy refuses it; NumPy and Python scalars are taken;
* CUDA_VISIBLE_DEVICES empty (or naming no GPU) makes CUDA raise cudaErrorNoDevice: gpubp names the variable,
  "auto" falls back to the CPU;
* a kernel fault is raised at the next synchronising call and then by every call on that GPU: fit and
  selftest name it, the probe no longer calls the GPU usable, and no file is lost or damaged;
* with peer access (NVLink) an operation on another GPU's array runs silently on the current GPU; every op
  of gpubp runs on the network's GPU, with peer access and without;
* work on two streams is ordered only by events: a missing ``wait_event`` gives wrong results.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from emulated_gpu import plant_in_kernel

import gpubp
from gpubp import cli
from gpubp.backend import DeviceError, cuda_unavailable_reason, device, get_ops, kernels
from gpubp.selftest import run_selftest
from gpubp.sklearn import MLPClassifier

pytestmark = pytest.mark.usefixtures("emulation_build")

#: the softmax output layer's forward kernel, made to fault as an out-of-bounds access would
FAULTY_SOFTMAX = ("forward.cu", "gpubp::bias_softmax_rows<T>(z, b, a, rows, cols);", "emu_illegal_address();")


# ---- NumPy arrays as operands ----------------------------------------------------------------------------
def test_numpy_arrays_of_any_shape_are_refused_as_operands_and_in_assignments(gpus):
    a = gpus.arange(3.0)
    for host in (np.array(2.0), np.ones(3)):
        with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
            a + host
        with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
            gpus.multiply(a, host, out=a)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        a[...] = np.ones(3)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        a.fill(np.ones(3))
    a[1] = np.array(5.0)  # a 0-d array is filled with its value, as CuPy does
    np.testing.assert_array_equal((a * np.float32(2.0) + 1).get(), [1.0, 11.0, 5.0])


# ---- CUDA_VISIBLE_DEVICES --------------------------------------------------------------------------------
@pytest.mark.parametrize("visible", ["", "7", "7,0"])
def test_cuda_visible_devices_hiding_every_gpu_is_named_and_auto_picks_the_cpu(gpus, monkeypatch, capsys,
                                                                               visible):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.delenv(device.DEVICE_ENV, raising=False)
    with pytest.raises(gpus.CUDARuntimeError, match="cudaErrorNoDevice"):
        gpus.cuda.runtime.getDeviceCount()
    reason = cuda_unavailable_reason()
    assert f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU" in reason and "cudaErrorNoDevice" in reason, reason
    assert gpubp.Network([3, 2]).device == "cpu"
    with pytest.raises(DeviceError, match="device 'cuda' is not usable: CUDA_VISIBLE_DEVICES="):
        gpubp.Network([3, 2], device="cuda")
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"GPUs:      none (CUDA_VISIBLE_DEVICES={visible!r} hides every GPU" in out, out
    assert "auto:      cpu" in out, out


# ---- asynchronous kernel faults --------------------------------------------------------------------------
def test_a_kernel_fault_surfaces_at_the_next_synchronisation_then_at_every_call(gpus, monkeypatch):
    plant_in_kernel(monkeypatch, *FAULTY_SOFTMAX)
    z, b, a = gpus.zeros((2, 3)), gpus.zeros(3), gpus.zeros((2, 3))
    function = kernels.get_function(0, "gpubp_bias_softmax_f64")
    function((1,), (64,), (z, b, a, np.uint64(2), np.uint64(3)))  # the launch reports nothing
    a + 1.0  # nor does more work queued after it
    with pytest.raises(gpus.CUDARuntimeError, match="cudaErrorIllegalAddress"):
        a.get()
    for call in (lambda: gpus.zeros(1), lambda: a.fill(0), lambda: gpus.cuda.runtime.memGetInfo(),
                 lambda: gpus.cuda.Device(0).synchronize()):
        with pytest.raises(gpus.CUDARuntimeError, match="cudaErrorIllegalAddress"):
            call()
    with gpus.cuda.Device(1):  # the other GPU's context is not affected
        np.testing.assert_array_equal((gpus.arange(3.0) + 1).get(), [1.0, 2.0, 3.0])


def test_a_kernel_fault_in_fit_is_named_the_gpu_is_unusable_after_and_no_file_is_damaged(gpus, monkeypatch,
                                                                                          tmp_path, rng):
    monkeypatch.delenv(device.DEVICE_ENV, raising=False)
    X, y = rng.standard_normal((24, 4)), rng.integers(0, 3, 24)
    net = gpubp.Network([4, 5, 3], output="softmax", cost="log_likelihood", device="cuda:0", seed=1)
    fit = dict(epochs=2, batch_size=8, lr=0.1, progress=False, checkpoint=str(tmp_path / "ckpt"))
    net.fit(X, y, **fit)
    net.save(tmp_path / "net.npz")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert get_ops("auto").device == "cuda:0"
    plant_in_kernel(monkeypatch, *FAULTY_SOFTMAX)
    with pytest.raises(DeviceError, match=r"training stopped: cuda:0 had a kernel fault .*cudaErrorIllegalAddress"):
        net.fit(X, y, **dict(fit, epochs=4))
    with pytest.raises(gpus.CUDARuntimeError, match="cudaErrorIllegalAddress"):
        net.save(tmp_path / "net.npz")
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
    np.testing.assert_array_equal(gpubp.load(tmp_path / "net.npz", device="cpu").parameters(),
                                  np.load(tmp_path / "net.npz")["params"])
    reason = cuda_unavailable_reason(0)
    assert reason is not None and reason.startswith("cuda:0 had a kernel fault"), reason
    assert get_ops("auto").device == "cpu" and cuda_unavailable_reason(1) is None
    with pytest.raises(ValueError, match=r"backend 'cuda:0' is not usable here \(cuda:0 had a kernel fault"):
        run_selftest(["cuda:0"])
    rows, _ = run_selftest(["cuda:1"])  # usable when the selftest begins; its checks fault
    failures = [result.note for row in rows for result in row.results.values() if not result.ok]
    assert failures and all(note.startswith("cuda:1 had a kernel fault") for note in failures), failures


# ---- peer access -----------------------------------------------------------------------------------------
def test_with_peer_access_another_gpus_array_is_read_on_the_current_gpu(gpus):
    gpus.PEER_ACCESS = True
    with gpus.cuda.Device(1):
        a = gpus.arange(4.0)
        gpus.cuda.Device(1).synchronize()  # nothing orders cuda:0's work after cuda:1's
    with pytest.warns(gpus.PerformanceWarning, match="Peer access has been activated"):
        np.testing.assert_array_equal((a + 1).get(), [1.0, 2.0, 3.0, 4.0])
    assert gpus.ran_on["cupy.add", 0] == 1 and gpus.ran_on["cupy.add", 1] == 0
    assert gpus.peer_reads == {("cupy.add", 1, 0): 1}
    function = kernels.get_function(0, "gpubp_gather_rows_f64")
    out, order, base = gpus.zeros(2), gpus.arange(4), gpus.zeros(1, dtype=np.int64)
    function((1,), (32,), (a, order, base, np.uint64(1), out, np.uint64(2), np.uint64(1)))
    np.testing.assert_array_equal(out.get(), [1.0, 2.0])
    gpus.PEER_ACCESS = False  # without peer access the kernel cannot reach cuda:1's memory: a fault
    function((1,), (32,), (a, order, base, np.uint64(1), out, np.uint64(2), np.uint64(1)))
    with pytest.raises(gpus.CUDARuntimeError, match="cudaErrorIllegalAddress"):
        out.get()


@pytest.mark.parametrize("peer_access", [False, True], ids=["no-p2p", "p2p"])
def test_every_operation_runs_on_the_networks_gpu_whichever_is_current(gpus, rng, peer_access):
    """cuda:0 current, the network and the caller's data on cuda:1: every allocation, kernel, matmul, copy
    and graph launch of gpubp is on cuda:1 (with peer access a missing device switch would run on cuda:0
    unseen; without, it raises)."""
    gpus.PEER_ACCESS = peer_access
    X, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
    with gpus.cuda.Device(1):
        X1, y1 = gpus.asarray(X), gpus.asarray(y)
        gpus.cuda.Device(1).synchronize()
    net = gpubp.Network([5, 6, 3], activation="tanh", output="softmax", cost="log_likelihood", device="cuda:1",
                        seed=2)
    estimator = MLPClassifier(hidden_layer_sizes=(6,), max_iter=3, early_stopping=True, device="cuda:1",
                              random_state=0)
    gpus.ran_on.clear()
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", gpus.PerformanceWarning)  # a cross-device read fails the test
        for compiled in (True, False):
            net.fit(X1, y1, epochs=2, batch_size=16, lr=0.1, progress=False, compiled=compiled,
                    validation_data=(X1, y1))
            paths.append(net.training_path)
        net.fit(X, y, epochs=1, batch_size=16, lr=0.1, progress=False)
        net.forward(X1), net.backprop(X1, y1), net.predict(X1), net.evaluate(X1, y1)
        estimator.fit(X1, y).predict(X1)
        estimator.fit(X, y).predict(X)
    assert paths == ["compiled", "eager: compiled=False"]
    assert gpus.ran_on["graph", 1] > 0 and gpus.graph_calls["launches"] > 0
    wrong = {what for (what, gpu), count in gpus.ran_on.items() if gpu != 1 and count}
    assert not wrong, f"ran on cuda:0: {sorted(wrong)}"
    assert not gpus.peer_reads


# ---- stream ordering -------------------------------------------------------------------------------------
def test_work_on_two_streams_is_ordered_only_by_events(gpus):
    a = gpus.arange(4.0)
    side = gpus.cuda.Stream(non_blocking=True)
    with side:  # reads ``a`` before the default stream has written it: garbage
        early = a * 2.0
    side.synchronize()
    assert np.isnan(early.get()).all()
    side.wait_event(gpus.cuda.get_current_stream().record())
    with side:
        doubled = a * 2.0
        a += 10.0  # written on the side stream: the default stream does not see it without a wait
    assert a.get().tolist() == [0.0, 1.0, 2.0, 3.0]
    gpus.cuda.get_current_stream().wait_event(side.record())
    assert a.get().tolist() == [10.0, 11.0, 12.0, 13.0] and doubled.get().tolist() == [0.0, 2.0, 4.0, 6.0]
    late = gpus.zeros(4)
    side.wait_event(gpus.cuda.get_current_stream().record())
    with side:  # queued: reads ``a`` after work the default stream queues later, as nothing orders them
        gpus.subtract(a, 10.0, out=late)
    a.fill(-1.0)
    a.get()
    side.synchronize()
    assert late.get().tolist() == [-11.0] * 4


def test_the_compiled_programs_graphs_launched_unordered_on_its_own_stream_give_wrong_results(gpus, monkeypatch,
                                                                                             rng):
    """The program launches its graphs on the caller's current stream, in order with the trainer's work. A
    planted bug, launching them on the program's capture stream with no event ordering that stream, shows
    as a wrong loss: the trainer reads it before the graphs have run (unseen while side-stream work ran at
    once)."""
    from gpubp.backend import cuda_program

    X, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)

    def trained() -> list[float]:
        net = gpubp.Network([5, 6, 3], output="softmax", cost="log_likelihood", device="cuda:0", seed=2)
        loss = net.fit(X, y, epochs=2, batch_size=8, lr=0.1, progress=False, shuffle=False)["loss"]
        assert net.training_path == "compiled"
        return loss

    right = trained()
    run = cuda_program.CudaGraphProgram.run

    def on_its_own_stream(self, *args) -> None:
        with self._stream:
            run(self, *args)

    monkeypatch.setattr(cuda_program.CudaGraphProgram, "run", on_its_own_stream)
    wrong = trained()
    assert not np.allclose(wrong, right, equal_nan=True), (wrong, right)
