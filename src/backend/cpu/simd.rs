//! Vector helpers for the CPU kernels: a branch-free `exp` that LLVM vectorises (and its
//! AVX-512 form `exp_x16`),
//! F16C conversions, elementwise maps over FP32 and FP16 storage, and `multiversion!`, which
//! compiles a kernel three times (baseline x86-64, AVX2+FMA, AVX-512) and picks one at run time.

use std::mem::MaybeUninit;

use crate::dtype::{DType, Element};

/// Defines `fn $name(...)` (optionally generic, with its generic parameters written in brackets:
/// `fn f[F: Fn(f32) -> f32](…)`; a closure argument is inlined into each copy) whose body is compiled for the baseline target and, on
/// x86-64, also with AVX2+FMA and with AVX-512F enabled; the widest copy the CPU supports runs.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident $([$($gen:tt)*])? ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name $(<$($gen)*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp $(<$($gen)*>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512 $(<$($gen)*>)? ($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2 $(<$($gen)*>)? ($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                let level = $crate::backend::cpu::simd::level();
                if level >= $crate::backend::cpu::simd::Level::Avx512 {
                    // SAFETY: the running CPU supports AVX-512F (and so AVX2 and FMA), the
                    // features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if level >= $crate::backend::cpu::simd::Level::Avx2 {
                    // SAFETY: the running CPU supports AVX2 and FMA, the features `avx2` was
                    // compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// The instruction sets the CPU kernels may use, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Baseline,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512F on top of `Avx2`.
    Avx512,
}

/// The widest level the CPU supports, capped by `EIA_CPU_SIMD=baseline|avx2|avx512` (read once;
/// the tests use it to cover every code path on one machine).
pub fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("EIA_CPU_SIMD").as_deref() {
            Ok("baseline") => Level::Baseline,
            Ok("avx2") => Level::Avx2,
            _ => Level::Avx512,
        };
        detected().min(cap)
    })
}

#[cfg(target_arch = "x86_64")]
fn detected() -> Level {
    use std::is_x86_feature_detected as has;
    if !(has!("avx2") && has!("fma") && has!("f16c")) {
        Level::Baseline
    } else if has!("avx512f") {
        Level::Avx512
    } else {
        Level::Avx2
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detected() -> Level {
    Level::Baseline
}

/// ln 2 in two parts (Cephes): `n·LN2_HI` is exact for the `n` that occur in [`exp`].
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// 1.5·2²³: adding it to a float below 2²² in magnitude rounds it to the nearest integer (ties
/// to even), which then sits in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;

/// The cubic `p` of [`exp`]'s `e^r ≈ 1 + r + r²·p(r)`, highest degree first.
const EXP_P: [f32; 4] = [8.312_525e-3, 4.189_011_5e-2, 1.666_711_4e-1, 4.999_923e-1];

/// `e^x` in FP32 within 3 ulp (relative error below 3.5e-7), without branches so that loops
/// over it vectorise: `x = n·ln2 + r` with `|r| ≤ ln2/2`, `e^r ≈ 1 + r + r²·p(r)` with a cubic
/// `p` fitted for the least relative error on that interval (degree 5 in all: 4 multiply-adds
/// fewer than a Taylor series of the same accuracy), times `2^n` built in the exponent bits.
/// Its multiply-adds are fused: single FMA instructions in the AVX2 and AVX-512 copies of a
/// `multiversion!` kernel (the baseline copy calls the C library's `fmaf`). Inputs below −87.3
/// (including −∞) give exactly 0; NaN gives NaN. Inputs above 88.3 are clamped (softmax only
/// ever passes `x − max ≤ 0`, sigmoid and tanh `−|x|`).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let xc = x.clamp(-87.3, 88.3);
    let t = xc.mul_add(LOG2E, ROUND);
    let n = t - ROUND;
    // The integer n sits in t's low mantissa bits (no float→int conversion, which does not vectorise).
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, xc));
    let p = EXP_P[0]
        .mul_add(r, EXP_P[1])
        .mul_add(r, EXP_P[2])
        .mul_add(r, EXP_P[3]);
    let e = (p * r).mul_add(r, r) + 1.0;
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        e * scale
    }
}

