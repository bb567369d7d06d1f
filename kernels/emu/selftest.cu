// emu/selftest.cu — kernels that check the emulator itself (tests/emu.rs runs them): the
// mma.m16n8k16 and ldmatrix fragment layouts documented in common.cuh, warp shuffles, cp.async
// zero-fill, block barriers over shared memory, thread/block indices, half conversions, the
// detection of divergent code and of stores outside a buffer, and a timing loop. Valid CUDA too (nvrtc.py compiles it), but
// compiled only into the emulator (kernels/emu/selftest.cpp), never shipped as PTX.
#include "../common.cuh"

// ---- mma + ldmatrix ----------------------------------------------------------------------------

// One warp: D = C + A·B for A 16×16, B 16×8 (f16, row-major), C 16×8 (f32), five times — with
// the fragments built per lane from the layout common.cuh documents, and with them loaded by
// each ldmatrix form from shared memory holding A, Aᵀ, B and Bᵀ.
struct MmaParams {
    const void *a;  // 16×16 binary16 bits
    const void *b;  // 16×8 binary16 bits
    const float *c;
    float *d;        // 5 × 16×8: direct, x4+x2, x4+x2_trans, x4_trans+x2, x4_trans+x2_trans
    unsigned *regs;  // 32 lanes × 18: direct a[4] b[2], x4[4], x4_trans[4], x2[2], x2_trans[2]
};

__device__ __forceinline__ unsigned selftest_pack(unsigned short lo, unsigned short hi) {
    return (unsigned)lo | ((unsigned)hi << 16);
}

