//! CPU softmax, numerically stable (`exp(x − max)`), over a `[outer, len, inner]` view. Each
//! outer slab is one task; along a contiguous axis (`inner == 1`) each row is three vectorised
//! passes (max, exp with the sum, scale), the exp in whole `LANES`-wide vectors (a row's tail
//! too; on AVX-512 written with intrinsics around `simd::exp_x16`, which takes fewer
//! instructions than the exp LLVM vectorises), otherwise the passes run over whole `inner`-wide
//! rows. A pass fewer (an online max and sum) would take an exp per element twice; with the row
//! in L1 the exp is the cost, not the extra read. FP16 is widened into f32 scratch and rounded
//! back, except a contiguous row on AVX-512, which is widened in registers as it is read and
//! rounded in registers as the last pass writes it (only its exps wait in scratch).

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::avx512;
#[cfg(target_arch = "x86_64")]
use super::simd::exp_x16;
use super::simd::{exp, multiversion};
use super::{narrow, widen};
use crate::dtype::{DType, Element};
use crate::ops::SoftmaxPlan;

/// Lanes of the independent accumulators that let the reductions vectorise.
const LANES: usize = 16;

/// Computes `plan` for storage type `T` (FP16 in FP32: [`slab_f32`]).
pub fn softmax<T: Element>(plan: &SoftmaxPlan, x: &[T], y: &mut [T]) {
    let slab = plan.len * plan.inner;
    if slab == 0 {
        return;
    }
    // Rows of a contiguous axis are independent: hand several to one task when they are short.
    let rows_per_task = if plan.inner == 1 {
        (4096 / plan.len).max(1)
    } else {
        1
    };
    y.par_chunks_mut(slab * rows_per_task)
        .zip(x.par_chunks(slab * rows_per_task))
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(xs, ys), (yt, xt)| {
                for (yc, xc) in yt.chunks_mut(slab).zip(xt.chunks(slab)) {
                    slab_f32(plan, xc, yc, xs, ys);
                }
            },
        );
}

/// One slab `[len, inner]`, through f32 scratch when `T` is not f32 (on AVX-512 a contiguous
/// FP16 row only keeps its exps there: [`row_x16`]).
fn slab_f32<T: Element>(
    plan: &SoftmaxPlan,
    x: &[T],
    y: &mut [T],
    xs: &mut Vec<f32>,
    ys: &mut Vec<f32>,
) {
    if T::DTYPE == DType::F32 {
        let (x, y): (&[f32], &mut [f32]) = (bytemuck::cast_slice(x), bytemuck::cast_slice_mut(y));
        slab(plan, x, y);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if plan.inner == 1 && avx512::supported() {
        // SAFETY: the CPU supports AVX-512 F, BW and VL; equal lengths.
        unsafe { row_x16(x, y, ys) };
        return;
    }
    widen(x, xs);
    ys.resize(x.len(), 0.0);
    slab(plan, xs, ys);
    narrow(ys, y);
}

fn slab(plan: &SoftmaxPlan, x: &[f32], y: &mut [f32]) {
    if plan.inner == 1 {
        row(x, y);
    } else {
        strided(x, y, plan.inner);
    }
}

/// Softmax of one contiguous row.
fn row(x: &[f32], y: &mut [f32]) {
    // The comparisons skip NaN; exp(NaN − max) below still turns the whole row NaN.
    #[cfg(target_arch = "x86_64")]
    let sum = if avx512::supported() {
        // SAFETY: the CPU supports AVX-512 F, BW and VL.
        unsafe { exp_sum_x16(x, y, max_x16(x)) }
    } else {
        exp_sum(x, y, row_max(x))
    };
    #[cfg(not(target_arch = "x86_64"))]
    let sum = exp_sum(x, y, row_max(x));
    scale(y, 1.0 / sum);
}

/// [`row_max`] of a row of storage type `T` (FP16 widened in registers), four vectors at a
/// time into four accumulators: through one, each `vmaxps` waited for the one before.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn max_x16<T: Element>(x: &[T]) -> f32 {
    use std::arch::x86_64::*;
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut acc = [ninf; 4];
    let p = x.as_ptr();
    let full = x.len() / 64 * 64;
    // `acc` second in every `vmaxps`: a NaN lane leaves it as it is (NaN skipped, as in
    // `row_max`), so no accumulator ever holds a NaN.
    for i in (0..full).step_by(64) {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: i + 64 <= full <= x.len(); the CPU supports AVX-512 F, BW and VL (this
            // function's contract).
            *a = _mm512_max_ps(unsafe { avx512::load(p.add(i + 16 * k), !0) }, *a);
        }
    }
    for i in (full..x.len()).step_by(16) {
        let m = avx512::first(x.len() - i);
        // SAFETY: the lanes under `m` are elements of `x`.
        acc[0] = _mm512_max_ps(unsafe { avx512::load_or(p.add(i), m, ninf) }, acc[0]);
    }
    _mm512_reduce_max_ps(_mm512_max_ps(
        _mm512_max_ps(acc[0], acc[1]),
        _mm512_max_ps(acc[2], acc[3]),
    ))
}

