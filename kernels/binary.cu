// binary.cu — Add, Sub, Mul, Div (two inputs) and Sum (1..BIN_MAX_IN inputs) with numpy
// broadcasting, over the collapsed view the plan resolved (src/ops/binary.rs): `dims` (outermost
// first, `rank` of them, no 1-sized ones) and per input its element strides along them, 0 where it
// is broadcast. Division follows IEEE 754 (x/0 = ±inf, 0/0 = NaN; no fast math). The fused ReLU
// (Add) is `v < 0 ? 0 : v`, so NaN stays NaN. FP16: FP16 storage, FP32 math (Sum accumulates every
// input in FP32, left to right) and one rounding on output.
//
// The params hold every input's pointer and strides (BIN_MAX_IN = 64 inputs, the crate's
// MAX_INPUTS, over BIN_MAX_RANK dims: 3.6 KiB, under the 4 KiB kernel-parameter limit), so a Sum
// of any arity is one launch and rounds once. Params are only ever indexed with compile-time
// indices (unrolled loops guarded by `k < n_in`), so they stay in the constant bank.
//
// Kernels (launch geometry planned by src/backend/cuda/launch/binary.rs):
// binary_same_<dt>     every input has the output's shape: y[i] = x0[i] ∘ x1[i] (∘ x2[i] … for
//                      Sum); with p.vec, V-element 16-byte slots (V = 4 for FP32, 8 for FP16;
//                      every pointer 16-byte aligned), the n % V tail one element a thread.
//                      block.x = BIN_THREADS, grid.x = ⌈slots / BIN_THREADS⌉ (capped; grid-stride).
// binary_rows_<dt>     two inputs, innermost collapsed dim long (>= BIN_THREADS / 8 in the
//                      planner): grid.y strides over rows (all dims but the last, decomposed once
//                      a row), grid.x·block.x over the row, each input read at stride 0 or 1.
// binary_strided_<dt>  two inputs, any view: one element a thread, grid-stride, its coordinates
//                      decomposed from the linear index.
// binary_sum_<dt>      Sum with broadcasting: as strided, over n_in inputs.
#include "common.cuh"

// The same numbers are consts in src/backend/cuda/launch/binary.rs.
#define BIN_MAX_IN 64     // inputs a launch takes (every Sum input)
#define BIN_MAX_RANK 6    // collapsed dims a launch takes (the planner splits the outer ones off)
#define BIN_THREADS 256   // threads of every block

#define BIN_ADD 0
#define BIN_SUB 1
#define BIN_MUL 2
#define BIN_DIV 3

struct BinaryParams {
    const void *x[BIN_MAX_IN];
    void *y;
    long long n;                                  // output elements
    long long dims[BIN_MAX_RANK];                 // dims[0 .. rank), outermost first
    long long strides[BIN_MAX_IN][BIN_MAX_RANK];  // per input, element strides over dims
    int n_in;                                     // inputs, 1 ..= BIN_MAX_IN
    int rank;                                     // 1 ..= BIN_MAX_RANK
    int op;                                       // BIN_ADD, BIN_SUB, BIN_MUL, BIN_DIV
    int relu;                                     // 1: y = max(0, y) (NaN stays NaN)
    int vec;                                      // same kernel: 16-byte slots
    int pad;
};

template <int OP>
__device__ __forceinline__ float bin_op(float a, float b) {
    if (OP == BIN_SUB) return a - b;
    if (OP == BIN_MUL) return a * b;
    if (OP == BIN_DIV) return a / b;
    return a + b;
}

__device__ __forceinline__ float bin_relu(float v, int relu) { return relu && v < 0.0f ? 0.0f : v; }

// Every input contiguous with the output's shape. N: the most inputs (2, or BIN_MAX_IN for Sum).
template <typename T, int V, int OP, int N>
__device__ __forceinline__ void bin_same(const BinaryParams &p) {
    const long long slots = p.n / V;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long s = first; s < slots; s += stride) {
        float acc[V], v[V];
        EiaVec<T, V>::load(acc, (const T *)p.x[0] + s * V);
#pragma unroll
        for (int k = 1; k < N; ++k) {
            if (k < p.n_in) {
                EiaVec<T, V>::load(v, (const T *)p.x[k] + s * V);
#pragma unroll
                for (int e = 0; e < V; ++e) acc[e] = bin_op<OP>(acc[e], v[e]);
            }
        }
#pragma unroll
        for (int e = 0; e < V; ++e) acc[e] = bin_relu(acc[e], p.relu);
        EiaVec<T, V>::store((T *)p.y + s * V, acc);
    }
    // The tail: fewer than V elements, one a thread.
    const long long i = slots * V + first;
    if (V > 1 && i < p.n) {
        float acc = eia_load((const T *)p.x[0], i);
#pragma unroll
        for (int k = 1; k < N; ++k)
            if (k < p.n_in) acc = bin_op<OP>(acc, eia_load((const T *)p.x[k], i));
        eia_store((T *)p.y, i, bin_relu(acc, p.relu));
    }
}

template <typename T, int V>
__device__ __forceinline__ void bin_same_any(const BinaryParams &p) {
    if (p.n_in > 2) {
        bin_same<T, V, BIN_ADD, BIN_MAX_IN>(p);
        return;
    }
    switch (p.op) {
        case BIN_SUB: bin_same<T, V, BIN_SUB, 2>(p); break;
        case BIN_MUL: bin_same<T, V, BIN_MUL, 2>(p); break;
        case BIN_DIV: bin_same<T, V, BIN_DIV, 2>(p); break;
        default: bin_same<T, V, BIN_ADD, 2>(p); break;
    }
}

