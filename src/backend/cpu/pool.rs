//! CPU pooling (MaxPool, AveragePool and the global pools) plane by plane: each task takes one
//! or more `[h, w]` planes. A window pool reduces separably, `r + s` operations per output
//! element instead of `r·s`: each output row's valid input rows are reduced (`max` or `+`)
//! column by column, then the row's column taps reduce that, times the reciprocal of each
//! position's count for an average (which factors into a row part and a column part,
//! [`Inverse`]). A MaxPool reduction starts at its identity `-inf` and a NaN never wins it (a
//! window of NaNs gives `-inf`, as on the GPU). With AVX-512 and a column stride of 1 or 2,
//! [`avx512`] does it in registers, 16 output columns at a time (for a column stride of 1 the
//! other way round: each input row's column taps first, then the window's rows); unit strides
//! with an output plane of the input's size pool a small plane as one flat run of vectors
//! instead ([`flat`]). Otherwise the portable kernel ([`plane`]) goes a group of output rows at
//! a time, stage by stage: (1) each output row's reduced input rows into its padded row `v`
//! (the reduction's identity — the padding's value — on both sides, so no tap needs a range
//! check); (2) with a column stride `sw > 1`, each `v` split into its `sw` phases (columns `k,
//! k + sw, …` contiguous) so that every column tap reads one contiguous slice; (3) the column
//! taps straight into the output row.
//! Each stage reads rows the stage before stored a group earlier: a load that straddles stores
//! still in flight (the column taps' shifted reads of a row just made) would wait for them.
//! Both reductions run in fixed blocks of 16 (or 8) lanes that compile to whole vector
//! operations, a row's tail as one more block overlapping the one before (each block is
//! computed from its inputs afresh, so computing a few elements twice is harmless): pool rows
//! are short (35 wide), and a plain loop would leave much of each row to a scalar remainder.
//! FP16 input rows are widened a group at a time (in registers by [`avx512`]), and each
//! group's output rows are rounded back as they are made. Global pools reduce each contiguous
//! plane with independent lane accumulators: on AVX-512 four vectors read straight from the
//! plane (FP16 widened in registers, [`avx512::globals`]), sixteen planes' vectors then reduced
//! across their lanes together into one vector of outputs, else lane arrays folded in halves,
//! one loop per task ([`globals`]; FP16 planes widened a group at a time, so that they are
//! reduced from L1). Inside a model, a MaxPool of a convolution's blocked output reads it as it
//! is ([`blocked_max`]), and a global pool too (`super::blocked`).

#[cfg(target_arch = "x86_64")]
pub mod blocked_max;
#[cfg(target_arch = "x86_64")]
mod flat;

use rayon::prelude::*;

use super::simd::{f16_to_f32, f32_to_f16, multiversion};
use super::{narrow, widen};
use crate::dtype::{DType, Element};
use crate::ops::{PoolKind, PoolPlan};

/// Lanes of the independent accumulators of the global reductions.
const LANES: usize = 16;

/// Input plus output elements a task should hold at least.
const TASK: usize = 1 << 15;

/// Averages: the reciprocal of each window's count, which factors into a row part and a
/// column part (`count(op, oq) = rows(op) · cols(oq)`, with or without the padding counted).
struct Inverse {
    /// `1 / rows(op)` per output row (`p`; empty for MaxPool).
    rows: Vec<f32>,
    /// `1 / cols(oq)` per output column (`q`, then zeros up to a multiple of 16; empty for
    /// MaxPool).
    cols: Vec<f32>,
}

impl Inverse {
    fn new(plan: &PoolPlan) -> Self {
        if plan.kind == PoolKind::Max {
            return Inverse {
                rows: Vec::new(),
                cols: Vec::new(),
            };
        }
        let (sw, dw) = (plan.stride[1], plan.dilation[1]);
        let mut cols = vec![0usize; plan.q];
        let rows: Vec<usize> = if plan.kind == PoolKind::AverageIncludePad {
            for (oq, c) in cols.iter_mut().enumerate() {
                *c = included(oq, sw, dw, plan.s, plan.padded[1]);
            }
            (0..plan.p)
                .map(|op| included(op, plan.stride[0], plan.dilation[0], plan.r, plan.padded[0]))
                .collect()
        } else {
            // Tap `j` of a row lands inside the input for output columns `lo..hi`.
            for j in 0..plan.s {
                let (lo, hi) = taps_range(j * dw, plan.pad[1], sw, plan.w, plan.q);
                cols[lo..hi].iter_mut().for_each(|c| *c += 1);
            }
            (0..plan.p)
                .map(|op| {
                    let (lo, hi) = window_rows(plan, op);
                    hi - lo
                })
                .collect()
        };
        let inv = |c: usize| 1.0 / c as f32;
        let mut cols: Vec<f32> = cols.into_iter().map(inv).collect();
        cols.resize(plan.q.next_multiple_of(16), 0.0);
        Inverse {
            rows: rows.into_iter().map(inv).collect(),
            cols,
        }
    }

