// gemm.cu — batched, strided GEMM for Gemm and MatMul (src/ops/gemm.rs, GemmPlan):
//   Y[z] = clamp(alpha · A[z] · B[z] + beta · C)      (Y[z] is m×n, contiguous at z·y_batch)
// A[z] element (i, kk) is at a + a_off(z) + i·a_row + kk·a_col, B[z] likewise; C (2-D, no batch)
// element (i, j) at c + i·c_row + j·c_col (strides may be 0: broadcast). All strides in elements.
//
// Kernels (launch geometry planned by src/backend/cuda/launch/gemm.rs):
//   gemm_simt_f32      FP32 on CUDA cores: 128×128×8 block tile, 256 threads, 8×8 outputs per
//                      thread, A and B tiles K-major in shared memory (float4 fragment reads),
//                      register prefetch of the next tile into a second smem buffer. Each operand
//                      is loaded 4 elements at a time along its contiguous dimension (K, or M/N),
//                      with one 16-byte load when that is aligned and in bounds (GEMM_*_VEC).
//   gemm_tc_f16        FP16 on tensor cores (mma.sync m16n8k16, FP32 accumulators): 128×128×32
//                      block tile, 8 warps of 64×32, 3-stage cp.async pipeline (48 KiB), XOR-
//                      swizzled smem read with ldmatrix (ldmatrix.trans for B). Needs A contiguous
//                      along K, B contiguous along N, K and N multiples of 8, 8-aligned strides
//                      and 16-byte aligned bases (the planner checks, per launch).
//   gemm_tcnt_f16      The same with B contiguous along K (B transposed, as ONNX Gemm transB):
//                      B's stage is [n][k] like A's and read with plain ldmatrix; any N.
//   gemm_tcgather_f16  The same tiles and smem layout for any other operand layout: 8 elements at
//                      a time gathered into registers (one 16-byte load when contiguous, aligned
//                      and in bounds), stored to smem, double-buffered.
// Grid: x over N tiles, y over M tiles (blocks take their tiles in groups of GEMM_GROUP_M tile
// rows, for L2 reuse), z over the batch (batch index z0 + blockIdx.z, unravelled over batch[4],
// outermost first). Epilogue in FP32: alpha, beta·C (when GEMM_HAS_C), ReLU (NaN stays NaN),
// one rounding to the output type, bounds-checked stores. Every GPU runs this sm_80 PTX for now
// (Hopper included; a wgmma sm_90a variant is a later step).
#include "common.cuh"

#define GEMM_MAX_BATCH_DIMS 4
#define GEMM_GROUP_M 8  // tile rows per group of the block order (gemm_tile)

// gemm_simt_f32 tiles.
#define SG_BM 128
#define SG_BN 128
#define SG_BK 8
#define SG_THREADS 256
#define SG_PAD 4  // floats of padding per smem row: conflict-free transposing stores

// gemm_tc_f16 / gemm_tcnt_f16 / gemm_tcgather_f16 tiles.
#define TC_BM 128
#define TC_BN 128
#define TC_BK 32
#define TC_THREADS 256
#define TC_STAGES 3

// GemmParams.flags
#define GEMM_HAS_C 1      // add beta·C
#define GEMM_A_ALONG_K 4  // A is loaded in runs along K (else along M)
#define GEMM_A_VEC 8      // ... and full runs may use one 16-byte load
#define GEMM_B_ALONG_K 16 // B is loaded in runs along K (else along N)
#define GEMM_B_VEC 32
#define GEMM_Y_VEC 64     // Y rows allow 16-byte (f32) / 4-byte (f16) stores

struct GemmParams {
    const void *a;
    const void *b;
    const void *c;
    void *y;
    long long a_row, a_col, b_row, b_col, c_row, c_col;
    long long a_batch[GEMM_MAX_BATCH_DIMS];  // per batch dim, outermost first (0: broadcast)
    long long b_batch[GEMM_MAX_BATCH_DIMS];
    long long batch[GEMM_MAX_BATCH_DIMS];  // batch dims, outermost first; 1 where unused
    long long y_batch;                     // elements between output matrices
    long long z0;                          // batch index of blockIdx.z == 0
    int m, n, k;
    int flags;
    float alpha, beta;
    float lo, hi;  // the fused ReLU / Clip: min(max(y, lo), hi); ±inf: none
};

