//! Direct CPU convolution for one input channel per group (depthwise). Each (image, output
//! channel) copies its input channel once into a zero-bordered buffer that covers every window,
//! so the kernel loop has no padding cases. With a column stride of 1 and AVX-512, up to 64
//! outputs of a row accumulate every tap in registers (`avx512`); otherwise the inner loop runs
//! along the output row, vectorised through `multiversion!`.

use rayon::prelude::*;

use super::gemm::relu;
use super::simd::{self, multiversion};
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
            let wk = &w[ki * rs..][..rs];
            #[cfg(target_arch = "x86_64")]
            if plan.stride[1] == 1 && simd::level() >= simd::Level::Avx512 {
                // SAFETY: the CPU supports AVX-512F; `padded` is the [hp, wp] buffer that
                // covers every window of the [p, q] output `out`, and `wk` holds r·s weights.
                unsafe { avx512::channel(plan, padded, wp, wk, b, out) };
                return;
            }
            channel(plan, padded, wp, wk, b, out);
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

/// The stride-1 kernel with AVX-512: sixteen outputs of a row accumulate every tap in one
/// register and are stored once (a masked load and store finish the row).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::ops::ConvPlan;

    /// # Safety
    /// The CPU must support AVX-512F, the column stride must be 1, `padded` must hold the
    /// `[hp, wp]` zero-bordered input that covers every window of the `[p, q]` output `out`,
    /// and `wk` the `r·s` weights.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn channel(
        plan: &ConvPlan,
        padded: &[f32],
        wp: usize,
        wk: &[f32],
        bias: Option<f32>,
        out: &mut [f32],
    ) {
        let (sh, [dh, dw]) = (plan.stride[0], plan.dilation);
        let (b, zero) = (_mm512_set1_ps(bias.unwrap_or(0.0)), _mm512_setzero_ps());
        for (pi, out_row) in out.chunks_exact_mut(plan.q).enumerate() {
            // Up to four vectors of the row at a time: independent accumulators that share
            // each broadcast weight.
            for q0 in (0..plan.q).step_by(4 * 16) {
                let lanes = (plan.q - q0).min(4 * 16);
                let masks: [__mmask16; 4] = std::array::from_fn(|v| {
                    let n = lanes.saturating_sub(16 * v).min(16);
                    ((1u32 << n) - 1) as u16
                });
                let mut acc = [b; 4];
                for ri in 0..plan.r {
                    let row = (pi * sh + ri * dh) * wp + q0;
                    for si in 0..plan.s {
                        let wv = _mm512_set1_ps(wk[ri * plan.s + si]);
                        let start = row + si * dw;
                        debug_assert!(start + lanes <= padded.len());
                        for v in 0..4 {
                            // SAFETY: the window's last column, q0 + lanes − 1 + si·dw, lies
                            // inside the padded row (the caller's contract); masked lanes are
                            // not read.
                            let x = unsafe {
                                _mm512_maskz_loadu_ps(
                                    masks[v],
                                    padded.as_ptr().wrapping_add(start + 16 * v),
                                )
                            };
                            acc[v] = _mm512_fmadd_ps(wv, x, acc[v]);
                        }
                    }
                }
                for v in 0..4 {
                    let y = if plan.relu {
                        _mm512_max_ps(acc[v], zero)
                    } else {
                        acc[v]
                    };
                    // SAFETY: lanes q0 + 16·v + l with l under the mask are below q, the row's
                    // length; masked lanes are not written.
                    unsafe {
                        _mm512_mask_storeu_ps(
                            out_row.as_mut_ptr().wrapping_add(q0 + 16 * v),
                            masks[v],
                            y,
                        )
                    };
                }
            }
        }
    }
}
