//! CPU pooling (MaxPool, AveragePool and the global pools) plane by plane: each task takes one
//! or more `[h, w]` planes (FP16 planes widened to f32 and rounded back once). A window pool
//! reduces separably. With a unit column stride (the common case) the whole plane is reduced at
//! once, [`unit_stride_plane`]: copied between identity borders (the padding), its rows laid end
//! to end, every column tap and then every row tap is one shifted `max` or `+` over the whole
//! plane. With a larger column stride, one output row at a time: the window's valid input rows
//! are reduced (`max` or `+`) into one full-width row, contiguous and vectorised; then for column
//! tap `j` the output columns whose input column lies inside the plane form one range, one
//! contiguous `max` or `+` of a slice of that row split into its stride phases. Per output
//! element that is `r + s` operations instead of `r·s`. Averages are multiplied by a precomputed
//! reciprocal of each position's count. Global pools reduce each contiguous plane with
//! independent lane accumulators.

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
    /// Averages: `1 / count` per output position, `p` rows of `q`.
    inv: Vec<f32>,
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
        let count = |op: usize, oq: usize| match plan.kind {
            PoolKind::AverageIncludePad => {
                included(op, plan.stride[0], plan.dilation[0], plan.r, plan.padded[0])
                    * included(oq, plan.stride[1], plan.dilation[1], plan.s, plan.padded[1])
            }
            _ => {
                let (lo, hi) = window_rows(plan, op);
                (hi - lo) * cols.iter().filter(|&&(lo, hi)| lo <= oq && oq < hi).count()
            }
        };
        let mut inv = Vec::new();
        if plan.kind != PoolKind::Max {
            inv.resize(plan.p * plan.q, 0.0);
            for (op, row) in inv.chunks_exact_mut(plan.q).enumerate() {
                for (oq, v) in row.iter_mut().enumerate() {
                    *v = 1.0 / count(op, oq) as f32;
                }
            }
        }
        Geometry { plan, cols, inv }
    }

    /// Output row `op`'s reciprocal counts (`q` long; empty for MaxPool).
    fn inv_row(&self, op: usize) -> &[f32] {
        self.inv
            .get(op * self.plan.q..(op + 1) * self.plan.q)
            .unwrap_or(&[])
    }
}

/// The window taps `lo..hi` of output row `op` whose input row lies inside the plane.
fn window_rows(plan: &PoolPlan, op: usize) -> (usize, usize) {
    taps_range(
        op * plan.stride[0],
        plan.pad[0],
        plan.dilation[0],
        plan.h,
        plan.r,
    )
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
    if sw == 1 {
        return unit_stride_plane(g, x, y, scratch);
    }
    let phase_len = w.div_ceil(sw);
    scratch.resize(w + sw * phase_len, 0.0);
    let (v, phases) = scratch.split_at_mut(w);
    for (op, yr) in y.chunks_exact_mut(plan.q).enumerate() {
        yr.fill(if max { f32::NEG_INFINITY } else { 0.0 });
        let (lo, hi) = window_rows(plan, op);
        for i in lo..hi {
            let ih = op * plan.stride[0] + i * plan.dilation[0] - plan.pad[0];
            let xr = &x[ih * w..(ih + 1) * w];
            match (i == lo, max) {
                (true, _) => v.copy_from_slice(xr),
                (_, true) => max_into(v, xr),
                (_, false) => add_into(v, xr),
            }
        }
        if hi > lo {
            split_phases(phases, v, sw, phase_len);
            for (j, &(lo, hi)) in g.cols.iter().enumerate() {
                if lo == hi {
                    continue;
                }
                // Input column of output column lo (in range by construction).
                let first = lo * sw + j * plan.dilation[1] - plan.pad[1];
                // Its offset in `phases`: columns first, first + sw, … are contiguous there.
                let at = (first % sw) * phase_len + first / sw;
                let out = &mut yr[lo..hi];
                let src = &phases[at..at + out.len()];
                if max {
                    max_into(out, src);
                } else {
                    add_into(out, src);
                }
            }
        }
        if !max {
            scale(yr, g.inv_row(op));
        }
    }
}

