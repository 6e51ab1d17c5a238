// Per-element terms of the built-in costs, for the host and the device (gpubp/costs.py, gpubp/backend/ops.py).
//
// For output a and target y of one element: cost_term = that element's share of Cₓ (Cₓ is their sum over
// the row) and cost_grad = ∂Cₓ/∂a, except in the stable pairs (sigmoid + cross_entropy,
// softmax + log_likelihood) where the output delta itself is a − y. Probabilities inside logarithms are
// clipped to [eps, 1 − eps]; log-likelihood with integer labels clips only from below (Ops.cost_sum).
// The ids below are the ones in gpubp/backend/kernels.py (COST_IDS); the host test checks both agree.
#pragma once

#include "common.cuh"

namespace gpubp {

enum Cost : int {
    COST_QUADRATIC = 0,
    COST_CROSS_ENTROPY = 1,
    COST_LOG_LIKELIHOOD = 2,
};
constexpr int N_COSTS = 3;

template <typename T>
GPUBP_HD T clip_prob(T a, T eps) {
    return a < eps ? eps : (a > T(1) - eps ? T(1) - eps : a);
}

// The element's share of Cₓ. ``labelled``: y came from an integer label (one-hot, never built).
template <typename T>
GPUBP_HD T cost_term(int cost, T a, T y, T eps, bool labelled) {
    switch (cost) {
        case COST_QUADRATIC: {
            const T d = a - y;
            return T(0.5) * (d * d);                                     // ½ (a − y)²
        }
        case COST_CROSS_ENTROPY: {
            const T ac = clip_prob(a, eps);
            return -(y * m_log(ac) + (T(1) - y) * m_log(T(1) - ac));    // −[y ln a + (1 − y) ln(1 − a)]
        }
        default: {                                                       // COST_LOG_LIKELIHOOD: −y ln a
            if (labelled) return y != T(0) ? -m_log(a < eps ? eps : a) : T(0);
            return -(y * m_log(clip_prob(a, eps)));
        }
    }
}

// ∂Cₓ/∂a for the element, or a − y in a stable pair (``stable``).
template <typename T>
GPUBP_HD T cost_grad(int cost, T a, T y, T eps, bool stable) {
    if (stable || cost == COST_QUADRATIC) return a - y;
    const T ac = clip_prob(a, eps);
    if (cost == COST_CROSS_ENTROPY) return (ac - y) / (ac * (T(1) - ac));  // (a − y) / (a(1 − a))
    return -y / ac;                                                          // log-likelihood: −y / a
}

GPUBP_HD const char* cost_name(int cost) {
    switch (cost) {
        case COST_QUADRATIC: return "quadratic";
        case COST_CROSS_ENTROPY: return "cross_entropy";
        case COST_LOG_LIKELIHOOD: return "log_likelihood";
        default: return "";
    }
}

}  // namespace gpubp
