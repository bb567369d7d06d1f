// pool.cu — MaxPool / AveragePool (ONNX, 2-D NCHW) and GlobalMaxPool / GlobalAveragePool over
// planes of h×w elements (a global pool is the plane flattened to 1×(h·w)). Semantics of
// src/ops/pool.rs: padding never wins a max (a window with no input element gives -inf), NaN
// inputs never win a max; p.kind = 1 averages the window's input elements, p.kind = 2 divides
// the window's sum by its positions inside the padded extent (padded_h × padded_w). FP16: FP16
// storage, FP32 math, one rounding on output.
//
// pool_window_<dt>  a thread per output element (plane, row, column), grid-stride over
//                   planes·p·q. block.x = POOL_THREADS, grid.x = ⌈total / POOL_THREADS⌉ (capped).
// pool_global_<dt>  a warp per plane (lanes stride over its h·w elements, then shuffle
//                   reductions), warps grid-stride over the planes. block.x = POOL_THREADS,
//                   grid.x = ⌈planes / (POOL_THREADS / 32)⌉ (capped).
#include "common.cuh"

// The same number is a const in src/backend/cuda/launch/pool.rs.
#define POOL_THREADS 256  // threads of a block (both kernels)

struct PoolParams {
    const void *x;
    void *y;
    long long planes;  // n·c
    int h, w;          // input plane
    int p, q;          // output plane
    int r, s;          // kernel taps
    int stride_h, stride_w;
    int dil_h, dil_w;
    int pad_h, pad_w;        // leading padding
    int padded_h, padded_w;  // pad_begin + input + pad_end
    int kind;                // 0: max, 1: average, 2: average counting padding
    int reserved;
};

template <typename T>
__device__ __forceinline__ void pool_window(const PoolParams &p) {
    const T *x = static_cast<const T *>(p.x);
    T *y = static_cast<T *>(p.y);
    const long long plane_out = (long long)p.p * p.q;
    const long long total = p.planes * plane_out;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long plane = i / plane_out;
        const long long rem = i - plane * plane_out;
        const long long op = rem / p.q;
        const long long oq = rem - op * p.q;
        const long long h0 = op * p.stride_h - p.pad_h;
        const long long w0 = oq * p.stride_w - p.pad_w;
        const T *xp = x + plane * p.h * p.w;
        float acc = p.kind == 0 ? -INFINITY : 0.0f;
        int rows = 0, cols = 0;
        for (int j = 0; j < p.s; ++j) {
            const long long iw = w0 + (long long)j * p.dil_w;
            cols += iw >= 0 && iw < p.w;
        }
        for (int i = 0; i < p.r; ++i) {
            const long long ih = h0 + (long long)i * p.dil_h;
            if (ih < 0 || ih >= p.h) continue;
            ++rows;
            const T *xr = xp + ih * p.w;
            for (int j = 0; j < p.s; ++j) {
                const long long iw = w0 + (long long)j * p.dil_w;
                if (iw < 0 || iw >= p.w) continue;
                const float v = eia_load(xr, iw);
                if (p.kind == 0) acc = v > acc ? v : acc;
                else acc += v;
            }
        }
        if (p.kind == 2) {
            // Taps below the padded extent: ⌈(padded − start) / dilation⌉, at most the kernel.
            rows = (int)min((long long)p.r, (p.padded_h - op * p.stride_h + p.dil_h - 1) / p.dil_h);
            cols = (int)min((long long)p.s, (p.padded_w - oq * p.stride_w + p.dil_w - 1) / p.dil_w);
        }
        if (p.kind != 0) acc /= (float)rows * (float)cols;
        eia_store(y, i, acc);
    }
}

template <typename T>
__device__ __forceinline__ void pool_global(const PoolParams &p) {
    const T *x = static_cast<const T *>(p.x);
    T *y = static_cast<T *>(p.y);
    const int lane = threadIdx.x & 31;
    const long long len = (long long)p.h * p.w;
    const long long warps = (long long)gridDim.x * (blockDim.x / 32);
    for (long long plane = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
         plane < p.planes; plane += warps) {
        const T *xp = x + plane * len;
        float acc = p.kind == 0 ? -INFINITY : 0.0f;
        for (long long e = lane; e < len; e += 32) {
            const float v = eia_load(xp, e);
            if (p.kind == 0) acc = v > acc ? v : acc;
            else acc += v;
        }
        if (p.kind == 0) {
            acc = eia_warp_max(acc);
        } else {
            acc = eia_warp_sum(acc) / (float)len;
        }
        if (lane == 0) eia_store(y, plane, acc);
    }
}

EIA_KERNEL_BOUNDS(pool_window_f32, PoolParams, POOL_THREADS) { pool_window<float>(p); }
EIA_KERNEL_BOUNDS(pool_window_f16, PoolParams, POOL_THREADS) { pool_window<__half>(p); }
EIA_KERNEL_BOUNDS(pool_global_f32, PoolParams, POOL_THREADS) { pool_global<float>(p); }
EIA_KERNEL_BOUNDS(pool_global_f16, PoolParams, POOL_THREADS) { pool_global<__half>(p); }
