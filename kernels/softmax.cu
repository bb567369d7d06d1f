// softmax.cu — Softmax (ONNX opset 13) over an [outer, len, inner] view, reducing over len:
// y = exp(x − max) / Σ exp(x − max) with accurate expf. -inf entries give 0; a row that is all
// -inf, or holds NaN or +inf, gives NaN everywhere (exp(NaN) or exp(inf − inf) reaches the sum),
// as the float64 formula does. FP16: FP16 storage, FP32 math, one rounding on output.
//
// Kernels (launch geometry planned by src/backend/cuda/launch/softmax.rs). A row along a
// contiguous axis (inner == 1) is read as [head | body | tail]: the body is whole V-element slots
// on 16-byte boundaries, moved as one 16-byte load or store each (V = 4 for FP32, 8 for FP16; with
// p.vec = 0, V = 1), head and tail are the < V elements before and after it, one per thread.
//
// softmax_warp_<dt>     len <= 32·SM_WARP_ELTS: p.lanes lanes (a power of two) per row, 32 /
//                       p.lanes rows per warp, the row held in registers (one read, one write;
//                       with 32 lanes SM_WARP_ELTS floats a lane, else one slot a lane), group
//                       reductions by shuffles. block.x = SM_WARP_THREADS,
//                       grid.x = ⌈outer / rows per block⌉ (capped; grid-stride).
// softmax_block_<dt>    len <= blockDim.x·SM_BLOCK_ELTS, p.vec = 1: one block of 128, 256, 512 or
//                       1024 threads per row, held in registers, block reductions through shared
//                       memory. grid.x = outer (capped; grid-stride).
// softmax_long_<dt>     longer rows: one block of SM_LONG_THREADS per row, an online max/sum read
//                       pass (SM_LONG_ELTS elements a thread in flight), then the write pass.
//                       grid.x = outer (capped; grid-stride).
// softmax_strided_<dt>  inner > 1: thread (tx, ty) of a (TX, TY) block owns column i = tile·TX +
//                       tx of outer slab o and its rows ty, ty + TY, … (online max/sum, coalesced
//                       across inner); the TY partial results are merged in shared memory, then
//                       the write pass. TX, TY powers of two, 32 <= TX·TY <= SM_STRIDED_THREADS;
//                       grid = (column tiles, min(outer, 65535)), both grid-stride.
#include "common.cuh"

// The same numbers are consts in src/backend/cuda/launch/softmax.rs (the unrolls aside).
#define SM_WARP_THREADS 128     // threads of a warp-kernel block
#define SM_WARP_ELTS 32         // floats a lane holds in the warp kernel
#define SM_BLOCK_THREADS 1024   // the most threads of a block-kernel block
#define SM_BLOCK_ELTS 16        // floats a thread holds in the block kernel
#define SM_LONG_THREADS 512     // threads of a long-kernel block
#define SM_LONG_ELTS 16         // elements a long-kernel thread has in flight
#define SM_STRIDED_THREADS 256  // the most threads of a strided-kernel block
#define SM_STRIDED_UNROLL 4     // rows a strided-kernel thread has in flight

struct SoftmaxParams {
    const void *x;
    void *y;
    long long outer;
    long long len;
    long long inner;
    int vec;    // 1: slots of 16 bytes (x and y 16-byte aligned)
    int lanes;  // warp kernel: lanes per row, a power of two <= 32
};

// One row of len elements starting at element `start` of its tensor: [head | body | tail], the
// body made of whole 16-byte-aligned V-element slots, head and tail shorter than one slot.
template <int V>
struct SmRow {
    long long start;
    int head;
    long long body;  // slots
    int tail;
    __device__ __forceinline__ SmRow(long long r, long long len) : start(r * len) {
        head = V == 1 ? 0 : (int)min((long long)((V - start % V) % V), len);
        body = (len - head) / V;
        tail = (int)(len - head - body * V);
    }
    // The first element of body slot k and of the tail, relative to the row.
    __device__ __forceinline__ long long slot(long long k) const { return head + k * V; }
    __device__ __forceinline__ long long tail_at() const { return head + body * V; }
};

// Online softmax statistics: (m, s) is the running max and Σ exp(x − m) of what was seen; this
// adds the N values v. -inf values add 0, also while m is still -inf; NaN, or +inf (exp(inf − inf)),
// makes s NaN for good.
template <int N>
__device__ __forceinline__ void sm_online(float &m, float &s, const float (&v)[N]) {
    float mv = v[0];
#pragma unroll
    for (int e = 1; e < N; ++e) mv = fmaxf(mv, v[e]);
    if (mv > m) {
        s *= expf(m - mv);
        m = mv;
    }
    const float r = m == -INFINITY ? 0.0f : m;
#pragma unroll
    for (int e = 0; e < N; ++e) s += expf(v[e] - r);
}

