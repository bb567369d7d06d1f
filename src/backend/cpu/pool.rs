//! CPU pooling (MaxPool, AveragePool and the global pools) plane by plane: each task takes one
//! or more `[h, w]` planes (FP16 planes widened to f32 and rounded back once). A window pool
//! computes one output row at a time, separably: the window's valid input rows are reduced
//! (`max` or `+`) into one full-width row, contiguous and vectorised, then that row's column taps
//! into the output row. With a unit column stride (the common case) the whole output row is one
//! call, [`unit_stride_row`]: the reduced row sits between identity borders (the padding), so
//! each block of `LANES` output columns reduces its taps in registers with no range logic. With
//! a larger column stride, for column tap `j` the output columns whose input column lies inside
//! the plane form one range, one contiguous `max` or `+` of a slice of the row split into its
//! stride phases. Per output element that is `r + s` operations instead of `r·s`. Averages are
//! multiplied by a precomputed reciprocal of each position's count. Global pools reduce each
//! contiguous plane with independent lane accumulators.

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
    /// `q` rounded up to whole `LANES` blocks: the row length of `inv`.
    q_pad: usize,
    /// Averages: `1 / count` per output position, `p` rows of `q_pad` (the padding columns 0).
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
        let q_pad = plan.q.next_multiple_of(LANES);
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
            inv.resize(plan.p * q_pad, 0.0);
            for (op, row) in inv.chunks_exact_mut(q_pad).enumerate() {
                for (oq, v) in row[..plan.q].iter_mut().enumerate() {
                    *v = 1.0 / count(op, oq) as f32;
                }
            }
        }
        Geometry {
            plan,
            cols,
            q_pad,
            inv,
        }
    }

    /// Output row `op`'s reciprocal counts (`q_pad` long; empty for MaxPool).
    fn inv_row(&self, op: usize) -> &[f32] {
        self.inv
            .get(op * self.q_pad..(op + 1) * self.q_pad)
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

/// [`plane`] with a unit column stride: one [`unit_stride_row`] call per output row, on a
/// scratch row whose borders (the padding, and the reach of the last block's taps) hold the
/// identity.
fn unit_stride_plane(g: &Geometry, x: &[f32], y: &mut [f32], scratch: &mut Vec<f32>) {
    let plan = g.plan;
    let max = plan.kind == PoolKind::Max;
    let cols = Cols {
        lead: plan.pad[1],
        taps: plan.s,
        dilation: plan.dilation[1],
        identity: if max { f32::NEG_INFINITY } else { 0.0 },
    };
    let len = (cols.lead + plan.w).max(g.q_pad + (cols.taps - 1) * cols.dilation);
    scratch.clear();
    scratch.resize(len, cols.identity);
    for (op, yr) in y.chunks_exact_mut(plan.q).enumerate() {
        let (lo, hi) = window_rows(plan, op);
        let rows = Rows {
            // Unused when there are none (`lo == hi`), and then possibly out of the plane.
            first: (op * plan.stride[0] + lo * plan.dilation[0]).saturating_sub(plan.pad[0])
                * plan.w,
            count: hi - lo,
            step: plan.dilation[0] * plan.w,
            w: plan.w,
        };
        if max {
            // `f32::max`: a NaN in the second operand never wins (as in onnxruntime).
            unit_stride_row(x, rows, cols, scratch, yr, &[], |a, b| a.max(b));
        } else {
            unit_stride_row(x, rows, cols, scratch, yr, g.inv_row(op), |a, b| a + b);
        }
    }
}

/// One output row's valid input rows: `count` rows of `w`, the first at `x[first..]`, then every
/// `step` elements.
#[derive(Clone, Copy)]
struct Rows {
    first: usize,
    count: usize,
    step: usize,
    w: usize,
}

/// A unit-stride row's column taps: `taps` of them, `dilation` apart, over a scratch row that
/// holds the input row from `lead` (the left padding) on and `identity` (the reduction's, the
/// padding's value) around it.
#[derive(Clone, Copy)]
struct Cols {
    lead: usize,
    taps: usize,
    dilation: usize,
    identity: f32,
}

multiversion! {
    /// One output row `out` of a pool with a unit column stride, in one call (pool rows are
    /// short, so per-call work must be whole rows). The valid input `rows` are reduced by `op`
    /// into `v[lead..lead + w]` (the rest of `v` holds the identity, and is long enough for
    /// every block's taps); then each block of `LANES` output columns `o` reduces its taps
    /// `v[o + j·dilation]` in registers and, unless `inv` is empty (MaxPool), is multiplied by
    /// `inv[o]` (`inv` padded to whole blocks).
    fn unit_stride_row[F: Fn(f32, f32) -> f32](
        x: &[f32],
        rows: Rows,
        cols: Cols,
        v: &mut [f32],
        out: &mut [f32],
        inv: &[f32],
        op: F,
    ) {
        let vm = &mut v[cols.lead..cols.lead + rows.w];
        if rows.count == 0 {
            vm.fill(cols.identity);
        } else {
            vm.copy_from_slice(&x[rows.first..rows.first + rows.w]);
            for k in 1..rows.count {
                let start = rows.first + k * rows.step;
                lanes(vm, &x[start..start + rows.w], |o, s| *o = op(*o, s));
            }
        }
        for (b, block) in out.chunks_mut(LANES).enumerate() {
            let o = b * LANES;
            let mut acc = [cols.identity; LANES];
            for j in 0..cols.taps {
                let at = o + j * cols.dilation;
                let s: &[f32; LANES] = v[at..at + LANES].try_into().unwrap();
                for l in 0..LANES {
                    acc[l] = op(acc[l], s[l]);
                }
            }
            if !inv.is_empty() {
                let r: &[f32; LANES] = inv[o..o + LANES].try_into().unwrap();
                for l in 0..LANES {
                    acc[l] *= r[l];
                }
            }
            block.copy_from_slice(&acc[..block.len()]);
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
