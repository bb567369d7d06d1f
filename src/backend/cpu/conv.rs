//! CPU convolution. Grouped/dense convolutions lower to GEMM per (image, group) and block of
//! output columns: `Y[k, j0..j1] = W[k, c·r·s] · col[c·r·s, j0..j1]`, where `col` is the im2col
//! unfolding of just those output positions (or the input itself for a 1×1, stride-1, unpadded
//! convolution). Blocks are sized so `col` stays in L2 and spread over threads, which also splits
//! batch-1 convolutions; bias and ReLU are applied to each block while it is still in cache.
//! Convolutions with one input channel per group use the direct kernel in `depthwise`.

use gemm::Parallelism;
use rayon::prelude::*;

use super::depthwise::depthwise;
use super::gemm::relu;
use super::Disjoint;
use crate::ops::ConvPlan;

/// Target size of one im2col block (fits L2 next to the GEMM's packed operands).
const COL_BLOCK_BYTES: usize = 256 << 10;

/// Fewest output columns per block: narrower GEMMs reload the weights too often.
const MIN_BLOCK_COLUMNS: usize = 64;

/// Computes `plan` in FP32. `y` is fully written; its previous contents are ignored.
pub fn conv_f32(plan: &ConvPlan, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    if y.is_empty() {
        return;
    }
    if plan.c_per_group() == 1 {
        depthwise(plan, x, w, bias, y);
    } else {
        lowered(plan, x, w, bias, y);
    }
}

/// Adds `bias` to `out` and applies the plan's ReLU.
fn epilogue(plan: &ConvPlan, bias: Option<f32>, out: &mut [f32]) {
    if let Some(b) = bias {
        out.iter_mut().for_each(|v| *v += b);
    }
    if plan.relu {
        relu(out);
    }
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

/// Output columns per block for `chunks` (image, group) GEMMs of `crs`×`pq` im2col matrices:
/// about [`COL_BLOCK_BYTES`] of `col` (all of `pq` when the input is used directly), balanced
/// over the threads when there are fewer chunks than threads, or all of `pq` when splitting
/// would leave blocks too narrow.
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
fn lowered(plan: &ConvPlan, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (cg, kg) = (plan.c_per_group(), plan.k_per_group());
    let (hw, pq, crs) = (plan.h * plan.w, plan.p * plan.q, cg * plan.r * plan.s);
    let pointwise = is_pointwise(plan);
    let threads = rayon::current_num_threads();
    let chunks = plan.n * plan.group;
    let nb = block_columns(pq, crs, pointwise, chunks, threads);
    let blocks = pq.div_ceil(nb);
    let items = chunks * blocks;
    assert_eq!(y.len(), chunks * kg * pq);
    let out = Disjoint::new(y);
    // y is [n, group, kg, p·q]: chunk i is image i / group, group i % group.
    let one = |item: usize, col: &mut Vec<f32>, parallelism: Parallelism| {
        let (i, j0) = (item / blocks, item % blocks * nb);
        let (ni, g) = (i / plan.group, i % plan.group);
        let cols = nb.min(pq - j0);
        let xg = &x[(ni * plan.c + g * cg) * hw..][..cg * hw];
        let (unfolded, row_stride) = if pointwise {
            (&xg[j0..], hw)
        } else {
            col.resize(crs * cols, 0.0);
            im2col(
                plan,
                xg,
                j0,
                cols,
                col,
                matches!(parallelism, Parallelism::Rayon(_)),
            );
            (&col[..], cols)
        };
        let wg = &w[g * kg * crs..][..kg * crs];
        let y0 = i * kg * pq + j0;
        // SAFETY: wg is kg×crs row-major; `unfolded` holds crs rows of `cols` values at
        // `row_stride` (im2col sized it, or it is the group's [cg, h·w] input with cols ≤ h·w − j0);
        // the destination is rows y0 + kk·pq, kk < kg, columns 0..cols, inside y (asserted above)
        // and written by this item only, and it aliases neither operand.
        unsafe {
            gemm::gemm(
                kg,
                cols,
                crs,
                out.ptr().add(y0),
                1,
                pq as isize,
                false,
                wg.as_ptr(),
                1,
                crs as isize,
                unfolded.as_ptr(),
                1,
                row_stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        for kk in 0..kg {
            // SAFETY: as above, this item's own row segment of y, no longer borrowed by gemm.
            let row = unsafe { out.slice(y0 + kk * pq, cols) };
            epilogue(plan, bias.map(|b| b[g * kg + kk]), row);
        }
    };
    if items >= threads {
        (0..items)
            .into_par_iter()
            .for_each_init(Vec::new, |col, item| one(item, col, Parallelism::None));
    } else {
        let mut col = Vec::new();
        for item in 0..items {
            one(item, &mut col, Parallelism::Rayon(0));
        }
    }
}

/// Unfolds output columns `j0..j0 + cols` of one group's input `[cg, h, w]` into
/// `col[(c·r + r)·s + s, cols]`, zero where the window falls into padding; rows in parallel
/// when `parallel`.
fn im2col(plan: &ConvPlan, xg: &[f32], j0: usize, cols: usize, col: &mut [f32], parallel: bool) {
    let row = |(index, out): (usize, &mut [f32])| {
        let (ci, rs) = (index / (plan.r * plan.s), index % (plan.r * plan.s));
        let (ri, si) = (rs / plan.s, rs % plan.s);
        let xc = &xg[ci * plan.h * plan.w..][..plan.h * plan.w];
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
            let x_row = &xc[ih * plan.w..][..plan.w];
            let lo = q_lo.clamp(q0, q0 + len);
            let hi = q_hi.clamp(lo, q0 + len);
            seg[..lo - q0].fill(0.0);
            seg[hi - q0..].fill(0.0);
            let valid = &mut seg[lo - q0..hi - q0];
            if valid.is_empty() {
                continue;
            }
            let sw = plan.stride[1];
            let first = lo * sw + off - plan.pad[1];
            if sw == 1 {
                valid.copy_from_slice(&x_row[first..first + valid.len()]);
            } else {
                for (v, &xv) in valid.iter_mut().zip(x_row[first..].iter().step_by(sw)) {
                    *v = xv;
                }
            }
        }
    };
    if parallel {
        col.par_chunks_exact_mut(cols).enumerate().for_each(row);
    } else {
        col.chunks_exact_mut(cols).enumerate().for_each(row);
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
