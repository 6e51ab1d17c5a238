"""One model state: ``Network.state()`` / ``from_state`` / ``load_state`` and the model file (format version 3)
keep everything a network is (optimizer settings and history included), so that a saved, reloaded, moved or
rebuilt network trains on exactly as the original; older files still load; damaged fields name the file."""

import math

import numpy as np
import pytest

import gpubp
from gpubp.backend import get_ops
from gpubp.model_state import ModelState
from gpubp.optimizers import OPTIMIZERS

from states import same_state

FIT = dict(batch_size=7, lr=0.05, weight_decay=1e-3, progress=False)


def make_net(device="cpu"):
    return gpubp.Network([4, 6, 3], activation="tanh", output="softmax", cost="log_likelihood",
                         device=device, dtype="float64", seed=1)


@pytest.fixture
def data(rng):
    return rng.normal(size=(45, 4)), rng.integers(0, 3, 45)


def trained(data, optimizer="adam", **settings):
    """A network after two epochs with ``optimizer``, whose ``settings`` are then changed."""
    net = make_net()
    net.metadata["task"] = "classification"
    net.fit(*data, epochs=2, optimizer=optimizer, seed=3, **FIT)
    net.optimizer.configure(**settings)
    return net


def saved_fields(net, path):
    net.save(path)
    with np.load(path) as f:
        return dict(f)


@pytest.mark.parametrize("optimizer, settings", [
    ("sgd", {}), ("momentum", {"decay_per_sample": True}), ("nesterov", {}), ("adam", {}),
    ("adam", {"beta1": 0.7, "beta2": 0.99, "eps": 1e-4, "eps_on_corrected_v": False})])
def test_save_and_load_continue_fit_bitwise(data, tmp_path, optimizer, settings):
    whole = trained(data, optimizer, **settings)
    split = trained(data, optimizer, **settings)
    split.save(tmp_path / "m.npz")
    loaded = gpubp.load(tmp_path / "m.npz", device="cpu")
    assert loaded.optimizer.settings() == whole.optimizer.settings()
    assert loaded.history == whole.history and len(loaded.history["loss"]) == 2
    assert same_state(loaded.state(), whole.state())
    for net in (whole, loaded):
        net.fit(*data, epochs=3, optimizer=optimizer, **FIT)  # no seed: the shuffle continues
    np.testing.assert_array_equal(loaded.parameters(), whole.parameters())
    assert loaded.history == whole.history and loaded.optimizer.t == whole.optimizer.t == 5 * 7


def test_the_settings_matter_to_the_continued_fit(data):
    """The check above can fail: Adam with its default settings continues differently."""
    changed, default = trained(data, beta1=0.7, eps=1e-4), trained(data)
    for net in (changed, default):
        net.fit(*data, epochs=1, optimizer="adam", **FIT)
    assert not np.array_equal(changed.parameters(), default.parameters())


def test_history_with_nan_and_infinity_round_trips_exactly(data, tmp_path):
    net = trained(data)
    net.history = {"loss": [0.5, math.nan, math.inf], "val_loss": [-math.inf, 1e-308, 0.1 + 0.2], "none": []}
    net.save(tmp_path / "m.npz")
    loaded = gpubp.load(tmp_path / "m.npz", device="cpu").history
    assert loaded.keys() == net.history.keys() and loaded["val_loss"] == net.history["val_loss"]
    assert loaded["loss"][0] == 0.5 and math.isnan(loaded["loss"][1]) and loaded["loss"][2] == math.inf
    assert loaded["none"] == []


@pytest.mark.parametrize("history, key", [({"loss": ["a"]}, "loss"), ({"loss": [True]}, "loss"),
                                          ({1: [1.0]}, "1"), ({"loss": 3.0}, "loss")])
