//! CPU batch normalisation: the statistics fold (in f64) into one scale and one shift per
//! channel, then one streaming pass `y = x·a + b` split across threads by element ranges.

use rayon::prelude::*;

use super::simd::multiversion;
use super::widen_chunks;
use crate::dtype::Element;
use crate::ops::BatchNormPlan;

/// Elements per parallel task.
const TASK: usize = 1 << 15;

/// Folds scale, bias, mean, var (given widened to f32) into per-channel `(a, b)` with
/// `y = x·a + b`.
pub fn fold(plan: &BatchNormPlan, [scale, bias, mean, var]: [&[f32]; 4]) -> Vec<(f32, f32)> {
    (0..plan.c)
        .map(|ch| {
            let a = scale[ch] as f64 / (var[ch] as f64 + plan.epsilon as f64).sqrt();
            (a as f32, (bias[ch] as f64 - mean[ch] as f64 * a) as f32)
        })
        .collect()
}

/// Applies the folded affine map to `x` into `y` (same length, any storage type).
pub fn apply<T: Element>(plan: &BatchNormPlan, coef: &[(f32, f32)], x: &[T], y: &mut [T]) {
    let inner = plan.inner;
    y.par_chunks_mut(TASK)
        .zip(x.par_chunks(TASK))
        .enumerate()
        .for_each(|(t, (yc, xc))| {
            let mut e = t * TASK;
            let mut off = 0;
            while off < xc.len() {
                let (a, b) = coef[(e / inner) % plan.c];
                let run = (inner - e % inner).min(xc.len() - off);
                widen_chunks(&xc[off..off + run], &mut yc[off..off + run], |xs, ys| {
                    affine(xs, ys, a, b)
                });
                off += run;
                e += run;
            }
        });
}

multiversion! {
    /// `y = x·a + b` elementwise.
    fn affine(x: &[f32], y: &mut [f32], a: f32, b: f32) {
        for (v, &xv) in y.iter_mut().zip(x) {
            *v = xv * a + b;
        }
    }
}
