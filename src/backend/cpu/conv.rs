//! CPU convolution. Grouped/dense convolutions lower to GEMM per (image, group) and block of
//! output columns: `Y[k, j0..j1] = W[k, c·r·s] · col[c·r·s, j0..j1]`, where `col` is the im2col
//! unfolding of just those output positions (or the input itself for a 1×1, stride-1, unpadded
//! convolution). Two ways to use the threads:
//! - column blocks sized so `col` stays in L2, one per thread at a time (balanced when a batch-1
//!   convolution has few);
//! - for a small `col` at batch 1 (the deep ResNet layers), `col` unfolded whole and the GEMM
//!   split by output channels, so the weights are read once;
//! - for small output maps at batch > 1, the `col` of several images side by side as one wider
//!   GEMM per thread (`stacked`).
//!
//! With a column stride above 1 the input is first split into column phases, so every im2col
//! copy is contiguous. Bias, the residual sum and the fused ReLU or Clip are applied to each
//! block while it is still in cache (`epilogue`, one vectorised pass; the direct kernels apply
//! them in registers where they can). An FP16 pointwise convolution's blocks go through two
//! buffers, its input columns widened into one and its outputs rounded out of the other by the
//! task that computes them (`pointwise_f16`). Convolutions with one input channel per group use
//! the direct kernel in `depthwise`, and with AVX-512 the 3×3 unit-stride ones of enough
//! channels the Winograd kernel in `winograd`, other dense convolutions larger than 1×1 or
//! strided, and some pointwise ones, the direct kernel in `direct`, instead of this lowering
//! (the CPU backend's launch picks, see `winograd::applies` and `direct::applies`).

use gemm::Parallelism;
use rayon::prelude::*;

use half::f16;

use super::scratch::TaskBuffer;
use super::{narrow, simd, Disjoint, Widen};
use crate::ops::{Clamp, ConvPlan};

/// Target size of one im2col block (fits L2 next to the GEMM's packed operands).
const COL_BLOCK_BYTES: usize = 256 << 10;

/// Largest im2col matrix unfolded whole and shared by all threads (about one L2).
const BY_ROWS_MAX_COL_BYTES: usize = 2 << 20;

/// Fewest output columns per block of [`pointwise_f16`], where the map has them. (Its FP16 1×1
/// workloads in `eia run`, Intel Xeon model 167, 1 and 2 threads, 4 alternated rounds, against
/// blocks sized for 256 KiB of buffers alone: 0.72–0.98× the time, 0.94–1.06× for
/// `res2_1x1`.)
const FUSED_MIN_COLUMNS: usize = 1024;

/// Output maps smaller than this many positions are stacked across images at batch > 1 (see
/// `stacked`).
const STACK_COLUMNS: usize = 192;

/// Fewest output channels per thread when a GEMM is split by output channels.
const MIN_SPLIT_CHANNELS: usize = 16;

/// Fewest output columns per block: narrower GEMMs reload the weights too often.
const MIN_BLOCK_COLUMNS: usize = 64;

/// A convolution's bias and residual sum (`y`'s shape), as the epilogue adds them.
#[derive(Clone, Copy, Default)]
pub struct Addends<'a> {
    pub bias: Option<&'a [f32]>,
    pub sum: Option<&'a [f32]>,
}

impl Addends<'_> {
    /// The epilogue of `out`, values of output channel `k` at offset `at` of `y`.
    pub(super) fn apply(&self, plan: &ConvPlan, k: usize, at: usize, out: &mut [f32]) {
        let sum = self.sum.map(|s| &s[at..][..out.len()]);
        epilogue(plan, self.bias.map(|b| b[k]), out, sum);
    }
}

/// Computes `plan` (not depthwise) in FP32 through the GEMM lowering. `y` is fully written;
/// its previous contents are ignored.
pub fn conv_f32(plan: &ConvPlan, x: &[f32], w: &[f32], add: Addends, y: &mut [f32]) {
    if y.is_empty() {
        return;
    }
    lowered(plan, x, w, add, y);
}

