"""Compiled training (gpubp.backend.programs): a chunk of mini-batches as one Numba call equals the eager
loop bit for bit, the NumPy reference within float tolerance; what it does not cover runs step by step."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import gpubp
from gpubp.activations import ACTIVATIONS
from gpubp.backend import Ops, get_ops
from gpubp.costs import Cost

pytest.importorskip("numba")
pytest.importorskip("scipy")

from gpubp.backend import cpu_kernels  # noqa: E402
from gpubp.training import CHUNK_SECONDS, _next_chunk  # noqa: E402

HIDDEN = sorted(name for name, act in ACTIVATIONS.items() if act.elementwise)
#: (output, cost, targets) pairs, taken in turn by the hidden activations
HEADS = [("softmax", "log_likelihood", "labels"), ("sigmoid", "cross_entropy", "dense"),
         ("identity", "quadratic", "dense"), ("softmax", "quadratic", "labels"), ("sigmoid", "quadratic", "labels")]
OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam"]


def _data(rng, n=103, n_in=7, k=4):
    """n samples (a short last batch at batch size 10), labels and their one-hot rows."""
    X = rng.standard_normal((n, n_in)).astype(np.float32)
    labels = rng.integers(0, k, n)
    return X, labels, np.eye(k, dtype=np.float32)[labels]


def _trained(backend, hidden, output, cost, targets, optimizer, rng, dtype="float32", compiled=None, **fit):
    X, labels, onehot = _data(rng)
    net = gpubp.Network([7, 6, 5, 4], activation=hidden, output=output, cost=cost, dtype=dtype, seed=3,
                        device=get_ops("cpu", cpu_backend=backend) if isinstance(backend, str) else backend)
    history = net.fit(X, labels if targets == "labels" else onehot, epochs=3, batch_size=10, lr=0.02,
                      optimizer=optimizer, weight_decay=1e-3, seed=5, progress=False, compiled=compiled, **fit)
    return net, history


def _state(net):
    return [net.parameters().copy(), net.optimizer.t, *[a.copy() for a in net.optimizer.state_arrays()]]


@pytest.mark.parametrize("index,hidden", list(enumerate(HIDDEN)))
def test_a_compiled_fit_equals_the_eager_one_bit_for_bit(index, hidden):
    """Every built-in hidden activation, each with an output/cost pair and an optimizer in turn: parameters,
    optimizer state and history are identical (the same kernels in the same order)."""
    output, cost, targets = HEADS[index % len(HEADS)]
    optimizer = OPTIMIZERS[index % len(OPTIMIZERS)]
    eager, eager_history = _trained("numba", hidden, output, cost, targets, optimizer,
                                    np.random.default_rng(index), compiled=False)
    net, history = _trained("numba", hidden, output, cost, targets, optimizer, np.random.default_rng(index))
    assert net.training_path == "compiled" and eager.training_path == "eager: compiled=False"
    for a, b in zip(_state(eager), _state(net)):
        np.testing.assert_array_equal(a, b)
    assert history == eager_history


@pytest.mark.parametrize("options", [
    {"lr_schedule": "invscaling", "power_t": 0.25},
    {"optimizer_options": {"decay_per_sample": True, "eps_on_corrected_v": False, "beta1": 0.8}},
    {"shuffle": False}])
def test_adam_settings_schedules_and_order_compile_exactly(options, rng):
    """Adam's bias corrections per step, scikit-learn's ε and decay, η changed between epochs by a schedule,
    and the unshuffled order: the compiled fit still equals the eager one exactly (float64)."""
    runs = [_trained("numba", "relu", "softmax", "log_likelihood", "labels", "adam", np.random.default_rng(1),
                     dtype="float64", compiled=compiled, **options) for compiled in (False, True)]
    for a, b in zip(_state(runs[0][0]), _state(runs[1][0])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("hidden,output,cost,optimizer", [
    ("sigmoid", "sigmoid", "quadratic", "sgd"), ("relu", "softmax", "log_likelihood", "adam"),
    ("tanh", "sigmoid", "cross_entropy", "nesterov")])
def test_a_compiled_fit_matches_the_numpy_reference(hidden, output, cost, optimizer):
    """Against the reference backend's BP1–BP4 (gpubp.network's lines on plain NumPy), in float64."""
    targets = "labels" if cost == "log_likelihood" else "dense"
    reference, ref_history = _trained(Ops(), hidden, output, cost, targets, optimizer,
                                      np.random.default_rng(2), dtype="float64")
    net, history = _trained("numba", hidden, output, cost, targets, optimizer, np.random.default_rng(2),
                            dtype="float64")
    assert reference.training_path.startswith("eager: the NumPy reference")
    assert net.training_path == "compiled"
    np.testing.assert_allclose(net.parameters(), reference.parameters(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(history["loss"], ref_history["loss"], rtol=1e-9)


@pytest.mark.parametrize("batch", [150, 32])
def test_large_layers_compile_within_float_tolerance(rng, batch):
    """Matmuls above cpu_kernels.SMALL_MATMUL go to NumPy's BLAS in the eager loop and to SciPy's here (at
    batch 32 as zᵀ = W aᵀ)."""
    X = rng.random((300, 300), dtype=np.float32)
    labels = rng.integers(0, 10, 300)
    nets = []
    for compiled in (False, True):
        net = gpubp.Network([300, 400, 10], activation="relu", output="softmax", cost="log_likelihood",
                            device=get_ops("cpu", cpu_backend="numba"), seed=0)
        assert batch * 300 * 400 > cpu_kernels.SMALL_MATMUL
        net.fit(X, labels, epochs=2, batch_size=batch, lr=0.01, optimizer="adam", seed=0, progress=False,
                compiled=compiled)
        nets.append(net)
    np.testing.assert_allclose(nets[1].parameters(), nets[0].parameters(), rtol=1e-4, atol=1e-5)


class HalfSquares(Cost):
    """½‖a − y‖² written by a user: no kernel id, so no compiled steps."""

    name = "half_squares"

    def fn(self, a, y):
        return 0.5 * ((a - y) ** 2).sum(axis=-1)

    def derivative(self, a, y):
        return a - y


@pytest.mark.parametrize("case,reason", [
    ("weights", "eager: sample_weight"), ("cost", "eager: the cost"), ("numpy", "eager: the NumPy reference"),
    ("off", "eager: compiled=False")])
def test_what_is_not_covered_runs_step_by_step_and_says_why(case, reason, rng):
    X, labels, onehot = _data(rng)
    backend = Ops() if case == "numpy" else get_ops("cpu", cpu_backend="numba")
    net = gpubp.Network([7, 5, 4], cost=HalfSquares() if case == "cost" else "quadratic", device=backend, seed=0)
    net.fit(X, onehot, epochs=1, batch_size=10, lr=0.1, progress=False, compiled=False if case == "off" else None,
            sample_weight=np.ones(len(X)) if case == "weights" else None)
    assert net.training_path.startswith(reason)


def test_compiled_true_refuses_what_it_cannot_compile_before_anything_changes(rng):
    X, labels, onehot = _data(rng)
    net = gpubp.Network([7, 5, 4], device=get_ops("cpu", cpu_backend="numba"), seed=0)
    net.fit(X, onehot, epochs=1, batch_size=10, lr=0.1, optimizer="adam", progress=False)
    before, optimizer = _state(net), net.optimizer
    with pytest.raises(ValueError, match="compiled=True, but this fit cannot run compiled: sample_weight"):
        net.fit(X, onehot, epochs=1, batch_size=10, lr=0.1, optimizer="sgd", sample_weight=np.ones(len(X)),
                compiled=True)
    assert net.optimizer is optimizer
    for a, b in zip(before, _state(net)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="compiled must be None"):
        net.fit(X, onehot, epochs=1, batch_size=10, lr=0.1, compiled="yes")
    net.fit(X, onehot, epochs=1, batch_size=10, lr=0.1, compiled=True, progress=False)
    assert net.training_path == "compiled"


def test_ctrl_c_before_an_epoch_finishes_one_batch_as_the_eager_loop(rng):
    X, labels, _ = _data(rng, n=40)
    net = gpubp.Network([7, 5, 4], device=get_ops("cpu", cpu_backend="numba"), seed=0)

    def interrupt(n, epoch, logs):
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="interrupted in epoch 2 after 8 of 40"):
        net.fit(X, labels, epochs=5, batch_size=8, lr=0.5, progress=False, callbacks=[interrupt])
    assert net.training_path == "compiled" and len(net.history["loss"]) == 2


def test_chunks_aim_at_a_tenth_of_a_second():
    assert _next_chunk(10, CHUNK_SECONDS, 1) == 10
    assert _next_chunk(10, CHUNK_SECONDS / 2, 1) == 20
    assert _next_chunk(10, 1e-9, 1) == 80  # at most 8× at once
    assert _next_chunk(64, 100.0, 1) == 8  # a slow (compiling) chunk: at most 8× smaller
    assert _next_chunk(1, 100.0, 1) == 1
    assert _next_chunk(10, CHUNK_SECONDS / 2, 8) == 16  # a multiple of the granule, at least one
    assert _next_chunk(3, 100.0, 8) == 8


@pytest.mark.skipif(not cpu_kernels.X86, reason="FTZ/DAZ are x86's; elsewhere subnormals stay")
def test_the_chunk_flushes_subnormals_only_while_it_runs(rng):
    """Adam's decaying moments turn subnormal, which costs x86 a microcode assist per operation (a 2.6×
    slower step): the chunk flushes them to zero, as XLA does, and puts the thread's mode back after."""
    tiny = np.finfo(np.float32).tiny
    X, labels, _ = _data(rng)
    net = gpubp.Network([7, 5, 4], output="softmax", cost="log_likelihood",
                        device=get_ops("cpu", cpu_backend="numba"), seed=0)
    for compiled in (True, False):  # the step-by-step loop trains in the same mode
        net.fit(X, labels, epochs=1, batch_size=10, lr=0.1, optimizer="adam", progress=False, compiled=compiled)
        assert np.float32(tiny) * np.float32(0.5) > 0  # subnormal results are back after the fit


