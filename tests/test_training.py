"""fit: learning, reproducibility, optimizers, history, divergence, interruption, allocation-free steps."""

import os
import signal
import tracemalloc

import numpy as np
import pytest

import gpubp


# every test here runs on each CPU backend (tests/conftest.py): NumPy's Ops, then the fused Numba one
pytestmark = pytest.mark.usefixtures("cpu_backend")

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
XOR_Y = np.array([0, 1, 1, 0])


def blobs(rng, n=300, k=3, width=4):
    centers = rng.normal(scale=3.0, size=(k, width))
    y = rng.integers(0, k, n)
    return centers[y] + rng.normal(size=(n, width)), y


@pytest.mark.parametrize("optimizer,lr", [("sgd", 2.0), ("momentum", 0.5), ("adam", 0.05)])
def test_learns_xor(optimizer, lr):
    net = gpubp.Network([2, 8, 1], activation="tanh", output="sigmoid", cost="cross_entropy",
                        device="cpu", seed=0)
    history = net.fit(XOR_X, XOR_Y, epochs=1500, batch_size=4, lr=lr, optimizer=optimizer, seed=0,
                      progress=False)
    np.testing.assert_array_equal(net.predict(XOR_X), XOR_Y)
    assert history["loss"][-1] < 0.1 * history["loss"][0]
    assert net.evaluate(XOR_X, XOR_Y)["accuracy"] == 1.0


def test_history_and_validation(rng):
    X, y = blobs(rng)
    net = gpubp.Network([4, 16, 3], activation="relu", output="softmax", cost="log_likelihood",
                        device="cpu", seed=1)
    history = net.fit(X[:200], y[:200], epochs=5, batch_size=16, lr=0.1, validation_data=(X[200:], y[200:]),
                      progress=False)
    assert set(history) == {"loss", "val_loss", "val_accuracy"}
    assert all(len(v) == 5 for v in history.values())
    assert history["val_accuracy"][-1] > 0.9
    assert net.history is history
    assert history["val_loss"][-1] == pytest.approx(net.loss(X[200:], y[200:]), rel=1e-5)
    assert "val_loss" not in net.fit(X, y, epochs=1, batch_size=16, lr=0.1, progress=False)


def test_epoch_loss_is_mean_of_batch_losses(rng):
    """With lr tiny the parameters barely move, so the epoch loss equals the loss before training."""
    X, y = blobs(rng, n=50)
    net = gpubp.Network([4, 5, 3], device="cpu", dtype="float64", seed=2)
    before = net.loss(X, y)
    history = net.fit(X, y, epochs=1, batch_size=7, lr=1e-12, progress=False)
    assert history["loss"][0] == pytest.approx(before, rel=1e-9)


def test_one_sgd_step_equals_backprop_update(rng):
    X, y = blobs(rng, n=12)
    net = gpubp.Network([4, 5, 3], device="cpu", dtype="float64", seed=3)
    nabla_w, nabla_b = net.backprop(X, y)
    expected = [w - 0.7 * g for w, g in zip(net.weights, nabla_w)] + \
               [b - 0.7 * g for b, g in zip(net.biases, nabla_b)]
    net.fit(X, y, epochs=1, batch_size=12, lr=0.7, shuffle=False, progress=False)
    for got, want in zip(list(net.weights) + list(net.biases), expected):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_weight_decay_is_l2_on_weights_only(rng):
    X, y = blobs(rng, n=8)
    net = gpubp.Network([4, 3], device="cpu", dtype="float64", seed=4)
    net.biases[0][...] = 0.3
    nabla_w, nabla_b = net.backprop(X, y)
    W, b = net.weights[0].copy(), net.biases[0].copy()
    net.fit(X, y, epochs=1, batch_size=8, lr=0.5, weight_decay=0.1, shuffle=False, progress=False)
    np.testing.assert_allclose(net.weights[0], W - 0.5 * (nabla_w[0] + 0.1 * W), rtol=1e-12)
    np.testing.assert_allclose(net.biases[0], b - 0.5 * nabla_b[0], rtol=1e-12)


