// unary.cu — elementwise activations (ONNX): Relu, Clip, LeakyRelu, Sigmoid, Tanh over n
// contiguous elements. One streaming pass, memory-bound.
//
// unary_<act>_<dt>   act: relu, clip (lo, hi), leakyrelu (alpha), sigmoid, tanh.
//                    The tensor is [head | nv vectors of V | tail]: with vec = 1, x and y are
//                    equally placed modulo 16 bytes and head (< V elements, from the planner) is
//                    what precedes x's first 16-byte boundary; with vec = 0, V = 1 and head = 0.
//                    Blocks walk chunks of blockDim.x·UNARY_ITEMS vectors grid-stride (each
//                    thread loads its UNARY_ITEMS vectors before computing any); the peeled
//                    head and tail (< V elements each) are written by block 0's first threads.
//                    grid.x = min(⌈nv / (block·UNARY_ITEMS)⌉, UNARY_MAX_GRID), block.x = 32..256.
// V = 4 (FP32) / 8 (FP16). FP16: FP16 storage, FP32 math, one rounding on output.
//
// NaN propagates through every activation (the comparisons return a NaN input, fmaxf would not).
// Sigmoid: 1/(1+e) or e/(1+e) with e = e^-|x| (no overflow, no cancellation). Tanh: Cephes'
// odd polynomial for |x| < 0.625, 1 - 2/(e^{2|x|} + 1) above (saturating to ±1).
#include "common.cuh"

// The same numbers are consts in src/backend/cuda/launch/unary.rs.
#define UNARY_BLOCK 256          // the most threads of a block
#define UNARY_ITEMS 4            // vectors per thread per chunk
#define UNARY_MAX_GRID 65535     // the most blocks (the rest is grid-stride)

struct UnaryParams {
    const void *x;
    void *y;
    long long n;     // elements
    long long head;  // elements before x's first 16-byte boundary (vec = 1), else 0
    float lo;        // clip: lower bound (-inf: none)
    float hi;        // clip: upper bound (+inf: none)
    float alpha;     // leakyrelu
    int vec;         // 1: the 16-byte vector path
};

struct UnaryRelu {
    __device__ __forceinline__ float operator()(const UnaryParams &, float x) const {
        return x < 0.f ? 0.f : x;
    }
};
struct UnaryClip {
    __device__ __forceinline__ float operator()(const UnaryParams &p, float x) const {
        return eia_clamp(x, p.lo, p.hi);
    }
};
struct UnaryLeakyRelu {
    __device__ __forceinline__ float operator()(const UnaryParams &p, float x) const {
        return x < 0.f ? x * p.alpha : x;
    }
};
struct UnarySigmoid {
    __device__ __forceinline__ float operator()(const UnaryParams &, float x) const {
        const float e = expf(x < 0.f ? x : -x);  // e^-|x| in (0, 1]
        const float r = 1.f / (1.f + e);
        return x < 0.f ? e * r : r;
    }
};
struct UnaryTanh {
    __device__ __forceinline__ float operator()(const UnaryParams &, float x) const {
        const float a = x < 0.f ? -x : x;
        if (a < 0.625f) {
            const float z = x * x;
            float q = -5.70498872745e-3f;
            q = fmaf(q, z, 2.06390887954e-2f);
            q = fmaf(q, z, -5.37397155531e-2f);
            q = fmaf(q, z, 1.33314422036e-1f);
            q = fmaf(q, z, -3.33332819422e-1f);
            return fmaf(q * z, x, x);
        }
        // expf(2a) is +inf from a ≈ 44.4: 2/inf = 0 and the result is exactly ±1.
        const float t = 1.f - 2.f / (expf(a + a) + 1.f);
        return x < 0.f ? -t : t;
    }
};

template <typename T, int V, typename F>
__device__ __forceinline__ void unary(const UnaryParams &p, F f) {
    const T *x = static_cast<const T *>(p.x);
    T *y = static_cast<T *>(p.y);
    const long long head = V == 1 ? 0 : p.head;
    const long long nv = (p.n - head) / V;
    const T *xs = x + head;
    T *ys = y + head;
    const long long per_block = (long long)blockDim.x * UNARY_ITEMS;  // vectors
    const long long chunks = (nv + per_block - 1) / per_block;
    for (long long c = blockIdx.x; c < chunks; c += gridDim.x) {
        const long long v0 = c * per_block + threadIdx.x;
        float v[UNARY_ITEMS][V];
#pragma unroll
        for (int k = 0; k < UNARY_ITEMS; ++k) {
            const long long i = v0 + (long long)k * blockDim.x;
            if (i < nv) EiaVec<T, V>::load(v[k], xs + i * V);
        }
#pragma unroll
        for (int k = 0; k < UNARY_ITEMS; ++k) {
            const long long i = v0 + (long long)k * blockDim.x;
            if (i < nv) {
#pragma unroll
                for (int e = 0; e < V; ++e) v[k][e] = f(p, v[k][e]);
                EiaVec<T, V>::store(ys + i * V, v[k]);
            }
        }
    }
    if (V > 1 && blockIdx.x == 0) {
        const int t = threadIdx.x;
        if (t < head) eia_store(y, t, f(p, eia_load(x, t)));
        const long long tail = p.n - head - nv * V;
        if (t < tail) {
            const long long i = head + nv * V + t;
            eia_store(y, i, f(p, eia_load(x, i)));
        }
    }
}

#define UNARY_KERNELS(act, F)                                  \
    EIA_KERNEL_BOUNDS(unary_##act##_f32, UnaryParams, UNARY_BLOCK) { \
        if (p.vec) unary<float, 4>(p, F());                    \
        else unary<float, 1>(p, F());                          \
    }                                                          \
    EIA_KERNEL_BOUNDS(unary_##act##_f16, UnaryParams, UNARY_BLOCK) { \
        if (p.vec) unary<__half, 8>(p, F());                   \
        else unary<__half, 1>(p, F());                         \
    }

UNARY_KERNELS(relu, UnaryRelu)
UNARY_KERNELS(clip, UnaryClip)
UNARY_KERNELS(leakyrelu, UnaryLeakyRelu)
UNARY_KERNELS(sigmoid, UnarySigmoid)
UNARY_KERNELS(tanh, UnaryTanh)
