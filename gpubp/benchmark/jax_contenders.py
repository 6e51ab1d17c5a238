"""gpubp's training step written in JAX, for ``bench/jax_compare.py``: a whole epoch compiled as one
``lax.scan`` (``ScanEpoch``), and one compiled step per mini-batch driven from Python (``StepEpoch``).

The maths is gpubp's: rows are samples, zˡ = aˡ⁻¹Wˡᵀ + bˡ with Wˡ shaped (out, in) as ``net.weights[l]``,
aˡ = σ(zˡ); the cost is the mean over the batch of ½‖aᴸ − y‖² (quadratic) or −log aᴸ_y (log-likelihood on
a softmax output); ``jax.grad`` of that mean gives what BP1–BP4 give, and the L2 term λW is added to the
weights' gradient only (gpubp's ``weight_decay``). Updates: SGD w ← w − η∇; Adam m ← β₁m + (1−β₁)∇,
v ← β₂v + (1−β₂)∇², w ← w − η m̂ / (√v̂ + ε) in gpubp's arrangement (``Ops.adam_update``). The epoch's loss is
the mean of the per-sample costs from the batches' forward passes, as ``fit``'s history.

Importing this module imports JAX (the ``bench`` extra).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu}


@dataclass(frozen=True)
class Recipe:
    """What is trained and how: the network, its cost, the optimizer and its hyper-parameters."""

    name: str
    sizes: tuple[int, ...]
    activation: str                 # hidden layers: "sigmoid" or "relu"
    output: str                     # "sigmoid", "relu" or "softmax"
    cost: str                       # "quadratic" or "log_likelihood" (softmax output)
    batch_size: int
    lr: float
    optimizer: str = "sgd"          # "sgd" or "adam"
    weight_decay: float = 0.0       # λ of gpubp's fit: λ/2 Σw² added to the mean cost

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS or self.output not in (*ACTIVATIONS, "softmax"):
            raise ValueError(f"{self.name}: the JAX contenders know the activations {sorted(ACTIVATIONS)} and "
                             f"a softmax output; got {self.activation!r} / {self.output!r}")
        if self.cost not in ("quadratic", "log_likelihood") or (self.cost == "log_likelihood") != \
                (self.output == "softmax"):
            raise ValueError(f"{self.name}: the JAX contenders know quadratic cost, and log-likelihood on a "
                             f"softmax output; got {self.cost!r} on {self.output!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"{self.name}: the JAX contenders know the sgd and adam optimizers; got "
                             f"{self.optimizer!r}")

    def network_kwargs(self) -> dict[str, Any]:
        """The ``gpubp.Network`` arguments of this recipe (sizes first)."""
        return dict(sizes=list(self.sizes), activation=self.activation, output=self.output, cost=self.cost)

    def fit_kwargs(self) -> dict[str, Any]:
        """The ``Network.fit`` arguments of this recipe's training."""
        return dict(batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
                    weight_decay=self.weight_decay)


Params = list  # [(W, b), ...] per layer, W shaped (out, in)


class State(NamedTuple):
    """The parameters, and Adam's step count t and moments m, v (shaped like the parameters; SGD: t only)."""

    params: Params
    t: jax.Array
    m: Params
    v: Params


def initial_state(weights: list[np.ndarray], biases: list[np.ndarray]) -> State:
    """A JAX state from gpubp's ``net.weights`` and ``net.biases`` (their dtype; float64 needs JAX's
    ``jax_enable_x64``), Adam's moments at zero."""
    params = [(jnp.asarray(np.asarray(w)), jnp.asarray(np.asarray(b))) for w, b in zip(weights, biases)]
    if params[0][0].dtype != np.asarray(weights[0]).dtype:
        raise ValueError(f"JAX made {params[0][0].dtype} of the {np.asarray(weights[0]).dtype} weights; "
                         f"float64 needs jax.config.update('jax_enable_x64', True)")
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return State(params, jnp.zeros((), jnp.int32), zeros, jax.tree_util.tree_map(jnp.zeros_like, params))


def parameters(state: State) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(weights, biases) of ``state`` as NumPy arrays, ordered as gpubp's."""
    return [np.asarray(w) for w, _ in state.params], [np.asarray(b) for _, b in state.params]


def cost_sum(recipe: Recipe, params: Params, x: jax.Array, labels: jax.Array) -> jax.Array:
    """Σₓ Cₓ over the batch: the forward pass zˡ = aˡ⁻¹Wˡᵀ + bˡ, aˡ = σ(zˡ), then the cost of aᴸ."""
    a = x
    for W, b in params[:-1]:
        a = ACTIVATIONS[recipe.activation](a @ W.T + b)
    W, b = params[-1]
    z = a @ W.T + b
    if recipe.cost == "log_likelihood":                 # −log softmax(z)_y
        return -jnp.take_along_axis(jax.nn.log_softmax(z), labels[:, None], axis=1).sum()
    y = jax.nn.one_hot(labels, z.shape[1], dtype=z.dtype)  # ½‖σ(z) − y‖²
    return 0.5 * jnp.sum((ACTIVATIONS[recipe.output](z) - y) ** 2)


