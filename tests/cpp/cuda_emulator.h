// A CPU stand-in for the CUDA built-ins gpubp's kernels use, so that the .cu sources compile with g++
// (-D__CUDACC__ -include cuda_emulator.h) into a shared library that tests/cpp/emulated_cupy.py runs.
//
// One OS thread per CUDA thread of a block; the blocks of a grid run one after another (every thread
// loops over them, meeting at a barrier between blocks). __syncthreads is a block barrier, warp shuffles
// exchange through per-warp slots between two warp barriers, atomicAdd takes a lock. A barrier that waits
// for more than a few seconds (a thread skipped it) marks the launch failed instead of hanging.
// emu_illegal_address() stands for an access the GPU's memory unit traps (a test plants a call where a kernel
// would go out of bounds): the launch faults, which the host sees as cudaErrorIllegalAddress.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>

#define __global__
#define __host__
#define __device__
#define __forceinline__ inline
#define __shared__ static

struct EmuDim3 {
    unsigned x, y, z;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) double2 {
    double x, y;
};

inline thread_local EmuDim3 threadIdx{0, 0, 0};
inline thread_local EmuDim3 blockIdx{0, 0, 0};
inline EmuDim3 blockDim{1, 1, 1};
inline EmuDim3 gridDim{1, 1, 1};
inline bool emu_failed = false;
inline std::atomic<bool> emu_faulted{false};

inline void emu_illegal_address() { emu_faulted = true; }

class EmuBarrier {
  public:
    void resize(unsigned size) {
        size_ = size;
        count_ = 0;
    }
    void wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        const unsigned generation = generation_;
        if (++count_ == size_) {
            count_ = 0;
            ++generation_;
            cv_.notify_all();
            return;
        }
        if (!cv_.wait_for(lock, std::chrono::seconds(20), [&] { return generation_ != generation; })) {
            emu_failed = true;  // a thread never arrived: release everyone and report
            count_ = 0;
            ++generation_;
            cv_.notify_all();
        }
    }

  private:
    std::mutex mutex_;
    std::condition_variable cv_;
    unsigned size_ = 1, count_ = 0, generation_ = 0;
};

inline EmuBarrier emu_block_barrier;
inline EmuBarrier emu_warp_barrier[32];
inline unsigned long long emu_slots[32][32];
inline std::mutex emu_atomic_mutex;

inline void __syncthreads() { emu_block_barrier.wait(); }

template <typename T>
T emu_exchange(T v, unsigned src_lane) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a wide type");
    std::memcpy(&emu_slots[warp][lane], &v, sizeof(T));
    emu_warp_barrier[warp].wait();
    T out = v;
    if (src_lane < 32) std::memcpy(&out, &emu_slots[warp][src_lane], sizeof(T));
    emu_warp_barrier[warp].wait();
    return out;
}

template <typename T>
T __shfl_down_sync(unsigned, T v, int offset) {
    return emu_exchange(v, (threadIdx.x & 31) + unsigned(offset));  // ≥ 32: keeps its own value
}

template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask) {
    return emu_exchange(v, (threadIdx.x & 31) ^ unsigned(mask));
}

template <typename T>
T atomicAdd(T* address, T value) {
    std::lock_guard<std::mutex> lock(emu_atomic_mutex);
    const T old = *address;
    *address = old + value;
    return old;
}

inline unsigned long long atomicCAS(unsigned long long* address, unsigned long long compare,
                                    unsigned long long value) {
    std::lock_guard<std::mutex> lock(emu_atomic_mutex);
    const unsigned long long old = *address;
    if (old == compare) *address = value;
    return old;
}

inline long long __double_as_longlong(double d) {
    long long bits;
    std::memcpy(&bits, &d, sizeof bits);
    return bits;
}
inline float __int_as_float(int bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}
inline double __longlong_as_double(long long bits) {
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
}

// Control, called from Python around each kernel call.
extern "C" void emu_configure(unsigned grid, unsigned block) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    emu_block_barrier.resize(block);
    for (unsigned w = 0; w < 32; ++w) emu_warp_barrier[w].resize(32);
    emu_failed = false;
    emu_faulted = false;
}
extern "C" void emu_set_thread(unsigned block, unsigned thread) {
    blockIdx = {block, 0, 0};
    threadIdx = {thread, 0, 0};
}
extern "C" void emu_block_end() { emu_block_barrier.wait(); }
extern "C" int emu_launch_failed() { return emu_failed ? 1 : 0; }
extern "C" int emu_launch_faulted() { return emu_faulted ? 1 : 0; }
