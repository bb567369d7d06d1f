//! Depthwise convolution (one input channel per group) on small maps with AVX-512, sixteen
//! output channels at a time, one per vector lane.
//!
//! The row kernel of [`super::depthwise`] puts an output row in a vector: on maps at most 8
//! wide (a MobileNet's 7×7 layers) most of its lanes are empty, and it pays its mask and loop
//! set-up per row. Here a work item is one image's block of sixteen output channels. Its
//! input channels are transposed, zero-bordered, into a `[hp, wp, 16]` frame (an input channel
//! per lane, FP16 widened on the way), so that each output position is `r·s` FMAs of whole
//! vectors — the weights one vector per tap, the bias and the fused ReLU or Clip applied in
//! registers — with no padding case, eight positions at a time. The block's results are then
//! transposed back into its sixteen output planes (FP16 rounded on the way).
//!
//! Inside a program whose activations are blocked (`super::blocked`: `[n][c/16][h·w][16]`, the
//! frame's own order) it reads a blocked input by copying its vectors into the frame and writes
//! a blocked output as the tile computes it (FP32) or rounded vector by vector (FP16): no
//! transposes, at any width ([`blocks`]).

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::avx512::{first, load, store, supported, transpose16};
use super::blocked::Layouts;
use super::scratch::Scratch;
use crate::dtype::{DType, Element};
use crate::ops::{Clamp, ConvPlan};

/// Lanes of one AVX-512 vector of f32: output channels per block.
const LANES: usize = 16;

/// Most kernel taps (`r·s`): the block's weights, a vector per tap, stay in registers.
const MAX_TAPS: usize = 25;

/// Widest output rows taken: from about half a vector up, the row kernel fills enough of its
/// lanes to run faster (MobileNetV2's 14×14 and wider maps, `eia infer --profile`, Zen 4).
const MAX_COLUMNS: usize = 8;

/// Most positions of the padded map (`hp·wp`): a block's frame (sixteen f32 per position,
/// 256 KiB at most) stays in L2.
const MAX_POSITIONS: usize = 4096;

/// Most output positions accumulated together: independent FMA chains sharing each weight
/// vector.
const POSITIONS: usize = 8;

/// Rows and columns of the padded map every window reads (from −pad).
fn padded(plan: &ConvPlan) -> (usize, usize) {
    (
        (plan.p - 1) * plan.stride[0] + (plan.r - 1) * plan.dilation[0] + 1,
        (plan.q - 1) * plan.stride[1] + (plan.s - 1) * plan.dilation[1] + 1,
    )
}

/// Whether [`depthwise`] computes `plan` (without a residual sum) on this CPU, planar.
pub fn applies(plan: &ConvPlan) -> bool {
    plan.q <= MAX_COLUMNS && fits(plan)
}

/// Whether [`depthwise`] computes `plan` with blocked activations, at any width: one output
/// channel per input channel, in whole blocks, no residual sum.
pub fn blocks(plan: &ConvPlan) -> bool {
    plan.c_per_group() == 1
        && plan.k_per_group() == 1
        && plan.k.is_multiple_of(LANES)
        && plan.sum_input().is_none()
        && fits(plan)
}

/// Whether a block's weights stay in registers and its frame in L2, on this CPU.
fn fits(plan: &ConvPlan) -> bool {
    let (hp, wp) = padded(plan);
    supported() && plan.r * plan.s <= MAX_TAPS && hp * wp <= MAX_POSITIONS
}

/// The frame geometry every block of a plan shares.
struct Geometry<'a> {
    plan: &'a ConvPlan,
    /// Padded rows and columns of the frame.
    hp: usize,
    wp: usize,
    /// Input rows and columns inside the frame (the others no window reads).
    rows: usize,
    cols: usize,
    /// Frame position of tap `(ri, si)` from its window's first, in `ri·s + si` order.
    taps: Vec<usize>,
}

impl<'a> Geometry<'a> {
    fn new(plan: &'a ConvPlan) -> Self {
        let (hp, wp) = padded(plan);
        let [dh, dw] = plan.dilation;
        let taps = (0..plan.r)
            .flat_map(|ri| (0..plan.s).map(move |si| ri * dh * wp + si * dw))
            .collect();
        Geometry {
            plan,
            hp,
            wp,
            rows: plan.h.min(hp.saturating_sub(plan.pad[0])),
            cols: plan.w.min(wp.saturating_sub(plan.pad[1])),
            taps,
        }
    }
}