__device__ __forceinline__ void selftest_mma_store(float *d, const float (&acc)[4], int g, int t) {
    d[g * 8 + 2 * t] = acc[0];
    d[g * 8 + 2 * t + 1] = acc[1];
    d[(g + 8) * 8 + 2 * t] = acc[2];
    d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

EIA_KERNEL_BOUNDS(selftest_mma_f16, MmaParams, 32) {
    __shared__ alignas(16) unsigned short sA[16][16];
    __shared__ alignas(16) unsigned short sAt[16][16];
    __shared__ alignas(16) unsigned short sB[16][8];
    __shared__ alignas(16) unsigned short sBt[8][16];
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    const unsigned short *A = static_cast<const unsigned short *>(p.a);
    const unsigned short *B = static_cast<const unsigned short *>(p.b);

    // Fragments straight from the documented layout.
    unsigned a[4], b[2];
    a[0] = selftest_pack(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
    a[1] = selftest_pack(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
    a[2] = selftest_pack(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
    a[3] = selftest_pack(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
    b[0] = selftest_pack(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
    b[1] = selftest_pack(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
    float c[4] = {p.c[g * 8 + 2 * t], p.c[g * 8 + 2 * t + 1], p.c[(g + 8) * 8 + 2 * t],
                  p.c[(g + 8) * 8 + 2 * t + 1]};
    float acc[4] = {c[0], c[1], c[2], c[3]};
    eia_mma_16816(acc, a, b);
    selftest_mma_store(p.d, acc, g, t);

    // A by cp.async (16 bytes a lane), the transposes by scalar stores.
    eia_cp_async_16(&sA[lane / 2][(lane % 2) * 8], A + lane * 8, true);
    eia_cp_async_commit();
    for (int i = lane; i < 256; i += 32) sAt[i % 16][i / 16] = A[i];
    for (int i = lane; i < 128; i += 32) {
        sB[i / 8][i % 8] = B[i];
        sBt[i % 8][i / 8] = B[i];
    }
    eia_cp_async_wait<0>();
    __syncwarp();

    unsigned *regs = p.regs + lane * 18;
    for (int i = 0; i < 4; i++) regs[i] = a[i];
    for (int i = 0; i < 2; i++) regs[4 + i] = b[i];
    unsigned a4[4], a4t[4], b2[2], b2t[2];
    // Lanes 8i..8i+7 address the rows of matrix i (x2: lanes 0..15; the others repeat them).
    eia_ldmatrix_x4(a4, &sA[lane % 16][(lane / 16) * 8]);
    eia_ldmatrix_x4_trans(a4t, &sAt[(lane / 16) * 8 + lane % 8][((lane / 8) % 2) * 8]);
    eia_ldmatrix_x2(b2, &sBt[lane % 8][((lane / 8) % 2) * 8]);
    eia_ldmatrix_x2_trans(b2t, &sB[lane % 16][0]);
    for (int i = 0; i < 4; i++) regs[6 + i] = a4[i];
    for (int i = 0; i < 4; i++) regs[10 + i] = a4t[i];
    for (int i = 0; i < 2; i++) regs[14 + i] = b2[i];
    for (int i = 0; i < 2; i++) regs[16 + i] = b2t[i];

    const unsigned *as[2] = {a4, a4t};
    const unsigned *bs[2] = {b2, b2t};
    for (int v = 0; v < 4; v++) {
        unsigned av[4] = {as[v / 2][0], as[v / 2][1], as[v / 2][2], as[v / 2][3]};
        unsigned bv[2] = {bs[v % 2][0], bs[v % 2][1]};
        float dv[4] = {c[0], c[1], c[2], c[3]};
        eia_mma_16816(dv, av, bv);
        selftest_mma_store(p.d + (v + 1) * 128, dv, g, t);
    }
}

// ---- Shuffles ------------------------------------------------------------------------------------

// out[k * n + i] (n = threads): shuffle k of thread i — see tests/emu.rs for the list.
struct ShflParams {
    const float *x;  // n values
    float *out;      // 12 × n
};

EIA_KERNEL_BOUNDS(selftest_shfl_f32, ShflParams, 64) {
    const unsigned full = 0xffffffffu;
    const int i = threadIdx.x, n = blockDim.x, lane = i % 32;
    const float v = p.x[i];
    float *o = p.out;
    o[0 * n + i] = __shfl_xor_sync(full, v, 5);
    o[1 * n + i] = (float)__shfl_sync(full, i * 7, (lane * 3) % 32);
    o[2 * n + i] = (float)__shfl_down_sync(full, (unsigned)i + 100u, 3);
    o[3 * n + i] = __shfl_up_sync(full, v, 2);
    o[4 * n + i] = __shfl_xor_sync(full, v, 9, 8);
    o[5 * n + i] = __shfl_sync(full, v, 5, 16);
    o[6 * n + i] = __shfl_down_sync(full, v, 3, 8);
    o[7 * n + i] = (float)__shfl_up_sync(full, i, 3, 8);
    o[8 * n + i] = __shfl_sync(full, v, lane + 35);
    o[9 * n + i] = eia_warp_sum(v);
    o[10 * n + i] = eia_warp_max(v);
    __syncwarp();
    o[11 * n + i] = (float)__shfl_xor_sync(full, -i, 31);
}

// ---- cp.async, barriers, shared memory, indices --------------------------------------------------

// Thread t copies 16 bytes (chunk t of src) into shared memory, zero-filling when t % 3 == 0;
// after the barrier each thread writes out a chunk another warp copied.
struct CpAsyncParams {
    const float4 *src;  // 64 chunks
    float4 *out;        // 64 chunks
};

EIA_KERNEL_BOUNDS(selftest_cp_async_f32, CpAsyncParams, 64) {
    __shared__ float4 s[64];
    const int t = threadIdx.x;
    eia_cp_async_16(&s[t], &p.src[t], t % 3 != 0);
    eia_cp_async_commit();
    eia_cp_async_wait<0>();
    __syncthreads();
    p.out[t] = s[(t + 32) % 64];
}

// Block (32, 2, 2) on grid (3, 2, 1): shared memory written and read across warps between
// barriers, reused in a second round; per thread (block b, linear thread t):
//   out[(b * 128 + t) * 5 + 0] = the first round's value of thread 127 - t (b * 1000 + 127 - t)
//   out[... + 1] = the second round's value of thread t ^ 1 (its x + 100 y + 10000 z)
//   out[... + 2] = blockIdx.x + 10 blockIdx.y + 100 blockIdx.z
//   out[... + 3] = blockDim.x + 100 blockDim.z + 10000 gridDim.x + 1000000 gridDim.y
//   out[... + 4] = s[t] as the block's first write left it (b)
struct BlockParams {
    float *out;
};

EIA_KERNEL(selftest_block_f32, BlockParams) {
    __shared__ float s[128];
    const int t = threadIdx.x + 32 * (threadIdx.y + 2 * threadIdx.z);
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    float *o = p.out + (b * 128 + t) * 5;
    s[t] = (float)b;
    o[4] = s[t];
    __syncthreads();
    s[t] = (float)(b * 1000 + t);
    __syncthreads();
    o[0] = s[127 - t];
    __syncthreads();
    s[t] = (float)(threadIdx.x + 100 * threadIdx.y + 10000 * threadIdx.z);
    __syncthreads();
    o[1] = s[t ^ 1];
    o[2] = (float)(blockIdx.x + 10 * blockIdx.y + 100 * blockIdx.z);
    o[3] = (float)(blockDim.x + 100 * blockDim.z + 10000 * gridDim.x + 1000000 * gridDim.y);
}

// ---- Half conversions ----------------------------------------------------------------------------

// For i < n: y[i] = __float2half_rn(x[i]) (through eia_store); w[i] = __half2float(h[i]) (through
// eia_load; h holds every 16-bit pattern when n = 65536); the pair (x[i], -x[i]) through
// __floats2half2_rn and back: pairs[3i..3i+2] = __half22float2's x and y, __low2float +
// __high2float; packed[i] = eia_pack_half2(x[i], -x[i]).
struct HalfParams {
    const float *x;
    __half *y;
    const __half *h;
    float *w;
    float *pairs;
    unsigned *packed;
    long long n;
};

EIA_KERNEL(selftest_half_f16, HalfParams) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return;
    const float x = p.x[i];
    eia_store(p.y, i, x);
    p.w[i] = eia_load(p.h, i);
    const __half2 h2 = __floats2half2_rn(x, -x);
    const float2 f2 = __half22float2(h2);
    p.pairs[3 * i + 0] = f2.x;
    p.pairs[3 * i + 1] = f2.y;
    p.pairs[3 * i + 2] = __low2float(h2) + __high2float(h2);
    p.packed[i] = eia_pack_half2(x, -x);
}

// ---- Divergence and the sanitizer (each mode but 0 is a bug the emulator must report) ------------
// Thread t of block b writes its value to out[b·64 + t].

struct DivergeParams {
    float *out;
    int mode;
};

EIA_KERNEL(selftest_diverge_f32, DivergeParams) {
    __shared__ alignas(16) float s[64];
    const int t = threadIdx.x, lane = t % 32;
    float v = (float)t;
    switch (p.mode) {
        case 0:  // correct code: the same operations as below, by everyone
            v = __shfl_xor_sync(0xffffffffu, v, 1);
            __syncthreads();
            break;
        case 1:  // a thread exits while the others wait at the barrier
            if (t == 5) return;
            __syncthreads();
            break;
        case 2:  // half a warp shuffles, the other half exits
            if (lane >= 16) return;
            v = __shfl_xor_sync(0xffffffffu, v, 1);
            break;
        case 3:  // half a warp shuffles, the other half waits at the barrier
            if (lane < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
            else __syncthreads();
            break;
        case 4:  // lanes at different warp operations
            if (lane % 2) v = __shfl_xor_sync(0xffffffffu, v, 1);
            else __syncwarp();
            break;
        case 5:  // a partial mask
            v = __shfl_xor_sync(0x0000ffffu, v, 1);
            break;
        case 6: {  // a misaligned cp.async destination
            eia_cp_async_16(&s[1 + 4 * (t % 8)], p.out, true);
            break;
        }
        case 7: {  // a misaligned ldmatrix row
            unsigned r[2];
            eia_ldmatrix_x2(r, &s[1 + 4 * (lane % 8)]);
            v = (float)r[0];
            break;
        }
        case 9:  // threads at different __syncthreads
            if (t < 32) {
                s[t] = v;
                __syncthreads();
            } else {
                __syncthreads();
                s[t] = v;
            }
            break;
        case 10:  // a shared-memory race: every thread writes s[0]
            s[0] = v;
            break;
        case 11:  // a read of shared memory no thread wrote
            v = s[t];
            break;
        case 12:  // a zero-fill cp.async from a misaligned source (it reads nothing, yet PTX
                  // requires the address aligned)
            if (t < 16) eia_cp_async_16(&s[4 * t], reinterpret_cast<const char *>(p.out) + 4, false);
            break;
        case 13: {  // a misaligned 16-byte global load
            const float4 q = *reinterpret_cast<const float4 *>(p.out + 1);
            v = q.x + q.y + q.z + q.w;
            break;
        }
        case 14:  // both blocks write out[t]
            p.out[t] = v;
            break;
        case 15:  // a cp.async read before any wait_group covers it
            if (t < 16) eia_cp_async_16(&s[4 * t], p.out, true);
            eia_cp_async_commit();
            __syncthreads();
            v = s[4 * ((t + 1) % 16)];
            break;
        default:  // every thread exits early while one waits
            if (t != 0) return;
            __syncthreads();
            break;
    }
    p.out[blockIdx.x * blockDim.x + t] = v;
}

// ---- Guard bands ----------------------------------------------------------------------------------

// Thread 0 stores 1 at y[index] (tests/emu.rs: in bounds, and just outside either end).
struct StoreParams {
    float *y;
    long long index;
};

EIA_KERNEL(selftest_store_f32, StoreParams) {
    if (threadIdx.x == 0) p.y[p.index] = 1.0f;
}

// ---- Timing --------------------------------------------------------------------------------------

// `iters` rounds of __syncthreads (mode 0) or of a warp shuffle (mode 1) per thread.
struct LoopParams {
    float *out;
    int iters;
    int mode;
};

EIA_KERNEL(selftest_loop_f32, LoopParams) {
    float v = (float)threadIdx.x;
    for (int i = 0; i < p.iters; i++) {
        if (p.mode == 0) __syncthreads();
        else v = __shfl_xor_sync(0xffffffffu, v, 1);
    }
    p.out[threadIdx.x] = v;
}
