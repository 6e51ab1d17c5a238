"""The benchmark networks S, M and L (fp32, from the core issue), and the synthetic data they train on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Config:
    """One benchmark network: sizes, activations, cost, mini-batch size and learning rate."""

    name: str
    sizes: tuple[int, ...]
    activation: str
    output: str
    cost: str
    batch_size: int
    lr: float


CONFIGS: dict[str, Config] = {
    "S": Config("S", (784, 30, 10), "sigmoid", "sigmoid", "quadratic", 10, 3.0),
    "M": Config("M", (784, 1024, 1024, 10), "relu", "softmax", "log_likelihood", 256, 0.01),
    "L": Config("L", (784, 4096, 4096, 10), "relu", "softmax", "log_likelihood", 1024, 0.01),
}


def get_config(name: str | Config) -> Config:
    """The config called ``name`` ("S", "M" or "L"); ValueError otherwise."""
    if isinstance(name, Config):
        return name
    key = str(name).upper()
    if key not in CONFIGS:
        raise ValueError(f"unknown benchmark config {name!r}; valid names: {', '.join(CONFIGS)}")
    return CONFIGS[key]


def synthetic_data(config: Config, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` inputs uniform in [0, 1) (float32, like scaled pixels) and integer labels in [0, k)."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, config.sizes[0]), dtype=np.float32)
    labels = rng.integers(0, config.sizes[-1], size=n)
    return X, labels


def one_hot(labels: np.ndarray, k: int, dtype: Any = np.float32) -> np.ndarray:
    """Rows eᵧ: the float targets the textbook loop trains on."""
    Y = np.zeros((len(labels), k), dtype=dtype)
    Y[np.arange(len(labels)), labels] = 1.0
    return Y
