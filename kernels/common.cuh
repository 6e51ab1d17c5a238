// Shared definitions: host/device qualifiers that also compile with a plain C++ compiler, math overloads
// for float and double, and (device only) grid-stride indexing, 16-byte vector loads and reductions.
#pragma once

#if !defined(__CUDACC__)
// A plain C++ compiler (the host test): the CUDA qualifiers mean nothing.
#define __host__
#define __device__
#define GPUBP_HD inline
#else
#define GPUBP_HD __host__ __device__ __forceinline__
#endif

#if !defined(__CUDACC_RTC__)
// NVRTC has the math functions built in; nvcc and C++ compilers take them from <math.h>.
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#else
typedef unsigned long long uintptr_t;
#endif

namespace gpubp {

GPUBP_HD float m_tanh(float x) { return tanhf(x); }
GPUBP_HD double m_tanh(double x) { return tanh(x); }
GPUBP_HD float m_exp(float x) { return expf(x); }
GPUBP_HD double m_exp(double x) { return exp(x); }
GPUBP_HD float m_log(float x) { return logf(x); }
GPUBP_HD double m_log(double x) { return log(x); }
GPUBP_HD float m_expm1(float x) { return expm1f(x); }
GPUBP_HD double m_expm1(double x) { return expm1(x); }
GPUBP_HD float m_log1p(float x) { return log1pf(x); }
GPUBP_HD double m_log1p(double x) { return log1p(x); }
GPUBP_HD float m_sqrt(float x) { return sqrtf(x); }
GPUBP_HD double m_sqrt(double x) { return sqrt(x); }
GPUBP_HD float m_abs(float x) { return fabsf(x); }
GPUBP_HD double m_abs(double x) { return fabs(x); }

#if defined(__CUDACC__)

// Thread index and stride of a grid-stride loop, in size_t so that arrays beyond 2³¹ elements work.
__device__ __forceinline__ size_t global_thread() {
    return size_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ size_t grid_stride() {
    return size_t(gridDim.x) * blockDim.x;
}

// 16-byte vectors: float4 (4 floats) and double2 (2 doubles).
template <typename T>
struct Vec16;
template <>
struct Vec16<float> {
    using type = float4;
    static constexpr int width = 4;
};
template <>
struct Vec16<double> {
    using type = double2;
    static constexpr int width = 2;
};

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// −∞ (NVRTC has no INFINITY macro).
__device__ __forceinline__ float negative_infinity(float) { return __int_as_float(0xff800000); }
__device__ __forceinline__ double negative_infinity(double) {
    return __longlong_as_double((long long)0xfff0000000000000ULL);
}

constexpr unsigned FULL_MASK = 0xffffffffu;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(FULL_MASK, v, offset);
    return v;  // complete in lane 0
}

template <typename T>
__device__ __forceinline__ T warp_allsum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;  // complete in every lane
}

template <typename T>
__device__ __forceinline__ T warp_allmax(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const T other = __shfl_xor_sync(FULL_MASK, v, offset);
        v = (other > v || other != other) ? other : v;  // NaN wins, as np.max
    }
    return v;
}

// atomicAdd on double is native from sm_60 on; older GPUs (CUDA 12 still targets sm_50–53) get the
// compare-and-swap loop of the CUDA C++ Programming Guide. GPUBP_CAS_ATOMIC_ADD selects the loop on any
// target, so that toolkits without those targets (CUDA 13) and the CPU emulator still compile and run it.
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 600) || defined(GPUBP_CAS_ATOMIC_ADD)
__device__ __forceinline__ double atomic_add(double* address, double value) {
    unsigned long long* bits = reinterpret_cast<unsigned long long*>(address);
    unsigned long long old = *bits, assumed;
    do {
        assumed = old;
        old = atomicCAS(bits, assumed, __double_as_longlong(value + __longlong_as_double(assumed)));
    } while (assumed != old);  // integer compare: a NaN sum does not loop forever
    return __longlong_as_double(old);
}
#else
__device__ __forceinline__ double atomic_add(double* address, double value) {
    return atomicAdd(address, value);
}
#endif
__device__ __forceinline__ float atomic_add(float* address, float value) {
    return atomicAdd(address, value);
}

// Adds the block's values into *total with one atomic per block (blockDim.x a multiple of 32, ≤ 1024).
template <typename T>
__device__ __forceinline__ void block_sum_atomic(T v, T* total) {
    __shared__ T partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < int(blockDim.x >> 5) ? partial[lane] : T(0);
        v = warp_sum(v);
        if (lane == 0) atomic_add(total, v);
    }
}

#endif  // __CUDACC__

}  // namespace gpubp
