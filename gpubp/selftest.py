"""``gpubp selftest``: every backend usable on this machine against the NumPy reference, step by step.

For each backend (NumPy ``Ops`` itself, the fused CPU kernels when Numba is installed, CUDA on each visible
GPU) and each dtype (float32, float64), the checks are:

- ``load``: compile or load the backend's kernels (seconds taken);
- ``bias+σ``, ``σ′⊙g``, ``output δ``, ``loss``, ``optimizers``: every elementwise step on random data, for
  every activation, every cost with the outputs the network accepts for it (labels and float targets),
  and SGD / momentum / Adam with weight decay;
- ``layers``: the network's whole-layer calls: zˡ and aˡ (every activation), BP2's δˡ (every hidden
  activation), BP3's and BP4's sums;
- ``BP1–BP4``: the gradients and per-layer δ of small networks;
- ``3 steps``: the parameters after three training steps of ``Network.fit`` (one optimizer per network);
- ``compiled`` (backends with compiled training, e.g. CUDA graphs on a GPU): two shuffled epochs of each
  network run by the backend's ``training_program`` against the same epochs of eager steps on the same
  backend (parameters and losses; equal under the emulated CuPy, within the tolerance on a GPU); "n/a"
  with the reason where the backend runs this plan eagerly;
- ``finite diff.`` (float64 only): the backend's own backprop against central differences of its own loss,
  which is what checks the NumPy reference itself.

Every other check but ``compiled`` compares with NumPy ``Ops`` on the same inputs at the same dtype; the error of a check is
the worst max |got − ref| / (1 + |ref|) over its cases, and it passes within ``TOLERANCE`` of its dtype.

Matmuls are checked in one ``matmul_precision`` (gpubp.backend.precision; the report names it): "fp32" (the
default) on every row, whatever CUPY_TF32 says (it changes only CuPy's own matmuls); or "tf32", which a GPU's
float32 rows then run and are checked in within ``TF32_TOLERANCE`` (float64 rows and the CPUs compute in full
precision either way).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .activations import ACTIVATIONS, SOFTMAX
from .backend import Ops, cuda_unavailable_reason, get_ops, numba_unavailable_reason, visible_gpus
from .backend.errors import cuda_error_cause
from .backend.numpy_ops import NumpyOps
from .backend.precision import FP32, TF32, describe_cupy_matmuls, tf32_matmuls
from .costs import COSTS

DTYPES = ("float32", "float64")
#: worst |got − ref| / (1 + |ref|) allowed per dtype: float32 steps differ from NumPy by a few ulp, which
#: sums of a few hundred terms (BP4's matmuls) and three training steps grow to ~1e-6
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}
#: float32 on a GPU whose matmuls run in TF32 ("tf32"): each operand keeps a 10-bit mantissa, relative
#: error ≤ 2⁻¹¹ rounded (2⁻¹⁰ where the hardware truncates), so a product is off by ≤ 2⁻⁹ ≈ 2e-3 and these
#: checks' sums of ≤ 33 such products by ~√33 · 2e-3 ≈ 1e-2 with random signs (4e-3 measured under the
#: emulation, which rounds); 2e-2 admits that, while a wrong kernel still gives O(1)
TF32_TOLERANCE = 2e-2
#: central differences in float64 agree with backprop to ~1e-7 on these small networks; bugs give O(1)
FINITE_DIFF_TOLERANCE = 1e-5
#: parameters checked by finite differences (a seeded sample across all layers, two losses each)
FINITE_DIFF_PARAMS = 10
CHECKS = ("load", "bias+σ", "σ′⊙g", "output δ", "loss", "optimizers", "layers", "BP1–BP4", "3 steps",
          "compiled", "finite diff.")
#: (output activation, cost) pairs the network accepts
OUTPUT_COSTS = [(name, "quadratic") for name in (*ACTIVATIONS, "softmax")] + \
               [("sigmoid", "cross_entropy"), ("softmax", "cross_entropy"), ("softmax", "log_likelihood")]
#: (sizes, hidden, output, cost, integer labels, optimizer) of the networks of BP1–BP4 and 3 steps
NETWORKS = [([7, 9, 6, 4], "tanh", "softmax", "log_likelihood", True, "adam"),
            ([7, 9, 4], "sigmoid", "sigmoid", "quadratic", False, "sgd"),
            ([7, 9, 4], "relu", "sigmoid", "cross_entropy", True, "momentum"),
            ([7, 8, 4], "gelu", "softmax", "quadratic", False, "adam")]
BATCH = 12
#: the mini-batch of the ``compiled`` check: 3·BATCH samples make 8 batches, the last one short
COMPILED_BATCH = 5


class NotApplicable(Exception):
    """A check that does not apply to this backend here (the message says why)."""


@dataclass
class Result:
    """One cell of the table: a check's worst error (or seconds for ``load``), or why it failed to run."""

    value: float | None = None
    ok: bool = True
    note: str = ""


