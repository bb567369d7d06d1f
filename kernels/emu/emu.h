// emu/emu.h — the CUDA built-ins and eia primitives on the CPU, so that the emulator runs the very
// sources of kernels/*.cu (common.cuh includes this instead of the CUDA headers when EIA_EMU is
// defined). For testing without a GPU; slow, never a product backend.
//
// Execution model (runtime.cpp): one launch runs on one OS thread, blocks one after another; each
// CUDA thread of a block is a fiber on its own stack, running until it finishes or reaches a
// barrier (__syncthreads) or a warp-level operation (shuffles, __syncwarp, mma, ldmatrix), where
// it yields. A warp operation completes once all 32 lanes of the warp are waiting at the same
// one (the runtime then computes every lane's result from the per-lane exchange slots); the
// block barrier releases once every thread waits at the same one. Which ready thread runs next
// is the schedule's choice (runtime.cpp). A cp.async lands at the issuing thread's first
// wait_group that covers its commit group; until then its destination holds NaN. Anything
// else — a thread that exits or waits at __syncthreads while lanes of its warp wait at a warp
// operation, a thread that exits while others wait at __syncthreads, threads at different
// __syncthreads, lanes at different warp operations, a partial mask, a misaligned ldmatrix /
// cp.async address (predicated-off copies included), a sanitizer finding — ends the launch with
// an error naming the block and thread. __shared__ is `static`: blocks run one at a time, so
// function-local statics are exactly block-shared memory (refilled with a NaN pattern before each
// block). Launches from different OS threads are serialised.
//
// The kernel translation units are compiled with -fsanitize=thread, whose callbacks (runtime.cpp)
// see every load and store of kernel code: shared-memory races between barriers, reads of shared
// memory the block never wrote, misaligned vector accesses and global bytes written by two blocks
// end the launch too.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// ---- CUDA keywords -------------------------------------------------------------------------

#define __global__
#define __device__
#define __forceinline__ inline
// Shared memory is function-local statics (one block runs at a time), gathered in one section
// on ELF so that the runtime can fill it with a NaN pattern before each block: a read of shared
// memory the block has not written shows up, as garbage would on the GPU.
#if defined(__ELF__)
#define __shared__ static __attribute__((section("eia_emu_shared")))
#else
#define __shared__ static
#endif
// NVCC accepts `__shared__ alignas(16) T x[N]` (its __shared__ is an attribute, ours is `static`,
// after which a standard attribute may not stand): the GNU attribute may. (The standard headers
// are all included above; alignas(type) is not supported.)
#define alignas(n) __attribute__((aligned(n)))
// __restrict__ is a GCC/Clang keyword already.

// ---- Vector and index types ----------------------------------------------------------------

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) uint2 {
    unsigned x, y;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned x, y, z, w;
};
struct __attribute__((aligned(16))) int4 {
    int x, y, z, w;
};

inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

// ---- The runtime interface (runtime.cpp) ---------------------------------------------------

// The emulator's entry points are inlined into kernel code, so that the runtime's return address
// is the kernel's call site.
#define EIA_EMU_INLINE inline __attribute__((always_inline))

