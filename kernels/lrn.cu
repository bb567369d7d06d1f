// lrn.cu — LRN (ONNX) across channels over an [n, c, inner] view:
// y = x · (bias + alpha/size · Σ x²)^−beta, the sum over the channels
// c − ⌊(size − 1)/2⌋ ..= c + ⌈(size − 1)/2⌉ that exist. FP16: FP16 storage, FP32 math, one
// rounding on output.
//
// lrn_window_<dt>  a thread per output element, consecutive threads on consecutive spatial
//                  columns (coalesced): it sums its window's squares afresh in double (x² of a
//                  float is exact there) and takes the base `bias + scale·sum` there too, rounded
//                  to float once; `size` adds, the `size` of the FLOP count. A sum slid
//                  down the channels would add each square once and drop it once, but it is not
//                  exact: after a square 2^53 times the others has left the window, the small
//                  ones it rounded away are lost. block.x = LRN_THREADS,
//                  grid.x = ⌈n·c·inner / LRN_THREADS⌉ (capped; the kernel grid-strides beyond).
#include "common.cuh"

// The same number is a const in src/backend/cuda/launch/lrn.rs.
#define LRN_THREADS 256  // threads of a block

struct LrnParams {
    const void *x;
    void *y;
    long long n;
    long long c;
    long long inner;
    int size;
    float scale;  // alpha / size
    float bias;
    float beta;
};

template <typename T>
__device__ __forceinline__ void lrn_window(const LrnParams &p) {
    const T *x = static_cast<const T *>(p.x);
    T *y = static_cast<T *>(p.y);
    const long long before = (p.size - 1) / 2, after = p.size / 2;
    const long long total = p.n * p.c * p.inner;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += step) {
        const long long column = t % p.inner, rest = t / p.inner;
        const long long ch = rest % p.c, image = rest / p.c;
        const T *xi = x + image * p.c * p.inner + column;  // channel k at xi[k·inner]
        double sum = 0.0;
        for (long long k = max(ch - before, 0LL); k <= min(ch + after, p.c - 1); ++k) {
            const double v = eia_load(xi, k * p.inner);
            sum += v * v;
        }
        // The base in double, rounded to float once: a sum beyond float's range (squares of
        // values near 2e19) can still give a base inside it.
        const float base = (float)fma((double)p.scale, sum, (double)p.bias);
        const float v = eia_load(xi, ch * p.inner);
        eia_store(y, t, v * powf(base, -p.beta));
    }
}

EIA_KERNEL_BOUNDS(lrn_window_f32, LrnParams, LRN_THREADS) { lrn_window<float>(p); }
EIA_KERNEL_BOUNDS(lrn_window_f16, LrnParams, LRN_THREADS) { lrn_window<__half>(p); }