def test_a_history_that_is_not_lists_of_numbers_cannot_be_saved(data, tmp_path, history, key):
    net = trained(data)
    net.history = history
    with pytest.raises(ValueError, match=f"history\\[.?{key}.?\\] cannot be saved"):
        net.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_state_is_a_snapshot_and_from_state_rebuilds_it(data, cpu_backend):
    net = trained(data, beta1=0.8)
    state = net.state()
    assert isinstance(state, ModelState) and state.description() == net.description()
    assert state.optimizer.settings["beta1"] == 0.8 and state.optimizer.t == 14
    twin = gpubp.Network.from_state(state, device="cpu")
    assert same_state(twin.state(), state) and twin.ops.name == net.ops.name
    net.parameters()[...] = 0  # the state holds copies
    net.optimizer.m[...] = 0
    net.history["loss"].append(1.0)
    net.metadata["task"] = "regression"
    assert same_state(twin.state(), state)


@pytest.mark.parametrize("source, target", [("numba", "numpy"), ("numpy", "numba")])
def test_from_state_across_cpu_backends_trains_on_identically(data, source, target):
    pytest.importorskip("numba")
    net = gpubp.Network.from_state(trained(data).state(), device=get_ops("cpu", cpu_backend=source))
    twin = gpubp.Network.from_state(net.state(), device=get_ops("cpu", cpu_backend=target))
    assert (net.ops.name, twin.ops.name) == (source, target) and same_state(twin.state(), net.state())
    for n in (net, twin):
        n.fit(*data, epochs=1, optimizer="adam", **FIT)
    np.testing.assert_allclose(twin.parameters(), net.parameters(), rtol=1e-12, atol=1e-14)


def test_load_state_restores_in_place_and_refuses_another_model(data):
    net = trained(data, eps=1e-3)
    state = net.state()
    other = make_net()
    weights = other.weights[0]
    other.load_state(state)
    assert same_state(other.state(), state) and other.weights[0] is weights  # the same buffers, refilled
    wider = gpubp.Network([4, 7, 3], activation="relu", output="softmax", cost="log_likelihood",
                          device="cpu", dtype="float64", seed=1)
    before = wider.state()
    with pytest.raises(ValueError, match=r"sizes \[4, 6, 3\] there, \[4, 7, 3\] here; activation 'tanh' "
                                         r"there, 'relu' here"):
        wider.load_state(state)
    assert same_state(wider.state(), before)


def test_load_state_without_optimizer_or_shuffle_state_drops_them(data):
    net = trained(data)
    fresh = make_net().state()
    net.load_state(fresh)
    assert net.optimizer is None and net.shuffle_rng is None and net.history == {} and net.metadata == {}


def test_to_keeps_every_setting(data):
    net, twin = trained(data, beta1=0.6), trained(data, beta1=0.6)
    net.to("cpu")
    assert net.optimizer.settings() == twin.optimizer.settings() and net.optimizer.params is net.parameters()
    for n in (net, twin):
        n.fit(*data, epochs=1, optimizer="adam", **FIT)
    np.testing.assert_array_equal(net.parameters(), twin.parameters())


def test_a_user_defined_cost_stays_an_object_in_the_state(rng):
    cost = gpubp.CustomCost(lambda a, y: (a * a).sum(axis=1), lambda a, y: 2 * a, needs_target=False,
                            name="sum_of_squares")
    net = gpubp.Network([3, 2], cost=cost, device="cpu", seed=0)
    state = net.state()
    assert state.cost is cost and state.description()["cost"] == "sum_of_squares"
    assert gpubp.Network.from_state(state, device="cpu").cost is cost
    assert make_net().state().cost == "log_likelihood"


def test_version_2_files_load_with_default_settings_and_no_history(data, tmp_path):
    net = trained(data, beta1=0.5)
    fields = saved_fields(net, tmp_path / "m.npz")
    v2 = {k: v for k, v in fields.items() if k != "optimizer_settings" and not k.startswith("history.")}
    np.savez(tmp_path / "v2.npz", **{**v2, "format_version": np.array(2)})
    loaded = gpubp.load(tmp_path / "v2.npz", device="cpu")
    assert loaded.optimizer.settings() == OPTIMIZERS["adam"].defaults and loaded.history == {}
    state, original = loaded.state(), net.state()
    np.testing.assert_array_equal(state.params, original.params)
    assert state.optimizer.t == original.optimizer.t and state.shuffle == original.shuffle
    np.testing.assert_array_equal(state.optimizer.buffers["v"], original.optimizer.buffers["v"])