// Merges the statistics (m2, s2) into (m, s).
__device__ __forceinline__ void sm_merge(float &m, float &s, float m2, float s2) {
    const float mx = fmaxf(m, m2);
    const float r = mx == -INFINITY ? 0.0f : mx;
    // One explicit fmaf: NVRTC would contract a·b + c·d itself (fmad=true) and the emulator
    // would not, so that the two would round differently.
    s = fmaf(s, expf(m - r), s2 * expf(m2 - r));
    m = mx;
}

// Max / sum over the block; every thread gets the result. red holds 33 floats.
__device__ __forceinline__ float sm_block_max(float v, float *red) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    v = eia_warp_max(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const float r = eia_warp_max(lane < (int)(blockDim.x >> 5) ? red[lane] : -INFINITY);
        if (lane == 0) red[32] = r;
    }
    if (!EIA_PLANT(softmax_block_nosync)) __syncthreads();
    return red[32];
}
__device__ __forceinline__ float sm_block_sum(float v, float *red) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    v = eia_warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const float r = eia_warp_sum(lane < (int)(blockDim.x >> 5) ? red[lane] : 0.0f);
        if (lane == 0) red[32] = r;
    }
    __syncthreads();
    return red[32];
}

// Max / sum over the p.lanes lanes (a power of two) sharing a row in the warp kernel.
struct SmLanes {
    int lanes;
    __device__ __forceinline__ float max(float v) const {
        for (int o = lanes >> 1; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
    }
    __device__ __forceinline__ float sum(float v) const {
        for (int o = lanes >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
    }
};

// Max / sum over the block (shared memory of 33 floats).
struct SmBlock {
    float *red;
    __device__ __forceinline__ float max(float v) const { return sm_block_max(v, red); }
    __device__ __forceinline__ float sum(float v) const { return sm_block_sum(v, red); }
};

// The softmax of row r (when ok; otherwise the thread only takes part in the reductions), held
// in registers: this thread, number t of the g sharing the row, owns the body slots t, t + g, …,
// t + (CH − 1)·g (the body has at most CH·g slots), head element t and tail element t (g >= V − 1);
// Reduce combines the g threads. g is G, or g_run when G is 0.
template <typename T, int V, int CH, int G, typename Reduce>
__device__ __forceinline__ void sm_row_regs(const T *x, T *y, long long len, long long r, bool ok,
                                            int t, int g_run, const Reduce &reduce) {
    const int g = G > 0 ? G : g_run;  // a constant g keeps the slot offsets immediate
    const SmRow<V> row(ok ? r : 0, ok ? len : 0);
    const int body = (int)row.body, tail_at = (int)row.tail_at();  // short rows: int offsets
    x += row.start;
    y += row.start;
    float v[CH][V];
    float hv = -INFINITY, tv = -INFINITY;
    if (t < row.head) hv = eia_load(x, t);
    if (t < row.tail) tv = eia_load(x, tail_at + t);
#pragma unroll
    for (int k = 0; k < CH; ++k) {
        if (t + k * g < body) {
            EiaVec<T, V>::load(v[k], x + (row.head + (t + k * g) * V));
        } else {
#pragma unroll
            for (int e = 0; e < V; ++e) v[k][e] = -INFINITY;
        }
    }
    float mx = fmaxf(hv, tv);
#pragma unroll
    for (int k = 0; k < CH; ++k)
#pragma unroll
        for (int e = 0; e < V; ++e) mx = fmaxf(mx, v[k][e]);
    mx = reduce.max(mx);
    float sum = 0.0f;
    if (t < row.head) {
        hv = expf(hv - mx);
        sum += hv;
    }
    if (t < row.tail) {
        tv = expf(tv - mx);
        sum += tv;
    }
#pragma unroll
    for (int k = 0; k < CH; ++k) {
        if (t + k * g < body) {
#pragma unroll
            for (int e = 0; e < V; ++e) {
                v[k][e] = expf(v[k][e] - mx);
                sum += v[k][e];
            }
        }
    }
    const float inv = 1.0f / reduce.sum(sum);
    if (t < row.head) eia_store(y, t, hv * inv);
    if (t < row.tail) eia_store(y, tail_at + t, tv * inv);
#pragma unroll
    for (int k = 0; k < CH; ++k) {
        if (t + k * g < body) {
#pragma unroll
            for (int e = 0; e < V; ++e) v[k][e] *= inv;
            EiaVec<T, V>::store(y + (row.head + (t + k * g) * V), v[k]);
        }
    }
}

// Rows of p.lanes lanes each; with 32 lanes a lane holds SM_WARP_ELTS floats of the row (LANES =
// 32), with fewer lanes (LANES = 0) one slot.
template <typename T, int V, int LANES>
__device__ __forceinline__ void softmax_warp(const SoftmaxParams &p) {
    const int lanes = LANES > 0 ? LANES : p.lanes, lane = threadIdx.x & 31;
    const int rows_per_warp = 32 / lanes;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    const long long warp = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (EIA_PLANT(softmax_warp_lane_exit) && lane == 31) return;
    // The loop runs the same count in all lanes of a warp: the shuffles see full warps.
    for (long long first = warp * rows_per_warp; first < p.outer; first += warps * rows_per_warp) {
        const long long r = first + lane / lanes;
        sm_row_regs<T, V, LANES == 32 ? SM_WARP_ELTS / V : 1, LANES>(
            static_cast<const T *>(p.x), static_cast<T *>(p.y), p.len, r, r < p.outer,
            lane & (lanes - 1), lanes, SmLanes{lanes});
    }
}

// One row per block of G threads.
template <typename T, int V, int G>
__device__ __forceinline__ void softmax_block(const SoftmaxParams &p, float *red) {
    for (long long r = blockIdx.x; r < p.outer; r += gridDim.x)
        sm_row_regs<T, V, SM_BLOCK_ELTS / V, G>(static_cast<const T *>(p.x),
                                                static_cast<T *>(p.y), p.len, r, true,
                                                threadIdx.x, G, SmBlock{red});
}

template <typename T, int V>
__device__ __forceinline__ void softmax_block_any(const SoftmaxParams &p, float *red) {
    switch (blockDim.x) {
        case 128: softmax_block<T, V, 128>(p, red); break;
        case 256: softmax_block<T, V, 256>(p, red); break;
        case 512: softmax_block<T, V, 512>(p, red); break;
        default: softmax_block<T, V, 1024>(p, red); break;
    }
}

template <typename T, int V>
__device__ __forceinline__ void softmax_long(const SoftmaxParams &p, float *red) {
    constexpr int U = SM_LONG_ELTS / V;  // slots in flight
    const int t = threadIdx.x, g = blockDim.x;
    const int warp = t >> 5, lane = t & 31;
    for (long long r = blockIdx.x; r < p.outer; r += gridDim.x) {
        const SmRow<V> row(r, p.len);
        const T *x = static_cast<const T *>(p.x) + row.start;
        T *y = static_cast<T *>(p.y) + row.start;
        // Read pass: this thread's statistics over its head and tail elements and its body slots
        // t, t + g, …
        float m = -INFINITY, s = 0.0f;
        if (t < row.head) sm_online<1>(m, s, {eia_load(x, t)});
        if (t < row.tail) sm_online<1>(m, s, {eia_load(x, row.tail_at() + t)});
        for (long long k = t; k < row.body; k += (long long)g * U) {
            float v[U][V];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const long long ku = k + (long long)u * g;
                if (ku < row.body) {
                    EiaVec<T, V>::load(v[u], x + row.slot(ku));
                } else {
#pragma unroll
                    for (int e = 0; e < V; ++e) v[u][e] = -INFINITY;
                }
            }
#pragma unroll
            for (int u = 0; u < U; ++u) sm_online<V>(m, s, v[u]);
        }
        // Merge over the warp, then over the warps (red: 33 maxima, 33 sums).
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
            const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
            sm_merge(m, s, m2, s2);
        }
        if (lane == 0) {
            red[warp] = m;
            red[33 + warp] = s;
        }
        if (!EIA_PLANT(softmax_long_divergent_sync) || warp == 0) __syncthreads();
        if (warp == 0) {
            const bool in = lane < (g >> 5);
            m = in ? red[lane] : -INFINITY;
            s = in ? red[33 + lane] : 0.0f;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
                const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
                sm_merge(m, s, m2, s2);
            }
            if (lane == 0) {
                red[32] = m;
                red[65] = s;
            }
        }
        __syncthreads();
        const float mx = red[32], inv = 1.0f / red[65];
        // Write pass.
        if (t < row.head) eia_store(y, t, expf(eia_load(x, t) - mx) * inv);
        if (t < row.tail) {
            const long long i = row.tail_at() + t;
            eia_store(y, i, expf(eia_load(x, i) - mx) * inv);
        }
        for (long long k = t; k < row.body; k += (long long)g * U) {
            float v[U][V];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const long long ku = k + (long long)u * g;
                if (ku < row.body) EiaVec<T, V>::load(v[u], x + row.slot(ku));
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const long long ku = k + (long long)u * g;
                if (ku < row.body) {
#pragma unroll
                    for (int e = 0; e < V; ++e) v[u][e] = expf(v[u][e] - mx) * inv;
                    EiaVec<T, V>::store(y + row.slot(ku), v[u]);
                }
            }
        }
        // red is rewritten by the next row only after every thread has read it here.
        __syncthreads();
    }
}

