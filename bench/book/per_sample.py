"""The baseline of the book's chapter 1: backpropagation one sample at a time, written from the equations.

"Neural Networks and Deep Learning" (Nielsen) trains its first network with a loop that runs BP1–BP4 on each
sample of a mini-batch separately, as column vectors (784, 1), adds the per-sample gradients, then takes one
gradient-descent step. This module is our own implementation of that algorithm, with the same cost profile:
float64, parameters drawn from N(0, 1), a Python loop over samples, per-sample gradients summed in Python
lists, σ′(z) = σ(z)(1 − σ(z)) evaluated from z, quadratic cost. It is the "per-sample loop" that gpubp's
mini-batch matrices are measured against (``bench/nielsen_compare.py``).
"""

from __future__ import annotations

import random

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z: np.ndarray) -> np.ndarray:
    return sigmoid(z) * (1.0 - sigmoid(z))


class Network:
    """Sigmoid layers of widths ``sizes``; ``weights[l]`` (n_out, n_in), ``biases[l]`` (n_out, 1)."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = list(sizes)
        self.weights = [np.random.randn(n_out, n_in) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        self.biases = [np.random.randn(n_out, 1) for n_out in sizes[1:]]

    def feedforward(self, a: np.ndarray) -> np.ndarray:
        for W, b in zip(self.weights, self.biases):
            a = sigmoid(W @ a + b)
        return a

    def SGD(self, training_data, epochs: int, mini_batch_size: int, eta: float, test_data=None) -> None:
        """Shuffle, cut into mini-batches, one step per mini-batch; ``training_data`` holds (x, y) columns."""
        samples = list(training_data)
        for epoch in range(epochs):
            random.shuffle(samples)
            for start in range(0, len(samples), mini_batch_size):
                self.update_mini_batch(samples[start:start + mini_batch_size], eta)
            if test_data:
                print(f"epoch {epoch}: {self.evaluate(test_data)} / {len(test_data)}")

    def update_mini_batch(self, mini_batch, eta: float) -> None:
        """w ← w − (η/m) Σₓ ∂Cₓ/∂w and b ← b − (η/m) Σₓ ∂Cₓ/∂b, the sums taken sample by sample."""
        sum_w = [np.zeros_like(W) for W in self.weights]
        sum_b = [np.zeros_like(b) for b in self.biases]
        for x, y in mini_batch:
            grad_w, grad_b = self.backprop(x, y)
            sum_w = [s + g for s, g in zip(sum_w, grad_w)]
            sum_b = [s + g for s, g in zip(sum_b, grad_b)]
        step = eta / len(mini_batch)
        self.weights = [W - step * s for W, s in zip(self.weights, sum_w)]
        self.biases = [b - step * s for b, s in zip(self.biases, sum_b)]

    def backprop(self, x: np.ndarray, y: np.ndarray) -> tuple[list, list]:
        """(∂Cₓ/∂W per layer, ∂Cₓ/∂b per layer) for one sample, by BP1–BP4."""
        zs, activations = [], [x]
        for W, b in zip(self.weights, self.biases):
            zs.append(W @ activations[-1] + b)
            activations.append(sigmoid(zs[-1]))
        grad_w = [None] * len(self.weights)
        grad_b = [None] * len(self.biases)
        delta = (activations[-1] - y) * sigmoid_prime(zs[-1])                     # BP1
        for l in range(len(self.weights) - 1, -1, -1):
            grad_b[l] = delta                                                     # BP3
            grad_w[l] = delta @ activations[l].T                                  # BP4
            if l > 0:
                delta = (self.weights[l].T @ delta) * sigmoid_prime(zs[l - 1])   # BP2
        return grad_w, grad_b

    def evaluate(self, test_data) -> int:
        """How many (x, label) pairs are classified correctly (argmax of the output)."""
        return sum(int(np.argmax(self.feedforward(x)) == label) for x, label in test_data)
