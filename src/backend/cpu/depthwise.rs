//! Direct CPU convolution for one input channel per group (depthwise), on FP32 or FP16 storage,
//! accumulated in FP32, one (image, output channel) at a time.
//!
//! With AVX-512 (F, BW and VL), a column stride of 1 or 2 and at most 16 kernel columns, the
//! kernel reads the input channel where it lies (`avx512`), with no copy: up to 64 outputs of
//! a row accumulate every tap in registers, each tap a masked load of the input row (FP16
//! widened in the register, or at unit stride read from an FP32 copy of the channel made first,
//! see [`WIDENED_MAX_POSITIONS`]), the mask zeroing the columns that fall into padding, and kernel
//! rows that fall into padding skipped; for stride 2 two loads are split into their even
//! columns by one permute (a 3×3 kernel's three taps from the same two loads: its even lanes,
//! its odd ones, and its even ones shifted by one lane with the next vector's first). Rows
//! clear of the top and bottom padding run two or four at a time (about eight independent
//! accumulators). Bias and the fused ReLU or Clip are applied in
//! registers and each row is stored once (FP16 rounded in the register). At stride 1 with
//! output rows as wide as the input's and not a multiple of sixteen (a MobileNet's 7×7, 14×14,
//! 28×28 and 56×56 maps), the flat kernel (`avx512::Flat`) takes the channel's outputs as one
//! row instead, so that no vector lane is left empty at a row's end.
//!
//! Otherwise (other CPUs, other geometries, and with a residual sum) each (image, channel) is
//! first copied (and widened) into a zero-bordered FP32 frame that covers every window, its
//! rows split into their column phases at a column stride above 1, so the kernel has no
//! padding cases and every tap reads consecutive values; the portable kernel (`chunks`, with
//! AVX2 `x8::chunks`) sums every tap of up to 32 outputs of a row in registers and applies
//! the epilogue on the way to one store; an FP16 output channel is rounded once from an FP32
//! buffer.

use rayon::prelude::*;

use super::conv::Addends;
use super::{narrow, Widen};
use crate::dtype::DType;
use crate::ops::{Clamp, ConvPlan};

/// Most positions of an FP16 input channel that the AVX-512 kernels read widened into an FP32
/// copy (32 KiB, in L1) at unit stride, instead of widening each value at each of its `r·s`
/// reads: MobileNetV2's 3×3 layers on 56×56 to 7×7 maps took 0.80–0.86× the time (its 3×3
/// layer at 112×112, 12544 positions, 1.05×; its stride-2 ones, whose values are read about
/// 2.25 times, 1.21–1.28×; `benches/ab.py` and `eia infer --fp16 --profile`, Intel Xeon model
/// 207, two threads).
const WIDENED_MAX_POSITIONS: usize = 8192;

/// Computes a depthwise `plan` (C/group = 1) on storage `T`, bias, residual sum and the fused
/// ReLU or Clip included. `w` holds the weights as f32. `y` is fully written; its previous
/// contents are ignored.
pub(super) fn depthwise<T: Widen>(plan: &ConvPlan, x: &[T], w: &[f32], add: Addends, y: &mut [T]) {
    let (hw, pq, rs) = (plan.h * plan.w, plan.p * plan.q, plan.r * plan.s);
    if pq == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    let flat = add.sum.is_none().then(|| avx512::Flat::new(plan)).flatten();
    #[cfg(target_arch = "x86_64")]
    if add.sum.is_none() && flat.is_none() && super::depthwise_blocked::applies(plan) {
        return super::depthwise_blocked::depthwise(plan, Default::default(), x, w, add.bias, y);
    }
    let kg = plan.k_per_group();
    #[cfg(target_arch = "x86_64")]
    let fast = avx512::applies(plan) && add.sum.is_none();
    let frame = Frame::new(plan);
    y.par_chunks_mut(pq).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(padded, widened), (row, out)| {
            let (ni, ki) = (row / plan.k, row % plan.k);
            let xc = &x[(ni * plan.c + ki / kg) * hw..][..hw];
            let b = add.bias.map(|b| b[ki]);
            let wk = &w[ki * rs..][..rs];
            #[cfg(target_arch = "x86_64")]
            if flat.is_some() || fast {
                // At unit stride an FP16 channel of at most WIDENED_MAX_POSITIONS is widened
                // once into `widened` (in L1), not at each of its r·s reads.
                let wide = (T::DTYPE == DType::F16
                    && plan.stride == [1, 1]
                    && hw <= WIDENED_MAX_POSITIONS)
                    .then(|| {
                        widened.resize(hw, 0.0);
                        T::widen(xc, widened);
                        &widened[..]
                    });
                // SAFETY: `Flat::new` (or `applies`) checked the CPU and the geometry (the
                // column stride and s); `xc` (and `wide`) is the [h, w] input channel of the
                // [p, q] output channel `out`, and `wk` holds r·s weights.
                unsafe {
                    match (&flat, wide) {
                        (Some(flat), Some(wide)) => flat.channel(plan, wide, wk, b, out),
                        (Some(flat), None) => flat.channel(plan, xc, wk, b, out),
                        (None, Some(wide)) => avx512::channel_any(plan, wide, wk, b, out),
                        (None, None) => avx512::channel_any(plan, xc, wk, b, out),
                    }
                }
                return;
            }
            padded.clear();
            padded.resize(frame.rows * frame.row + CHUNK, 0.0);
            frame.fill(plan, xc, padded, widened);
            let [lo, hi] = Clamp::bounds(plan.clamp);
            let input = Input {
                padded,
                wk,
                // x + (−0) is x for every x: a missing bias changes nothing.
                bias: b.unwrap_or(-0.0),
                sum: add.sum.map(|s| &s[row * pq..][..pq]),
                clamp: Clamp { lo, hi },
            };
            match T::DTYPE {
                DType::F32 => channel(plan, &frame, &input, bytemuck::cast_slice_mut(out)),
                DType::F16 => {
                    widened.resize(pq, 0.0);
                    channel(plan, &frame, &input, widened);
                    narrow(widened, out);
                }
            }
        },
    );
}

