//! CPU elementwise activations: one streaming pass split across threads by element ranges
//! (`TASK` elements a task). Each activation is a branch-free `f32 → f32` function that
//! `simd::map` inlines into one vectorised loop (AVX2 / AVX-512 copies); FP16 is widened and
//! rounded in registers on the way, except for Relu and Clip, which clamp the halves' bits
//! (`halves`). Sigmoid on AVX-512 (F, BW, VL) has its own intrinsics loop (`x16`) around
//! `simd::exp_x16`, the same formula in fewer instructions.
//!
//! Sigmoid and Tanh are accurate to a few ulp over the whole f32 range: `σ(x) = 1/(1 + e)` or
//! `e/(1 + e)` with `e = e^−|x|` (no cancellation, no overflow: large negative inputs give 0 or
//! a subnormal, never NaN); `tanh` is Eigen's rational approximation (odd degree 13 over even
//! degree 6, input clamped to ±7.905; exactly ±1 above |x| = 9),
//! with no exp at all. Each takes one vector division: on AVX2 and AVX-512 it costs less than a
//! reciprocal refined by Newton steps (measured). NaN propagates through every activation
//! (comparisons are written so that a NaN input is returned, never replaced).

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::simd::{exp, map};
use crate::dtype::{DType, Element};
use crate::ops::{Activation, UnaryPlan};

/// Elements per parallel task.
const TASK: usize = 1 << 15;

