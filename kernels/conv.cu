// conv.cu — 2-D convolution (ONNX Conv, NCHW input, OIHW weights, fused bias, residual sum and
// ReLU / Clip).
//
// Kernels (launch geometry planned by src/backend/cuda/launch/conv.rs):
//   conv_tc128x128_f16  implicit GEMM on tensor cores (mma.sync m16n8k16, FP32 accumulators):
//                       128×128×32 block tile, 8 warps (2 along M × 4 along N) of 64×32
//   conv_tc128x64_f16   the same with a 128×64×32 tile, 8 warps (4 × 2) of 32×32
//   conv_tc64x64_f16    the same with a 64×64×32 tile, 4 warps (2 × 2) of 32×32
//   conv_simt_f32       implicit GEMM on CUDA cores: 128×128×16 block tile, 256 threads of 8×8
//   conv_depthwise_f32, conv_depthwise_f16
//                       direct convolution when every group has one input channel (any channel
//                       multiplier): one thread per output element
//
// Implicit GEMM, per group g (grid z): M = n·p·q output pixels, N = k/group output channels,
// K = (c/group)·r·s. A[m][kk] = x[ni, g·cg + ci, pi·sh + ri·dh − ph, qi·sw + si·dw − pw] (zero
// outside the image) is gathered on the fly; B[kk][n] = w[g·kg + n, ci, ri, si] is the weight row
// of output channel n, contiguous along K. Block (x, y, z) computes output pixels
// [x·BM, x·BM + BM) × channels [y·BN, y·BN + BN) of group group0 + z.
//
// A is gathered: the K → (ci, ri, si) decomposition of each k-tile is computed once per block
// into a small shared table (offset of (ci, ri·dh, si·dw) in the group's input, the window
// position's bit, ri·dh, si·dw); each thread owns one output pixel of the A tile, with a pointer
// to its window origin and a bitmask of the window elements inside the image (r·s <= 32;
// larger windows check row and column instead), and gathers BK / (threads / BM) elements of it
// per k-tile: one AND, one load each. For a 1×1, stride-1, unpadded convolution with p·q % 8 == 0
// A is x itself and its tiles are copied 16 bytes at a time by cp.async (a_async), like B's when
// K % 8 == 0 (b_async). Tiles are double-buffered in shared memory: while one is multiplied, the
// next is in flight (cp.async) or in registers (gathered, or B's scalar loads).
#include "common.cuh"

// Tile constants; the same numbers are consts in src/backend/cuda/launch/conv.rs.
#define CONV_TC_BK 32
#define CONV_TC128X128_BM 128
#define CONV_TC128X128_BN 128
#define CONV_TC128X128_THREADS 256
#define CONV_TC128X64_BM 128
#define CONV_TC128X64_BN 64
#define CONV_TC128X64_THREADS 256
#define CONV_TC64X64_BM 64
#define CONV_TC64X64_BN 64
#define CONV_TC64X64_THREADS 128
#define CONV_SIMT_BK 16
#define CONV_SIMT_BM 128
#define CONV_SIMT_BN 128
#define CONV_SIMT_THREADS 256
#define CONV_DW_THREADS 256

// One launch of any conv kernel. x, y point at the first image of the launch.
struct ConvParams {
    const void *x;     // [n, c, h, w]
    const void *w;     // [k, c/group, r, s]
    const void *bias;  // [k], or NULL
    void *y;           // [n, k, p, q]
    const void *sum;   // [n, k, p, q], the residual added after the bias, or NULL
    long long x_image; // c·h·w
    long long y_image; // k·p·q
    long long x_group; // (c/group)·h·w
    long long w_group; // (k/group)·(c/group)·r·s
    int m;             // n·p·q for the images of this launch
    int kdim;          // (c/group)·r·s
    int k;             // output channels
    int kg;            // output channels per group
    int group0;        // group of blockIdx.z == 0
    int h, w_in, hw;   // input plane
    int r, s, rs;      // kernel window
    int p, q, pq;      // output plane
    int stride_h, stride_w, dil_h, dil_w, pad_h, pad_w;
    float lo, hi;      // the fused ReLU / Clip after the bias and sum: min(max(·, lo), hi); ±inf: none
    int a_async;       // F16: A tiles by cp.async, 8 pixels at a time (1×1 window, stride 1, no
                       // padding, p·q % 8 == 0, x 16-byte aligned): A is x itself
    int b_async;       // F16: B tiles by cp.async (kdim % 8 == 0, w 16-byte aligned)
    int tiles;         // depthwise: blocks per output plane
};

