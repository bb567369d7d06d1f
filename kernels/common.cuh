// common.cuh — what every eia kernel may use: the kernel declaration macros, half conversions,
// warp reductions and the tensor-core / async-copy primitives (mma.sync m16n8k16, ldmatrix,
// cp.async). Compiled by NVRTC for the GPU; with EIA_EMU defined, emu/emu.h provides the same
// names on the CPU so that the emulated conformance suite runs these very sources.
//
// Kernels use the CUDA built-ins threadIdx, blockIdx, blockDim, gridDim, __syncthreads,
// __shfl_xor_sync, __shfl_sync, __syncwarp, __half, __half2, __float2half_rn, __half2float,
// __floats2half2_rn, __half22float2, float2/float4/uint2/uint4 and make_*, expf, exp2f, fmaxf,
// fminf, fmaf, powf, rsqrtf, sqrtf, INFINITY, min, max, and the eia_* functions below — nothing else.
#pragma once

#ifdef EIA_EMU
// The CPU emulator: the built-ins above, EIA_KERNEL*, and the eia_mma / eia_ldmatrix /
// eia_cp_async primitives with the same signatures and per-lane semantics as below.
#include "emu/emu.h"
#else
#include <cuda_fp16.h>

// NVRTC has no <math.h>; the emulator gets INFINITY from the host's.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// A kernel taking one params struct by value (see kernels/README.md).
#define EIA_KERNEL(name, Params) extern "C" __global__ void name(const Params p)
// Test-only planted bugs (kernels/emu/emu.h): never on the GPU.
#define EIA_PLANT(bug) false
#define EIA_KERNEL_BOUNDS(name, Params, threads) \
    extern "C" __global__ void __launch_bounds__(threads) name(const Params p)

// The shared-state-space address of a pointer into __shared__ memory.
__device__ __forceinline__ unsigned eia_smem_u32(const void *p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// d += a·b for one m16n8k16 tile, FP16 inputs, FP32 accumulators. Fragments per lane
// (g = lane / 4, t = lane % 4), as in the PTX ISA:
//   a[0]: A[g][2t..2t+1]   a[1]: A[g+8][2t..2t+1]   a[2]: A[g][2t+8..]   a[3]: A[g+8][2t+8..]
//   b[0]: B[2t..2t+1][g]   b[1]: B[2t+8..2t+9][g]   (B is K×N, stored column by column)
//   d[0..1]: D[g][2t..2t+1]   d[2..3]: D[g+8][2t..2t+1]
__device__ __forceinline__ void eia_mma_16816(float (&d)[4], const unsigned (&a)[4],
                                              const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ldmatrix: lanes 8i..8i+7 give the addresses of the 8 rows (16 bytes each, in shared memory)
// of 8×8 b16 matrix i; register i of lane l receives row l/4, elements 2(l%4) and 2(l%4)+1 of
// matrix i (of its transpose with _trans). x2 uses the addresses of lanes 0..15.
__device__ __forceinline__ void eia_ldmatrix_x4(unsigned (&r)[4], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(eia_smem_u32(row)));
}
__device__ __forceinline__ void eia_ldmatrix_x4_trans(unsigned (&r)[4], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(eia_smem_u32(row)));
}
__device__ __forceinline__ void eia_ldmatrix_x2(unsigned (&r)[2], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(eia_smem_u32(row)));
}
__device__ __forceinline__ void eia_ldmatrix_x2_trans(unsigned (&r)[2], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(eia_smem_u32(row)));
}

// Asynchronous 16-byte copy global -> shared (both 16-byte aligned). With valid == false nothing
// is read and the 16 shared bytes are zero-filled. Visible after eia_cp_async_wait<N>() (at most N
// newer groups still pending) and a __syncthreads().
__device__ __forceinline__ void eia_cp_async_16(void *smem, const void *gmem, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(eia_smem_u32(smem)),
                 "l"(gmem), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void eia_cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void eia_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// Sum / max of v over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float eia_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float eia_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Two floats rounded to FP16 and packed in one 32-bit register (low half = lo), as mma wants.
__device__ __forceinline__ unsigned eia_pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&h);
}

// min(max(v, lo), hi), NaN staying NaN (the comparisons return a NaN v; fmaxf would not): Clip,
// and the fused ReLU / Clip of the Conv and Gemm epilogues (ReLU is [0, +inf], none ±inf).
__device__ __forceinline__ float eia_clamp(float v, float lo, float hi) {
    const float t = v < lo ? lo : v;
    return t > hi ? hi : t;
}

// Loads element i of a tensor of T (float or __half) widened to float, and stores a float
// rounded to T.
__device__ __forceinline__ float eia_load(const float *p, long long i) { return p[i]; }
__device__ __forceinline__ float eia_load(const __half *p, long long i) {
    return __half2float(p[i]);
}
__device__ __forceinline__ void eia_store(float *p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void eia_store(__half *p, long long i, float v) {
    p[i] = __float2half_rn(v);
}

// V consecutive elements of T widened to floats: V = 1 (scalar, any address), or one 16-byte
// access of 4 floats or 8 halves (p 16-byte aligned); stores round to T once.
template <typename T, int V>
struct EiaVec;
template <typename T>
struct EiaVec<T, 1> {
    static __device__ __forceinline__ void load(float (&v)[1], const T *p) { v[0] = eia_load(p, 0); }
    static __device__ __forceinline__ void store(T *p, const float (&v)[1]) { eia_store(p, 0, v[0]); }
};
template <>
struct EiaVec<float, 4> {
    static __device__ __forceinline__ void load(float (&v)[4], const float *p) {
        const float4 q = *reinterpret_cast<const float4 *>(p);
        v[0] = q.x;
        v[1] = q.y;
        v[2] = q.z;
        v[3] = q.w;
    }
    static __device__ __forceinline__ void store(float *p, const float (&v)[4]) {
        *reinterpret_cast<float4 *>(p) = make_float4(v[0], v[1], v[2], v[3]);
    }
};
template <>
struct EiaVec<__half, 8> {
    static __device__ __forceinline__ void load(float (&v)[8], const __half *p) {
        const uint4 q = *reinterpret_cast<const uint4 *>(p);
        const __half2 *h = reinterpret_cast<const __half2 *>(&q);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __half22float2(h[i]);
            v[2 * i] = f.x;
            v[2 * i + 1] = f.y;
        }
    }
    static __device__ __forceinline__ void store(__half *p, const float (&v)[8]) {
        uint4 q;
        __half2 *h = reinterpret_cast<__half2 *>(&q);
#pragma unroll
        for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
        *reinterpret_cast<uint4 *>(p) = q;
    }
};