/// Most outputs of a row [`channel`] accumulates at once, in registers (and the slack after a
/// [`Frame`], so that the last chunk may read that many).
const CHUNK: usize = 32;

/// The zero-bordered FP32 copy of one input channel that the portable kernel reads: every
/// input position some window reads (from −pad), each row split into its `sw` column phases
/// (phase `b` holds padded columns `b, b + sw, …`), so that a tap reads the consecutive values
/// of one phase for consecutive outputs whatever the column stride.
struct Frame {
    /// Padded rows.
    rows: usize,
    /// Values per padded row: `sw` phases of `phase` values.
    row: usize,
    phase: usize,
    /// Where tap `(ri, si)` (in `ri·s + si` order) reads for output `(0, 0)`: its values for
    /// consecutive outputs of a row follow.
    taps: Vec<usize>,
}

impl Frame {
    fn new(plan: &ConvPlan) -> Self {
        let ([sh, sw], [dh, dw]) = (plan.stride, plan.dilation);
        let cols = (plan.q - 1) * sw + (plan.s - 1) * dw + 1;
        let phase = cols.div_ceil(sw);
        let row = sw * phase;
        let taps = (0..plan.r * plan.s)
            .map(|rs| {
                let col = rs % plan.s * dw;
                rs / plan.s * dh * row + col % sw * phase + col / sw
            })
            .collect();
        Frame {
            rows: (plan.p - 1) * sh + (plan.r - 1) * dh + 1,
            row,
            phase,
            taps,
        }
    }

    /// Copies (widening through `widened`) the `[h, w]` channel `xc` into the zeroed frame
    /// `padded`, clipped to it.
    fn fill<T: Widen>(
        &self,
        plan: &ConvPlan,
        xc: &[T],
        padded: &mut [f32],
        widened: &mut Vec<f32>,
    ) {
        let ([pt, pl], sw) = (plan.pad, plan.stride[1]);
        let cols = plan.w.min((self.phase * sw).saturating_sub(pl));
        if cols == 0 {
            return;
        }
        for (prow, dst) in padded.chunks_exact_mut(self.row).enumerate().skip(pt) {
            let ih = prow - pt;
            if ih >= plan.h {
                break;
            }
            let src = &xc[ih * plan.w..][..cols];
            if sw == 1 {
                T::widen(src, &mut dst[pl..pl + cols]);
                continue;
            }
            widened.resize(cols, 0.0);
            T::widen(src, widened);
            // Input column iw is padded column iw + pl, of phase (iw + pl) % sw.
            if sw == 2 {
                // In pairs, which LLVM turns into vector shuffles: the pair's first value into
                // the phase of pl, its second into the other one.
                let (b, at) = (pl % 2, [pl / 2, pl.div_ceil(2)]);
                let (lo, hi) = dst.split_at_mut(self.phase);
                let (mine, other) = if b == 0 { (lo, hi) } else { (hi, lo) };
                let (mine, other) = (&mut mine[at[0]..], &mut other[at[1]..]);
                let pairs = widened.chunks_exact(2);
                if let [last] = pairs.remainder() {
                    mine[cols / 2] = *last;
                }
                for ((m, o), pair) in mine.iter_mut().zip(other.iter_mut()).zip(pairs) {
                    (*m, *o) = (pair[0], pair[1]);
                }
                continue;
            }
            for b in 0..sw {
                let iw0 = (b + sw - pl % sw) % sw;
                let phase = &mut dst[b * self.phase + (iw0 + pl) / sw..];
                for (d, &v) in phase.iter_mut().zip(widened.iter().skip(iw0).step_by(sw)) {
                    *d = v;
                }
            }
        }
    }
}

