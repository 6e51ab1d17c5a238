// Output layer (BP1): δᴸ = ∇ₐC ⊙ σ′(zᴸ) and the summed cost Σₓ Cₓ, in one pass.
//
// gpubp_output_delta_{T}_{ACC}(act, cost, stable, z, a, y, labels, out, loss_sum, eps, rows, cols):
//   δ = a − y in a stable pair (sigmoid + cross_entropy, softmax + log_likelihood: pass act = identity),
//   else cost_grad ⊙ σ′ for elementwise σ (softmax: pass identity here, then gpubp_softmax_backward).
//   Targets are y (rows, cols) or, when y is null, int64 labels (rows,): yⱼ = [j == label], gathered here,
//   no one-hot in memory. out null: only the loss. loss_sum null: no loss; else Σ of every element's
//   cost_term is added to *loss_sum (type ACC) with one atomic per block.
#include "activations.cuh"
#include "costs.cuh"

namespace gpubp {

template <typename T, typename ACC, int ACT>
__device__ void output_delta_loop(int cost, bool stable, const T* z, const T* a, const T* y,
                                  const long long* labels, T* out, ACC* loss_sum, T eps, size_t rows,
                                  size_t cols) {
    const size_t n = rows * cols, stride = grid_stride();
    size_t i = global_thread();
    // Row and column of element i, advanced by the stride without a division per element.
    const size_t row_step = stride / cols, col_step = stride % cols;
    size_t row = i / cols, col = i % cols;
    ACC loss = ACC(0);
    for (; i < n; i += stride) {
        const T ai = a[i];
        const T yi = y ? y[i] : (labels[row] == (long long)col ? T(1) : T(0));
        if (loss_sum) loss += ACC(cost_term(cost, ai, yi, eps, y == nullptr));
        if (out) {
            const T zi = act_needs_z(ACT) ? z[i] : T(0);
            out[i] = cost_grad(cost, ai, yi, eps, stable) * act_df<ACT>(zi, ai);
        }
        row += row_step;
        col += col_step;
        if (col >= cols) {
            col -= cols;
            ++row;
        }
    }
    if (loss_sum) block_sum_atomic(loss, loss_sum);
}

}  // namespace gpubp

#define GPUBP_OUTPUT_KERNEL(T, ACC, SUFFIX)                                                              \
    extern "C" __global__ void gpubp_output_delta_##SUFFIX(                                              \
        int act, int cost, int stable, const T* z, const T* a, const T* y, const long long* labels,      \
        T* out, ACC* loss_sum, T eps, size_t rows, size_t cols) {                                        \
        gpubp::dispatch_activation(act, [&](auto tag) {                                                  \
            gpubp::output_delta_loop<T, ACC, decltype(tag)::value>(cost, stable != 0, z, a, y, labels,   \
                                                                   out, loss_sum, eps, rows, cols);      \
        });                                                                                              \
    }

GPUBP_OUTPUT_KERNEL(float, float, f32_f32)
GPUBP_OUTPUT_KERNEL(float, double, f32_f64)
GPUBP_OUTPUT_KERNEL(double, double, f64_f64)
