// Optimizer updates over the flat parameter buffer, one fused pass each (Ops.sgd_update & co.).
//
// params holds every weight first (n_weights of them), then every bias; L2 weight decay λ applies to the
// weights only. grad holds summed gradients; s (grad_scale) turns them into means. grad is only read.
// Scalars arrive precomputed on the host in double and rounded to T, as NumPy does with Python floats.
//
// gpubp_sgd_update_T(params, grad, n, n_weights, decay, step):          w ← w·(1 − ηλ) − (η s)·g
//   (decay = 1 − ηλ, step = η s; the biases skip the decay).
// gpubp_momentum_update_T(params, grad, velocity, n, n_weights, s, lambda, lr, mu):
//   v ← μv − η (s·g + λw); w ← w + v.
// gpubp_nesterov_update_T(params, grad, velocity, n, n_weights, s, lambda, lr, mu):
//   g ← s·g + λw; v ← μv − ηg; w ← w + μv − ηg.
// gpubp_adam_update_T(params, grad, m, v, n, n_weights, s, lambda, beta1, one_minus_beta1, beta2,
//                     one_minus_beta2, step_size, eps_hat):
//   g ← s·g + λw; m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; w ← w − (m / (√v + ε̂))·α̂,
//   with α̂ = η √(1−β₂ᵗ) / (1−β₁ᵗ) and ε̂ = ε √(1−β₂ᵗ) (the bias corrections folded into two scalars).
//
// gpubp_{sgd,momentum,nesterov,adam}_update_indirect_T(params, grad, [state...,] n, n_weights, scalars):
// the same updates with their scalars read from device memory, in the order above (sgd: decay, step;
// momentum/nesterov: s, lambda, lr, mu; adam: s, lambda, beta1, …, eps_hat). A CUDA graph replays its
// launches with the arguments they were captured with; these read each step's values (Adam's bias
// corrections change every step) from a buffer refilled before each replay.
#include "common.cuh"

namespace gpubp {

template <typename T>
__device__ void sgd_update(T* params, const T* grad, size_t n, size_t n_weights, T decay, T step) {
    for (size_t i = global_thread(); i < n; i += grid_stride()) {
        const T w = i < n_weights ? params[i] * decay : params[i];
        params[i] = w - grad[i] * step;
    }
}

// momentum and Nesterov share their first lines: two functions rather than one with a flag
template <typename T>
__device__ void momentum_update(T* params, const T* grad, T* velocity, size_t n, size_t n_weights, T s,
                                T lambda, T lr, T mu) {
    for (size_t i = global_thread(); i < n; i += grid_stride()) {
        T gi = grad[i] * s;
        if (i < n_weights) gi += lambda * params[i];
        const T vi = velocity[i] * mu - gi * lr;
        velocity[i] = vi;
        params[i] += vi;
    }
}

template <typename T>
__device__ void nesterov_update(T* params, const T* grad, T* velocity, size_t n, size_t n_weights, T s,
                                T lambda, T lr, T mu) {
    for (size_t i = global_thread(); i < n; i += grid_stride()) {
        T gi = grad[i] * s;
        if (i < n_weights) gi += lambda * params[i];
        const T step = gi * lr;
        const T vi = velocity[i] * mu - step;
        velocity[i] = vi;
        params[i] = (params[i] + mu * vi) - step;
    }
}

template <typename T>
__device__ void adam_update(T* params, const T* grad, T* m, T* v, size_t n, size_t n_weights, T s, T lambda,
                            T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T step_size, T eps_hat) {
    for (size_t i = global_thread(); i < n; i += grid_stride()) {
        T gi = grad[i] * s;
        if (i < n_weights) gi += lambda * params[i];
        const T mi = m[i] * beta1 + one_minus_beta1 * gi;
        const T vi = v[i] * beta2 + one_minus_beta2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        params[i] -= mi / (m_sqrt(vi) + eps_hat) * step_size;
    }
}

}  // namespace gpubp

#define GPUBP_OPTIM_KERNELS(T, SUFFIX)                                                                   \
    extern "C" __global__ void gpubp_sgd_update_##SUFFIX(T* params, const T* grad, size_t n,             \
                                                         size_t n_weights, T decay, T step) {           \
        gpubp::sgd_update<T>(params, grad, n, n_weights, decay, step);                                   \
    }                                                                                                    \
    extern "C" __global__ void gpubp_momentum_update_##SUFFIX(T* params, const T* grad, T* velocity,    \
                                                              size_t n, size_t n_weights, T s,          \
                                                              T lambda, T lr, T mu) {                   \
        gpubp::momentum_update<T>(params, grad, velocity, n, n_weights, s, lambda, lr, mu);              \
    }                                                                                                    \
    extern "C" __global__ void gpubp_nesterov_update_##SUFFIX(T* params, const T* grad, T* velocity,    \
                                                              size_t n, size_t n_weights, T s,          \
                                                              T lambda, T lr, T mu) {                   \
        gpubp::nesterov_update<T>(params, grad, velocity, n, n_weights, s, lambda, lr, mu);              \
    }                                                                                                    \
    extern "C" __global__ void gpubp_adam_update_##SUFFIX(                                               \
        T* params, const T* grad, T* m, T* v, size_t n, size_t n_weights, T s, T lambda, T beta1,        \
        T one_minus_beta1, T beta2, T one_minus_beta2, T step_size, T eps_hat) {                         \
        gpubp::adam_update<T>(params, grad, m, v, n, n_weights, s, lambda, beta1, one_minus_beta1, beta2,\
                              one_minus_beta2, step_size, eps_hat);                                      \
    }                                                                                                    \
    extern "C" __global__ void gpubp_sgd_update_indirect_##SUFFIX(T* params, const T* grad, size_t n,    \
                                                                  size_t n_weights, const T* scalars) { \
        gpubp::sgd_update<T>(params, grad, n, n_weights, scalars[0], scalars[1]);                        \
    }                                                                                                    \
    extern "C" __global__ void gpubp_momentum_update_indirect_##SUFFIX(                                  \
        T* params, const T* grad, T* velocity, size_t n, size_t n_weights, const T* scalars) {           \
        gpubp::momentum_update<T>(params, grad, velocity, n, n_weights, scalars[0], scalars[1],          \
                                  scalars[2], scalars[3]);                                               \
    }                                                                                                    \
    extern "C" __global__ void gpubp_nesterov_update_indirect_##SUFFIX(                                  \
        T* params, const T* grad, T* velocity, size_t n, size_t n_weights, const T* scalars) {           \
        gpubp::nesterov_update<T>(params, grad, velocity, n, n_weights, scalars[0], scalars[1],          \
                                  scalars[2], scalars[3]);                                               \
    }                                                                                                    \
    extern "C" __global__ void gpubp_adam_update_indirect_##SUFFIX(                                      \
        T* params, const T* grad, T* m, T* v, size_t n, size_t n_weights, const T* scalars) {            \
        gpubp::adam_update<T>(params, grad, m, v, n, n_weights, scalars[0], scalars[1], scalars[2],      \
                              scalars[3], scalars[4], scalars[5], scalars[6], scalars[7]);               \
    }

GPUBP_OPTIM_KERNELS(float, f32)
GPUBP_OPTIM_KERNELS(double, f64)
