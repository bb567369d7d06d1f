//! CPU pooling (MaxPool, AveragePool and the global pools) plane by plane: each task takes one
//! or more `[h, w]` planes. A window pool reduces separably in one kernel call per plane
//! ([`plane`]), a group of output rows at a time, stage by stage: (1) each output row's valid
//! input rows are reduced (`max` or `+`) into its padded row `v` (the reduction's identity —
//! the padding's value — on both sides, so no tap needs a range check); (2) with a column
//! stride `sw > 1`, each `v` is split into its `sw` phases (columns `k, k + sw, …` contiguous)
//! so that every column tap reads one contiguous slice; (3) the column taps reduce it straight
//! into the output row, times the precomputed reciprocal of each position's count for an
//! average. Per output element that is `r + s` operations instead of `r·s`. Each stage reads
//! rows the stage before stored a group earlier: a load that straddles stores still in flight
//! (the column taps' shifted reads of a row just made) would wait for them. Both reductions
//! run in fixed blocks of 16 (or 8) lanes that compile to whole vector operations, a row's tail
//! as one more block overlapping the one before (each block is computed from its inputs afresh,
//! so computing a few elements twice is harmless): pool rows are short (35 wide), and a plain
//! loop would leave much of each row to a scalar remainder. FP16 input rows are widened a group
//! at a time, and each group's output rows are rounded back as they are made. Global pools
//! reduce each contiguous plane with independent lane accumulators.

use rayon::prelude::*;

use super::simd::{f16_to_f32, f32_to_f16, multiversion};
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
    /// Width of the padded row `v`: `pad[1]` identity columns, the `w` input columns, then
    /// identity up to the last column any output column's taps reach.
    pw: usize,
    /// Length of each of the `stride[1]` phases of `v` (`pw / stride[1]`, rounded up).
    phase_len: usize,
    /// Where column tap `j` of output column 0 lies in the phases (`v` itself for a unit
    /// stride): phase `j·dilation mod sw`, element `j·dilation / sw`.
    taps: Vec<usize>,
    /// Averages: `1 / count` per output position, `p` rows of `q`.
    inv: Vec<f32>,
    /// Output rows [`plane`] makes together, stage by stage.
    group: usize,
}