/// [`exp`] of sixteen lanes with AVX-512's own scaling (`vscalefps`, which also underflows
/// gradually and overflows to +∞), so that neither the exponent bits nor a clamp-and-select are
/// built by hand. `n` is rounded as in [`exp`], by adding and subtracting 1.5·2²³: two
/// instructions that either FMA port takes, where `vrndscaleps` is two on one port (the exp
/// alone, 4096 elements in L1, one thread, Intel model 207: 3.36–3.49 against 3.65–3.72 ns a
/// vector, best of 2000 alternated trials, three runs). The same reduction and polynomial,
/// `1 + r + r²·p(r)` evaluated as a degree-5 Horner chain (relative error below 3.5e-7 where the
/// result is normal; subnormal below −87.3, 0 below −103.3 and for −∞; NaN stays NaN).
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn exp_x16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // The constant first: on a NaN `vmaxps` returns its second operand, x.
    let x = _mm512_max_ps(_mm512_set1_ps(-104.0), x);
    let round = _mm512_set1_ps(ROUND);
    let n = _mm512_sub_ps(
        _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), round),
        round,
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let horner = |p, c| _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    let p = horner(horner(_mm512_set1_ps(EXP_P[0]), EXP_P[1]), EXP_P[2]);
    _mm512_scalef_ps(horner(horner(horner(p, EXP_P[3]), 1.0), 1.0), n)
}

#[cfg(test)]
mod tests {
    use super::{cache_size, exp, level, map_f16, map_f16_scalar, stream_bytes, Level};
    #[cfg(target_arch = "x86_64")]
    use super::{exp_x16, f16c};
    use half::f16;

    #[test]
    fn sysfs_cache_sizes_read_in_bytes() {
        assert_eq!(cache_size("491520K\n"), Some(480 << 20));
        assert_eq!(cache_size("32768K"), Some(32 << 20));
        assert_eq!(cache_size("2M"), Some(2 << 20));
        assert_eq!(cache_size("1G"), Some(1 << 30));
        assert_eq!(cache_size("512"), Some(512));
        for bad in ["", "K", "12Q", "-1K", "4.5M"] {
            assert_eq!(cache_size(bad), None, "{bad:?}");
        }
        // A machine's threshold is 5/4 of some cache of at least 1 KiB (or of the fallback).
        assert!(stream_bytes() >= 1280);
    }

