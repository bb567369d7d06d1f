// batchnorm.cu — BatchNormalization (ONNX, inference form) over an [N, C, inner] view:
// y = x·a + b with, per channel, a = scale / √(var + ε) and b = bias − mean·a folded in FP32.
// One streaming pass, memory-bound: 16-byte vector loads and stores wherever alignment allows.
//
// batchnorm_plane_<dt>   inner >= BN_PLANE_MIN_INNER. Block b owns chunk (b mod chunks) of the
//                        (n, c) plane (b / chunks), folds that plane's channel once, and streams
//                        BN_PLANE_ITEMS vectors a thread. A plane that does not start or end on a
//                        16-byte boundary is peeled: its unaligned head and tail (< one vector
//                        each) are written element by element by chunk 0.
//                        grid.x = min(N·C·chunks, 2^31 − 1) (grid-stride), block.x = 32..256.
// batchnorm_rows_<dt>    small inner ([N, C] inputs: inner = 1). The tensor is read as N rows of
//                        W = C·inner elements; thread j owns the vector of columns j·V..j·V+V−1,
//                        folds their channels once and applies them down the rows
//                        blockIdx.y, blockIdx.y + gridDim.y, … (BN_ROWS_UNROLL at a time).
//                        grid = (⌈W / (V·BN_BLOCK)⌉, ≤ 65535), block.x = BN_BLOCK.
// V = 4 (FP32) / 8 (FP16) when x and y are 16-byte aligned (and, for rows, W is a multiple of V),
// else 1. FP16: FP16 storage, FP32 math, one rounding on output.
#include "common.cuh"

// The same numbers are consts in src/backend/cuda/launch/batchnorm.rs (BN_ROWS_UNROLL aside).
#define BN_BLOCK 256             // threads of a rows block; the most threads of a plane block
#define BN_PLANE_ITEMS 4         // vectors per thread per plane block
#define BN_PLANE_MIN_INNER 1024  // inner from which the plane kernel is used
#define BN_ROWS_UNROLL 4         // rows a rows-kernel thread has in flight

struct BatchNormParams {
    const void *x;
    const void *scale;
    const void *bias;
    const void *mean;
    const void *var;
    void *y;
    long long n;       // batch
    long long c;       // channels
    long long inner;   // elements per (n, c) plane
    long long chunks;  // plane kernel: blocks per plane
    float epsilon;
    int vec;           // 1: the 16-byte vector path (x and y 16-byte aligned)
};

// The folded affine map of channel ch: y = x·a + b.
template <typename T>
__device__ __forceinline__ void bn_fold(const BatchNormParams &p, long long ch, float &a, float &b) {
    const float scale = eia_load(static_cast<const T *>(p.scale), ch);
    const float bias = eia_load(static_cast<const T *>(p.bias), ch);
    const float mean = eia_load(static_cast<const T *>(p.mean), ch);
    const float var = eia_load(static_cast<const T *>(p.var), ch);
    a = scale / sqrtf(var + p.epsilon);
    b = fmaf(-mean, a, bias);
}

