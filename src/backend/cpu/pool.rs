//! CPU pooling (MaxPool, AveragePool and the global pools) plane by plane: each task takes one
//! or more `[h, w]` planes (FP16 planes widened to f32 and rounded back once). A window pool
//! computes one output row at a time, separably: the window's input rows are reduced (`max` or
//! `+`) into one full-width row, contiguous and vectorised, then that row's column taps into
//! the output row: for column tap `j` the output columns whose input column lies inside the
//! plane form one range, so with a unit column stride each tap is one contiguous, vectorised
//! `max` or `+` of a slice (with a larger column stride, of a slice of the row split into its
//! stride phases). Per output element that is `r + s` operations instead of `r·s`. Global
//! pools reduce each contiguous plane with independent lane accumulators.

use rayon::prelude::*;

use super::simd::multiversion;
use super::{narrow, widen};
use crate::dtype::{DType, Element};
use crate::ops::{PoolKind, PoolPlan};

/// Lanes of the independent accumulators of the global reductions.
const LANES: usize = 16;

/// Input plus output elements a task should hold at least.
const TASK: usize = 1 << 15;

/// The per-plan geometry every plane shares.
struct Geometry<'a> {
    plan: &'a PoolPlan,
    /// Tap `j` of a row feeds output columns `cols[j].0 .. cols[j].1`.
    cols: Vec<(usize, usize)>,
    /// The divisor's column factor per output column (averages).
    col_count: Vec<f32>,
}

impl<'a> Geometry<'a> {
    fn new(plan: &'a PoolPlan) -> Self {
        let cols: Vec<(usize, usize)> = (0..plan.s)
            .map(|j| {
                taps_range(
                    j * plan.dilation[1],
                    plan.pad[1],
                    plan.stride[1],
                    plan.w,
                    plan.q,
                )
            })
            .collect();
        let col_count = (0..plan.q)
            .map(|oq| match plan.kind {
                PoolKind::AverageIncludePad => {
                    included(oq, plan.stride[1], plan.dilation[1], plan.s, plan.padded[1]) as f32
                }
                _ => cols.iter().filter(|&&(lo, hi)| lo <= oq && oq < hi).count() as f32,
            })
            .collect();
        Geometry {
            plan,
            cols,
            col_count,
        }
    }
}

/// The output positions `lo..hi` (of `out`) whose tap at offset `tap` (`tap = j·dilation`)
/// lands inside `[0, len)`: `o·stride + tap − pad ∈ [0, len)`.
fn taps_range(tap: usize, pad: usize, stride: usize, len: usize, out: usize) -> (usize, usize) {
    // o·stride >= pad − tap  and  o·stride < len + pad − tap.
    let lo = pad.saturating_sub(tap).div_ceil(stride).min(out);
    let hi = (len + pad).saturating_sub(tap).div_ceil(stride).min(out);
    (lo, hi.max(lo))
}

/// Taps of a window starting at padded position `o·stride` that lie below `padded`.
fn included(o: usize, stride: usize, dilation: usize, taps: usize, padded: usize) -> usize {
    padded
        .saturating_sub(o * stride)
        .div_ceil(dilation)
        .min(taps)
}

/// Computes `plan` for storage type `T`.
pub fn pool<T: Element>(plan: &PoolPlan, x: &[T], y: &mut [T]) {
    let (plane_in, plane_out) = (plan.h * plan.w, plan.p * plan.q);
    if y.is_empty() {
        return;
    }
    let geometry = if plan.global {
        None
    } else {
        Some(Geometry::new(plan))
    };
    let per_task = (TASK / (plane_in + plane_out)).max(1);
    y.par_chunks_mut(plane_out * per_task)
        .zip(x.par_chunks(plane_in * per_task))
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(xs, ys, scratch), (yt, xt)| {
                let (x, y): (&[f32], &mut [f32]) = if T::DTYPE == DType::F32 {
                    (bytemuck::cast_slice(xt), bytemuck::cast_slice_mut(yt))
                } else {
                    widen(xt, xs);
                    ys.resize(yt.len(), 0.0);
                    (xs, ys)
                };
                for (yp, xp) in y.chunks_mut(plane_out).zip(x.chunks(plane_in)) {
                    match &geometry {
                        None if plan.kind == PoolKind::Max => yp[0] = global_max(xp),
                        None => yp[0] = (global_sum(xp) as f64 / plane_in as f64) as f32,
                        Some(g) => plane(g, xp, yp, scratch),
                    }
                }
                if T::DTYPE != DType::F32 {
                    narrow(ys, yt);
                }
            },
        );
}