// A row offset that fails every bounds check (used past kdim and past M).
#define CONV_FAR (-(1 << 29))
// Windows of at most this many elements gather with a per-pixel validity bitmask.
#define CONV_MASK_BITS 32

// Fills the shared table of the k-tile starting at k0 (threads 0..BK-1). Entry k:
//   x = offset of (ci, ri·dh, si·dw) in the group's input: ci·h·w + ri·dh·w + si·dw
//   y = 1 << (ri·s + si), the window position's bit (when r·s <= CONV_MASK_BITS)
//   z = ri·dh, w = si·dw
// and past kdim: y = 0, z = CONV_FAR (every check fails).
template <int BK>
__device__ __forceinline__ void conv_fill_table(uint4 *tab, const ConvParams &p, int k0) {
    const int t = threadIdx.x;
    if (t < BK) {
        const int k = k0 + t;
        uint4 e = make_uint4(0u, 0u, (unsigned)CONV_FAR, 0u);
        if (k < p.kdim) {
            const int ci = k / p.rs;
            const int rem = k - ci * p.rs;
            const int ri = rem / p.s;
            const int si = rem - ri * p.s;
            const int dh = ri * p.dil_h, dw = si * p.dil_w;
            e = make_uint4((unsigned)(ci * p.hw + dh * p.w_in + dw),
                           p.rs <= CONV_MASK_BITS ? 1u << rem : 0u, (unsigned)dh, (unsigned)dw);
        }
        tab[t] = e;
    }
}

// The output pixel one thread gathers A elements for: its input window and where that window's
// element (0, 0) would be in x (a pointer possibly outside x when the window starts in the
// padding: only valid elements are read through it).
template <typename T>
struct ConvPixel {
    const T *row; // &x[ni, g·cg, ih0, iw0]
    int ih0, iw0; // input row and column of window element (0, 0); ih0 = CONV_FAR past M
    unsigned mask; // r·s <= CONV_MASK_BITS: bit ri·s + si set iff that window element is inside
};

template <typename T>
__device__ __forceinline__ ConvPixel<T> conv_pixel(const ConvParams &p, int m, int grp) {
    ConvPixel<T> px;
    px.row = reinterpret_cast<const T *>(p.x);
    px.ih0 = CONV_FAR;
    px.iw0 = 0;
    px.mask = 0;
    if (m < p.m) {
        const int ni = m / p.pq;
        const int pix = m - ni * p.pq;
        const int pi = pix / p.q;
        const int qi = pix - pi * p.q;
        px.ih0 = pi * p.stride_h - p.pad_h;
        px.iw0 = qi * p.stride_w - p.pad_w;
        px.row += (long long)ni * p.x_image + (long long)grp * p.x_group +
                  (long long)px.ih0 * p.w_in + px.iw0;
        if (p.rs <= CONV_MASK_BITS) {
            for (int ri = 0; ri < p.r; ++ri) {
                const bool row_ok = (unsigned)(px.ih0 + ri * p.dil_h) < (unsigned)p.h;
                for (int si = 0; si < p.s; ++si) {
                    if (row_ok && (unsigned)(px.iw0 + si * p.dil_w) < (unsigned)p.w_in)
                        px.mask |= 1u << (ri * p.s + si);
                }
            }
        }
    }
    return px;
}

// A[m][k] for the thread's pixel and the table entry of k: zero in the padding and past M or K.
// With the mask (r·s <= CONV_MASK_BITS) one AND decides; otherwise row and column are checked.
template <typename T>
__device__ __forceinline__ T conv_gather_masked(const ConvPixel<T> &px, const uint4 &e, T zero) {
    return (px.mask & e.y) ? px.row[e.x] : zero;
}
template <typename T>
__device__ __forceinline__ T conv_gather_checked(const ConvPixel<T> &px, const uint4 &e,
                                                 const ConvParams &p, T zero) {
    const int ih = px.ih0 + (int)e.z;
    const int iw = px.iw0 + (int)e.w;
    return ((unsigned)ih < (unsigned)p.h && (unsigned)iw < (unsigned)p.w_in) ? px.row[e.x] : zero;
}