/// Computes a depthwise `plan` (C/group = 1, no residual sum) on storage `T` where [`applies`]
/// holds, or [`blocks`] where `layouts` has a blocked activation: `w` holds the weights as f32,
/// `bias` the bias if any. `y` is fully written.
pub fn depthwise<T: Element>(
    plan: &ConvPlan,
    layouts: Layouts,
    x: &[T],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [T],
) {
    debug_assert!(if layouts == Layouts::default() {
        applies(plan)
    } else {
        blocks(plan)
    });
    let g = Geometry::new(plan);
    let pq = plan.p * plan.q;
    let image = plan.c * plan.h * plan.w;
    if pq == 0 || image == 0 {
        return;
    }
    let frame = g.hp * g.wp * LANES;
    // The block's results, position-major, rounded up to whole transposes.
    let results = pq.next_multiple_of(LANES) * LANES;
    y.par_chunks_mut(plan.k * pq)
        .zip(x.par_chunks(image))
        .flat_map(|(yi, xi)| {
            yi.par_chunks_mut(LANES * pq)
                .enumerate()
                .map(move |(kb, yb)| (xi, kb * LANES, yb))
        })
        .for_each_init(
            || Scratch::take(frame + results),
            |scratch, (xi, k0, yb)| {
                let (f, r) = scratch.values(frame + results).split_at_mut(frame);
                // SAFETY: `applies` or `blocks` checked the CPU and the tap count; `xi` is the
                // image's input, `yb` its output channels `k0..k0 + yb.len() / pq` (the same
                // range in either layout), and the buffers have the lengths `block` needs.
                unsafe { block(&g, layouts, xi, w, bias, k0, f, r, yb) }
            },
        );
}

/// One block: output channels `k0..k0 + y.len() / (p·q)` of one image from its input `x`, through
/// `frame` (`hp·wp·16` values) and `results` (`p·q` rounded up to 16, times 16); `x` and `y` laid
/// out as `layouts` says (blocked: sixteen channels, `y`'s block, per position).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL; `r·s ≤ MAX_TAPS`; the lengths as above; a blocked
/// `x` or `y` has whole blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn block<T: Element>(
    g: &Geometry,
    layouts: Layouts,
    x: &[T],
    w: &[f32],
    bias: Option<&[f32]>,
    k0: usize,
    frame: &mut [f32],
    results: &mut [f32],
    y: &mut [T],
) {
    let plan = g.plan;
    let (pq, rs, hw) = (plan.p * plan.q, plan.r * plan.s, plan.h * plan.w);
    let kn = y.len() / pq;
    let (kg, [pt, pl]) = (plan.k_per_group(), plan.pad);
    debug_assert!(rs <= MAX_TAPS && kn <= LANES && frame.len() == g.hp * g.wp * LANES);
    // SAFETY (whole body): every load and store below stays inside `x`, `w`, `frame`, `results`
    // and `y` by the geometry (masked lanes are neither read nor written), and the caller's
    // contract covers the CPU.
    unsafe {
        let zero = _mm512_setzero_ps();
        let fp = frame.as_mut_ptr();
        let fill = |from: usize, to: usize| {
            for at in from..to {
                _mm512_storeu_ps(fp.add(at * LANES), zero);
            }
        };
        // The border no input reaches: rows above and below, then columns left and right.
        let (top, bottom) = (pt.min(g.hp), (pt + g.rows).min(g.hp).max(pt.min(g.hp)));
        fill(0, top * g.wp);
        fill(bottom * g.wp, g.hp * g.wp);
        let (left, right) = (pl.min(g.wp), (pl + g.cols).min(g.wp).max(pl.min(g.wp)));
        for row in top..bottom {
            fill(row * g.wp, row * g.wp + left);
            fill(row * g.wp + right, (row + 1) * g.wp);
        }
        // The input: a blocked one's vectors copied, a planar one sixteen columns of sixteen
        // channels at a time, transposed into the frame.
        let channel = |l: usize| x.as_ptr().add((k0 + l) / kg * hw);
        if layouts.x {
            for ih in 0..g.rows {
                let from = x.as_ptr().add(k0 * hw + ih * plan.w * LANES);
                let to = fp.add(((ih + pt) * g.wp + pl) * LANES);
                for col in 0..g.cols {
                    _mm512_storeu_ps(to.add(col * LANES), load(from.add(col * LANES), !0));
                }
            }
        }
        for ih in (0..g.rows).filter(|_| !layouts.x) {
            for c0 in (0..g.cols).step_by(LANES) {
                let n = (g.cols - c0).min(LANES);
                // Lanes past the block's channels load nothing (an empty mask) and stay zero.
                let rows = std::array::from_fn(|l| {
                    let m = if l < kn { first(n) } else { 0 };
                    load(channel(l.min(kn - 1)).add(ih * plan.w + c0), m)
                });
                let to = fp.add(((ih + pt) * g.wp + pl + c0) * LANES);
                for (j, column) in transpose16(rows).into_iter().take(n).enumerate() {
                    _mm512_storeu_ps(to.add(j * LANES), column);
                }
            }
        }
        // The weights, a vector per tap (the block's `[kn, r·s]` weights transposed, sixteen
        // taps at a time); the bias and the clamp's bounds.
        let mut wv = [zero; MAX_TAPS];
        for t0 in (0..rs).step_by(LANES) {
            let rows = std::array::from_fn(|l| {
                let m = if l < kn { first(rs - t0) } else { 0 };
                load(w.as_ptr().add((k0 + l.min(kn - 1)) * rs + t0), m)
            });
            for (wt, v) in wv[t0..rs].iter_mut().zip(transpose16(rows)) {
                *wt = v;
            }
        }
        let b = bias.map_or(zero, |b| load(b.as_ptr().add(k0), first(kn)));
        let [lo, hi] = Clamp::bounds(plan.clamp);
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        // A blocked FP32 output is the results' own layout: the tile writes it.
        let into_y = layouts.y && T::DTYPE == DType::F32;
        let tile = Tile {
            frame: frame.as_ptr(),
            results: if into_y {
                y.as_mut_ptr().cast()
            } else {
                results.as_mut_ptr()
            },
            taps: &g.taps,
            weights: &wv[..rs],
            bias: b,
            lo,
            hi,
        };
        // Each output row in `n` runs of `len` positions (the last one overlapping the one
        // before where `len` does not divide q: recomputing a position writes the same values).
        let n = plan.q.div_ceil(POSITIONS);
        let len = plan.q.div_ceil(n);
        let sw = plan.stride[1];
        for pi in 0..plan.p {
            for j in 0..n {
                let qi = (j * len).min(plan.q - len);
                let o = pi * plan.q + qi;
                let start = pi * plan.stride[0] * g.wp + qi * sw;
                match (sw, len) {
                    (1, 8) => tile.run::<1, 8>(o, start),
                    (1, 7) => tile.run::<1, 7>(o, start),
                    (1, 6) => tile.run::<1, 6>(o, start),
                    (1, 5) => tile.run::<1, 5>(o, start),
                    (2, 8) => tile.run::<2, 8>(o, start),
                    (2, 7) => tile.run::<2, 7>(o, start),
                    (2, 6) => tile.run::<2, 6>(o, start),
                    (2, 5) => tile.run::<2, 5>(o, start),
                    (_, 8) => tile.run_strided::<8>(o, start, sw),
                    (_, 7) => tile.run_strided::<7>(o, start, sw),
                    (_, 6) => tile.run_strided::<6>(o, start, sw),
                    (_, 5) => tile.run_strided::<5>(o, start, sw),
                    (_, 4) => tile.run_strided::<4>(o, start, sw),
                    (_, 3) => tile.run_strided::<3>(o, start, sw),
                    (_, 2) => tile.run_strided::<2>(o, start, sw),
                    _ => tile.run_strided::<1>(o, start, sw),
                }
            }
        }
        // The results rounded into a blocked FP16 output, or transposed back into a planar
        // one, sixteen positions of the sixteen channels at a time.
        let yp = y.as_mut_ptr();
        if layouts.y {
            if !into_y {
                for o in 0..pq {
                    let v = _mm512_loadu_ps(results.as_ptr().add(o * LANES));
                    store(yp.add(o * LANES), !0, v);
                }
            }
            return;
        }
        for o0 in (0..pq).step_by(LANES) {
            let r =
                std::array::from_fn(|i| _mm512_loadu_ps(results.as_ptr().add((o0 + i) * LANES)));
            let m = first(pq - o0);
            for (l, v) in transpose16(r).into_iter().take(kn).enumerate() {
                store(yp.add(l * pq + o0), m, v);
            }
        }
    }
}

