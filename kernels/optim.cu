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
#include "common.cuh"

// momentum and Nesterov share their first lines: two kernels rather than one with a flag, one launch each
#define GPUBP_OPTIM_KERNELS(T, SUFFIX)                                                                   \
    extern "C" __global__ void gpubp_sgd_update_##SUFFIX(T* params, const T* grad, size_t n,             \
                                                         size_t n_weights, T decay, T step) {           \
        for (size_t i = gpubp::global_thread(); i < n; i += gpubp::grid_stride()) {                      \
            const T w = i < n_weights ? params[i] * decay : params[i];                                   \
            params[i] = w - grad[i] * step;                                                              \
        }                                                                                                \
    }                                                                                                    \
    extern "C" __global__ void gpubp_momentum_update_##SUFFIX(T* params, const T* grad, T* velocity,    \
                                                              size_t n, size_t n_weights, T s,          \
                                                              T lambda, T lr, T mu) {                   \
        for (size_t i = gpubp::global_thread(); i < n; i += gpubp::grid_stride()) {                      \
            T gi = grad[i] * s;                                                                          \
            if (i < n_weights) gi += lambda * params[i];                                                 \
            const T vi = velocity[i] * mu - gi * lr;                                                     \
            velocity[i] = vi;                                                                            \
            params[i] += vi;                                                                             \
        }                                                                                                \
    }                                                                                                    \
    extern "C" __global__ void gpubp_nesterov_update_##SUFFIX(T* params, const T* grad, T* velocity,    \
                                                              size_t n, size_t n_weights, T s,          \
                                                              T lambda, T lr, T mu) {                   \
        for (size_t i = gpubp::global_thread(); i < n; i += gpubp::grid_stride()) {                      \
            T gi = grad[i] * s;                                                                          \
            if (i < n_weights) gi += lambda * params[i];                                                 \
            const T step = gi * lr;                                                                      \
            const T vi = velocity[i] * mu - step;                                                        \
            velocity[i] = vi;                                                                            \
            params[i] = (params[i] + mu * vi) - step;                                                    \
        }                                                                                                \
    }                                                                                                    \
    extern "C" __global__ void gpubp_adam_update_##SUFFIX(                                               \
        T* params, const T* grad, T* m, T* v, size_t n, size_t n_weights, T s, T lambda, T beta1,        \
        T one_minus_beta1, T beta2, T one_minus_beta2, T step_size, T eps_hat) {                         \
        for (size_t i = gpubp::global_thread(); i < n; i += gpubp::grid_stride()) {                      \
            T gi = grad[i] * s;                                                                          \
            if (i < n_weights) gi += lambda * params[i];                                                 \
            const T mi = m[i] * beta1 + one_minus_beta1 * gi;                                            \
            const T vi = v[i] * beta2 + one_minus_beta2 * (gi * gi);                                     \
            m[i] = mi;                                                                                   \
            v[i] = vi;                                                                                   \
            params[i] -= mi / (gpubp::m_sqrt(vi) + eps_hat) * step_size;                                 \
        }                                                                                                \
    }

GPUBP_OPTIM_KERNELS(float, f32)
GPUBP_OPTIM_KERNELS(double, f64)
