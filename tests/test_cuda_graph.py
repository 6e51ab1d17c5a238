"""Compiled training on the GPU (gpubp/backend/cuda_program.py) under the emulated CuPy, which captures and
replays CUDA graphs as strictly as CUDA (tests/cpp/emulated_cupy.py):

* the emulation's capture: recorded work replays on the same pointers; allocating, synchronising or
  copying to or from the host inside a capture raises CUDA's errors and invalidates it;
* a fit trained by the graph program equals the eager fit bit for bit (parameters, optimizer state, step
  count, loss history), for every optimizer, labels and dense targets, a short last batch, shuffled or not,
  with a schedule changing η between epochs; the graphs are captured once per fit, never per epoch;
* where a plan cannot be captured, ``training_program`` says why, and ``gpubp info`` shows it per GPU.

The program is driven here as the trainer drives it (see gpubp/backend/programs.py); the eager reference is
``Network.fit`` with env GPUBP_CUDA_GRAPHS=0, which stays eager once ``fit`` uses programs.
"""

from __future__ import annotations

import numpy as np
import pytest
from emulated_gpu import plant_in_kernel

import gpubp
from gpubp import cli
from gpubp.backend import cuda_program
from gpubp.backend.programs import ProgramPlan

pytestmark = pytest.mark.usefixtures("emulation_build")


# ---- the emulation's capture ---------------------------------------------------------------------------
def test_a_replay_reruns_the_recorded_work_on_the_same_memory(gpus):
    a, b = gpus.arange(4.0), gpus.zeros(4)
    stream = gpus.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        gpus.multiply(a, 2.0, out=b)
        b += 1.0
        assert stream.is_capturing()
        graph = stream.end_capture()
    np.testing.assert_array_equal(b.get(), 0.0)  # captured work does not run
    graph.launch()
    np.testing.assert_array_equal(b.get(), [1.0, 3.0, 5.0, 7.0])
    a[...] = 10.0
    graph.launch()
    np.testing.assert_array_equal(b.get(), 21.0)
    assert gpus.graph_calls["launches"] >= 2


@pytest.mark.parametrize("what, operation", [
    ("allocating", lambda cp, a: cp.empty(3)),
    ("allocates its result", lambda cp, a: a + 1.0),
    ("synchronising the device", lambda cp, a: cp.cuda.Device(0).synchronize()),
    ("synchronising a stream", lambda cp, a: cp.cuda.get_current_stream().synchronize()),
    ("copying to the host", lambda cp, a: a.get()),
    ("copying an element to the host", lambda cp, a: float(a[0])),
    ("copying from the host", lambda cp, a: a.set(np.ones(4))),
])
def test_what_cuda_refuses_in_a_capture_raises_and_invalidates_it(gpus, what, operation):
    a = gpus.arange(4.0)
    stream = gpus.cuda.Stream(non_blocking=True)
    stream.wait_event(gpus.cuda.get_current_stream().record())  # after ``a`` is written
    with stream:
        stream.begin_capture()
        with pytest.raises(gpus.CUDARuntimeError, match=f"cudaErrorStreamCaptureUnsupported: .*{what}"):
            operation(gpus, a)
        with pytest.raises(gpus.CUDARuntimeError, match="cudaErrorStreamCaptureInvalidated"):
            a *= 2.0  # the capture is over: further work on the stream is refused
        with pytest.raises(gpus.CUDARuntimeError, match=f"cudaErrorStreamCaptureInvalidated: .*{what}"):
            stream.end_capture()
        stream.begin_capture()  # the stream can capture again
        a *= 2.0
        stream.end_capture().launch()  # on the capturing stream, which the default stream does not wait for
        stream.synchronize()
    np.testing.assert_array_equal(a.get(), [0.0, 2.0, 4.0, 6.0])


def test_the_default_stream_cannot_capture(gpus):
    with pytest.raises(RuntimeError, match="cannot capture on the default"):
        gpus.cuda.get_current_stream().begin_capture()