    #[test]
    fn exp_matches_f64_within_3_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3.5e-7, "worst relative error {worst}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_x16_matches_f64_and_edges() {
        use std::arch::x86_64::*;
        if !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        let lanes = |x: [f32; 16]| {
            let mut y = [0.0f32; 16];
            // SAFETY: the CPU supports AVX-512F (checked above); 16-lane loads and stores.
            unsafe { _mm512_storeu_ps(y.as_mut_ptr(), exp_x16(_mm512_loadu_ps(x.as_ptr()))) };
            y
        };
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let xs: [f32; 16] = std::array::from_fn(|l| x + l as f32 * 0.000_9);
            for (&x, &y) in xs.iter().zip(&lanes(xs)) {
                let want = (x as f64).exp();
                worst = worst.max(((y as f64 - want) / want).abs());
            }
            x += 0.0137;
        }
        assert!(worst < 3.5e-7, "worst relative error {worst}");
        let mut edges = [0.0f32; 16];
        edges[..8].copy_from_slice(&[
            f32::NEG_INFINITY,
            -1e30,
            -104.0,
            0.0,
            -0.0,
            f32::NAN,
            89.0,
            -90.0,
        ]);
        let y = lanes(edges);
        assert_eq!(&y[..5], &[0.0, 0.0, 0.0, 1.0, 1.0]);
        assert!(y[5].is_nan());
        assert_eq!(y[6], f32::INFINITY);
        let want = (-90.0f64).exp();
        assert!((y[7] as f64 - want).abs() < 1e-44, "e^-90 = {}", y[7]);
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn map_f16_matches_scalar_conversions() {
        // Odd length: the vector loops and their scalar tails; specials and subnormals.
        let mut x: Vec<f16> = (0..1037)
            .map(|i| f16::from_f32(i as f32 * 0.37 - 190.0))
            .collect();
        x[3] = f16::NAN;
        x[20] = f16::INFINITY;
        x[1030] = f16::NEG_INFINITY;
        x[40] = f16::from_bits(1); // smallest subnormal
        let f = |v: f32| v * 1.5 - 0.25;
        let mut y = vec![f16::from_f32(7.0); x.len()];
        map_f16([&x], &mut y, |[v]| f(v));
        for (i, (&xv, &yv)) in x.iter().zip(&y).enumerate() {
            let want = f16::from_f32(f(xv.to_f32()));
            assert!(
                yv.to_bits() == want.to_bits() || (yv.is_nan() && want.is_nan()),
                "element {i}: f({xv}) = {yv}, want {want}"
            );
        }
    }

    #[test]
    fn widen_and_narrow_tails_of_every_length() {
        // Lengths 0..=20: under one vector, whole vectors, and every tail after them; the
        // output a window of a poisoned buffer.
        let wide: Vec<f32> = (0..20).map(|i| i as f32 * 0.377 - 3.3).collect();
        let halves: Vec<f16> = wide.iter().map(|&v| f16::from_f32(v)).collect();
        for len in 0..=20 {
            let mut w = vec![-999.0f32; len + 2];
            super::f16_to_f32(&halves[..len], &mut w[1..=len]);
            let want: Vec<f32> = halves[..len].iter().map(|h| h.to_f32()).collect();
            assert_eq!(&w[1..=len], &want[..], "widen, length {len}");
            assert_eq!([w[0], w[len + 1]], [-999.0; 2], "widen, length {len}");
            let poison = f16::from_f32(-999.0);
            let mut h = vec![poison; len + 2];
            super::f32_to_f16(&wide[..len], &mut h[1..=len]);
            assert_eq!(&h[1..=len], &halves[..len], "narrow, length {len}");
            assert_eq!([h[0], h[len + 1]], [poison; 2], "narrow, length {len}");
        }
    }

    #[test]
    fn map_f16_tails_of_every_length_at_every_level() {
        // Lengths 0..=40 cover every tail of the 16- and 8-wide loops (and none), 64..=140 one
        // and two of map8's blocks of 64 with each tail after them; two inputs; the output a
        // window of a poisoned buffer, whose values around it must stay as they were.
        let x: [Vec<f16>; 2] = std::array::from_fn(|k| {
            (0..140)
                .map(|i| f16::from_f32((i * 7 + k * 3) as f32 * 0.173 - 3.1))
                .collect()
        });
        let f = |[a, b]: [f32; 2]| a * b - 0.5;
        let poison = f16::from_f32(-999.0);
        for len in (0..=40).chain(64..=140) {
            let want: Vec<f16> = (0..len)
                .map(|i| f16::from_f32(f([x[0][i].to_f32(), x[1][i].to_f32()])))
                .collect();
            type Map<'a> = Box<dyn Fn([&[f16]; 2], &mut [f16]) + 'a>;
            let mut runs: Vec<(&str, Map)> = vec![
                ("scalar", Box::new(|x, y| map_f16_scalar(x, y, f))),
                ("dispatched", Box::new(|x, y| map_f16(x, y, f))),
            ];
            #[cfg(target_arch = "x86_64")]
            {
                if level() >= Level::Avx2 {
                    // SAFETY: the CPU has AVX2, FMA and F16C; the lengths are equal.
                    runs.push(("map8", Box::new(|x, y| unsafe { f16c::map8(x, y, f) })));
                }
                if level() >= Level::Avx512 {
                    // SAFETY: the CPU has AVX-512F besides; the lengths are equal.
                    runs.push(("map16", Box::new(|x, y| unsafe { f16c::map16(x, y, f) })));
                }
            }
            for (name, run) in &runs {
                let mut buf = vec![poison; len + 2];
                run([&x[0][..len], &x[1][..len]], &mut buf[1..=len]);
                assert_eq!(&buf[1..=len], &want[..], "{name}, length {len}");
                assert_eq!(
                    [buf[0], buf[len + 1]],
                    [poison; 2],
                    "{name}, length {len}: wrote outside"
                );
            }
        }
    }
}

