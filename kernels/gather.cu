// The rows of a mini-batch, gathered through the epoch's sample order (compiled training, one CUDA graph
// per chunk of mini-batches: gpubp/backend/cuda_program.py).
//
// gpubp_gather_rows_{f32,f64,i64}(src, order, base, offset, out, rows, cols):
//   out[r, :] = src[order[*base + offset + r], :] for r < rows; src (·, cols), order int64, out (rows, cols).
//   ``base`` is read from device memory: a captured graph replays this launch with the arguments it was
//   captured with, and each replay takes its chunk's first row from there (refilled before the launch).
#include "common.cuh"

namespace gpubp {

template <typename T>
__device__ void gather_rows(const T* src, const long long* order, const long long* base, size_t offset, T* out,
                            size_t rows, size_t cols) {
    const size_t n = rows * cols, first = size_t(*base) + offset;
    for (size_t i = global_thread(); i < n; i += grid_stride()) {
        const size_t r = i / cols, c = i - r * cols;
        out[i] = src[size_t(order[first + r]) * cols + c];
    }
}

}  // namespace gpubp

#define GPUBP_GATHER_KERNEL(T, SUFFIX)                                                                   \
    extern "C" __global__ void gpubp_gather_rows_##SUFFIX(const T* src, const long long* order,          \
                                                          const long long* base, size_t offset, T* out,  \
                                                          size_t rows, size_t cols) {                    \
        gpubp::gather_rows<T>(src, order, base, offset, out, rows, cols);                                \
    }

GPUBP_GATHER_KERNEL(float, f32)
GPUBP_GATHER_KERNEL(double, f64)
GPUBP_GATHER_KERNEL(long long, i64)
