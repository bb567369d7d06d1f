//! CPU batch normalisation: the statistics fold (in f64) into one scale and one shift per
//! channel, then one streaming pass `y = x·a + b` split across threads by element ranges: one
//! `simd::map_to` per channel run (FP16 widened and rounded in registers; non-temporal stores
//! when the pass touches more bytes than the cache keeps, `simd::Store`).

use rayon::prelude::*;

use super::simd::{map_to, Store};
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

/// Applies the folded affine map to `x` into `y` (same length, any storage type), the output
/// streamed where the op touches at least `stream_from` bytes (see [`Store::for_bytes`]).
pub fn apply<T: Element>(
    plan: &BatchNormPlan,
    coef: &[(f32, f32)],
    x: &[T],
    y: &mut [T],
    stream_from: usize,
) {
    let inner = plan.inner;
    let store = Store::for_bytes(2 * x.len() * T::DTYPE.size(), stream_from);
    y.par_chunks_mut(TASK)
        .zip(x.par_chunks(TASK))
        .enumerate()
        .for_each(|(t, (yc, xc))| {
            // The task's first element is element `at` of channel `ch`'s run; the next run
            // starts the next channel (no division per run: a run is 49 elements in a 7×7 map).
            let (mut ch, mut at) = ((t * TASK / inner) % plan.c, t * TASK % inner);
            let mut off = 0;
            while off < xc.len() {
                let (a, b) = coef[ch];
                let run = (inner - at).min(xc.len() - off);
                map_to(
                    [&xc[off..off + run]],
                    &mut yc[off..off + run],
                    store,
                    |[v]| v * a + b,
                );
                off += run;
                at = 0;
                ch = if ch + 1 == plan.c { 0 } else { ch + 1 };
            }
        });
}
