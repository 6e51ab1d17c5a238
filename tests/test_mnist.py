"""The book's chapter-1 result in one epoch: [784, 30, 10] sigmoid, quadratic cost, η = 3, batch 10."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import gpubp
from gpubp.datasets import load_mnist

DATA = Path(os.environ.get("GPUBP_DATA", "/nonexistent"))

pytestmark = [
    pytest.mark.mnist,
    pytest.mark.skipif(not (DATA / "mnist" / "train-images-idx3-ubyte.gz").is_file(),
                       reason="MNIST not found: set GPUBP_DATA to a folder whose mnist/ holds the four "
                              "IDX .gz files"),
]


def test_one_epoch_of_the_books_network_reaches_90_percent():
    data = load_mnist(DATA)
    net = gpubp.Network([784, 30, 10], activation="sigmoid", cost="quadratic", seed=0)
    history = net.fit(*data.train, epochs=1, batch_size=10, lr=3.0, validation_data=data.validation,
                      progress=False, seed=0)
    assert history["val_accuracy"][0] >= 0.90
    assert net.evaluate(*data.test)["accuracy"] >= 0.90
