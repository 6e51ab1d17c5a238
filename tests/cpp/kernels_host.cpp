// Host build of the kernels' maths (kernels/activations.cuh, kernels/costs.cuh) for tests/test_kernels_host.py.
//
//   kernels_host act f32|f64  < z values        for every activation id: "act ID NAME", then "f df" per z
//   kernels_host cost f32|f64 EPS < a y pairs   for every cost id: "cost ID NAME", then per pair
//                                               "term term_labelled grad grad_stable"
// Inputs and outputs are C99 hex floats (exact); float results are widened to double to print.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "activations.cuh"
#include "costs.cuh"

namespace {

std::vector<double> read_values() {
    std::vector<double> values;
    double v;
    while (std::scanf("%la", &v) == 1) values.push_back(v);
    return values;
}

template <typename T>
void activations(const std::vector<double>& zs) {
    for (int id = 0; id < gpubp::N_ACTIVATIONS; ++id) {
        std::printf("act %d %s\n", id, gpubp::activation_name(id));
        for (double zd : zs) {
            const T z = T(zd);
            const bool known = gpubp::dispatch_activation(id, [&](auto tag) {
                constexpr int ACT = decltype(tag)::value;
                const T a = gpubp::act_f<ACT>(z);
                std::printf("%a %a\n", double(a), double(gpubp::act_df<ACT>(z, a)));
            });
            if (!known) std::exit(3);
        }
    }
}

template <typename T>
void costs(const std::vector<double>& pairs, T eps) {
    for (int id = 0; id < gpubp::N_COSTS; ++id) {
        std::printf("cost %d %s\n", id, gpubp::cost_name(id));
        for (size_t k = 0; k + 1 < pairs.size(); k += 2) {
            const T a = T(pairs[k]), y = T(pairs[k + 1]);
            std::printf("%a %a %a %a\n", double(gpubp::cost_term(id, a, y, eps, false)),
                        double(gpubp::cost_term(id, a, y, eps, true)),
                        double(gpubp::cost_grad(id, a, y, eps, false)),
                        double(gpubp::cost_grad(id, a, y, eps, true)));
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3 || (std::strcmp(argv[1], "act") != 0 && std::strcmp(argv[1], "cost") != 0) ||
        (std::strcmp(argv[1], "cost") == 0 && argc < 4)) {
        std::fprintf(stderr, "usage: %s act f32|f64 < z  |  %s cost f32|f64 EPS < a y\n", argv[0], argv[0]);
        return 2;
    }
    const bool f32 = std::strcmp(argv[2], "f32") == 0;
    const std::vector<double> values = read_values();
    if (std::strcmp(argv[1], "act") == 0) {
        if (f32) activations<float>(values); else activations<double>(values);
    } else {
        const double eps = std::strtod(argv[3], nullptr);
        if (f32) costs<float>(values, float(eps)); else costs<double>(values, eps);
    }
    return 0;
}