// Element offsets of this block's A and B matrices.
__device__ __forceinline__ void gemm_batch_offsets(const GemmParams &p, long long &a_off,
                                                   long long &b_off) {
    long long z = p.z0 + (long long)blockIdx.z;
    a_off = 0;
    b_off = 0;
#pragma unroll
    for (int d = GEMM_MAX_BATCH_DIMS - 1; d >= 0; --d) {
        if (p.batch[d] == 1) continue;  // unused: skip the 64-bit division
        const long long i = z % p.batch[d];
        z /= p.batch[d];
        a_off += i * p.a_batch[d];
        b_off += i * p.b_batch[d];
    }
}

// This block's output matrix (recomputed by the epilogues rather than kept live).
template <typename T>
__device__ __forceinline__ T *gemm_y(const GemmParams &p) {
    return static_cast<T *>(p.y) + (p.z0 + (long long)blockIdx.z) * p.y_batch;
}

// This block's output tile (m0, n0): the launch's tiles in groups of GEMM_GROUP_M tile rows,
// each group walked down its rows first, so that the blocks resident at once share A's rows
// and B's columns in L2. A bijection of the grid, whatever its shape.
__device__ __forceinline__ void gemm_tile(int bm, int bn, int &m0, int &n0) {
    const int tiles_n = gridDim.x, tiles_m = gridDim.y;
    const int id = blockIdx.y * tiles_n + blockIdx.x;
    const int group = id / (GEMM_GROUP_M * tiles_n), in_group = id % (GEMM_GROUP_M * tiles_n);
    const int first = group * GEMM_GROUP_M;
    const int rows = min(tiles_m - first, GEMM_GROUP_M);
    m0 = (first + in_group % rows) * bm;
    n0 = (in_group / rows) * bn;
}

// The epilogue of one output value: alpha·acc (+ beta·C), clamped (ReLU / Clip), in FP32.
template <typename T>
__device__ __forceinline__ float gemm_epilogue(const GemmParams &p, const T *c, float acc, int row,
                                               int col) {
    float v = p.alpha * acc;
    if (p.flags & GEMM_HAS_C)
        v = fmaf(p.beta, eia_load(c, (long long)row * p.c_row + (long long)col * p.c_col), v);
    return eia_clamp(v, p.lo, p.hi);
}