def train_step(recipe: Recipe, state: State, x: jax.Array, labels: jax.Array) -> tuple[State, jax.Array]:
    """One mini-batch: ∇ of the mean cost (+ λW on the weights), the optimizer's update; returns the new
    state and the batch's Σₓ Cₓ."""
    m = x.shape[0]
    total, grads = jax.value_and_grad(lambda p: cost_sum(recipe, p, x, labels))(state.params)
    grads = [(gW / m + recipe.weight_decay * W, gb / m) for (gW, gb), (W, _) in zip(grads, state.params)]
    t = state.t + 1
    if recipe.optimizer == "sgd":
        params = jax.tree_util.tree_map(lambda p, g: p - recipe.lr * g, state.params, grads)
        return State(params, t, state.m, state.v), total
    mom = jax.tree_util.tree_map(lambda mo, g: ADAM_BETA1 * mo + (1 - ADAM_BETA1) * g, state.m, grads)
    vel = jax.tree_util.tree_map(lambda ve, g: ADAM_BETA2 * ve + (1 - ADAM_BETA2) * g * g, state.v, grads)
    tf = t.astype(state.params[0][0].dtype)
    correction = jnp.sqrt(1 - ADAM_BETA2 ** tf)
    step_size = recipe.lr * correction / (1 - ADAM_BETA1 ** tf)
    params = jax.tree_util.tree_map(lambda p, mo, ve: p - step_size * mo / (jnp.sqrt(ve) + ADAM_EPS * correction),
                                    state.params, mom, vel)
    return State(params, t, mom, vel), total


class ScanEpoch:
    """A whole epoch as one compiled program: ``lax.scan`` over the full mini-batches of ``order`` (each
    gathered from X inside the scan), then the short last batch if len(X) % batch_size ≠ 0."""

    name = "jax-scan"

    def __init__(self, recipe: Recipe, state: State, X: np.ndarray, labels: np.ndarray) -> None:
        self.recipe, self.state = recipe, state
        self.X, self.labels = jnp.asarray(X), jnp.asarray(labels, jnp.int32)
        order = jnp.arange(len(X), dtype=jnp.int32)
        start = time.perf_counter()
        self._epoch = jax.jit(self._program, donate_argnums=0).lower(state, self.X, self.labels, order).compile()
        self.compile_s = time.perf_counter() - start

    def _program(self, state: State, X: jax.Array, labels: jax.Array, order: jax.Array) -> tuple[State, jax.Array]:
        bs = self.recipe.batch_size
        full = order.shape[0] // bs

        def body(state: State, index: jax.Array) -> tuple[State, jax.Array]:
            return train_step(self.recipe, state, X[index], labels[index])

        state, totals = lax.scan(body, state, order[:full * bs].reshape(full, bs))
        total = totals.sum()
        if order.shape[0] > full * bs:
            tail = order[full * bs:]
            state, last = train_step(self.recipe, state, X[tail], labels[tail])
            total = total + last
        return state, total

    def run(self, order: np.ndarray) -> float:
        """Train one epoch in ``order``; returns its mean training cost."""
        self.state, total = self._epoch(self.state, self.X, self.labels, jnp.asarray(order, jnp.int32))
        return float(total) / len(order)


class StepEpoch:
    """One compiled step per mini-batch, called from a Python loop (the batch's indices passed in, the rows
    gathered inside the step); the cost summed on the device and read once per epoch."""

    name = "jax-step"

    def __init__(self, recipe: Recipe, state: State, X: np.ndarray, labels: np.ndarray) -> None:
        self.recipe, self.state = recipe, state
        self.X, self.labels = jnp.asarray(X), jnp.asarray(labels, jnp.int32)
        step = jax.jit(self._step, donate_argnums=(0, 1))
        sizes = {recipe.batch_size, len(X) % recipe.batch_size} - {0}
        start = time.perf_counter()
        total = jnp.zeros((), state.params[0][0].dtype)
        self._steps = {m: step.lower(state, total, self.X, self.labels, jnp.zeros(m, jnp.int32)).compile()
                       for m in sizes}
        self.compile_s = time.perf_counter() - start

    def _step(self, state: State, total: jax.Array, X: jax.Array, labels: jax.Array,
              index: jax.Array) -> tuple[State, jax.Array]:
        state, batch_total = train_step(self.recipe, state, X[index], labels[index])
        return state, total + batch_total

    def run(self, order: np.ndarray) -> float:
        """Train one epoch in ``order``; returns its mean training cost."""
        order = np.asarray(order, np.int32)
        state, bs = self.state, self.recipe.batch_size
        total = jnp.zeros((), state.params[0][0].dtype)
        for start in range(0, len(order), bs):
            index = order[start:start + bs]
            state, total = self._steps[len(index)](state, total, self.X, self.labels, index)
        self.state = state
        return float(total) / len(order)