/// One `[h, w]` plane into its `[p, q]` output, row by row and separably: the window's input
/// rows are first reduced into one row `v` (contiguous, vectorised), then the column taps reduce
/// `v`. With a column stride `sw > 1`, `v` is first split into its `sw` phases (columns
/// `k, k + sw, …` contiguous), so that every tap still reads one contiguous slice.
fn plane(g: &Geometry, x: &[f32], y: &mut [f32], scratch: &mut Vec<f32>) {
    let plan = g.plan;
    let max = plan.kind == PoolKind::Max;
    let (w, sw) = (plan.w, plan.stride[1]);
    let phase_len = w.div_ceil(sw);
    scratch.resize(w + if sw > 1 { sw * phase_len } else { 0 }, 0.0);
    let (v, phases) = scratch.split_at_mut(w);
    for (op, yr) in y.chunks_exact_mut(plan.q).enumerate() {
        yr.fill(if max { f32::NEG_INFINITY } else { 0.0 });
        let mut rows = 0usize;
        for i in 0..plan.r {
            let Some(ih) = (op * plan.stride[0] + i * plan.dilation[0]).checked_sub(plan.pad[0])
            else {
                continue;
            };
            if ih >= plan.h {
                continue;
            }
            let xr = &x[ih * w..(ih + 1) * w];
            match (rows, max) {
                (0, _) => v.copy_from_slice(xr),
                (_, true) => max_into(v, xr),
                (_, false) => add_into(v, xr),
            }
            rows += 1;
        }
        if rows > 0 {
            let src: &[f32] = if sw > 1 {
                split_phases(phases, v, sw, phase_len);
                phases
            } else {
                v
            };
            for (j, &(lo, hi)) in g.cols.iter().enumerate() {
                if lo == hi {
                    continue;
                }
                // Input column of output column lo (in range by construction).
                let first = lo * sw + j * plan.dilation[1] - plan.pad[1];
                // Its offset in `src`: columns first, first + sw, … are contiguous there.
                let at = (first % sw) * phase_len + first / sw;
                let out = &mut yr[lo..hi];
                let src = &src[at..at + out.len()];
                if max {
                    max_into(out, src);
                } else {
                    add_into(out, src);
                }
            }
        }
        match plan.kind {
            PoolKind::Max => {}
            PoolKind::Average => divide(yr, &g.col_count, rows as f32),
            PoolKind::AverageIncludePad => {
                let rows = included(op, plan.stride[0], plan.dilation[0], plan.r, plan.padded[0]);
                divide(yr, &g.col_count, rows as f32);
            }
        }
    }
}

multiversion! {
    /// Row `src` split into its `sw` phases of `len` each in `dst` (the last ones may end
    /// short).
    fn split_phases(dst: &mut [f32], src: &[f32], sw: usize, len: usize) {
        if sw == 2 {
            let (even, odd) = dst.split_at_mut(len);
            for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(src.chunks_exact(2)) {
                *e = pair[0];
                *o = pair[1];
            }
            if src.len() % 2 == 1 {
                even[len - 1] = src[src.len() - 1];
            }
            return;
        }
        for (i, &v) in src.iter().enumerate() {
            dst[(i % sw) * len + i / sw] = v;
        }
    }
}

/// `f(o, s)` for each pair of `out` and `src` (the shorter's length), in fixed blocks of
/// `LANES` and then 8 elements that compile to whole vector operations, then one by one: rows
/// here are short (a 35-wide pool row), and a plain loop would leave all of them to its scalar
/// remainder (LLVM vectorises it `4 · LANES` elements at a time).
#[inline(always)]
fn lanes(out: &mut [f32], src: &[f32], f: impl Fn(&mut f32, f32)) {
    let n = out.len().min(src.len());
    let (mut out, mut src) = (&mut out[..n], &src[..n]);
    while out.len() >= LANES {
        let (o, rest) = out.split_at_mut(LANES);
        let o: &mut [f32; LANES] = o.try_into().unwrap();
        let s: &[f32; LANES] = src[..LANES].try_into().unwrap();
        for l in 0..LANES {
            f(&mut o[l], s[l]);
        }
        (out, src) = (rest, &src[LANES..]);
    }
    if out.len() >= 8 {
        let (o, rest) = out.split_at_mut(8);
        let o: &mut [f32; 8] = o.try_into().unwrap();
        let s: &[f32; 8] = src[..8].try_into().unwrap();
        for l in 0..8 {
            f(&mut o[l], s[l]);
        }
        (out, src) = (rest, &src[8..]);
    }
    for (o, &v) in out.iter_mut().zip(src) {
        f(o, v);
    }
}

multiversion! {
    /// `out = max(out, src)` elementwise (a NaN in `src` never wins, as in onnxruntime; `out`
    /// never holds NaN). `f32::max` stores unconditionally: a compare-and-select compiles to
    /// masked stores, which the next tap's loads of the same row cannot forward from.
    fn max_into(out: &mut [f32], src: &[f32]) {
        lanes(out, src, |o, v| *o = o.max(v));
    }
}

multiversion! {
    /// `out += src` elementwise.
    fn add_into(out: &mut [f32], src: &[f32]) {
        lanes(out, src, |o, v| *o += v);
    }
}

multiversion! {
    /// `out /= rows·cols` elementwise.
    fn divide(out: &mut [f32], cols: &[f32], rows: f32) {
        lanes(out, cols, |o, c| *o /= rows * c);
    }
}

multiversion! {
    /// The largest element (NaN never wins; `-inf` for none).
    fn global_max(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = x.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for l in 0..LANES {
                acc[l] = acc[l].max(c[l]);
            }
        }
        let mut m = f32::NEG_INFINITY;
        for &v in acc.iter().chain(tail) {
            m = if v > m { v } else { m };
        }
        m
    }
}

multiversion! {
    /// The sum, in `LANES` independent f32 partial sums.
    fn global_sum(x: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for l in 0..LANES {
                acc[l] += c[l];
            }
        }
        acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_ranges() {
        // w = 5, pad 1, stride 2, q = 3: output o reads column 2o + tap − 1.
        assert_eq!(taps_range(0, 1, 2, 5, 3), (1, 3));
        assert_eq!(taps_range(1, 1, 2, 5, 3), (0, 3));
        assert_eq!(taps_range(2, 1, 2, 5, 3), (0, 2));
        // A tap beyond every column.
        assert_eq!(taps_range(9, 0, 1, 5, 3), (0, 0));
        assert_eq!(included(2, 2, 1, 3, 6), 2);
        assert_eq!(included(0, 2, 1, 3, 6), 3);
        assert_eq!(included(3, 2, 2, 3, 7), 1);
    }
}
