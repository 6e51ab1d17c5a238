"""Compiled training on a GPU: a chunk of mini-batches captured once as a CUDA graph, replayed per chunk.

``CudaGraphProgram.run`` makes one graph launch from Python per chunk of ``granule`` mini-batches instead of
about ten kernel launches per mini-batch. Each batch of the graph is the eager step's launches, in its order
and with its kernels (``Network.backprop_sum``, then ``Optimizer.step``):

- gather the batch's rows of x and of the targets through the epoch's sample order (``gather.cu``);
- forward ``layer_forward`` per layer; BP1 ``output_delta`` with the batch's Σₓ Cₓ added to the loss;
  BP3/BP4 ``layer_gradients`` and BP2 ``layer_backward`` into the flat gradient;
- the optimizer's update, as the ``_indirect`` kernel of ``optim.cu``.

A replay runs the captured launches with the arguments they were captured with. What changes between
replays is therefore read from device memory that ``run`` refills before each launch (host→device copies
on the stream, no sync): the chunk's first row in the order, and each step's optimizer scalars (Adam's bias
corrections change every step, a schedule changes η between epochs), computed by ``Optimizer.step`` itself
with this module standing in for the backend. The order is copied into the program's own buffer once per
epoch, so nothing is captured again when it changes. Every buffer a graph touches is allocated before the
capture: CUDA refuses allocation, synchronisation and host copies inside one.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from . import kernels
from .kernels import adam_scalars, sgd_scalars, velocity_scalars
from .ops import cost_id

if TYPE_CHECKING:
    from .cupy_ops import CupyOps
    from .programs import ProgramPlan

Array = Any
#: mini-batches per graph: a few hundred launches, each a node of the graph
GRAPH_BATCHES = 32
#: env GPUBP_CUDA_GRAPHS=0 makes the GPU run every step with eager launches (to compare, or to debug)
GRAPHS_ENV = "GPUBP_CUDA_GRAPHS"
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.int64): "i64"}
#: the scalars of each optimizer's update kernel (kernels/optim.cu), by optimizer name
STEP_SCALARS = {"sgd": 2, "momentum": 4, "nesterov": 4, "adam": 8}


def graphs_turned_off() -> str | None:
    """Why env GPUBP_CUDA_GRAPHS turns CUDA graphs off, or None."""
    return f"turned off by env {GRAPHS_ENV}=0" if os.environ.get(GRAPHS_ENV, "").strip() == "0" else None


def graph_unavailable_reason(ops: CupyOps) -> str | None:
    """None where CUDA graphs work on ``ops``'s GPU (with its device current): a gather kernel captured and
    launched gives the right rows. Else why not."""
    import cupy

    if getattr(cupy.cuda.runtime, "is_hip", False):
        return "CuPy on ROCm has no CUDA graphs"
    if not hasattr(cupy.cuda.Stream, "begin_capture"):
        return f"CuPy {cupy.__version__} has no stream capture (CuPy 10 or later has)"
    try:
        src, order = cupy.arange(4.0), cupy.arange(3, -1, -1)
        base, out = cupy.ones(1, dtype=np.int64), cupy.zeros(2)
        stream = cupy.cuda.Stream(non_blocking=True)
        graph = _capture(stream, lambda: _gather(ops, src, order, base, 0, out, 2))
        graph.launch()
        if out.get().tolist() != [2.0, 1.0]:
            return f"a captured CUDA graph gave wrong results ({out.get().tolist()} for [2.0, 1.0])"
    except Exception as exc:
        return f"capturing a CUDA graph failed ({type(exc).__name__}: {exc})"
    return None


def plan_unsupported_reason(ops: CupyOps, plan: ProgramPlan) -> str | None:
    """Why ``plan`` cannot be captured (None when it can): every step must be one of gpubp's kernels or a
    cuBLAS matmul, on C-contiguous arrays of this GPU."""
    import cupy

    if cost_id(plan.cost) is None:
        name = getattr(plan.cost, "name", type(plan.cost).__name__)
        return f"the cost {name!r} is user-defined: its Python code runs eagerly"
    for act in plan.activations:
        if (act.name not in kernels.ACTIVATION_IDS) if act.elementwise else act.name != "softmax":
            return f"the activation {act.name!r} is user-defined: its Python code runs eagerly"
    if getattr(plan.optimizer, "name", None) not in STEP_SCALARS:
        return f"the optimizer {type(plan.optimizer).__name__} is not one of gpubp's ({', '.join(STEP_SCALARS)})"
    if np.dtype(plan.dtype) not in (np.float32, np.float64):
        return f"the CUDA kernels run float32 and float64, not {plan.dtype}"
    labels = plan.target.ndim == 1
    for name, array, dtype in (("x", plan.x, plan.dtype), ("params", plan.params, plan.dtype),
                               ("grad", plan.grad, plan.dtype),
                               ("target", plan.target, np.int64 if labels else plan.dtype)):
        if not (isinstance(array, cupy.ndarray) and array.flags.c_contiguous and array.dtype == dtype
                and array.device.id == ops.index):
            return (f"{name} is not a C-contiguous {np.dtype(dtype)} array on {ops.device} (got "
                    f"{type(array).__name__} {getattr(array, 'dtype', '')})")
    return None


def _capture(stream: Any, issue: Any) -> Any:
    """The work ``issue()`` launches, captured on ``stream`` as a graph (nothing runs yet)."""
    with stream:
        stream.begin_capture()
        try:
            issue()
        except BaseException:
            with contextlib.suppress(Exception):  # the capture is invalid: end it, report the first error
                stream.end_capture()
            raise
        return stream.end_capture()


def _gather(ops: CupyOps, src: Array, order: Array, base: Array, offset: int, out: Array, rows: int) -> None:
    """out[r] = src[order[base[0] + offset + r]] for r < rows (the rows of one mini-batch)."""
    cols = src.shape[1] if src.ndim == 2 else 1
    ops._launch(f"gpubp_gather_rows_{_SUFFIX[src.dtype]}", rows * cols,
                (src, order, base, np.uint64(offset), out, np.uint64(rows), np.uint64(cols)))


class _StepScalars:
    """Stands in for the backend while ``Optimizer.step`` runs: keeps each step's kernel scalars (rounded to
    the dtype) instead of launching the update, so a replayed step uses exactly what the eager one passes."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype, self.rows = dtype, []

    def _keep(self, scalars: tuple[float, ...]) -> None:
        self.rows.append(np.array(scalars, dtype=self.dtype))

    def sgd_update(self, params, grad, lr, grad_scale, weight_decay, n_weights) -> None:
        self._keep(sgd_scalars(lr, grad_scale, weight_decay))

    def velocity_update(self, kind, params, grad, velocity, lr, momentum, grad_scale, weight_decay,
                        n_weights) -> None:
        self._keep(velocity_scalars(lr, momentum, grad_scale, weight_decay))

    def adam_update(self, params, grad, m, v, lr, beta1, beta2, eps, step, grad_scale, weight_decay,
                    n_weights) -> None:
        self._keep(adam_scalars(lr, beta1, beta2, eps, step, grad_scale, weight_decay))