/// The frame, weights and epilogue of one block, for its runs of output positions.
struct Tile<'a> {
    frame: *const f32,
    /// `[p·q, 16]` results (bias added, clamped).
    results: *mut f32,
    /// See [`Geometry::taps`].
    taps: &'a [usize],
    /// One vector per tap.
    weights: &'a [__m512],
    bias: __m512,
    /// The fused clamp's bounds (infinite without one).
    lo: __m512,
    hi: __m512,
}

impl Tile<'_> {
    /// Output positions `o..o + P` of one row, whose windows start at frame position `start`
    /// and every `SW` after it.
    ///
    /// # Safety
    /// AVX-512F; the positions' windows lie inside the frame and the results have room.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn run<const SW: usize, const P: usize>(&self, o: usize, start: usize) {
        // SAFETY: the caller's contract.
        unsafe { self.run_strided::<P>(o, start, SW) }
    }

    /// [`run`](Self::run) with the column stride given at run time.
    ///
    /// # Safety
    /// As for [`run`](Self::run).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn run_strided<const P: usize>(&self, o: usize, start: usize, sw: usize) {
        // SAFETY: the caller's contract.
        unsafe {
            let at = self.frame.add(start * LANES);
            let mut acc = [self.bias; P];
            for (&tap, &wt) in self.taps.iter().zip(self.weights) {
                let x = at.add(tap * LANES);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_loadu_ps(x.add(j * sw * LANES)), wt, *a);
                }
            }
            for (j, a) in acc.into_iter().enumerate() {
                // max and min return their second operand when either is NaN: NaN stays NaN,
                // as in `Clamp::apply`.
                let v = _mm512_min_ps(self.hi, _mm512_max_ps(self.lo, a));
                _mm512_storeu_ps(self.results.add((o + j) * LANES), v);
            }
        }
    }
}
