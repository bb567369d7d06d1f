//! CPU LRN over the `[n, c, inner]` view, in f32 (FP16 operands go through the f32 scratch of
//! `scratch.rs`). A task takes one image, a block of channels and a block of spatial columns;
//! it keeps the window's square sum for every column in f64 and slides it down the channels —
//! one row added and one dropped per channel, so the cost does not grow with `size` (the first
//! channel's window is summed once per task, and a channel block is never narrower than the
//! window, so that start costs at most as much as the block). Every pass runs along contiguous
//! rows and vectorises. The f64 sum keeps the adds and drops exact enough that sliding loses
//! nothing against summing each window afresh.

use rayon::prelude::*;

use super::simd::multiversion;
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
    (0..n * cblocks * iblocks)
        .into_par_iter()
        .for_each_init(Vec::new, |sum, t| {
            let (b, rest) = (t / (cblocks * iblocks), t % (cblocks * iblocks));
            let (ch0, i0) = ((rest / iblocks) * channels, (rest % iblocks) * COLS);
            let cols = COLS.min(inner - i0);
            let row = |k: usize| &x[(b * c + k) * inner + i0..][..cols];
            // The window of channel ch0: [ch0 − before, ch0 + after] within [0, c).
            sum.clear();
            sum.resize(cols, 0.0);
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
                normalize(yr, row(ch), sum, plan);
            }
        });
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

/// `y = x · (bias + scale·sum)^−beta` (a sum that rounding left a hair below 0 counts as 0, so
/// the base is never below `bias`). ONNX's default `beta = 0.75` (every LRN of AlexNet and
/// Inception) takes two square roots and one reciprocal, which vectorise, instead of `powf`
/// (a few ulp either way).
fn normalize(y: &mut [f32], x: &[f32], sum: &[f64], plan: &LrnPlan) {
    let (scale, bias, beta) = (plan.scale() as f64, plan.bias as f64, plan.beta);
    if beta == 0.75 {
        normalize_by(y, x, sum, scale, bias, |base| {
            let r = base.sqrt();
            1.0 / (r * r.sqrt())
        })
    } else {
        normalize_by(y, x, sum, scale, bias, |base| base.powf(-beta))
    }
}

multiversion! {
    /// `y = x · inv_pow(bias + scale·max(sum, 0))`.
    fn normalize_by[F: Fn(f32) -> f32](
        y: &mut [f32],
        x: &[f32],
        sum: &[f64],
        scale: f64,
        bias: f64,
        inv_pow: F,
    ) {
        for ((o, &v), &s) in y.iter_mut().zip(x).zip(sum) {
            *o = v * inv_pow((bias + scale * s.max(0.0)) as f32);
        }
    }
}
