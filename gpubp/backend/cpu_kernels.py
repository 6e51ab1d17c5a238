"""The fused CPU kernels (Numba): the host counterparts of ``kernels/*.cu``, one pass per elementwise step.

Each kernel mirrors the NumPy reference (``Ops`` and ``gpubp/activations.py``) operation by operation, in
the array's own dtype, with every constant first rounded to that dtype as NumPy rounds Python floats, so
results agree with ``Ops`` to an ulp or two (libm's tanh/exp/log1p against NumPy's own; σ is computed as
1/(1 + e^−z), see ``activations.scalar_sigmoid``). No ``fastmath``: it would contract a·b + c into FMAs and
reorder sums, and the reference would no longer be matched. The layer kernels add the layer's matmul,
through BLAS, to the fused pass (``layer_forward``, ``layer_backward``, ``layer_gradients``).

σ and σ′ are the registry's one-element forms (``scalar_f``, ``scalar_df`` of ``activations.ACTIVATIONS``),
compiled here. The kernels that apply them are compiled once per activation: ``KERNELS[name]`` holds that
activation's kernels (``ActivationKernels``), each compiled on its first call, in which the activation id is
a compile-time constant, so that ``act_f``/``act_df`` resolve to its σ while compiling and every loop runs
σ inline, without a branch, and vectorises (the σ′ ⊙ g of ReLU is 30× faster so than with a branch on the
activation in the loop). A new activation in the registry needs nothing here.

The elementwise kernels take flat C-contiguous 1-D views with (rows, cols) passed as ``cols``, the output
and layer kernels the 2-D arrays; the cost is its kernel id (``Cost.kernel_id``, ``kernels.COST_IDS``). Each
kernel compiles once per dtype (two specialisations) and activation, cached on disk (``cache=True``), so only
the first run on a machine pays for the compile. Numba keys that cache on this file's source alone: after
editing an activation's one-element forms, delete ``gpubp/backend/__pycache__/cpu_kernels.*.nb[ci]``. The
kernels are serial: on the small batches where they matter a thread pool's wake-up costs more than the pass
itself, and at M/L sizes they are a few percent of a step (bench/README.md).
"""

from __future__ import annotations

import functools
import inspect
import math
import platform
from typing import Callable, NamedTuple

import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import njit
from numba.core import cgutils, types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload, register_jitable

from .. import activations
from ..activations import ACTIVATIONS
from .kernels import COST_IDS

QUADRATIC, CROSS_ENTROPY, LOG_LIKELIHOOD = (COST_IDS[n] for n in ("quadratic", "cross_entropy",
                                                                   "log_likelihood"))

#: error_model="numpy": x/0 is inf or NaN as in NumPy (Python's ZeroDivisionError check would also keep
#: every loop with a division from vectorising)
JIT_OPTIONS = dict(nogil=True, error_model="numpy")
jit = njit(cache=True, **JIT_OPTIONS)


# ---- σ and σ′ from the registry ----------------------------------------------------------------------
@functools.cache
def _compiled(function: Callable) -> Callable:
    """``function`` made callable from compiled code, with every plain function of gpubp.activations that
    it calls (the registry's one-element forms and their helpers)."""
    for name in function.__code__.co_names:
        callee = function.__globals__.get(name)
        if inspect.isfunction(callee) and callee.__module__ == activations.__name__:
            _compiled(callee)
    return register_jitable(**JIT_OPTIONS)(function)


def _choose_by_activation(stub: Callable, form: str) -> None:
    """Compile each call ``stub(act, *args)`` as the one-element ``form`` ("scalar_f" or "scalar_df") of the
    registry activation whose kernel id is ``act``, a compile-time constant: chosen while compiling, so no
    branch on the activation is left in the compiled code."""
    by_id = {act.kernel_id: _compiled(getattr(act, form)) for act in ACTIVATIONS.values()}

    @overload(stub, prefer_literal=True, jit_options=JIT_OPTIONS)
    def choose(act, *args):
        if not isinstance(act, types.IntegerLiteral) or act.literal_value not in by_id:
            raise TypingError(f"{stub.__name__} needs a constant kernel id of the registry, got {act}")
        form_of_act = by_id[act.literal_value]

        def apply(act, *args):
            return form_of_act(*args)

        return apply


