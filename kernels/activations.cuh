// Activation functions σ and their derivatives σ′, for the host and the device.
//
// The same lines as gpubp/activations.py, in the same order of operations: the CUDA kernels include this
// header, and tests/cpp/kernels_host.cpp compiles it with a plain C++ compiler so that CI (no GPU) checks
// every f and f′ against the NumPy backend (tests/test_kernels_host.py).
//
// act_f<ACT>(z) = σ(z); act_df<ACT>(z, a) = σ′(z) given a = σ(z). Sigmoid, tanh, ReLU, leaky ReLU, ELU,
// SELU and identity take σ′ from a (sigmoid a(1−a), tanh 1−a², ELU a + α below 0); softplus, swish, GELU and
// mish need z. The ids below are the registry's (Activation.kernel_id in gpubp/activations.py): an
// activation added there gets its enum entry, its act_f/act_df cases, its dispatch case, its name and (if
// σ′ reads them) its act_needs_z/act_needs_a entry here; tests/test_activation_registry.py checks them.
#pragma once

#include "common.cuh"

namespace gpubp {

enum Activation : int {
    ACT_SIGMOID = 0,
    ACT_TANH = 1,
    ACT_RELU = 2,
    ACT_LEAKY_RELU = 3,
    ACT_SOFTPLUS = 4,
    ACT_SWISH = 5,
    ACT_GELU = 6,
    ACT_MISH = 7,
    ACT_IDENTITY = 8,
    ACT_ELU = 9,
    ACT_SELU = 10,
};
constexpr int N_ACTIVATIONS = 11;

constexpr double LEAKY_SLOPE = 0.01;
constexpr double GELU_C = 0.7978845608028654;  // √(2/π)
constexpr double GELU_K = 0.044715;
constexpr double ELU_ALPHA = 1.0;
constexpr double SELU_ALPHA = 1.6732632423543772848170429916717;  // PyTorch's torch.nn.SELU
constexpr double SELU_SCALE = 1.0507009873554804934193349852946;

// Whether σ′ reads z (otherwise only a = σ(z)); the backward kernel skips the other load.
GPUBP_HD constexpr bool act_needs_z(int act) {
    return act == ACT_SOFTPLUS || act == ACT_SWISH || act == ACT_GELU || act == ACT_MISH;
}
GPUBP_HD constexpr bool act_needs_a(int act) {
    return act == ACT_SIGMOID || act == ACT_TANH || act == ACT_RELU || act == ACT_LEAKY_RELU || act == ACT_ELU ||
           act == ACT_SELU;
}

// σ(z) = ½ tanh(z/2) + ½: never overflows.
template <typename T>
GPUBP_HD T sigmoid(T z) {
    return T(0.5) * m_tanh(T(0.5) * z) + T(0.5);
}

// ln(1 + e^z) = max(z, 0) + ln(1 + e^−|z|) (NumPy's logaddexp(0, z)); NaN stays NaN.
template <typename T>
GPUBP_HD T softplus(T z) {
    return (z > T(0) ? z : T(0)) + m_log1p(m_exp(-m_abs(z)));
}

template <typename T>
GPUBP_HD T gelu_tanh_arg(T z) {
    return T(GELU_C) * (z + T(GELU_K) * z * z * z);
}

// λz for z > 0, else λα(eᶻ − 1) as λα expm1(z) (NaN: the second); ELU is λ = α = 1.
template <typename T>
GPUBP_HD T exponential_linear(T z, T scale, T scale_alpha) {
    return z > T(0) ? scale * z : scale_alpha * m_expm1(z);
}

// Its σ′ from a (which has z's sign): λ where a > 0, else a + λα (= λα eᶻ).
template <typename T>
GPUBP_HD T exponential_linear_prime(T a, T scale, T scale_alpha) {
    return a > T(0) ? scale : a + scale_alpha;
}

template <int ACT, typename T>
GPUBP_HD T act_f(T z) {
    if constexpr (ACT == ACT_SIGMOID) {
        return sigmoid(z);
    } else if constexpr (ACT == ACT_TANH) {
        return m_tanh(z);
    } else if constexpr (ACT == ACT_RELU) {
        return z < T(0) ? T(0) : z;  // NaN propagates, as np.maximum
    } else if constexpr (ACT == ACT_LEAKY_RELU) {
        return z < T(0) ? z * T(LEAKY_SLOPE) : z;
    } else if constexpr (ACT == ACT_SOFTPLUS) {
        return softplus(z);
    } else if constexpr (ACT == ACT_SWISH) {
        return sigmoid(z) * z;
    } else if constexpr (ACT == ACT_GELU) {
        return (m_tanh(gelu_tanh_arg(z)) + T(1)) * T(0.5) * z;
    } else if constexpr (ACT == ACT_MISH) {
        return m_tanh(softplus(z)) * z;
    } else if constexpr (ACT == ACT_ELU) {
        return exponential_linear(z, T(1), T(ELU_ALPHA));
    } else if constexpr (ACT == ACT_SELU) {
        return exponential_linear(z, T(SELU_SCALE), T(SELU_SCALE * SELU_ALPHA));
    } else {
        static_assert(ACT == ACT_IDENTITY, "unknown activation");
        return z;
    }
}

template <int ACT, typename T>
GPUBP_HD T act_df(T z, T a) {
    if constexpr (ACT == ACT_SIGMOID) {
        return (T(1) - a) * a;                                   // a(1 − a)
    } else if constexpr (ACT == ACT_TANH) {
        return T(1) - a * a;                                     // 1 − a²
    } else if constexpr (ACT == ACT_RELU) {
        return a > T(0) ? T(1) : T(0);
    } else if constexpr (ACT == ACT_LEAKY_RELU) {
        return a > T(0) ? T(1) : T(LEAKY_SLOPE);
    } else if constexpr (ACT == ACT_SOFTPLUS) {
        return sigmoid(z);                                       // σ(z)
    } else if constexpr (ACT == ACT_SWISH) {
        const T s = sigmoid(z);
        return ((T(1) - s) * z + T(1)) * s;                      // s(1 + z(1 − s))
    } else if constexpr (ACT == ACT_GELU) {
        const T t = m_tanh(gelu_tanh_arg(z));
        const T du = T(GELU_C) * (T(1) + T(3.0 * GELU_K) * z * z);
        return T(0.5) * z * (T(1) - t * t) * du + T(0.5) * (T(1) + t);
    } else if constexpr (ACT == ACT_MISH) {
        const T t = m_tanh(softplus(z));
        return (T(1) - t * t) * z * sigmoid(z) + t;              // t + z(1 − t²)σ(z)
    } else if constexpr (ACT == ACT_ELU) {
        return exponential_linear_prime(a, T(1), T(ELU_ALPHA));
    } else if constexpr (ACT == ACT_SELU) {
        return exponential_linear_prime(a, T(SELU_SCALE), T(SELU_SCALE * SELU_ALPHA));
    } else {
        static_assert(ACT == ACT_IDENTITY, "unknown activation");
        return T(1);
    }
}

// Calls fn(ActTag<ACT>{}) for the runtime id ``act`` so that a kernel is specialised per activation
// (one switch per thread, outside the element loop). Returns false for an unknown id.
template <int ACT>
struct ActTag {
    static constexpr int value = ACT;
};

template <typename Fn>
GPUBP_HD bool dispatch_activation(int act, Fn fn) {
    switch (act) {
        case ACT_SIGMOID: fn(ActTag<ACT_SIGMOID>{}); return true;
        case ACT_TANH: fn(ActTag<ACT_TANH>{}); return true;
        case ACT_RELU: fn(ActTag<ACT_RELU>{}); return true;
        case ACT_LEAKY_RELU: fn(ActTag<ACT_LEAKY_RELU>{}); return true;
        case ACT_SOFTPLUS: fn(ActTag<ACT_SOFTPLUS>{}); return true;
        case ACT_SWISH: fn(ActTag<ACT_SWISH>{}); return true;
        case ACT_GELU: fn(ActTag<ACT_GELU>{}); return true;
        case ACT_MISH: fn(ActTag<ACT_MISH>{}); return true;
        case ACT_IDENTITY: fn(ActTag<ACT_IDENTITY>{}); return true;
        case ACT_ELU: fn(ActTag<ACT_ELU>{}); return true;
        case ACT_SELU: fn(ActTag<ACT_SELU>{}); return true;
        default: return false;
    }
}

// The Python name of each id, for the host test that checks the id tables agree.
GPUBP_HD const char* activation_name(int act) {
    switch (act) {
        case ACT_SIGMOID: return "sigmoid";
        case ACT_TANH: return "tanh";
        case ACT_RELU: return "relu";
        case ACT_LEAKY_RELU: return "leaky_relu";
        case ACT_SOFTPLUS: return "softplus";
        case ACT_SWISH: return "swish";
        case ACT_GELU: return "gelu";
        case ACT_MISH: return "mish";
        case ACT_IDENTITY: return "identity";
        case ACT_ELU: return "elu";
        case ACT_SELU: return "selu";
        default: return "";
    }
}

}  // namespace gpubp