    /// Output row `op`'s reciprocal count (1 for MaxPool).
    fn row(&self, op: usize) -> f32 {
        self.rows.get(op).copied().unwrap_or(1.0)
    }
}

/// The per-plan geometry of the portable kernel ([`plane`]).
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
    /// Averages: the reciprocal counts.
    inv: &'a Inverse,
    /// Output rows [`plane`] makes together, stage by stage.
    group: usize,
}

impl<'a> Geometry<'a> {
    fn new(plan: &'a PoolPlan, inv: &'a Inverse) -> Self {
        let (sw, dw) = (plan.stride[1], plan.dilation[1]);
        let pw = (plan.pad[1] + plan.w).max((plan.q - 1) * sw + (plan.s - 1) * dw + 1);
        let phase_len = pw.div_ceil(sw);
        let taps = (0..plan.s)
            .map(|j| (j * dw % sw) * phase_len + j * dw / sw)
            .collect();
        Geometry {
            plan,
            pw,
            phase_len,
            taps,
            inv,
            group: (GROUP / pw).clamp(1, plan.p),
        }
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
        #[cfg(target_arch = "x86_64")]
        if super::avx512::supported() {
            return tasks.for_each(|(yt, xt)| {
                // SAFETY: the CPU supports AVX-512 F, BW and VL; `xt` holds `yt.len()` planes
                // (zipped chunks of `per_task` planes and outputs).
                unsafe { avx512::globals(plan.kind, plane_in, xt, yt) }
            });
        }
        return tasks.for_each_init(
            || (Vec::new(), Vec::new()),
            |(xs, ys), (yt, xt)| {
                // FP16: the task's results, rounded to the storage type at once.
                let out: &mut [f32] = if T::DTYPE == DType::F32 {
                    bytemuck::cast_slice_mut(yt)
                } else {
                    ys.resize(yt.len(), 0.0);
                    ys
                };
                if T::DTYPE == DType::F32 {
                    globals(plan.kind, plane_in, bytemuck::cast_slice(xt), out);
                } else {
                    // Widened a few planes at a time, so that they are reduced from L1.
                    let group = (GLOBAL_CHUNK / plane_in).max(1);
                    for (o, x) in out.chunks_mut(group).zip(xt.chunks(group * plane_in)) {
                        widen(x, xs);
                        globals(plan.kind, plane_in, xs, o);
                    }
                    narrow(ys, yt);
                }
            },
        );
    }
    let inv = Inverse::new(plan);
    #[cfg(target_arch = "x86_64")]
    if flat::applies(plan) {
        let kernel = flat::Flat::new(plan, &inv);
        return tasks.for_each_init(Vec::new, |h, (yt, xt)| {
            for (yp, xp) in yt.chunks_mut(plane_out).zip(xt.chunks(plane_in)) {
                kernel.plane(xp, yp, h);
            }
        });
    }
    #[cfg(target_arch = "x86_64")]
    if avx512::applies(plan) {
        let kernel = avx512::Kernel::new(plan, &inv);
        return tasks.for_each_init(Vec::new, |column, (yt, xt)| {
            for (yp, xp) in yt.chunks_mut(plane_out).zip(xt.chunks(plane_in)) {
                kernel.plane(xp, yp, column);
            }
        });
    }
    let g = Geometry::new(plan, &inv);
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
                    // A NaN never wins (the accumulators start at the identity, `-inf`).
                    plane(
                        &g,
                        xp,
                        yp,
                        scratch,
                        identity,
                        |acc, x| if x > acc { x } else { acc },
                    );
                } else {
                    plane(&g, xp, yp, scratch, identity, |acc, x| acc + x);
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
    /// at a time, stage by stage; `op(acc, x)` is the reduction and `identity` its identity,
    /// which the borders of `s.v` hold.
    fn plane[T: Element, F: Fn(f32, f32) -> f32 + Copy](
        g: &Geometry,
        x: &[T],
        y: &mut [T],
        s: &mut Scratch,
        identity: f32,
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
                rows.clear();
                rows.extend((lo..hi).map(|i| (row(o, i) - base) * w));
                widest!(w, vertical(vin, src, rows, identity, op));
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
                widest!(q, horizontal(yr, hr, &g.taps, &g.inv.cols, g.inv.row(o), op));
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

/// `v[k] = op(…op(op(identity, src[rows[0] + k]), src[rows[1] + k])…)` in blocks of `B`
/// (starting from the identity, a MaxPool's NaN input never wins).
#[inline(always)]
fn vertical<const B: usize, F: Fn(f32, f32) -> f32>(
    v: &mut [f32],
    src: &[f32],
    rows: &[usize],
    identity: f32,
    op: F,
) {
    for at in blocks::<B>(v.len()) {
        let mut acc = [identity; B];
        for &r in rows {
            let s: &[f32; B] = src[r + at..][..B].try_into().unwrap();
            for l in 0..B {
                acc[l] = op(acc[l], s[l]);
            }
        }
        v[at..at + B].copy_from_slice(&acc);
    }
}

/// `y[k] = op(h[taps[0] + k], h[taps[1] + k], …)`, times `inv[k]·scale` unless `inv` is
/// empty, in blocks of `B`.
#[inline(always)]
fn horizontal<const B: usize, F: Fn(f32, f32) -> f32>(
    y: &mut [f32],
    h: &[f32],
    taps: &[usize],
    inv: &[f32],
    scale: f32,
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
                acc[l] *= r[l] * scale;
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

/// The AVX-512 kernel, 16 output columns at a time in registers, masked loads reading the
/// columns outside the input as the identity. Column stride 1 ([`Kernel::columns`]): columns
/// first, each column tap one load shifted by `j·dilation − pad` columns, then the window's
/// rows (a 3-row window slides down in registers). Column stride 2 ([`Kernel::rows`]): rows
/// first, each output block's 32 input columns reduced over the row's window rows, split into
/// their even and odd columns (two permutes), and each column tap is its phase shifted by
/// `j·dilation / 2` lanes into the next block's (one permute; none for a tap on lane 0), so
/// no row is stored and read back.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{window_rows, Inverse};
    use crate::backend::cpu::avx512::{first, inside, load_or, store, supported};
    use crate::dtype::{DType, Element};
    use crate::ops::{PoolKind, PoolPlan};

    /// The column stride of [`Kernel::rows`] (a column stride of 1 is [`Kernel::columns`]).
    const SW: usize = 2;

    /// Whether [`Kernel`] computes `plan`: the CPU has AVX-512 F, BW and VL (the FP16 loads
    /// and stores are 16-bit masked), and the column stride is 1, or 2 with every column tap
    /// within the next block's phase (`(s − 1)·dilation / 2 ≤ 16`).
    pub fn applies(plan: &PoolPlan) -> bool {
        supported()
            && match plan.stride[1] {
                1 => true,
                2 => (plan.s - 1).saturating_mul(plan.dilation[1]) / 2 <= 16,
                _ => false,
            }
    }

    /// A plan's column taps, masks and window rows, shared by its planes.
    pub struct Kernel<'a> {
        plan: &'a PoolPlan,
        inv: &'a Inverse,
        /// Column stride 2: per column tap `j`, its phase (`j·dilation mod 2`) and its shift in
        /// lanes (`j·dilation / 2`).
        taps: Vec<(usize, usize)>,
        /// Column stride 2: per block of 16 input columns a row's phases read (2 per output
        /// block, one output block more than the row has), the lanes inside the input row.
        masks: Vec<__mmask16>,
        /// Per output row, its window's rows inside the plane ([`window_rows`]).
        windows: Vec<(usize, usize)>,
        /// Column stride 1: per block `k` of 16 output columns and column tap `j` (`k·s + j`),
        /// the lanes whose input column `16·k + l + j·dilation − pad` lies inside the row.
        shifted: Vec<__mmask16>,
    }

    impl<'a> Kernel<'a> {
        /// The kernel of `plan`, for which [`applies`] holds.
        pub fn new(plan: &'a PoolPlan, inv: &'a Inverse) -> Self {
            let dw = plan.dilation[1];
            let (pad, w) = (plan.pad[1] as isize, plan.w as isize);
            let blocks = plan.q.div_ceil(16);
            let windows = (0..plan.p).map(|o| window_rows(plan, o)).collect();
            let (mut taps, mut masks, mut shifted) = (Vec::new(), Vec::new(), Vec::new());
            if plan.stride[1] == 1 {
                shifted = (0..blocks * plan.s)
                    .map(|b| inside((16 * (b / plan.s) + b % plan.s * dw) as isize - pad, w))
                    .collect();
            } else {
                taps = (0..plan.s).map(|j| (j * dw % SW, j * dw / SW)).collect();
                masks = (0..(blocks + 1) * SW)
                    .map(|b| inside((16 * b) as isize - pad, w))
                    .collect();
            }
            Kernel {
                plan,
                inv,
                taps,
                masks,
                windows,
                shifted,
            }
        }

        /// One `[h, w]` plane `x` into its `[p, q]` output `y`; `column` is scratch (column
        /// stride 1: a block's reduced input rows, [`columns`](Self::columns)).
        pub fn plane<T: Element>(&self, x: &[T], y: &mut [T], column: &mut Vec<__m512>) {
            let plan = self.plan;
            assert!(x.len() == plan.h * plan.w && y.len() == plan.p * plan.q);
            assert!(applies(plan));
            let max = plan.kind == PoolKind::Max;
            // Three adjacent column taps (ResNet's 3×3 stride-2 MaxPool): [`rows`](Self::rows)
            // fixes them at compile time.
            let s = if plan.stride[1] == 1 || plan.dilation[1] == 1 {
                plan.s
            } else {
                0
            };
            // SAFETY: the CPU has the features (`applies`), the column stride is the one the
            // kernel is for and the slices have the plane's lengths (asserted above).
            unsafe {
                match (max, plan.stride[1], s) {
                    (true, 1, 3) => self.columns::<T, true, 3>(x, y, column),
                    (true, 1, _) => self.columns::<T, true, 0>(x, y, column),
                    (true, _, 3) => self.rows::<T, true, 3>(x, y),
                    (true, _, _) => self.rows::<T, true, 0>(x, y),
                    (false, 1, 3) => self.columns::<T, false, 3>(x, y, column),
                    (false, 1, _) => self.columns::<T, false, 0>(x, y, column),
                    (false, _, 3) => self.rows::<T, false, 3>(x, y),
                    (false, _, _) => self.rows::<T, false, 0>(x, y),
                }
            }
        }

        /// Every output row of one plane with a column stride of 1, a block of 16 output
        /// columns at a time (a small plane stays in L1 between blocks): each input row's column
        /// taps (one load per tap, shifted by `j·dilation − pad` columns, masked at the row's
        /// ends) reduced, then each output row's window rows of those reduced. A window of 3
        /// consecutive rows keeps the last three in registers as it slides down (each input
        /// row is reduced once, nothing is stored but the output); other windows reduce every
        /// input row into `column` first. `MAX` pools the maximum (else the average), `S` is
        /// the kernel's columns (0: any).
        ///
        /// # Safety
        /// The CPU must support AVX-512 F, BW and VL; `plan.stride[1] == 1`, `S` is 0 or
        /// `plan.s`; `x` holds `h·w` elements and `y` `p·q`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn columns<T: Element, const MAX: bool, const S: usize>(
            &self,
            x: &[T],
            y: &mut [T],
            column: &mut Vec<__m512>,
        ) {
            let plan = self.plan;
            let (h, w, q) = (plan.h, plan.w, plan.q);
            let s = if S > 0 { S } else { plan.s };
            let dw = plan.dilation[1];
            let identity = _mm512_set1_ps(if MAX { f32::NEG_INFINITY } else { 0.0 });
            let slides = plan.r == 3 && plan.stride[0] == 1 && plan.dilation[0] == 1;
            let yp = y.as_mut_ptr();
            for (k, masks) in self.shifted.chunks_exact(s).enumerate() {
                // Input row `i`'s column taps reduced (the identity for a row outside).
                let reduced = |i: usize| {
                    if i >= h {
                        return identity;
                    }
                    // Input column 16·k − pad of row i (lanes outside the row are not read).
                    let p = x
                        .as_ptr()
                        .wrapping_add(i * w + 16 * k)
                        .wrapping_sub(plan.pad[1]);
                    // SAFETY: only the lanes inside row i are read (the masks).
                    let tap =
                        |j: usize| unsafe { load_or(p.wrapping_add(j * dw), masks[j], identity) };
                    if MAX {
                        // From the identity: a NaN never wins.
                        (0..s).fold(identity, |acc, j| step::<MAX>(acc, tap(j)))
                    } else {
                        (1..s).fold(tap(0), |acc, j| step::<MAX>(acc, tap(j)))
                    }
                };
                let cols = if MAX {
                    identity
                } else {
                    _mm512_loadu_ps(self.inv.cols[16 * k..][..16].as_ptr())
                };
                let m = inside(0, (q - 16 * k) as isize);
                let out = |o: usize, mut acc: __m512| {
                    if !MAX {
                        acc = _mm512_mul_ps(
                            acc,
                            _mm512_mul_ps(cols, _mm512_set1_ps(self.inv.row(o))),
                        );
                    }
                    let at = yp.wrapping_add(o * q + 16 * k);
                    // SAFETY: lanes 16·k + l under the mask are below q, the row's length.
                    unsafe {
                        if m == u16::MAX {
                            store_all(at, acc)
                        } else {
                            store(at, m, acc)
                        }
                    };
                };
                if slides {
                    // Rows o − pad .. o − pad + 3 (a row above the plane wraps to ≥ h).
                    let top = 0usize.wrapping_sub(plan.pad[0]);
                    let mut win = [reduced(top), reduced(top.wrapping_add(1)), identity];
                    for o in 0..plan.p {
                        win[2] = reduced(top.wrapping_add(o + 2));
                        // The rows hold no NaN (each started at the identity or a tap).
                        out(o, step::<MAX>(step::<MAX>(win[0], win[1]), win[2]));
                        win = [win[1], win[2], identity];
                    }
                    continue;
                }
                column.clear();
                column.extend((0..h).map(reduced));
                for (o, &(lo, hi)) in self.windows.iter().enumerate() {
                    // Window rows lo..hi lie inside the plane: `top` does not wrap.
                    let top =
                        (o * plan.stride[0] + lo * plan.dilation[0]).wrapping_sub(plan.pad[0]);
                    let at = |i: usize| column[top + i * plan.dilation[0]];
                    // The rows hold no NaN (each started at the identity or a tap).
                    let acc = (1..hi - lo).fold(at(0), |acc, i| step::<MAX>(acc, at(i)));
                    out(o, if lo == hi { identity } else { acc });
                }
            }
        }

        /// Every output row of one plane with a column stride of 2: `MAX` pools the maximum
        /// (else the average); `S` is 3 for three adjacent column taps (a dilation of 1), else
        /// 0 (any taps).
        ///
        /// # Safety
        /// The CPU must support AVX-512 F, BW and VL; `plan.stride[1] == 2`, `S` is 0, or 3 with
        /// `plan.s == 3` and `plan.dilation[1] == 1`, and [`applies`] holds; `x` holds `h·w`
        /// elements and `y` `p·q`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn rows<T: Element, const MAX: bool, const S: usize>(&self, x: &[T], y: &mut [T]) {
            let plan = self.plan;
            let q = plan.q;
            let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            // Each tap's phase, shift and the permute that shifts it (lane l reads lane
            // l + shift of the phase and the next block's phase, concatenated).
            let taps: Vec<(usize, usize, __m512i)> = self
                .taps
                .iter()
                .map(|&(phase, shift)| {
                    let idx = _mm512_add_epi32(lanes, _mm512_set1_epi32(shift as i32));
                    (phase, shift, idx)
                })
                .collect();
            // A constant length for the common kernel width: its loops unroll.
            let taps = if S > 0 { &taps[..S] } else { &taps[..] };
            let ahead = taps.iter().any(|&(_, shift, _)| shift > 0);
            for ((o, yr), &(lo, hi)) in y.chunks_exact_mut(q).enumerate().zip(&self.windows) {
                // The window's first input row (no row is read when lo == hi).
                let top = (o * plan.stride[0] + lo * plan.dilation[0]).wrapping_sub(plan.pad[0]);
                let first = x.as_ptr().wrapping_add(top.wrapping_mul(plan.w));
                let row = Row {
                    first,
                    step: plan.dilation[0] * plan.w,
                    masks: &self.masks,
                    pad: plan.pad[1],
                };
                let scale = _mm512_set1_ps(self.inv.row(o));
                // SAFETY: rows lo..hi are inside the plane.
                unsafe {
                    match hi - lo {
                        3 => row.outputs::<MAX, S, 3>(3, taps, ahead, scale, &self.inv.cols, yr),
                        n => row.outputs::<MAX, S, 0>(n, taps, ahead, scale, &self.inv.cols, yr),
                    }
                }
            }
        }
    }

    /// One output row's input rows.
    struct Row<'a, T> {
        /// Column 0 of the window's first row inside the plane.
        first: *const T,
        /// Elements from one window row to the next.
        step: usize,
        /// [`Kernel::masks`].
        masks: &'a [__mmask16],
        /// The left padding.
        pad: usize,
    }

    impl<T: Element> Row<'_, T> {
        /// Input block `b` (columns `16·b − pad ..` + 16) reduced over the `n` window rows
        /// (`N` if not 0), the identity outside the input.
        ///
        /// # Safety
        /// As for [`outputs`](Self::outputs); `b` indexes `masks`.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn column<const MAX: bool, const N: usize>(&self, n: usize, b: usize) -> __m512 {
            let identity = _mm512_set1_ps(if MAX { f32::NEG_INFINITY } else { 0.0 });
            let m = self.masks[b];
            if m == 0 {
                // Wholly in the padding (the block past a row's last).
                return identity;
            }
            let p = self.first.wrapping_add(16 * b).wrapping_sub(self.pad);
            let n = if N > 0 { N } else { n };
            let reduce = |m: __mmask16| {
                // SAFETY: the caller's contract: rows 0..n from `first` are inside the plane;
                // only lanes inside the row are read (the mask).
                let row = |i: usize| unsafe { load_or(p.wrapping_add(i * self.step), m, identity) };
                if MAX {
                    // From the identity: a NaN never wins.
                    (0..n).fold(identity, |acc, i| step::<MAX>(acc, row(i)))
                } else if n == 0 {
                    identity
                } else {
                    (1..n).fold(row(0), |acc, i| step::<MAX>(acc, row(i)))
                }
            };
            // A block wholly inside the row loads unmasked (a plain load folds into the
            // reduction; a masked one is a load and a blend).
            if m == u16::MAX {
                reduce(!0)
            } else {
                reduce(m)
            }
        }

        /// Output block `k`'s phases: its 32 input columns reduced over the rows, split into
        /// their even and odd columns.
        ///
        /// # Safety
        /// As for [`column`](Self::column).
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn phases<const MAX: bool, const N: usize>(
            &self,
            n: usize,
            k: usize,
        ) -> [__m512; SW] {
            // SAFETY: the caller's contract.
            let a = unsafe { self.column::<MAX, N>(n, SW * k) };
            // SAFETY: the caller's contract.
            let b = unsafe { self.column::<MAX, N>(n, SW * k + 1) };
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
            let mut ph = [a; SW];
            ph[0] = _mm512_permutex2var_ps(a, even, b);
            ph[SW - 1] = _mm512_permutex2var_ps(a, odd, b);
            ph
        }

        /// The output row `y` from its `n` window rows (`N` if not 0): the column `taps`
        /// (phase, shift, permute; for `S = 3` three adjacent taps, unrolled) of each block,
        /// `ahead` when some tap reaches into the next block; an average times `inv` (per
        /// column, padded to whole blocks) and `scale`.
        ///
        /// # Safety
        /// The CPU must support AVX-512 F, BW and VL; `n` rows from `first`, `step` apart,
        /// are rows of the plane; `masks` covers `y`'s blocks and one more.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn outputs<const MAX: bool, const S: usize, const N: usize>(
            &self,
            n: usize,
            taps: &[(usize, usize, __m512i)],
            ahead: bool,
            scale: __m512,
            inv: &[f32],
            y: &mut [T],
        ) {
            let q = y.len();
            let taps = if S > 0 { &taps[..S] } else { taps };
            // SAFETY (the `phases` calls): the caller's contract; blocks up to ⌈q/16⌉ are
            // in `masks`.
            let blocks = q.div_ceil(16);
            let mut cur = unsafe { self.phases::<MAX, N>(n, 0) };
            for k in 0..blocks {
                // The next block's phases: read by the taps `ahead`, and its own.
                let next = if ahead || k + 1 < blocks {
                    unsafe { self.phases::<MAX, N>(n, k + 1) }
                } else {
                    cur
                };
                let tap = |&(phase, shift, idx): &(usize, usize, __m512i)| {
                    let (c, n) = if phase == 0 {
                        (cur[0], next[0])
                    } else {
                        (cur[SW - 1], next[SW - 1])
                    };
                    if shift == 0 {
                        c
                    } else {
                        _mm512_permutex2var_ps(c, idx, n)
                    }
                };
                // The window's columns hold no NaN (the column reductions start at the
                // identity), so the first tap needs no identity.
                let mut acc = tap(&taps[0]);
                if S == 3 {
                    // Taps 1 and 2 of adjacent taps: the odd phase, and the even phase shifted
                    // one lane into the next block's.
                    let shifted = _mm512_permutex2var_ps(cur[0], taps[2].2, next[0]);
                    acc = step::<MAX>(step::<MAX>(acc, cur[SW - 1]), shifted);
                } else {
                    for t in &taps[1..] {
                        acc = step::<MAX>(acc, tap(t));
                    }
                }
                if !MAX {
                    let r = _mm512_loadu_ps(inv[16 * k..][..16].as_ptr());
                    acc = _mm512_mul_ps(acc, _mm512_mul_ps(r, scale));
                }
                let m = inside(0, (q - 16 * k) as isize);
                // SAFETY: lanes 16·k + l under the mask are below q, the row's length.
                unsafe {
                    if m == u16::MAX {
                        store_all(y.as_mut_ptr().add(16 * k), acc)
                    } else {
                        store(y.as_mut_ptr().add(16 * k), m, acc)
                    }
                };
                cur = next;
            }
        }
    }

    /// The global pool of each `plane`-element plane of `x` into its element of `y`, every
    /// plane read straight from `x` (FP16 widened in registers) into four independent vectors
    /// of lanes (whole vectors unmasked, the plane's tail masked with its missing lanes the
    /// reduction's identity), which fold into one; the results leave sixteen at a time. The
    /// same maximum as [`super::global_max`] (a NaN never wins), the same [`super::mean`].
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL; `x` holds `y.len()` planes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn globals<T: Element>(kind: PoolKind, plane: usize, x: &[T], y: &mut [T]) {
        assert_eq!(x.len(), y.len() * plane);
        if kind == PoolKind::Max {
            // SAFETY: this function's contract.
            unsafe { reduce::<T, true>(plane, x, y) }
        } else {
            // SAFETY: this function's contract.
            unsafe { reduce::<T, false>(plane, x, y) }
        }
    }

    /// [`globals`] for the maximum (`MAX`) or the mean: each plane into one vector ([`short`]
    /// for planes of up to four vectors, else [`long`]), then sixteen planes' vectors into
    /// sixteen outputs at once ([`outputs`]).
    ///
    /// # Safety
    /// As for [`globals`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn reduce<T: Element, const MAX: bool>(plane: usize, x: &[T], y: &mut [T]) {
        // SAFETY (each arm): this function's contract; `short::<NF>` gets planes of `NF`
        // vectors.
        unsafe {
            match plane.div_ceil(16) {
                1 => outputs::<T, MAX>(plane, y, short::<T, MAX, 1>(plane, x)),
                2 => outputs::<T, MAX>(plane, y, short::<T, MAX, 2>(plane, x)),
                3 => outputs::<T, MAX>(plane, y, short::<T, MAX, 3>(plane, x)),
                4 => outputs::<T, MAX>(plane, y, short::<T, MAX, 4>(plane, x)),
                _ => outputs::<T, MAX>(plane, y, long::<T, MAX>(plane, x)),
            }
        }
    }

    /// Each output of `y` from `lanes(j)`, plane `j` reduced to one vector: sixteen planes'
    /// vectors into sixteen outputs at once ([`across`]: the 7×7 planes of ResNet-50's last
    /// pool, 8×2048 of them, took 0.65 of the time of one horizontal reduction and a scalar
    /// result per plane in FP32, 0.73 in FP16; two threads, Intel Xeon model 207, 5 alternated
    /// rounds), whole groups of sixteen in straight-line code that keeps the vectors in
    /// registers (a loop over them spilled them to the stack; see [`short`]).
    ///
    /// # Safety
    /// As for [`globals`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn outputs<T: Element, const MAX: bool>(
        plane: usize,
        y: &mut [T],
        lanes: impl Fn(usize) -> __m512,
    ) {
        let count = _mm512_set1_ps(plane as f32);
        let result = |v: [__m512; 16]| {
            let r = across::<MAX>(v);
            if MAX {
                r
            } else {
                _mm512_div_ps(r, count)
            }
        };
        let whole = y.len() / 16 * 16;
        for j0 in (0..whole).step_by(16) {
            let v = [
                lanes(j0),
                lanes(j0 + 1),
                lanes(j0 + 2),
                lanes(j0 + 3),
                lanes(j0 + 4),
                lanes(j0 + 5),
                lanes(j0 + 6),
                lanes(j0 + 7),
                lanes(j0 + 8),
                lanes(j0 + 9),
                lanes(j0 + 10),
                lanes(j0 + 11),
                lanes(j0 + 12),
                lanes(j0 + 13),
                lanes(j0 + 14),
                lanes(j0 + 15),
            ];
            // SAFETY: outputs j0..j0 + 16 lie in `y` (j0 + 16 ≤ whole).
            unsafe { store_all(y.as_mut_ptr().add(j0), result(v)) };
        }
        if whole < y.len() {
            let n = y.len() - whole;
            let identity = _mm512_set1_ps(if MAX { f32::NEG_INFINITY } else { 0.0 });
            let mut v = [identity; 16];
            for (k, v) in v.iter_mut().take(n).enumerate() {
                *v = lanes(whole + k);
            }
            // SAFETY: outputs whole..whole + n lie in `y`; the mask covers n < 16 lanes.
            unsafe { store(y.as_mut_ptr().add(whole), first(n), result(v)) };
        }
    }

    /// Plane `j` of `x` reduced to one vector, for planes of any size: four independent
    /// accumulators over its whole vectors from the identity, the tail masked into the last,
    /// folded `(a0 ∘ a1) ∘ (a2 ∘ a3)`.
    ///
    /// # Safety
    /// As for [`globals`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn long<T: Element, const MAX: bool>(
        plane: usize,
        x: &[T],
    ) -> impl Fn(usize) -> __m512 + '_ {
        let identity = _mm512_set1_ps(if MAX { f32::NEG_INFINITY } else { 0.0 });
        let full = plane / 16 * 16;
        move |j: usize| {
            let xp = x[j * plane..].as_ptr();
            let load = |i: usize, m: __mmask16| {
                // SAFETY: callers pass `i < plane` and a mask of lanes inside the plane; the
                // CPU supports AVX-512 F, BW and VL (this function's contract).
                unsafe { load_or(xp.add(i), m, identity) }
            };
            let mut acc = [identity; 4];
            let mut i = 0;
            while i + 64 <= full {
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = step::<MAX>(*a, load(i + 16 * k, !0));
                }
                i += 64;
            }
            for (k, i) in (i..full).step_by(16).enumerate() {
                acc[k] = step::<MAX>(acc[k], load(i, !0));
            }
            if full < plane {
                acc[3] = step::<MAX>(acc[3], load(full, first(plane - full)));
            }
            step::<MAX>(step::<MAX>(acc[0], acc[1]), step::<MAX>(acc[2], acc[3]))
        }
    }

    /// [`long`] for planes of `NF ≤ 4` vectors (ResNet-50's and MobileNetV2's 7×7 planes: 3
    /// and a lane), its masks set once and its bounds known: the sum `(v0 + v1) + (v2 + v3)`
    /// as [`long`] folds it (there each from the identity: the same values but for the sign of
    /// a zero sum), the maximum from the identity, so that a NaN never wins. (Before it and
    /// [`outputs`]' straight-line groups, with [`long`]'s loop and each group's vectors
    /// spilled, 7×7 planes took 1.2–1.4× the time; Intel Xeon model 207.)
    ///
    /// # Safety
    /// As for [`globals`]; `plane.div_ceil(16) == NF`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn short<T: Element, const MAX: bool, const NF: usize>(
        plane: usize,
        x: &[T],
    ) -> impl Fn(usize) -> __m512 + '_ {
        debug_assert_eq!(plane.div_ceil(16), NF);
        let identity = _mm512_set1_ps(if MAX { f32::NEG_INFINITY } else { 0.0 });
        let tail = first(plane - 16 * (NF - 1));
        move |j: usize| {
            let xp = x[j * plane..].as_ptr();
            let v: [__m512; NF] = std::array::from_fn(|k| {
                let m = if k + 1 == NF { tail } else { !0 };
                // SAFETY: vector `k < NF` of plane `j` lies in `x` under `m` (x holds whole
                // planes, the contract of `globals`).
                unsafe { load_or(xp.add(16 * k), m, identity) }
            });
            if MAX {
                return v.iter().fold(identity, |a, &v| step::<true>(a, v));
            }
            // v[k] ∘ v[k + 1], or v[k] alone where the plane ends at it.
            let pair = |k: usize| {
                if k + 1 < NF {
                    step::<false>(v[k], v[k + 1])
                } else {
                    v[k]
                }
            };
            if NF > 2 {
                step::<false>(pair(0), pair(2))
            } else {
                pair(0)
            }
        }
    }

    /// Sixteen vectors reduced each to one lane: lane `j` of the result is vector `j`'s lanes
    /// reduced by [`step`]. A tree of shuffles, 45 instructions where sixteen horizontal
    /// reductions take about 150: pairs of vectors interleaved by 32-bit elements, by 64-bit
    /// ones, then by 128-bit lanes twice, each level reducing the two halves it made.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn across<const MAX: bool>(v: [__m512; 16]) -> __m512 {
        // Straight-line code, as the transposes' stages (`layout::transpose8_in_lanes!`): a
        // build has left `std::array::from_fn` levels as calls through memory.
        // Per 128-bit lane: vector 2k's elements at 0 and 2, vector 2k + 1's at 1 and 3.
        let by32 = |k: usize| {
            let (p, q) = (v[2 * k], v[2 * k + 1]);
            step::<MAX>(_mm512_unpacklo_ps(p, q), _mm512_unpackhi_ps(p, q))
        };
        let a = [
            by32(0),
            by32(1),
            by32(2),
            by32(3),
            by32(4),
            by32(5),
            by32(6),
            by32(7),
        ];
        // Per 128-bit lane: vectors 4k..4k + 4 in order.
        let by64 = |k: usize| {
            let (p, q) = (_mm512_castps_pd(a[2 * k]), _mm512_castps_pd(a[2 * k + 1]));
            step::<MAX>(
                _mm512_castpd_ps(_mm512_unpacklo_pd(p, q)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(p, q)),
            )
        };
        let b = [by64(0), by64(1), by64(2), by64(3)];
        // Lanes: vectors 8k..8k + 4 twice, then 8k + 4..8k + 8 twice (k = 0, 1), and at last
        // vector j in lane j.
        let by128 = |p: __m512, q: __m512| {
            step::<MAX>(
                _mm512_shuffle_f32x4::<0x88>(p, q),
                _mm512_shuffle_f32x4::<0xdd>(p, q),
            )
        };
        by128(by128(b[0], b[1]), by128(b[2], b[3]))
    }

    /// The reduction's step: the maximum (a NaN `x` never wins: `max` returns its second
    /// operand when either is NaN) or the sum.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn step<const MAX: bool>(acc: __m512, x: __m512) -> __m512 {
        if MAX {
            _mm512_max_ps(x, acc)
        } else {
            _mm512_add_ps(acc, x)
        }
    }

    /// Stores `v` at `p` (FP16 rounded to nearest even).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL; 16 elements at `p` must be writable.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn store_all<T: Element>(p: *mut T, v: __m512) {
        // SAFETY: the caller's contract.
        unsafe {
            match T::DTYPE {
                DType::F32 => _mm512_storeu_ps(p.cast(), v),
                DType::F16 => _mm256_storeu_si256(
                    p.cast(),
                    _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v),
                ),
            }
        }
    }
}

