"""Optimizers over the flat parameter buffer: each step is one backend call (one fused kernel on a GPU).

The gradient arrives as a SUM over the mini-batch; ``grad_scale`` (1/m) turns it into the mean gradient
∂C/∂θ of the mean cost. Weight decay is L2 on the weights only (C + λ/2 Σw², so ∇w += λw); the book's
"λ over n" is ``weight_decay = λ / n``.
"""

from __future__ import annotations

from typing import Any

from .backend import Ops

Array = Any


class Optimizer:
    """Holds the hyper-parameters and any state buffers shaped like the flat parameters."""

    name = ""

    def __init__(self, ops: Ops, params: Array, n_weights: int, lr: float, weight_decay: float) -> None:
        self.ops, self.params, self.n_weights = ops, params, n_weights
        self.lr, self.weight_decay = lr, weight_decay

    def step(self, grad: Array, grad_scale: float) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """w ← w − η ∂C/∂w."""

    name = "sgd"

    def step(self, grad, grad_scale):
        self.ops.sgd_update(self.params, grad, self.lr, grad_scale, self.weight_decay, self.n_weights)


class Momentum(Optimizer):
    """v ← μv − η ∂C/∂w; w ← w + v."""

    name = "momentum"

    def __init__(self, ops, params, n_weights, lr, weight_decay, momentum: float) -> None:
        super().__init__(ops, params, n_weights, lr, weight_decay)
        self.momentum = momentum
        self.velocity = ops.zeros(params.shape, params.dtype)

    def step(self, grad, grad_scale):
        self.ops.momentum_update(self.params, grad, self.velocity, self.lr, self.momentum, grad_scale,
                                 self.weight_decay, self.n_weights)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with β₁ = 0.9, β₂ = 0.999, ε = 1e-8 and bias correction."""

    name = "adam"
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def __init__(self, ops, params, n_weights, lr, weight_decay) -> None:
        super().__init__(ops, params, n_weights, lr, weight_decay)
        self.m = ops.zeros(params.shape, params.dtype)
        self.v = ops.zeros(params.shape, params.dtype)
        self.t = 0

    def step(self, grad, grad_scale):
        self.t += 1
        self.ops.adam_update(self.params, grad, self.m, self.v, self.lr, self.beta1, self.beta2,
                             self.eps, self.t, grad_scale, self.weight_decay, self.n_weights)


OPTIMIZERS = ("sgd", "momentum", "adam")


def optimizer_name(name: str) -> str:
    """``name`` normalised; ValueError listing the valid names for anything else."""
    key = name.lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")
    return key


def make_optimizer(name: str, ops: Ops, params: Array, n_weights: int, lr: float, momentum: float,
                   weight_decay: float) -> Optimizer:
    """The optimizer called ``name`` over ``params``."""
    key = optimizer_name(name)
    if key == "momentum":
        return Momentum(ops, params, n_weights, lr, weight_decay, momentum)
    if key == "adam":
        return Adam(ops, params, n_weights, lr, weight_decay)
    return SGD(ops, params, n_weights, lr, weight_decay)
