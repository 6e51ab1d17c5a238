"""The benchmark is honest: its plain NumPy and PyTorch baselines compute the same training step as gpubp.

No timing is asserted here; ``bench/`` measures speed.
"""

import importlib.util
import statistics
from pathlib import Path

import numpy as np
import pytest

from gpubp.backend import numba_unavailable_reason
from gpubp.benchmark import (CONFIGS, Config, PlainNumpyNet, TorchTrainer, compare, format_table, gpubp_network,
                             one_hot, synthetic_data)
from gpubp.network import Network


# every test here runs on each CPU backend (tests/conftest.py): NumPy's Ops, then the fused Numba one
pytestmark = pytest.mark.usefixtures("cpu_backend")

NIELSEN = Path(__file__).resolve().parents[1] / "bench" / "book" / "per_sample.py"

# M's structure at a width that keeps the test fast; S is used as it is
M_SMALL = Config("M-small", (784, 64, 48, 10), "relu", "softmax", "log_likelihood", 32, 0.1)


def make_net(cfg: Config, dtype: str = "float32") -> Network:
    return Network(list(cfg.sizes), activation=cfg.activation, output=cfg.output, cost=cfg.cost,
                   device="cpu", dtype=dtype, seed=7)


def plain_copy(net: Network, cfg: Config) -> PlainNumpyNet:
    return PlainNumpyNet([np.array(w) for w in net.weights], [np.array(b) for b in net.biases],
                         cfg.activation, cfg.output, cfg.cost)


def assert_same_parameters(plain: PlainNumpyNet, net: Network, rtol: float, atol: float) -> None:
    for mine, theirs in zip(plain.weights + plain.biases, list(net.weights) + list(net.biases)):
        np.testing.assert_allclose(mine, theirs, rtol=rtol, atol=atol)


@pytest.mark.parametrize("cfg", [CONFIGS["S"], M_SMALL], ids=lambda c: c.name)
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_plain_numpy_steps_match_gpubp(cfg, dtype, tol):
    """Three SGD steps in order: PlainNumpyNet.step by hand vs net.fit without shuffling."""
    net = make_net(cfg, dtype)
    plain = plain_copy(net, cfg)
    start = [np.array(w) for w in net.weights]
    X, labels = synthetic_data(cfg, 3 * cfg.batch_size, seed=1)
    X = X.astype(dtype)
    Y = one_hot(labels, cfg.sizes[-1], dtype)
    for k in range(0, len(X), cfg.batch_size):
        plain.step(X[k:k + cfg.batch_size], Y[k:k + cfg.batch_size], cfg.lr)
    net.fit(X, labels, epochs=1, batch_size=cfg.batch_size, lr=cfg.lr, shuffle=False, progress=False)
    moved = max(np.abs(w - w0).max() for w, w0 in zip(plain.weights, start))
    assert moved > 100 * tol  # the steps changed the weights, so agreeing below means something
    assert_same_parameters(plain, net, rtol=tol, atol=tol)


def test_plain_numpy_backprop_is_the_summed_gradient():
    cfg = M_SMALL
    net = make_net(cfg, "float64")
    X, labels = synthetic_data(cfg, 5, seed=2)
    nabla_w, nabla_b = plain_copy(net, cfg).backprop(X.astype(np.float64), one_hot(labels, 10, np.float64))
    mean_w, mean_b = net.backprop(X.astype(np.float64), labels)
    for mine, theirs in zip(nabla_w + nabla_b, list(mean_w) + list(mean_b)):
        np.testing.assert_allclose(mine / len(X), theirs, rtol=1e-10, atol=1e-12)


def test_plain_numpy_copies_the_parameters():
    net = make_net(CONFIGS["S"])
    plain = plain_copy(net, CONFIGS["S"])
    before = np.array(net.weights[0])
    X, labels = synthetic_data(CONFIGS["S"], 10)
    plain.step(X, one_hot(labels, 10), 3.0)
    np.testing.assert_array_equal(net.weights[0], before)


