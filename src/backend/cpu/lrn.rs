//! CPU LRN over the `[n, c, inner]` view, in f32 (FP16 operands go through the f32 scratch of
//! `scratch.rs`). A task takes one image, a block of channels and a block of spatial columns.
//! Each channel sums its window's squares afresh, in f64, along contiguous rows that vectorise:
//! `size` adds per element, the `size` of the FLOP count. (A sum slid down the channels — one
//! square added and one dropped per channel — is cheaper for wide windows but not exact: once a
//! square 2^53 times the others has entered the window, dropping it leaves the rounding of the
//! small ones behind, and the channels after a huge one get a base near 0.) Each channel row
//! then rounds its bases `bias + scale·sum` to f32 and raises them to `−beta`: ONNX's default
//! `beta = 0.75` (every LRN of AlexNet and Inception) as `b^−1/2 · (b^1/2)^−1/2` from the CPU's
//! reciprocal square root estimate with one Newton step each (multiplies and adds only: two
//! square roots and a division a vector kept the divider busy for most of the kernel's time),
//! any other `beta` with `powf`.

use rayon::prelude::*;

use super::simd::{map, multiversion};
use super::Disjoint;
use crate::ops::LrnPlan;

/// Spatial columns per task.
const COLS: usize = 1024;

/// Channels per task.
const CHANNELS: usize = 16;

/// Computes `plan` on f32 data (`y` has the length of `x` and is written in full).
pub fn lrn_f32(plan: &LrnPlan, x: &[f32], y: &mut [f32]) {
    let (n, c, inner) = (plan.n, plan.c, plan.inner);
    if x.is_empty() {
        return;
    }
    let (cblocks, iblocks) = (c.div_ceil(CHANNELS), inner.div_ceil(COLS));
    let (scale, bias) = (plan.scale() as f64, plan.bias as f64);
    let out = Disjoint::new(y);
    (0..n * cblocks * iblocks)
        .into_par_iter()
        .for_each_init(Vec::<f32>::new, |base, t| {
            let (b, rest) = (t / (cblocks * iblocks), t % (cblocks * iblocks));
            let (ch0, i0) = ((rest / iblocks) * CHANNELS, (rest % iblocks) * COLS);
            let cols = COLS.min(inner - i0);
            // Image b from column i0 on: channel k's columns start at k·inner.
            let image = &x[b * c * inner + i0..];
            base.resize(cols, 0.0);
            for ch in ch0..(ch0 + CHANNELS).min(c) {
                // The window of channel ch: [ch − before, ch + after] within [0, c).
                let window = ch.saturating_sub(plan.before())..(ch + plan.after() + 1).min(c);
                window_bases(base, image, inner, window, scale, bias);
                // SAFETY: task (b, channel block, column block) alone writes columns
                // i0..i0 + cols of image b's channel rows ch0.., all inside `y`.
                let yr = unsafe { out.slice((b * c + ch) * inner + i0, cols) };
                let xr = &image[ch * inner..][..cols];
                if plan.beta == 0.75 {
                    times_pow_075(yr, xr, base);
                } else {
                    let beta = plan.beta;
                    map([xr, base], yr, |[v, b]| v * b.powf(-beta));
                }
            }
        });
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
            let sum: f64 = window.clone().map(|k| x[k * stride + j] as f64 * x[k * stride + j] as f64).sum();
            *b = (bias + scale * sum) as f32;
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
