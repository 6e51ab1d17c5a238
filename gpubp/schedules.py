"""Learning-rate schedules and the stopping rule, run at the end of each epoch as scikit-learn's MLP runs them
(``SGDOptimizer.iteration_ends`` / ``trigger_stopping``, ``MLP._update_no_improvement_count``):

    constant     η = η₀
    invscaling   η = η₀ / (t + 1)^power_t,   t = samples trained on
    adaptive     η ← η / 5 each time the stopping rule fires; training stops when it fires with η ≤ 1e-6

The stopping rule watches one value v per epoch, lower being better (the trainer negates a score). An epoch
improves when v ≤ best − tol, an improvement by tol or more; after ``n_iter_no_change`` epochs in a row that
do not, the rule fires: training stops (adaptive: η is divided instead, and the count starts again). ``best``
follows every v < best.

The optimizer holds the schedule as settings (``Optimizer.settings()``), its running state included, so a
saved optimizer continues it exactly. Settings are JSON values, so no number is infinite: before any epoch
``best`` is the largest float, which every finite value improves on.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, Callable

from . import inputs

SCHEDULES = ("constant", "invscaling", "adaptive")
#: the adaptive schedule divides η by this when the stopping rule fires …
ADAPTIVE_DIVISOR = 5.0
#: … and stops training instead once η is down to this
MIN_ADAPTIVE_LR = 1e-6
#: ``best`` before any monitored epoch (and what ±inf is stored as)
NOTHING_MONITORED = sys.float_info.max


def lr_schedule(value: Any, name: str = "lr_schedule") -> str:
    """One of SCHEDULES; ValueError listing them for anything else."""
    if value not in SCHEDULES:
        raise ValueError(f"{name} must be one of {', '.join(SCHEDULES)}; got {value!r}")
    return value


def best_value(value: Any, name: str = "best") -> float:
    """A number, not NaN; ±inf becomes ± the largest float (NOTHING_MONITORED)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or math.isnan(value):
        raise ValueError(f"{name} must be a number; got {value!r}")
    return max(-NOTHING_MONITORED, min(float(value), NOTHING_MONITORED))


class Schedule:
    """The learning rate η of each epoch and the stopping rule; a base of ``gpubp.optimizers.Optimizer``,
    whose settings include these (its ``lr`` is η₀)."""

    #: the schedule's settings and the stopping rule's, with their defaults
    schedule_defaults: dict[str, Any] = {"lr_schedule": "constant", "power_t": 0.5, "tol": 1e-4,
                                         "n_iter_no_change": 10}
    #: the running state, settings too: η of the coming steps, samples trained on, the best monitored value,
    #: epochs in a row without an improvement; ``start_schedule`` resets it (η to η₀)
    running: dict[str, Any] = {"current_lr": 0.01, "samples_seen": 0, "best": NOTHING_MONITORED,
                               "no_improvement_count": 0}
    schedule_checks: dict[str, Callable[[Any, str], Any]] = {
        "lr_schedule": lr_schedule,
        "power_t": lambda v, name: inputs.positive_float(v, name, allow_zero=True),
        "tol": lambda v, name: inputs.positive_float(v, name, allow_zero=True),
        "n_iter_no_change": lambda v, name: inputs.positive_int(v, name),
        "current_lr": lambda v, name: inputs.positive_float(v, name),
        "samples_seen": lambda v, name: inputs.positive_int(v, name, minimum=0),
        "best": best_value,
        "no_improvement_count": lambda v, name: inputs.positive_int(v, name, minimum=0),
    }
    lr: float
    lr_schedule: str
    power_t: float
    tol: float
    n_iter_no_change: int
    current_lr: float
    samples_seen: int
    best: float
    no_improvement_count: int

    def start_schedule(self, **state: Any) -> None:
        """Start at η₀ with nothing monitored yet; ``state`` (``running`` settings by name) sets where to
        start instead, to continue a schedule run elsewhere."""
        self.configure(**{**self.running, "current_lr": self.lr, **state})

    def epoch_end(self, samples: int, value: float | None = None) -> str:
        """After an epoch of ``samples`` samples: the stopping rule on the monitored ``value`` (None: no rule
        this epoch) and η of the next epoch. Returns what the rule did, "" when it did not fire;
        ``stopped`` then says whether training ends."""
        self.samples_seen += samples
        if value is not None:
            self.no_improvement_count = self.no_improvement_count + 1 if value > self.best - self.tol else 0
            self.best = min(self.best, value)  # min keeps best when value is NaN
        if self.lr_schedule == "invscaling":
            self.current_lr = self.lr / (self.samples_seen + 1) ** self.power_t
        if value is None or self.no_improvement_count < self.n_iter_no_change:
            return ""
        plateau = f"no improvement by tol={self.tol:g} or more for {self.no_improvement_count} epochs in a row"
        if self.lr_schedule != "adaptive":
            return f"{plateau}: stopping"
        if self.current_lr <= MIN_ADAPTIVE_LR:
            return f"{plateau} at the learning rate {self.current_lr:g} <= {MIN_ADAPTIVE_LR:g}: stopping"
        self.current_lr /= ADAPTIVE_DIVISOR
        self.no_improvement_count = 0
        return f"{plateau}: learning rate divided by {ADAPTIVE_DIVISOR:g} to {self.current_lr:g}"

    @property
    def stopped(self) -> bool:
        """Whether the stopping rule has fired with nothing left to try: training stops."""
        return self.no_improvement_count >= self.n_iter_no_change