class CudaGraphProgram:
    """A fit's training steps as CUDA graphs: one per chunk shape (``granule`` full batches; the epoch's
    tail), captured when the program is made and replayed by every ``run``."""

    def __init__(self, ops: CupyOps, plan: ProgramPlan) -> None:
        import cupy

        self.ops, self.plan = ops, plan
        n, bs, dtype = plan.n, plan.batch_size, np.dtype(plan.dtype)
        self.n_batches = plan.batches()
        self.granule = min(GRAPH_BATCHES, self.n_batches)
        self.last_rows = n - (self.n_batches - 1) * bs
        self._weights, self._biases = _views(plan.params, plan.sizes)
        self._nabla_w, self._nabla_b = _views(plan.grad, plan.sizes)
        state = [getattr(plan.optimizer, b) for b in plan.optimizer.buffers]
        self._update = f"gpubp_{plan.optimizer.name}_update_indirect_{_SUFFIX[dtype]}"
        self._update_args = (plan.params, plan.grad, *state, np.uint64(plan.params.size),
                             np.uint64(plan.n_weights))
        width = STEP_SCALARS[plan.optimizer.name]
        # everything a graph reads or writes, allocated before any capture
        rows = min(bs, n)
        self._x = ops.empty((rows, plan.sizes[0]), dtype)
        self._target = ops.empty((rows, *plan.target.shape[1:]), plan.target.dtype)
        self._zs, self._as, self._deltas = ([ops.empty((rows, k), dtype) for k in plan.sizes[1:]]
                                            for _ in range(3))
        self._order = ops.empty((n,), np.int64)
        self._order_source: Array | None = None
        self._loss = ops.zeros((1,), dtype)
        self._base = ops.zeros((1,), np.int64)
        self._steps = ops.zeros((self.granule, width), dtype)
        self._host_base = np.zeros(1, np.int64)
        self._host_steps = np.zeros((self.granule, width), dtype)
        self._stream = cupy.cuda.Stream(non_blocking=True)
        self._stream.wait_event(cupy.cuda.get_current_stream().record())  # after the work queued so far
        with self._stream:  # what initialises on first use (kernels, cuBLAS on this stream) does so now
            self._warm_up(rows)
        self._stream.synchronize()
        self._graphs: dict[tuple[int, int], Any] = {}
        for first in range(0, self.n_batches, self.granule):
            self._graph(first, min(self.granule, self.n_batches - first))

    def _warm_up(self, rows: int) -> None:
        """Every launch of a step once outside a capture, leaving the parameters and the optimizer state as
        they are: the gathers and the update with nothing to do, and a forward and backward pass of the first
        rows into the program's buffers and the gradient (which every step overwrites). Loading a kernel,
        compiling CuPy's reduction kernels and setting up cuBLAS happen on first use, which a capture may
        not allow."""
        plan, empty = self.plan, np.uint64(0)
        for src, out in ((plan.x, self._x), (plan.target, self._target)):
            kernels.get_function(self.ops.index, f"gpubp_gather_rows_{_SUFFIX[src.dtype]}")(
                (1,), (32,), (src, self._order, self._base, empty, out, empty, empty))
        kernels.get_function(self.ops.index, self._update)(
            (1,), (32,), (*self._update_args[:-2], empty, empty, self._steps[0]))
        self._backprop(plan.x[:rows], plan.target[:rows], rows)

    # ---- the steps ------------------------------------------------------------------------------------
    def _rows(self, batch: int) -> int:
        return self.plan.batch_size if batch < self.n_batches - 1 else self.last_rows

    def _backprop(self, x: Array, target: Array, m: int) -> None:
        """BP1–BP4 of one batch of ``m`` rows into the flat gradient, its Σₓ Cₓ added to the program's loss:
        the calls of ``Network.backprop_sum``."""
        ops, acts, plan = self.ops, self.plan.activations, self.plan
        zs, activations, deltas = ([b[:m] for b in buffers] for buffers in (self._zs, self._as, self._deltas))
        a = x
        for W, b, act, z, a_out in zip(self._weights, self._biases, acts, zs, activations):
            a = ops.layer_forward(a, W, b, act, z, a_out)                           # zˡ = aˡ⁻¹Wˡᵀ + bˡ, σ
        delta = ops.output_delta(plan.cost, acts[-1], zs[-1], activations[-1], target, deltas[-1],
                                 self._loss)                                        # BP1
        for l in range(len(zs) - 1, -1, -1):
            a_prev = activations[l - 1] if l > 0 else x
            ops.layer_gradients(delta, a_prev, self._nabla_w[l], self._nabla_b[l])  # BP3 Σδ, BP4 δᵀa
            if l > 0:
                delta = ops.layer_backward(delta, self._weights[l], acts[l - 1], zs[l - 1],
                                           activations[l - 1], out=deltas[l - 1])   # BP2

    def _issue(self, count: int, last_rows: int) -> None:
        """The launches of ``count`` consecutive batches from the row in ``_base`` (the last of ``last_rows``
        rows, the others full), batch i updating with row i of ``_steps``."""
        bs = self.plan.batch_size
        for i in range(count):
            m = bs if i < count - 1 else last_rows
            x, target = self._x[:m], self._target[:m]
            _gather(self.ops, self.plan.x, self._order, self._base, i * bs, x, m)
            _gather(self.ops, self.plan.target, self._order, self._base, i * bs, target, m)
            self._backprop(x, target, m)
            self.ops._launch(self._update, self.plan.params.size, (*self._update_args, self._steps[i]))

    def _graph(self, first: int, count: int) -> Any:
        """The graph of a chunk of ``count`` batches starting at batch ``first`` (captured on first need)."""
        key = (count, self._rows(first + count - 1))
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = _capture(self._stream, lambda: self._issue(*key))
        return graph

    # ---- TrainingProgram --------------------------------------------------------------------------------
    def run(self, order: Array, first: int, count: int, loss_sum: Array) -> None:
        """Batches ``first`` … ``first + count − 1`` of the epoch in ``order``: one graph launch per
        ``granule`` batches, with no host sync (see gpubp.backend.programs.TrainingProgram)."""
        import cupy

        n, ops = self.plan.n, self.ops
        if not (isinstance(first, (int, np.integer)) and isinstance(count, (int, np.integer))
                and 0 <= first and 0 < count and first + count <= self.n_batches):
            raise ValueError(f"run: batches {first}…{first + count - 1} are not within the epoch's "
                             f"{self.n_batches} batches")
        if not (isinstance(order, cupy.ndarray) and order.shape == (n,) and order.dtype == np.int64):
            raise ValueError(f"run: order must be an int64 CuPy array of shape ({n},); got {type(order).__name__} "
                             f"{getattr(order, 'dtype', '')} {getattr(order, 'shape', '')}")
        if not (isinstance(loss_sum, cupy.ndarray) and loss_sum.shape == (1,)
                and loss_sum.dtype == self._loss.dtype):
            raise ValueError(f"run: loss_sum must be a CuPy array of shape (1,) and dtype {self._loss.dtype}")
        with ops._on_device():
            if first == 0 or order is not self._order_source:  # a new epoch: its order into the graphs' buffer
                ops.copy(order, self._order)
                self._order_source = order
            ops.copy(loss_sum, self._loss)  # the graphs add to the loss as the eager steps do, in their order
            stream = cupy.cuda.get_current_stream()
            for start in range(first, first + count, self.granule):
                chunk = min(self.granule, first + count - start)
                self._host_base[0] = start * self.plan.batch_size
                self._host_steps[:chunk] = self._step_scalars(start, chunk)
                self._base.set(self._host_base, stream=stream)
                self._steps.set(self._host_steps, stream=stream)
                self._graph(start, chunk).launch(stream=stream)
            ops.copy(self._loss, loss_sum)

    def _step_scalars(self, first: int, count: int) -> np.ndarray:
        """The optimizer scalars of batches ``first`` … ``first + count − 1``, one row each, from
        ``Optimizer.step`` itself (which advances ``t`` and reads the schedule's η)."""
        optimizer = self.plan.optimizer
        recorder, backend = _StepScalars(self._host_steps.dtype), optimizer.ops
        optimizer.ops = recorder
        try:
            for batch in range(first, first + count):
                optimizer.step(self.plan.grad, 1.0 / self._rows(batch))
        finally:
            optimizer.ops = backend
        return np.stack(recorder.rows)


def _views(flat: Array, sizes: list[int]) -> tuple[list[Array], list[Array]]:
    """Per-layer (weights, biases) views of a flat buffer laid out as ``Network.parameters()``."""
    weights, biases, offset = [], [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        weights.append(flat[offset:offset + n_out * n_in].reshape(n_out, n_in))
        offset += n_out * n_in
    for n_out in sizes[1:]:
        biases.append(flat[offset:offset + n_out])
        offset += n_out
    return weights, biases