@pytest.mark.parametrize("activation, output, cost", [("tanh", "sigmoid", "quadratic"),
                                                      ("relu", "sigmoid", "log_likelihood")])
def test_plain_numpy_rejects_other_pairs(activation, output, cost):
    with pytest.raises(ValueError, match="PlainNumpyNet supports"):
        PlainNumpyNet([np.zeros((2, 3))], [np.zeros(2)], activation, output, cost)


@pytest.mark.parametrize("cfg", [CONFIGS["S"], M_SMALL], ids=lambda c: c.name)
def test_torch_epoch_matches_plain_step(cfg):
    """One epoch over one batch in PyTorch eager is the plain step on that batch (order is irrelevant)."""
    pytest.importorskip("torch")
    net = make_net(cfg)
    plain = plain_copy(net, cfg)
    X, labels = synthetic_data(cfg, cfg.batch_size, seed=3)
    plain.step(X, one_hot(labels, 10), cfg.lr)
    trainer = TorchTrainer(net, cfg, X, labels, seed=0, device="cpu")
    trainer.run()
    for mine, layer in zip(plain.weights, trainer.layers):
        np.testing.assert_allclose(mine, layer.weight.detach().numpy(), rtol=1e-4, atol=1e-5)
    for mine, layer in zip(plain.biases, trainer.layers):
        np.testing.assert_allclose(mine, layer.bias.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_compare_gives_a_row_for_the_table():
    lines = []
    row = compare("s", device="cpu", samples=40, repeats=2, torch=False, log=lines.append)
    assert lines == ["S: 40 samples x 2 repeats on cpu: gpubp, numpy"]
    assert (row["config"], row["sizes"], row["batch_size"], row["device"]) == ("S", [784, 30, 10], 10, "cpu")
    assert len(row["gpubp_seconds"]) == len(row["numpy_seconds"]) == 2
    assert row["gpubp"] > 0 and row["numpy"] > 0 and row["gpubp/numpy"] > 0
    assert "torch" not in row
    assert "S" in format_table([row])


def test_compare_times_extra_contenders_in_turn():
    """``extra`` factories get the run's network, config and data, run between gpubp's epochs, and give a
    gpubp/<name> ratio: the median of their epoch time over gpubp's."""
    built = []

    class Fixed:
        name = "fixed"

        def __init__(self, net, config, X, labels, seed):
            built.append((config.name, X.shape, len(labels)))

        def run(self):
            return 2.0

    row = compare("S", device="cpu", samples=30, repeats=3, torch=False, numpy=False, extra=[Fixed])
    assert built == [("S", (30, 784), 30)]
    assert row["fixed_seconds"] == [2.0] * 3 and row["fixed"] == 15.0
    assert row["gpubp/fixed"] == pytest.approx(statistics.median(2.0 / g for g in row["gpubp_seconds"]))


@pytest.mark.skipif(numba_unavailable_reason() is not None, reason="needs both CPU backends")
def test_compare_runs_gpubp_on_the_cpu_backend_asked_for_without_touching_the_environment(cpu_backend,
                                                                                         environment_writes):
    """cpu_backend= picks the backend whatever env GPUBP_CPU_BACKEND (here: the fixture's) says; the network
    keeps the parameters of its seed."""
    other = "numba" if cpu_backend == "numpy" else "numpy"
    ran_on = []

    class Backend:
        name = "backend"

        def __init__(self, net, config, X, labels, seed):
            ran_on.append(net.ops.name)

        def run(self):
            return 1.0

    compare("S", device="cpu", samples=20, repeats=1, torch=False, numpy=False, extra=[Backend],
            cpu_backend=other)
    compare("S", device="cpu", samples=20, repeats=1, torch=False, numpy=False, extra=[Backend])
    assert ran_on == [other, cpu_backend]
    moved, default = gpubp_network(CONFIGS["S"], "cpu", 3, cpu_backend=other), gpubp_network(CONFIGS["S"], "cpu", 3)
    assert moved.ops.name == other and default.ops.name == cpu_backend
    np.testing.assert_array_equal(moved.parameters(), default.parameters())
    assert [name for name in environment_writes if name.startswith("GPUBP_")] == []


def test_compare_sizes_the_data_set_from_the_time_budget():
    row = compare("S", device="cpu", seconds=1e-6, repeats=1, torch=False)
    assert row["samples"] == 20  # the smallest data set: two mini-batches
    assert len(row["gpubp_seconds"]) == len(row["numpy_seconds"]) == 1


def test_compare_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown benchmark config 'XL'; valid names: S, M, L"):
        compare("XL", device="cpu")
    with pytest.raises(ValueError, match="repeats"):
        compare("S", device="cpu", repeats=0)
    with pytest.raises(ValueError, match="samples must be >= the batch size 10"):
        compare("S", device="cpu", samples=5, torch=False)


def test_format_table():
    rows = [
        {"config": "S", "sizes": [784, 30, 10], "batch_size": 10, "device": "cpu", "gpubp": 330311.4,
         "numpy": 297402.0, "gpubp/numpy": 1.1107, "torch": 63768.0, "gpubp/torch": 5.27},
        {"config": "L", "sizes": [784, 4096, 4096, 10], "batch_size": 1024, "device": "cuda",
         "gpubp": 1.5e6, "torch": 1.2e6, "gpubp/torch": 1.25},
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["config", "sizes", "batch", "device", "gpubp/s", "numpy/s", "gpubp/numpy",
                                "torch/s", "gpubp/torch"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["S", "784,30,10", "10", "cpu", "330,311", "297,402", "1.11x", "63,768",
                                "5.27x"]
    assert lines[3].split() == ["L", "784,4096,4096,10", "1024", "cuda", "1,500,000", "-", "-", "1,200,000",
                                "1.25x"]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule line up


def test_synthetic_data_and_one_hot():
    X, labels = synthetic_data(CONFIGS["S"], 50, seed=4)
    assert X.shape == (50, 784) and X.dtype == np.float32 and 0 <= X.min() and X.max() < 1
    assert labels.shape == (50,) and 0 <= labels.min() and labels.max() < 10
    Y = one_hot(labels, 10)
    np.testing.assert_array_equal(Y.argmax(axis=1), labels)
    np.testing.assert_array_equal(Y.sum(axis=1), 1.0)


@pytest.mark.skipif(not NIELSEN.exists(), reason="bench/ is not beside tests/ (installed package)")
def test_nielsen_port_takes_the_same_step_as_gpubp():
    """The book's per-sample loop (bench/book/per_sample.py) and gpubp agree on one mini-batch, in float64."""
    spec = importlib.util.spec_from_file_location("nielsen_network", NIELSEN)
    nielsen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nielsen)
    cfg = CONFIGS["S"]
    net = make_net(cfg, "float64")
    book = nielsen.Network(list(cfg.sizes))
    book.weights = [np.array(w) for w in net.weights]
    book.biases = [np.array(b).reshape(-1, 1) for b in net.biases]
    X, labels = synthetic_data(cfg, cfg.batch_size, seed=5)
    X = X.astype(np.float64)
    Y = one_hot(labels, 10, np.float64)
    book.update_mini_batch([(x.reshape(-1, 1), y.reshape(-1, 1)) for x, y in zip(X, Y)], cfg.lr)
    net.fit(X, labels, epochs=1, batch_size=cfg.batch_size, lr=cfg.lr, shuffle=False, progress=False)
    for mine, theirs in zip(book.weights + book.biases, list(net.weights) + list(net.biases)):
        np.testing.assert_allclose(mine.reshape(theirs.shape), theirs, rtol=1e-10, atol=1e-12)