/// Computes a pointwise `plan` (see [`is_pointwise`]) on FP16 storage through the GEMM lowering,
/// with no pass over a whole tensor: each task widens its block of input columns into a buffer
/// that stays in L2, multiplies it on the FP32 kernel into another, and rounds each row of that
/// into `y` with the epilogue applied (the residual sum, FP16 like `y`): with AVX-512 in one
/// pass, the sum widened in registers (`avx512::finish_into`; MobileNetV2's expansions took
/// 0.82–0.94× the time of an epilogue pass and a rounding pass, `eia infer --fp16 --profile`,
/// Intel Xeon model 207), else the sum widened a row at a time and two passes.
/// (Through `conv_f32`, the input was first widened whole, and the output rounded whole after
/// the epilogue's own pass: three more trips through memory.) `y` is fully written.
pub fn pointwise_f16(
    plan: &ConvPlan,
    x: &[f16],
    w: &[f32],
    bias: Option<&[f32]>,
    sum: Option<&[f16]>,
    y: &mut [f16],
) {
    debug_assert!(is_pointwise(plan));
    let (cg, kg, pq) = (plan.c_per_group(), plan.k_per_group(), plan.p * plan.q);
    if y.is_empty() {
        return;
    }
    let chunks = plan.n * plan.group;
    assert_eq!(y.len(), chunks * kg * pq);
    // Both buffers hold `cg + kg` values per column: blocks as wide as an im2col block of that
    // height, but at least FUSED_MIN_COLUMNS wide.
    let height = (cg + kg).min(COL_BLOCK_BYTES / (4 * FUSED_MIN_COLUMNS));
    let nb = block_columns(pq, height, false, chunks, rayon::current_num_threads());
    let blocks = pq.div_ceil(nb);
    // Rows finished and rounded in one AVX-512 pass (see above), within these bounds.
    #[cfg(target_arch = "x86_64")]
    let (fused, bounds) = (super::avx512::supported(), Clamp::bounds(plan.clamp));
    let out = Disjoint::new(y);
    (0..chunks * blocks).into_par_iter().for_each_init(
        || (TaskBuffer::take(cg * nb), TaskBuffer::take(kg * nb)),
        |(col, product), item| {
            // Chunk i is image i / group, group i % group; its columns j0..j0 + cols.
            let (i, j0) = (item / blocks, item % blocks * nb);
            let (ni, g) = (i / plan.group, i % plan.group);
            let cols = nb.min(pq - j0);
            let xg = &x[(ni * plan.c + g * cg) * pq..][..cg * pq];
            let col = col.values(cg * cols);
            for (c, row) in col.chunks_exact_mut(cols).enumerate() {
                f16::widen(&xg[c * pq + j0..][..cols], row);
            }
            let product = product.values(kg * cols);
            // SAFETY: the group's weights are kg×cg row-major, `col` cg rows of `cols` and
            // `product` kg rows of `cols`, all distinct.
            unsafe {
                weights_times_col(
                    (kg, cols, cg),
                    product.as_mut_ptr(),
                    cols,
                    &w[g * kg * cg..][..kg * cg],
                    col,
                    cols,
                );
            }
            for (kk, row) in product.chunks_exact_mut(cols).enumerate() {
                let at = (i * kg + kk) * pq + j0;
                let bias = bias.map(|b| b[g * kg + kk]);
                // SAFETY: output channel g·kg + kk of image ni, columns j0..j0 + cols: inside
                // y (asserted above), written by this item only.
                let y = unsafe { out.slice(at, cols) };
                let sum = sum.map(|s| &s[at..][..cols]);
                #[cfg(target_arch = "x86_64")]
                if fused {
                    // SAFETY: AVX-512 F, BW and VL are supported; `y` and the sum have the
                    // row's `cols` values.
                    unsafe {
                        super::avx512::finish_into(row, bias.unwrap_or(-0.0), sum, bounds, y)
                    };
                    continue;
                }
                // The row's residual sum widened into the input columns' buffer (read already).
                let sum = sum.map(|s| {
                    f16::widen(s, &mut col[..cols]);
                    &col[..cols]
                });
                epilogue(plan, bias, row, sum);
                narrow(row, y);
            }
        },
    );
}

