"""Optimizers over the flat parameter buffer: each step is one backend call (one fused kernel on a GPU).

The gradient arrives as a SUM over the mini-batch; ``grad_scale`` (1/m) turns it into the mean gradient
∂C/∂θ of the mean cost. Weight decay is L2 on the weights only (C + λ/2 Σw², so ∇w += λw); the book's
"λ over n" is ``weight_decay = λ / n``.

An optimizer lives on its network between ``fit`` calls (``Network.optimizer``): the next ``fit`` with the
same optimizer name continues from its state (momentum's velocity; Adam's m, v and step count t) with that
call's hyper-parameters, as Keras does. Every optimizer also runs a learning-rate schedule and a stopping
rule (``gpubp.schedules``): its steps use the schedule's η (``current_lr``), starting at ``lr``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import inputs
from .backend import Ops
from .lbfgs import DEFAULT_GTOL
from .schedules import Schedule

Array = Any
#: what a setting is: a JSON value
Setting = bool | int | float | str


def _positive(value: Any, name: str) -> float:
    return inputs.positive_float(value, name)


def _non_negative(value: Any, name: str) -> float:
    return inputs.positive_float(value, name, allow_zero=True)


def _fraction(value: Any, name: str) -> float:
    return inputs.positive_float(value, name, allow_zero=True, below=1.0)


class Settings:
    """What a registry entry (``OPTIMIZERS``) declares: its name, state buffers, settings with their defaults,
    and the check of each setting."""

    name = ""
    #: names of the state buffers, each an array shaped like the flat parameters
    buffers: tuple[str, ...] = ()
    defaults: dict[str, Setting] = {}
    checks: dict[str, Callable[[Any, str], Setting]] = {}

    @classmethod
    def check_settings(cls, **settings: Any) -> dict[str, Setting]:
        """``settings`` as they would be stored; ValueError naming a setting this optimizer does not have
        (listing those it has) or a value that does not fit."""
        unknown = [key for key in settings if key not in cls.defaults]
        if unknown:
            raise ValueError(f"the {cls.name} optimizer has no setting {', '.join(map(repr, unknown))}; "
                             f"its settings: {', '.join(cls.defaults)}")
        return {key: cls.checks[key](value, key) for key, value in settings.items()}


class Optimizer(Settings, Schedule):
    """Holds the hyper-parameters, the schedule, the steps taken ``t`` and any state buffers shaped like the
    parameters."""

    #: the settings (attributes, each a bool, int, float or str) with their defaults: what ``settings()``
    #: gives, ``configure`` sets and a saved model keeps; the schedule's running state included
    defaults: dict[str, Setting] = {
        "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0,
        # False: λ is the decay of the mean cost (C + λ/2 Σw²). True: λ is per unit of batch weight, as
        # scikit-learn's ``alpha`` (C + λ/2 Σw² / m), so a step's decay is λ·s with s = grad_scale = 1/m
        "decay_per_sample": False,
        **Schedule.schedule_defaults, **Schedule.running,
    }
    #: what each setting must be: a check returning the value as stored, or raising ValueError naming it
    checks: dict[str, Callable[[Any, str], Setting]] = {
        "lr": _positive, "momentum": _fraction, "weight_decay": _non_negative,
        "decay_per_sample": inputs.boolean, **Schedule.schedule_checks,
    }

    def __init__(self, ops: Ops, params: Array, n_weights: int, **settings: Setting) -> None:
        self.ops, self.params, self.n_weights = ops, params, n_weights
        self.configure(**{**self.defaults, "current_lr": settings.get("lr", self.defaults["lr"]), **settings})
        self.t = 0
        for buffer in self.buffers:
            setattr(self, buffer, ops.zeros(params.shape, params.dtype))

    def configure(self, **settings: Any) -> None:
        """Set settings by name (a continued ``fit`` may change them; the state is kept); ValueError, with
        nothing changed, for a name this optimizer does not have or a value that does not fit."""
        for key, value in self.check_settings(**settings).items():
            setattr(self, key, value)

    def settings(self) -> dict[str, Setting]:
        """The settings by name (see ``defaults``)."""
        return {key: getattr(self, key) for key in self.defaults}

    def step(self, grad: Array, grad_scale: float) -> None:
        raise NotImplementedError

    def decay(self, grad_scale: float) -> float:
        """The L2 strength of this step (see ``decay_per_sample``)."""
        return self.weight_decay * grad_scale if self.decay_per_sample else self.weight_decay

    def state_arrays(self) -> list[Array]:
        """The state buffers on the device, in ``buffers`` order."""
        return [getattr(self, buffer) for buffer in self.buffers]

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state on the host: ``{"t": steps, buffer: values, ...}`` (copies)."""
        state = {"t": np.array(self.t, dtype=np.int64)}
        state.update({b: self.ops.to_numpy(a).copy() for b, a in zip(self.buffers, self.state_arrays())})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` gave; ValueError naming the field that does not fit."""
        missing = [k for k in ("t",) + self.buffers if k not in state]
        if missing:
            raise ValueError(f"{self.name} optimizer state lacks {missing}")
        t = np.asarray(state["t"])
        if t.shape != () or t.dtype.kind not in "iu" or int(t) < 0:
            raise ValueError(f"{self.name} optimizer state: step count t must be an integer >= 0; got {t!r}")
        values = []
        for buffer, current in zip(self.buffers, self.state_arrays()):
            value = np.asarray(state[buffer])
            if value.shape != tuple(current.shape) or value.dtype.kind != "f":
                raise ValueError(f"{self.name} optimizer state {buffer!r} must be a float vector of "
                                 f"{current.size} values; got {value.dtype} {value.shape}")
            if not np.isfinite(value).all():
                raise ValueError(f"{self.name} optimizer state {buffer!r} holds NaN or infinite values")
            values.append(value)
        with self.ops.activate():
            for current, value in zip(self.state_arrays(), values):
                current[...] = self.ops.asarray(value, dtype=current.dtype)
        self.t = int(t)


class SGD(Optimizer):
    """w ← w − η ∂C/∂w."""

    name = "sgd"

    def step(self, grad, grad_scale):
        self.t += 1
        self.ops.sgd_update(self.params, grad, self.current_lr, grad_scale, self.decay(grad_scale),
                            self.n_weights)


class Momentum(Optimizer):
    """v ← μv − η ∂C/∂w; w ← w + v."""

    name = "momentum"
    buffers = ("velocity",)

    def step(self, grad, grad_scale):
        self.t += 1
        self.ops.velocity_update(self.name, self.params, grad, self.velocity, self.current_lr,
                                 self.momentum, grad_scale, self.decay(grad_scale), self.n_weights)


class Nesterov(Momentum):
    """Nesterov's momentum (Sutskever et al. 2013's form): v ← μv − η ∂C/∂w; w ← w + μv − η ∂C/∂w."""

    name = "nesterov"


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; β₁ = 0.9, β₂ = 0.999, ε = 1e-8 unless set on the instance.

    ``eps_on_corrected_v`` True (the paper): w ← w − η m̂ / (√v̂ + ε). False (scikit-learn's MLP):
    w ← w − η m̂ / (√v̂ + ε/√(1−β₂ᵗ)), i.e. ε added to √v before the bias correction.
    """

    name = "adam"
    buffers = ("m", "v")
    defaults = {**Optimizer.defaults, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "eps_on_corrected_v": True}
    checks = {**Optimizer.checks, "beta1": _fraction, "beta2": _fraction, "eps": _positive,
              "eps_on_corrected_v": inputs.boolean}

    def step(self, grad, grad_scale):
        self.t += 1
        eps = self.eps if self.eps_on_corrected_v else self.eps / np.sqrt(1.0 - self.beta2 ** self.t)
        self.ops.adam_update(self.params, grad, self.m, self.v, self.current_lr, self.beta1, self.beta2,
                             eps, self.t, grad_scale, self.decay(grad_scale), self.n_weights)


class LBFGS(Settings):
    """L-BFGS's registry entry: settings only. scipy's L-BFGS-B minimises the full-batch objective itself
    (``gpubp.lbfgs``, run by ``Network.fit(optimizer="lbfgs")``): no step, no state kept between fits.

        weight_decay, decay_per_sample   the L2 term, as for the other optimizers (see ``gpubp.lbfgs``)
        tol       scipy's ``gtol``: converged when every component of the gradient is at most tol in size
        max_fun   scipy's ``maxfun``: evaluations of f and ∇f after which it stops (at the iteration's end)
    """

    name = "lbfgs"
    defaults = {"weight_decay": 0.0, "decay_per_sample": False, "tol": DEFAULT_GTOL, "max_fun": 15000}
    checks = {"weight_decay": _non_negative, "decay_per_sample": inputs.boolean, "tol": _non_negative,
              "max_fun": lambda value, name: inputs.positive_int(value, name)}


OPTIMIZERS: dict[str, type[Settings]] = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adam": Adam,
                                         "lbfgs": LBFGS}


def optimizer_name(name: str) -> str:
    """``name`` normalised; ValueError listing the valid names for anything else."""
    key = name.lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")
    return key


def make_optimizer(name: str, ops: Ops, params: Array, n_weights: int, **settings: Setting) -> Optimizer:
    """The optimizer called ``name`` over ``params``, with fresh (zero) state and ``settings`` (the rest at
    their defaults)."""
    kind = OPTIMIZERS[optimizer_name(name)]
    if not issubclass(kind, Optimizer):
        raise ValueError(f"the {kind.name} optimizer takes no steps of its own: Network.fit(optimizer="
                         f"{kind.name!r}) runs it over the whole data set")
    return kind(ops, params, n_weights, **settings)
