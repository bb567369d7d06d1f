// lrn.cu — LRN (ONNX) across channels over an [n, c, inner] view:
// y = x · (bias + alpha/size · Σ x²)^−beta, the sum over the channels
// c − ⌊(size − 1)/2⌋ ..= c + ⌈(size − 1)/2⌉ that exist. FP16: FP16 storage, FP32 math, one
// rounding on output.
//
// lrn_slide_<dt>  a thread per (image, block of `channels` channels, spatial column): it sums
//                 the window of the block's first channel, then slides it down the block — one
//                 square added and one dropped per channel, so the cost does not grow with size
//                 (the planner makes a block at least as wide as the window). The sum is kept
//                 in double: x² of a float is exact there, and the drops cancel the adds without
//                 the float rounding that would otherwise build up. Consecutive threads take
//                 consecutive columns (coalesced). block.x = LRN_THREADS, grid.x =
//                 ⌈n·⌈c/channels⌉·inner / LRN_THREADS⌉ (capped; the kernel grid-strides beyond).
#include "common.cuh"

// The same number is a const in src/backend/cuda/launch/lrn.rs.
#define LRN_THREADS 256  // threads of a block

struct LrnParams {
    const void *x;
    void *y;
    long long n;
    long long c;
    long long inner;
    long long channels;  // channels per thread (≥ min(size, c))
    int size;
    float scale;  // alpha / size
    float bias;
    float beta;
};

// The square of x[k · inner] in double (exact).
template <typename T>
__device__ __forceinline__ double lrn_square(const T *x, long long k, long long inner) {
    const double v = eia_load(x, k * inner);
    return v * v;
}

template <typename T>
__device__ __forceinline__ void lrn_slide(const LrnParams &p) {
    const T *x = static_cast<const T *>(p.x);
    T *y = static_cast<T *>(p.y);
    const long long before = (p.size - 1) / 2, after = p.size / 2;
    const long long cblocks = (p.c + p.channels - 1) / p.channels;
    const long long total = p.n * cblocks * p.inner;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += step) {
        const long long column = t % p.inner, rest = t / p.inner;
        const long long first = (rest % cblocks) * p.channels, image = rest / cblocks;
        const long long at = image * p.c * p.inner + column;  // channel k at at + k·inner
        const T *xi = x + at;
        double sum = 0.0;
        for (long long k = max(first - before, 0LL); k <= min(first + after, p.c - 1); ++k) {
            sum += lrn_square(xi, k, p.inner);
        }
        const long long end = min(first + p.channels, p.c);
        for (long long ch = first; ch < end; ++ch) {
            if (ch > first) {
                if (ch + after < p.c) sum += lrn_square(xi, ch + after, p.inner);
                if (ch - 1 - before >= 0) sum -= lrn_square(xi, ch - 1 - before, p.inner);
            }
            // A sum rounding left a hair below 0 counts as 0: the base is never below bias.
            const float s = (float)(sum > 0.0 ? sum : 0.0);
            const float v = eia_load(xi, ch * p.inner);
            eia_store(y, at + ch * p.inner, v * powf(fmaf(p.scale, s, p.bias), -p.beta));
        }
    }
}

EIA_KERNEL_BOUNDS(lrn_slide_f32, LrnParams, LRN_THREADS) { lrn_slide<float>(p); }
EIA_KERNEL_BOUNDS(lrn_slide_f16, LrnParams, LRN_THREADS) { lrn_slide<__half>(p); }