/// How a map writes its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// Ordinary stores: the output stays in the caches for the next op.
    Cached,
    /// Non-temporal stores (FP32 storage on x86-64; FP16 stores stay ordinary): whole cache lines go
    /// straight to memory, skipping the read for ownership that an ordinary store makes of each line
    /// it writes (a third stream of DRAM traffic beside the input read and the write-back).
    Stream,
}

/// How many times its last-level cache an op must touch (inputs read and output written) to
/// stream its output: then the output would not stay cached for the next op anyway. Measured on
/// Zen 4 (32 MiB L3), two threads (`eia run --filter binary/`, three alternated rounds): the
/// residual Add + ReLU (77 MB) ran at 39–46 GB/s streamed against 28–37 cached, a per-channel
/// multiply (51 MB) at 42–48 against 34–54, but a per-row division (33 MB) at 39–47 against
/// 54–81, so the threshold sits between (at 24 MiB it was streamed): 40 MiB, 5/4 of that cache.
/// On an Intel Xeon (model 207) whose L3 is 480 MiB, the 51 MB multiply and a 51 MB
/// BatchNormalization streamed at 69–85% of a copy's speed, cached at 88–100%.
const STREAM_CACHES: (usize, usize) = (5, 4);

/// The last-level cache assumed where the OS does not say.
const FALLBACK_CACHE_BYTES: usize = 32 << 20;

/// Bytes an op touches from which it streams its output on this machine (see
/// [`STREAM_CACHES`]): 5/4 of the largest data cache Linux lists for cpu0, or of 32 MiB where
/// none is listed.
pub fn stream_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        let cache = largest_cache().unwrap_or(FALLBACK_CACHE_BYTES);
        cache / STREAM_CACHES.1 * STREAM_CACHES.0
    })
}

/// The largest data (or unified) cache of cpu0 in bytes, from Linux's sysfs.
fn largest_cache() -> Option<usize> {
    let caches = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    caches
        .filter_map(|entry| {
            let dir = entry.ok()?.path();
            let kind = std::fs::read_to_string(dir.join("type")).ok()?;
            if kind.trim() == "Instruction" {
                return None;
            }
            cache_size(&std::fs::read_to_string(dir.join("size")).ok()?)
        })
        .max()
}

