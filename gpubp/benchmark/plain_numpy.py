"""``PlainNumpyNet``: the baseline a user writes from the book, forward, BP1–BP4 and the SGD update in plain
NumPy, allocating fresh arrays as it goes."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _sigmoid_prime(z: np.ndarray) -> np.ndarray:
    s = _sigmoid(z)
    return s * (1.0 - s)


def _relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


def _relu_prime(z: np.ndarray) -> np.ndarray:
    return (z > 0).astype(z.dtype)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


_HIDDEN = {"sigmoid": (_sigmoid, _sigmoid_prime), "relu": (_relu, _relu_prime)}


class PlainNumpyNet:
    """Mini-batch backpropagation written out by hand in NumPy: the baseline gpubp must beat.

    Rows are samples, so zˡ = aˡ⁻¹ Wˡᵀ + bˡ. Supports the benchmark pairs only: sigmoid + quadratic
    (δᴸ = (aᴸ − y) ⊙ σ′(zᴸ)), and relu hidden layers with softmax + log-likelihood (δᴸ = aᴸ − y).
    """

    def __init__(self, weights: Sequence[Any], biases: Sequence[Any], activation: str, output: str,
                 cost: str) -> None:
        pairs = {("sigmoid", "quadratic"), ("softmax", "log_likelihood")}
        if activation not in _HIDDEN or (output, cost) not in pairs:
            raise ValueError(f"PlainNumpyNet supports hidden {sorted(_HIDDEN)} with output/cost "
                             f"{sorted(pairs)}; got {activation!r}, {output!r}/{cost!r}")
        self.weights = [np.array(w) for w in weights]
        self.biases = [np.array(b) for b in biases]
        self.sigma, self.sigma_prime = _HIDDEN[activation]
        self.output, self.cost = output, cost

    def feedforward(self, X: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(zs, activations) for every layer; activations[0] is X."""
        zs, activations = [], [X]
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = activations[-1] @ w.T + b
            zs.append(z)
            last = l == len(self.weights) - 1
            if last and self.output == "softmax":
                activations.append(_softmax(z))
            elif last:
                activations.append(_sigmoid(z))
            else:
                activations.append(self.sigma(z))
        return zs, activations

    def backprop(self, X: np.ndarray, Y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Σₓ ∂Cₓ/∂W and Σₓ ∂Cₓ/∂b over the batch by BP1–BP4 (Y: one-hot targets)."""
        zs, activations = self.feedforward(X)
        if self.cost == "quadratic":
            delta = (activations[-1] - Y) * _sigmoid_prime(zs[-1])   # BP1
        else:
            delta = activations[-1] - Y                              # BP1, softmax + log-likelihood
        nabla_w = [None] * len(self.weights)
        nabla_b = [None] * len(self.weights)
        nabla_b[-1] = delta.sum(axis=0)                              # BP3
        nabla_w[-1] = delta.T @ activations[-2]                      # BP4
        for l in range(2, len(self.weights) + 1):
            delta = (delta @ self.weights[-l + 1]) * self.sigma_prime(zs[-l])   # BP2
            nabla_b[-l] = delta.sum(axis=0)
            nabla_w[-l] = delta.T @ activations[-l - 1]
        return nabla_w, nabla_b

    def step(self, X: np.ndarray, Y: np.ndarray, lr: float) -> None:
        """One SGD step on the batch mean: w ← w − (η/m) Σₓ ∂Cₓ/∂w, likewise b."""
        nabla_w, nabla_b = self.backprop(X, Y)
        scale = lr / len(X)
        self.weights = [w - scale * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - scale * nb for b, nb in zip(self.biases, nabla_b)]

    def train_epoch(self, X: np.ndarray, Y: np.ndarray, batch_size: int, lr: float,
                    rng: np.random.Generator) -> None:
        """One epoch over shuffled mini-batches."""
        order = rng.permutation(len(X))
        for k in range(0, len(X), batch_size):
            index = order[k:k + batch_size]
            self.step(X[index], Y[index], lr)
