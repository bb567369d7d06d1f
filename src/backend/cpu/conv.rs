//! CPU convolution. Grouped/dense convolutions lower to GEMM per (image, group):
//! `Y[k, p·q] = W[k, c·r·s] · col[c·r·s, p·q]`, where `col` is the im2col unfolding of the input
//! (or the input itself for a 1×1, stride-1, unpadded convolution). Convolutions with one input
//! channel per group (depthwise) use a direct kernel. Bias and ReLU are applied per output row.

use gemm::Parallelism;
use rayon::prelude::*;

use super::gemm::relu;
use crate::ops::ConvPlan;

/// Below this many FLOPs per (image, group) GEMM, work is spread one GEMM per thread.
const SMALL_GEMM_FLOPS: usize = 1 << 22;

/// Per-thread im2col buffers up to this size stay cache-friendly enough that one GEMM per
/// thread beats splitting each GEMM across threads (measured on ResNet-50 shapes at batch 8).
const PER_THREAD_COL_BYTES: usize = 4 << 20;

/// Computes `plan` in FP32. `y` is fully written; its previous contents are ignored.
pub fn conv_f32(plan: &ConvPlan, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let pq = plan.p * plan.q;
    if y.is_empty() {
        return;
    }
    if plan.c_per_group() == 1 {
        depthwise(plan, x, w, y);
    } else {
        lowered(plan, x, w, y);
    }
    // Epilogue: one output row of p·q per (image, channel).
    y.par_chunks_mut(pq).enumerate().for_each(|(row, out)| {
        if let Some(bias) = bias {
            let b = bias[row % plan.k];
            out.iter_mut().for_each(|v| *v += b);
        }
        if plan.relu {
            relu(out);
        }
    });
}

/// Whether the input can be used as the im2col matrix directly.
fn is_pointwise(plan: &ConvPlan) -> bool {
    plan.r == 1
        && plan.s == 1
        && plan.stride == [1, 1]
        && plan.pad == [0, 0]
        && plan.p == plan.h
        && plan.q == plan.w
}

/// The GEMM lowering for every (image, group).
fn lowered(plan: &ConvPlan, x: &[f32], w: &[f32], y: &mut [f32]) {
    let (cg, kg) = (plan.c_per_group(), plan.k_per_group());
    let (hw, pq, crs) = (
        plan.h * plan.w,
        plan.p * plan.q,
        plan.c_per_group() * plan.r * plan.s,
    );
    let pointwise = is_pointwise(plan);
    // y is [n, group, kg, p·q]: chunk i is image i / group, group i % group.
    let one = |i: usize, yg: &mut [f32], col: &mut Vec<f32>, parallel: bool| {
        let (ni, g) = (i / plan.group, i % plan.group);
        let xg = &x[(ni * plan.c + g * cg) * hw..][..cg * hw];
        let unfolded: &[f32] = if pointwise {
            xg
        } else {
            col.resize(crs * pq, 0.0);
            im2col(plan, xg, col, parallel);
            col
        };
        let wg = &w[g * kg * crs..][..kg * crs];
        let parallelism = if parallel {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        };
        // SAFETY: wg is kg×crs row-major, `unfolded` is crs×pq row-major and yg is kg×pq
        // row-major, all exactly sized above; yg is exclusively borrowed and aliases neither.
        unsafe {
            gemm::gemm(
                kg,
                pq,
                crs,
                yg.as_mut_ptr(),
                1,
                pq as isize,
                false,
                wg.as_ptr(),
                1,
                crs as isize,
                unfolded.as_ptr(),
                1,
                pq as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    let chunks = plan.n * plan.group;
    let small = 2 * kg * pq * crs < SMALL_GEMM_FLOPS;
    let fits = chunks >= rayon::current_num_threads() && crs * pq * 4 <= PER_THREAD_COL_BYTES;
    if chunks > 1 && (small || fits) {
        y.par_chunks_mut(kg * pq)
            .enumerate()
            .for_each_init(Vec::new, |col, (i, yg)| one(i, yg, col, false));
    } else {
        let mut col = Vec::new();
        for (i, yg) in y.chunks_mut(kg * pq).enumerate() {
            one(i, yg, &mut col, true);
        }
    }
}

/// Unfolds one group's input `[cg, h, w]` into `col[(c·r + r)·s + s, p·q]`, zero where the
/// window falls into padding.
fn im2col(plan: &ConvPlan, xg: &[f32], col: &mut [f32], parallel: bool) {
    let pq = plan.p * plan.q;
    let row = |(index, out): (usize, &mut [f32])| {
        let (ci, rs) = (index / (plan.r * plan.s), index % (plan.r * plan.s));
        let (ri, si) = (rs / plan.s, rs % plan.s);
        let xc = &xg[ci * plan.h * plan.w..][..plan.h * plan.w];
        let (q_lo, q_hi, off) = valid_columns(plan, si);
        for (pi, out_row) in out.chunks_exact_mut(plan.q).enumerate() {
            let Some(ih) = input_row(plan, pi, ri) else {
                out_row.fill(0.0);
                continue;
            };
            let x_row = &xc[ih * plan.w..][..plan.w];
            out_row[..q_lo].fill(0.0);
            out_row[q_hi..].fill(0.0);
            let sw = plan.stride[1];
            for (qi, v) in (q_lo..q_hi).zip(&mut out_row[q_lo..q_hi]) {
                *v = x_row[(qi * sw) + off - plan.pad[1]];
            }
        }
    };
    if parallel {
        col.par_chunks_mut(pq).enumerate().for_each(row);
    } else {
        col.chunks_mut(pq).enumerate().for_each(row);
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

/// Direct convolution for one input channel per group: each output channel `k` reads input
/// channel `k / (K/group)`.
fn depthwise(plan: &ConvPlan, x: &[f32], w: &[f32], y: &mut [f32]) {
    let (hw, pq, rs) = (plan.h * plan.w, plan.p * plan.q, plan.r * plan.s);
    let kg = plan.k_per_group();
    y.par_chunks_mut(pq).enumerate().for_each(|(row, out)| {
        let (ni, ki) = (row / plan.k, row % plan.k);
        let xc = &x[(ni * plan.c + ki / kg) * hw..][..hw];
        let wk = &w[ki * rs..][..rs];
        out.fill(0.0);
        for ri in 0..plan.r {
            for si in 0..plan.s {
                let wv = wk[ri * plan.s + si];
                let (q_lo, q_hi, off) = valid_columns(plan, si);
                if q_lo == q_hi {
                    // This kernel column only ever reads padding.
                    continue;
                }
                let base = off.wrapping_sub(plan.pad[1]);
                for (pi, out_row) in out.chunks_exact_mut(plan.q).enumerate() {
                    let Some(ih) = input_row(plan, pi, ri) else {
                        continue;
                    };
                    let x_row = &xc[ih * plan.w..][..plan.w];
                    let out_valid = &mut out_row[q_lo..q_hi];
                    if plan.stride[1] == 1 {
                        let start = q_lo.wrapping_add(base);
                        let x_valid = &x_row[start..start + out_valid.len()];
                        for (v, &xv) in out_valid.iter_mut().zip(x_valid) {
                            *v += wv * xv;
                        }
                    } else {
                        for (qi, v) in (q_lo..q_hi).zip(out_valid.iter_mut()) {
                            *v += wv * x_row[(qi * plan.stride[1]).wrapping_add(base)];
                        }
                    }
                }
            }
        }
    });
}