impl<'a> Geometry<'a> {
    fn new(plan: &'a PoolPlan) -> Self {
        let (sw, dw) = (plan.stride[1], plan.dilation[1]);
        let pw = (plan.pad[1] + plan.w).max((plan.q - 1) * sw + (plan.s - 1) * dw + 1);
        let phase_len = pw.div_ceil(sw);
        let taps = (0..plan.s)
            .map(|j| (j * dw % sw) * phase_len + j * dw / sw)
            .collect();
        // Tap `j` of a row lands inside the input for output columns `cols[j].0 .. cols[j].1`.
        let cols: Vec<(usize, usize)> = (0..plan.s)
            .map(|j| taps_range(j * dw, plan.pad[1], sw, plan.w, plan.q))
            .collect();
        let count = |op: usize, oq: usize| match plan.kind {
            PoolKind::AverageIncludePad => {
                included(op, plan.stride[0], plan.dilation[0], plan.r, plan.padded[0])
                    * included(oq, sw, dw, plan.s, plan.padded[1])
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
        Geometry {
            plan,
            pw,
            phase_len,
            taps,
            inv,
            group: (GROUP / pw).clamp(1, plan.p),
        }
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

/// Elements of the padded rows `v` of one group of output rows (at least one row): small
/// enough for a group's rows to stay in L1.
const GROUP: usize = 2048;

/// One task's scratch for [`plane`], for a group of `g` output rows.
struct Scratch {
    /// `g` padded rows `v` (their borders stay the identity: only the middle `w` are written).
    v: Vec<f32>,
    /// The rows of `v` split into their phases (column stride > 1 only).
    phases: Vec<f32>,
    /// Offsets of one output row's valid input rows (in the plane, or in `wide`).
    rows: Vec<usize>,
    /// FP16: the group's input rows, widened.
    wide: Vec<f32>,
    /// FP16: the group's output rows before rounding.
    out: Vec<f32>,
}

/// Computes `plan` for storage type `T`.
pub fn pool<T: Element>(plan: &PoolPlan, x: &[T], y: &mut [T]) {
    let (plane_in, plane_out) = (plan.h * plan.w, plan.p * plan.q);
    if y.is_empty() {
        return;
    }
    let per_task = (TASK / (plane_in + plane_out)).max(1);
    let tasks = y
        .par_chunks_mut(plane_out * per_task)
        .zip(x.par_chunks(plane_in * per_task));
    if plan.global {
        return tasks.for_each_init(Vec::new, |xs, (yt, xt)| {
            let x: &[f32] = if T::DTYPE == DType::F32 {
                bytemuck::cast_slice(xt)
            } else {
                widen(xt, xs);
                xs
            };
            for (yp, xp) in yt.iter_mut().zip(x.chunks(plane_in)) {
                let v = match plan.kind {
                    PoolKind::Max => global_max(xp),
                    _ => (global_sum(xp) as f64 / plane_in as f64) as f32,
                };
                narrow(&[v], std::slice::from_mut(yp));
            }
        });
    }
    let g = Geometry::new(plan);
    let identity = match plan.kind {
        PoolKind::Max => f32::NEG_INFINITY,
        _ => 0.0,
    };
    let split = if plan.stride[1] > 1 {
        g.group * plan.stride[1] * g.phase_len
    } else {
        0
    };
    // FP16: the input rows a group's windows span.
    let wide = if T::DTYPE == DType::F32 {
        0
    } else {
        ((g.group - 1) * plan.stride[0] + (plan.r - 1) * plan.dilation[0] + 1) * plan.w
    };
    tasks.for_each_init(
        || Scratch {
            v: vec![identity; g.group * g.pw],
            phases: vec![identity; split],
            rows: Vec::with_capacity(plan.r),
            wide: vec![0.0; wide],
            out: vec![0.0; if wide > 0 { g.group * plan.q } else { 0 }],
        },
        |scratch, (yt, xt)| {
            for (yp, xp) in yt.chunks_mut(plane_out).zip(xt.chunks(plane_in)) {
                if plan.kind == PoolKind::Max {
                    // `f32::max`: a NaN never wins (as in onnxruntime).
                    plane(&g, xp, yp, scratch, |a, b| a.max(b));
                } else {
                    plane(&g, xp, yp, scratch, |a, b| a + b);
                }
            }
        },
    );
}

/// `$f::<B>(args…)` with the widest block `B` (16, 8 or 1 lanes) that fits in `$n` elements.
macro_rules! widest {
    ($n:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $n {
            16.. => $f::<16, _>($($arg),*),
            8.. => $f::<8, _>($($arg),*),
            _ => $f::<1, _>($($arg),*),
        }
    };
}

multiversion! {
    /// One `[h, w]` plane into its `[p, q]` output (see the module doc), `g.group` output rows
    /// at a time, stage by stage; `op` is the reduction, whose identity the borders of `s.v`
    /// hold.
    fn plane[T: Element, F: Fn(f32, f32) -> f32 + Copy](
        g: &Geometry,
        x: &[T],
        y: &mut [T],
        s: &mut Scratch,
        op: F,
    ) {
        let plan = g.plan;
        let (w, q, pw, sw, left) = (plan.w, plan.q, g.pw, plan.stride[1], plan.pad[1]);
        let f16 = T::DTYPE != DType::F32;
        let Scratch { v, phases, rows, wide, out } = s;
        // Input row of tap `i` of output row `o` (valid for `i` in `window_rows`).
        let row = |o: usize, i: usize| o * plan.stride[0] + i * plan.dilation[0] - plan.pad[0];
        for (k, yg) in y.chunks_mut(g.group * q).enumerate() {
            let o0 = k * g.group;
            let count = yg.len() / q;
            // FP32 rows are read in place; FP16 rows from `wide`, which starts at input row
            // `base`: the rows from the group's first window's top to its last window's bottom.
            let (src, base): (&[f32], usize) = if f16 {
                let base = (o0 * plan.stride[0]).saturating_sub(plan.pad[0]).min(plan.h);
                let end = ((o0 + count - 1) * plan.stride[0] + (plan.r - 1) * plan.dilation[0] + 1)
                    .saturating_sub(plan.pad[0])
                    .min(plan.h)
                    .max(base);
                let wide = &mut wide[..(end - base) * w];
                f16_to_f32(bytemuck::cast_slice(&x[base * w..end * w]), wide);
                (wide, base)
            } else {
                (bytemuck::cast_slice(x), 0)
            };
            // Stage 1: each output row's input rows reduced into its padded row.
            for (o, vr) in (o0..o0 + count).zip(v.chunks_exact_mut(pw)) {
                let (lo, hi) = window_rows(plan, o);
                let vin = &mut vr[left..left + w];
                if hi == lo {
                    vin.fill(if plan.kind == PoolKind::Max { f32::NEG_INFINITY } else { 0.0 });
                    continue;
                }
                rows.clear();
                rows.extend((lo..hi).map(|i| (row(o, i) - base) * w));
                widest!(w, vertical(vin, src, rows, op));
            }
            let v = &v[..count * pw];
            // Stage 2: a strided row split into its phases.
            let (h, h_len): (&[f32], usize) = if sw > 1 {
                let len = sw * g.phase_len;
                for (p, vr) in phases.chunks_exact_mut(len).zip(v.chunks_exact(pw)) {
                    split_phases(p, vr, sw, g.phase_len);
                }
                (phases, len)
            } else {
                (v, pw)
            };
            // Stage 3: the column taps, into the output rows.
            let ys: &mut [f32] = if f16 { &mut out[..yg.len()] } else { bytemuck::cast_slice_mut(yg) };
            for ((o, yr), hr) in (o0..).zip(ys.chunks_exact_mut(q)).zip(h.chunks(h_len)) {
                widest!(q, horizontal(yr, hr, &g.taps, g.inv_row(o), op));
            }
            if f16 {
                f32_to_f16(&out[..yg.len()], bytemuck::cast_slice_mut(yg));
            }
        }
    }
}

/// The starts of blocks `at..at + B` covering `0..n`, the last one ending at `n` (overlapping
/// the one before unless `B` divides `n`); none if `n < B`.
#[inline(always)]
fn blocks<const B: usize>(n: usize) -> impl Iterator<Item = usize> {
    let count = if n < B { 0 } else { n.div_ceil(B) };
    (0..count).map(move |k| (k * B).min(n - B))
}

/// `v[k] = op(src[rows[0] + k], src[rows[1] + k], …)` in blocks of `B`.
#[inline(always)]
fn vertical<const B: usize, F: Fn(f32, f32) -> f32>(
    v: &mut [f32],
    src: &[f32],
    rows: &[usize],
    op: F,
) {
    for at in blocks::<B>(v.len()) {
        let mut acc: [f32; B] = src[rows[0] + at..][..B].try_into().unwrap();
        for &r in &rows[1..] {
            let s: &[f32; B] = src[r + at..][..B].try_into().unwrap();
            for l in 0..B {
                acc[l] = op(acc[l], s[l]);
            }
        }
        v[at..at + B].copy_from_slice(&acc);
    }
}

/// `y[k] = op(h[taps[0] + k], h[taps[1] + k], …)`, times `inv[k]` unless `inv` is empty, in
/// blocks of `B`.
#[inline(always)]
fn horizontal<const B: usize, F: Fn(f32, f32) -> f32>(
    y: &mut [f32],
    h: &[f32],
    taps: &[usize],
    inv: &[f32],
    op: F,
) {
    for at in blocks::<B>(y.len()) {
        let mut acc: [f32; B] = h[taps[0] + at..][..B].try_into().unwrap();
        for &t in &taps[1..] {
            let s: &[f32; B] = h[t + at..][..B].try_into().unwrap();
            for l in 0..B {
                acc[l] = op(acc[l], s[l]);
            }
        }
        if !inv.is_empty() {
            let r: &[f32; B] = inv[at..][..B].try_into().unwrap();
            for l in 0..B {
                acc[l] *= r[l];
            }
        }
        y[at..at + B].copy_from_slice(&acc);
    }
}

/// Row `src` split into its `sw` phases of `len` each in `dst` (the last ones may end short).
#[inline(always)]
fn split_phases(dst: &mut [f32], src: &[f32], sw: usize, len: usize) {
    if sw == 2 {
        // 32 columns at a time into 16 even and 16 odd (two permutes), then one by one.
        let (even, odd) = dst.split_at_mut(len);
        let whole = src.len() / 32;
        for ((e, o), c) in even
            .chunks_exact_mut(16)
            .zip(odd.chunks_exact_mut(16))
            .zip(src.chunks_exact(32))
        {
            let c: &[f32; 32] = c.try_into().unwrap();
            let e: &mut [f32; 16] = e.try_into().unwrap();
            let o: &mut [f32; 16] = o.try_into().unwrap();
            for l in 0..16 {
                e[l] = c[2 * l];
                o[l] = c[2 * l + 1];
            }
        }
        for (i, &v) in src.iter().enumerate().skip(whole * 32) {
            dst[(i % 2) * len + i / 2] = v;
        }
        return;
    }
    for (i, &v) in src.iter().enumerate() {
        dst[(i % sw) * len + i / sw] = v;
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
