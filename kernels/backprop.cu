// Backward pass through an activation: δ = σ′(z) ⊙ g (BP1/BP2's Hadamard product), one fused pass.
//
// gpubp_backprop_{f32,f64}(act, z, a, g, out, n): reads z or a (whichever σ′ needs) and g, writes out;
// out may be g. 16-byte vector loads when every pointer is 16-byte aligned, then a scalar tail.
// gpubp_softmax_backward_{f32,f64}(a, g, out, rows, cols): δ = a ⊙ (g − Σⱼ gⱼaⱼ) per row (one warp a row).
#include "activations.cuh"

namespace gpubp {

template <typename T, int ACT>
__device__ __forceinline__ T backprop_one(const T* z, const T* a, const T* g, size_t i) {
    const T zi = act_needs_z(ACT) ? z[i] : T(0);
    const T ai = act_needs_a(ACT) ? a[i] : T(0);
    return act_df<ACT>(zi, ai) * g[i];
}

template <typename T, int ACT>
__device__ void backprop_loop(const T* z, const T* a, const T* g, T* out, size_t n) {
    using V = typename Vec16<T>::type;
    constexpr int W = Vec16<T>::width;
    const size_t start = global_thread(), stride = grid_stride();
    size_t tail = 0;
    if (aligned16(z) && aligned16(a) && aligned16(g) && aligned16(out)) {
        const size_t nv = n / W;
        for (size_t k = start; k < nv; k += stride) {
            V zv, av, gv = reinterpret_cast<const V*>(g)[k], ov;
            if (act_needs_z(ACT)) zv = reinterpret_cast<const V*>(z)[k];
            if (act_needs_a(ACT)) av = reinterpret_cast<const V*>(a)[k];
            const T* ze = reinterpret_cast<const T*>(&zv);
            const T* ae = reinterpret_cast<const T*>(&av);
            const T* ge = reinterpret_cast<const T*>(&gv);
            T* oe = reinterpret_cast<T*>(&ov);
#pragma unroll
            for (int j = 0; j < W; ++j) {
                oe[j] = act_df<ACT>(act_needs_z(ACT) ? ze[j] : T(0), act_needs_a(ACT) ? ae[j] : T(0)) * ge[j];
            }
            reinterpret_cast<V*>(out)[k] = ov;
        }
        tail = nv * W;
    }
    for (size_t i = tail + start; i < n; i += stride) out[i] = backprop_one<T, ACT>(z, a, g, i);
}

template <typename T>
__device__ void softmax_backward_rows(const T* a, const T* g, T* out, size_t rows, size_t cols) {
    const unsigned lane = threadIdx.x & 31;
    const size_t warps = grid_stride() >> 5;
    for (size_t r = global_thread() >> 5; r < rows; r += warps) {
        const T* ar = a + r * cols;
        const T* gr = g + r * cols;
        T dot = T(0);
        for (size_t j = lane; j < cols; j += 32) dot += gr[j] * ar[j];
        dot = warp_allsum(dot);  // every lane has read its g before any lane writes out (out may be g)
        T* outr = out + r * cols;
        for (size_t j = lane; j < cols; j += 32) outr[j] = (gr[j] - dot) * ar[j];
    }
}

}  // namespace gpubp

#define GPUBP_BACKPROP_KERNELS(T, SUFFIX)                                                                \
    extern "C" __global__ void gpubp_backprop_##SUFFIX(int act, const T* z, const T* a, const T* g,     \
                                                       T* out, size_t n) {                              \
        gpubp::dispatch_activation(act, [&](auto tag) {                                                  \
            gpubp::backprop_loop<T, decltype(tag)::value>(z, a, g, out, n);                              \
        });                                                                                              \
    }                                                                                                    \
    extern "C" __global__ void gpubp_softmax_backward_##SUFFIX(const T* a, const T* g, T* out,          \
                                                               size_t rows, size_t cols) {              \
        gpubp::softmax_backward_rows<T>(a, g, out, rows, cols);                                          \
    }

GPUBP_BACKPROP_KERNELS(float, f32)
GPUBP_BACKPROP_KERNELS(double, f64)