template <typename T>
__device__ __forceinline__ void softmax_strided(const SoftmaxParams &p, float *sm_m, float *sm_s) {
    const T *x = static_cast<const T *>(p.x);
    T *y = static_cast<T *>(p.y);
    const int tx = threadIdx.x, ty = threadIdx.y, nx = blockDim.x, ny = blockDim.y;
    const int tid = ty * nx + tx;
    const long long tiles = (p.inner + nx - 1) / nx;
    const long long step = (long long)ny * p.inner;  // elements between a thread's rows
    for (long long o = blockIdx.y; o < p.outer; o += gridDim.y) {
        for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
            const long long i = tile * nx + tx;
            const bool ok = i < p.inner;
            const long long col = (o * p.len + ty) * p.inner + i;  // row ty of column i
            float m = -INFINITY, s = 0.0f;
            if (ok) {
                for (long long l = ty; l < p.len; l += (long long)ny * SM_STRIDED_UNROLL) {
                    const long long at = col + (l - ty) * p.inner;
                    float v[SM_STRIDED_UNROLL];
#pragma unroll
                    for (int u = 0; u < SM_STRIDED_UNROLL; ++u)
                        v[u] = l + (long long)u * ny < p.len ? eia_load(x, at + u * step) : -INFINITY;
                    sm_online<SM_STRIDED_UNROLL>(m, s, v);
                }
            }
            sm_m[tid] = m;
            sm_s[tid] = s;
            __syncthreads();
            for (int h = ny >> 1; h > 0; h >>= 1) {
                if (ty < h) {
                    sm_merge(m, s, sm_m[tid + h * nx], sm_s[tid + h * nx]);
                    sm_m[tid] = m;
                    sm_s[tid] = s;
                }
                if (!EIA_PLANT(softmax_strided_nosync)) __syncthreads();
            }
            const float mx = sm_m[tx], inv = 1.0f / sm_s[tx];
            if (ok) {
#pragma unroll 4
                for (long long l = ty; l < p.len; l += ny) {
                    const long long at = col + (l - ty) * p.inner;
                    eia_store(y, at, expf(eia_load(x, at) - mx) * inv);
                }
            }
            // sm_m / sm_s are rewritten by the next tile only after every thread has read them.
            __syncthreads();
        }
    }
}

