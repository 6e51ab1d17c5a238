"""Optimizer state lives on the network: a second fit continues the first, through save/load and to()."""

import numpy as np
import pytest

import gpubp

FIT = dict(batch_size=7, lr=0.05, weight_decay=1e-3, progress=False)


def make_net():
    return gpubp.Network([4, 6, 3], activation="tanh", output="softmax", cost="log_likelihood",
                         device="cpu", dtype="float64", seed=1)


@pytest.fixture
def data(rng):
    return rng.normal(size=(45, 4)), rng.integers(0, 3, 45)


def params(net):
    return np.array(net.parameters(), copy=True)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("save_between", [False, True])
def test_two_fits_equal_one_fit_of_the_summed_epochs(data, tmp_path, optimizer, save_between):
    X, y = data
    whole = make_net()
    history = whole.fit(X, y, epochs=5, optimizer=optimizer, seed=3, **FIT)
    split = make_net()
    first = split.fit(X, y, epochs=2, optimizer=optimizer, seed=3, **FIT)
    if save_between:
        split.save(tmp_path / "m.npz")
        split = gpubp.load(tmp_path / "m.npz", device="cpu")
    second = split.fit(X, y, epochs=3, optimizer=optimizer, **FIT)  # no seed: the shuffle continues
    np.testing.assert_array_equal(params(split), params(whole))
    assert first["loss"] + second["loss"] == history["loss"]
    assert split.optimizer.t == whole.optimizer.t == 5 * 7


def test_state_is_kept_and_hyperparameters_follow_the_new_call(data):
    X, y = data
    net = make_net()
    net.fit(X, y, epochs=1, optimizer="adam", **FIT)
    m = np.array(net.optimizer.m, copy=True)
    assert np.abs(m).sum() > 0 and net.optimizer.t == 7
    net.fit(X, y, epochs=1, optimizer="adam", batch_size=45, lr=0.5, progress=False)
    assert net.optimizer.t == 8 and net.optimizer.lr == 0.5 and net.optimizer.weight_decay == 0.0


def test_a_different_optimizer_starts_fresh(data):
    X, y = data
    net = make_net()
    net.fit(X, y, epochs=1, optimizer="momentum", **FIT)
    assert net.optimizer.name == "momentum" and np.abs(net.optimizer.velocity).sum() > 0
    net.fit(X, y, epochs=1, optimizer="sgd", **FIT)
    assert net.optimizer.name == "sgd" and net.optimizer.t == 7
    start = params(net)
    net.fit(X, y, epochs=1, optimizer="momentum", seed=1, **FIT)
    fresh = make_net()
    fresh.parameters()[...] = start
    fresh.fit(X, y, epochs=1, optimizer="momentum", seed=1, **FIT)
    np.testing.assert_array_equal(params(net), params(fresh))  # the first fit's velocity is gone
    assert net.optimizer.t == 7


def test_reset_optimizer_equals_a_fresh_network_with_the_same_parameters(data):
    X, y = data
    net = make_net()
    net.fit(X, y, epochs=2, optimizer="adam", seed=0, **FIT)
    copy = make_net()
    copy.parameters()[...] = net.parameters()
    net.reset_optimizer()
    assert net.optimizer is None
    net.fit(X, y, epochs=1, optimizer="adam", seed=4, **FIT)
    copy.fit(X, y, epochs=1, optimizer="adam", seed=4, **FIT)
    np.testing.assert_array_equal(params(net), params(copy))


def test_to_keeps_the_optimizer_state(data):
    X, y = data
    net, twin = make_net(), make_net()
    for n in (net, twin):
        n.fit(X, y, epochs=1, optimizer="momentum", seed=2, **FIT)
    net.to("cpu")
    assert net.optimizer.params is net.parameters()
    for n in (net, twin):
        n.fit(X, y, epochs=1, optimizer="momentum", **FIT)
    np.testing.assert_array_equal(params(net), params(twin))


def test_divergence_restores_parameters_and_optimizer_state(data):
    X, y = data
    net = gpubp.Network([4, 32, 3], activation="relu", output="identity", cost="quadratic", device="cpu",
                        seed=0)
    net.fit(X, y, epochs=1, optimizer="momentum", batch_size=8, lr=1e-3, progress=False)
    before, velocity, t = params(net), np.array(net.optimizer.velocity, copy=True), net.optimizer.t
    with pytest.raises(FloatingPointError, match="optimizer state were restored"):
        net.fit(X * 1e6, y, epochs=3, optimizer="momentum", batch_size=8, lr=10.0, progress=False)
    np.testing.assert_array_equal(params(net), before)
    np.testing.assert_array_equal(net.optimizer.velocity, velocity)
    assert net.optimizer.t == t


def test_saved_state_round_trips_and_version_1_files_still_load(data, tmp_path):
    X, y = data
    net = make_net()
    net.metadata["task"] = "classification"
    net.fit(X, y, epochs=1, optimizer="adam", **FIT)
    net.save(tmp_path / "m.npz")
    loaded = gpubp.load(tmp_path / "m.npz", device="cpu")
    assert loaded.optimizer.name == "adam" and loaded.optimizer.t == net.optimizer.t
    np.testing.assert_array_equal(loaded.optimizer.v, net.optimizer.v)
    assert loaded.metadata == {"task": "classification"}
    with np.load(tmp_path / "m.npz") as f:
        v1 = {k: f[k] for k in ("format", "sizes", "activation", "output", "cost", "builtin_cost", "dtype",
                                 "params")}
    np.savez(tmp_path / "v1.npz", format_version=np.array(1), **v1)
    old = gpubp.load(tmp_path / "v1.npz", device="cpu")
    assert old.optimizer is None and old.metadata == {}
    np.testing.assert_array_equal(old.forward(X), net.forward(X))


@pytest.mark.parametrize("damage", ["nan", "shape", "negative_t", "unknown_name", "rng", "metadata"])
def test_damaged_training_state_is_a_value_error(data, tmp_path, damage):
    X, y = data
    net = make_net()
    net.fit(X, y, epochs=1, optimizer="adam", **FIT)
    net.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as f:
        fields = dict(f)
    if damage == "nan":
        fields["optimizer.m"][0] = np.nan
    elif damage == "shape":
        fields["optimizer.v"] = fields["optimizer.v"][:-1]
    elif damage == "negative_t":
        fields["optimizer.t"] = np.array(-1)
    elif damage == "unknown_name":
        fields["optimizer"] = np.array("rmsprop")
    elif damage == "rng":
        fields["shuffle_rng"] = np.array('{"bit_generator": "PCG64", "state": 3}')
    else:
        fields["metadata"] = np.array("[1, 2")
    np.savez(tmp_path / "bad.npz", **fields)
    with pytest.raises(ValueError, match="bad.npz"):
        gpubp.load(tmp_path / "bad.npz", device="cpu")