def test_adam_and_momentum_steps_by_hand(rng):
    X, y = blobs(rng, n=8)
    for optimizer in ("momentum", "adam"):
        net = gpubp.Network([4, 3], device="cpu", dtype="float64", seed=5)
        theta = net.parameters().copy()
        g1 = np.concatenate([g.ravel() for g in sum(net.backprop(X, y), [])])
        net.fit(X, y, epochs=1, batch_size=8, lr=0.1, optimizer=optimizer, momentum=0.8, shuffle=False,
                progress=False)
        if optimizer == "momentum":
            want = theta - 0.1 * g1
        else:
            m, v = 0.1 * g1, 0.001 * g1 * g1
            want = theta - 0.1 * (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8)
        np.testing.assert_allclose(net.parameters(), want, rtol=1e-10)


def test_seeded_runs_are_reproducible(rng):
    X, y = blobs(rng, n=100)
    runs = []
    for _ in range(2):
        net = gpubp.Network([4, 6, 3], activation="tanh", output="softmax", cost="log_likelihood",
                            device="cpu", seed=9)
        runs.append((net.fit(X, y, epochs=3, batch_size=10, lr=0.3, seed=4, progress=False),
                     net.parameters().copy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    other = gpubp.Network([4, 6, 3], activation="tanh", output="softmax", cost="log_likelihood",
                          device="cpu", seed=9)
    other.fit(X, y, epochs=3, batch_size=10, lr=0.3, seed=5, progress=False)
    assert not np.array_equal(other.parameters(), runs[0][1])


def test_divergence_names_the_epoch_and_restores_parameters(rng):
    X, y = blobs(rng, n=64)
    net = gpubp.Network([4, 32, 3], activation="relu", output="identity", cost="quadratic",
                        device="cpu", seed=0)
    net.fit(X, y, epochs=1, batch_size=8, lr=1e-3, progress=False)
    good = net.parameters().copy()
    with pytest.raises(FloatingPointError, match=r"diverged in epoch 1.*restored.*end of epoch 0"):
        net.fit(X * 1e6, y, epochs=3, batch_size=8, lr=10.0, progress=False)
    np.testing.assert_array_equal(net.parameters(), good)


def test_callbacks_run_each_epoch_and_can_stop(rng):
    X, y = blobs(rng, n=40)
    net = gpubp.Network([4, 5, 3], device="cpu", seed=0)
    seen = []
    history = net.fit(X, y, epochs=10, batch_size=8, lr=0.5, progress=False,
                      callbacks=[lambda n, epoch, logs: seen.append((epoch, logs["loss"])) or epoch < 3])
    assert [e for e, _ in seen] == [1, 2, 3]
    assert len(history["loss"]) == 3


def test_ctrl_c_finishes_the_batch_then_raises(rng):
    X, y = blobs(rng, n=40)
    net = gpubp.Network([4, 5, 3], device="cpu", seed=0)

    def interrupt(n, epoch, logs):
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="interrupted in epoch 2 after 8 of 40"):
        net.fit(X, y, epochs=5, batch_size=8, lr=0.5, progress=False, callbacks=[interrupt])
    assert len(net.history["loss"]) == 2
    assert np.isfinite(net.parameters()).all()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_progress_lines_without_a_terminal(rng, capsys):
    X, y = blobs(rng, n=30)
    gpubp.Network([4, 3], device="cpu", seed=0).fit(X, y, epochs=2, batch_size=10, lr=0.1, progress=True)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "loss" in err


def test_zero_epochs_and_single_sample_batches(rng):
    X, y = blobs(rng, n=5)
    net = gpubp.Network([4, 3], device="cpu", seed=0)
    before = net.parameters().copy()
    assert net.fit(X, y, epochs=0, batch_size=1, lr=0.1, progress=False) == {"loss": []}
    np.testing.assert_array_equal(net.parameters(), before)
    net.fit(X, y, epochs=1, batch_size=1, lr=0.1, progress=False)
    assert not np.array_equal(net.parameters(), before)


@pytest.mark.parametrize("config", [
    ([784, 30, 10], "sigmoid", None, "quadratic", 2048),
    ([50, 40, 10], "relu", "softmax", "log_likelihood", 2048),
    ([20, 16, 10], "tanh", "sigmoid", "cross_entropy", 2048)])
def test_training_step_allocates_no_arrays(config, rng):
    """After the first batch a step makes no layer-sized temporaries. What NumPy allocates itself (its
    ufunc buffers of np.getbufsize() elements, (batch,)-sized label gathers) stays below the smallest
    layer buffer at this batch size."""
    sizes, activation, output, cost, batch = config
    net = gpubp.Network(sizes, activation=activation, output=output, cost=cost, device="cpu", seed=0)
    X = rng.random((batch * 4, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], len(X))
    net.fit(X, y, epochs=1, batch_size=batch, lr=0.1, progress=False)  # buffers exist from here on
    from gpubp.optimizers import make_optimizer

    opt = make_optimizer("sgd", net.ops, net.parameters(), net.n_weights, lr=0.1, momentum=0.9)
    target, loss_sum = y[:batch].astype(np.int64), np.zeros(1, np.float32)
    net.backprop_sum(X[:batch], target, loss_sum)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(4):
        net.backprop_sum(X[i * batch:(i + 1) * batch], target, loss_sum)
        opt.step(net.gradient(), 1.0 / batch)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    smallest_buffer = batch * min(sizes[1:]) * 4
    assert peak < smallest_buffer, f"a training step allocated {peak} bytes"


def test_fit_keeps_its_shuffle_buffers_for_the_next_fit_of_the_same_shapes(rng):
    X, y = blobs(rng, n=40)
    net = gpubp.Network([4, 5, 3], device="cpu", seed=0)
    net.fit(X, y, epochs=1, batch_size=8, lr=0.1, progress=False, compiled=False)  # compiled: no copy made

    def shuffle_buffers():  # for X and y (no sample weights)
        return net.shuffle_buffers(net.ops.asarray(X, dtype=net.dtype), net.check_targets(y, 40), None)[:2]

    buffers = shuffle_buffers()
    net.fit(X[::-1], y[::-1], epochs=1, batch_size=8, lr=0.1, progress=False, compiled=False)
    assert all(a is b for a, b in zip(shuffle_buffers(), buffers))
    net.fit(X[:20], y[:20], epochs=1, batch_size=8, lr=0.1, progress=False, compiled=False)  # new shapes
    again = shuffle_buffers()
    assert not any(a is b for a, b in zip(again, buffers))
    net.to("cpu")  # a move drops them
    assert not any(a is b for a, b in zip(shuffle_buffers(), again))


def test_on_divergence_continue_trains_through_nan_and_keeps_the_best_epoch(rng):
    """As scikit-learn's MLP: NaN epochs are recorded, training goes on, the stopping rule never takes a NaN
    epoch as its best, and restore_best ends on the last finite best."""
    X, y = blobs(rng, n=40)
    net = gpubp.Network([4, 5, 3], device="cpu", seed=0)
    with pytest.raises(ValueError, match="on_divergence must be"):
        net.fit(X, y, epochs=1, batch_size=8, lr=0.1, on_divergence="ignore")

    def blow_up(n, epoch, logs):  # from epoch 2 on the parameters are NaN
        if epoch == 1:
            n.parameters()[:] = np.nan

    history = net.fit(X, y, epochs=4, batch_size=8, lr=0.1, progress=False, callbacks=[blow_up], tol=1e-4,
                      n_iter_no_change=10, restore_best=True, on_divergence="continue")
    assert len(history["loss"]) == 4
    assert np.isfinite(history["loss"][0]) and np.isnan(history["loss"][1:]).all()
    assert np.isfinite(net.parameters()).all()  # the best epoch's (the first) parameters are back
    assert net.optimizer.best == history["loss"][0]
