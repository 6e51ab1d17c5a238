"""Compiled training: a chunk of mini-batches as one call (one Numba call on the CPU, one CUDA graph launch
on a GPU) instead of about ten backend calls per mini-batch driven from Python.

A ``TrainingProgram`` runs, for every batch of a chunk, exactly what the trainer's eager step runs: gather the
batch's rows of the epoch's order, forward, BP1 with the batch's Σₓ Cₓ added to the loss, BP3/BP4 (with
BP2 between layers) into the flat gradient, and the optimizer's update with grad_scale 1/m. A backend makes
one (``Ops.training_program``) where its compiled code covers the plan, and says why not otherwise; the
trainer then runs its eager loop. The eager loop stays the definition: a program's results equal it
(bitwise where the backend's arithmetic is the same, as it is by construction on the CPU for small layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Array = Any


@dataclass
class ProgramPlan:
    """One fit as a compiled program sees it: the network, its optimizer and the training data, all on the
    backend's device. The arrays are the live ones: a program updates ``params`` and the optimizer's buffers
    in place, and advances ``optimizer.t`` by one per batch."""

    #: neurons per layer, input first
    sizes: list[int]
    #: σ of each layer (``Network.layer_activations``): the hidden activation, then the output one
    activations: tuple
    #: the cost (a built-in one carries ``kernel_id``)
    cost: Any
    dtype: np.dtype
    #: the flat parameter buffer (all weights, then all biases) and the flat gradient buffer like it
    params: Array
    grad: Array
    n_weights: int
    #: the optimizer (``gpubp.optimizers.Optimizer``): its name, settings, state buffers and step count ``t``
    optimizer: Any
    #: the training inputs (n, sizes[0]) and targets: int64 labels (n,) or values (n, sizes[-1])
    x: Array
    target: Array
    batch_size: int

    @property
    def n(self) -> int:
        return len(self.x)

    def batches(self) -> int:
        """How many mini-batches an epoch has (the last may be short)."""
        return -(-self.n // self.batch_size)


class TrainingProgram(Protocol):
    """A compiled chunk of training steps for one ``ProgramPlan``."""

    #: chunks hold a multiple of this many batches (but at the end of an epoch)
    granule: int

    def run(self, order: Array, first: int, count: int, loss_sum: Array) -> None:
        """Train on batches ``first`` … ``first + count − 1`` of the epoch whose sample order is ``order``
        (int64 (n,) on the device): batch i is rows ``order[i·bs : min((i+1)·bs, n)]`` of x and target.
        Adds each batch's Σₓ Cₓ to ``loss_sum`` (1,), as the eager step does, and advances
        ``optimizer.t`` by ``count``."""
