//! CPU LRN over the `[n, c, inner]` view. A task takes one image, a block of channels and a
//! block of spatial columns, and each channel takes its window's square sums afresh (a sum slid
//! down the channels — one square added and one dropped per channel — is cheaper for wide windows
//! but not exact: once a square 2^53 times the others has entered the window, dropping it leaves
//! the rounding of the small ones behind, and the channels after a huge one get a base near 0).
//!
//! ONNX's default `beta = 0.75` (every LRN of AlexNet and Inception) on AVX-512 takes one fused
//! pass per channel row, FP16 widened and rounded in registers: sixteen columns' sums of squares
//! in f32 (relative error below `size`·2^−24, since the squares are positive), the base
//! `bias + scale·sum`, `base^−3/4` as `b^−1/2 · (b^1/2)^−1/2` from the CPU's reciprocal square
//! root estimate with one Newton step each (multiplies and adds only: two square roots and a
//! division a vector kept the divider busy for most of the kernel's time; FP16 results, whose
//! rounding dwarfs the estimates' error, skip the Newton steps), times `x`. Sixteen
//! columns whose f32 sums could have lost a square take the exact form instead — a base not
//! finite (a square overflowed) or below `alpha`·2^−119 (squares that underflowed to zero
//! could matter), or not a positive normal float: the sum in f64 (each square exact),
//! rounded to f32 once, and two square roots and a division. FP16 operands never need it (their
//! squares lie between 2^−48 and 2^32). Any other `beta`, and other CPUs, compute the f64 sums
//! of a row into a base row, raise it to `−beta` (`0.75` from the same estimates on AVX2) and
//! multiply, FP16 operands through the f32 scratch of `scratch.rs`. The FLOP count charges
//! `size` adds per element either way.

use std::ops::Range;

use rayon::prelude::*;

use super::scratch::{as_f32, write_f32};
use super::simd::{map, multiversion};
use super::Disjoint;
use crate::dtype::Element;
use crate::ops::LrnPlan;
use crate::HostData;

/// Spatial columns per task.
const COLS: usize = 1024;

/// Channels per task.
const CHANNELS: usize = 16;

/// Computes `plan` from `x` into `y` (one dtype, equal lengths; `y` is written in full).
pub fn lrn(plan: &LrnPlan, x: &HostData, y: &mut HostData) {
    #[cfg(target_arch = "x86_64")]
    if plan.beta == 0.75 && super::avx512::supported() {
        match (x, y) {
            (HostData::F32(x), HostData::F32(y)) => return fused(plan, x, y),
            (HostData::F16(x), HostData::F16(y)) => return fused(plan, x, y),
            _ => unreachable!("plans are validated: input and output share a dtype"),
        }
    }
    let x = as_f32(x);
    write_f32(y, |y| lrn_f32(plan, &x, y));
}

/// Runs `row(b, ch, window, i0, cols)` for every channel row of every task: image `b`, channel
/// `ch` with its window `[ch − before, ch + after]` within `[0, c)`, columns `i0..i0 + cols`.
/// `scratch` is each worker's own, kept across its tasks.
fn channel_rows<S: Default>(
    plan: &LrnPlan,
    row: impl Fn(&mut S, usize, usize, Range<usize>, usize, usize) + Sync,
) {
    let (n, c, inner) = (plan.n, plan.c, plan.inner);
    let (cblocks, iblocks) = (c.div_ceil(CHANNELS), inner.div_ceil(COLS));
    (0..n * cblocks * iblocks)
        .into_par_iter()
        .for_each_init(S::default, |scratch, t| {
            let (b, rest) = (t / (cblocks * iblocks), t % (cblocks * iblocks));
            let (ch0, i0) = ((rest / iblocks) * CHANNELS, (rest % iblocks) * COLS);
            let cols = COLS.min(inner - i0);
            for ch in ch0..(ch0 + CHANNELS).min(c) {
                let window = ch.saturating_sub(plan.before())..(ch + plan.after() + 1).min(c);
                row(scratch, b, ch, window, i0, cols);
            }
        });
}

/// The fused AVX-512 pass (`beta = 0.75`) over operands of any storage type.
#[cfg(target_arch = "x86_64")]
fn fused<T: Element>(plan: &LrnPlan, x: &[T], y: &mut [T]) {
    let (c, inner) = (plan.c, plan.inner);
    let bases = x16::Bases::new(plan);
    let out = Disjoint::new(y);
    channel_rows(plan, |_: &mut (), b, ch, window, i0, cols| {
        // SAFETY: task (b, channel block, column block) alone writes columns i0..i0 + cols of
        // image b's channel rows in its block, all inside `y`.
        let yr = unsafe { out.slice((b * c + ch) * inner + i0, cols) };
        // Image b from column i0 on: channel k's columns start at k·inner.
        let image = &x[b * c * inner + i0..];
        // SAFETY: the CPU supports AVX-512 F, BW and VL (checked by `lrn`); every window
        // channel's `cols` columns lie in `image`.
        unsafe { x16::row(yr, image, inner, window, ch, &bases) };
    });
}