/// Adds `bias` and the residual `sum` (the values at `out`'s place in the plan's `Sum`) to
/// `out` and applies the plan's fused ReLU or Clip, in one vectorised pass.
pub(super) fn epilogue(plan: &ConvPlan, bias: Option<f32>, out: &mut [f32], sum: Option<&[f32]>) {
    if bias.is_none() && sum.is_none() && plan.clamp.is_none() {
        return;
    }
    let [lo, hi] = Clamp::bounds(plan.clamp);
    // x + (−0) is x for every x (−0 included): a missing bias changes nothing.
    finish(
        out,
        sum.unwrap_or(&[]),
        bias.unwrap_or(-0.0),
        Clamp { lo, hi },
    );
}

simd::multiversion! {
    /// `out[i] = clamp((out[i] + b) + sum[i])`, what the Conv and the Add it replaces round to
    /// (without the sum where `sum` is empty); infinite bounds clamp nothing.
    fn finish(out: &mut [f32], sum: &[f32], b: f32, c: Clamp) {
        if sum.is_empty() {
            out.iter_mut().for_each(|v| *v = c.apply(*v + b));
        } else {
            debug_assert_eq!(sum.len(), out.len());
            out.iter_mut().zip(sum).for_each(|(v, &s)| *v = c.apply(*v + b + s));
        }
    }
}

/// Whether the input can be used as the im2col matrix directly (and as the direct kernel's frame:
/// a 1×1, stride-1, unpadded convolution).
pub(super) fn is_pointwise(plan: &ConvPlan) -> bool {
    plan.r == 1
        && plan.s == 1
        && plan.stride == [1, 1]
        && plan.pad == [0, 0]
        && plan.p == plan.h
        && plan.q == plan.w
}

/// Output columns per block for `chunks` (image, group) GEMMs of `crs`×`pq` im2col matrices:
/// about [`COL_BLOCK_BYTES`] of `col` (all of `pq` when the input is used directly), balanced
/// over the threads when there are fewer chunks than threads, or all of `pq` when splitting
/// would leave blocks too narrow. (Pointwise blocks of 680, 340 and 170 columns, so that the
/// epilogue would find a block's output in L2: MobileNetV2's 16 → 96 expansion at 112×112, one
/// thread, 0.95–1.54× the time of whole maps: each block's GEMM repacks its operands.)
fn block_columns(pq: usize, crs: usize, pointwise: bool, chunks: usize, threads: usize) -> usize {
    let nb = if pointwise {
        pq
    } else {
        (COL_BLOCK_BYTES / (4 * crs.max(1)))
            .max(MIN_BLOCK_COLUMNS)
            .min(pq)
    };
    if chunks >= threads {
        return nb;
    }
    let blocks = pq.div_ceil(nb).next_multiple_of(threads.div_ceil(chunks));
    let balanced = pq.div_ceil(blocks);
    if balanced >= MIN_BLOCK_COLUMNS / 2 {
        balanced
    } else {
        pq
    }
}