# ---- a fit as graphs equals the eager fit --------------------------------------------------------------
def make_plan(net, x, target, batch_size: int, optimizer) -> ProgramPlan:
    """The plan of ``net``'s fit on device arrays ``x``, ``target``."""
    return ProgramPlan(sizes=net.sizes, activations=net.layer_activations, cost=net.cost, dtype=net.dtype,
                       params=net.parameters(), grad=net.gradient(), n_weights=net.n_weights,
                       optimizer=optimizer, x=x, target=target, batch_size=batch_size)


def fit_with_program(net, X, Y, *, epochs: int, batch_size: int, lr: float, optimizer: str, momentum: float,
                     weight_decay: float, shuffle: bool, seed: int, lr_schedule: str,
                     optimizer_options: dict) -> tuple[list[float], object]:
    """What Network.fit does, each epoch's chunks run by the graph program: (loss history, program)."""
    ops, n = net.ops, len(X)
    with ops.activate():
        x, target = ops.asarray(np.asarray(X, dtype=net.dtype)), net.check_targets(Y, n)
        opt = net.optimizer_for(optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
        opt.configure(lr_schedule=lr_schedule, **optimizer_options)
        opt.start_schedule()
        plan = make_plan(net, x, target, batch_size, opt)
        program, reason = ops.training_program(plan)
        assert program is not None, reason
        rng, loss_sum, history = np.random.default_rng(seed), ops.zeros((1,), net.dtype), []
        for _ in range(epochs):
            order = ops.permutation(n, rng) if shuffle else ops.row_index(n)
            loss_sum.fill(0)
            for first in range(0, plan.batches(), program.granule):
                program.run(order, first, min(program.granule, plan.batches() - first), loss_sum)
            history.append(ops.item(loss_sum) / n)
            opt.epoch_end(n, None)
    return history, program


CASES = [  # optimizer, lr schedule, optimizer options
    ("sgd", "invscaling", {"decay_per_sample": True}),
    ("momentum", "constant", {}),
    ("nesterov", "invscaling", {}),
    ("adam", "invscaling", {"eps_on_corrected_v": False}),
]


@pytest.mark.parametrize("optimizer, lr_schedule, options, labels, shuffle", [
    (*case, labels, True) for case in CASES for labels in (True, False)] + [
    (*CASES[0], False, False), (*CASES[3], True, False)],
    ids=[f"{c[0]}-{kind}-shuffled" for c in CASES for kind in ("labels", "dense")] + [
        "sgd-dense-in-order", "adam-labels-in-order"])
def test_a_fit_as_cuda_graphs_equals_the_eager_fit_bit_for_bit(gpus, monkeypatch, rng, optimizer, lr_schedule,
                                                               options, labels, shuffle):
    monkeypatch.setattr(cuda_program, "GRAPH_BATCHES", 3)  # 8 batches: chunks of 3, 3 and a tail of 2
    n, batch_size, epochs = 38, 5, 2                        # the last batch has 3 rows
    X = rng.standard_normal((n, 4))
    Y = rng.integers(0, 3, n) if labels else rng.random((n, 3))
    cost = "log_likelihood" if labels else "quadratic"
    dtype = "float32" if optimizer == "adam" else "float64"
    make = dict(sizes=[4, 6, 5, 3], activation="tanh", output="softmax" if labels else "sigmoid", cost=cost,
                device="cuda:0", dtype=dtype, seed=1)
    fit = dict(epochs=epochs, batch_size=batch_size, lr=0.2, optimizer=optimizer, momentum=0.8,
               weight_decay=0.01, shuffle=shuffle, seed=7, lr_schedule=lr_schedule, optimizer_options=options)
    eager = gpubp.Network(**make)
    with monkeypatch.context() as env:
        env.setenv(cuda_program.GRAPHS_ENV, "0")
        expected = eager.fit(X, Y, progress=False, **fit)["loss"]
    graphs = gpubp.Network(**make)
    captured = gpus.graph_calls["captures"]
    history, program = fit_with_program(graphs, X, Y, **fit)
    assert (program.granule, gpus.graph_calls["captures"] - captured) == (3, 3)  # the probe, full chunk, tail
    assert history == expected
    for got, want in ((graphs.parameters(), eager.parameters()), (graphs.gradient(), eager.gradient()),
                      *zip(graphs.optimizer.state_arrays(), eager.optimizer.state_arrays())):
        np.testing.assert_array_equal(gpubp.to_numpy(got), gpubp.to_numpy(want))
    assert graphs.optimizer.t == eager.optimizer.t == epochs * 8
    assert graphs.optimizer.settings() == eager.optimizer.settings()  # the schedule's η and samples seen


def test_the_graphs_are_captured_once_and_launched_once_per_chunk(gpus, monkeypatch, rng):
    monkeypatch.setattr(cuda_program, "GRAPH_BATCHES", 4)
    X, Y = rng.standard_normal((40, 3)), rng.integers(0, 2, 40)
    net = gpubp.Network([3, 4, 2], output="softmax", cost="log_likelihood", device="cuda:0", seed=0)
    fit = dict(batch_size=4, lr=0.1, optimizer="sgd", momentum=0.0, weight_decay=0.0, shuffle=True, seed=0,
               lr_schedule="constant", optimizer_options={})
    fit_with_program(net, X, Y, epochs=1, **fit)  # the probe capture, once per GPU
    before = dict(gpus.graph_calls)
    fit_with_program(net, X, Y, epochs=3, **fit)
    assert gpus.graph_calls["captures"] - before["captures"] == 2  # 10 batches: chunks of 4, 4 and 2
    assert gpus.graph_calls["launches"] - before["launches"] == 3 * 3


def test_run_checks_its_arguments(gpus, rng):
    net = gpubp.Network([3, 2], device="cuda:0", dtype="float64", seed=0)
    with net.ops.activate():
        x, target = net.ops.asarray(rng.standard_normal((9, 3))), net.ops.asarray(rng.random((9, 2)))
        opt = net.optimizer_for("sgd", lr=0.1, momentum=0.0, weight_decay=0.0)
        program, _ = net.ops.training_program(make_plan(net, x, target, 4, opt))
        loss, order = net.ops.zeros((1,), np.float64), net.ops.row_index(9)
        with pytest.raises(ValueError, match=r"batches 2…3 are not within the epoch's 3 batches"):
            program.run(order, 2, 2, loss)
        with pytest.raises(ValueError, match=r"order must be an int64 CuPy array of shape \(9,\)"):
            program.run(order[:8], 0, 1, loss)
        with pytest.raises(ValueError, match="loss_sum must be a CuPy array of shape \\(1,\\) and dtype float64"):
            program.run(order, 0, 1, net.ops.zeros((1,), np.float32))


# ---- where no graph is captured, the reason ----------------------------------------------------------------
def _program_reason(net, rng) -> str:
    with net.ops.activate():
        x = net.ops.asarray(rng.standard_normal((6, net.sizes[0])).astype(net.dtype))
        target = net.ops.asarray(rng.random((6, net.sizes[-1])).astype(net.dtype))
        opt = net.optimizer_for("momentum", lr=0.1, momentum=0.5, weight_decay=0.0)
        program, reason = net.ops.training_program(make_plan(net, x, target, 4, opt))
    assert program is None
    return reason


def test_a_user_defined_cost_runs_eagerly_and_says_why(gpus, rng):
    cost = gpubp.CustomCost(lambda a, y: (a * a).sum(1), lambda a, y: 2 * a, needs_target=False)
    net = gpubp.Network([3, 2], cost=cost, device="cuda:0", seed=0)
    assert "is user-defined: its Python code runs eagerly" in _program_reason(net, rng)


def test_an_activation_without_a_kernel_runs_eagerly_and_says_why(gpus, rng):
    from gpubp.activations import Activation

    class Cube(Activation):
        name = "cube"

        def f(self, xp, z, out):
            return xp.power(z, 3, out=out)

        def df(self, xp, z, a, out):
            return xp.multiply(xp.square(z), 3.0, out=out)

    net = gpubp.Network([3, 4, 2], device="cuda:0", seed=0)
    net.layer_activations = (Cube(), net.output)
    assert "the activation 'cube' is user-defined" in _program_reason(net, rng)


def test_a_capture_that_fails_falls_back_with_the_cuda_error(gpus, monkeypatch, rng):
    """A step that allocates (here BP3 without ``out=``) cannot be captured: CUDA's error is the reason."""
    from gpubp.backend.cupy_ops import CupyOps

    monkeypatch.setattr(CupyOps, "sum_rows", lambda self, x, out: out.__setitem__(..., x.sum(axis=0)))
    net = gpubp.Network([3, 4, 2], device="cuda:0", seed=0)
    reason = _program_reason(net, rng)
    assert reason.startswith("capturing the training steps as a CUDA graph failed (CUDARuntimeError: "
                             "cudaErrorStreamCaptureUnsupported"), reason


@pytest.mark.parametrize("how, why", [("env", "turned off by env GPUBP_CUDA_GRAPHS=0"),
                                      ("old cupy", "has no stream capture (CuPy 10 or later has)")])
def test_without_graphs_info_and_training_program_say_why(gpus, monkeypatch, rng, capsys, how, why):
    if how == "env":
        monkeypatch.setenv(cuda_program.GRAPHS_ENV, "0")
    else:
        monkeypatch.delattr(gpus.cuda.Stream, "begin_capture")
    net = gpubp.Network([3, 2], device="cuda:1", seed=0)
    assert why in _program_reason(net, rng)
    assert cli.main(["info"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("graphs:"))
    assert line.startswith("graphs:    cuda:0 eager launches (") and "; cuda:1 eager launches (" in line, line
    assert line.count(why) == 2, line


def test_info_says_each_gpu_runs_cuda_graphs(gpus, capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    line = "cuda:{} CUDA graphs (one launch per chunk of mini-batches)"
    assert f"graphs:    {line.format(0)}; {line.format(1)}\n" in out, out


# ---- gpubp selftest ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_selftest_compares_graphs_with_eager_steps_and_reports_a_difference(gpus, monkeypatch):
    """The ``compiled`` check gives 0 (equal), and a difference once the graphs' SGD step reads its two
    scalars swapped (a planted bug in the _indirect kernel only). The whole row: test_emulated_gpu.py."""
    from gpubp import selftest
    from gpubp.backend import get_ops

    ops = get_ops("cuda:0")
    assert selftest.check_compiled(ops, "float64") == 0.0
    plant_in_kernel(monkeypatch, "optim.cu", "n_weights, scalars[0], scalars[1]);",
                    "n_weights, scalars[1], scalars[0]);")
    assert selftest.check_compiled(ops, "float64") > selftest.TOLERANCE["float64"]
    assert selftest.check_training(ops, "float64") <= selftest.TOLERANCE["float64"]  # the eager steps are right


# ---- on a real GPU -----------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_on_a_gpu_the_graphs_train_as_the_eager_steps(dtype):
    """CuPy captures the steps (cuBLAS, its reductions, gpubp's kernels) and the replays end where the eager
    steps end (selftest's ``compiled`` check; it raises NotApplicable, failing here, when nothing is captured)."""
    from gpubp import selftest
    from gpubp.backend import get_ops

    ops = get_ops("cuda")
    assert ops.graph_unavailable_reason() is None
    with ops.activate():
        assert selftest.check_compiled(ops, dtype) <= selftest.TOLERANCE[dtype]


# ---- through Network.fit -------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer,shuffle", [("adam", True), ("nesterov", False)])
def test_fit_trains_through_graphs_exactly_as_step_by_step(gpus, optimizer, shuffle):
    """The trainer drives the graph program (chunks sized by time, the epoch's order on the device): the
    result equals ``fit(compiled=False)`` bit for bit."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((83, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 83)
    runs = []
    for compiled in (None, False):
        net = gpubp.Network([6, 5, 3], activation="tanh", output="softmax", cost="log_likelihood",
                            device="cuda:0", seed=2)
        history = net.fit(X, labels, epochs=2, batch_size=8, lr=0.05, optimizer=optimizer, shuffle=shuffle,
                          seed=9, progress=False, compiled=compiled)
        runs.append((net.training_path, net.parameters().get(), net.optimizer.t, history))
    assert runs[0][0] == "compiled" and runs[1][0] == "eager: compiled=False"
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][2] == runs[1][2] and runs[0][3] == runs[1][3]