/// The rows of `plan` in f32: f64 sums into a base row, then `x · base^−beta`.
fn lrn_f32(plan: &LrnPlan, x: &[f32], y: &mut [f32]) {
    let (c, inner) = (plan.c, plan.inner);
    let (scale, bias) = (plan.scale() as f64, plan.bias as f64);
    let out = Disjoint::new(y);
    channel_rows(plan, |base: &mut Vec<f32>, b, ch, window, i0, cols| {
        let image = &x[b * c * inner + i0..];
        base.resize(cols, 0.0);
        window_bases(base, image, inner, window, scale, bias);
        // SAFETY: as in `fused`.
        let yr = unsafe { out.slice((b * c + ch) * inner + i0, cols) };
        let xr = &image[ch * inner..][..cols];
        if plan.beta == 0.75 {
            times_pow_075(yr, xr, base);
        } else {
            let beta = plan.beta;
            map([xr, base], yr, |[v, b]| v * b.powf(-beta));
        }
    });
}

/// `bias + scale·Σ x[k·stride]²` over the channels `k` of `window`, the sum in f64 (each square
/// exact), rounded to f32 once: the exact base of one column.
fn exact_base<T: Element>(
    x: &[T],
    stride: usize,
    window: Range<usize>,
    scale: f64,
    bias: f64,
) -> f32 {
    let sum: f64 = window
        .map(|k| x[k * stride].to_f64() * x[k * stride].to_f64())
        .sum();
    (bias + scale * sum) as f32
}

/// `b^−3/4` as two square roots and a reciprocal.
fn pow_075_exact(b: f32) -> f32 {
    let r = b.sqrt();
    1.0 / (r * r.sqrt())
}

/// Columns whose window sums stay in registers together.
const LANES: usize = 16;

multiversion! {
    /// `base[j] = bias + scale·Σ_k x[k·stride + j]²` over the channels `k` of `window`, the sum
    /// in f64 (each square exact), rounded to f32 once; `LANES` columns at a time, their sums in
    /// registers.
    fn window_bases(
        base: &mut [f32],
        x: &[f32],
        stride: usize,
        window: std::ops::Range<usize>,
        scale: f64,
        bias: f64,
    ) {
        let full = base.len() / LANES * LANES;
        for (j, out) in base[..full].chunks_exact_mut(LANES).enumerate() {
            let mut sum = [0f64; LANES];
            for k in window.clone() {
                let row = &x[k * stride + j * LANES..][..LANES];
                for (s, &v) in sum.iter_mut().zip(row) {
                    *s += v as f64 * v as f64;
                }
            }
            for (b, s) in out.iter_mut().zip(sum) {
                *b = (bias + scale * s) as f32;
            }
        }
        for (j, b) in base.iter_mut().enumerate().skip(full) {
            *b = exact_base(&x[j..], stride, window.clone(), scale, bias);
        }
    }
}

/// `y = x · b^−3/4`, from reciprocal square root estimates on AVX-512 and AVX2 (relative error
/// below 1e-6), else [`times_pow_075_exact`].
fn times_pow_075(y: &mut [f32], x: &[f32], b: &[f32]) {
    assert!(x.len() == y.len() && b.len() == y.len());
    #[cfg(target_arch = "x86_64")]
    match super::simd::level() {
        // SAFETY: the CPU supports the features each function was compiled for; the lengths
        // are equal (asserted above).
        super::simd::Level::Avx512 => return unsafe { rsqrt::times_pow_075_x16(y, x, b) },
        super::simd::Level::Avx2 => return unsafe { rsqrt::times_pow_075_x8(y, x, b) },
        super::simd::Level::Baseline => {}
    }
    times_pow_075_exact(y, x, b);
}

/// `y = x · b^−3/4` as two square roots and a reciprocal (the baseline, the tails of the vector
/// loops, and vectors with a base that is not a positive normal finite float).
fn times_pow_075_exact(y: &mut [f32], x: &[f32], b: &[f32]) {
    for ((o, &v), &b) in y.iter_mut().zip(x).zip(b) {
        *o = v * pow_075_exact(b);
    }
}

