//! CPU elementwise activations: one streaming pass split across threads by element ranges
//! (`TASK` elements a task), FP16 widened to FP32 chunk by chunk. Each activation is a
//! branch-free f32 loop that LLVM vectorises (`multiversion!`: AVX2 / AVX-512 copies).
//!
//! Sigmoid and Tanh are accurate to a few ulp over the whole f32 range: `σ(x) = 1/(1 + e)` or
//! `e/(1 + e)` with `e = e^−|x|` (no cancellation, no overflow: large negative inputs give 0 or
//! a subnormal, never NaN); `tanh` is Cephes' odd polynomial for `|x| < 0.625` and
//! `1 − 2/(e^{2|x|} + 1)` above (exact ±1 from `|x| ≈ 9`). NaN propagates through every
//! activation (comparisons are written so that a NaN input is returned, never replaced).

use rayon::prelude::*;

use super::simd::{exp, multiversion};
use super::widen_chunks;
use crate::dtype::Element;
use crate::ops::{Activation, UnaryPlan};

/// Elements per parallel task.
const TASK: usize = 1 << 15;

/// Computes `plan` from `x` into `y` (same length, any storage type).
pub fn unary<T: Element>(plan: &UnaryPlan, x: &[T], y: &mut [T]) {
    let act = plan.activation;
    y.par_chunks_mut(TASK)
        .zip(x.par_chunks(TASK))
        .for_each(|(yc, xc)| {
            widen_chunks(xc, yc, |xs, ys| match act {
                Activation::Relu => relu(xs, ys),
                Activation::Clip { min, max } => clip(xs, ys, min, max),
                Activation::LeakyRelu { alpha } => leaky_relu(xs, ys, alpha),
                Activation::Sigmoid => sigmoid(xs, ys),
                Activation::Tanh => tanh(xs, ys),
            })
        });
}

multiversion! {
    /// `max(x, 0)`, NaN kept.
    fn relu(x: &[f32], y: &mut [f32]) {
        for (v, &xv) in y.iter_mut().zip(x) {
            *v = if xv < 0.0 { 0.0 } else { xv };
        }
    }
}

multiversion! {
    /// `min(max(x, lo), hi)`, NaN kept.
    fn clip(x: &[f32], y: &mut [f32], lo: f32, hi: f32) {
        for (v, &xv) in y.iter_mut().zip(x) {
            let t = if xv < lo { lo } else { xv };
            *v = if t > hi { hi } else { t };
        }
    }
}

multiversion! {
    /// `x` for `x ≥ 0`, `alpha·x` otherwise (NaN: `alpha·NaN`).
    fn leaky_relu(x: &[f32], y: &mut [f32], alpha: f32) {
        for (v, &xv) in y.iter_mut().zip(x) {
            *v = if xv < 0.0 { xv * alpha } else { xv };
        }
    }
}

multiversion! {
    /// The logistic function.
    fn sigmoid(x: &[f32], y: &mut [f32]) {
        for (v, &xv) in y.iter_mut().zip(x) {
            *v = sigmoid1(xv);
        }
    }
}

multiversion! {
    /// The hyperbolic tangent.
    fn tanh(x: &[f32], y: &mut [f32]) {
        for (v, &xv) in y.iter_mut().zip(x) {
            *v = tanh1(xv);
        }
    }
}

/// `1 / (1 + e^−x)` with `e = e^−|x|`: `1/(1+e)` for `x ≥ 0`, `e/(1+e)` below.
#[inline(always)]
fn sigmoid1(x: f32) -> f32 {
    let a = if x < 0.0 { -x } else { x };
    let e = exp(-a);
    let r = 1.0 / (1.0 + e);
    if x < 0.0 {
        e * r
    } else {
        r
    }
}

/// `tanh(x)`: Cephes `tanhf` (odd polynomial below 0.625, `1 − 2/(e^{2|x|} + 1)` above).
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes coefficients, as published
fn tanh1(x: f32) -> f32 {
    let a = if x < 0.0 { -x } else { x };
    let z = x * x;
    let mut p = -5.704_988_7e-3_f32;
    p = p.mul_add(z, 2.063_908_9e-2);
    p = p.mul_add(z, -5.373_971_6e-2);
    p = p.mul_add(z, 1.333_144_2e-1);
    p = p.mul_add(z, -3.333_328_2e-1);
    let small = (p * z).mul_add(x, x);
    // exp clamps its argument at 88.3: for a ≥ 44 the quotient is 0 and the result exactly 1.
    let big = 1.0 - 2.0 / (exp(a + a) + 1.0);
    let big = if x < 0.0 { -big } else { big };
    if a < 0.625 {
        small
    } else {
        big
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(got: f32, want: f64) -> f64 {
        if want == 0.0 {
            got.abs() as f64
        } else {
            ((got as f64 - want) / want).abs()
        }
    }

    #[test]
    fn sigmoid_and_tanh_match_f64() {
        let xs: Vec<f32> = (-400_000..=400_000).map(|i| i as f32 * 5e-5).collect();
        let mut y = vec![0.0; xs.len()];
        sigmoid(&xs, &mut y);
        let worst = xs
            .iter()
            .zip(&y)
            .map(|(&x, &g)| rel(g, 1.0 / (1.0 + (-(x as f64)).exp())))
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "sigmoid: worst relative error {worst:e}");
        tanh(&xs, &mut y);
        let worst = xs
            .iter()
            .zip(&y)
            .map(|(&x, &g)| rel(g, (x as f64).tanh()))
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "tanh: worst relative error {worst:e}");
        // Tiny inputs: tanh(x) ≈ x, σ(x) ≈ 1/2.
        let tiny = [1e-30f32, -1e-20, 1e-7, -3e-4, f32::MIN_POSITIVE];
        let mut y = [0.0; 5];
        tanh(&tiny, &mut y);
        for (&x, &g) in tiny.iter().zip(&y) {
            assert!(rel(g, (x as f64).tanh()) < 1e-6, "tanh({x}) = {g}");
        }
    }

    #[test]
    fn edges() {
        let x = [
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
        let mut y = [0.0; 10];
        sigmoid(&x, &mut y);
        assert_eq!(&y[..2], &[0.0, 0.0]);
        assert!(y[2] >= 0.0 && y[2] < 1e-37 && y[3] > 0.0);
        assert_eq!(&y[4..9], &[0.5, 0.5, 1.0, 1.0, 1.0]);
        assert!(y[9].is_nan());
        tanh(&x, &mut y);
        assert_eq!(&y[..4], &[-1.0; 4]);
        assert_eq!(y[4].to_bits(), 0.0f32.to_bits());
        assert_eq!(y[5], 0.0);
        assert_eq!(&y[6..9], &[1.0; 3]);
        assert!(y[9].is_nan());
        relu(&x, &mut y);
        assert_eq!(&y[..4], &[0.0; 4]);
        assert!(y[9].is_nan());
        clip(&x, &mut y, 0.0, 6.0);
        assert_eq!(&y[6..9], &[6.0; 3]);
        assert!(y[9].is_nan());
        leaky_relu(&x, &mut y, 0.1);
        assert_eq!(y[0], f32::NEG_INFINITY);
        assert_eq!(y[2], -10.0);
        assert!(y[9].is_nan());
    }
}
