"""Seeded initial parameters, drawn on the host so every device starts from the same numbers.

Weights of layer l are normal with mean 0 and a standard deviation that suits the layer's activation:
He, √(2/nᵢₙ), for relu-like activations (relu, leaky_relu, softplus, swish, gelu, mish), and Xavier/Glorot,
√(2/(nᵢₙ + nₒᵤₜ)), for the rest (sigmoid, tanh, identity, softmax). Biases start at 0. The draws come from
``numpy.random.default_rng(seed)``, layer by layer, weights before biases, in float64.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .activations import Activation

HE_ACTIVATIONS = {"relu", "leaky_relu", "softplus", "swish", "gelu", "mish"}


def weight_std(activation: Activation, n_in: int, n_out: int) -> float:
    """He for relu-like activations, Xavier otherwise."""
    if activation.name in HE_ACTIVATIONS:
        return float(np.sqrt(2.0 / n_in))
    return float(np.sqrt(2.0 / (n_in + n_out)))


def init_parameters(sizes: Sequence[int], activations: Sequence[Activation], seed: int | None) -> np.ndarray:
    """The flat float64 parameter vector: every layer's weights (row-major), then every layer's biases."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0.0, weight_std(act, n_in, n_out), size=(n_out, n_in)).ravel()
               for n_in, n_out, act in zip(sizes[:-1], sizes[1:], activations)]
    biases = [np.zeros(n_out) for n_out in sizes[1:]]
    return np.concatenate(weights + biases)
