//! CPU LRN over the `[n, c, inner]` view, in f32 (FP16 operands go through the f32 scratch of
//! `scratch.rs`). A task takes one image, a block of channels and a block of spatial columns;
//! it keeps the window's square sum for every column in f64 and slides it down the channels —
//! one row added and one dropped per channel, so the cost does not grow with `size` (the first
//! channel's window is summed once per task, and a channel block is never narrower than the
//! window, so that start costs at most as much as the block). Every pass runs along contiguous
//! rows and vectorises. The f64 sum keeps the adds and drops exact enough that sliding loses
//! nothing against summing each window afresh. Each channel row then rounds its bases
//! `bias + scale·sum` to f32 and raises them to `−beta`: ONNX's default `beta = 0.75` (every LRN
//! of AlexNet and Inception) as `b^−1/2 · (b^1/2)^−1/2` from the CPU's reciprocal square root
//! estimate with one Newton step each (multiplies and adds only: two square roots and a division
//! a vector kept the divider busy for most of the kernel's time), any other `beta` with `powf`.

use rayon::prelude::*;

use super::simd::{map, multiversion};
use super::Disjoint;
use crate::ops::LrnPlan;

/// Spatial columns per task.
const COLS: usize = 1024;

/// Fewest channels per task (more when the window is wider).
const CHANNELS: usize = 16;

/// Computes `plan` on f32 data (`y` has the length of `x` and is written in full).
pub fn lrn_f32(plan: &LrnPlan, x: &[f32], y: &mut [f32]) {
    let (n, c, inner) = (plan.n, plan.c, plan.inner);
    if x.is_empty() {
        return;
    }
    let channels = plan.channel_block(CHANNELS);
    let (cblocks, iblocks) = (c.div_ceil(channels), inner.div_ceil(COLS));
    let out = Disjoint::new(y);
    (0..n * cblocks * iblocks).into_par_iter().for_each_init(
        || (Vec::<f64>::new(), Vec::<f32>::new()),
        |(sum, base), t| {
            let (b, rest) = (t / (cblocks * iblocks), t % (cblocks * iblocks));
            let (ch0, i0) = ((rest / iblocks) * channels, (rest % iblocks) * COLS);
            let cols = COLS.min(inner - i0);
            let row = |k: usize| &x[(b * c + k) * inner + i0..][..cols];
            // The window of channel ch0: [ch0 − before, ch0 + after] within [0, c).
            sum.clear();
            sum.resize(cols, 0.0);
            base.resize(cols, 0.0);
            let first = ch0.saturating_sub(plan.before());
            for k in first..(ch0 + plan.after() + 1).min(c) {
                add_squares(sum, row(k));
            }
            for ch in ch0..(ch0 + channels).min(c) {
                if ch > ch0 {
                    let enters = ch + plan.after();
                    if enters < c {
                        add_squares(sum, row(enters));
                    }
                    if let Some(k) = (ch - 1).checked_sub(plan.before()) {
                        sub_squares(sum, row(k));
                    }
                }
                // SAFETY: task (b, channel block, column block) alone writes columns
                // i0..i0 + cols of image b's channel rows ch0.., all inside `y`.
                let yr = unsafe { out.slice((b * c + ch) * inner + i0, cols) };
                normalize(yr, row(ch), sum, base, plan);
            }
        },
    );
}

multiversion! {
    /// `sum += x²` elementwise (in f64).
    fn add_squares(sum: &mut [f64], x: &[f32]) {
        for (s, &v) in sum.iter_mut().zip(x) {
            let v = v as f64;
            *s += v * v;
        }
    }
}

multiversion! {
    /// `sum −= x²` elementwise (in f64).
    fn sub_squares(sum: &mut [f64], x: &[f32]) {
        for (s, &v) in sum.iter_mut().zip(x) {
            let v = v as f64;
            *s -= v * v;
        }
    }
}

/// `y = x · (bias + scale·sum)^−beta`, through `base` (scratch of `y`'s length).
fn normalize(y: &mut [f32], x: &[f32], sum: &[f64], base: &mut [f32], plan: &LrnPlan) {
    bases(base, sum, plan.scale() as f64, plan.bias as f64);
    let beta = plan.beta;
    if beta == 0.75 {
        times_pow_075(y, x, base);
    } else {
        map([x, base], y, |[v, b]| v * b.powf(-beta));
    }
}

multiversion! {
    /// `base = bias + scale·max(sum, 0)` rounded to f32 (a sum that rounding left a hair below
    /// 0 counts as 0, so the base is never below `bias`).
    fn bases(base: &mut [f32], sum: &[f64], scale: f64, bias: f64) {
        for (b, &s) in base.iter_mut().zip(sum) {
            *b = (bias + scale * s.max(0.0)) as f32;
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
        let r = b.sqrt();
        *o = v * (1.0 / (r * r.sqrt()));
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
        let (half, three_halves) = (_mm512_set1_ps(0.5), _mm512_set1_ps(1.5));
        let (lo, hi) = (_mm512_set1_ps(f32::MIN_POSITIVE), _mm512_set1_ps(f32::MAX));
        let refined = |v: __m512| {
            let r = _mm512_rsqrt14_ps(v);
            let t = _mm512_fnmadd_ps(_mm512_mul_ps(half, v), _mm512_mul_ps(r, r), three_halves);
            _mm512_mul_ps(r, t)
        };
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
                let r = refined(bv);
                let f = _mm512_mul_ps(r, refined(_mm512_mul_ps(bv, r)));
                let v = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(i)), f);
                _mm512_storeu_ps(y.as_mut_ptr().add(i), v);
            }
        }
        super::times_pow_075_exact(&mut y[full..], &x[full..], &b[full..]);
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