template <typename T, int V>
__device__ __forceinline__ void bn_plane(const BatchNormParams &p) {
    const T *x = static_cast<const T *>(p.x);
    T *y = static_cast<T *>(p.y);
    const int per_block = blockDim.x * BN_PLANE_ITEMS;  // vectors
    const long long blocks = p.n * p.c * p.chunks;
    for (long long b = blockIdx.x; b < blocks; b += gridDim.x) {
        const long long plane = b / p.chunks;
        const long long chunk = b - plane * p.chunks;
        float a, sh;
        bn_fold<T>(p, plane % p.c, a, sh);
        const long long start = plane * p.inner;
        // The plane is [head | nv aligned vectors | tail]; head and tail are < V elements.
        const long long head = V == 1 ? 0 : min((long long)((V - start % V) % V), p.inner);
        const long long nv = (p.inner - head) / V;
        const long long tail = p.inner - head - nv * V;
        const T *xs = x + start + head;
        T *ys = y + start + head;
        const long long v0 = chunk * per_block + threadIdx.x;
        float v[BN_PLANE_ITEMS][V];
#pragma unroll
        for (int k = 0; k < BN_PLANE_ITEMS; ++k) {
            const long long i = v0 + (long long)k * blockDim.x;
            if (i < nv) EiaVec<T, V>::load(v[k], xs + i * V);
        }
#pragma unroll
        for (int k = 0; k < BN_PLANE_ITEMS; ++k) {
            const long long i = v0 + (long long)k * blockDim.x;
            if (i < nv) {
#pragma unroll
                for (int e = 0; e < V; ++e) v[k][e] = fmaf(v[k][e], a, sh);
                EiaVec<T, V>::store(ys + i * V, v[k]);
            }
        }
        const int t = threadIdx.x;
        const bool peel = chunk == 0 || EIA_PLANT(batchnorm_plane_peel_every_chunk);
        if (peel && t < head) eia_store(y, start + t, fmaf(eia_load(x, start + t), a, sh));
        if (peel && t < tail) {
            const long long i = start + head + nv * V + t;
            eia_store(y, i, fmaf(eia_load(x, i), a, sh));
        }
    }
}

template <typename T, int V>
__device__ __forceinline__ void bn_rows(const BatchNormParams &p) {
    const long long w = p.c * p.inner;
    const long long j = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (j >= w) return;  // V divides w: the vector is whole
    // The channel of column k of a row (no modulo: k < w = c·inner), in 32 bits when w allows.
    const bool narrow = w <= 0xffffffffLL;
    const auto channel = [&](long long k) -> long long {
        return narrow ? (long long)((unsigned)k / (unsigned)p.inner) : k / p.inner;
    };
    float a[V], sh[V];
    const long long ch0 = channel(j);
    if (channel(j + V - 1) == ch0) {
        bn_fold<T>(p, ch0, a[0], sh[0]);
#pragma unroll
        for (int e = 1; e < V; ++e) {
            a[e] = a[0];
            sh[e] = sh[0];
        }
    } else {
#pragma unroll
        for (int e = 0; e < V; ++e) bn_fold<T>(p, channel(j + e), a[e], sh[e]);
    }
    const T *x = static_cast<const T *>(p.x) + j;
    T *y = static_cast<T *>(p.y) + j;
    const long long step = gridDim.y;
    for (long long r = blockIdx.y; r < p.n; r += step * BN_ROWS_UNROLL) {
        float v[BN_ROWS_UNROLL][V];
#pragma unroll
        for (int u = 0; u < BN_ROWS_UNROLL; ++u)
            if (r + u * step < p.n) EiaVec<T, V>::load(v[u], x + (r + u * step) * w);
#pragma unroll
        for (int u = 0; u < BN_ROWS_UNROLL; ++u)
            if (r + u * step < p.n) {
#pragma unroll
                for (int e = 0; e < V; ++e) v[u][e] = fmaf(v[u][e], a[e], sh[e]);
                EiaVec<T, V>::store(y + (r + u * step) * w, v[u]);
            }
    }
}

EIA_KERNEL_BOUNDS(batchnorm_plane_f32, BatchNormParams, BN_BLOCK) {
    if (p.vec) bn_plane<float, 4>(p);
    else bn_plane<float, 1>(p);
}
EIA_KERNEL_BOUNDS(batchnorm_plane_f16, BatchNormParams, BN_BLOCK) {
    if (p.vec) bn_plane<__half, 8>(p);
    else bn_plane<__half, 1>(p);
}
EIA_KERNEL_BOUNDS(batchnorm_rows_f32, BatchNormParams, BN_BLOCK) {
    if (p.vec) bn_rows<float, 4>(p);
    else bn_rows<float, 1>(p);
}
EIA_KERNEL_BOUNDS(batchnorm_rows_f16, BatchNormParams, BN_BLOCK) {
    if (p.vec) bn_rows<__half, 8>(p);
    else bn_rows<__half, 1>(p);
}