/// What [`channel`] reads for one output channel: its input channel's [`Frame`] (with
/// [`CHUNK`] values of slack after it), its `r·s` weights, its bias, its residual sum and the
/// fused ReLU's or Clip's bounds (infinite without).
struct Input<'a> {
    padded: &'a [f32],
    wk: &'a [f32],
    bias: f32,
    sum: Option<&'a [f32]>,
    clamp: Clamp,
}

impl Input<'_> {
    /// `dst` from a chunk's sums `values` (at least as many), its outputs at `at` in the
    /// channel: bias, residual sum and ReLU or Clip, rounded as `conv::epilogue` rounds them.
    #[inline(always)]
    fn finish(&self, at: usize, values: &[f32], dst: &mut [f32]) {
        let (b, clamp) = (self.bias, self.clamp);
        match self.sum {
            None => {
                for (a, d) in values.iter().zip(dst.iter_mut()) {
                    *d = clamp.apply(a + b);
                }
            }
            Some(s) => {
                let s = &s[at..][..dst.len()];
                for ((a, d), s) in values.iter().zip(dst.iter_mut()).zip(s) {
                    *d = clamp.apply(a + b + s);
                }
            }
        }
    }
}

/// One output channel `out` `[p, q]` by chunks of as few of 8, 16 or 32 lanes as hold a row.
fn channel(plan: &ConvPlan, frame: &Frame, input: &Input, out: &mut [f32]) {
    match plan.q {
        ..=8 => chunks_of::<1>(plan, frame, input, out),
        9..=16 => chunks_of::<2>(plan, frame, input, out),
        _ => chunks_of::<{ CHUNK / 8 }>(plan, frame, input, out),
    }
}

/// [`channel`] by chunks of `8·G` outputs: [`x8::chunks`] with AVX2, else [`chunks`].
fn chunks_of<const G: usize>(plan: &ConvPlan, frame: &Frame, input: &Input, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() >= super::simd::Level::Avx2 {
        // SAFETY: the CPU supports AVX2 (the level says so).
        return unsafe { x8::chunks::<G>(plan, frame, input, out) };
    }
    chunks::<G>(plan, frame, input, out);
}

/// [`channel`] `8·G` outputs of a row at a time: every tap summed into the chunk (the values a
/// row's last chunk computes past its end are dropped), then the epilogue (bias, residual sum,
/// ReLU or Clip) on the way to one store. It runs where AVX2 does not ([`x8::chunks`] does
/// the same with AVX2 vectors: LLVM left much of this loop scalar).
fn chunks<const G: usize>(plan: &ConvPlan, frame: &Frame, input: &Input, out: &mut [f32]) {
    let Input { padded, wk, .. } = *input;
    for (pi, out_row) in out.chunks_exact_mut(plan.q).enumerate() {
        let first = &padded[pi * plan.stride[0] * frame.row..];
        for (j, dst) in out_row.chunks_mut(8 * G).enumerate() {
            let mut acc = [[0.0f32; 8]; G];
            let x = &first[j * 8 * G..];
            for (&at, &wv) in frame.taps.iter().zip(wk) {
                let xs = &x[at..at + 8 * G];
                for (g, a) in acc.iter_mut().enumerate() {
                    let xs: &[f32; 8] = xs[8 * g..8 * g + 8].try_into().expect("8 values");
                    for l in 0..8 {
                        a[l] += wv * xs[l];
                    }
                }
            }
            input.finish(pi * plan.q + j * 8 * G, acc.as_flattened(), dst);
        }
    }
}