@pytest.mark.parametrize("field, value, message", [
    ("optimizer_settings", "{\"lr\": 0.1", "field 'optimizer_settings' is not JSON"),
    ("optimizer_settings", "[0.1]", "field 'optimizer_settings' is not a JSON object"),
    ("optimizer_settings", "{\"gamma\": 0.5}", "field 'optimizer_settings': the adam optimizer has no "
                                               "setting 'gamma'"),
    ("optimizer_settings", "{\"lr\": [0.1]}", "field 'optimizer_settings': lr must be a finite number"),
    ("optimizer_settings", "{\"lr\": null}", "field 'optimizer_settings': lr must be a finite number"),
    ("optimizer_settings", "{\"lr_schedule\": \"cosine\"}", "lr_schedule must be one of constant"),
    ("optimizer_settings", np.array([1.0]), "field 'optimizer_settings' is not a text value"),
    ("history.loss", np.array(["a", "b"]), "field 'history.loss' is not a vector of float64 values"),
    ("history.loss", np.zeros((2, 2)), "field 'history.loss' is not a vector of float64 values"),
    ("history.loss", np.array([1, 2]), "field 'history.loss' is not a vector of float64 values"),
    ("optimizer.t", np.array(1.5), "field 'optimizer.t' is not a step count"),
    ("optimizer.m", None, "field 'optimizer.m' is missing"),
])
def test_damaged_version_3_fields_name_the_file_and_the_field(data, tmp_path, field, value, message):
    fields = saved_fields(trained(data), tmp_path / "m.npz")
    if value is None:
        del fields[field]
    else:
        fields[field] = np.asarray(value)
    np.savez(tmp_path / "bad.npz", **fields)
    with pytest.raises(ValueError, match=f"bad.npz.*{message}"):
        gpubp.load(tmp_path / "bad.npz", device="cpu")


def test_settings_are_finite_and_metadata_must_be_json(data, tmp_path):
    net = trained(data)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        net.optimizer.configure(lr=math.inf)
    net.optimizer.lr = math.inf  # set behind configure's back: refused on saving, the old file kept
    with pytest.raises(ValueError, match="optimizer_settings cannot be saved as JSON"):
        net.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
    net.optimizer.lr = 0.1
    net.metadata["when"] = object()
    with pytest.raises(ValueError, match="metadata cannot be saved as JSON"):
        net.save(tmp_path / "m.npz")


@pytest.mark.parametrize("mutate, error, message", [
    (lambda st: setattr(st, "params", st.params[:-1]), ValueError, "parameters have shape"),
    (lambda st: setattr(st, "params", st.params.reshape(1, -1)), ValueError, "parameters have shape"),
    (lambda st: st.params.__setitem__(0, np.nan), ValueError, "must be finite floats"),
    (lambda st: setattr(st, "params", st.params.astype(np.int64)), ValueError, "must be finite floats"),
    (lambda st: setattr(st, "activation", "nope"), ValueError, "unknown activation 'nope'"),
])
def test_from_state_and_load_state_refuse_a_bad_state(mutate, error, message):
    net = make_net()
    before = net.parameters().copy()
    state = net.state()
    mutate(state)
    with pytest.raises(error, match=message):
        gpubp.Network.from_state(state, device="cpu")
    with pytest.raises(error, match=message if "activation" not in message else "another model"):
        net.load_state(state)
    np.testing.assert_array_equal(net.parameters(), before)


def test_from_state_wants_a_model_state():
    with pytest.raises(TypeError, match="expected a gpubp.ModelState"):
        gpubp.Network.from_state({"sizes": [2, 1]})
    with pytest.raises(TypeError, match="expected a gpubp.ModelState"):
        make_net().load_state(None)