/// The GEMM lowering for every (image, group) and block of output columns.
fn lowered(plan: &ConvPlan, x: &[f32], w: &[f32], add: Addends, y: &mut [f32]) {
    let (cg, kg) = (plan.c_per_group(), plan.k_per_group());
    let (pq, crs) = (plan.p * plan.q, cg * plan.r * plan.s);
    let pointwise = is_pointwise(plan);
    let threads = rayon::current_num_threads();
    let chunks = plan.n * plan.group;
    // Fewer (image, group) chunks than threads, a small im2col matrix (the deep layers at
    // batch 1) and more output channels than its rows: unfold it whole, then split the GEMM by
    // output channels, so no thread re-reads the weights. Otherwise each thread takes column
    // blocks of its own: with fewer output channels than rows (MobileNetV2's 192 → 32
    // projections at 28×28), split by channels each thread read and packed the whole input,
    // half of it written by the other core (two threads, Intel Xeon model 207: 0.81–0.90× the
    // time by columns).
    let by_rows = threads > 1
        && chunks < threads
        && kg >= threads * MIN_SPLIT_CHANNELS
        && kg > crs
        && 4 * crs * pq <= BY_ROWS_MAX_COL_BYTES;
    let nb = if by_rows {
        pq
    } else {
        block_columns(pq, crs, pointwise, chunks, threads)
    };
    let blocks = pq.div_ceil(nb);
    let items = chunks * blocks;
    assert_eq!(y.len(), chunks * kg * pq);
    // Strided convolutions read the input through its column phases (see `Phases`).
    let phased = (plan.stride[1] > 1).then(|| Phases::new(plan, x));
    let x = phased.as_ref().map_or(x, |p| &p.data[..]);
    // Elements per input channel as stored in `x` (rows padded to whole phases).
    let hw = plan.h * row_len(plan);
    if !pointwise && !by_rows && plan.n > 1 && pq < STACK_COLUMNS {
        return stacked(plan, x, hw, w, add, y);
    }
    let out = Disjoint::new(y);
    // y is [n, group, kg, p·q]: chunk i is image i / group, group i % group.
    let one = |item: usize, col: &mut TaskBuffer, row_parts: usize| {
        let (i, j0) = (item / blocks, item % blocks * nb);
        let (ni, g) = (i / plan.group, i % plan.group);
        let cols = nb.min(pq - j0);
        let xg = &x[(ni * plan.c + g * cg) * hw..][..cg * hw];
        let (unfolded, row_stride) = if pointwise {
            (&xg[j0..], hw)
        } else {
            let col = col.values(crs * cols);
            im2col(plan, xg, j0, cols, col, cols, row_parts > 1);
            (&col[..], cols)
        };
        let rows = kg.div_ceil(row_parts);
        let gemm_rows = |k0: usize| {
            let kr = (k0 + rows).min(kg) - k0;
            let wg = &w[(g * kg + k0) * crs..][..kr * crs];
            let y0 = (i * kg + k0) * pq + j0;
            // SAFETY: wg is kr×crs row-major; `unfolded` holds crs rows of `cols` values at
            // `row_stride` (im2col sized it, or it is the group's [cg, h·w] input with
            // cols ≤ h·w − j0); the destination is rows y0 + kk·pq, kk < kr, columns 0..cols,
            // inside y (asserted above) and written by this call only; it aliases neither
            // operand.
            unsafe {
                weights_times_col(
                    (kr, cols, crs),
                    out.ptr().add(y0),
                    pq,
                    wg,
                    unfolded,
                    row_stride,
                );
            }
            for kk in 0..kr {
                // SAFETY: as above, this call's own row segment of y, no longer borrowed by gemm.
                let row = unsafe { out.slice(y0 + kk * pq, cols) };
                add.apply(plan, g * kg + k0 + kk, y0 + kk * pq, row);
            }
        };
        if row_parts > 1 {
            (0..kg).into_par_iter().step_by(rows).for_each(gemm_rows);
        } else {
            gemm_rows(0);
        }
    };
    if by_rows {
        let mut col = TaskBuffer::take(crs * nb);
        for item in 0..items {
            one(item, &mut col, threads);
        }
    } else {
        (0..items)
            .into_par_iter()
            .for_each_init(|| TaskBuffer::take(crs * nb), |col, item| one(item, col, 1));
    }
}

