"""A feedforward network trained by the four equations of backpropagation, over mini-batches.

Rows are samples. For a batch X (m, n₀), layer l has weights Wˡ (nₗ, nₗ₋₁) and biases bˡ (nₗ,):

    forward    zˡ = aˡ⁻¹ Wˡᵀ + bˡ,   aˡ = σ(zˡ),   a⁰ = X
    BP1        δᴸ = ∇ₐC ⊙ σ′(zᴸ)
    BP2        δˡ = (δˡ⁺¹ Wˡ⁺¹) ⊙ σ′(zˡ)
    BP3        ∂C/∂bˡ = Σₓ δˡ
    BP4        ∂C/∂Wˡ = δˡᵀ aˡ⁻¹

δ rows are per-sample errors ∂Cₓ/∂z; the sums in BP3/BP4 are divided by m to give the gradient of the
mean cost C = (1/m) Σₓ Cₓ. Every array operation goes through the backend ``self.ops`` (NumPy or CUDA).
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import inputs, model_file
from .activations import get_activation
from .backend import Ops, get_ops
from .backend.arrays import array_module
from .backend.ops import host_available_memory
from .backend.precision import check_matmul_precision
from .costs import COSTS, Cost, CrossEntropy, LogLikelihood, get_cost
from .initializers import init_parameters, parameter_count
from .metrics import METRICS, accuracy, regression_metrics
from .model_state import ModelState, OptimizerState, Setting, shuffle_generator
from .optimizers import OPTIMIZERS, Optimizer, make_optimizer, optimizer_name
from .units import bytes_text

Array = Any
DTYPES = ("float32", "float64")
#: rows per chunk when forward/loss/evaluate run over a large data set
EVAL_CHUNK = 8192
#: the device whose memory is the host's
HOST = "cpu"
#: what a memory check is given: (where, bytes, what for) per array
Needs = list[tuple[str, int, str]]


class ParameterList(list):
    """Per-layer views into the flat parameter buffer; ``params[l] = W`` copies W into the model."""

    def __init__(self, views: list, ops: Any) -> None:
        super().__init__(views)
        self._ops = ops

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            raise TypeError("assign one layer at a time: net.weights[l] = W (or net.weights[l][...] = W)")
        view = self[index]
        if tuple(getattr(value, "shape", np.shape(value))) != tuple(view.shape):
            raise ValueError(f"layer {index} has shape {tuple(view.shape)}; "
                             f"got {tuple(np.shape(inputs.to_numpy(value)))}")
        with self._ops.activate():
            view[...] = self._ops.asarray(value, dtype=view.dtype)


class Workspace:
    """Buffers for one batch size: zˡ, aˡ and δˡ per layer (allocated once, reused every step)."""

    def __init__(self, net: "Network", m: int) -> None:
        shapes = [(m, n) for n in net.sizes[1:]]
        self.zs = [net.ops.empty(s, net.dtype) for s in shapes]
        self.activations = [net.ops.empty(s, net.dtype) for s in shapes]
        self.deltas = [net.ops.empty(s, net.dtype) for s in shapes]


class Network:
    """A fully connected feedforward network; see the module docstring for the equations."""

    def __init__(self, sizes: Sequence[int], activation: str = "sigmoid", output: str | None = None,
                 cost: str | Cost | Any = "quadratic", device: str | Ops | None = "auto",
                 dtype: str = "float32", seed: int | None = None, matmul_precision: str = "fp32") -> None:
        self.sizes = _check_sizes(sizes)
        self.activation = get_activation(activation)
        self.output = get_activation(output if output is not None else activation, output=True)
        self.cost = get_cost(cost)
        #: σ of each layer: the hidden activation, then the output one
        self.layer_activations = (self.activation,) * (len(self.sizes) - 2) + (self.output,)
        if isinstance(self.cost, LogLikelihood) and self.output.name != "softmax":
            raise ValueError("the log_likelihood cost needs a softmax output layer (output='softmax'); "
                             f"got output={self.output.name!r}")
        if isinstance(self.cost, CrossEntropy) and self.output.name not in ("sigmoid", "softmax"):
            raise ValueError("the cross_entropy cost needs outputs in (0, 1): use output='sigmoid' or "
                             f"'softmax'; got output={self.output.name!r}")
        self.dtype = _check_dtype(dtype)
        #: "fp32" or "tf32": how a GPU computes the matmuls of zˡ, BP2 and BP4 (gpubp.backend.precision;
        #: the CPU backends compute float32 products in float32 either way)
        self.matmul_precision = check_matmul_precision(matmul_precision, self.dtype)
        self.seed = inputs.seed(seed)
        #: the backend: ``device`` may name it ("auto", "cpu", "cuda:N"; None: env GPUBP_DEVICE) or be one
        self.ops = self._backend(device)
        self.history: dict[str, list] = {}
        #: what an application of the model needs besides its parameters (JSON values; saved with it)
        self.metadata: dict[str, Any] = {}
        self._optimizer: Optimizer | None = None
        #: the shuffle generator of the last ``fit``; a later ``fit`` without ``seed`` continues it
        self.shuffle_rng: np.random.Generator | None = None
        #: how the last ``fit`` ran its steps: "compiled", or "eager: " and why not compiled
        self.training_path = ""
        self._check_memory(self._construction_needs(),
                           f"sizes {self.sizes} need {parameter_count(self.sizes):,} parameters: ")
        self._load_parameters(init_parameters(self.sizes, self.layer_activations, seed))

    # ---- parameters -------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def device(self) -> str:
        return self.ops.device

    def _load_parameters(self, flat_host: np.ndarray) -> None:
        """Put the flat parameters (all weights, then all biases) on the device and make the views."""
        with self.ops.activate():
            self._params = self.ops.asarray(np.asarray(flat_host, dtype=self.dtype))
            self._grad = self.ops.zeros(self._params.shape, self.dtype)
        self.weights, self.biases = self._views(self._params)
        #: per-layer views into the flat gradient: Σₓ ∂Cₓ/∂Wˡ and Σₓ ∂Cₓ/∂bˡ of the last ``backprop_sum``
        self.nabla_w, self.nabla_b = self._views(self._grad)
        self._workspaces: dict[int, Workspace] = {}
        self._shuffled: tuple[tuple, list] = ((), [])
        self._optimizer = None  # its state belonged to the replaced buffer

    def _views(self, flat: Array) -> tuple[ParameterList, ParameterList]:
        weights, biases, offset = [], [], 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            weights.append(flat[offset:offset + n_out * n_in].reshape(n_out, n_in))
            offset += n_out * n_in
        for n_out in self.sizes[1:]:
            biases.append(flat[offset:offset + n_out])
            offset += n_out
        return ParameterList(weights, self.ops), ParameterList(biases, self.ops)

    @property
    def n_weights(self) -> int:
        """How many of the flat parameters are weights (they come first; biases follow)."""
        return sum(o * i for i, o in zip(self.sizes[:-1], self.sizes[1:]))

    def parameters(self) -> Array:
        """The flat parameter buffer (weights then biases) on the device; writes change the model."""
        return self._params

    def gradient(self) -> Array:
        """The flat gradient buffer, laid out as ``parameters()``: Σₓ ∂Cₓ/∂θ of the last ``backprop_sum``."""
        return self._grad

    def _backend(self, device: str | Ops | None) -> Ops:
        """The backend of ``device`` (a name or a backend) that computes matmuls in ``matmul_precision``."""
        return (device if isinstance(device, Ops) else get_ops(device)).with_matmul_precision(self.matmul_precision)

    def to(self, device: str | Ops) -> "Network":
        """Move the network, its whole ``state()`` (optimizer included), to ``device`` (a name, or a backend
        such as ``get_ops("cpu", cpu_backend="numpy")``) in place, its ``matmul_precision`` kept; returns it."""
        ops = self._backend(device)
        state = self.state()
        self.ops = ops
        self._load_parameters(state.params)
        self.load_state(state)
        return self

    # ---- state ------------------------------------------------------------------------------------
    def description(self) -> dict[str, Any]:
        """sizes, activation, output, cost, dtype and matmul_precision, each by name (as
        ``ModelState.description()``)."""
        return {"sizes": list(self.sizes), "activation": self.activation.name, "output": self.output.name,
                "cost": self.cost.name, "dtype": self.dtype.name, "matmul_precision": self.matmul_precision}

    def state(self) -> ModelState:
        """A snapshot of the whole model as host copies: its description, parameters, the optimizer of the
        last ``fit`` with its settings and state, the shuffle generator's state, metadata and history."""
        optimizer, saved = self._optimizer, None
        if optimizer is not None:
            host = optimizer.state_dict()
            saved = OptimizerState(optimizer.name, optimizer.settings(), {b: host[b] for b in optimizer.buffers},
                                   optimizer.t)
        description = self.description()
        if type(COSTS.get(self.cost.name)) is not type(self.cost):
            description["cost"] = self.cost  # user-defined: the object itself
        params = self.ops.to_numpy(self._params)
        shuffle = None if self.shuffle_rng is None else self.shuffle_rng.bit_generator.state
        return ModelState(**description, params=params.copy() if self.ops.on_host else params, optimizer=saved,
                          shuffle=shuffle, metadata=copy.deepcopy(self.metadata),
                          history=copy.deepcopy(self.history))

    @classmethod
    def from_state(cls, state: ModelState, device: str | Ops | None = None) -> "Network":
        """The network whose ``state()`` ``state`` is, on ``device`` (as the constructor's; None: env
        GPUBP_DEVICE, else "auto")."""
        _check_state(state)
        net = cls(state.sizes, activation=state.activation, output=state.output, cost=state.cost,
                  device=device, dtype=state.dtype, matmul_precision=state.matmul_precision)
        net.load_state(state)
        return net

    def load_state(self, state: ModelState) -> None:
        """Make this network ``state`` in place: its parameters, optimizer, shuffle generator, metadata and
        history (a checkpoint resumes into the caller's network so). ValueError, before anything changes,
        when ``state`` is of a model of another description or its parts do not fit."""
        _check_state(state)
        here = self.description()
        differences = [f"{key} {there!r} there, {here[key]!r} here"
                       for key, there in state.description().items() if there != here[key]]
        if differences:
            raise ValueError(f"the state is of another model: {'; '.join(differences)}")
        params = np.asarray(state.params)
        if params.shape != tuple(self._params.shape):
            raise ValueError(f"the state's parameters have shape {params.shape}; sizes {self.sizes} need a "
                             f"vector of {self._params.size}")
        if params.dtype.kind != "f" or not np.isfinite(params).all():
            raise ValueError("the state's parameters must be finite floats (NaN or infinite values, or "
                             f"dtype {params.dtype}, found)")
        optimizer = None if state.optimizer is None else self._restored_optimizer(state.optimizer)
        rng = None if state.shuffle is None else shuffle_generator(state.shuffle)
        with self.ops.activate():
            self._params[...] = self.ops.asarray(params, dtype=self.dtype)
        self._optimizer, self.shuffle_rng = optimizer, rng
        self.metadata, self.history = copy.deepcopy(state.metadata), copy.deepcopy(state.history)

    def _restored_optimizer(self, saved: OptimizerState) -> Optimizer:
        """An optimizer over this network's parameters with the settings and state of ``saved``."""
        with self.ops.activate():
            optimizer = make_optimizer(saved.name, self.ops, self._params, self.n_weights, **saved.settings)
        optimizer.load_state_dict({"t": saved.t, **saved.buffers})
        return optimizer

    # ---- memory -----------------------------------------------------------------------------------
    def _construction_needs(self) -> Needs:
        """What constructing the network allocates: the parameters and their gradients in the dtype on the
        device, and on the host their float64 initial values (gpubp.initializers) and, for a GPU, their cast
        to the dtype that is uploaded. On the CPU the cast (in float64 the initial values themselves) is
        the parameter buffer."""
        n, size, dtype, device = parameter_count(self.sizes), self.dtype.itemsize, self.dtype.name, self.device
        needs = [(device, n * size, f"the {dtype} parameters"), (device, n * size, "their gradients")]
        if not self.ops.on_host or dtype != "float64":
            needs.append((HOST, 8 * n, "their float64 initial values"))
        if not self.ops.on_host and dtype != "float64":
            needs.append((HOST, n * size, f"their {dtype} copy uploaded to {device}"))
        return needs

    def _check_memory(self, needs: Needs, lead: str) -> None:
        """ValueError, before any of ``needs`` is allocated, when they exceed the memory available where they
        go: the device's, as its backend says, and the host's. ``lead`` starts the message."""
        for place in dict.fromkeys(where for where, _, _ in needs):
            items = [(size, what) for where, size, what in needs if where == place]
            total = sum(size for size, _ in items)
            available = self.ops.available_memory() if place == self.device else host_available_memory()
            if available is not None and total > available:
                parts = ", ".join(f"{what} ({bytes_text(size)})" for size, what in items)
                raise ValueError(f"{lead}{bytes_text(total)} on {place} for {parts}, but {place} has "
                                 f"{bytes_text(available)} available")

    def check_fit_memory(self, optimizer: str, batch_size: int, data_bytes: int = 0) -> None:
        """ValueError when the largest arrays ``fit`` allocates besides the network's cannot fit on its device:
        the optimizer's state (unless the kept optimizer of that name holds it), the copy of the parameters
        and that state taken at each epoch's start (to undo a diverged epoch), zˡ, aˡ and δˡ of one batch, and
        ``data_bytes``, the shuffled copy of the training data (0 without shuffling). For the trainer to call
        once the data is on the device, before it allocates."""
        name = optimizer_name(optimizer)
        n, size, device = parameter_count(self.sizes), self.dtype.itemsize, self.device
        buffers = len(OPTIMIZERS[name].buffers)
        needs = [] if buffers == 0 or (self._optimizer is not None and self._optimizer.name == name) else \
            [(device, buffers * n * size, f"the {name} state")]
        needs += [(device, (1 + buffers) * n * size, "the copy taken at each epoch's start"),
                  (device, 3 * batch_size * sum(self.sizes[1:]) * size, "a batch's zˡ, aˡ and δˡ")]
        if data_bytes:
            needs.append((device, data_bytes, "the shuffled copy of the data"))
        self._check_memory(needs, f"fit with {name}, batch size {batch_size}, on sizes {self.sizes} needs ")

    # ---- optimizer state --------------------------------------------------------------------------
    @property
    def optimizer(self) -> Optimizer | None:
        """The optimizer of the last ``fit`` with its state, which the next ``fit`` of that name continues."""
        return self._optimizer

    def reset_optimizer(self) -> None:
        """Drop the optimizer state (and the shuffle generator): the next ``fit`` starts both afresh."""
        self._optimizer = None
        self.shuffle_rng = None

    def optimizer_for(self, name: str, **settings: Setting) -> Optimizer:
        """The optimizer a ``fit`` steps with: the kept one when it has this name (its state continues), else
        a fresh one; either way given ``settings`` (hyper-parameters by name, see ``Optimizer.defaults``)."""
        optimizer = self._optimizer
        if optimizer is None or optimizer.name != optimizer_name(name):
            with self.ops.activate():
                optimizer = make_optimizer(name, self.ops, self._params, self.n_weights)
        optimizer.configure(**settings)
        self._optimizer = optimizer
        return optimizer

    def _workspace(self, m: int) -> Workspace:
        ws = self._workspaces.get(m)
        if ws is None:
            if len(self._workspaces) >= 4:  # keep the training sizes, drop one-off evaluation sizes
                self._workspaces.pop(next(iter(self._workspaces)))
            with self.ops.activate():
                ws = self._workspaces[m] = Workspace(self, m)
        return ws

    def shuffle_buffers(self, *arrays: Array | None) -> list[Array | None]:
        """Buffers like ``arrays`` (None stays None) for an epoch's shuffled copy of the training data.

        The network keeps them for the next ``fit`` on data of the same shapes: a data-set-sized
        allocation per call (and, on the CPU, its first-touch page faults) costs as much as an epoch of a
        small network when ``fit`` is called epoch by epoch, as ``partial_fit`` does."""
        key = tuple(None if a is None else (a.shape, a.dtype.str) for a in arrays)
        if self._shuffled[0] != key:
            self._shuffled = ((), [])  # free the previous buffers before allocating new ones
            with self.ops.activate():
                buffers = [None if a is None else self.ops.empty(a.shape, a.dtype) for a in arrays]
            self._shuffled = (key, buffers)
        return self._shuffled[1]

    # ---- forward ----------------------------------------------------------------------------------
    def _feedforward(self, x: Array, ws: Workspace) -> Array:
        """zˡ = aˡ⁻¹ Wˡᵀ + bˡ and aˡ = σ(zˡ) for every layer, kept in ``ws`` for the backward pass."""
        ops, a = self.ops, x
        for W, b, act, z, a_out in zip(self.weights, self.biases, self.layer_activations, ws.zs,
                                       ws.activations):
            a = ops.layer_forward(a, W, b, act, z, a_out)          # zˡ = aˡ⁻¹ Wˡᵀ + bˡ; aˡ = σ(zˡ)
        return a

    def forward(self, X: Any) -> Array:
        """aᴸ for X (batch, sizes[0]) -> (batch, sizes[-1]) on the net's device; a 1-D X gives 1-D aᴸ."""
        with self.ops.activate():
            x, single = inputs.check_inputs(X, self.sizes[0], self.ops, self.dtype)
            out = self._forward_chunks(x)
        return out[0] if single else out

    def _forward_chunks(self, x: Array) -> Array:
        out = self.ops.empty((x.shape[0], self.sizes[-1]), self.dtype)
        with self.ops.errstate():
            for start in range(0, x.shape[0], EVAL_CHUNK):
                chunk = x[start:start + EVAL_CHUNK]
                out[start:start + chunk.shape[0]] = self._feedforward(chunk, self._workspace(chunk.shape[0]))
        return out

    # ---- backward ---------------------------------------------------------------------------------
    def backprop_sum(self, x: Array, target: Array, loss_sum: Array | None = None,
                     layer_done: Callable[[int], Any] | None = None,
                     weights: Array | None = None) -> list[Array]:
        """BP1–BP4 for one batch of checked device arrays (``check_inputs``, ``check_targets``): fills the
        flat ``gradient()`` with Σₓ ∂Cₓ/∂θ (Σₓ wₓ ∂Cₓ/∂θ with per-sample ``weights``) and adds the batch's
        Σₓ Cₓ to ``loss_sum``; returns the δˡ buffers.

        ``layer_done(l)`` is called as soon as layer l's gradients are complete (distributed training
        starts summing them across ranks there)."""
        ops, acts = self.ops, self.layer_activations
        ws = self._workspace(x.shape[0])
        self._feedforward(x, ws)
        zs, activations, deltas = ws.zs, ws.activations, ws.deltas
        if weights is None:
            delta = ops.output_delta(self.cost, acts[-1], zs[-1], activations[-1], target, deltas[-1],
                                     loss_sum)                                      # BP1
        else:
            delta = ops.weighted_output_delta(self.cost, acts[-1], zs[-1], activations[-1], target,
                                              weights, deltas[-1], loss_sum)        # BP1, rows × wₓ
        for l in range(self.num_layers - 1, -1, -1):
            a_prev = activations[l - 1] if l > 0 else x
            ops.layer_gradients(delta, a_prev, self.nabla_w[l], self.nabla_b[l])    # BP3 Σδ, BP4 δᵀa
            if layer_done is not None:
                layer_done(l)
            if l > 0:
                delta = ops.layer_backward(delta, self.weights[l], acts[l - 1], zs[l - 1],
                                           activations[l - 1], out=deltas[l - 1])   # BP2
        return deltas

    def backprop(self, X: Any, Y: Any = None, return_deltas: bool = False) -> tuple:
        """(nabla_w, nabla_b): the gradient of ``loss(X, Y)`` (mean over the batch) by BP1–BP4.

        With ``return_deltas=True`` also the per-layer errors δˡ (batch, sizes[l+1]), rows per sample.
        Arrays are fresh copies on the net's device.
        """
        with self.ops.activate():
            x, single = inputs.check_inputs(X, self.sizes[0], self.ops, self.dtype)
            target = self.check_targets(Y, x.shape[0], single=single)
            if x.shape[0] == 0:
                raise ValueError("backprop needs at least one sample; X is empty")
            with self.ops.errstate():
                deltas = self.backprop_sum(x, target)
            scale = 1.0 / x.shape[0]
            nabla_w = [g * scale for g in self.nabla_w]
            nabla_b = [g * scale for g in self.nabla_b]
            if return_deltas:
                return nabla_w, nabla_b, [d.copy() for d in deltas]
        return nabla_w, nabla_b

    def check_targets(self, Y: Any, n: int, what: str = "Y", single: bool = False) -> Array:
        """Y checked (for ``n`` samples; ``what`` names it in errors) and on the device; for one 1-D sample
        X (``single``), Y is that sample's target (a label or a (sizes[-1],) vector) and gains the batch
        axis."""
        if single and Y is not None:
            Y = array_module(Y).asarray(Y)[None]
        return inputs.check_targets(Y, n, self.sizes[-1], self.ops, self.dtype, self.cost.needs_target,
                                    what)

    def explain(self, x: Any, y: Any = None, lr: float = 0.5) -> Any:
        """Teach mode (``gpubp.explain``): zˡ, aˡ, δˡ and BP1–BP4 for one sample (or a tiny batch), each
        gradient beside its finite difference, and one SGD step of ``lr`` (gpubp.explain.DEFAULT_LR);
        ``print`` it, ``.draw("net.svg")``."""
        from .explain import explain

        return explain(self, x, y, lr=lr)

    # ---- evaluation -------------------------------------------------------------------------------
    def loss(self, X: Any, Y: Any = None) -> float:
        """The mean cost C = (1/n) Σₓ Cₓ over X (no regularisation term)."""
        with self.ops.activate():
            x, single = inputs.check_inputs(X, self.sizes[0], self.ops, self.dtype)
            return self._loss(self._forward_chunks(x), self.check_targets(Y, x.shape[0], single=single))

    def _loss(self, a: Array, target: Array) -> float:
        if len(a) == 0:
            return float("nan")
        with self.ops.errstate():
            return self.ops.item(self.ops.cost_sum(self.cost, a, target)) / len(a)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted classes (NumPy ints): argmax of aᴸ, or aᴸ > 0.5 for a single output."""
        with self.ops.activate():
            a = self.forward(X)
            single = a.ndim == 1
            a = a.reshape(1, -1) if single else a
            if self.sizes[-1] == 1:
                classes = self.ops.to_numpy(a[:, 0] > 0.5).astype(np.int64)
            else:
                classes = self.ops.to_numpy(a.argmax(axis=1)).astype(np.int64)
        return classes[0] if single else classes

    @property
    def task(self) -> str:
        """"classification" or "regression": ``metadata["task"]`` when set, else regression exactly when
        the output activation is the identity. Setting it stores it in ``metadata``."""
        task = self.metadata.get("task")
        if task in METRICS:
            return task
        return "regression" if self.output.name == "identity" else "classification"

    @task.setter
    def task(self, task: str) -> None:
        if task not in METRICS:
            raise ValueError(f"task must be one of {', '.join(METRICS)}; got {task!r}")
        self.metadata["task"] = task

    def evaluate(self, X: Any, Y: Any) -> dict[str, float]:
        """{"loss": mean cost} and, by ``task``, "accuracy" (the fraction of samples whose predicted class
        is the target's) for classification, or "mse", "mae" and "r2" for regression."""
        with self.ops.activate():
            x, single = inputs.check_inputs(X, self.sizes[0], self.ops, self.dtype)
            return self.evaluate_checked(x, self.check_targets(Y, x.shape[0], single=single))

    def evaluate_checked(self, x: Array, target: Array) -> dict[str, float]:
        """``evaluate`` of inputs and targets already checked and on the device (``check_inputs``,
        ``check_targets``), as the trainer's validation data."""
        a = self._forward_chunks(x)
        loss = self._loss(a, target)
        if target is None or x.shape[0] == 0:
            return {"loss": loss, **{name: float("nan") for name in METRICS[self.task]}}
        if self.task == "regression":
            return {"loss": loss, **regression_metrics(self.ops.to_numpy(a),
                                                       inputs.target_vectors(target, self.sizes[-1], self.ops))}
        pred = self.ops.to_numpy(a[:, 0] > 0.5) if self.sizes[-1] == 1 else \
            self.ops.to_numpy(a.argmax(axis=1))
        return {"loss": loss, "accuracy": accuracy(pred.astype(np.int64), inputs.labels_of(target, self.ops))}

    # ---- training ---------------------------------------------------------------------------------
    def fit(self, X: Any, Y: Any, epochs: int, batch_size: int, lr: float, optimizer: str = "sgd",
            momentum: float = 0.9, weight_decay: float = 0.0,
            validation_data: tuple[Any, Any] | None = None, shuffle: bool = True,
            progress: bool | None = None, seed: int | None = None,
            callbacks: Iterable[Callable[["Network", int, dict], Any]] | None = None,
            distributed: Any = None, checkpoint: str | None = None,
            checkpoint_every: int = 1, sample_weight: Any = None, lr_schedule: str = "constant",
            power_t: float = 0.5, tol: float | None = None, n_iter_no_change: int = 10,
            monitor: str | Callable[["Network", dict], float] | None = None, restore_best: bool = False,
            optimizer_options: dict[str, Any] | None = None, compiled: bool | None = None,
            on_divergence: str = "raise") -> dict[str, list]:
        """Mini-batch gradient descent; returns the history of per-epoch "loss", "val_loss" and "val_accuracy"
        (regression: "val_mse", "val_mae", "val_r2").

        "loss" is the mean training cost over the epoch's batches, measured in their forward passes.
        With ``sample_weight`` (n,) each batch's cost is the weighted mean Σₓ wₓCₓ / Σₓ wₓ, and "loss"
        the weighted mean over the epoch.
        Each epoch draws a new order of the samples (from ``seed``). On NaN/inf the parameters are put
        back to the end of the previous epoch and FloatingPointError names the epoch. Ctrl-C finishes
        the current batch, keeps ``self.history`` and raises KeyboardInterrupt. ``distributed`` is a
        ``gpubp.distributed.Communicator`` (or True for ``gpubp.distributed.init()``): each rank trains on
        its shard of every global batch.

        ``checkpoint`` is a directory: every ``checkpoint_every`` epochs, at the end and when training is
        interrupted, the state at the end of the last completed epoch is written there (gpubp.checkpoint),
        and a later ``fit`` with the same arguments resumes from it exactly.

        ``lr`` is η₀ of the learning-rate schedule ``lr_schedule`` (``gpubp.schedules``): "constant",
        "invscaling" (η = η₀ / (t + 1)^power_t after each epoch, t = samples trained on) or "adaptive" (η ÷ 5
        each time the stopping rule fires). With ``tol`` given, the stopping rule watches ``monitor``: a key of
        the history (default "val_loss" with ``validation_data``, else "loss"; higher is better for accuracy
        and R²) or a callable fn(net, logs) returning a value to minimise. After ``n_iter_no_change`` epochs
        in a row that do not improve on the best value by ``tol`` or more, training ends normally, the history
        holding the epochs done (adaptive: η ÷ 5 instead, ending once the rule fires at η ≤ 1e-6).
        ``restore_best`` ends training with the parameters of the best epoch (those ``fit`` started from if
        none beat the best value it started with); it keeps them in memory only, so not with ``checkpoint``.
        Each ``fit`` starts the schedule at η₀ with nothing monitored yet; a resumed checkpoint continues its
        own. ``optimizer_options`` sets any other setting of the optimizer by name (``Optimizer.defaults``:
        Adam's beta1, beta2, eps, …, or the schedule's running state current_lr, samples_seen, best,
        no_improvement_count, to continue a schedule from elsewhere).

        ``compiled``: None (the default) runs chunks of mini-batches as one compiled call each where the
        backend can (``gpubp.backend.programs``; the same steps, the same results), else the step-by-step
        loop; False always runs the step-by-step loop; True raises ValueError, saying why, where no compiled
        program covers this fit. ``training_path`` then says which ran.

        ``on_divergence``: "raise" (the default) as above; "continue" trains on through NaN/inf as
        scikit-learn's MLP does, recording the epochs' NaN losses (the stopping rule and ``restore_best``
        never take a NaN epoch as the best one).

        ``optimizer="lbfgs"`` (``gpubp.lbfgs``; needs scipy) runs scipy's L-BFGS-B on the full-batch mean cost
        plus ``weight_decay``/2 Σ‖W‖² (with ``optimizer_options={"decay_per_sample": True}``, weight_decay /
        Σ wₓ: scikit-learn's alpha), its value and gradient by ``backprop_sum`` on the device in row chunks of
        ``batch_size``. ``epochs`` is its iteration limit, each iteration an epoch of the history, callbacks and
        progress; ``tol`` is its gradient tolerance (scipy's gtol, default 1e-5); ``optimizer_options`` takes
        ``max_fun`` (evaluations, default 15000). ``lr``, ``momentum``, ``shuffle``, ``seed``, ``power_t`` and
        ``n_iter_no_change`` are not used; ``distributed``, ``checkpoint``, ``compiled=True``, a non-constant
        ``lr_schedule``, ``monitor`` and ``restore_best`` are refused. Stopping short of convergence warns
        ``gpubp.lbfgs.NotConvergedWarning``; ``self.optimizer`` is left as it was.
        """
        from .training import Trainer

        if distributed is True:
            from . import distributed as _distributed

            distributed = _distributed.init_for(self.ops)
        trainer = Trainer(self, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                          momentum=momentum, weight_decay=weight_decay, shuffle=shuffle,
                          progress=progress, seed=seed, callbacks=callbacks, comm=distributed,
                          checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                          lr_schedule=lr_schedule, power_t=power_t, tol=tol, n_iter_no_change=n_iter_no_change,
                          monitor=monitor, restore_best=restore_best, optimizer_options=optimizer_options,
                          compiled=compiled, on_divergence=on_divergence)
        return trainer.run(X, Y, validation_data, sample_weight)

    # ---- persistence ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the model's ``state()`` to ``path`` exactly (no suffix is added) as a model file
        (``gpubp.model_file``: .npz, no pickle, atomic: a temp file renamed into place)."""
        model_file.write_npz(path, model_file.state_arrays(self.state()))

    def export(self, path: str) -> None:
        """Write the model for use outside gpubp: ``.onnx`` (standard ONNX operators) or ``.safetensors``
        (``layers.{l}.weight``/``bias``); see ``gpubp.export``."""
        from .export import export

        export(self, path)

    def __repr__(self) -> str:
        return (f"Network(sizes={self.sizes}, activation={self.activation.name!r}, "
                f"output={self.output.name!r}, cost={self.cost.name!r}, device={self.device!r}, "
                f"dtype={self.dtype.name!r}, matmul_precision={self.matmul_precision!r})")


def _check_state(state: Any) -> None:
    """TypeError unless ``state`` is a ModelState (what ``Network.state()`` gives)."""
    if not isinstance(state, ModelState):
        raise TypeError(f"expected a gpubp.ModelState (from Network.state() or gpubp's model files); got "
                        f"{type(state).__name__}")


def _check_dtype(dtype: Any) -> np.dtype:
    """float32 or float64, given as a name or a NumPy dtype."""
    try:
        checked = np.dtype(dtype)
    except TypeError:
        checked = None
    if dtype is None or checked is None or checked.name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return checked


def _check_sizes(sizes: Any) -> list[int]:
    try:
        values = list(sizes)
    except TypeError:
        raise ValueError(f"sizes must be a list of layer widths such as [784, 30, 10]; got {sizes!r}")
    if len(values) < 2:
        raise ValueError(f"sizes needs at least 2 layers (input and output); got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"sizes must be positive integers; got {values!r}")
    return [int(v) for v in values]