EIA_KERNEL_BOUNDS(softmax_warp_f32, SoftmaxParams, SM_WARP_THREADS) {
    if (p.lanes == 32) {
        if (p.vec) softmax_warp<float, 4, 32>(p);
        else softmax_warp<float, 1, 32>(p);
    } else {
        if (p.vec) softmax_warp<float, 4, 0>(p);
        else softmax_warp<float, 1, 0>(p);
    }
}
EIA_KERNEL_BOUNDS(softmax_warp_f16, SoftmaxParams, SM_WARP_THREADS) {
    if (p.lanes == 32) {
        if (p.vec) softmax_warp<__half, 8, 32>(p);
        else softmax_warp<__half, 1, 32>(p);
    } else {
        if (p.vec) softmax_warp<__half, 8, 0>(p);
        else softmax_warp<__half, 1, 0>(p);
    }
}
EIA_KERNEL_BOUNDS(softmax_block_f32, SoftmaxParams, SM_BLOCK_THREADS) {
    __shared__ float red[33];
    softmax_block_any<float, 4>(p, red);
}
EIA_KERNEL_BOUNDS(softmax_block_f16, SoftmaxParams, SM_BLOCK_THREADS) {
    __shared__ float red[33];
    softmax_block_any<__half, 8>(p, red);
}
EIA_KERNEL_BOUNDS(softmax_long_f32, SoftmaxParams, SM_LONG_THREADS) {
    __shared__ float red[66];
    if (p.vec) softmax_long<float, 4>(p, red);
    else softmax_long<float, 1>(p, red);
}
EIA_KERNEL_BOUNDS(softmax_long_f16, SoftmaxParams, SM_LONG_THREADS) {
    __shared__ float red[66];
    if (p.vec) softmax_long<__half, 8>(p, red);
    else softmax_long<__half, 1>(p, red);
}
EIA_KERNEL_BOUNDS(softmax_strided_f32, SoftmaxParams, SM_STRIDED_THREADS) {
    __shared__ float sm_m[SM_STRIDED_THREADS], sm_s[SM_STRIDED_THREADS];
    softmax_strided<float>(p, sm_m, sm_s);
}
EIA_KERNEL_BOUNDS(softmax_strided_f16, SoftmaxParams, SM_STRIDED_THREADS) {
    __shared__ float sm_m[SM_STRIDED_THREADS], sm_s[SM_STRIDED_THREADS];
    softmax_strided<__half>(p, sm_m, sm_s);
}