/// Small output maps at batch > 1: the im2col matrices of a stack of images side by side make
/// one GEMM of at least [`STACK_COLUMNS`] columns (small maps fill the GEMM's vector tiles
/// poorly and make it re-read the weights per image), computed into scratch and scattered to
/// each image's output with the epilogue. `x` is as `lowered` stores it (`hw` per channel).
fn stacked(plan: &ConvPlan, x: &[f32], hw: usize, w: &[f32], add: Addends, y: &mut [f32]) {
    let (cg, kg) = (plan.c_per_group(), plan.k_per_group());
    let (pq, crs) = (plan.p * plan.q, cg * plan.r * plan.s);
    let threads = rayon::current_num_threads();
    // Images per stack: enough columns, yet a stack per thread where the batch allows.
    let stack = STACK_COLUMNS
        .div_ceil(pq)
        .min(plan.n.div_ceil(threads.div_ceil(plan.group)))
        .max(1);
    let stacks = plan.n.div_ceil(stack);
    let out = Disjoint::new(y);
    (0..stacks * plan.group).into_par_iter().for_each_init(
        || {
            let width = stack * pq;
            (TaskBuffer::take(crs * width), TaskBuffer::take(kg * width))
        },
        |(col, product), item| {
            let (si, g) = (item / plan.group, item % plan.group);
            let images = si * stack..(si * stack + stack).min(plan.n);
            let width = images.len() * pq;
            let col = col.values(crs * width);
            let product = product.values(kg * width);
            for (slot, ni) in images.clone().enumerate() {
                let xg = &x[(ni * plan.c + g * cg) * hw..][..cg * hw];
                im2col(plan, xg, 0, pq, &mut col[slot * pq..], width, false);
            }
            let wg = &w[g * kg * crs..][..kg * crs];
            // SAFETY: wg is kg×crs row-major, col is crs×width row-major and product kg×width
            // row-major, all distinct allocations.
            unsafe {
                weights_times_col(
                    (kg, width, crs),
                    product.as_mut_ptr(),
                    width,
                    wg,
                    col,
                    width,
                );
            }
            for (slot, ni) in images.enumerate() {
                for kk in 0..kg {
                    // SAFETY: image ni, group g, channel kk's output row: inside y
                    // ([n, group, kg, pq]) and written by this item only.
                    let at = ((ni * plan.group + g) * kg + kk) * pq;
                    let row = unsafe { out.slice(at, pq) };
                    row.copy_from_slice(&product[kk * width + slot * pq..][..pq]);
                    add.apply(plan, g * kg + kk, at, row);
                }
            }
        },
    );
}

