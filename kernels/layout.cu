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
// layout_transpose_tiled_<dt>
//                        the same map when the two innermost dimensions swap (p.strides[rank−2]
//                        = 1: the output's second-innermost dimension is the input's innermost):
//                        per outer index (dimensions 0 … rank−3) a [nj, ni] → [ni, nj] matrix
//                        transpose in LAYOUT_TILE × LAYOUT_TILE tiles through shared memory
//                        (rows padded to LAYOUT_TILE + 1 against bank conflicts), so reads
//                        (along i) and writes (along j) are both coalesced. One tile per block
//                        iteration, the grid striding over (outer, tile_i, tile_j); the block's
//                        LAYOUT_THREADS threads are 32 lanes × LAYOUT_THREADS / 32 rows.
// layout_concat_<dt>     one launch per input: the input viewed as [rows, p.width] goes to
//                        columns p.offset .. p.offset + p.width of the output viewed as
//                        [rows, p.out_width]; p.n = rows·p.width.
#include "common.cuh"

// The same numbers are consts in src/backend/cuda/launch/layout.rs.
#define LAYOUT_THREADS 256   // threads of a block
#define LAYOUT_MAX_RANK 8    // dimensions of a transpose after merging
#define LAYOUT_TILE 32       // side of a tiled transpose's tile (one warp wide)

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

// The input offset of row-major index r over output dimensions 0 … rank − 1.
__device__ __forceinline__ long long layout_gather(const LayoutParams &p, long long r, int rank) {
    long long xi = 0;
    for (int k = rank - 1; k >= 0; --k) {
        const long long d = p.dims[k];
        xi += (r % d) * p.strides[k];
        r /= d;
    }
    return xi;
}

template <typename T>
__device__ __forceinline__ void layout_transpose(const LayoutParams &p) {
    const T *x = static_cast<const T *>(p.x);
    T *y = static_cast<T *>(p.y);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < p.n; j += stride)
        y[j] = x[layout_gather(p, j, p.rank)];
}

// One tile at a time through `tile` (LAYOUT_TILE × (LAYOUT_TILE + 1) elements of shared memory,
// declared by the kernel: the emulator needs __shared__ outside templates).
template <typename T>
__device__ __forceinline__ void layout_transpose_tiled(const LayoutParams &p,
                                                       T (*tile)[LAYOUT_TILE + 1]) {
    const T *x = static_cast<const T *>(p.x);
    T *y = static_cast<T *>(p.y);
    const int r = p.rank;
    const long long ni = p.dims[r - 2], nj = p.dims[r - 1];
    const long long si = p.strides[r - 2], sj = p.strides[r - 1];
    const long long tiles_i = (ni + LAYOUT_TILE - 1) / LAYOUT_TILE;
    const long long tiles_j = (nj + LAYOUT_TILE - 1) / LAYOUT_TILE;
    const long long per_outer = tiles_i * tiles_j;
    const long long tiles = p.n / (ni * nj) * per_outer;
    const int lane = threadIdx.x % LAYOUT_TILE, row = threadIdx.x / LAYOUT_TILE;
    const int rows = LAYOUT_THREADS / LAYOUT_TILE;
    // Uniform across the block: every thread reaches the same barriers.
    for (long long t = blockIdx.x; t < tiles; t += gridDim.x) {
        const long long o = t / per_outer, xb = layout_gather(p, o, r - 2), yb = o * ni * nj;
        const long long i0 = t % per_outer / tiles_j * LAYOUT_TILE;
        const long long j0 = t % tiles_j * LAYOUT_TILE;
        // Read x rows j0 + k, lanes along i (contiguous in x).
        for (int k = row; k < LAYOUT_TILE; k += rows) {
            const long long i = i0 + lane, j = j0 + k;
            if (i < ni && j < nj) tile[k][lane] = x[xb + i * si + j * sj];
        }
        __syncthreads();
        // Write y rows i0 + k, lanes along j (contiguous in y).
        for (int k = row; k < LAYOUT_TILE; k += rows) {
            const long long i = i0 + k, j = j0 + lane;
            if (i < ni && j < nj) y[yb + i * nj + j] = tile[lane][k];
        }
        __syncthreads();
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
EIA_KERNEL_BOUNDS(layout_transpose_tiled_f32, LayoutParams, LAYOUT_THREADS) {
    __shared__ float tile[LAYOUT_TILE][LAYOUT_TILE + 1];
    layout_transpose_tiled<float>(p, tile);
}
EIA_KERNEL_BOUNDS(layout_transpose_tiled_f16, LayoutParams, LAYOUT_THREADS) {
    __shared__ unsigned short tile[LAYOUT_TILE][LAYOUT_TILE + 1];
    layout_transpose_tiled<unsigned short>(p, tile);
}
EIA_KERNEL_BOUNDS(layout_concat_f32, LayoutParams, LAYOUT_THREADS) { layout_concat<float>(p); }
EIA_KERNEL_BOUNDS(layout_concat_f16, LayoutParams, LAYOUT_THREADS) { layout_concat<unsigned short>(p); }