/// FP16 elements a global pool widens at a time (16 KiB of f32).
const GLOBAL_CHUNK: usize = 4096;

multiversion! {
    /// The global pool of each `plane`-element plane of `x` into its element of `y`: the
    /// maximum ([`global_max`]) or the mean ([`global_sum`] over the count, [`mean`]).
    fn globals(kind: PoolKind, plane: usize, x: &[f32], y: &mut [f32]) {
        for (y, xp) in y.iter_mut().zip(x.chunks_exact(plane)) {
            *y = match kind {
                PoolKind::Max => global_max(xp),
                _ => mean(global_sum(xp), plane),
            };
        }
    }
}

/// A global average from its plane's sum and element count, divided in f64.
#[inline(always)]
pub(super) fn mean(sum: f32, count: usize) -> f32 {
    (sum as f64 / count as f64) as f32
}

/// Folds the `LANES` partial results in halves (a tree, not a chain of dependent steps).
#[inline(always)]
fn fold_lanes(mut acc: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for l in 0..n {
            acc[l] = op(acc[l], acc[l + n]);
        }
    }
    acc[0]
}

/// The largest element (NaN never wins; `-inf` for none).
#[inline(always)]
fn global_max(x: &[f32]) -> f32 {
    let max = |a: f32, b: f32| if b > a { b } else { a };
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = max(acc[l], c[l]);
        }
    }
    tail.iter().fold(fold_lanes(acc, max), |m, &v| max(m, v))
}

/// The sum, in `LANES` independent f32 partial sums.
#[inline(always)]
fn global_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    fold_lanes(acc, |a, b| a + b) + tail.iter().sum::<f32>()
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
