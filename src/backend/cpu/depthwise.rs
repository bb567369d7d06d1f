//! Direct CPU convolution for one input channel per group (depthwise). Each (image, output
//! channel) copies its input channel once into a zero-bordered buffer that covers every window,
//! so the kernel loop has no padding cases; with stride 1 its inner loop runs along the output
//! row and is vectorised (AVX2 / AVX-512 through `multiversion!`).

use rayon::prelude::*;

use super::gemm::relu;
use super::simd::multiversion;
use crate::ops::ConvPlan;

/// Computes a depthwise `plan` (C/group = 1) in FP32, bias and ReLU included. `y` is fully
/// written; its previous contents are ignored.
pub fn depthwise(plan: &ConvPlan, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (hw, pq, rs) = (plan.h * plan.w, plan.p * plan.q, plan.r * plan.s);
    let kg = plan.k_per_group();
    // Padded rows/columns: every input position some window reads, from −pad.
    let hp = (plan.p - 1) * plan.stride[0] + (plan.r - 1) * plan.dilation[0] + 1;
    let wp = (plan.q - 1) * plan.stride[1] + (plan.s - 1) * plan.dilation[1] + 1;
    y.par_chunks_mut(pq)
        .enumerate()
        .for_each_init(Vec::new, |padded, (row, out)| {
            let (ni, ki) = (row / plan.k, row % plan.k);
            let xc = &x[(ni * plan.c + ki / kg) * hw..][..hw];
            padded.clear();
            padded.resize(hp * wp, 0.0);
            pad_channel(plan, xc, wp, padded);
            let b = bias.map(|b| b[ki]);
            channel(plan, padded, wp, &w[ki * rs..][..rs], b, out);
        });
}

/// Copies the `[h, w]` channel `xc` into the zeroed `[hp, wp]` buffer at offset `pad`,
/// clipped to the buffer.
fn pad_channel(plan: &ConvPlan, xc: &[f32], wp: usize, padded: &mut [f32]) {
    let [pt, pl] = plan.pad;
    let cols = plan.w.min(wp.saturating_sub(pl));
    if cols == 0 {
        return;
    }
    for (prow, dst) in padded.chunks_exact_mut(wp).enumerate().skip(pt) {
        let ih = prow - pt;
        if ih >= plan.h {
            break;
        }
        dst[pl..pl + cols].copy_from_slice(&xc[ih * plan.w..][..cols]);
    }
}

multiversion! {
    /// One output channel `out` `[p, q]` from its padded input channel and `r·s` weights.
    fn channel(
        plan: &ConvPlan,
        padded: &[f32],
        wp: usize,
        wk: &[f32],
        bias: Option<f32>,
        out: &mut [f32],
    ) {
        let [sh, sw] = plan.stride;
        let [dh, dw] = plan.dilation;
        for (pi, out_row) in out.chunks_exact_mut(plan.q).enumerate() {
            out_row.fill(0.0);
            for ri in 0..plan.r {
                let base = (pi * sh + ri * dh) * wp;
                for si in 0..plan.s {
                    let wv = wk[ri * plan.s + si];
                    let x_row = &padded[base + si * dw..];
                    if sw == 1 {
                        for (v, &xv) in out_row.iter_mut().zip(&x_row[..plan.q]) {
                            *v += wv * xv;
                        }
                    } else {
                        for (v, &xv) in out_row.iter_mut().zip(x_row.iter().step_by(sw)) {
                            *v += wv * xv;
                        }
                    }
                }
            }
            if let Some(b) = bias {
                out_row.iter_mut().for_each(|v| *v += b);
            }
            if plan.relu {
                relu(out_row);
            }
        }
    }
}
