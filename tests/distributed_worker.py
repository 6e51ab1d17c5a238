"""The program each MPI rank runs for tests/test_distributed.py:

    mpiexec -n 2 python tests/distributed_worker.py SCENARIO OUT_DIR [TIMEOUT_S]

Scenario "gpu" trains on ``cuda:<local rank>`` over NCCL; so do "gpu-buckets" (the "buckets" problem, whose
large weight gradient is summed on NCCL's side stream during the backward pass) and "gpu-moved" (every
rank builds its network on cuda:0, and fit moves it to the rank's GPU). With env GPUBP_EMULATED_CUPY_BUILD
set, ``cupy`` is the emulation of tests/cpp/emulated_cupy.py: two GPUs per node, NCCL over MPI. Training
scenarios save rank 0's final
parameters and history to OUT_DIR/result.npz; the test compares them with a single-process ``fit`` of the
same problem (built by ``problem`` below, imported by the test).
Failure scenarios end in an exception or an exit on one rank; the test checks that the whole job stops.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import gpubp
from gpubp import distributed
from gpubp.training import GradientBuckets

if os.environ.get("GPUBP_EMULATED_CUPY_BUILD"):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from emulated_gpu import load_emulated_cupy

    load_emulated_cupy().install_from_environment()

#: GPU scenario -> (problem, device every rank builds its network on before fit; None: comm.device)
GPU_SCENARIOS = {"gpu": ("gpu", None), "gpu-buckets": ("buckets", None), "gpu-moved": ("gpu", "cuda:0")}

#: name -> (network kwargs, samples, fit kwargs, integer labels?)
PROBLEMS = {
    # one step on the whole batch
    "step": (dict(sizes=[6, 5, 3], activation="tanh", output="softmax", cost="log_likelihood"), 8,
             dict(epochs=1, batch_size=8, lr=0.5, shuffle=False), True),
    # shuffled epochs, momentum, validation; every batch splits evenly over 2 ranks
    "epochs": (dict(sizes=[6, 7, 4], activation="sigmoid", cost="quadratic"), 24,
               dict(epochs=3, batch_size=6, lr=1.0, optimizer="momentum", seed=3), False),
    # the adaptive schedule and the stopping rule on val_loss, the best epoch's parameters kept
    "schedule": (dict(sizes=[6, 7, 4], activation="sigmoid", cost="quadratic"), 24,
                 dict(epochs=8, batch_size=6, lr=1.0, optimizer="momentum", seed=3, lr_schedule="adaptive",
                      tol=1e-3, n_iter_no_change=1, restore_best=True), False),
    # batches of 7, 7, 7 and 2 rows: shards of 4/3 and 1/1 on 2 ranks
    "uneven": (dict(sizes=[6, 8, 5, 3], activation="relu", output="softmax", cost="log_likelihood"), 23,
               dict(epochs=2, batch_size=7, lr=0.01, optimizer="adam", weight_decay=1e-3, seed=5), True),
    # per-layer buckets forced on the CPU: ∂C/∂W¹ (300×450 float64, 1.08 MB) is summed while layer 0's
    # backward pass runs; the rest (∂C/∂W⁰, ∂C/∂W², the biases) after it
    "buckets": (dict(sizes=[6, 300, 450, 3], activation="tanh", output="softmax", cost="log_likelihood"), 20,
                dict(epochs=2, batch_size=10, lr=0.05, optimizer="momentum", seed=9), True),
    # for NCCL on 1 to 16 GPUs: every batch has 16 rows
    "gpu": (dict(sizes=[6, 8, 5, 3], activation="tanh", output="softmax", cost="log_likelihood"), 64,
            dict(epochs=2, batch_size=16, lr=0.01, optimizer="adam", weight_decay=1e-3, seed=7), True),
}


def problem(name: str) -> tuple[gpubp.Network, np.ndarray, np.ndarray, dict]:
    """A fresh float64 CPU network, data and fit arguments (validation data included) for ``name``."""
    net_kwargs, n, fit_kwargs, labels = PROBLEMS[name]
    rng = np.random.default_rng(len(name))
    sizes = net_kwargs["sizes"]
    X = rng.normal(size=(n + 5, sizes[0]))
    Y = rng.integers(0, sizes[-1], size=n + 5) if labels else rng.uniform(size=(n + 5, sizes[-1]))
    net = gpubp.Network(**net_kwargs, device="cpu", dtype="float64", seed=1)
    fit = dict(fit_kwargs, validation_data=(X[n:], Y[n:]), progress=False)
    return net, X[:n], Y[:n], fit


def train(name: str, comm: distributed.Communicator, out_dir: str, device: str | None = None) -> None:
    net, X, Y, fit = problem(name)
    if comm.rank > 0:  # a different initialisation: fit must broadcast rank 0's parameters
        net = gpubp.Network(**PROBLEMS[name][0], device="cpu", dtype="float64", seed=100 + comm.rank)
    if name == "buckets":
        comm.overlaps_compute = True
    net.to(device or comm.device)
    print(f"rank {comm.rank}: early buckets {sorted(GradientBuckets(net, comm).early)}", flush=True)
    emulated = sys.modules.get("emulated_cupy")
    if emulated is not None:
        emulated.ran_on.clear()
        emulated.peer_reads.clear()
    history = net.fit(X, Y, **fit, distributed=comm)
    assert net.device == comm.device, (net.device, comm.device)
    if emulated is not None:
        print(f"rank {comm.rank}: NCCL calls {emulated.nccl_calls}", flush=True)
        print(f"rank {comm.rank}: fit ran on GPUs {sorted({gpu for _, gpu in emulated.ran_on})}, read across "
              f"{sum(emulated.peer_reads.values())} times", flush=True)
    if distributed.is_main_process():
        np.savez(os.path.join(out_dir, "result.npz"), params=gpubp.to_numpy(net.parameters()),
                 **{f"history_{k}": np.asarray(v) for k, v in history.items()})


def collectives(comm: distributed.Communicator, out_dir: str) -> None:
    """Each collective against what it must give on 2 ranks; an AssertionError aborts the job."""
    assert (comm.rank, comm.size, comm.device) == (comm.rank, 2, "cpu")
    assert distributed.is_main_process() == (comm.rank == 0)
    for dtype in (np.float32, np.float64):
        x = np.arange(5, dtype=dtype) * (comm.rank + 1)
        comm.allreduce_sum(x)
        np.testing.assert_array_equal(x, np.arange(5, dtype=dtype) * 3)
    scalar = np.array(comm.rank + 0.5)
    comm.allreduce_sum(scalar)
    assert scalar == 2.0
    y = np.full(4, float(comm.rank))
    comm.broadcast(y, root=1)
    np.testing.assert_array_equal(y, np.ones(4))
    comm.check_same(y, "broadcast values")
    try:
        comm.check_same(np.full(3, float(comm.rank)), "per-rank values")
    except ValueError as exc:
        assert "per-rank values differ across ranks: rank(s) 1 differ from rank 0" in str(exc), exc
    else:
        raise AssertionError("check_same accepted different arrays")
    try:
        comm.broadcast(np.zeros(3 + comm.rank))
    except ValueError as exc:
        assert "rank 0: 3 float64 values; rank 1: 4 float64 values" in str(exc), exc
    else:
        raise AssertionError("broadcast accepted arrays of different sizes")
    try:
        comm.allreduce_sum(np.zeros((4, 4))[:, 0])
    except ValueError as exc:
        assert "C-contiguous" in str(exc), exc
    else:
        raise AssertionError("allreduce_sum accepted a strided view")
    assert [comm.shard(5), comm.shard(2)] == ([(0, 3), (0, 1)] if comm.rank == 0 else [(3, 5), (1, 2)])
    comm.barrier()
    if comm.rank == 0:
        open(os.path.join(out_dir, "ok"), "w").close()


def fail(name: str, comm: distributed.Communicator) -> None:
    """Failure scenarios: every one must end the whole job with a non-zero status and a clear message."""
    net, X, Y, fit = problem("epochs")
    if name == "batch-too-small":
        net.fit(X, Y, **dict(fit, batch_size=1), distributed=comm)
    elif name == "last-batch-too-small":  # 24 rows in batches of 23: the last one has 1 row for 2 ranks
        net.fit(X, Y, **dict(fit, batch_size=23), distributed=comm)
    elif name == "mismatch":
        sizes = [6, 7, 4] if comm.rank == 0 else [6, 9, 4]
        gpubp.Network(sizes, device="cpu", dtype="float64", seed=1).fit(X, Y, **fit, distributed=comm)
    elif name in ("raises", "exits"):
        def callback(net, epoch, logs):
            if comm.rank == 1:
                if name == "raises":
                    raise RuntimeError("rank 1 fails on purpose")
                sys.exit(3)  # leaves without an uncaught exception: rank 0 must time out
        net.fit(X, Y, **dict(fit, epochs=50), callbacks=[callback], distributed=comm)
    else:
        raise ValueError(f"unknown scenario {name!r}")


def main() -> None:
    scenario, out_dir = sys.argv[1], sys.argv[2]
    # "no-gpu" and "one-gpu-for-two" fail in init (no usable GPU; two ranks of a node asking for cuda:0)
    device = {"no-gpu": "cuda", "one-gpu-for-two": "cuda:0", **dict.fromkeys(GPU_SCENARIOS, "cuda")}.get(
        scenario, "cpu")
    comm = distributed.init(device=device, timeout=float(sys.argv[3]) if len(sys.argv) > 3 else 30.0)
    if scenario == "collectives":
        collectives(comm, out_dir)
    elif scenario in GPU_SCENARIOS:
        print(comm, flush=True)
        name, device = GPU_SCENARIOS[scenario]
        train(name, comm, out_dir, device)
    elif scenario in PROBLEMS:
        print(comm, flush=True)
        train(scenario, comm, out_dir)
    else:
        fail(scenario, comm)


if __name__ == "__main__":
    main()