namespace eia_emu {

// A kernel known to the emulator: EIA_KERNEL* defines one per kernel, linked into a list at
// static initialisation; eia_emu_launch finds kernels by name there.
struct Kernel {
    const char *name;
    void (*entry)(const void *params);  // runs the kernel body for the current thread
    unsigned max_threads;               // EIA_KERNEL_BOUNDS' bound, else 1024
    const Kernel *next;
    Kernel(const char *name, void (*entry)(const void *params), unsigned max_threads);
};

// The running thread's index and the launch geometry (set by the scheduler on every switch).
extern uint3 thread_idx, block_idx;
extern dim3 block_dim, grid_dim;
// The bug planted for this launch (EIA_PLANT), or null.
extern const char *plant;

// Warp shuffle modes, in PTX's order (shfl.sync.{up,down,bfly,idx}).
enum ShflMode : unsigned { kShflUp = 0, kShflDown = 1, kShflBfly = 2, kShflIdx = 3 };

// Block barrier and warp-level operations: each yields until its peers arrive.
void syncthreads();
void syncwarp(unsigned mask);
unsigned shfl(unsigned mask, unsigned v, ShflMode mode, int b, int width);
void mma_16816(float *d, const unsigned *a, const unsigned *b);
void ldmatrix(unsigned *r, const void *row, unsigned num, bool trans);
void cp_async_16(void *smem, const void *gmem, bool valid);
void cp_async_commit();
void cp_async_wait(unsigned newer);

inline unsigned f32_bits(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
inline float bits_f32(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// IEEE binary16 <-> binary32, as the GPU converts: round to nearest even with subnormals,
// overflow to infinity, NaN to the canonical 0x7fff.
inline unsigned short f32_to_f16_rn(float f) {
    const unsigned x = f32_bits(f);
    const unsigned sign = (x >> 16) & 0x8000u;
    const unsigned ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;                      // NaN
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // >= 65520: infinity
    if (ax >= 0x38800000u) {                                    // normal half
        unsigned h = (ax - 0x38000000u) >> 13;
        const unsigned rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
        return (unsigned short)(sign | h);
    }
    if (ax < 0x33000000u) return (unsigned short)sign;  // below 2^-25: zero
    // Subnormal half: the value in units of 2^-24, rounded to nearest even.
    const unsigned m = (ax & 0x7fffffu) | 0x800000u;
    const unsigned shift = 126u - (ax >> 23);  // 14..24
    unsigned q = m >> shift;
    const unsigned rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (unsigned short)(sign | q);
}
inline float f16_to_f32(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16;
    const unsigned exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0) {
        const float v = (float)mant * 0x1p-24f;  // zero or subnormal: exact
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

}  // namespace eia_emu

// ---- Kernel declaration --------------------------------------------------------------------

#define EIA_EMU_KERNEL(name, Params, threads)                                          \
    static void name(const Params p);                                                  \
    static const ::eia_emu::Kernel eia_emu_kernel_##name(                              \
        #name, [](const void *params) { name(*static_cast<const Params *>(params)); }, \
        threads);                                                                      \
    static void name(const Params p)
#define EIA_KERNEL(name, Params) EIA_EMU_KERNEL(name, Params, 1024u)
#define EIA_KERNEL_BOUNDS(name, Params, threads) EIA_EMU_KERNEL(name, Params, threads)

// Marks a translation unit of kernels (kernels/emu/<family>.cpp) so that the linker keeps it:
// the runtime refers to every family's marker (the list build.rs generates), which pulls the
// family's object, with its kernel registrations, out of the static library.
#define EIA_EMU_FAMILY(family) \
    extern "C" const char *eia_emu_family_##family() { return #family; }

// ---- Built-in variables and synchronisation ------------------------------------------------

#define threadIdx (static_cast<const uint3 &>(::eia_emu::thread_idx))
#define blockIdx (static_cast<const uint3 &>(::eia_emu::block_idx))
#define blockDim (static_cast<const dim3 &>(::eia_emu::block_dim))
#define gridDim (static_cast<const dim3 &>(::eia_emu::grid_dim))

EIA_EMU_INLINE void __syncthreads() { ::eia_emu::syncthreads(); }
EIA_EMU_INLINE void __syncwarp(unsigned mask = 0xffffffffu) { ::eia_emu::syncwarp(mask); }
// Blocks run one at a time on one OS thread: every write is already visible.
inline void __threadfence() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

#define EIA_EMU_SHFL(fn, mode)                                                             \
    EIA_EMU_INLINE unsigned fn(unsigned mask, unsigned v, int b, int width = 32) {                 \
        return ::eia_emu::shfl(mask, v, mode, b, width);                                   \
    }                                                                                      \
    EIA_EMU_INLINE int fn(unsigned mask, int v, int b, int width = 32) {                           \
        return (int)::eia_emu::shfl(mask, (unsigned)v, mode, b, width);                    \
    }                                                                                      \
    EIA_EMU_INLINE float fn(unsigned mask, float v, int b, int width = 32) {                       \
        return ::eia_emu::bits_f32(                                                        \
            ::eia_emu::shfl(mask, ::eia_emu::f32_bits(v), mode, b, width));                \
    }
EIA_EMU_SHFL(__shfl_sync, ::eia_emu::kShflIdx)
EIA_EMU_SHFL(__shfl_xor_sync, ::eia_emu::kShflBfly)
EIA_EMU_SHFL(__shfl_down_sync, ::eia_emu::kShflDown)
EIA_EMU_SHFL(__shfl_up_sync, ::eia_emu::kShflUp)
#undef EIA_EMU_SHFL

// ---- Half precision ------------------------------------------------------------------------

// Same size and layout as IEEE binary16 (and as Rust's half::f16).
struct __attribute__((aligned(2))) __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(::eia_emu::f32_to_f16_rn(f)) {}
    operator float() const { return ::eia_emu::f16_to_f32(__x); }
};
struct __attribute__((aligned(4))) __half2 {
    __half x, y;
};
static_assert(sizeof(__half) == 2 && sizeof(__half2) == 4, "binary16 layout");

inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return ::eia_emu::f16_to_f32(h.__x); }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__half(lo), __half(hi)}; }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }

