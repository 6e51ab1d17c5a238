"""Seeded fuzzing of the two file readers: every damaged model or checkpoint file either reads back equal to
the original or raises ValueError (never another exception from the zip or .npy parser)."""

from __future__ import annotations

import numpy as np
import pytest

import gpubp
from gpubp.checkpoint import read_checkpoint

from states import same_state

CASES = 600


def damaged(good: bytes, rng: np.random.Generator, case: int) -> bytes:
    """Case by case: bit flips (half of them in the zip directory, the last 15% of the file), a truncation,
    random bytes, or garbage spliced in or written over."""
    data = bytearray(good)
    kind = case % 6
    if kind <= 1:
        low = 0 if kind == 0 else int(0.85 * len(data))
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(low, len(data))] ^= 1 << int(rng.integers(8))
    elif kind == 2:
        data = data[:rng.integers(len(data))]
    elif kind == 3:
        data = bytearray(rng.bytes(int(rng.integers(0, 2 * len(good)))))
    elif kind == 4:
        at = rng.integers(len(data) + 1)
        data[at:at] = rng.bytes(int(rng.integers(1, 64)))
    else:
        at = rng.integers(len(data))
        data[at:at + 32] = rng.bytes(32)
    return bytes(data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    net = gpubp.Network([4, 5, 3], activation="relu", output="softmax", cost="log_likelihood", device="cpu",
                        dtype="float64", seed=1)
    net.metadata["classes"] = ["a", "b", "c"]
    net.fit(X, y, epochs=2, batch_size=8, lr=0.01, optimizer="adam", seed=2, progress=False,
            checkpoint=folder / "ckpt")
    net.save(folder / "model.npz")
    return net, folder


def test_load_of_damaged_model_files(trained, tmp_path):
    net, folder = trained
    good = (folder / "model.npz").read_bytes()
    rng = np.random.default_rng(1)
    outcomes = {"equal": 0, "ValueError": 0}
    for case in range(CASES):
        path = tmp_path / "m.npz"
        path.write_bytes(damaged(good, rng, case))
        try:
            loaded = gpubp.load(path, device="cpu")
        except ValueError:
            outcomes["ValueError"] += 1
            continue
        assert repr(loaded) == repr(net) and same_state(loaded.state(), net.state()), \
            f"case {case} loaded a different model"
        outcomes["equal"] += 1
    assert outcomes["ValueError"] > CASES // 2, outcomes


def test_read_checkpoint_of_damaged_files(trained):
    _, folder = trained
    path = folder / "ckpt" / "ckpt-000002.npz"
    good, original = path.read_bytes(), read_checkpoint(path)
    rng = np.random.default_rng(2)
    rejected = 0
    for case in range(CASES):
        try:
            got = read_checkpoint(damaged(good, rng, case), f"case {case}")
        except ValueError:
            rejected += 1
            continue
        assert (got.epoch, got.finished, got.run, got.run_id) == \
            (original.epoch, original.finished, original.run, original.run_id), case
        assert same_state(got.state, original.state), case
    assert rejected > CASES // 2