/// The portable kernel's loop with AVX2 vectors, which LLVM did not make of it.
#[cfg(target_arch = "x86_64")]
mod x8 {
    use std::arch::x86_64::*;

    use super::{Frame, Input};
    use crate::ops::ConvPlan;

    /// [`super::chunks`] with `G` vectors of eight accumulators in registers, the same sums in
    /// the same order. (Summed in `out`, a pass over the row per tap, MobileNetV2's depthwise
    /// layers ran at 5.9 GFLOPS with AVX2 on Zen 4; `eia run --filter mobilenet_dw` with
    /// `EIA_CPU_SIMD=avx2`: 0.10–0.7 ms where LLVM's code from the portable loop took 0.3–4.5.)
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn chunks<const G: usize>(
        plan: &ConvPlan,
        frame: &Frame,
        input: &Input,
        out: &mut [f32],
    ) {
        let Input { padded, wk, .. } = *input;
        for (pi, out_row) in out.chunks_exact_mut(plan.q).enumerate() {
            let first = &padded[pi * plan.stride[0] * frame.row..];
            for (j, dst) in out_row.chunks_mut(8 * G).enumerate() {
                let x = &first[j * 8 * G..];
                let mut acc = [_mm256_setzero_ps(); G];
                for (&at, &wv) in frame.taps.iter().zip(wk) {
                    let xs = &x[at..at + 8 * G];
                    let w = _mm256_set1_ps(wv);
                    for (g, a) in acc.iter_mut().enumerate() {
                        // SAFETY: 8·g + 8 ≤ 8·G values of `xs`; an unaligned load.
                        let v = unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * g)) };
                        *a = _mm256_add_ps(*a, _mm256_mul_ps(w, v));
                    }
                }
                let mut values = [[0.0f32; 8]; G];
                for (v, a) in values.iter_mut().zip(acc) {
                    // SAFETY: eight f32 at `v`; an unaligned store.
                    unsafe { _mm256_storeu_ps(v.as_mut_ptr(), a) };
                }
                input.finish(pi * plan.q + j * 8 * G, values.as_flattened(), dst);
            }
        }
    }
}