// ---- Math ----------------------------------------------------------------------------------

// rsqrtf is not in every libm (C23 adds it): a macro keeps ours from clashing with one that is.
inline float eia_emu_rsqrtf(float x) { return 1.0f / sqrtf(x); }
#define rsqrtf eia_emu_rsqrtf
inline float __expf(float x) { return expf(x); }
inline float __fdividef(float x, float y) { return x / y; }

template <class T>
inline T __ldg(const T *p) {
    return *p;
}

// min / max: the overload set of CUDA's math_functions.h, so that a call resolves (or is
// ambiguous) exactly as under NVRTC.
#define EIA_EMU_MINMAX(R, A, B) \
    inline R min(A a, B b) { return (R)a < (R)b ? (R)a : (R)b; } \
    inline R max(A a, B b) { return (R)a > (R)b ? (R)a : (R)b; }
EIA_EMU_MINMAX(int, int, int)
EIA_EMU_MINMAX(unsigned, unsigned, unsigned)
EIA_EMU_MINMAX(unsigned, int, unsigned)
EIA_EMU_MINMAX(unsigned, unsigned, int)
EIA_EMU_MINMAX(long, long, long)
EIA_EMU_MINMAX(unsigned long, unsigned long, unsigned long)
EIA_EMU_MINMAX(unsigned long, long, unsigned long)
EIA_EMU_MINMAX(unsigned long, unsigned long, long)
EIA_EMU_MINMAX(long long, long long, long long)
EIA_EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
EIA_EMU_MINMAX(unsigned long long, long long, unsigned long long)
EIA_EMU_MINMAX(unsigned long long, unsigned long long, long long)
#undef EIA_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
inline double min(double a, float b) { return fmin(a, b); }
inline double max(double a, float b) { return fmax(a, b); }

// ---- eia primitives (same signatures and per-lane semantics as common.cuh) ------------------

EIA_EMU_INLINE void eia_mma_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    ::eia_emu::mma_16816(d, a, b);
}
EIA_EMU_INLINE void eia_ldmatrix_x4(unsigned (&r)[4], const void *row) {
    ::eia_emu::ldmatrix(r, row, 4, false);
}
EIA_EMU_INLINE void eia_ldmatrix_x4_trans(unsigned (&r)[4], const void *row) {
    ::eia_emu::ldmatrix(r, row, 4, true);
}
EIA_EMU_INLINE void eia_ldmatrix_x2(unsigned (&r)[2], const void *row) {
    ::eia_emu::ldmatrix(r, row, 2, false);
}
EIA_EMU_INLINE void eia_ldmatrix_x2_trans(unsigned (&r)[2], const void *row) {
    ::eia_emu::ldmatrix(r, row, 2, true);
}
// cp.async: the copy lands at the first wait that covers its group (runtime.cpp).
EIA_EMU_INLINE void eia_cp_async_16(void *smem, const void *gmem, bool valid) {
    ::eia_emu::cp_async_16(smem, gmem, valid);
}
EIA_EMU_INLINE void eia_cp_async_commit() { ::eia_emu::cp_async_commit(); }
template <int N>
EIA_EMU_INLINE void eia_cp_async_wait() {
    static_assert(N >= 0, "wait_group takes a count of groups");
    ::eia_emu::cp_async_wait(N);
}

// ---- Planted bugs (tests only) ---------------------------------------------------------------
// EIA_PLANT(bug) is true in a launch run with that bug planted (tests/emu.rs, `planted_*`), so
// that tests prove the sanitizer flags it; common.cuh defines it as false for the GPU.
#define EIA_PLANT(bug) (::eia_emu::plant != nullptr && strcmp(::eia_emu::plant, #bug) == 0)