def act_f(act, z, t):
    """σ(z) of the activation of constant kernel id ``act``, ``t`` the scalar type (compiled code only)."""
    raise TypeError("act_f runs only in compiled code")


def act_df(act, z, a, t):
    """σ′(z), given a = σ(z), of the activation of constant kernel id ``act`` (compiled code only)."""
    raise TypeError("act_df runs only in compiled code")


_choose_by_activation(act_f, "scalar_f")
_choose_by_activation(act_df, "scalar_df")


# ---- forward ------------------------------------------------------------------------------------
@jit
def _bias_activation(act, z, b, a, cols):
    """z += b (row-broadcast) and a = σ(z), one pass."""
    t = z.dtype.type
    for r in range(z.size // cols):
        base = r * cols
        for j in range(cols):
            v = z[base + j] + b[j]
            z[base + j] = v
            a[base + j] = act_f(act, v, t)


@jit
def bias_softmax(z, b, a, cols):
    """z += b, then a = e^(z − max z) / Σ e^(z − max z) per row."""
    for r in range(z.size // cols):
        base = r * cols
        top = z[base] + b[0]
        for j in range(cols):
            v = z[base + j] + b[j]
            z[base + j] = v
            if v > top or v != v:
                top = v
        total = a.dtype.type(0)
        for j in range(cols):
            e = math.exp(z[base + j] - top)
            a[base + j] = e
            total += e
        for j in range(cols):
            a[base + j] /= total


# ---- backward -------------------------------------------------------------------------------------
@jit
def _backprop_activation(act, z, a, g, out):
    """out = σ′(z) ⊙ g (BP1/BP2); ``out`` may be ``g``."""
    t = g.dtype.type
    if g.ctypes.data == out.ctypes.data:
        # in place as one array: given as two, LLVM's run-time overlap check sees them overlap and takes its
        # scalar loop (2-4× slower)
        for i in range(g.size):
            g[i] = act_df(act, z[i], a[i], t) * g[i]
    else:
        for i in range(g.size):
            out[i] = act_df(act, z[i], a[i], t) * g[i]


@jit
def softmax_backward(a, g, out, cols):
    """out = a ⊙ (g − Σⱼ gⱼaⱼ) per row (the softmax Jacobian applied to g); ``out`` may be ``g``."""
    for r in range(a.size // cols):
        base = r * cols
        dot = g.dtype.type(0)
        for j in range(cols):
            dot += g[base + j] * a[base + j]
        for j in range(cols):
            out[base + j] = (g[base + j] - dot) * a[base + j]


@jit
def _clip(a, eps, t):
    return eps if a < eps else (t(1) - eps if a > t(1) - eps else a)


@jit
def _cost_term(cost, ai, yi, eps, labelled, t):
    """The element's share of Cₓ (kernels/costs.cuh): ½(a − y)², −[y ln a + (1 − y) ln(1 − a)], −y ln a."""
    if cost == QUADRATIC:
        d = ai - yi
        return t(0.5) * (d * d)
    if cost == CROSS_ENTROPY:
        ac = _clip(ai, eps, t)
        return -(yi * math.log(ac) + (t(1) - yi) * math.log(t(1) - ac))
    if yi == 0:
        return t(0)
    return -(yi * math.log(max(ai, eps) if labelled else _clip(ai, eps, t)))


@jit
def _cost_grad(cost, stable, ai, yi, eps, t):
    """∂Cₓ/∂a for the element, or a − y in a stable pair."""
    if stable or cost == QUADRATIC:
        return ai - yi
    ac = _clip(ai, eps, t)
    if cost == CROSS_ENTROPY:
        return (ac - yi) / (ac * (t(1) - ac))
    return -yi / ac


@jit
def _output_delta(act, cost, stable, z, a, y, labels, out, loss_sum, log_eps):
    """δᴸ = ∇ₐC ⊙ σ′(zᴸ), or aᴸ − y when ``stable``, into ``out`` (skipped when it is empty); Σₓ Cₓ added
    into ``loss_sum[0]`` (skipped when empty), summed in float64 with Neumaier's compensation so that the
    loss is exact to an ulp (finite differences of it check the gradient). Targets: ``y`` like ``a``, or
    int64 ``labels`` (rows,) when ``y`` is empty; ``log_eps`` is the clip of the logs' arguments.
    Hyper-parameters arrive as Python floats, here and in the updates below, and are rounded to the arrays'
    dtype as NumPy rounds them (a Python float argument costs Numba's dispatcher less than a NumPy scalar)."""
    t = a.dtype.type
    eps = t(log_eps)
    write, labelled, with_loss = out.size > 0, y.size == 0, loss_sum.size > 0
    total, compensation = 0.0, 0.0
    for r in range(a.shape[0]):
        for j in range(a.shape[1]):
            ai = a[r, j]
            if labelled:
                yi = t(1) if labels[r] == j else t(0)
            else:
                yi = y[r, j]
            if with_loss:
                term = float(_cost_term(cost, ai, yi, eps, labelled, t))
                running = total + term
                if abs(total) >= abs(term):
                    compensation += (total - running) + term
                else:
                    compensation += (term - running) + total
                total = running
            if write:
                grad = _cost_grad(cost, stable, ai, yi, eps, t)
                out[r, j] = grad if stable else act_df(act, z[r, j], ai, t) * grad
    if with_loss:
        loss_sum[0] += total + compensation


# ---- whole layers: the matmul (BLAS, through Numba's np.dot) and the fused pass in one call ------------
# Numba calls BLAS directly (SciPy's cython_blas), without NumPy's per-call ufunc machinery: on small layers
# that machinery and the Python between the calls cost as much as the arithmetic. Each kernel first checks
# its arrays and returns False, having touched nothing, when the shapes do not fit (the caller then runs the
# reference, which raises NumPy's error), when the matmul is larger than SMALL_MATMUL, or when its output
# overlaps an input (NumPy's matmul buffers such a product; BLAS would read what it has already written).
# Arrays: 2-D (1-D biases), C-contiguous, one float dtype.

#: the largest matmul (m·n·k multiply-adds) the layer kernels take: OpenBLAS runs up to 65536 × 4 of them
#: (its SMP threshold × GEMM_MULTITHREAD_THRESHOLD) on one thread. Larger ones go to NumPy's matmul, whose
#: call overhead no longer matters there: SciPy's and NumPy's copies of OpenBLAS each keep a thread pool,
#: and two pools taking turns spin against each other (each GEMM of config M ran 2× slower)
SMALL_MATMUL = 65536 * 4


@jit
def _overlap(x, y):
    """Whether two C-contiguous arrays share memory (their byte ranges intersect)."""
    return x.ctypes.data < y.ctypes.data + y.nbytes and y.ctypes.data < x.ctypes.data + x.nbytes


@jit
def _layer_matmul(x, w, b, z, a):
    """zˡ = aˡ⁻¹ Wˡᵀ into ``z`` for x = aˡ⁻¹, w = Wˡ; False, nothing done, where the arrays (the bias ``b``
    and the output ``a`` included) do not fit the layer kernels."""
    m, n_out = z.shape
    if m == 0 or x.shape[0] != m or w.shape[0] != n_out or w.shape[1] != x.shape[1] \
            or b.shape[0] != n_out or a.shape != z.shape or m * n_out * x.shape[1] > SMALL_MATMUL \
            or _overlap(z, x) or _overlap(z, w):
        return False
    np.dot(x, w.T, z)
    return True


@jit
def _layer_forward(act, x, w, b, z, a):
    """zˡ = aˡ⁻¹ Wˡᵀ + bˡ and aˡ = σ(zˡ) for x = aˡ⁻¹, w = Wˡ."""
    if not _layer_matmul(x, w, b, z, a):
        return False
    _bias_activation(act, z.reshape(z.size), b, a.reshape(a.size), z.shape[1])
    return True


@jit
def layer_forward_softmax(x, w, b, z, a):
    """zˡ = aˡ⁻¹ Wˡᵀ + bˡ and aˡ = softmax(zˡ) row by row for x = aˡ⁻¹, w = Wˡ."""
    if not _layer_matmul(x, w, b, z, a):
        return False
    bias_softmax(z.reshape(z.size), b, a.reshape(a.size), z.shape[1])
    return True


@jit
def _layer_backward(act, delta, w, z, a, out):
    """BP2: δˡ = (δˡ⁺¹ Wˡ⁺¹) ⊙ σ′(zˡ) into ``out``, for delta = δˡ⁺¹, w = Wˡ⁺¹ (``z`` may be ``a`` where σ′
    needs only a)."""
    m, n = out.shape
    if m == 0 or delta.shape[0] != m or w.shape[0] != delta.shape[1] or w.shape[1] != n \
            or z.shape != out.shape or a.shape != out.shape or m * n * w.shape[0] > SMALL_MATMUL \
            or _overlap(out, delta) or _overlap(out, w):
        return False
    _backward(act, delta, w, z, a, out)
    return True


@jit
def _backward(act, delta, w, z, a, out):
    """BP2 unchecked: out = (delta w) ⊙ σ′(z)."""
    np.dot(delta, w, out)
    flat = out.reshape(out.size)
    _backprop_activation(act, z.reshape(z.size), a.reshape(a.size), flat, flat)


@jit
def layer_gradients(delta, a_prev, nabla_w, nabla_b):
    """BP3: ∂C/∂bˡ = Σₓ δˡ (rows added in order, as NumPy's sum(axis=0) does) and BP4: ∂C/∂Wˡ = δˡᵀ aˡ⁻¹."""
    m, n_out = delta.shape
    if m == 0 or a_prev.shape[0] != m or nabla_w.shape[0] != n_out or nabla_w.shape[1] != a_prev.shape[1] \
            or nabla_b.shape[0] != n_out or m * n_out * a_prev.shape[1] > SMALL_MATMUL \
            or _overlap(nabla_w, delta) or _overlap(nabla_w, a_prev) or _overlap(nabla_b, delta):
        return False
    _gradients(delta, a_prev, nabla_w, nabla_b)
    return True


@jit
def _gradients(delta, a_prev, nabla_w, nabla_b):
    """BP3 and BP4 unchecked."""
    np.dot(delta.T, a_prev, nabla_w)
    for j in range(delta.shape[1]):
        nabla_b[j] = delta[0, j]
    for r in range(1, delta.shape[0]):
        for j in range(delta.shape[1]):
            nabla_b[j] += delta[r, j]


# ---- the kernels of each activation ----------------------------------------------------------------
class ActivationKernels(NamedTuple):
    """One activation's kernels, called without the activation (see the functions of the same names)."""

    #: (z, b, a, cols): z += b and a = σ(z)
    bias_activation: Callable
    #: (z, a, g, out): out = σ′(z) ⊙ g
    backprop_activation: Callable
    #: (cost, stable, z, a, y, labels, out, loss_sum, log_eps): δᴸ and Σₓ Cₓ
    output_delta: Callable
    #: (x, w, b, z, a) -> bool: a layer's forward pass
    layer_forward: Callable
    #: (delta, w, z, a, out) -> bool: BP2
    layer_backward: Callable


def _activation_kernels(act: int) -> ActivationKernels:
    """The kernels of activation id ``act``: closures over the constant id, so that each compiles (and is
    cached on disk) for that activation alone."""
    @jit
    def bias_activation(z, b, a, cols):
        _bias_activation(act, z, b, a, cols)

    @jit
    def backprop_activation(z, a, g, out):
        _backprop_activation(act, z, a, g, out)

    @jit
    def output_delta(cost, stable, z, a, y, labels, out, loss_sum, log_eps):
        _output_delta(act, cost, stable, z, a, y, labels, out, loss_sum, log_eps)

    @jit
    def layer_forward(x, w, b, z, a):
        return _layer_forward(act, x, w, b, z, a)

    @jit
    def layer_backward(delta, w, z, a, out):
        return _layer_backward(act, delta, w, z, a, out)

    return ActivationKernels(bias_activation, backprop_activation, output_delta, layer_forward, layer_backward)


#: the kernels of every registry activation, by name
KERNELS = {name: _activation_kernels(act.kernel_id) for name, act in ACTIVATIONS.items()}


# ---- optimizers over the flat parameter buffer (Ops.sgd_update & co.) --------------------------------
@jit
def sgd_update(params, grad, n_weights, decay, step):
    """w ← w·(1 − ηλ) − (η s)·g, ``decay`` = 1 − ηλ and ``step`` = η s; the biases (from ``n_weights`` on)
    skip the decay."""
    t = params.dtype.type
    keep, eta_s = t(decay), t(step)
    for i in range(n_weights):
        params[i] = params[i] * keep - grad[i] * eta_s
    for i in range(n_weights, params.size):
        params[i] = params[i] - grad[i] * eta_s


@jit
def _momentum_span(params, grad, velocity, lo, hi, s, lam, lr, mu):
    for i in range(lo, hi):
        g = grad[i] * s + lam * params[i]
        v = velocity[i] * mu - g * lr
        velocity[i] = v
        params[i] = params[i] + v


@jit
def momentum_update(params, grad, velocity, n_weights, s, lam, lr, mu):
    """g ← s·g + λw; v ← μv − η g; w ← w + v (λ on the weights only)."""
    t = params.dtype.type
    _momentum_span(params, grad, velocity, 0, n_weights, t(s), t(lam), t(lr), t(mu))
    _momentum_span(params, grad, velocity, n_weights, params.size, t(s), t(0), t(lr), t(mu))


# momentum and Nesterov differ in one line each; kept as two loops (not one with a flag) so that each loop
# body is branch-free and vectorises, as the CUDA kernels in optim.cu are two kernels
@jit
def _nesterov_span(params, grad, velocity, lo, hi, s, lam, lr, mu):
    for i in range(lo, hi):
        step = (grad[i] * s + lam * params[i]) * lr
        v = velocity[i] * mu - step
        velocity[i] = v
        params[i] = (params[i] + v * mu) - step


@jit
def nesterov_update(params, grad, velocity, n_weights, s, lam, lr, mu):
    """g ← s·g + λw; v ← μv − η g; w ← w + μv − η g (λ on the weights only)."""
    t = params.dtype.type
    _nesterov_span(params, grad, velocity, 0, n_weights, t(s), t(lam), t(lr), t(mu))
    _nesterov_span(params, grad, velocity, n_weights, params.size, t(s), t(0), t(lr), t(mu))


@jit
def _adam_span(params, grad, m, v, lo, hi, s, lam, beta1, one_minus_beta1, beta2, one_minus_beta2,
               step_size, eps_hat):
    for i in range(lo, hi):
        g = grad[i] * s + lam * params[i]
        mi = m[i] * beta1 + one_minus_beta1 * g
        vi = v[i] * beta2 + one_minus_beta2 * (g * g)
        m[i] = mi
        v[i] = vi
        params[i] = params[i] - mi / (math.sqrt(vi) + eps_hat) * step_size


@jit
def adam_update(params, grad, m, v, n_weights, s, lam, beta1, one_minus_beta1, beta2, one_minus_beta2,
                step_size, eps_hat):
    """g ← s·g + λw; m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; w ← w − (m / (√v + ε̂))·α̂ (λ on the weights
    only). The bias corrections α̂ = η √(1−β₂ᵗ) / (1−β₁ᵗ) and ε̂ = ε √(1−β₂ᵗ) arrive rounded to the buffer's
    dtype, as in the CUDA kernel: NumPy's reference adds and multiplies them in float64 and rounds after, so
    float32 results can differ by an ulp (doing that here would keep the loop from vectorising: 17× slower)."""
    t = params.dtype.type
    b1, c1, b2, c2, alpha, eps = t(beta1), t(one_minus_beta1), t(beta2), t(one_minus_beta2), t(step_size), \
        t(eps_hat)
    _adam_span(params, grad, m, v, 0, n_weights, t(s), t(lam), b1, c1, b2, c2, alpha, eps)
    _adam_span(params, grad, m, v, n_weights, params.size, t(s), t(0), b1, c1, b2, c2, alpha, eps)


# ---- a chunk of training steps as one call (gpubp.backend.numba_program) ------------------------------
# The trainer's eager step, batch after batch, with the same kernels as above (so the same arithmetic, in
# the same order): gather the batch through the epoch's order, forward, BP1 with the loss, BP3/BP4 and BP2
# layer by layer, then the optimizer's update. The matmuls are BLAS through Numba at every size (one thread
# pool only, SciPy's: NumPy's stays idle while a chunk runs).
SGD, MOMENTUM, NESTEROV, ADAM = range(4)
#: the chunk kernel's optimizer ids, by optimizer name
OPTIMIZER_IDS = {"sgd": SGD, "momentum": MOMENTUM, "nesterov": NESTEROV, "adam": ADAM}
#: the optimizer settings the chunk kernel reads (float64, in this order; booleans as 0.0 / 1.0)
STEP_SETTINGS = ("current_lr", "momentum", "weight_decay", "decay_per_sample", "beta1", "beta2", "eps",
                 "eps_on_corrected_v")


#: x86's MXCSR bits "flush to zero" (subnormal results become 0) and "denormals are zero" (subnormal inputs
#: read as 0)
FTZ_DAZ = 0x8040


@intrinsic
def _swap_mxcsr(typingctx, value):
    """Set the x86 floating-point control register MXCSR of this thread to ``value``; returns the old one."""
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        pointer = builder.bitcast(slot, ir.IntType(8).as_pointer())
        access = ir.FunctionType(ir.VoidType(), [pointer.type])
        builder.call(cgutils.get_or_insert_function(builder.module, access, "llvm.x86.sse.stmxcsr"), [pointer])
        old = builder.load(slot)
        builder.store(args[0], slot)
        builder.call(cgutils.get_or_insert_function(builder.module, access, "llvm.x86.sse.ldmxcsr"), [pointer])
        return old

    return types.uint32(types.uint32), codegen


#: whether this CPU is an x86 one (FTZ/DAZ in MXCSR)
X86 = platform.machine().lower() in ("x86_64", "amd64")

if X86:
    @jit
    def flush_subnormals():
        """Flush subnormal floats to zero in this thread (as XLA does); returns what ``restore`` takes."""
        old = _swap_mxcsr(np.uint32(0))
        _swap_mxcsr(old | np.uint32(FTZ_DAZ))
        return old

    @jit
    def restore_subnormals(saved):
        _swap_mxcsr(saved)
else:  # elsewhere subnormals stay (Adam's decaying moments then run slower, not differently)
    @jit
    def flush_subnormals():
        return np.uint32(0)

    @jit
    def restore_subnormals(saved):
        pass


#: LLVM's prefetch intrinsic, named after its pointer type (opaque pointers from LLVM 15 on)
PREFETCH = "llvm.prefetch.p0" if llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch_row(typingctx, x, row):
    """Ask the CPU to bring row ``row`` of the 2-D C-contiguous ``x`` into its caches (a hint: it waits for
    nothing and changes nothing)."""
    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        byte_pointer = ir.IntType(8).as_pointer()
        start = builder.gep(builder.bitcast(array.data, byte_pointer),
                            [builder.mul(args[1], builder.extract_value(array.strides, 0))])
        i32, intp = ir.IntType(32), context.get_value_type(types.intp)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), PREFETCH)
        nbytes = builder.mul(builder.extract_value(array.shape, 1), intp(signature.args[0].dtype.bitwidth // 8))
        with cgutils.for_range_slice(builder, intp(0), nbytes, intp(64)) as (offset, _):  # each cache line
            builder.call(prefetch, [builder.gep(start, [offset]), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()

    return types.void(x, row), codegen


@jit
def _affine(x, w, z, scratch):
    """zˡ = aˡ⁻¹ Wˡᵀ into ``z`` (m, n_out) for x = aˡ⁻¹, w = Wˡ; ``scratch`` (m·n_out elements) is free
    memory. For 16 ≤ m ≤ 64 batches of matmuls beyond SMALL_MATMUL, OpenBLAS computes zᵀ = W aᵀ 1.4–1.6×
    faster than z = a Wᵀ (the same products in the same order; transposing back costs 2 %), measured on the
    2-core machine of bench/README.md (32×784×100: 29 µs against 47 µs); elsewhere the direct form was as
    fast or faster."""
    m, n_out = z.shape
    if 16 <= m <= 64 and n_out >= m and m * n_out * x.shape[1] > SMALL_MATMUL:
        zt = scratch[:m * n_out].reshape(n_out, m)
        np.dot(w, x.T, zt)
        for i in range(m):
            for j in range(n_out):
                z[i, j] = zt[j, i]
    else:
        np.dot(x, w.T, z)


@jit
def _gather(source, order, start, m, out):
    """out[r] = source[order[start + r]] for the batch's m rows (or labels)."""
    for r in range(m):
        out[r] = source[order[start + r]]


@jit
def _prefetch_batch(x, order, start, m):
    """Prefetch the rows of x the batch at ``start`` will gather (they lie anywhere in the data set: each
    would otherwise be a wait on memory)."""
    for r in range(min(m, order.size - start)):
        _prefetch_row(x, order[start + r])


@jit
def _update(optimizer, params, grad, first_buffer, second_buffer, n_weights, s, settings, step):
    """The optimizer's step ``step`` with grad_scale ``s``: the scalars derived as ``Optimizer.step`` and
    ``NumbaOps``' updates derive them (float64, in the same order), then the same update kernel."""
    lr, mu, weight_decay = settings[0], settings[1], settings[2]
    lam = weight_decay * s if settings[3] != 0.0 else weight_decay
    if optimizer == SGD:
        sgd_update(params, grad, n_weights, 1.0 - lr * lam, lr * s)
    elif optimizer == MOMENTUM:
        momentum_update(params, grad, first_buffer, n_weights, s, lam, lr, mu)
    elif optimizer == NESTEROV:
        nesterov_update(params, grad, first_buffer, n_weights, s, lam, lr, mu)
    else:
        beta1, beta2, eps, t = settings[4], settings[5], settings[6], float(step)  # β**t as Python's pow
        if settings[7] == 0.0:
            eps = eps / math.sqrt(1.0 - beta2 ** t)
        step_size = lr * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
        eps_hat = eps * math.sqrt(1.0 - beta2 ** t)
        adam_update(params, grad, first_buffer, second_buffer, n_weights, s, lam, beta1, 1.0 - beta1, beta2,
                    1.0 - beta2, step_size, eps_hat)


@functools.cache
def chunk_kernel(hidden: int, output: int, softmax: bool, cost: int, stable: bool, optimizer: int) -> Callable:
    """The compiled chunk for one network kind: hidden and output activation ids (``output`` unused when
    ``softmax``), cost id, whether δᴸ = aᴸ − y (``stable``), optimizer id. Each is a compile-time constant.

    chunk(x, y, labels, order, first, count, batch_size, sizes, params, grad, n_weights, first_buffer,
    second_buffer, zs, activations, deltas, xb, yb, lb, settings, t0, loss_sum, log_eps) trains on batches
    ``first`` … ``first + count − 1``: batch i is rows order[i·bs : min((i+1)·bs, n)] of x and of the targets
    (``labels`` int64 (n,), or ``y`` (n, out) where ``labels`` is empty). ``zs``, ``activations`` and
    ``deltas`` are flat buffers holding layer l's (bs, sizes[l+1]) block after those of the layers before;
    ``xb``, ``yb`` (or (0, 0)), ``lb`` (or (0,)) take the gathered batch; ``t0`` is the optimizer's step
    count before the chunk."""
    delta_act = ACTIVATIONS["identity"].kernel_id if softmax else output

    @jit
    def chunk(x, y, labels, order, first, count, batch_size, sizes, params, grad, n_weights, first_buffer,
              second_buffer, zs, activations, deltas, xb, yb, lb, settings, t0, loss_sum, log_eps):
        n, layers, labelled = x.shape[0], sizes.size - 1, labels.size > 0
        y_batch, label_batch = yb, lb
        saved = flush_subnormals()
        for i in range(first, first + count):
            start = i * batch_size
            m = min(start + batch_size, n) - start
            _gather(x, order, start, m, xb)
            _prefetch_batch(x, order, start + batch_size, batch_size)  # the next batch's, during this one
            if labelled:
                _gather(labels, order, start, m, lb)
                label_batch = lb[:m]
            else:
                _gather(y, order, start, m, yb)
                y_batch = yb[:m]
            # forward: zˡ = aˡ⁻¹ Wˡᵀ + bˡ; aˡ = σ(zˡ)
            a_prev, w_at, b_at, unit_at = xb[:m], 0, n_weights, 0
            for l in range(layers):
                n_in, n_out = sizes[l], sizes[l + 1]
                w = params[w_at:w_at + n_out * n_in].reshape(n_out, n_in)
                z = zs[unit_at * batch_size:unit_at * batch_size + m * n_out]
                a = activations[unit_at * batch_size:unit_at * batch_size + m * n_out]
                _affine(a_prev, w, z.reshape(m, n_out), a)
                b = params[b_at:b_at + n_out]
                if l < layers - 1:
                    _bias_activation(hidden, z, b, a, n_out)
                elif softmax:
                    bias_softmax(z, b, a, n_out)
                else:
                    _bias_activation(output, z, b, a, n_out)
                a_prev = a.reshape(m, n_out)
                w_at, b_at, unit_at = w_at + n_out * n_in, b_at + n_out, unit_at + n_out
            # BP1: δᴸ = ∇ₐC ⊙ σ′(zᴸ), and Σₓ Cₓ into loss_sum
            n_out = sizes[layers]
            unit_at -= n_out
            at = unit_at * batch_size
            z = zs[at:at + m * n_out].reshape(m, n_out)
            delta = deltas[at:at + m * n_out].reshape(m, n_out)
            _output_delta(delta_act, cost, stable, z, a_prev, y_batch, label_batch, delta, loss_sum, log_eps)
            if softmax and not stable:
                softmax_backward(a_prev.reshape(a_prev.size), delta.reshape(delta.size),
                                 delta.reshape(delta.size), n_out)
            # backward: BP3 and BP4 for each layer, BP2 down to the one below
            for l in range(layers - 1, -1, -1):
                n_in = sizes[l]
                w_at -= n_out * n_in
                b_at -= n_out
                if l > 0:
                    below = (unit_at - n_in) * batch_size
                    a_prev = activations[below:below + m * n_in].reshape(m, n_in)
                else:
                    a_prev = xb[:m]
                _gradients(delta, a_prev, grad[w_at:w_at + n_out * n_in].reshape(n_out, n_in),
                           grad[b_at:b_at + n_out])
                if l > 0:
                    below = (unit_at - n_in) * batch_size
                    z = zs[below:below + m * n_in].reshape(m, n_in)
                    out = deltas[below:below + m * n_in].reshape(m, n_in)
                    _backward(hidden, delta, params[w_at:w_at + n_out * n_in].reshape(n_out, n_in), z, a_prev,
                              out)
                    delta, n_out, unit_at = out, n_in, unit_at - n_in
            _update(optimizer, params, grad, first_buffer, second_buffer, n_weights, 1.0 / m, settings,
                    t0 + (i - first) + 1)
        restore_subnormals(saved)

    return chunk