/// The AVX-512 kernel: sixteen outputs of a row accumulate every tap in one register, read
/// from the unpadded input channel by masked loads, and are stored once (a masked store
/// finishes the row).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::backend::cpu::avx512::{first, inside, load, store, supported};
    use crate::dtype::Element;
    use crate::ops::{Clamp, ConvPlan};

    /// Most kernel columns [`channel`] takes (its masks are on the stack).
    const MAX_S: usize = 16;

    /// Whether [`channel`] computes `plan`: the CPU has AVX-512 F, BW and VL (the FP16 loads
    /// and stores are 16-bit masked), the column stride is 1 or 2 and the kernel at most
    /// [`MAX_S`] columns wide.
    pub fn applies(plan: &ConvPlan) -> bool {
        supported() && matches!(plan.stride[1], 1 | 2) && plan.s <= MAX_S
    }

    /// [`channel`] for the plan's column stride (1 or 2).
    ///
    /// # Safety
    /// As for [`channel`], whose `SW` is the column stride.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn channel_any<X: Element, Y: Element>(
        plan: &ConvPlan,
        xc: &[X],
        wk: &[f32],
        bias: Option<f32>,
        out: &mut [Y],
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            match plan.stride[1] {
                1 => channel::<X, Y, 1>(plan, xc, wk, bias, out),
                _ => channel::<X, Y, 2>(plan, xc, wk, bias, out),
            }
        }
    }

    /// One output channel `out` `[p, q]` from its `[h, w]` input channel `xc` and `r·s`
    /// weights `wk`, for column stride `SW` (1 or 2), in blocks of up to 64 output columns.
    /// Tap (ri, si) of output (pi, j) reads input row `pi·sh + ri·dh − pt` (kernel rows
    /// outside the input are skipped) at column `SW·j + si·dw − pl` (columns outside the input
    /// are masked: zero). For `SW = 2` the 32 columns from `2·j0 + si·dw − pl` are loaded and
    /// their even lanes kept.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL; the column stride must be `SW` and
    /// `s ≤ MAX_S`; `xc` must hold `h·w` elements and `out` `p·q`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn channel<X: Element, Y: Element, const SW: usize>(
        plan: &ConvPlan,
        xc: &[X],
        wk: &[f32],
        bias: Option<f32>,
        out: &mut [Y],
    ) {
        debug_assert_eq!(plan.stride[1], SW);
        debug_assert!(plan.s <= MAX_S && xc.len() == plan.h * plan.w);
        let w = plan.w as isize;
        for q0 in (0..plan.q).step_by(4 * 16) {
            let lanes = (plan.q - q0).min(4 * 16);
            // The input column of lane 0 of this block's first vector, and for each tap
            // column and vector the lanes inside the input row (for SW = 2, of both loads).
            let c0 = (SW * q0) as isize - plan.pad[1] as isize;
            let mut masks = [[[0; 2]; 4]; MAX_S];
            for (si, m) in masks.iter_mut().enumerate().take(plan.s) {
                for (v, m) in m.iter_mut().enumerate() {
                    let c = c0 + (SW * 16 * v + si * plan.dilation[1]) as isize;
                    *m = [inside(c, w), inside(c + 16, w)];
                }
            }
            let block = Block {
                plan,
                xc,
                wk,
                bias: bias.unwrap_or(0.0),
                masks: &masks,
                c0,
                q0,
                lanes,
            };
            // SAFETY: the caller's contract, and the block's masks.
            unsafe {
                // Rows at a time: about eight accumulators.
                match lanes.div_ceil(16) {
                    1 => block.rows::<Y, SW, 1, 4>(out),
                    2 => block.rows::<Y, SW, 2, 4>(out),
                    3 => block.rows::<Y, SW, 3, 2>(out),
                    _ => block.rows::<Y, SW, 4, 2>(out),
                }
            }
        }
    }

    /// Columns `q0..q0 + lanes` of every output row of one channel.
    struct Block<'a, X> {
        plan: &'a ConvPlan,
        xc: &'a [X],
        wk: &'a [f32],
        bias: f32,
        /// Per tap column and vector, the lanes of its (two, for stride 2) loads inside the
        /// input row.
        masks: &'a [[[__mmask16; 2]; 4]; MAX_S],
        /// The input column of tap column 0, lane 0 of the first vector.
        c0: isize,
        q0: usize,
        lanes: usize,
    }

    impl<X: Element> Block<'_, X> {
        /// The block in `V` vectors (`16·(V − 1) < lanes ≤ 16·V`) of `out`'s rows: rows whose
        /// every kernel row lies inside the input `R` at a time (`R·V` independent
        /// accumulators sharing each broadcast weight: short rows are not bound by one
        /// accumulator's FMA latency), the others one at a time.
        ///
        /// # Safety
        /// As for [`channel`]; `V` vectors cover `lanes`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn rows<Y: Element, const SW: usize, const V: usize, const R: usize>(
            &self,
            out: &mut [Y],
        ) {
            let plan = self.plan;
            let (sh, dh, pt) = (plan.stride[0], plan.dilation[0], plan.pad[0]);
            // Rows pa..pb read only input rows: pi·sh ≥ pt and pi·sh + (r − 1)·dh < pt + h.
            let span = (plan.r - 1) * dh;
            let pa = pt.div_ceil(sh).min(plan.p);
            let pb = (pt + plan.h)
                .checked_sub(span + 1)
                .map_or(0, |last| last / sh + 1)
                .clamp(pa, plan.p);
            let mut pi = 0;
            while pi < plan.p {
                let rows = &mut out[pi * plan.q..];
                // SAFETY: the caller's contract; rows pi..pi + R are inside the input.
                unsafe {
                    if pi >= pa && pi + R <= pb {
                        self.row_group::<Y, SW, V, R>(pi, rows);
                        pi += R;
                    } else {
                        self.row_group::<Y, SW, V, 1>(pi, rows);
                        pi += 1;
                    }
                }
            }
        }

        /// Output rows `pi..pi + R` of the block, in `out` from row `pi`. Their kernel rows
        /// are those of row `pi` that read input rows (all of them when `R > 1`).
        ///
        /// # Safety
        /// As for [`rows`](Self::rows); when `R > 1`, every kernel row of rows `pi..pi + R`
        /// lies inside the input.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn row_group<Y: Element, const SW: usize, const V: usize, const R: usize>(
            &self,
            pi: usize,
            out: &mut [Y],
        ) {
            let plan = self.plan;
            let (sh, [dh, dw], pt) = (plan.stride[0], plan.dilation, plan.pad[0]);
            let b = _mm512_set1_ps(self.bias);
            // The fused ReLU or Clip (conv's epilogue), applied in registers; without one,
            // the infinite bounds change nothing.
            let [lo, hi] = Clamp::bounds(plan.clamp);
            let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            // Kernel rows r0..r1 read input rows: pi·sh + ri·dh ∈ pt..pt + h.
            let top = pi * sh;
            let r0 = pt.saturating_sub(top).div_ceil(dh).min(plan.r);
            let r1 = (pt + plan.h).saturating_sub(top).div_ceil(dh).min(plan.r);
            debug_assert!(R == 1 || (r0, r1) == (0, plan.r));
            let mut acc = [[b; V]; R];
            if SW == 2 && plan.s == 3 && dw == 1 {
                // SAFETY: as below.
                unsafe { self.stride2_taps::<V, R>(pi, r0..r1, &mut acc) };
            } else {
                for ri in r0..r1 {
                    // Input row of kernel row ri for output row pi, from the block's first column;
                    // output row pi + g reads g·sh rows further.
                    let row = self
                        .xc
                        .as_ptr()
                        .wrapping_add((top + ri * dh - pt) * plan.w)
                        .wrapping_offset(self.c0);
                    let wr = &self.wk[ri * plan.s..][..plan.s];
                    for (si, (&wv, m)) in wr.iter().zip(self.masks).enumerate() {
                        let wv = _mm512_set1_ps(wv);
                        for (g, acc) in acc.iter_mut().enumerate() {
                            let p = row.wrapping_add(g * sh * plan.w + si * dw);
                            for v in 0..V {
                                // SAFETY: only lanes inside the input row are read (the masks).
                                let x = unsafe {
                                    let x = load(p.wrapping_add(SW * 16 * v), m[v][0]);
                                    if SW == 1 {
                                        x
                                    } else {
                                        let x1 = load(p.wrapping_add(SW * 16 * v + 16), m[v][1]);
                                        _mm512_permutex2var_ps(x, even, x1)
                                    }
                                };
                                acc[v] = _mm512_fmadd_ps(wv, x, acc[v]);
                            }
                        }
                    }
                }
            }
            for (g, acc) in acc.iter().enumerate() {
                let out_row = &mut out[g * plan.q..][..plan.q];
                for (v, &acc) in acc.iter().enumerate() {
                    // max and min return their second operand when either is NaN: NaN stays
                    // NaN, as in `Clamp::apply`.
                    let y = _mm512_min_ps(hi, _mm512_max_ps(lo, acc));
                    let m = first(self.lanes.saturating_sub(16 * v));
                    // SAFETY: lanes q0 + 16·v + l with l under the mask are below q, the
                    // row's length; masked lanes are not written.
                    unsafe { store(out_row.as_mut_ptr().wrapping_add(self.q0 + 16 * v), m, y) };
                }
            }
        }

        /// Adds kernel rows `rows` of output rows `pi..pi + R` to `acc`, for column stride 2
        /// and three kernel columns one apart: each vector's 32 input columns are loaded once
        /// and split into their even and odd lanes (taps 0 and 1), and tap 2 is the even lanes
        /// one further, taken from the next vector's (the extra one a load of 16 columns). Two
        /// loads a vector per kernel row, not six: `eia run --filter dw_3x3s2`, Zen 4, two
        /// threads, 3 alternated rounds, 0.54–0.72× the time of three pairs of loads.
        ///
        /// # Safety
        /// As for [`row_group`](Self::row_group), with `plan.s = 3`, column stride 2 and
        /// column dilation 1.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn stride2_taps<const V: usize, const R: usize>(
            &self,
            pi: usize,
            rows: std::ops::Range<usize>,
            acc: &mut [[__m512; V]; R],
        ) {
            let plan = self.plan;
            let (sh, dh, pt, w) = (plan.stride[0], plan.dilation[0], plan.pad[0], plan.w);
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
            // Tap column 0's masks: lanes of each vector's two loads inside the input row; and
            // of the load past the last vector.
            let m = &self.masks[0];
            let tail = inside(self.c0 + (32 * V) as isize, w as isize);
            for ri in rows {
                let row = self
                    .xc
                    .as_ptr()
                    .wrapping_add((pi * sh + ri * dh - pt) * w)
                    .wrapping_offset(self.c0);
                let [w0, w1, w2] = [0, 1, 2].map(|si| _mm512_set1_ps(self.wk[ri * 3 + si]));
                for (g, acc) in acc.iter_mut().enumerate() {
                    let p = row.wrapping_add(g * sh * w);
                    let mut evens = [_mm512_setzero_ps(); V];
                    let mut odds = [_mm512_setzero_ps(); V];
                    for v in 0..V {
                        // SAFETY: only lanes inside the input row are read (the masks).
                        let (x0, x1) = unsafe {
                            (
                                load(p.wrapping_add(32 * v), m[v][0]),
                                load(p.wrapping_add(32 * v + 16), m[v][1]),
                            )
                        };
                        evens[v] = _mm512_permutex2var_ps(x0, even, x1);
                        odds[v] = _mm512_permutex2var_ps(x0, odd, x1);
                    }
                    // SAFETY: as above.
                    let past = unsafe { load(p.wrapping_add(32 * V), tail) };
                    for v in 0..V {
                        let next = if v + 1 < V { evens[v + 1] } else { past };
                        // Lanes 1..16 of this vector's evens, then lane 0 of the next's.
                        let shifted = _mm512_castsi512_ps(_mm512_alignr_epi32::<1>(
                            _mm512_castps_si512(next),
                            _mm512_castps_si512(evens[v]),
                        ));
                        acc[v] = _mm512_fmadd_ps(w0, evens[v], acc[v]);
                        acc[v] = _mm512_fmadd_ps(w1, odds[v], acc[v]);
                        acc[v] = _mm512_fmadd_ps(w2, shifted, acc[v]);
                    }
                }
            }
        }
    }

    /// Most (vector, tap) masks a [`Flat`] keeps (16 KiB): larger maps, whose rows fill
    /// vectors, stay with the row kernel.
    const MAX_MASKS: usize = 8192;

    /// Most vectors of outputs accumulated together (independent FMA chains sharing each
    /// broadcast weight).
    const MAX_VECTORS: usize = 8;

    /// The flat kernel, at stride 1 where `q = w` is not a multiple of sixteen (the row kernel
    /// would leave lanes of every row's last vector empty): a channel's `[p, q]` outputs taken
    /// as one row of `p·q`, sixteen to a vector whatever the row boundaries, read from the
    /// input channel in place. Since the output and input rows are equally wide, each tap reads
    /// the input at a fixed offset from the output's flat index, under a mask (shared by every
    /// channel) that zeroes the lanes whose input falls into padding.
    pub struct Flat {
        /// Per tap (`ri·s + si`), its input's offset from the output's flat index.
        taps: Vec<isize>,
        /// Vectors per group of outputs accumulated together.
        vectors: usize,
        /// Per group of `vectors` vectors (the groups cover `p·q`), tap and vector (in that
        /// order), the lanes whose input is inside.
        masks: Vec<__mmask16>,
    }

    impl Flat {
        /// The flat kernel's geometry for `plan`, where it applies: AVX-512 F, BW and VL,
        /// stride 1, `q = w` not a multiple of 16, and at most [`MAX_MASKS`] masks.
        pub fn new(plan: &ConvPlan) -> Option<Flat> {
            let ([dh, dw], [pt, pl]) = (plan.dilation, plan.pad);
            let (pq, rs) = (plan.p * plan.q, plan.r * plan.s);
            let all = pq.div_ceil(16);
            if !supported()
                || plan.stride != [1, 1]
                || plan.q != plan.w
                || plan.q.is_multiple_of(16)
                || pq == 0
                || all * rs > MAX_MASKS
            {
                return None;
            }
            // At least four vectors (or all) to a group, then the fewest vectors of padding,
            // then the widest group.
            let vectors = (4.min(all)..=MAX_VECTORS.min(all))
                .min_by_key(|&v| (all.div_ceil(v) * v, usize::MAX - v))
                .unwrap_or(1);
            let groups = all.div_ceil(vectors);
            let n = groups * vectors;
            // Per kernel column, the vectors' lanes whose input column is inside; per kernel
            // row, the range of flat outputs whose input row is.
            let mut col_masks = vec![vec![0 as __mmask16; n]; plan.s];
            for (si, m) in col_masks.iter_mut().enumerate() {
                // The output columns lo..hi of every row read inside the input row.
                let dj = (si * dw) as isize - pl as isize;
                let lo = (-dj).clamp(0, plan.q as isize) as usize;
                let hi = (plan.w as isize - dj).clamp(lo as isize, plan.q as isize) as usize;
                for row in (0..pq).step_by(plan.q) {
                    let (a, b) = (row + lo, row + hi);
                    for (v, m) in m.iter_mut().enumerate().take(b.div_ceil(16)).skip(a / 16) {
                        *m |= first(b.saturating_sub(16 * v)) & !first(a.saturating_sub(16 * v));
                    }
                }
            }
            let mut taps = Vec::with_capacity(rs);
            let mut row_ranges = Vec::with_capacity(plan.r);
            for ri in 0..plan.r {
                let di = (ri * dh) as isize - pt as isize;
                let lo = (-di).clamp(0, plan.p as isize);
                let hi = (plan.h as isize - di).clamp(lo, plan.p as isize);
                row_ranges.push((lo as usize * plan.q, hi as usize * plan.q));
                for si in 0..plan.s {
                    taps.push(di * plan.w as isize + (si * dw) as isize - pl as isize);
                }
            }
            let mut masks = Vec::with_capacity(n * rs);
            for g in 0..groups {
                for t in 0..rs {
                    let (lo, hi) = row_ranges[t / plan.s];
                    let cols = &col_masks[t % plan.s][g * vectors..][..vectors];
                    for (v, &cols) in (g * vectors..).zip(cols) {
                        let at = 16 * v;
                        let rows = first(hi.saturating_sub(at)) & !first(lo.saturating_sub(at));
                        masks.push(cols & rows);
                    }
                }
            }
            Some(Flat {
                taps,
                vectors,
                masks,
            })
        }

        /// One output channel `out` `[p, q]` from its `[h, w]` input channel `xc` and `r·s`
        /// weights `wk`, in groups of [`Flat::vectors`] vectors.
        ///
        /// # Safety
        /// The CPU must support AVX-512 F, BW and VL; `self` must be `plan`'s; `xc` must
        /// hold `h·w` elements and `out` `p·q`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        pub unsafe fn channel<X: Element, Y: Element>(
            &self,
            plan: &ConvPlan,
            xc: &[X],
            wk: &[f32],
            bias: Option<f32>,
            out: &mut [Y],
        ) {
            debug_assert!(xc.len() == plan.h * plan.w && out.len() == plan.p * plan.q);
            // SAFETY: the caller's contract.
            unsafe {
                match self.vectors {
                    1 => self.groups::<X, Y, 1>(plan, xc, wk, bias, out),
                    2 => self.groups::<X, Y, 2>(plan, xc, wk, bias, out),
                    3 => self.groups::<X, Y, 3>(plan, xc, wk, bias, out),
                    4 => self.groups::<X, Y, 4>(plan, xc, wk, bias, out),
                    5 => self.groups::<X, Y, 5>(plan, xc, wk, bias, out),
                    6 => self.groups::<X, Y, 6>(plan, xc, wk, bias, out),
                    7 => self.groups::<X, Y, 7>(plan, xc, wk, bias, out),
                    _ => self.groups::<X, Y, 8>(plan, xc, wk, bias, out),
                }
            }
        }

        /// [`channel`](Self::channel) with `V` = [`Flat::vectors`].
        ///
        /// # Safety
        /// As for [`channel`](Self::channel).
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn groups<X: Element, Y: Element, const V: usize>(
            &self,
            plan: &ConvPlan,
            xc: &[X],
            wk: &[f32],
            bias: Option<f32>,
            out: &mut [Y],
        ) {
            let pq = plan.p * plan.q;
            let b = _mm512_set1_ps(bias.unwrap_or(0.0));
            // The fused ReLU or Clip, as in `Block::row_group`.
            let [lo, hi] = Clamp::bounds(plan.clamp);
            let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
            let rs = self.taps.len();
            for (g, masks) in self.masks.chunks_exact(rs * V).enumerate() {
                let o0 = 16 * V * g;
                let mut acc = [b; V];
                for ((&offset, &wt), m) in self.taps.iter().zip(wk).zip(masks.chunks_exact(V)) {
                    let wv = _mm512_set1_ps(wt);
                    let p = xc.as_ptr().wrapping_offset(offset + o0 as isize);
                    for v in 0..V {
                        // SAFETY: only lanes whose input is inside the channel are read.
                        let x = unsafe { load(p.wrapping_add(16 * v), m[v]) };
                        acc[v] = _mm512_fmadd_ps(wv, x, acc[v]);
                    }
                }
                for (v, &acc) in acc.iter().enumerate() {
                    let y = _mm512_min_ps(hi, _mm512_max_ps(lo, acc));
                    let at = o0 + 16 * v;
                    let m = first(pq.saturating_sub(at));
                    // SAFETY: lanes under the mask are below p·q.
                    unsafe { store(out.as_mut_ptr().wrapping_add(at), m, y) };
                }
            }
        }
    }
}