// bias + residual sum + ReLU / Clip of one accumulator; i is its index in y (and sum).
template <typename T>
__device__ __forceinline__ float conv_epilogue(const ConvParams &p, float v, float b, long long i) {
    const float s = p.sum != nullptr ? eia_load(reinterpret_cast<const T *>(p.sum), i) : 0.f;
    return eia_clamp(v + b + s, p.lo, p.hi); // NaN stays NaN, as on the CPU
}

__device__ __forceinline__ constexpr int conv_cmax(int a, int b) { return a > b ? a : b; }

// Shared memory of a BM×BN tensor-core tile, in uint4: two stages of A and B, or C (below).
// Declared by each kernel, not in the template: static locals of a template are COMDAT objects,
// which the emulator could not keep in its shared-memory section.
__device__ __forceinline__ constexpr int conv_tc_smem(int bm, int bn) {
    return conv_cmax(2 * (CONV_TC_BK * (bm + 8) + bn * (CONV_TC_BK + 8)), bn * (bm + 8)) / 8;
}

// ---------------------------------------------------------------------------------------------
// FP16 implicit GEMM on tensor cores. BM×BN block tile, BK = 32, WM×WN warps.
// Shared memory: A as [BK][BM] (M contiguous, read with ldmatrix.trans), B as [BN][BK] (K
// contiguous, read with ldmatrix), both padded by 8 halves so ldmatrix rows hit distinct banks;
// the epilogue reuses it as C [BN][BM] (FP16, already biased, summed and rounded) for coalesced
// stores.
// smem: conv_tc_smem(BM, BN) uint4; tab: the two k-tile tables.
template <int BM, int BN, int WM, int WN>
__device__ __forceinline__ void conv_igemm_tc(const ConvParams &p, uint4 *smem,
                                              uint4 (*tab)[CONV_TC_BK]) {
    constexpr int THREADS = WM * WN * 32;
    constexpr int BK = CONV_TC_BK;
    constexpr int WTM = BM / WM, WTN = BN / WN; // warp tile
    constexpr int MT = WTM / 16, NT = WTN / 8;  // mma tiles per warp
    constexpr int A_LD = BM + 8, B_LD = BK + 8, C_LD = BM + 8;
    constexpr int A_STAGE = BK * A_LD, B_STAGE = BN * B_LD;
    constexpr int SMEM_HALVES = conv_cmax(2 * (A_STAGE + B_STAGE), BN * C_LD);
    constexpr int A_KSTEP = THREADS / BM, A_PER = BK / A_KSTEP;       // gathered A per thread
    constexpr int A_CKSTEP = THREADS / (BM / 8), A_CHUNKS = BK / A_CKSTEP; // direct A cp.async
    constexpr int B_CHUNKS = BN * (BK / 8) / THREADS;                 // cp.async per thread
    constexpr int B_NSTEP = THREADS / BK, B_PER = BN / B_NSTEP;       // scalar B per thread
    constexpr int C_NSTEP = THREADS / BM;
    static_assert(THREADS % BM == 0 && BK % A_KSTEP == 0 && BK % A_CKSTEP == 0, "A tile mapping");
    static_assert((BN * (BK / 8)) % THREADS == 0 && BN % B_NSTEP == 0, "B tile mapping");
    static_assert(NT % 2 == 0 && WTM % 16 == 0, "warp tile");
    static_assert(SMEM_HALVES == conv_tc_smem(BM, BN) * 8, "shared memory size");

    __half *As = reinterpret_cast<__half *>(smem); // [2][BK][A_LD]
    __half *Bs = As + 2 * A_STAGE;                 // [2][BN][B_LD]

    const int tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int wm = warp % WM, wn = warp / WM;
    const int grp = p.group0 + blockIdx.z;
    const int mb = blockIdx.x * BM, nb = blockIdx.y * BN;

    const __half *w0 = reinterpret_cast<const __half *>(p.w);
    const __half *x0 = reinterpret_cast<const __half *>(p.x);
    const __half *wg = w0 + (long long)grp * p.w_group;
    const __half zero = __float2half_rn(0.f);

    // A gathered: pixel am of the tile, k rows ak0, ak0 + A_KSTEP, ... (into registers).
    const int am = tid % BM, ak0 = tid / BM;
    const ConvPixel<__half> px = conv_pixel<__half>(p, mb + am, grp);
    __half areg[A_PER];
    // A direct (p.a_async): pixels a_mc .. a_mc + 7 of the tile, k rows a_k0, a_k0 + A_CKSTEP, ...
    const int a_mc = (tid % (BM / 8)) * 8, a_k0 = tid / (BM / 8);
    const __half *a_src = nullptr; // &x[ni, g·cg, pixel a_mc]
    if (p.a_async && mb + a_mc < p.m) {
        const int ni = (mb + a_mc) / p.pq;
        a_src = reinterpret_cast<const __half *>(p.x) + (long long)ni * p.x_image +
                (long long)grp * p.x_group + (mb + a_mc - ni * p.pq);
    }
    // B by scalar loads: k column bk = tid % BK of rows bn0, bn0 + B_NSTEP, ... (registers).
    const int bk = tid % BK, bn0 = tid / BK;
    __half breg[B_PER];

    // Starts loading k-tile k0 into stage st: cp.async parts straight to shared memory (one
    // commit group), gathered parts into registers (table t).
    auto issue = [&](int st, int k0, const uint4 *t) {
        if (p.a_async) {
#pragma unroll
            for (int i = 0; i < A_CHUNKS; ++i) {
                const int kr = a_k0 + i * A_CKSTEP;
                const bool ok = a_src != nullptr && k0 + kr < p.kdim;
                // A zero-fill copy reads nothing but still needs an aligned address: x itself
                // (a_async checks its alignment), not the weights of a group (issue 20, F1).
                const __half *src = ok ? a_src + (long long)(k0 + kr) * p.hw
                                  : EIA_PLANT(conv_tc_misaligned_fallback) ? wg
                                                                            : x0;
                eia_cp_async_16(&As[st * A_STAGE + kr * A_LD + a_mc], src, ok);
            }
        } else if (p.rs <= CONV_MASK_BITS) {
#pragma unroll
            for (int j = 0; j < A_PER; ++j)
                areg[j] = conv_gather_masked(px, t[ak0 + j * A_KSTEP], zero);
        } else {
#pragma unroll
            for (int j = 0; j < A_PER; ++j)
                areg[j] = conv_gather_checked(px, t[ak0 + j * A_KSTEP], p, zero);
        }
        if (p.b_async) {
            // Chunk c = tid + i·THREADS: 8 halves of row c / (BK/8) at k offset (c % (BK/8))·8.
#pragma unroll
            for (int i = 0; i < B_CHUNKS; ++i) {
                const int c = tid + i * THREADS;
                const int n = c / (BK / 8), kc = (c % (BK / 8)) * 8;
                const bool ok = nb + n < p.kg && k0 + kc < p.kdim;
                const __half *src = ok ? wg + (long long)(nb + n) * p.kdim + (k0 + kc) : w0;
                eia_cp_async_16(&Bs[st * B_STAGE + n * B_LD + kc], src, ok);
            }
        } else {
            const bool kok = k0 + bk < p.kdim;
#pragma unroll
            for (int j = 0; j < B_PER; ++j) {
                const int n = nb + bn0 + j * B_NSTEP;
                breg[j] = (kok && n < p.kg) ? wg[(long long)n * p.kdim + k0 + bk] : zero;
            }
        }
        eia_cp_async_commit();
    };
    // Stores the register parts of the tile issued last into stage st.
    auto commit = [&](int st) {
        if (!p.a_async) {
#pragma unroll
            for (int j = 0; j < A_PER; ++j)
                As[st * A_STAGE + (ak0 + j * A_KSTEP) * A_LD + am] = areg[j];
        }
        if (!p.b_async) {
#pragma unroll
            for (int j = 0; j < B_PER; ++j)
                Bs[st * B_STAGE + (bn0 + j * B_NSTEP) * B_LD + bk] = breg[j];
        }
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    // ldmatrix lane roles: matrix mi = lane / 8, row lr = lane % 8.
    const int mi = lane >> 3, lr = lane & 7;
    const int a_off = ((mi >> 1) * 8 + lr) * A_LD + wm * WTM + (mi & 1) * 8;
    const int b_off = (wn * WTN + (mi >> 1) * 8 + lr) * B_LD + (mi & 1) * 8;

    // Double-buffered main loop. The table of k-tile kt is tab[kt & 1]; the one of kt + 2 is
    // filled once tile kt + 1 has been gathered.
    const int nk = (p.kdim + BK - 1) / BK;
    if (nk > 0) {
        if (!p.a_async) conv_fill_table<BK>(tab[0], p, 0);
        __syncthreads();
        issue(0, 0, tab[0]);
        commit(0);
        if (!p.a_async && nk > 1) conv_fill_table<BK>(tab[1], p, BK);
        eia_cp_async_wait<0>();
        __syncthreads();
    }
    for (int kt = 0; kt < nk; ++kt) {
        const int cur = kt & 1, nxt = cur ^ 1;
        const bool more = kt + 1 < nk;
        if (more) issue(nxt, (kt + 1) * BK, tab[nxt]);
        const __half *a_st = As + cur * A_STAGE + a_off;
        const __half *b_st = Bs + cur * B_STAGE + b_off;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            unsigned af[MT][4], bf[NT][2];
#pragma unroll
            for (int i = 0; i < MT; ++i) eia_ldmatrix_x4_trans(af[i], a_st + kk * A_LD + i * 16);
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                unsigned t4[4];
                eia_ldmatrix_x4(t4, b_st + j * 8 * B_LD + kk);
                bf[j][0] = t4[0];
                bf[j][1] = t4[1];
                bf[j + 1][0] = t4[2];
                bf[j + 1][1] = t4[3];
            }
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j) eia_mma_16816(acc[i][j], af[i], bf[j]);
        }
        if (more) {
            commit(EIA_PLANT(conv_tc_wrong_stage) ? cur : nxt);
            if (!p.a_async && kt + 2 < nk) conv_fill_table<BK>(tab[cur], p, (kt + 2) * BK);
        }
        if (EIA_PLANT(conv_tc_early_wait)) eia_cp_async_wait<1>();
        else eia_cp_async_wait<0>();
        if (!EIA_PLANT(conv_tc_nosync)) __syncthreads();
    }

    // Epilogue: bias, residual sum, ReLU / Clip, one rounding, into C [BN][C_LD] in shared
    // memory.
    __half *Cs = reinterpret_cast<__half *>(smem);
    const int g = lane >> 2, t = lane & 3;
    const __half *bias = reinterpret_cast<const __half *>(p.bias);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int n = wn * WTN + j * 8 + 2 * t + e;
            const float b = (bias != nullptr && nb + n < p.kg)
                                ? __half2float(bias[grp * p.kg + nb + n])
                                : 0.f;