/// `b^−3/4 = b^−1/2 · (b^1/2)^−1/2`: each reciprocal square root an estimate (relative error
/// below 2^−14 on AVX-512, 1.5·2^−12 on AVX2) refined by one Newton step
/// `r·(3/2 − b/2·r²)`, which squares the error (below 3e-7 with the rounding of its steps).
/// Estimates of zero, subnormal, infinite or NaN bases are not refinable, so a vector holding one
/// takes [`times_pow_075_exact`].
#[cfg(target_arch = "x86_64")]
mod rsqrt {
    use std::arch::x86_64::*;

    /// [`super::times_pow_075`] sixteen at a time.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `x`, `b` and `y` have one length.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn times_pow_075_x16(y: &mut [f32], x: &[f32], b: &[f32]) {
        let full = y.len() / 16 * 16;
        let (lo, hi) = (_mm512_set1_ps(f32::MIN_POSITIVE), _mm512_set1_ps(f32::MAX));
        for i in (0..full).step_by(16) {
            // SAFETY: i + 16 <= full <= every length; unaligned loads and stores.
            unsafe {
                let bv = _mm512_loadu_ps(b.as_ptr().add(i));
                let normal = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(bv, lo)
                    & _mm512_cmp_ps_mask::<_CMP_LE_OQ>(bv, hi);
                if normal != 0xffff {
                    let s = i..i + 16;
                    super::times_pow_075_exact(&mut y[s.clone()], &x[s.clone()], &b[s]);
                    continue;
                }
                let v = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(i)), pow_075_x16::<true>(bv));
                _mm512_storeu_ps(y.as_mut_ptr().add(i), v);
            }
        }
        super::times_pow_075_exact(&mut y[full..], &x[full..], &b[full..]);
    }

    /// `b^−3/4` of sixteen positive normal finite bases, from estimates refined by a Newton
    /// step each (relative error below 3e-7), or with `REFINE` false the estimates alone
    /// (below 1.5·2^−14 + 3·2^−24 < 1e-4, for FP16 results: their own rounding is up to
    /// 2^−11; the FP16 LRN workloads took 0.60–0.85× the time so, Zen 4, 3 alternated rounds).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub fn pow_075_x16<const REFINE: bool>(b: __m512) -> __m512 {
        let estimate = |v: __m512| {
            let r = _mm512_rsqrt14_ps(v);
            if !REFINE {
                return r;
            }
            let t = _mm512_fnmadd_ps(
                _mm512_mul_ps(_mm512_set1_ps(0.5), v),
                _mm512_mul_ps(r, r),
                _mm512_set1_ps(1.5),
            );
            _mm512_mul_ps(r, t)
        };
        let r = estimate(b);
        _mm512_mul_ps(r, estimate(_mm512_mul_ps(b, r)))
    }

    /// [`super::times_pow_075`] eight at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `x`, `b` and `y` have one length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn times_pow_075_x8(y: &mut [f32], x: &[f32], b: &[f32]) {
        let full = y.len() / 8 * 8;
        let (half, three_halves) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.5));
        let (lo, hi) = (_mm256_set1_ps(f32::MIN_POSITIVE), _mm256_set1_ps(f32::MAX));
        let refined = |v: __m256| {
            let r = _mm256_rsqrt_ps(v);
            let t = _mm256_fnmadd_ps(_mm256_mul_ps(half, v), _mm256_mul_ps(r, r), three_halves);
            _mm256_mul_ps(r, t)
        };
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= full <= every length; unaligned loads and stores.
            unsafe {
                let bv = _mm256_loadu_ps(b.as_ptr().add(i));
                let normal = _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_GE_OQ>(bv, lo),
                    _mm256_cmp_ps::<_CMP_LE_OQ>(bv, hi),
                );
                if _mm256_movemask_ps(normal) != 0xff {
                    let s = i..i + 8;
                    super::times_pow_075_exact(&mut y[s.clone()], &x[s.clone()], &b[s]);
                    continue;
                }
                let r = refined(bv);
                let f = _mm256_mul_ps(r, refined(_mm256_mul_ps(bv, r)));
                let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i)), f);
                _mm256_storeu_ps(y.as_mut_ptr().add(i), v);
            }
        }
        super::times_pow_075_exact(&mut y[full..], &x[full..], &b[full..]);
    }
}

