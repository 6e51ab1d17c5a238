"""save/load: identical outputs, no pickle, atomic writes, damaged files rejected with ValueError."""

import os
import pickle

import numpy as np
import pytest

import gpubp


# every test here runs on each CPU backend (tests/conftest.py): NumPy's Ops, then the fused Numba one
pytestmark = pytest.mark.usefixtures("cpu_backend")


@pytest.fixture
def trained(rng):
    net = gpubp.Network([5, 7, 3], activation="gelu", output="softmax", cost="log_likelihood",
                        device="cpu", dtype="float64", seed=3)
    X, y = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    net.fit(X, y, epochs=2, batch_size=8, lr=0.1, progress=False)
    return net, X


def test_round_trip_gives_identical_outputs(trained, tmp_path):
    net, X = trained
    path = tmp_path / "model.npz"
    net.save(path)
    loaded = gpubp.load(path, device="cpu")
    assert repr(loaded) == repr(net)
    np.testing.assert_array_equal(loaded.forward(X), net.forward(X))
    for a, b in zip(list(loaded.weights) + list(loaded.biases), list(net.weights) + list(net.biases)):
        np.testing.assert_array_equal(a, b)
    with np.load(path, allow_pickle=False) as data:
        assert int(data["format_version"]) == 3


def test_float32_round_trip(tmp_path, rng):
    net = gpubp.Network([4, 3], device="cpu", seed=0)
    net.save(str(tmp_path / "m.npz"))
    loaded = gpubp.load(str(tmp_path / "m.npz"))
    assert loaded.dtype == np.float32
    X = rng.normal(size=(3, 4))
    np.testing.assert_array_equal(loaded.forward(X), net.forward(X))


def test_save_replaces_atomically_and_leaves_no_temp_files(trained, tmp_path):
    net, _ = trained
    path = tmp_path / "model.npz"
    path.write_bytes(b"old contents")
    net.save(path)
    assert gpubp.load(path).sizes == [5, 7, 3]
    assert os.listdir(tmp_path) == ["model.npz"]


def test_failed_save_keeps_the_old_file(trained, tmp_path, monkeypatch):
    net, _ = trained
    path = tmp_path / "model.npz"
    net.save(path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        net.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]


def test_save_into_missing_folder(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trained[0].save(tmp_path / "nope" / "m.npz")


@pytest.mark.parametrize("damage", ["truncated", "random", "pickled", "empty", "foreign_npz",
                                    "wrong_count", "nan"])
def test_damaged_files_raise_value_error(trained, tmp_path, damage, rng):
    net, _ = trained
    good = tmp_path / "good.npz"
    net.save(good)
    bad = tmp_path / "bad.npz"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "random":
        bad.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "pickled":
        bad.write_bytes(pickle.dumps({"params": [1, 2, 3]}))
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        with np.load(good) as data:
            fields = dict(data)
        if damage == "foreign_npz":
            fields = {"x": np.arange(3)}
        elif damage == "wrong_count":
            fields["params"] = fields["params"][:-1]
        else:
            fields["params"] = fields["params"].copy()
            fields["params"][0] = np.nan
        np.savez(bad, **fields)
    with pytest.raises(ValueError):
        gpubp.load(bad)


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, format=np.array("gpubp-network"), params=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="not a readable gpubp model"):
        gpubp.load(path)


def test_path_is_used_as_given_and_load_finds_the_npz_suffix(trained, tmp_path):
    net, X = trained
    net.save(tmp_path / "plain")
    assert os.listdir(tmp_path) == ["plain"]
    np.testing.assert_array_equal(gpubp.load(tmp_path / "plain").forward(X), net.forward(X))
    net.save(tmp_path / "other.npz")
    np.testing.assert_array_equal(gpubp.load(str(tmp_path / "other")).forward(X), net.forward(X))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        gpubp.load(tmp_path / "absent.npz")


def test_custom_cost_must_be_given_again(tmp_path, rng):
    cost = gpubp.CustomCost(lambda a, y: (a * a).sum(axis=1), lambda a, y: 2 * a, needs_target=False,
                            name="sum_of_squares")
    net = gpubp.Network([3, 2], cost=cost, device="cpu", seed=0)
    net.save(tmp_path / "c.npz")
    with pytest.raises(ValueError, match="user-defined cost 'sum_of_squares'"):
        gpubp.load(tmp_path / "c.npz")
    loaded = gpubp.load(tmp_path / "c.npz", cost=cost)
    X = rng.normal(size=(4, 3))
    assert loaded.loss(X) == pytest.approx(net.loss(X))


def test_to_moves_and_returns_the_network(trained):
    net, X = trained
    before = net.forward(X)
    assert net.to("cpu") is net
    np.testing.assert_array_equal(net.forward(X), before)