/// A sysfs cache size (`32768K`, `480M`, `512`) in bytes.
fn cache_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = match text.as_bytes().last()? {
        b'K' => (&text[..text.len() - 1], 1 << 10),
        b'M' => (&text[..text.len() - 1], 1 << 20),
        b'G' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

impl Store {
    /// [`Store::Stream`] for an op that touches `bytes` bytes in all, at least `from`
    /// ([`stream_bytes`] unless the backend was told otherwise).
    pub fn for_bytes(bytes: usize, from: usize) -> Store {
        if bytes >= from {
            Store::Stream
        } else {
            Store::Cached
        }
    }
}

/// `y[i] = f([x₀[i], …])` computed in FP32 on storage of type `T` ([`map_f32`] or [`map_f16`]),
/// with ordinary stores.
pub fn map<T: Element, const N: usize>(x: [&[T]; N], y: &mut [T], f: impl Fn([f32; N]) -> f32) {
    map_to(x, y, Store::Cached, f);
}

/// [`map`] with the output written as `store` says.
pub fn map_to<T: Element, const N: usize>(
    x: [&[T]; N],
    y: &mut [T],
    store: Store,
    f: impl Fn([f32; N]) -> f32,
) {
    match T::DTYPE {
        DType::F32 => map_f32(
            x.map(bytemuck::cast_slice),
            bytemuck::cast_slice_mut(y),
            store,
            f,
        ),
        DType::F16 => map_f16(x.map(bytemuck::cast_slice), bytemuck::cast_slice_mut(y), f),
    }
}

/// Floats per 64-byte cache line.
const LINE: usize = 16;
/// Floats a streaming map computes before storing them (four lines: a loop long enough that
/// each copy vectorises it at its own width).
const BLOCK: usize = 4 * LINE;

multiversion! {
    /// `y[i] = f([x₀[i], …])`: one loop that each copy vectorises with `f` inlined. Every
    /// `x[k]` has `y`'s length. With [`Store::Stream`] (x86-64) the cache lines that `y` covers
    /// whole are computed `BLOCK` values at a time and written with non-temporal stores, then
    /// fenced; the partial lines and blocks at either end take ordinary stores.
    pub fn map_f32[const N: usize, F: Fn([f32; N]) -> f32](
        x: [&[f32]; N],
        y: &mut [f32],
        store: Store,
        f: F,
    ) {
        assert!(x.iter().all(|x| x.len() == y.len()));
        let x = x.map(|x| &x[..y.len()]);
        // `y[i]` from `x[k][start + i]`, ordinary stores.
        let cached = |y: &mut [f32], start: usize| {
            let x = x.map(|x| &x[start..start + y.len()]);
            for (i, o) in y.iter_mut().enumerate() {
                *o = f(std::array::from_fn(|k| x[k][i]));
            }
        };
        if store == Store::Cached || cfg!(not(target_arch = "x86_64")) {
            return cached(y, 0);
        }
        let head = y.as_ptr().align_offset(LINE * 4).min(y.len());
        let body = (y.len() - head) / BLOCK * BLOCK;
        let (h, rest) = y.split_at_mut(head);
        let (b, t) = rest.split_at_mut(body);
        cached(h, 0);
        let level = level();
        for (j, block) in b.chunks_exact_mut(BLOCK).enumerate() {
            let s = head + j * BLOCK;
            let xs = x.map(|x| &x[s..s + BLOCK]);
            let mut o = [0.0f32; BLOCK];
            for (l, o) in o.iter_mut().enumerate() {
                *o = f(std::array::from_fn(|k| xs[k][l]));
            }
            for (line, v) in block.chunks_exact_mut(LINE).zip(o.chunks_exact(LINE)) {
                stream_line(line, v.try_into().unwrap(), level);
            }
        }
        cached(t, head + body);
        fence_streams();
    }
}

/// Writes one 64-byte-aligned cache line with non-temporal stores: one 64-byte store at
/// `Level::Avx512`, four 16-byte ones (SSE, part of x86-64) below. `level` is [`level()`], read
/// once by the caller; inlined into a `multiversion!` copy, the 64-byte store inlines only into
/// the AVX-512 copy, and only that copy runs at that level.
#[inline(always)]
fn stream_line(line: &mut [f32], v: &[f32; LINE], level: Level) {
    assert_eq!(line.len(), LINE);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let (dst, src) = (line.as_mut_ptr(), v.as_ptr());
        if level >= Level::Avx512 {
            // SAFETY: the CPU supports AVX-512F; `line` holds LINE floats from a 64-byte boundary
            // (the caller aligns it), so the store is in bounds and aligned.
            unsafe { _mm512_stream_ps(dst, _mm512_loadu_ps(src)) };
        } else {
            for q in 0..LINE / 4 {
                // SAFETY: as above, each 16-byte store is in bounds and 16-byte aligned.
                unsafe { _mm_stream_ps(dst.add(4 * q), _mm_loadu_ps(src.add(4 * q))) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = level;
        line.copy_from_slice(v);
    }
}

/// Orders this thread's non-temporal stores before any later store (so another thread that
/// sees the task done sees its output).
#[inline(always)]
fn fence_streams() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// `y[i] = f([x₀[i], …])` on FP16 storage with FP32 math, in one pass: each vector of halves is
/// widened in registers (F16C), mapped by `f` (inlined) and rounded (nearest even) straight back.
/// Every `x[k]` has `y`'s length.
pub fn map_f16<const N: usize, F: Fn([f32; N]) -> f32>(
    x: [&[half::f16]; N],
    y: &mut [half::f16],
    f: F,
) {
    assert!(x.iter().all(|x| x.len() == y.len()));
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: the CPU supports the features each function was compiled for (AVX-512F
        // includes F16C); lengths are equal (asserted above).
        Level::Avx512 => return unsafe { f16c::map16(x, y, f) },
        Level::Avx2 => return unsafe { f16c::map8(x, y, f) },
        Level::Baseline => {}
    }
    map_f16_scalar(x, y, f);
}

/// [`map_f16`] one element at a time (the baseline, and the tails of the vector loops).
fn map_f16_scalar<const N: usize>(
    x: [&[half::f16]; N],
    y: &mut [half::f16],
    f: impl Fn([f32; N]) -> f32,
) {
    for (i, o) in y.iter_mut().enumerate() {
        *o = half::f16::from_f32(f(x.map(|x| x[i].to_f32())));
    }
}

/// Widens FP16 to FP32 (exact): F16C eight at a time where the CPU has it.
pub fn f16_to_f32(src: &[half::f16], dst: &mut [f32]) {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and `f16_to_f32_uninit` stores only
    // initialised values through the view.
    let dst = unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) };
    f16_to_f32_uninit(src, dst);
}

/// [`f16_to_f32`] into memory that need not be initialised; every element of `dst` is written.
pub fn f16_to_f32_uninit(src: &[half::f16], dst: &mut [MaybeUninit<f32>]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Avx2 {
        // SAFETY: the CPU supports F16C and AVX; lengths are equal (asserted above).
        unsafe { f16c::widen(src, dst) };
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        d.write(s.to_f32());
    }
}

/// Rounds FP32 to FP16 (nearest even): F16C eight at a time where the CPU has it.
pub fn f32_to_f16(src: &[f32], dst: &mut [half::f16]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Avx2 {
        // SAFETY: the CPU supports F16C and AVX; lengths are equal (asserted above).
        unsafe { f16c::narrow(src, dst) };
        return;
    }
    half::slice::HalfFloatSliceExt::convert_from_f32_slice(dst, src);
}

#[cfg(target_arch = "x86_64")]
mod f16c {
    use half::f16;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// [`super::map_f16`] sixteen at a time, a tail as the last 16 once more (or, under 16 in
    /// all, through zero-padded copies on the stack), so that no element takes the scalar
    /// conversions: maps are called per channel run (a 14×14 channel is 196 halves), where a
    /// scalar tail of 4 cost more than the 12 vectors before it.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2, FMA and F16C; every `x[k]` has `y`'s length.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn map16<const N: usize>(
        x: [&[f16]; N],
        y: &mut [f16],
        f: impl Fn([f32; N]) -> f32,
    ) {
        // `y[..16]` from `x[k][..16]`.
        let step = |x: [*const f16; N], y: *mut f16| {
            let mut v = [[0.0f32; 16]; N];
            for (v, x) in v.iter_mut().zip(x) {
                // SAFETY: the callers pass 16 readable halves at each `x`; unaligned loads
                // and stores.
                unsafe {
                    _mm512_storeu_ps(
                        v.as_mut_ptr(),
                        _mm512_cvtph_ps(_mm256_loadu_si256(x as *const __m256i)),
                    )
                };
            }
            let mut o = [0.0f32; 16];
            for (j, o) in o.iter_mut().enumerate() {
                *o = f(std::array::from_fn(|k| v[k][j]));
            }
            // SAFETY: the callers pass 16 writable halves at `y`.
            unsafe {
                _mm256_storeu_si256(
                    y as *mut __m256i,
                    _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_loadu_ps(o.as_ptr())),
                )
            };
        };
        by_vectors::<16, N>(x, y, step);
    }

    /// Calls `step(i)` for every whole vector `i..i + L` of `0..n`, then, for a tail, once more
    /// at `n − L` (the last `L` again: the callers' outputs are not their inputs, so the overlap
    /// gets the same values). Returns whether `n ≥ L` (under one vector, nothing is called).
    #[inline(always)]
    fn each_vector<const L: usize>(n: usize, mut step: impl FnMut(usize)) -> bool {
        if n < L {
            return false;
        }
        for i in (0..n / L * L).step_by(L) {
            step(i);
        }
        if !n.is_multiple_of(L) {
            step(n - L);
        }
        true
    }

    /// Runs `step`, which maps `L` halves at each `x[k]` into `L` at `y`, over `y` by
    /// [`each_vector`], or, under `L` in all, through zero-padded copies on the stack. Every
    /// `x[k]` has `y`'s length.
    #[inline(always)]
    fn by_vectors<const L: usize, const N: usize>(
        x: [&[f16]; N],
        y: &mut [f16],
        step: impl Fn([*const f16; N], *mut f16),
    ) {
        let at = |x: [&[f16]; N], i: usize| std::array::from_fn(|k| x[k][i..].as_ptr());
        let n = y.len();
        // i + L <= n, every length.
        if n == 0 || each_vector::<L>(n, |i| step(at(x, i), y[i..].as_mut_ptr())) {
            return;
        }
        let padded: [[f16; L]; N] = std::array::from_fn(|k| {
            let mut p = [f16::ZERO; L];
            p[..n].copy_from_slice(x[k]);
            p
        });
        let mut o = [f16::ZERO; L];
        step(at(padded.each_ref().map(|p| &p[..]), 0), o.as_mut_ptr());
        y.copy_from_slice(&o[..n]);
    }

    /// [`super::map_f16`] in blocks of 64, then eight at a time, the tail as in [`map16`].
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; every `x[k]` has `y`'s length.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn map8<const N: usize>(x: [&[f16]; N], y: &mut [f16], f: impl Fn([f32; N]) -> f32) {
        // `y[..L]` from `x[k][..L]`, widened and rounded eight at a time.
        fn step<const L: usize, const N: usize>(
            x: [*const f16; N],
            y: *mut f16,
            f: &impl Fn([f32; N]) -> f32,
        ) {
            let mut v = [[0.0f32; L]; N];
            for (v, x) in v.iter_mut().zip(x) {
                for (i, v) in v.chunks_exact_mut(8).enumerate() {
                    // SAFETY: the callers pass L readable halves at each `x`, and this runs
                    // inside `map8` (AVX and F16C); unaligned loads and stores.
                    unsafe {
                        _mm256_storeu_ps(
                            v.as_mut_ptr(),
                            _mm256_cvtph_ps(_mm_loadu_si128(x.add(8 * i) as *const __m128i)),
                        )
                    };
                }
            }
            let mut o = [0.0f32; L];
            for (j, o) in o.iter_mut().enumerate() {
                *o = f(std::array::from_fn(|k| v[k][j]));
            }
            for (i, o) in o.chunks_exact(8).enumerate() {
                // SAFETY: the callers pass L writable halves at `y`.
                unsafe {
                    _mm_storeu_si128(
                        y.add(8 * i) as *mut __m128i,
                        _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(o.as_ptr())),
                    )
                };
            }
        }
        // Blocks of 64, then the rest eight at a time: with `f` mapped over eight values only,
        // LLVM left the lanes of an intricate `f` scalar (Sigmoid FP16 at 2.3 GB/s, Zen 4),
        // where over 64 it vectorises the loop.
        let body = y.len() / 64 * 64;
        for i in (0..body).step_by(64) {
            step::<64, N>(x.map(|x| x[i..].as_ptr()), y[i..].as_mut_ptr(), &f);
        }
        let tail = x.map(|x| &x[body..]);
        by_vectors::<8, N>(tail, &mut y[body..], |x, y| step::<8, N>(x, y, &f));
    }

    /// Eight at a time by [`each_vector`] (`dst` is not `src`).
    ///
    /// # Safety
    /// The CPU must support AVX and F16C; `dst.len() == src.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn widen(src: &[f16], dst: &mut [MaybeUninit<f32>]) {
        let eight = |i: usize| {
            // SAFETY: i + 8 <= the length of both slices (`each_vector`); unaligned access.
            unsafe {
                let v = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i) as *mut f32, _mm256_cvtph_ps(v));
            }
        };
        if !each_vector::<8>(src.len(), eight) {
            for (d, s) in dst.iter_mut().zip(src) {
                d.write(s.to_f32());
            }
        }
    }

    /// Eight at a time by [`each_vector`] (`dst` is not `src`).
    ///
    /// # Safety
    /// The CPU must support AVX and F16C; `dst.len() == src.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn narrow(src: &[f32], dst: &mut [f16]) {
        let eight = |i: usize| {
            // SAFETY: i + 8 <= the length of both slices (`each_vector`); unaligned access.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(i));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
            }
        };
        if !each_vector::<8>(src.len(), eight) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = f16::from_f32(*s);
            }
        }
    }
}
