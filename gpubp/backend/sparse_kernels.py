"""The fused CPU backend's kernels for a sparse first layer: a⁰ = X as a CSR matrix (indptr, indices, data).

Both products run over the weight matrix row by row (one row per output neuron o): the row Wᵒ (or ∂C/∂Wᵒ)
is read or written while it serves the whole batch, so each of its cache lines comes from memory once per
batch, however the batch's nonzeros scatter over the columns. Neither allocates: the forward writes z, BP4
zeroes its output row and scatters into it (the flat gradient buffer's view). Sums run in the arrays' dtype,
each row's nonzeros in their stored order; serial, as ``cpu_kernels``.
"""

from __future__ import annotations

from .cpu_kernels import jit


@jit
def csr_forward(indptr, indices, data, w, z):
    """z = a wᵀ: z[i, o] = Σₖ data[k] w[o, indices[k]] over row i's nonzeros k (forward z¹ = a⁰ W¹ᵀ)."""
    m, n_out = z.shape
    for o in range(n_out):
        row = w[o]
        for i in range(m):
            acc = z.dtype.type(0)
            for k in range(indptr[i], indptr[i + 1]):
                acc += data[k] * row[indices[k]]
            z[i, o] = acc


@jit
def csr_weight_gradient(indptr, indices, data, delta, out):
    """BP4: out = δᵀ a, out[o, indices[k]] = Σ over rows i of δ[i, o] data[k] (∂C/∂W¹ = δ¹ᵀ a⁰)."""
    m, n_out = delta.shape
    for o in range(n_out):
        row = out[o]
        row[:] = 0
        for i in range(m):
            d = delta[i, o]
            for k in range(indptr[i], indptr[i + 1]):
                row[indices[k]] += d * data[k]