#pragma unroll
            for (int i = 0; i < MT; ++i) {
#pragma unroll
                for (int hi = 0; hi < 2; ++hi) {
                    const int m = wm * WTM + i * 16 + g + hi * 8;
                    // Where (pixel mb + m, channel nb + n) is in y, read only with a sum.
                    long long at = 0;
                    if (p.sum != nullptr && mb + m < p.m && nb + n < p.kg) {
                        const int ni = (mb + m) / p.pq;
                        at = (long long)ni * p.y_image + (long long)(grp * p.kg + nb + n) * p.pq +
                             (mb + m - ni * p.pq);
                    }
                    Cs[n * C_LD + m] =
                        __float2half_rn(conv_epilogue<__half>(p, acc[i][j][hi * 2 + e], b, at));
                }
            }
        }
    }
    __syncthreads();
    // Coalesced NCHW stores: the thread's pixel am (consecutive along the warp) of channels
    // tid / BM, tid / BM + C_NSTEP, ...
    if (mb + am < p.m) {
        const int ni = (mb + am) / p.pq;
        const int pix = mb + am - ni * p.pq;
        __half *yp = reinterpret_cast<__half *>(p.y) + (long long)ni * p.y_image +
                     (long long)(grp * p.kg + nb) * p.pq + pix;
#pragma unroll 4
        for (int n = tid / BM; n < BN; n += C_NSTEP) {
            if (nb + n < p.kg) yp[(long long)n * p.pq] = Cs[n * C_LD + am];
        }
    }
}

