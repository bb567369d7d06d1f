// layout.cu — the layout ops (ONNX Concat, Transpose, Flatten, Reshape, Squeeze, Unsqueeze,
// Identity, Dropout in inference). Bit copies: FP16 and FP32 elements are moved, never converted.
//
// Kernels (launch geometry planned by src/backend/cuda/launch/layout.rs), every one a grid-stride
// loop over its elements with LAYOUT_THREADS threads a block:
//
// layout_copy_<dt>       y[i] = x[i] for i < p.n (Flatten, Reshape, Squeeze, Unsqueeze, Identity,
//                        Dropout). With p.vec = 1 (x and y 16-byte aligned) the first
//                        ⌊n·size / 16⌋ 16-byte slots move as one uint4 each, the tail element by
//                        element.
// layout_transpose_<dt>  y[j] = x[Σ_k i_k·p.strides[k]] where (i_0 … i_{rank−1}) is the row-major
//                        index of j over p.dims (the output's extents, outermost first, at most
//                        LAYOUT_MAX_RANK after the planner merged adjacent dimensions) and
//                        p.strides[k] the input stride of output dimension k.
// layout_concat_<dt>     one launch per input: the input viewed as [rows, p.width] goes to
//                        columns p.offset .. p.offset + p.width of the output viewed as
//                        [rows, p.out_width]; p.n = rows·p.width.
#include "common.cuh"

// The same numbers are consts in src/backend/cuda/launch/layout.rs.
#define LAYOUT_THREADS 256   // threads of a block
#define LAYOUT_MAX_RANK 8    // dimensions of a transpose after merging

struct LayoutParams {
    const void *x;
    void *y;
    long long n;                          // elements this launch writes
    long long width;                      // concat: elements of an input row
    long long out_width;                  // concat: elements of an output row
    long long offset;                     // concat: the input's first column in an output row
    long long dims[LAYOUT_MAX_RANK];      // transpose: output extents, outermost first
    long long strides[LAYOUT_MAX_RANK];   // transpose: input stride of each output dimension
    int rank;                             // transpose: dimensions in dims / strides
    int vec;                              // copy: 1 → 16-byte slots (x and y 16-byte aligned)
};

template <typename T>
__device__ __forceinline__ void layout_copy(const LayoutParams &p) {
    const T *x = static_cast<const T *>(p.x);
    T *y = static_cast<T *>(p.y);
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long done = 0;
    if (p.vec) {
        const long long V = 16 / sizeof(T);
        const long long slots = p.n / V;
        const uint4 *xs = reinterpret_cast<const uint4 *>(x);
        uint4 *ys = reinterpret_cast<uint4 *>(y);
        for (long long i = first; i < slots; i += stride) ys[i] = xs[i];
        done = slots * V;
    }
    for (long long i = done + first; i < p.n; i += stride) y[i] = x[i];
}

template <typename T>
__device__ __forceinline__ void layout_transpose(const LayoutParams &p) {
    const T *x = static_cast<const T *>(p.x);
    T *y = static_cast<T *>(p.y);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < p.n; j += stride) {
        long long r = j, xi = 0;
        for (int k = p.rank - 1; k >= 0; --k) {
            const long long d = p.dims[k];
            xi += (r % d) * p.strides[k];
            r /= d;
        }
        y[j] = x[xi];
    }
}

template <typename T>
__device__ __forceinline__ void layout_concat(const LayoutParams &p) {
    const T *x = static_cast<const T *>(p.x);
    T *y = static_cast<T *>(p.y);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        const long long r = i / p.width, c = i - r * p.width;
        y[r * p.out_width + p.offset + c] = x[i];
    }
}

EIA_KERNEL_BOUNDS(layout_copy_f32, LayoutParams, LAYOUT_THREADS) { layout_copy<float>(p); }
EIA_KERNEL_BOUNDS(layout_copy_f16, LayoutParams, LAYOUT_THREADS) { layout_copy<unsigned short>(p); }
EIA_KERNEL_BOUNDS(layout_transpose_f32, LayoutParams, LAYOUT_THREADS) { layout_transpose<float>(p); }
EIA_KERNEL_BOUNDS(layout_transpose_f16, LayoutParams, LAYOUT_THREADS) {
    layout_transpose<unsigned short>(p);
}
EIA_KERNEL_BOUNDS(layout_concat_f32, LayoutParams, LAYOUT_THREADS) { layout_concat<float>(p); }
EIA_KERNEL_BOUNDS(layout_concat_f16, LayoutParams, LAYOUT_THREADS) { layout_concat<unsigned short>(p); }