@pytest.mark.skipif(not cpu_kernels.X86, reason="FTZ/DAZ are x86's; elsewhere subnormals stay")
def test_the_fused_backend_trains_with_subnormals_flushed():
    ops = get_ops("cpu", cpu_backend="numba")
    tiny = np.array([np.finfo(np.float32).tiny], np.float32)
    with ops.training_floats():
        assert (tiny * np.float32(0.5))[0] == 0
    assert (tiny * np.float32(0.5))[0] > 0
    with Ops().training_floats():  # the reference keeps IEEE subnormals
        assert (tiny * np.float32(0.5))[0] > 0


def test_a_batch_size_beyond_the_data_trains_one_batch_without_sizing_buffers_by_it(rng):
    """batch_size 10⁹ on 103 samples: one batch of 103, as the eager loop (buffers sized by the data)."""
    X, labels, _ = _data(rng)
    nets = [gpubp.Network([7, 5, 4], output="softmax", cost="log_likelihood",
                          device=get_ops("cpu", cpu_backend="numba"), seed=0) for _ in range(2)]
    for net, compiled in zip(nets, (False, True)):
        net.fit(X, labels, epochs=2, batch_size=10 ** 9, lr=0.1, optimizer="adam", seed=1, progress=False,
                compiled=compiled)
    assert nets[1].optimizer.t == 2
    np.testing.assert_array_equal(nets[0].parameters(), nets[1].parameters())


def test_fortran_ordered_inputs_train_compiled(rng):
    X, labels, onehot = _data(rng)
    nets = [gpubp.Network([7, 5, 4], device=get_ops("cpu", cpu_backend="numba"), seed=0) for _ in range(2)]
    for net, data in zip(nets, (X, np.asfortranarray(X))):
        net.fit(data, np.asfortranarray(onehot), epochs=1, batch_size=10, lr=0.1, seed=1, progress=False)
    assert nets[1].training_path == "compiled"
    np.testing.assert_array_equal(nets[0].parameters(), nets[1].parameters())