/// `dst = W · col` on the calling thread, for `(rows, cols, crs)`: W is `rows×crs` row-major,
/// `col` holds `crs` rows of `cols` values `col_stride` apart, and `dst` gets `rows` rows of
/// `cols` values `dst_stride` apart.
///
/// # Safety
/// `dst` must be valid for those writes, and no other thread may access them during the call;
/// it aliases neither operand. The slices must hold the extents above.
unsafe fn weights_times_col(
    (rows, cols, crs): (usize, usize, usize),
    dst: *mut f32,
    dst_stride: usize,
    w: &[f32],
    col: &[f32],
    col_stride: usize,
) {
    debug_assert!(w.len() >= rows * crs);
    debug_assert!(crs == 0 || col.len() >= (crs - 1) * col_stride + cols);
    // SAFETY: the caller's contract; `gemm` reads only inside the extents checked above.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            crs,
            dst,
            1,
            dst_stride as isize,
            false,
            w.as_ptr(),
            1,
            crs as isize,
            col.as_ptr(),
            1,
            col_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// The input with every row split into its column phases, for a convolution of column stride
/// `sw > 1`: row `[x0, x1, x2, …]` becomes `[x0, x_sw, …, x1, x_{1+sw}, …]`, phase by phase,
/// each phase `ceil(w / sw)` long (the last ones padded). A strided window's columns are then
/// contiguous within one phase, and im2col copies them with `memcpy`.
struct Phases {
    data: Vec<f32>,
}

impl Phases {
    fn new(plan: &ConvPlan, x: &[f32]) -> Self {
        let (w, sw) = (plan.w, plan.stride[1]);
        let width = phase_width(plan);
        let mut data = vec![0.0; x.len() / w * row_len(plan)];
        data.par_chunks_mut(row_len(plan))
            .zip(x.par_chunks(w))
            .for_each(|(dst, src)| {
                for (phase, out) in dst.chunks_exact_mut(width).enumerate() {
                    for (o, &v) in out.iter_mut().zip(src.iter().skip(phase).step_by(sw)) {
                        *o = v;
                    }
                }
            });
        Phases { data }
    }
}

/// Length of one column phase of an input row (see [`Phases`]; `w` at stride 1).
fn phase_width(plan: &ConvPlan) -> usize {
    plan.w.div_ceil(plan.stride[1])
}

/// Length of an input row as im2col reads it: all its phases (`w` at stride 1). A stride above
/// `w` leaves every phase past the `w`-th empty, so only `min(stride, w)` phases are kept.
fn row_len(plan: &ConvPlan) -> usize {
    phase_width(plan) * plan.stride[1].min(plan.w)
}

/// Unfolds output columns `j0..j0 + cols` of one group's input `[cg, h, w]` (rows split into
/// [`Phases`] when the column stride is above 1) into the first `cols` values of the rows of
/// `col` (`stride` apart), row `(c·r + r)·s + s`, zero where the window falls into padding;
/// rows in parallel when `parallel`.
fn im2col(
    plan: &ConvPlan,
    xg: &[f32],
    j0: usize,
    cols: usize,
    col: &mut [f32],
    stride: usize,
    parallel: bool,
) {
    let (sw, width, row_len) = (plan.stride[1], phase_width(plan), row_len(plan));
    let row = |(index, out): (usize, &mut [f32])| {
        let out = &mut out[..cols];
        let (ci, rs) = (index / (plan.r * plan.s), index % (plan.r * plan.s));
        let (ri, si) = (rs / plan.s, rs % plan.s);
        let xc = &xg[ci * plan.h * row_len..][..plan.h * row_len];
        let (q_lo, q_hi, off) = valid_columns(plan, si);
        let mut done = 0;
        while done < cols {
            // The rest of output row `pi`, from column `q0`, or the block's end.
            let (pi, q0) = ((j0 + done) / plan.q, (j0 + done) % plan.q);
            let len = (plan.q - q0).min(cols - done);
            let seg = &mut out[done..done + len];
            done += len;
            let Some(ih) = input_row(plan, pi, ri) else {
                seg.fill(0.0);
                continue;
            };
            let x_row = &xc[ih * row_len..][..row_len];
            let lo = q_lo.clamp(q0, q0 + len);
            let hi = q_hi.clamp(lo, q0 + len);
            seg[..lo - q0].fill(0.0);
            seg[hi - q0..].fill(0.0);
            let valid = &mut seg[lo - q0..hi - q0];
            if valid.is_empty() {
                continue;
            }
            // Input columns first, first + sw, …: consecutive in phase `first % sw`.
            let first = lo * sw + off - plan.pad[1];
            let start = first % sw * width + first / sw;
            valid.copy_from_slice(&x_row[start..start + valid.len()]);
        }
    };
    if parallel {
        col.par_chunks_mut(stride).enumerate().for_each(row);
    } else {
        col.chunks_mut(stride).enumerate().for_each(row);
    }
}

/// The input row read by output row `pi` at kernel row `ri`, if it is inside the image.
#[inline]
fn input_row(plan: &ConvPlan, pi: usize, ri: usize) -> Option<usize> {
    (pi * plan.stride[0] + ri * plan.dilation[0])
        .checked_sub(plan.pad[0])
        .filter(|&ih| ih < plan.h)
}

/// For kernel column `si`: the output columns `q_lo..q_hi` whose input column
/// `q·stride + off − pad_left` (with `off = si·dilation`) is inside the image, and `off`.
#[inline]
fn valid_columns(plan: &ConvPlan, si: usize) -> (usize, usize, usize) {
    let (sw, pl, w, q) = (plan.stride[1], plan.pad[1], plan.w, plan.q);
    let off = si * plan.dilation[1];
    // q·sw + off ≥ pl  and  q·sw + off < pl + w
    let q_lo = pl.saturating_sub(off).div_ceil(sw).min(q);
    let q_hi = (pl + w).saturating_sub(off).div_ceil(sw).clamp(q_lo, q);
    (q_lo, q_hi, off)
}