// Element offset of input k at coordinates c (c[d] for d < rank).
__device__ __forceinline__ long long bin_offset(const BinaryParams &p, int k,
                                                const long long (&c)[BIN_MAX_RANK]) {
    long long o = 0;
#pragma unroll
    for (int d = 0; d < BIN_MAX_RANK; ++d)
        if (d < p.rank) o += c[d] * p.strides[k][d];
    return o;
}

// The coordinates of linear index i over dims[0 .. last) (the innermost first).
__device__ __forceinline__ void bin_coords(const BinaryParams &p, long long i, int last,
                                           long long (&c)[BIN_MAX_RANK]) {
#pragma unroll
    for (int d = BIN_MAX_RANK - 1; d >= 0; --d) {
        c[d] = 0;
        if (d < last) {
            c[d] = i % p.dims[d];
            i /= p.dims[d];
        }
    }
}

// Any view, one element a thread: N inputs at most.
template <typename T, int OP, int N>
__device__ __forceinline__ void bin_strided(const BinaryParams &p) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        long long c[BIN_MAX_RANK];
        bin_coords(p, i, p.rank, c);
        float acc = eia_load((const T *)p.x[0], bin_offset(p, 0, c));
#pragma unroll
        for (int k = 1; k < N; ++k)
            if (k < p.n_in) acc = bin_op<OP>(acc, eia_load((const T *)p.x[k], bin_offset(p, k, c)));
        eia_store((T *)p.y, i, bin_relu(acc, p.relu));
    }
}

template <typename T>
__device__ __forceinline__ void bin_strided_any(const BinaryParams &p) {
    switch (p.op) {
        case BIN_SUB: bin_strided<T, BIN_SUB, 2>(p); break;
        case BIN_MUL: bin_strided<T, BIN_MUL, 2>(p); break;
        case BIN_DIV: bin_strided<T, BIN_DIV, 2>(p); break;
        default: bin_strided<T, BIN_ADD, 2>(p); break;
    }
}

// Two inputs, rows of the innermost dim: the row's base offsets once, then stride 0 or 1.
template <typename T, int OP>
__device__ __forceinline__ void bin_rows(const BinaryParams &p) {
    // The innermost dim and its strides (params indexed at compile-time indices only).
    long long inner = 1, s0 = 0, s1 = 0;
#pragma unroll
    for (int d = 0; d < BIN_MAX_RANK; ++d) {
        if (d == p.rank - 1) {
            inner = p.dims[d];
            s0 = p.strides[0][d];
            s1 = p.strides[1][d];
        }
    }
    const long long rows = p.n / inner;
    const T *x0 = (const T *)p.x[0];
    const T *x1 = (const T *)p.x[1];
    T *y = (T *)p.y;
    for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
        long long c[BIN_MAX_RANK];
        bin_coords(p, r, p.rank - 1, c);  // c[rank - 1] = 0
        const long long b0 = bin_offset(p, 0, c), b1 = bin_offset(p, 1, c);
        for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < inner;
             j += (long long)gridDim.x * blockDim.x) {
            const float v = bin_op<OP>(eia_load(x0, b0 + j * s0), eia_load(x1, b1 + j * s1));
            eia_store(y, r * inner + j, bin_relu(v, p.relu));
        }
    }
}

template <typename T>
__device__ __forceinline__ void bin_rows_any(const BinaryParams &p) {
    switch (p.op) {
        case BIN_SUB: bin_rows<T, BIN_SUB>(p); break;
        case BIN_MUL: bin_rows<T, BIN_MUL>(p); break;
        case BIN_DIV: bin_rows<T, BIN_DIV>(p); break;
        default: bin_rows<T, BIN_ADD>(p); break;
    }
}

EIA_KERNEL_BOUNDS(binary_same_f32, BinaryParams, BIN_THREADS) {
    if (p.vec) bin_same_any<float, 4>(p);
    else bin_same_any<float, 1>(p);
}
EIA_KERNEL_BOUNDS(binary_same_f16, BinaryParams, BIN_THREADS) {
    if (p.vec) bin_same_any<__half, 8>(p);
    else bin_same_any<__half, 1>(p);
}
EIA_KERNEL_BOUNDS(binary_rows_f32, BinaryParams, BIN_THREADS) { bin_rows_any<float>(p); }
EIA_KERNEL_BOUNDS(binary_rows_f16, BinaryParams, BIN_THREADS) { bin_rows_any<__half>(p); }
EIA_KERNEL_BOUNDS(binary_strided_f32, BinaryParams, BIN_THREADS) { bin_strided_any<float>(p); }
EIA_KERNEL_BOUNDS(binary_strided_f16, BinaryParams, BIN_THREADS) { bin_strided_any<__half>(p); }
EIA_KERNEL_BOUNDS(binary_sum_f32, BinaryParams, BIN_THREADS) {
    bin_strided<float, BIN_ADD, BIN_MAX_IN>(p);
}
EIA_KERNEL_BOUNDS(binary_sum_f16, BinaryParams, BIN_THREADS) {
    bin_strided<__half, BIN_ADD, BIN_MAX_IN>(p);
}