/// [`plane`] with a unit column stride, on the whole plane at once (pool rows are short, so
/// work done row by row is mostly per-row overhead): the plane is copied into a scratch plane
/// `pp` with `identity` (the reduction's, the padding's value) around it, `pw` columns wide and
/// tall enough for every window; its rows laid end to end, a column tap is then one shift of the
/// whole plane and a row tap one shift by whole rows. So the column taps reduce `pp` into `hs`
/// (`hs[k] = op_j pp[k + j·dilation]`), the row taps reduce `hs` into `vs` (`vs[k] = op_i
/// hs[k + i·dilation·pw]`), each one long contiguous vector operation; output row `o` is row
/// `o·stride` of `vs`, times its reciprocal counts for an average. Columns past the output's `q`
/// mix values across rows and are never read.
fn unit_stride_plane(g: &Geometry, x: &[f32], y: &mut [f32], scratch: &mut Vec<f32>) {
    let plan = g.plan;
    let (max, identity) = match plan.kind {
        PoolKind::Max => (true, f32::NEG_INFINITY),
        _ => (false, 0.0),
    };
    let [top, left] = plan.pad;
    let (sh, [dh, dw]) = (plan.stride[0], plan.dilation);
    // Padded rows every window reaches, columns every output column's taps reach.
    let ph = (top + plan.h).max((plan.p - 1) * sh + (plan.r - 1) * dh + 1);
    let pw = (left + plan.w).max(plan.q + (plan.s - 1) * dw);
    let hs_len = ph * pw - (plan.s - 1) * dw;
    let vs_len = (plan.p - 1) * sh * pw + plan.q;
    scratch.resize(ph * pw + hs_len + vs_len, identity);
    let (pp, rest) = scratch.split_at_mut(ph * pw);
    let (hs, vs) = rest.split_at_mut(hs_len);
    pp.fill(identity);
    for (row, xr) in pp[top * pw..].chunks_mut(pw).zip(x.chunks_exact(plan.w)) {
        row[left..left + plan.w].copy_from_slice(xr);
    }
    let taps = Taps {
        count: plan.s,
        step: dw,
    };
    let rows = Taps {
        count: plan.r,
        step: dh * pw,
    };
    if max {
        // `f32::max`: a NaN in the second operand never wins (as in onnxruntime).
        reduce_shifted(hs, pp, taps, |a, b| a.max(b));
        reduce_shifted(vs, hs, rows, |a, b| a.max(b));
    } else {
        reduce_shifted(hs, pp, taps, |a, b| a + b);
        reduce_shifted(vs, hs, rows, |a, b| a + b);
    }
    for (o, yr) in y.chunks_exact_mut(plan.q).enumerate() {
        yr.copy_from_slice(&vs[o * sh * pw..o * sh * pw + plan.q]);
        if !max {
            scale(yr, g.inv_row(o));
        }
    }
}

/// `count` taps, `step` elements apart.
#[derive(Clone, Copy)]
struct Taps {
    count: usize,
    step: usize,
}

multiversion! {
    /// `out[k] = op(src[k], src[k + step], …)` over the `count` taps (`src` holds at least
    /// `out.len() + (count − 1)·step` elements). Plain loops: the slices are whole planes,
    /// long enough for LLVM's own vectorisation (`lanes` here compiles to gathers).
    fn reduce_shifted[F: Fn(f32, f32) -> f32](out: &mut [f32], src: &[f32], taps: Taps, op: F) {
        out.copy_from_slice(&src[..out.len()]);
        for j in 1..taps.count {
            let shifted = &src[j * taps.step..j * taps.step + out.len()];
            for (o, &s) in out.iter_mut().zip(shifted) {
                *o = op(*o, s);
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
    /// `out *= inv` elementwise.
    fn scale(out: &mut [f32], inv: &[f32]) {
        lanes(out, inv, |o, r| *o *= r);
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