/// The fused AVX-512 row of the module doc (`beta = 0.75`).
#[cfg(target_arch = "x86_64")]
mod x16 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::avx512::{first, load, store};
    use super::rsqrt::pow_075_x16;
    use super::{exact_base, pow_075_exact};
    use crate::dtype::{DType, Element};
    use crate::ops::LrnPlan;

    /// What the bases of one plan need.
    pub struct Bases {
        scale: f32,
        bias: f32,
        /// The smallest base whose f32 sum is trusted: `max(alpha·2^−119, f32::MIN_POSITIVE)`.
        /// Squares that underflowed to zero lose at most `size · scale · 2^−149 = alpha·2^−149`
        /// of the base, a 2^−30 part of any base this large.
        lo: f32,
    }

    impl Bases {
        pub fn new(plan: &LrnPlan) -> Bases {
            let lo = (plan.alpha.abs() as f64 * 2f64.powi(-119)) as f32;
            Bases {
                scale: plan.scale(),
                bias: plan.bias,
                lo: lo.max(f32::MIN_POSITIVE),
            }
        }
    }

    /// Channel `ch` of `x` (channel `k`'s columns from `k·stride`) into `y` (one row of
    /// `y.len()` columns), sixteen columns at a time, the tail masked.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL; `x` holds `y.len()` columns from `k·stride`
    /// for every channel `k` of `window` and for `ch`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn row<T: Element>(
        y: &mut [T],
        x: &[T],
        stride: usize,
        window: Range<usize>,
        ch: usize,
        bases: &Bases,
    ) {
        let cols = y.len();
        let last = window.end.max(ch + 1) - 1;
        assert!(cols == 0 || x.len() >= last * stride + cols);
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
        let (scale64, bias64) = (bases.scale as f64, bases.bias as f64);
        let (scale, bias) = (_mm512_set1_ps(bases.scale), _mm512_set1_ps(bases.bias));
        let (lo, hi) = (_mm512_set1_ps(bases.lo), _mm512_set1_ps(f32::MAX));
        for j in (0..cols).step_by(16) {
            let m = first(cols - j);
            // SAFETY: the lanes under `m` are columns j.. below `cols` of rows inside `x` (the
            // assertion above) and of `y`; the CPU supports AVX-512 F, BW and VL.
            unsafe {
                let mut sum = _mm512_setzero_ps();
                for k in window.clone() {
                    let v = load(xp.add(k * stride + j), m);
                    sum = _mm512_fmadd_ps(v, v, sum);
                }
                let base = _mm512_fmadd_ps(scale, sum, bias);
                // An overflowed square made the base infinite (or NaN, with alpha 0).
                let trusted = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(base, lo)
                    & _mm512_cmp_ps_mask::<_CMP_LE_OQ>(base, hi);
                if trusted & m == m {
                    let f = match T::DTYPE {
                        DType::F32 => pow_075_x16::<true>(base),
                        DType::F16 => pow_075_x16::<false>(base),
                    };
                    let v = _mm512_mul_ps(load(xp.add(ch * stride + j), m), f);
                    store(yp.add(j), m, v);
                    continue;
                }
            }
            for (i, o) in y.iter_mut().enumerate().skip(j).take(16) {
                let b = exact_base(&x[i..], stride, window.clone(), scale64, bias64);
                *o = T::from_f32(x[ch * stride + i].to_f32() * pow_075_exact(b));
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::arch::x86_64::*;

    use super::rsqrt::pow_075_x16;

    /// The worst relative error of `pow_075_x16::<REFINE>` against f64 over bases from 2^−100
    /// to 2^100, 64 per octave.
    fn worst<const REFINE: bool>() -> f64 {
        let bases: Vec<f32> = (-6400..=6400).map(|i| (i as f32 / 64.0).exp2()).collect();
        let mut worst = 0f64;
        for chunk in bases.chunks_exact(16) {
            let mut got = [0f32; 16];
            // SAFETY: the caller checked AVX-512F; 16 values each way.
            unsafe {
                let b = _mm512_loadu_ps(chunk.as_ptr());
                _mm512_storeu_ps(got.as_mut_ptr(), pow_075_x16::<REFINE>(b));
            }
            for (&b, &g) in chunk.iter().zip(&got) {
                let want = (b as f64).powf(-0.75);
                worst = worst.max(((g as f64 - want) / want).abs());
            }
        }
        worst
    }

    /// The bounds the doc comment of `pow_075_x16` states: refined below 3e-7, the estimates
    /// alone (FP16 results) below 1e-4.
    #[test]
    fn pow_075_bounds() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        let (refined, estimated) = (worst::<true>(), worst::<false>());
        assert!(refined < 3e-7, "refined: {refined:e}");
        assert!(estimated < 1e-4, "estimates: {estimated:e}");
        // A bound that a refined result meets and the estimates alone do not.
        assert!(estimated > 1e-6, "estimates: {estimated:e}");
    }
}
