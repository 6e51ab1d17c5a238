"""Seeded initial parameters, drawn on the host so every device starts from the same numbers.

Weights of layer l are normal with mean 0 and a standard deviation chosen by the family of the layer's
activation (``Activation.init`` in gpubp/activations.py): He, √(2/nᵢₙ), for relu-like activations (relu,
leaky_relu, softplus, swish, gelu, mish, elu); LeCun, √(1/nᵢₙ), for selu, the normal initialisation that
keeps a self-normalising network's activations at mean 0 and variance 1 (Klambauer et al., as PyTorch
recommends for SELU); Xavier/Glorot, √(2/(nᵢₙ + nₒᵤₜ)), for the rest (sigmoid, tanh, identity, softmax, and
activations of your own). Biases start at 0. The draws come from ``numpy.random.default_rng(seed)``, layer by
layer, weights before biases, in float64, straight into the flat vector: its 8 bytes per parameter are all
that drawing allocates.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .activations import Activation

#: the weights' standard deviation of each initialisation family, from (nᵢₙ, nₒᵤₜ)
WEIGHT_STD: dict[str, Callable[[int, int], float]] = {
    "he": lambda n_in, n_out: math.sqrt(2.0 / n_in),
    "lecun": lambda n_in, n_out: math.sqrt(1.0 / n_in),
    "xavier": lambda n_in, n_out: math.sqrt(2.0 / (n_in + n_out)),
}


def weight_std(activation: Activation, n_in: int, n_out: int) -> float:
    """The standard deviation of a layer's initial weights, by its activation's ``init`` family."""
    family = WEIGHT_STD.get(activation.init)
    if family is None:
        raise ValueError(f"activation {activation.name!r} has init {activation.init!r}; valid: "
                         f"{', '.join(WEIGHT_STD)}")
    return family(n_in, n_out)


def parameter_count(sizes: Sequence[int]) -> int:
    """How many weights and biases a network of layer widths ``sizes`` has."""
    return sum(n_out * (n_in + 1) for n_in, n_out in zip(sizes[:-1], sizes[1:]))


def init_parameters(sizes: Sequence[int], activations: Sequence[Activation], seed: int | None) -> np.ndarray:
    """The flat float64 parameter vector: every layer's weights (row-major), then every layer's biases."""
    rng = np.random.default_rng(seed)
    flat = np.zeros(parameter_count(sizes))
    offset = 0
    for n_in, n_out, act in zip(sizes[:-1], sizes[1:], activations):
        weights = flat[offset:offset + n_out * n_in]
        rng.standard_normal(out=weights)  # the draws of rng.normal(0, std), scaled in place below
        weights *= weight_std(act, n_in, n_out)
        offset += n_out * n_in
    return flat