@dataclass
class Row:
    """One backend at one dtype, its matmuls in ``precision`` ("fp32" or "tf32")."""

    backend: str
    dtype: str
    results: dict[str, Result] = field(default_factory=dict)
    precision: str = FP32

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results.values())


def usable_backends() -> tuple[dict[str, Callable[[], Ops]], dict[str, str]]:
    """({name: backend factory} for every backend usable here, {name: why not} for the others). The CPU
    backends are asked for by name, whatever env GPUBP_CPU_BACKEND says."""
    usable: dict[str, Callable[[], Ops]] = {"numpy": lambda: get_ops("cpu", cpu_backend="numpy")}
    missing: dict[str, str] = {}
    reason = numba_unavailable_reason()
    if reason is None:
        usable["numba"] = lambda: get_ops("cpu", cpu_backend="numba")
    else:
        missing["numba"] = reason
    count = visible_gpus()
    if count == 0:
        missing["cuda"] = cuda_unavailable_reason()
    for index in range(count):  # each GPU on its own: one that failed (a kernel fault) leaves the others
        reason = cuda_unavailable_reason(index)
        if reason is None:
            usable[f"cuda:{index}"] = lambda device=f"cuda:{index}": get_ops(device)
        else:
            missing[f"cuda:{index}"] = reason
    return usable, missing


def run_selftest(backends: Sequence[str] | None = None, log: Callable[[str], None] | None = None,
                 matmul_precision: str = FP32) -> tuple[list[Row], dict[str, str]]:
    """Rows of results for ``backends`` (default: every usable one) and {backend: why it was not tested}, the
    float32 rows' matmuls in ``matmul_precision`` ("fp32" or "tf32": see the module docstring).

    A backend named in ``backends`` that is not usable here raises ValueError saying why."""
    usable, missing = usable_backends()
    if backends is not None:
        for name in backends:
            if name not in usable:
                why = missing.get(name) or missing.get(name.split(":")[0], "no such backend")
                raise ValueError(f"backend {name!r} is not usable here ({why}); usable: {', '.join(usable)}")
        usable = {name: usable[name] for name in backends}
        missing = {}
    rows = []
    for name, factory in usable.items():
        for dtype in DTYPES:
            if log:
                log(f"checking {name} {dtype} ...")
            rows.append(check_backend(name, factory, dtype, matmul_precision if dtype == "float32" else FP32))
    return rows, missing