/// Computes `plan` from `x` into `y` (same length, any storage type).
pub fn unary<T: Element>(plan: &UnaryPlan, x: &[T], y: &mut [T]) {
    let act = plan.activation;
    let bounds = match act {
        Activation::Relu => Some((0.0, f32::INFINITY)),
        Activation::Clip { min, max } => Some((min, max)),
        _ => None,
    };
    if let (DType::F16, Some((lo, hi))) = (T::DTYPE, bounds) {
        let (x, y) = (bytemuck::cast_slice(x), bytemuck::cast_slice_mut(y));
        let (lo, hi) = (halves::bits(lo), halves::bits(hi));
        y.par_chunks_mut(TASK)
            .zip(x.par_chunks(TASK))
            .for_each(|(yc, xc)| halves::clamp(xc, yc, lo, hi));
        return;
    }
    #[cfg(target_arch = "x86_64")]
    let x16 = act == Activation::Sigmoid && avx512::supported();
    y.par_chunks_mut(TASK)
        .zip(x.par_chunks(TASK))
        .for_each(|(yc, xc)| match act {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU supports AVX-512 F, BW and VL (`x16`); equal lengths (zipped
            // chunks of equal-length slices).
            Activation::Sigmoid if x16 => unsafe { x16::sigmoid(xc, yc) },
            // The attributes moved into the closures: captured by reference, `alpha` was loaded
            // through a pointer under the branch in every lane and the FP16 loop stayed scalar
            // (LeakyRelu FP16 1x64x112x112: 2.56 ms by reference, 0.035 ms moved).
            Activation::Relu => map([xc], yc, |[v]| relu1(v)),
            Activation::Clip { min, max } => map([xc], yc, move |[v]| clip1(v, min, max)),
            Activation::LeakyRelu { alpha } => map([xc], yc, move |[v]| leaky_relu1(v, alpha)),
            Activation::Sigmoid => map([xc], yc, |[v]| sigmoid1(v)),
            Activation::Tanh => map([xc], yc, |[v]| tanh1(v)),
        });
}

/// `max(x, 0)`, NaN kept.
#[inline(always)]
fn relu1(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

/// `min(max(x, lo), hi)`, NaN kept.
#[inline(always)]
fn clip1(x: f32, lo: f32, hi: f32) -> f32 {
    let t = if x < lo { lo } else { x };
    if t > hi {
        hi
    } else {
        t
    }
}

/// `x` for `x ≥ 0`, `alpha·x` otherwise (NaN: `alpha·NaN`).
#[inline(always)]
fn leaky_relu1(x: f32, alpha: f32) -> f32 {
    // The product taken unconditionally: a select, never a branch around it.
    let scaled = x * alpha;
    if x < 0.0 {
        scaled
    } else {
        x
    }
}

/// `1 / (1 + e^−x)` with `e = e^−|x|`: `1/(1+e)` for `x ≥ 0`, `e/(1+e)` below.
#[inline(always)]
fn sigmoid1(x: f32) -> f32 {
    // One exp of −|x| (a select between e^x and e^−x would make LLVM compute both).
    let e = exp(-x.abs());
    let r = 1.0 / (1.0 + e);
    if x < 0.0 {
        e * r
    } else {
        r
    }
}

/// `tanh(x)` as `x·p(x²)/q(x²)`: Eigen's `generic_fast_tanh_float` coefficients, relative
/// error below 4e-7 (the unit test below measures it); the input clamped at ±7.905 (beyond,
/// the quotient stays within 3e-7 of ±1), and exactly ±1 above |x| = 9 (where f32 `tanh`
/// rounds to ±1). A select for tiny inputs (`x` itself below |x| = 0.0004) is not needed and
/// not made: without it the Tanh workloads took 0.93–0.98× the time (Zen 4, FP32 and FP16, 3
/// alternated rounds), the loop's pace being its vector operations.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Eigen's coefficients, as published
fn tanh1(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311_1;
    let xc = x.clamp(-CLAMP, CLAMP);
    let z = xc * xc;
    let mut p = -2.760_768_5e-16_f32;
    p = p.mul_add(z, 2.000_187_9e-13);
    p = p.mul_add(z, -8.604_671_5e-11);
    p = p.mul_add(z, 5.122_297_1e-8);
    p = p.mul_add(z, 1.485_722_4e-5);
    p = p.mul_add(z, 6.372_619_3e-4);
    p = p.mul_add(z, 4.893_524_6e-3);
    let mut q = 1.198_258_4e-6_f32;
    q = q.mul_add(z, 1.185_347_1e-4);
    q = q.mul_add(z, 2.268_434_6e-3);
    q = q.mul_add(z, 4.893_525_2e-3);
    // The quotient first: `x` times a factor within 1.2e-7 of 1 near 0, so tiny and subnormal
    // inputs keep their precision and their sign without a select of their own.
    let t = xc * (p / q);
    if x.abs() > 9.0 {
        1.0f32.copysign(x)
    } else {
        t
    }
}

/// Relu and Clip on FP16 storage, computed on the halves' bits: no conversion to FP32 and back
/// (two of them per sixteen lanes held the FP16 Clip to 54–60% of a copy's speed, Zen 4), but
/// integer compares and selects, 32 lanes to an AVX-512 vector. Rounding is monotonic and keeps
/// every half, so clamping a half to bounds rounded to FP16 gives the FP16 rounding of clamping
/// it in FP32. The values of [`clip1`]'s (a −0 clamped to a bound of +0 may come back as +0),
/// and NaN is kept.
mod halves {
    #[cfg(target_arch = "x86_64")]
    use super::super::simd::{level, Level};
    #[cfg(target_arch = "x86_64")]
    use super::avx512;

    /// The bits of `v` rounded to FP16 (nearest even).
    pub fn bits(v: f32) -> i16 {
        half::f16::from_f32(v).to_bits() as i16
    }

    /// `y[i]`: `x[i]` clamped to `[lo, hi]` (FP16 bits, neither NaN, `lo ≤ hi`); equal lengths.
    pub fn clamp(x: &[i16], y: &mut [i16], lo: i16, hi: i16) {
        assert_eq!(x.len(), y.len());
        #[cfg(target_arch = "x86_64")]
        {
            if avx512::supported() {
                // SAFETY: the CPU supports AVX-512 F, BW and VL.
                return unsafe { clamp_avx512(x, y, lo, hi) };
            }
            if level() >= Level::Avx2 {
                // SAFETY: the CPU supports AVX2.
                return unsafe { clamp_avx2(x, y, lo, hi) };
            }
        }
        clamp_any(x, y, lo, hi);
    }

    /// [`clamp_any`] compiled for AVX-512 (F, BW and VL: 32 halves a vector).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
    unsafe fn clamp_avx512(x: &[i16], y: &mut [i16], lo: i16, hi: i16) {
        clamp_any(x, y, lo, hi)
    }

    /// [`clamp_any`] compiled for AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn clamp_avx2(x: &[i16], y: &mut [i16], lo: i16, hi: i16) {
        clamp_any(x, y, lo, hi)
    }

    /// The loops each copy vectorises.
    #[inline(always)]
    pub(super) fn clamp_any(x: &[i16], y: &mut [i16], lo: i16, hi: i16) {
        if lo >= 0 {
            // Both bounds +0 or above (Relu, ReLU6): the bits of non-negative halves compare as
            // their values do, and every negative half's are below `lo`'s. Half the
            // operations of the general loop.
            for (o, &h) in y.iter_mut().zip(x) {
                let r = h.max(lo).min(hi);
                *o = if h & 0x7fff > 0x7c00 { h } else { r };
            }
            return;
        }
        let (klo, khi) = (order(lo), order(hi));
        for (o, &h) in y.iter_mut().zip(x) {
            let k = order(h);
            let above_lo = if k < klo { lo } else { h };
            let r = if k.max(klo) > khi { hi } else { above_lo };
            *o = if h & 0x7fff > 0x7c00 { h } else { r };
        }
    }

    /// A half's bits as an integer in the order of its value: −0 and +0 both 0, a NaN beyond
    /// the infinity of its sign.
    #[inline(always)]
    fn order(h: i16) -> i16 {
        let magnitude = h & 0x7fff;
        if h < 0 {
            -magnitude
        } else {
            magnitude
        }
    }
}

/// Sigmoid sixteen lanes at a time with AVX-512 intrinsics around
/// [`exp_x16`](super::simd::exp_x16) (fewer instructions than the exp LLVM vectorises from
/// [`exp`]), FP16 widened and rounded in registers, the tail through masked loads and stores.
/// Tanh has no exp, and written this way it ran no faster than through `map`, nor with
/// `vrcp14ps` and a Newton step for its division (1.05–1.15× the time in 11 of 12 workload pairs,
/// Zen 4, 3 alternated rounds).
#[cfg(target_arch = "x86_64")]
mod x16 {
    use std::arch::x86_64::*;

    use super::super::simd::exp_x16;
    use super::avx512::{first, load, store};
    use crate::dtype::Element;

    /// [`super::sigmoid1`] over `x` into `y`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL; `x` and `y` have equal lengths.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn sigmoid<T: Element>(x: &[T], y: &mut [T]) {
        assert_eq!(x.len(), y.len());
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
        let full = x.len() / 16 * 16;
        for i in (0..full).step_by(16) {
            // SAFETY: elements i..i + 16 lie in both slices; the CPU supports AVX-512 F, BW
            // and VL (this function's contract).
            unsafe { store(yp.add(i), !0, sigmoid16(load(xp.add(i), !0))) };
        }
        if full < x.len() {
            let m = first(x.len() - full);
            // SAFETY: the lanes under `m` are the elements from `full` on of both slices.
            unsafe { store(yp.add(full), m, sigmoid16(load(xp.add(full), m))) };
        }
    }

    /// `e/(1 + e)` below 0, `1/(1 + e)` otherwise, with `e = e^−|x|` (one division: on Zen 4
    /// it ran faster than `vrcp14ps` and a Newton step, which take the FMA ports that the exp
    /// keeps busy, and so it did on an Intel Xeon of family 6 model 207: 1.03–1.27× the time
    /// with them, FP32 and FP16, 5 alternated rounds).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn sigmoid16(x: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        let minus_abs = _mm512_or_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
        // SAFETY: AVX-512F is enabled here.
        let e = unsafe { exp_x16(_mm512_castsi512_ps(minus_abs)) };
        let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
        _mm512_div_ps(_mm512_mask_blend_ps(below, one, e), _mm512_add_ps(e, one))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sigmoid(x: &[f32], y: &mut [f32]) {
        map([x], y, |[v]| sigmoid1(v))
    }

    fn tanh(x: &[f32], y: &mut [f32]) {
        map([x], y, |[v]| tanh1(v))
    }

    fn rel(got: f32, want: f64) -> f64 {
        if want == 0.0 {
            got.abs() as f64
        } else {
            ((got as f64 - want) / want).abs()
        }
    }

    /// [−20, 20] densely (both sides of tanh's clamp and of every select), then wider.
    fn dense() -> Vec<f32> {
        (-400_000..=400_000)
            .map(|i| i as f32 * 5e-5)
            .chain((-1600..=1600).map(|i| i as f32 * 0.05))
            .collect()
    }

    /// `y` is σ(`xs`) within a relative error of 1e-6.
    fn sigmoid_close(xs: &[f32], y: &[f32]) {
        let worst = xs
            .iter()
            .zip(y)
            .map(|(&x, &g)| rel(g, 1.0 / (1.0 + (-(x as f64)).exp())))
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "sigmoid: worst relative error {worst:e}");
    }

    #[test]
    fn sigmoid_and_tanh_match_f64() {
        let xs = dense();
        let mut y = vec![0.0; xs.len()];
        sigmoid(&xs, &mut y);
        sigmoid_close(&xs, &y);
        tanh(&xs, &mut y);
        let worst = xs
            .iter()
            .zip(&y)
            .map(|(&x, &g)| rel(g, (x as f64).tanh()))
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "tanh: worst relative error {worst:e}");
        assert!(y.iter().all(|v| v.abs() <= 1.0), "tanh beyond ±1");
        // Tiny inputs: tanh(x) ≈ x, σ(x) ≈ 1/2.
        let tiny = [
            1e-30f32,
            -1e-20,
            1e-7,
            -3e-4,
            f32::MIN_POSITIVE,
            -1e-40,
            8e-39,
        ];
        let mut y = [0.0; 7];
        tanh(&tiny, &mut y);
        for (&x, &g) in tiny.iter().zip(&y) {
            assert!(rel(g, (x as f64).tanh()) < 1e-6, "tanh({x}) = {g}");
        }
    }

    /// The AVX-512 Sigmoid loop: the same bounds as the scalar form, over the same dense range
    /// and the same edges (ten elements: the masked tail alone).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sigmoid_x16_matches_f64_and_edges() {
        if !avx512::supported() {
            return;
        }
        // SAFETY: the CPU supports AVX-512 F, BW and VL (checked above); equal lengths.
        let run = |x: &[f32], y: &mut [f32]| unsafe { x16::sigmoid(x, y) };
        let xs = dense();
        let mut y = vec![0.0; xs.len()];
        run(&xs, &mut y);
        sigmoid_close(&xs, &y);
        let mut y = [0.0; 10];
        run(&EDGES, &mut y);
        sigmoid_edges(&y);
    }

    /// Inputs at the ends of the range, signed zeros and NaN.
    const EDGES: [f32; 10] = [
        f32::NEG_INFINITY,
        -1e30,
        -100.0,
        -87.0,
        0.0,
        -0.0,
        20.0,
        100.0,
        f32::INFINITY,
        f32::NAN,
    ];

    /// What a sigmoid gives for [`EDGES`].
    fn sigmoid_edges(y: &[f32]) {
        assert_eq!(&y[..2], &[0.0, 0.0]);
        assert!(y[2] >= 0.0 && y[2] < 1e-37 && y[3] > 0.0);
        assert_eq!(&y[4..9], &[0.5, 0.5, 1.0, 1.0, 1.0]);
        assert!(y[9].is_nan());
    }

    /// Every FP16 value clamped on its bits, at every SIMD level, against the FP32 clamp rounded
    /// back: the same value (±0 alike), NaN kept; bounds exact, rounded either way, equal, and
    /// infinite.
    #[test]
    fn halves_clamp_every_value_as_fp32_does() {
        use half::f16;
        let x: Vec<i16> = (0..=u16::MAX).map(|b| b as i16).collect();
        let value = |b: i16| f16::from_bits(b as u16).to_f32();
        let bounds = [
            (0.0, f32::INFINITY),
            (0.0, 6.0),
            (-1.2345, 2.7),
            (1e-9, 3e-8),
            (-65519.0, 65519.0),
            (-1e9, 1e9),
            (0.5, 0.5),
            (f32::NEG_INFINITY, -3.0),
        ];
        for (lo, hi) in bounds {
            let (lb, hb) = (halves::bits(lo), halves::bits(hi));
            let mut runs: Vec<(&str, Vec<i16>)> = Vec::new();
            let mut y = vec![7; x.len()];
            halves::clamp(&x, &mut y, lb, hb);
            runs.push(("widest", y));
            #[cfg(target_arch = "x86_64")]
            if super::super::simd::level() >= super::super::simd::Level::Avx2 {
                let mut y = vec![7; x.len()];
                // SAFETY: the CPU supports AVX2 (checked above).
                unsafe { halves::clamp_avx2(&x, &mut y, lb, hb) };
                runs.push(("avx2", y));
            }
            let mut y = vec![7; x.len()];
            halves::clamp_any(&x, &mut y, lb, hb);
            runs.push(("baseline", y));
            for (level, y) in &runs {
                for (&h, &g) in x.iter().zip(y) {
                    let want = f16::from_f32(clip1(value(h), lo, hi)).to_f32();
                    let got = value(g);
                    assert!(
                        got == want || (got.is_nan() && g == h),
                        "{level}: clip({}, {lo}, {hi}) = {got}, want {want}",
                        value(h)
                    );
                }
            }
        }
    }

    #[test]
    fn edges() {
        let x = EDGES;
        let mut y = [0.0; 10];
        sigmoid(&x, &mut y);
        sigmoid_edges(&y);
        tanh(&x, &mut y);
        assert_eq!(&y[..4], &[-1.0; 4]);
        assert_eq!(y[4].to_bits(), 0.0f32.to_bits());
        assert_eq!(y[5], 0.0);
        assert_eq!(&y[6..9], &[1.0; 3]);
        assert!(y[9].is_nan());
        map([&x[..]], &mut y, |[v]| relu1(v));
        assert_eq!(&y[..4], &[0.0; 4]);
        assert!(y[9].is_nan());
        map([&x[..]], &mut y, |[v]| clip1(v, 0.0, 6.0));
        assert_eq!(&y[6..9], &[6.0; 3]);
        assert!(y[9].is_nan());
        map([&x[..]], &mut y, |[v]| leaky_relu1(v, 0.1));
        assert_eq!(y[0], f32::NEG_INFINITY);
        assert_eq!(y[2], -10.0);
        assert!(y[9].is_nan());
    }
}
