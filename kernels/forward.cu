// Forward pass of a layer after its matmul: z += b (row-broadcast), then a = σ(z), in one pass that
// writes z (kept for σ′ in the backward pass) and a together.
//
// gpubp_bias_activation_{f32,f64}(act, z, b, a, rows, cols): elementwise σ; z, a (rows, cols), b (cols,).
// gpubp_bias_softmax_{f32,f64}(z, b, a, rows, cols): aⱼ = e^(zⱼ − max z) / Σₖ e^(zₖ − max z) per row
// (one warp a row).
#include "activations.cuh"

namespace gpubp {

template <typename T, int ACT>
__device__ void bias_activation_loop(T* z, const T* b, T* a, size_t rows, size_t cols) {
    const size_t n = rows * cols, stride = grid_stride();
    size_t i = global_thread();
    // The column of element i, advanced by the stride without a division per element.
    const size_t col_step = stride % cols;
    size_t col = i % cols;
    for (; i < n; i += stride) {
        const T zi = z[i] + b[col];
        z[i] = zi;
        a[i] = act_f<ACT>(zi);
        col += col_step;
        if (col >= cols) col -= cols;
    }
}

template <typename T>
__device__ void bias_softmax_rows(T* z, const T* b, T* a, size_t rows, size_t cols) {
    const unsigned lane = threadIdx.x & 31;
    const size_t warps = grid_stride() >> 5;
    for (size_t r = global_thread() >> 5; r < rows; r += warps) {
        T* zr = z + r * cols;
        T* ar = a + r * cols;
        T peak = negative_infinity(T(0));
        for (size_t j = lane; j < cols; j += 32) {
            const T zj = zr[j] + b[j];
            zr[j] = zj;
            peak = (zj > peak || zj != zj) ? zj : peak;
        }
        peak = warp_allmax(peak);
        T total = T(0);
        for (size_t j = lane; j < cols; j += 32) {
            const T e = m_exp(zr[j] - peak);
            ar[j] = e;
            total += e;
        }
        total = warp_allsum(total);
        for (size_t j = lane; j < cols; j += 32) ar[j] = ar[j] / total;
    }
}

}  // namespace gpubp

#define GPUBP_FORWARD_KERNELS(T, SUFFIX)                                                                 \
    extern "C" __global__ void gpubp_bias_activation_##SUFFIX(int act, T* z, const T* b, T* a,          \
                                                              size_t rows, size_t cols) {               \
        gpubp::dispatch_activation(act, [&](auto tag) {                                                  \
            gpubp::bias_activation_loop<T, decltype(tag)::value>(z, b, a, rows, cols);                   \
        });                                                                                              \
    }                                                                                                    \
    extern "C" __global__ void gpubp_bias_softmax_##SUFFIX(T* z, const T* b, T* a, size_t rows,         \
                                                           size_t cols) {                               \
        gpubp::bias_softmax_rows<T>(z, b, a, rows, cols);                                                \
    }

GPUBP_FORWARD_KERNELS(float, f32)
GPUBP_FORWARD_KERNELS(double, f64)