multiversion! {
    /// The largest element of a row (NaN skipped; −∞ for an empty row).
    fn row_max(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = x.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for l in 0..LANES {
                acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
            }
        }
        let mut max = tail.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        for a in acc {
            max = if a > max { a } else { max };
        }
        max
    }
}

multiversion! {
    /// `y = exp(x − max)`, returning the sum of `y`.
    fn exp_sum(x: &[f32], y: &mut [f32], max: f32) -> f32 {
        let mut sums = [0.0f32; LANES];
        let split = x.len() / LANES * LANES;
        for (yc, xc) in y[..split].chunks_exact_mut(LANES).zip(x[..split].chunks_exact(LANES)) {
            for l in 0..LANES {
                yc[l] = exp(xc[l] - max);
                sums[l] += yc[l];
            }
        }
        // The tail as one more full vector, padded with −∞ (whose exp, 0, leaves the sum as it
        // is): a scalar exp per tail element would cost as much as several vectors.
        let rest = x.len() - split;
        if rest > 0 {
            let mut xt = [f32::NEG_INFINITY; LANES];
            xt[..rest].copy_from_slice(&x[split..]);
            let mut yt = [0.0f32; LANES];
            for l in 0..LANES {
                yt[l] = exp(xt[l] - max);
                sums[l] += yt[l];
            }
            y[split..].copy_from_slice(&yt[..rest]);
        }
        sums.iter().sum()
    }
}

/// [`exp_sum`] sixteen lanes at a time with [`exp_x16`] from any storage type (FP16 widened in
/// registers), the tail through a masked load (the missing lanes −∞, whose exp is 0) and a
/// masked store.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn exp_sum_x16<T: Element>(x: &[T], y: &mut [f32], max: f32) -> f32 {
    use std::arch::x86_64::*;
    assert_eq!(x.len(), y.len());
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let m = _mm512_set1_ps(max);
    let mut sum = _mm512_setzero_ps();
    let full = x.len() / 16 * 16;
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 <= full <= both lengths; unaligned loads and stores; the CPU supports
        // AVX-512F (this function's contract).
        unsafe {
            let e = exp_x16(_mm512_sub_ps(
                avx512::load_or(x.as_ptr().add(i), !0, ninf),
                m,
            ));
            _mm512_storeu_ps(y.as_mut_ptr().add(i), e);
            sum = _mm512_add_ps(sum, e);
        }
    }
    let rest = x.len() - full;
    if rest > 0 {
        let k: __mmask16 = (1 << rest) - 1;
        // SAFETY: the masked lanes are the `rest` elements from `full` on, inside both slices;
        // masked-off lanes are neither read nor written.
        unsafe {
            let xv = avx512::load_or(x.as_ptr().add(full), k, ninf);
            let e = exp_x16(_mm512_sub_ps(xv, m));
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(full), k, e);
            sum = _mm512_add_ps(sum, e);
        }
    }
    _mm512_reduce_add_ps(sum)
}

/// Softmax of one contiguous row of storage type `T` (FP16) without widening it through
/// scratch: the max and the exps read `x` widened in registers, the exps wait in `e` (f32
/// scratch, in L1 or L2 for the rows softmax sees), and the last pass scales them and rounds
/// them straight into `y`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL; `x` and `y` have equal lengths.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn row_x16<T: Element>(x: &[T], y: &mut [T], e: &mut Vec<f32>) {
    use std::arch::x86_64::*;
    assert_eq!(x.len(), y.len());
    // SAFETY: the CPU supports AVX-512 F, BW and VL (this function's contract).
    let max = unsafe { max_x16(x) };
    e.resize(x.len(), 0.0);
    // SAFETY: as above.
    let s = _mm512_set1_ps(1.0 / unsafe { exp_sum_x16(x, e, max) });
    for i in (0..x.len()).step_by(16) {
        let m = avx512::first(x.len() - i);
        // SAFETY: the lanes under `m` are elements of `e` and of `y`.
        unsafe {
            let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, e.as_ptr().add(i)), s);
            avx512::store(y.as_mut_ptr().add(i), m, v);
        }
    }
}

multiversion! {
    /// `y *= s`.
    fn scale(y: &mut [f32], s: f32) {
        for v in y.iter_mut() {
            *v *= s;
        }
    }
}

multiversion! {
    /// Softmax down the columns of a `[len, inner]` slab: every pass runs along contiguous rows.
    fn strided(x: &[f32], y: &mut [f32], inner: usize) {
        let mut max = vec![f32::NEG_INFINITY; inner];
        for xr in x.chunks_exact(inner) {
            for (m, &v) in max.iter_mut().zip(xr) {
                *m = if v > *m { v } else { *m };
            }
        }
        let mut sum = vec![0.0f32; inner];
        for (yr, xr) in y.chunks_exact_mut(inner).zip(x.chunks_exact(inner)) {
            for ((yv, &xv), (s, &m)) in yr.iter_mut().zip(xr).zip(sum.iter_mut().zip(&max)) {
                *yv = exp(xv - m);
                *s += *yv;
            }
        }
        for s in sum.iter_mut() {
            *s = 1.0 / *s;
        }
        for yr in y.chunks_exact_mut(inner) {
            for (yv, &inv) in yr.iter_mut().zip(&sum) {
                *yv *= inv;
            }
        }
    }
}