def check_backend(name: str, factory: Callable[[], Ops], dtype: str, matmul_precision: str = FP32) -> Row:
    """Every check of one backend at one dtype, its matmuls in ``matmul_precision`` where the backend has
    that choice; an exception fails its check and is reported."""
    row = Row(name, dtype)
    try:
        start = time.perf_counter()
        ops = factory().with_matmul_precision(matmul_precision)
        row.precision = ops.matmul_precision
        with ops.activate():  # the checks' own arrays (copies, scratch) on the backend's device
            warm_up(ops, dtype)
        row.results["load"] = Result(time.perf_counter() - start)
    except Exception as exc:  # the kernels do not compile or load: nothing else can run
        row.results["load"] = Result(None, False, _describe(exc, name))
        return row
    checks: dict[str, Callable[[Ops, str], float]] = {
        "bias+σ": check_bias_activation, "σ′⊙g": check_backprop_activation,
        "output δ": check_output_delta, "loss": check_loss, "optimizers": check_optimizers,
        "layers": check_layers, "BP1–BP4": check_backprop, "3 steps": check_training,
    }
    if type(ops).training_program is not Ops.training_program:
        checks["compiled"] = check_compiled
    if dtype == "float64":
        checks["finite diff."] = check_finite_differences
    for check, run in checks.items():
        tolerance = FINITE_DIFF_TOLERANCE if check == "finite diff." else tolerance_of(row)
        try:
            with np.errstate(all="ignore"), ops.activate():
                error = run(ops, dtype)
            row.results[check] = Result(error, bool(error <= tolerance),
                                        "" if error <= tolerance else f"worst error {error:.2g} > {tolerance:g}")
        except NotApplicable as exc:
            row.results[check] = Result(None, True, str(exc))
        except Exception as exc:
            row.results[check] = Result(None, False, _describe(exc, name))
    return row


def tolerance_of(row: Row) -> float:
    """The tolerance of a row's checks: TF32's where its matmuls run in TF32, else its dtype's."""
    return TF32_TOLERANCE if row.precision == TF32 else TOLERANCE[row.dtype]


def _describe(exc: BaseException, backend: str) -> str:
    """What went wrong, with where; a CUDA error on GPU ``backend`` also says what it means."""
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" ({where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    cause = cuda_error_cause(exc, backend) if backend.startswith("cuda") else None
    return f"{cause or f'{type(exc).__name__}: {exc}'}{at}"


def warm_up(ops: Ops, dtype: str) -> None:
    """Compile or load every kernel of ``ops`` at ``dtype``: one call of each step on a tiny batch."""
    host = _Data(np.random.default_rng(0), dtype)
    for act in (ACTIVATIONS["sigmoid"], SOFTMAX):
        ops.bias_activation(_dev(ops, host.z(2, 3)), _dev(ops, host.b(3)), act, ops.empty((2, 3), dtype))
    a = _dev(ops, host.probabilities(2, 3))
    ops.backprop_activation(ACTIVATIONS["sigmoid"], a, a, _dev(ops, host.z(2, 3)), ops.empty((2, 3), dtype))
    ops.backprop_activation(SOFTMAX, None, a, _dev(ops, host.z(2, 3)), ops.empty((2, 3), dtype))
    for labels in (True, False):
        ops.output_delta(COSTS["quadratic"], ACTIVATIONS["sigmoid"], a, a, _dev(ops, host.targets(2, 3, labels)),
                         ops.empty((2, 3), dtype), ops.zeros((1,), dtype))
    _apply_optimizers(ops, [_dev(ops, x) for x in host.optimizer_state(5)], n_weights=3)
    _apply_layers(ops, NumpyOps(), host, (2, 3, 2), check=False)
    ops.synchronize()


# ---- data -------------------------------------------------------------------------------------------
class _Data:
    """Random host arrays of one dtype for the checks."""

    def __init__(self, rng: np.random.Generator, dtype: str) -> None:
        self.rng, self.dtype = rng, np.dtype(dtype)

    def z(self, *shape: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * 2.5).astype(self.dtype)

    def b(self, n: int) -> np.ndarray:
        return self.rng.standard_normal(n).astype(self.dtype)

    def probabilities(self, *shape: int) -> np.ndarray:
        return self.rng.uniform(0.02, 0.98, shape).astype(self.dtype)

    def targets(self, rows: int, cols: int, labels: bool) -> np.ndarray:
        return self.rng.integers(0, cols, rows) if labels else self.rng.random((rows, cols)).astype(self.dtype)

    def optimizer_state(self, n: int) -> list[np.ndarray]:
        """params, grad, first state, second state (≥ 0, as Adam's v)."""
        params, grad, s1, s2 = (self.rng.standard_normal(n).astype(self.dtype) for _ in range(4))
        return [params, grad, s1, np.abs(s2)]