__device__ __forceinline__ int gemm_clamp(int v, int hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

// ---------------------------------------------------------------------------------------------
// FP32: gemm_simt_f32
// ---------------------------------------------------------------------------------------------

// One operand's per-thread share of a tile load: a run of 4 elements p[0], p[s], p[2s], p[3s]
// at tile position (mn, kk) of the K×128 tile, along K or along M/N. The strides and flags stay
// in the params (constant bank): only the pointer and bounds live in registers.
struct SgRun {
    const float *p;  // the run at the current K tile
    int kk, mn;      // the run's first element within the tile
    int fixed;       // along K: 4 if the row is in bounds, else 0; else the run's in-bounds count
};

__device__ __forceinline__ void sg_run_init(SgRun &r, const float *base, long long mn_s,
                                            long long k_s, int mn_ext, int mn0, bool along_k,
                                            int t) {
    if (along_k) {
        r.mn = t / 2;
        r.kk = (t % 2) * 4;
        r.fixed = mn0 + r.mn < mn_ext ? 4 : 0;
    } else {
        r.kk = t / 32;
        r.mn = (t % 32) * 4;
        r.fixed = gemm_clamp(mn_ext - mn0 - r.mn, 4);
    }
    r.p = base + (long long)(mn0 + r.mn) * mn_s + (long long)r.kk * k_s;
}

// The run of the K tile starting at k0, zero where out of bounds.
__device__ __forceinline__ float4 sg_run_load(const SgRun &r, bool along_k, bool vec,
                                              long long mn_s, long long k_s, int k0, int k) {
    const int kk = k0 + r.kk;
    const long long s = along_k ? k_s : mn_s;
    const int nv = along_k ? min(r.fixed, max(k - kk, 0)) : (kk < k ? r.fixed : 0);
    if (vec && nv == 4) return *reinterpret_cast<const float4 *>(r.p);
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = j < nv ? r.p[j * s] : 0.0f;
    return make_float4(v[0], v[1], v[2], v[3]);
}

// Stores a run into a K-major tile s[kk][mn].
__device__ __forceinline__ void sg_run_store(const SgRun &r, bool along_k,
                                             float (*s)[SG_BM + SG_PAD], float4 v) {
    if (along_k) {
        s[r.kk + 0][r.mn] = v.x;
        s[r.kk + 1][r.mn] = v.y;
        s[r.kk + 2][r.mn] = v.z;
        s[r.kk + 3][r.mn] = v.w;
    } else {
        *reinterpret_cast<float4 *>(&s[r.kk][r.mn]) = v;
    }
}

EIA_KERNEL_BOUNDS(gemm_simt_f32, GemmParams, SG_THREADS) {
    alignas(16) __shared__ float as[2][SG_BK][SG_BM + SG_PAD];
    alignas(16) __shared__ float bs[2][SG_BK][SG_BN + SG_PAD];

    const int t = threadIdx.x;
    int m0, n0;
    gemm_tile(SG_BM, SG_BN, m0, n0);
    long long a_off, b_off;
    gemm_batch_offsets(p, a_off, b_off);

    const bool a_k = p.flags & GEMM_A_ALONG_K, a_vec = p.flags & GEMM_A_VEC;
    const bool b_k = p.flags & GEMM_B_ALONG_K, b_vec = p.flags & GEMM_B_VEC;
    SgRun ra, rb;
    sg_run_init(ra, static_cast<const float *>(p.a) + a_off, p.a_row, p.a_col, p.m, m0, a_k, t);
    sg_run_init(rb, static_cast<const float *>(p.b) + b_off, p.b_col, p.b_row, p.n, n0, b_k, t);

    // Warps 2 (M) × 4 (N), 64×32 each; lanes 8 (M) × 4 (N), each 2×2 blocks of 4×4 outputs.
    const int warp = t / 32, lane = t % 32;
    const int tm = (warp / 4) * 64 + (lane / 4) * 4;
    const int tn = (warp % 4) * 32 + (lane % 4) * 4;

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    const int tiles = (p.k + SG_BK - 1) / SG_BK;
    if (tiles > 0) {
        sg_run_store(ra, a_k, as[0], sg_run_load(ra, a_k, a_vec, p.a_row, p.a_col, 0, p.k));
        sg_run_store(rb, b_k, bs[0], sg_run_load(rb, b_k, b_vec, p.b_col, p.b_row, 0, p.k));
    }
    __syncthreads();
    for (int kt = 0; kt < tiles; ++kt) {
        const int cur = kt & 1;
        const bool more = kt + 1 < tiles;
        float4 na = make_float4(0.f, 0.f, 0.f, 0.f), nb = na;
        if (more) {
            ra.p += SG_BK * p.a_col;
            rb.p += SG_BK * p.b_row;
            na = sg_run_load(ra, a_k, a_vec, p.a_row, p.a_col, (kt + 1) * SG_BK, p.k);
            nb = sg_run_load(rb, b_k, b_vec, p.b_col, p.b_row, (kt + 1) * SG_BK, p.k);
        }
#pragma unroll
        for (int kk = 0; kk < SG_BK; ++kk) {
            const float4 a0 = *reinterpret_cast<const float4 *>(&as[cur][kk][tm]);
            const float4 a1 = *reinterpret_cast<const float4 *>(&as[cur][kk][tm + 32]);
            const float4 b0 = *reinterpret_cast<const float4 *>(&bs[cur][kk][tn]);
            const float4 b1 = *reinterpret_cast<const float4 *>(&bs[cur][kk][tn + 16]);
            const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        if (more) {
            sg_run_store(ra, a_k, as[cur ^ 1], na);
            sg_run_store(rb, b_k, bs[cur ^ 1], nb);
        }
        if (!EIA_PLANT(gemm_simt_nosync)) __syncthreads();
    }

    const float *c = static_cast<const float *>(p.c);
    float *y = gemm_y<float>(p);
    const bool yvec = p.flags & GEMM_Y_VEC;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int row = m0 + tm + (i / 4) * 32 + i % 4;
        if (row >= p.m) continue;
        float *yr = y + (long long)row * p.n;
#pragma unroll
        for (int jb = 0; jb < 2; ++jb) {
            const int col = n0 + tn + jb * 16;
            float v[4];
#pragma unroll
            for (int j = 0; j < 4; ++j)
                v[j] = col + j < p.n ? gemm_epilogue(p, c, acc[i][jb * 4 + j], row, col + j) : 0.f;
            if (yvec && col + 3 < p.n) {
                *reinterpret_cast<float4 *>(yr + col) = make_float4(v[0], v[1], v[2], v[3]);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (col + j < p.n) yr[col + j] = v[j];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// FP16: gemm_tc_f16, gemm_tcnt_f16, gemm_tcgather_f16
// ---------------------------------------------------------------------------------------------
// Shared memory per stage: A as [128 m][32 k] (64-byte rows of four 16-byte chunks, chunk c of
// row m stored at c ^ ((m >> 1) & 3)) and B as [32 k][128 n] (256-byte rows of sixteen chunks,
// chunk c of row k stored at c ^ (k & 7)): the 8 rows an ldmatrix phase reads hit 8 distinct
// 16-byte bank groups. 3 stages × 16 KiB = 48 KiB.

// Element offset of A(m, k) / B(k, n) in a stage.
__device__ __forceinline__ int tc_a_off(int m, int k) {
    return m * TC_BK + ((((k >> 3) ^ (m >> 1)) & 3) << 3) + (k & 7);
}
__device__ __forceinline__ int tc_b_off(int k, int n) {
    return k * TC_BN + (((n >> 3) ^ (k & 7)) << 3) + (n & 7);
}

// Each thread's two 8-element runs of a 128×32 (A) or 32×128 (B) tile: run q = t + 256·i.
// Runs along the smem-contiguous dimension (A along K, B along N) are 16-byte chunks.
__device__ __forceinline__ void tc_a_pos(int q, bool along_k, int &m, int &k) {
    if (along_k) {
        m = q / 4;
        k = (q % 4) * 8;
    } else {
        k = q / 16;
        m = (q % 16) * 8;
    }
}
__device__ __forceinline__ void tc_b_pos(int q, bool along_k, int &k, int &n) {
    if (along_k) {
        n = q / 4;
        k = (q % 4) * 8;
    } else {
        k = q / 16;
        n = (q % 16) * 8;
    }
}

// The 64×32 warp tile's MMAs over one stage: acc[i][j] is m16 tile i, n8 tile j. B's stage is
// [k][n] (read with ldmatrix.trans), or with BT [n][k] in A's layout (read with ldmatrix).
template <bool BT>
__device__ __forceinline__ void tc_stage_mma(float (&acc)[4][4][4], const unsigned short *as,
                                             const unsigned short *bs, int wm, int wn, int lane) {
#pragma unroll
    for (int ks = 0; ks < TC_BK / 16; ++ks) {
        unsigned af[4][4], bf[4][2];
        // Lanes 8q..8q+7 address the rows of matrix q: (rows +8, k +0) for odd q, (+0, +8) for
        // q >= 2 (A); B: (k +8) for odd q, the next n8 tile for q >= 2.
        const int q = lane / 8, r = lane % 8;
#pragma unroll
        for (int i = 0; i < 4; ++i)
            eia_ldmatrix_x4(af[i], as + tc_a_off(wm + i * 16 + (q % 2) * 8 + r,
                                                 ks * 16 + (q / 2) * 8));
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
            unsigned b4[4];
            const int k = ks * 16 + (q % 2) * 8, n = wn + jj * 16 + (q / 2) * 8;
            if (BT)
                eia_ldmatrix_x4(b4, bs + tc_a_off(n + r, k));
            else
                eia_ldmatrix_x4_trans(b4, bs + tc_b_off(k + r, n));
            bf[2 * jj][0] = b4[0];
            bf[2 * jj][1] = b4[1];
            bf[2 * jj + 1][0] = b4[2];
            bf[2 * jj + 1][1] = b4[3];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) eia_mma_16816(acc[i][j], af[i], bf[j]);
    }
}

// Epilogue of the 64×32 warp tile at (m0 + wm, n0 + wn).
__device__ __forceinline__ void tc_epilogue(const GemmParams &p, const float (&acc)[4][4][4],
                                            int row0, int col0, int lane) {
    const __half *c = static_cast<const __half *>(p.c);
    __half *y = gemm_y<__half>(p);
    const bool yvec = p.flags & GEMM_Y_VEC;
    const int g = lane / 4, t2 = (lane % 4) * 2;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = row0 + i * 16 + h * 8 + g;
            if (row >= p.m) continue;
            __half *yr = y + (long long)row * p.n;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int col = col0 + j * 8 + t2;
                if (col >= p.n) continue;
                const float v0 = gemm_epilogue(p, c, acc[i][j][2 * h], row, col);
                if (col + 1 < p.n) {
                    const float v1 = gemm_epilogue(p, c, acc[i][j][2 * h + 1], row, col + 1);
                    if (yvec) {
                        *reinterpret_cast<unsigned *>(yr + col) = eia_pack_half2(v0, v1);
                    } else {
                        eia_store(yr, col, v0);
                        eia_store(yr, col + 1, v1);
                    }
                } else {
                    eia_store(yr, col, v0);
                }
            }
        }
}

// gemm_tc_f16 (BT false: B contiguous along N) and gemm_tcnt_f16 (BT: B contiguous along K).
template <bool BT>
__device__ __forceinline__ void tc_pipelined(const GemmParams &p,
                                             unsigned short (*as)[TC_BM * TC_BK],
                                             unsigned short (*bs)[TC_BK * TC_BN]) {
    const int t = threadIdx.x, warp = t / 32, lane = t % 32;
    int m0, n0;
    gemm_tile(TC_BM, TC_BN, m0, n0);
    long long a_off, b_off;
    gemm_batch_offsets(p, a_off, b_off);
    const unsigned short *a = static_cast<const unsigned short *>(p.a);
    const unsigned short *b = static_cast<const unsigned short *>(p.b);

    // This thread's two 16-byte chunks of each tile, at K offset kk[i] of the tile: A along K,
    // B along N (or along K with BT). K % 8 == 0 and N % 8 == 0, so chunks are wholly in or out.
    const unsigned short *ga[2], *gb[2];
    int ak[2], bk[2], sa[2], sb[2];
    bool a_in[2], b_in[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        int m, kk, n;
        tc_a_pos(t + 256 * i, true, m, kk);
        ga[i] = a + a_off + (long long)(m0 + m) * p.a_row + kk;
        a_in[i] = m0 + m < p.m;
        ak[i] = kk;
        sa[i] = tc_a_off(m, kk);
        tc_b_pos(t + 256 * i, BT, kk, n);
        gb[i] = b + b_off + (long long)kk * p.b_row + (long long)(n0 + n) * p.b_col;
        b_in[i] = n0 + n < p.n;
        bk[i] = kk;
        sb[i] = BT ? tc_a_off(n, kk) : tc_b_off(kk, n);
    }
    const int tiles = (p.k + TC_BK - 1) / TC_BK;
    const long long b_step = (long long)TC_BK * p.b_row;
    // Issues the copies of K tile kt into stage s, zero-filled outside the matrices (an invalid
    // copy reads nothing, so its address may lie outside).
    auto load = [&](int kt, int s) {
        const int k0 = kt * TC_BK;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const bool a_ok = a_in[i] && k0 + ak[i] < p.k;
            eia_cp_async_16(&as[s][sa[i]],
                            ga[i] + k0 + (!a_ok && EIA_PLANT(gemm_tc_misaligned_fallback)), a_ok);
            eia_cp_async_16(&bs[s][sb[i]], gb[i] + kt * b_step, b_in[i] && k0 + bk[i] < p.k);
        }
    };

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
#pragma unroll
    for (int s = 0; s < TC_STAGES - 1; ++s) {
        if (s < tiles) load(s, s);
        eia_cp_async_commit();
    }
    for (int kt = 0; kt < tiles; ++kt) {
        if (EIA_PLANT(gemm_tc_early_wait)) eia_cp_async_wait<TC_STAGES - 1>();
        else eia_cp_async_wait<TC_STAGES - 2>();
        if (!EIA_PLANT(gemm_tc_nosync)) __syncthreads();
        // The stage refilled here was last read in iteration kt - 1, which every warp has left.
        const int next = kt + TC_STAGES - 1;
        if (next < tiles) load(next, (next + EIA_PLANT(gemm_tc_wrong_stage)) % TC_STAGES);
        eia_cp_async_commit();
        const int s = kt % TC_STAGES;
        tc_stage_mma<BT>(acc, as[s], bs[s], wm, wn, lane);
    }
    tc_epilogue(p, acc, m0 + wm, n0 + wn, lane);
}

EIA_KERNEL_BOUNDS(gemm_tc_f16, GemmParams, TC_THREADS) {
    alignas(16) __shared__ unsigned short as[TC_STAGES][TC_BM * TC_BK];
    alignas(16) __shared__ unsigned short bs[TC_STAGES][TC_BK * TC_BN];
    tc_pipelined<false>(p, as, bs);
}

EIA_KERNEL_BOUNDS(gemm_tcnt_f16, GemmParams, TC_THREADS) {
    alignas(16) __shared__ unsigned short as[TC_STAGES][TC_BM * TC_BK];
    alignas(16) __shared__ unsigned short bs[TC_STAGES][TC_BN * TC_BK];
    tc_pipelined<true>(p, as, bs);
}

// One operand's per-thread share of a gathered tile: two runs of 8 elements along K or along
// M/N (strides and flags stay in the params, as for SgRun).
struct TcRuns {
    const unsigned short *p[2];  // the runs at the current K tile
    int kk[2], mn[2];            // the runs' first elements within the tile
    int fixed[2];                // as SgRun::fixed, for 8-element runs
};

template <bool IS_A>
__device__ __forceinline__ void tc_runs_init(TcRuns &r, const unsigned short *base, long long mn_s,
                                             long long k_s, int mn_ext, int mn0, bool along_k,
                                             int t) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        int mn, kk;
        if (IS_A)
            tc_a_pos(t + 256 * i, along_k, mn, kk);
        else
            tc_b_pos(t + 256 * i, along_k, kk, mn);
        r.mn[i] = mn;
        r.kk[i] = kk;
        r.fixed[i] = along_k ? (mn0 + mn < mn_ext ? 8 : 0) : gemm_clamp(mn_ext - mn0 - mn, 8);
        r.p[i] = base + (long long)(mn0 + mn) * mn_s + (long long)kk * k_s;
    }
}