EIA_KERNEL_BOUNDS(conv_tc128x128_f16, ConvParams, CONV_TC128X128_THREADS) {
    __shared__ uint4 smem[conv_tc_smem(CONV_TC128X128_BM, CONV_TC128X128_BN)];
    __shared__ uint4 tab[2][CONV_TC_BK];
    conv_igemm_tc<CONV_TC128X128_BM, CONV_TC128X128_BN, 2, 4>(p, smem, tab);
}
EIA_KERNEL_BOUNDS(conv_tc128x64_f16, ConvParams, CONV_TC128X64_THREADS) {
    __shared__ uint4 smem[conv_tc_smem(CONV_TC128X64_BM, CONV_TC128X64_BN)];
    __shared__ uint4 tab[2][CONV_TC_BK];
    conv_igemm_tc<CONV_TC128X64_BM, CONV_TC128X64_BN, 4, 2>(p, smem, tab);
}
EIA_KERNEL_BOUNDS(conv_tc64x64_f16, ConvParams, CONV_TC64X64_THREADS) {
    __shared__ uint4 smem[conv_tc_smem(CONV_TC64X64_BM, CONV_TC64X64_BN)];
    __shared__ uint4 tab[2][CONV_TC_BK];
    conv_igemm_tc<CONV_TC64X64_BM, CONV_TC64X64_BN, 2, 2>(p, smem, tab);
}