def _dev(ops: Ops, host: np.ndarray) -> Any:
    return ops.asarray(host)


def _error(got: Any, ref: np.ndarray, ops: Ops) -> float:
    """max |got − ref| / (1 + |ref|); inf where either is not finite where the other is."""
    got = np.asarray(ops.to_numpy(got), dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise ValueError(f"shape {got.shape} where the reference has {ref.shape}")
    if got.size == 0:
        return 0.0
    if not np.array_equal(np.isfinite(got), np.isfinite(ref)):
        return float("inf")
    finite = np.isfinite(ref)
    return float(np.max(np.abs(got[finite] - ref[finite]) / (1.0 + np.abs(ref[finite])), initial=0.0))


# ---- elementwise steps ------------------------------------------------------------------------------
SHAPES = [(1, 1), (5, 7), (BATCH, 33)]


def check_bias_activation(ops: Ops, dtype: str) -> float:
    """z += b and a = σ(z) for every activation (softmax too)."""
    data, ref, worst = _Data(np.random.default_rng(1), dtype), NumpyOps(), 0.0
    for act in (*ACTIVATIONS.values(), SOFTMAX):
        for shape in SHAPES:
            z, b = data.z(*shape), data.b(shape[1])
            z_ref, a_ref = z.copy(), np.empty_like(z)
            ref.bias_activation(z_ref, b, act, a_ref)
            z_dev, a_dev = _dev(ops, z), ops.empty(shape, dtype)
            ops.bias_activation(z_dev, _dev(ops, b), act, a_dev)
            worst = max(worst, _error(z_dev, z_ref, ops), _error(a_dev, a_ref, ops))
    return worst


def check_backprop_activation(ops: Ops, dtype: str) -> float:
    """σ′(z) ⊙ g for every activation, into a separate buffer and in place; softmax's Jacobian."""
    data, ref, worst = _Data(np.random.default_rng(2), dtype), NumpyOps(), 0.0
    for act in (*ACTIVATIONS.values(), SOFTMAX):
        for shape in SHAPES:
            z, g = data.z(*shape), data.z(*shape)
            a = act.f(np, z, np.empty_like(z))
            expected = ref.backprop_activation(act, z, a, g.copy(), np.empty_like(g))
            for in_place in (False, True):
                g_dev = _dev(ops, g)
                out = g_dev if in_place else ops.empty(shape, dtype)
                ops.backprop_activation(act, _dev(ops, z), _dev(ops, a), g_dev, out)
                worst = max(worst, _error(out, expected, ops))
    return worst


def _output_cases(dtype: str, seed: int):
    """(cost, output activation, z, a, targets) for every accepted pair, with labels and float targets."""
    data = _Data(np.random.default_rng(seed), dtype)
    for output, cost in OUTPUT_COSTS:
        act = SOFTMAX if output == "softmax" else ACTIVATIONS[output]
        for labels in (True, False):
            z = data.z(BATCH, 5)
            yield COSTS[cost], act, z, act.f(np, z, np.empty_like(z)), data.targets(BATCH, 5, labels)


def check_output_delta(ops: Ops, dtype: str) -> float:
    """δᴸ (BP1) for every accepted output activation × cost, labels and float targets."""
    ref, worst = NumpyOps(), 0.0
    for cost, act, z, a, y in _output_cases(dtype, 3):
        expected = ref.output_delta(cost, act, z, a, y, np.empty_like(a))
        out = ops.empty(a.shape, dtype)
        ops.output_delta(cost, act, _dev(ops, z), _dev(ops, a), _dev(ops, y), out)
        worst = max(worst, _error(out, expected, ops))
    return worst


def check_loss(ops: Ops, dtype: str) -> float:
    """Σₓ Cₓ from the output-delta pass (into loss_sum) and from cost_sum, for the same cases."""
    ref, worst = NumpyOps(), 0.0
    for cost, act, z, a, y in _output_cases(dtype, 4):
        expected = np.zeros((1,), dtype)
        ref.output_delta(cost, act, z, a, y, np.empty_like(a), expected)
        loss = ops.zeros((1,), dtype)
        a_dev, y_dev = _dev(ops, a), _dev(ops, y)
        ops.output_delta(cost, act, _dev(ops, z), a_dev, y_dev, ops.empty(a.shape, dtype), loss)
        total = ops.cost_sum(cost, a_dev, y_dev)
        worst = max(worst, _error(loss, expected, ops), _error(ops.asarray(total).reshape(1), expected, ops))
    return worst


def _apply_optimizers(ops: Ops, state: list, n_weights: int, steps: int = 2) -> None:
    """SGD, then momentum, then Adam (``steps`` each) on params, grad, and two state buffers."""
    params, grad, s1, s2 = state
    hyper = dict(lr=0.05, grad_scale=0.25, weight_decay=0.01, n_weights=n_weights)
    for step in range(1, steps + 1):
        ops.sgd_update(params, grad.copy(), **hyper)
        ops.momentum_update(params, grad.copy(), s1, momentum=0.9, **hyper)
        ops.adam_update(params, grad.copy(), s1, s2, beta1=0.9, beta2=0.999, eps=1e-8, step=step, **hyper)


def check_optimizers(ops: Ops, dtype: str) -> float:
    """Parameters and optimizer state after SGD, momentum and Adam steps with weight decay."""
    host = _Data(np.random.default_rng(5), dtype).optimizer_state(1001)
    dev = [_dev(ops, x) for x in host]
    _apply_optimizers(NumpyOps(), host, n_weights=700)
    _apply_optimizers(ops, dev, n_weights=700)
    return max(_error(dev[i], host[i], ops) for i in (0, 2, 3))


LAYER_SHAPES = [(1, 1, 1), (5, 7, 3), (BATCH, 33, 9)]


def _apply_layers(ops: Ops, ref: Ops, data: _Data, shape: tuple[int, int, int], check: bool = True) -> float:
    """layer_forward for every activation, layer_backward for every hidden one and layer_gradients, on one
    (batch, inputs, outputs) shape; the worst error against ``ref`` (0 without ``check``)."""
    m, n_in, n_out = shape
    x, W, b, delta = data.z(m, n_in) / 2.5, data.z(n_out, n_in) / 2.5, data.b(n_out), data.z(m, n_out)
    worst = 0.0

    def compare(got: Any, expected: np.ndarray) -> None:
        nonlocal worst
        if check:
            worst = max(worst, _error(got, expected, ops))

    for act in (*ACTIVATIONS.values(), SOFTMAX):
        z_ref, a_ref = np.empty((m, n_out), data.dtype), np.empty((m, n_out), data.dtype)
        ref.layer_forward(x, W, b, act, z_ref, a_ref)
        z, a = ops.empty((m, n_out), data.dtype), ops.empty((m, n_out), data.dtype)
        ops.layer_forward(_dev(ops, x), _dev(ops, W), _dev(ops, b), act, z, a)
        compare(z, z_ref)
        compare(a, a_ref)
    for act in ACTIVATIONS.values():
        z = data.z(m, n_in)
        a = act.f(np, z, np.empty_like(z))
        expected = ref.layer_backward(delta, W, act, z, a, np.empty_like(z))
        out = ops.empty((m, n_in), data.dtype)
        ops.layer_backward(_dev(ops, delta), _dev(ops, W), act, _dev(ops, z), _dev(ops, a), out)
        compare(out, expected)
    nabla_w, nabla_b = np.empty((n_out, n_in), data.dtype), np.empty(n_out, data.dtype)
    ref.layer_gradients(delta, x, nabla_w, nabla_b)
    got_w, got_b = ops.empty((n_out, n_in), data.dtype), ops.empty(n_out, data.dtype)
    ops.layer_gradients(_dev(ops, delta), _dev(ops, x), got_w, got_b)
    compare(got_w, nabla_w)
    compare(got_b, nabla_b)
    return worst


def check_layers(ops: Ops, dtype: str) -> float:
    """The whole-layer calls of the network: zˡ = aˡ⁻¹Wˡᵀ + bˡ and aˡ = σ(zˡ), BP2, and BP3 with BP4."""
    data, ref = _Data(np.random.default_rng(6), dtype), NumpyOps()
    return max(_apply_layers(ops, ref, data, shape) for shape in LAYER_SHAPES)


# ---- whole networks ---------------------------------------------------------------------------------
def _network(ops: Ops, config: tuple, dtype: str) -> Any:
    """A seeded network of ``config`` whose backend is ``ops`` (the same initial parameters everywhere)."""
    from .network import Network

    sizes, hidden, output, cost, _, _ = config
    return Network(sizes, activation=hidden, output=output, cost=cost, device=ops, dtype=dtype, seed=0,
                   matmul_precision=ops.matmul_precision)


def _network_data(config: tuple, dtype: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    sizes, labels = config[0], config[4]
    data = _Data(np.random.default_rng(seed), dtype)
    return data.z(3 * BATCH, sizes[0]) / 2.5, data.targets(3 * BATCH, sizes[-1], labels)


def check_backprop(ops: Ops, dtype: str) -> float:
    """∂C/∂W, ∂C/∂b and every δˡ of ``Network.backprop`` (BP1–BP4) on each network of NETWORKS."""
    worst = 0.0
    for seed, config in enumerate(NETWORKS):
        X, Y = _network_data(config, dtype, seed)
        expected = _network(NumpyOps(), config, dtype).backprop(X, Y, return_deltas=True)
        got = _network(ops, config, dtype).backprop(X, Y, return_deltas=True)
        for got_list, ref_list in zip(got, expected):
            worst = max(worst, *(_error(g, r, ops) for g, r in zip(got_list, ref_list)))
    return worst


def check_training(ops: Ops, dtype: str) -> float:
    """Parameters after three steps of ``Network.fit``, step by step (no shuffle; weight decay), on each
    network."""
    worst = 0.0
    for seed, config in enumerate(NETWORKS):
        X, Y = _network_data(config, dtype, seed)
        nets = [_network(backend, config, dtype) for backend in (NumpyOps(), ops)]
        for net in nets:
            net.fit(X, Y, epochs=1, batch_size=BATCH, lr=0.05, optimizer=config[5], weight_decay=0.01,
                    shuffle=False, progress=False, compiled=False)
        worst = max(worst, _error(nets[1].parameters(), nets[0].ops.to_numpy(nets[0].parameters()), ops))
    return worst


def check_compiled(ops: Ops, dtype: str) -> float:
    """Two shuffled epochs of each network (the last batch short) by ``fit``'s compiled program against the
    same epochs step by step: the worst error of the parameters and of the epochs' losses."""
    worst = 0.0
    for seed, config in enumerate(NETWORKS):
        X, Y = _network_data(config, dtype, seed)
        nets = [_network(ops, config, dtype) for _ in range(2)]
        losses = [net.fit(X, Y, epochs=2, batch_size=COMPILED_BATCH, lr=0.05, optimizer=config[5],
                          weight_decay=0.01, seed=seed, progress=False, compiled=compiled)["loss"]
                  for net, compiled in zip(nets, (False, None))]
        if nets[1].training_path != "compiled":
            raise NotApplicable(nets[1].training_path.removeprefix("eager: "))
        worst = max(worst, _error(nets[1].parameters(), ops.to_numpy(nets[0].parameters()), ops),
                    _error(np.array(losses[1]), np.array(losses[0]), ops))
    return worst


def check_finite_differences(ops: Ops, dtype: str) -> float:
    """The backend's backprop against central differences of its own loss (float64), as gpubp.gradcheck,
    on a sample of the parameters."""
    config = ([4, 5, 3], "tanh", "softmax", "log_likelihood", True, "sgd")
    net = _network(ops, config, dtype)
    X, Y = _network_data(config, dtype, 7)
    nabla_w, nabla_b = net.backprop(X, Y)
    analytic = np.concatenate([ops.to_numpy(g).ravel() for g in (*nabla_w, *nabla_b)])
    theta, eps, worst = net.parameters(), 1e-6, 0.0
    for i in np.random.default_rng(0).choice(theta.size, FINITE_DIFF_PARAMS, replace=False):
        saved = np.array(ops.to_numpy(theta[i:i + 1]))
        theta[i:i + 1] = ops.asarray(saved + eps)
        plus = net.loss(X, Y)
        theta[i:i + 1] = ops.asarray(saved - eps)
        minus = net.loss(X, Y)
        theta[i:i + 1] = ops.asarray(saved)
        numeric = (plus - minus) / (2 * eps)
        worst = max(worst, abs(analytic[i] - numeric) / max(abs(analytic[i]), abs(numeric), 1e-8))
    return worst


# ---- report -----------------------------------------------------------------------------------------
def format_report(rows: Sequence[Row], missing: dict[str, str] | None = None) -> str:
    """The table (backend × check, worst error; seconds for load), then every failure, then a verdict."""
    header = ["backend", "dtype", *CHECKS, "result"]
    lines = [header]
    for row in rows:
        cells = [row.backend, row.dtype]
        for check in CHECKS:
            result = row.results.get(check)
            if result is None:
                cells.append("-")
            elif result.value is None:
                cells.append("n/a" if result.ok else "ERROR")
            else:
                text = f"{result.value:.2f} s" if check == "load" else _fmt_error(result.value)
                cells.append(text if result.ok else f"FAIL {text}")
        cells.append("ok" if row.ok else "FAILED")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [f"gpubp selftest: each backend against the NumPy reference (Ops) at the same dtype; error = "
           f"worst |got − ref| / (1 + |ref|), within {TOLERANCE['float32']:g} (float32), "
           f"{TOLERANCE['float64']:g} (float64); finite diff.: backprop vs central differences of the "
           f"loss, within {FINITE_DIFF_TOLERANCE:g}", ""]
    for j, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    for name, reason in (missing or {}).items():
        out.append(f"not tested: {name}: {reason}")
    for row in rows:
        out += [f"not run: {row.backend} {row.dtype} {check}: {result.note}"
                for check, result in row.results.items() if result.ok and result.value is None]
    out += ["", _precision_line(rows)]
    failures = [f"  {row.backend} {row.dtype} {check}: {result.note}" for row in rows
                for check, result in row.results.items() if not result.ok]
    if failures:
        out += ["", "MISMATCH: these checks failed:", *failures]
    else:
        out += ["", f"all {len(rows)} backend/dtype rows passed"]
    return "\n".join(out)


def _precision_line(rows: Sequence[Row]) -> str:
    """Which matmul precision the rows were checked in (and what CUPY_TF32 did not change)."""
    tf32 = [f"{row.backend} {row.dtype}" for row in rows if row.precision == TF32]
    checked = "matmul_precision='fp32' on every row" if not tf32 else \
        f"matmul_precision='tf32' on {', '.join(tf32)}, checked within {TF32_TOLERANCE:g} (TF32 keeps a 10-bit " \
        "mantissa); 'fp32' on the other rows (float64, and the CPUs: float32 products in float32)"
    return f"matmuls: {checked}" + (f"; {describe_cupy_matmuls()}" if tf32_matmuls() else "")


def _fmt_error(value: float) -> str:
    return "0" if value == 0 else f"{value:.1e}"