__device__ __forceinline__ unsigned tc_pack(unsigned lo, unsigned hi) { return lo | (hi << 16); }

// Run i of the K tile starting at k0, zero where out of bounds, as 8 packed halves.
__device__ __forceinline__ uint4 tc_runs_load(const TcRuns &r, int i, bool along_k, bool vec,
                                              long long mn_s, long long k_s, int k0, int k) {
    const int kk = k0 + r.kk[i];
    const long long s = along_k ? k_s : mn_s;
    const int nv = along_k ? min(r.fixed[i], max(k - kk, 0)) : (kk < k ? r.fixed[i] : 0);
    if (vec && nv == 8) return *reinterpret_cast<const uint4 *>(r.p[i]);
    unsigned h[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) h[j] = j < nv ? r.p[i][j * s] : 0u;
    return make_uint4(tc_pack(h[0], h[1]), tc_pack(h[2], h[3]), tc_pack(h[4], h[5]),
                      tc_pack(h[6], h[7]));
}

// Stores run i into a stage: one 16-byte chunk when the run is along the smem-contiguous
// dimension (A: K, B: N), else 8 halves down a column.
template <bool IS_A>
__device__ __forceinline__ void tc_runs_store(const TcRuns &r, int i, bool along_k,
                                              unsigned short *s, uint4 v) {
    const int mn = r.mn[i], kk = r.kk[i];
    if (along_k == IS_A) {
        *reinterpret_cast<uint4 *>(s + (IS_A ? tc_a_off(mn, kk) : tc_b_off(kk, mn))) = v;
    } else {
        const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const unsigned short h = (unsigned short)(w[j / 2] >> (16 * (j % 2)));
            s[IS_A ? tc_a_off(mn + j, kk) : tc_b_off(kk + j, mn)] = h;
        }
    }
}