// ---------------------------------------------------------------------------------------------
// FP32 implicit GEMM on CUDA cores: 128×128×16 block tile, 256 threads as 16 (M) × 16 (N), each
// computing rows {4·tm .. 4·tm+3, 64 + 4·tm ..} × columns {4·tn .., 64 + 4·tn ..} in FP32 FMAs.
// Shared memory: A as [BK][BM], B transposed to [BK][BN + 4], both read as float4.
EIA_KERNEL_BOUNDS(conv_simt_f32, ConvParams, CONV_SIMT_THREADS) {
    constexpr int BM = CONV_SIMT_BM, BN = CONV_SIMT_BN, BK = CONV_SIMT_BK;
    constexpr int THREADS = CONV_SIMT_THREADS;
    constexpr int A_LD = BM, B_LD = BN + 4;
    constexpr int A_KSTEP = THREADS / BM, A_PER = BK / A_KSTEP;
    constexpr int B_NSTEP = THREADS / BK, B_PER = BN / B_NSTEP;
    static_assert(THREADS == 256 && BM == 128 && BN == 128, "thread layout is 16×16 of 8×8");

    __shared__ float4 As4[2][BK * A_LD / 4];
    __shared__ float4 Bs4[2][BK * B_LD / 4];
    __shared__ uint4 tab[2][BK];

    const int tid = threadIdx.x;
    const int tm = tid % 16, tn = tid / 16;
    const int grp = p.group0 + blockIdx.z;
    const int mb = blockIdx.x * BM, nb = blockIdx.y * BN;

    const float *wg = reinterpret_cast<const float *>(p.w) + (long long)grp * p.w_group;
    const int am = tid % BM, ak0 = tid / BM;
    const ConvPixel<float> px = conv_pixel<float>(p, mb + am, grp);
    const int bk = tid % BK, bn0 = tid / BK;

    float areg[A_PER], breg[B_PER];
    auto load = [&](const uint4 *t, int k0) {
#pragma unroll
        for (int j = 0; j < A_PER; ++j) {
            const uint4 &e = t[ak0 + j * A_KSTEP];
            areg[j] = p.rs <= CONV_MASK_BITS ? conv_gather_masked(px, e, 0.f)
                                             : conv_gather_checked(px, e, p, 0.f);
        }
        const bool kok = k0 + bk < p.kdim;
#pragma unroll
        for (int j = 0; j < B_PER; ++j) {
            const int n = nb + bn0 + j * B_NSTEP;
            breg[j] = (kok && n < p.kg) ? wg[(long long)n * p.kdim + k0 + bk] : 0.f;
        }
    };
    auto store = [&](int st) {
        float *as = reinterpret_cast<float *>(As4[st]);
        float *bs = reinterpret_cast<float *>(Bs4[st]);
#pragma unroll
        for (int j = 0; j < A_PER; ++j) as[(ak0 + j * A_KSTEP) * A_LD + am] = areg[j];
#pragma unroll
        for (int j = 0; j < B_PER; ++j) bs[bk * B_LD + bn0 + j * B_NSTEP] = breg[j];
    };

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

    const int nk = (p.kdim + BK - 1) / BK;
    if (nk > 0) {
        conv_fill_table<BK>(tab[0], p, 0);
        __syncthreads();
        load(tab[0], 0);
        store(0);
        if (nk > 1) conv_fill_table<BK>(tab[1], p, BK);
        __syncthreads();
    }
    for (int kt = 0; kt < nk; ++kt) {
        const int cur = kt & 1, nxt = cur ^ 1;
        const bool more = kt + 1 < nk;
        if (more) load(tab[nxt], (kt + 1) * BK);
        const float4 *as = As4[cur];
        const float4 *bs = Bs4[cur];
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            const float4 a0 = as[(k * A_LD) / 4 + tm], a1 = as[(k * A_LD + 64) / 4 + tm];
            const float4 b0 = bs[(k * B_LD) / 4 + tn], b1 = bs[(k * B_LD + 64) / 4 + tn];
            const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (more) {
            store(nxt);
            if (kt + 2 < nk) conv_fill_table<BK>(tab[cur], p, (kt + 2) * BK);
        }
        if (!EIA_PLANT(conv_simt_nosync)) __syncthreads();
    }

    // Epilogue: bias, residual sum, ReLU / Clip, NCHW stores.
    const float *bias = reinterpret_cast<const float *>(p.bias);
    float bv[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int n = nb + (j < 4 ? 4 * tn + j : 64 + 4 * tn + j - 4);
        bv[j] = (bias != nullptr && n < p.kg) ? bias[grp * p.kg + n] : 0.f;
    }
    float *y = reinterpret_cast<float *>(p.y);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int m = mb + (i < 4 ? 4 * tm + i : 64 + 4 * tm + i - 4);
        if (m >= p.m) continue;
        const int ni = m / p.pq;
        const int pix = m - ni * p.pq;
        const long long at = (long long)ni * p.y_image + (long long)grp * p.kg * p.pq + pix;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int n = nb + (j < 4 ? 4 * tn + j : 64 + 4 * tn + j - 4);
            const long long yi = at + (long long)n * p.pq;
            if (n < p.kg) y[yi] = conv_epilogue<float>(p, acc[i][j], bv[j], yi);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Depthwise (one input channel per group, any channel multiplier): one thread per output
// element; block b covers pixels [(b % tiles)·256, +256) of output plane b / tiles = ni·k + ki,
// which reads input channel ki / kg. FP32 accumulation, one rounding.
template <typename T>
__device__ __forceinline__ void conv_depthwise(const ConvParams &p) {
    const int plane = blockIdx.x / p.tiles;
    const int pix = (blockIdx.x - plane * p.tiles) * CONV_DW_THREADS + threadIdx.x;
    if (pix >= p.pq) return;
    const int ni = plane / p.k;
    const int ki = plane - ni * p.k;
    const T *xp = reinterpret_cast<const T *>(p.x) + (long long)ni * p.x_image +
                  (long long)(ki / p.kg) * p.hw;
    const T *wp = reinterpret_cast<const T *>(p.w) + (long long)ki * p.rs;
    const int pi = pix / p.q;
    const int qi = pix - pi * p.q;
    const int ih0 = pi * p.stride_h - p.pad_h, iw0 = qi * p.stride_w - p.pad_w;
    float acc = 0.f;
    for (int ri = 0; ri < p.r; ++ri) {
        const int ih = ih0 + ri * p.dil_h;
        if ((unsigned)ih >= (unsigned)p.h) continue;
        const T *xr = xp + ih * p.w_in;
        for (int si = 0; si < p.s; ++si) {
            const int iw = iw0 + si * p.dil_w;
            if ((unsigned)iw < (unsigned)p.w_in)
                acc = fmaf(eia_load(xr, iw), eia_load(wp, ri * p.s + si), acc);
        }
    }
    const float b = p.bias != nullptr ? eia_load(reinterpret_cast<const T *>(p.bias), ki) : 0.f;
    const long long yi = (long long)plane * p.pq + pix;
    eia_store(reinterpret_cast<T *>(p.y), yi, conv_epilogue<T>(p, acc, b, yi));
}

EIA_KERNEL_BOUNDS(conv_depthwise_f32, ConvParams, CONV_DW_THREADS) { conv_depthwise<float>(p); }
EIA_KERNEL_BOUNDS(conv_depthwise_f16, ConvParams, CONV_DW_THREADS) { conv_depthwise<__half>(p); }