EIA_KERNEL_BOUNDS(gemm_tcgather_f16, GemmParams, TC_THREADS) {
    alignas(16) __shared__ unsigned short as[2][TC_BM * TC_BK];
    alignas(16) __shared__ unsigned short bs[2][TC_BK * TC_BN];

    const int t = threadIdx.x, warp = t / 32, lane = t % 32;
    int m0, n0;
    gemm_tile(TC_BM, TC_BN, m0, n0);
    long long a_off, b_off;
    gemm_batch_offsets(p, a_off, b_off);

    const bool a_k = p.flags & GEMM_A_ALONG_K, a_vec = p.flags & GEMM_A_VEC;
    const bool b_k = p.flags & GEMM_B_ALONG_K, b_vec = p.flags & GEMM_B_VEC;
    TcRuns ra, rb;
    tc_runs_init<true>(ra, static_cast<const unsigned short *>(p.a) + a_off, p.a_row, p.a_col,
                       p.m, m0, a_k, t);
    tc_runs_init<false>(rb, static_cast<const unsigned short *>(p.b) + b_off, p.b_col, p.b_row,
                        p.n, n0, b_k, t);

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
    const int tiles = (p.k + TC_BK - 1) / TC_BK;
    if (tiles > 0) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const uint4 va = tc_runs_load(ra, i, a_k, a_vec, p.a_row, p.a_col, 0, p.k);
            const uint4 vb = tc_runs_load(rb, i, b_k, b_vec, p.b_col, p.b_row, 0, p.k);
            tc_runs_store<true>(ra, i, a_k, as[0], va);
            tc_runs_store<false>(rb, i, b_k, bs[0], vb);
        }
    }
    __syncthreads();
    for (int kt = 0; kt < tiles; ++kt) {
        const int cur = kt & 1;
        const bool more = kt + 1 < tiles;
        uint4 na[2], nb[2];
        if (more) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                ra.p[i] += TC_BK * p.a_col;
                rb.p[i] += TC_BK * p.b_row;
                na[i] = tc_runs_load(ra, i, a_k, a_vec, p.a_row, p.a_col, (kt + 1) * TC_BK, p.k);
                nb[i] = tc_runs_load(rb, i, b_k, b_vec, p.b_col, p.b_row, (kt + 1) * TC_BK, p.k);
            }
        }
        tc_stage_mma<false>(acc, as[cur], bs[cur], wm, wn, lane);
        if (more) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                tc_runs_store<true>(ra, i, a_k, as[cur ^ 1], na[i]);
                tc_runs_store<false>(rb, i, b_k, bs[cur ^ 1], nb[i]);
            }
        }
        __syncthreads();
    }
    tc_epilogue(p, acc, m0 + wm, n0 + wn, lane);
}
