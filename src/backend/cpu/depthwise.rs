//! Direct CPU convolution for one input channel per group (depthwise). Each (image, output
//! channel) copies its input channel once into a zero-bordered buffer that covers every window,
//! so the kernel loop has no padding cases. With AVX-512 and a column stride of 1 or 2, up to 64
//! outputs of a row accumulate every tap in registers (`avx512`); for stride 2 the padded rows
//! are first split into their even and odd columns, so every tap reads contiguous vectors.
//! Otherwise the inner loop runs along the output row, vectorised through `multiversion!`.
//! FP16 storage reaches this kernel widened once to FP32 (as every CPU convolution does).

use rayon::prelude::*;

use super::conv::{epilogue, Addends};
use super::simd::{self, multiversion};
use crate::ops::ConvPlan;

/// Computes a depthwise `plan` (C/group = 1) in FP32, bias, residual sum, ReLU and Clip
/// included. `y` is fully written; its previous contents are ignored.
pub fn depthwise(plan: &ConvPlan, x: &[f32], w: &[f32], add: Addends, y: &mut [f32]) {
    let (hw, pq, rs) = (plan.h * plan.w, plan.p * plan.q, plan.r * plan.s);
    let kg = plan.k_per_group();
    // Padded rows/columns: every input position some window reads, from −pad.
    let hp = (plan.p - 1) * plan.stride[0] + (plan.r - 1) * plan.dilation[0] + 1;
    let wp = (plan.q - 1) * plan.stride[1] + (plan.s - 1) * plan.dilation[1] + 1;
    y.par_chunks_mut(pq).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(padded, phases), (row, out)| {
            let (ni, ki) = (row / plan.k, row % plan.k);
            let xc = &x[(ni * plan.c + ki / kg) * hw..][..hw];
            padded.clear();
            padded.resize(hp * wp, 0.0);
            pad_channel(plan, xc, wp, padded);
            let b = add.bias.map(|b| b[ki]);
            let sum = add.sum.map(|s| &s[row * pq..][..pq]);
            let wk = &w[ki * rs..][..rs];
            #[cfg(target_arch = "x86_64")]
            if simd::level() >= simd::Level::Avx512 {
                match plan.stride[1] {
                    1 => {
                        // SAFETY: the CPU supports AVX-512F; `padded` is the [hp, 1, wp]
                        // buffer that covers every window of the [p, q] output `out`, and `wk`
                        // holds r·s weights.
                        unsafe { avx512::channel::<1>(plan, padded, wp, wk, b, sum, out) };
                        return;
                    }
                    2 => {
                        let half = wp.div_ceil(2);
                        // Never cleared: `split_columns` writes every element a tap reads.
                        phases.resize(hp * 2 * half, 0.0);
                        // SAFETY: as above, with `phases` the [hp, 2, ⌈wp/2⌉] column phases
                        // of `padded`.
                        unsafe {
                            avx512::split_columns(padded, wp, phases);
                            avx512::channel::<2>(plan, phases, half, wk, b, sum, out);
                        }
                        return;
                    }
                    _ => {}
                }
            }
            channel(plan, padded, wp, wk, b, sum, out);
        },
    );
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
    /// One output channel `out` `[p, q]` from its padded input channel and `r·s` weights, with
    /// its part of the residual sum.
    fn channel(
        plan: &ConvPlan,
        padded: &[f32],
        wp: usize,
        wk: &[f32],
        bias: Option<f32>,
        sum: Option<&[f32]>,
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
            epilogue(plan, bias, out_row, sum.map(|s| &s[pi * plan.q..][..plan.q]));
        }
    }
}

/// The AVX-512 kernels: sixteen outputs of a row accumulate every tap in one register and are
/// stored once (a masked load and store finish the row). The input is split into column
/// phases (one per unit of column stride), so the taps of consecutive outputs are consecutive.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::ops::{Clamp, ConvPlan};

    /// Mask of the first `n` (at most 16) lanes.
    fn first(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as u16
    }

    /// Splits each `wp`-column row of `padded` into its even then its odd columns, each
    /// `⌈wp/2⌉` long, in `phases` (`[rows, 2, ⌈wp/2⌉]`). When `wp` is odd the last element of
    /// each odd-column row is left as it was.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and `phases` must hold `2·⌈wp/2⌉` elements per row of
    /// `padded`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn split_columns(padded: &[f32], wp: usize, phases: &mut [f32]) {
        let half = wp.div_ceil(2);
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        for (src, dst) in padded
            .chunks_exact(wp)
            .zip(phases.chunks_exact_mut(2 * half))
        {
            let (de, d_o) = dst.split_at_mut(half);
            for j in (0..wp).step_by(32) {
                let n = (wp - j).min(32);
                // SAFETY: lanes under the masks are columns j..j + n of the row; the stores
                // write ⌈n/2⌉ and ⌊n/2⌋ elements from j/2, inside the ⌈wp/2⌉-long phase rows.
                unsafe {
                    let lo = _mm512_maskz_loadu_ps(first(n), src.as_ptr().wrapping_add(j));
                    let hi = _mm512_maskz_loadu_ps(
                        first(n.saturating_sub(16)),
                        src.as_ptr().wrapping_add(j + 16),
                    );
                    let (ye, yo) = (
                        _mm512_permutex2var_ps(lo, even, hi),
                        _mm512_permutex2var_ps(lo, odd, hi),
                    );
                    _mm512_mask_storeu_ps(
                        de.as_mut_ptr().wrapping_add(j / 2),
                        first(n.div_ceil(2)),
                        ye,
                    );
                    _mm512_mask_storeu_ps(d_o.as_mut_ptr().wrapping_add(j / 2), first(n / 2), yo);
                }
            }
        }
    }

    /// One output channel `out` `[p, q]` from `phases`, its zero-bordered input split into
    /// column phases `[hp, SW, pitch]` (SW the column stride, a constant so that the tap
    /// offsets divide by it cheaply; for stride 1 the padded input itself), and `r·s` weights
    /// `wk`, with its part `sum` (`[p, q]`) of the residual sum. Tap (ri, si) of output column
    /// j reads phase `si·dw mod SW` at column `j + ⌊si·dw / SW⌋`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, the column stride must be `SW`, and `phases` must cover
    /// every window of `out` as above.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn channel<const SW: usize>(
        plan: &ConvPlan,
        phases: &[f32],
        pitch: usize,
        wk: &[f32],
        bias: Option<f32>,
        sum: Option<&[f32]>,
        out: &mut [f32],
    ) {
        debug_assert!(sum.is_none_or(|s| s.len() == out.len()));
        debug_assert_eq!(plan.stride[1], SW);
        let (sh, [dh, dw]) = (plan.stride[0], plan.dilation);
        let b = _mm512_set1_ps(bias.unwrap_or(0.0));
        // The residual sum and the fused ReLU or Clip (conv's epilogue), applied in registers;
        // without a ReLU or Clip, the infinite bounds change nothing.
        let [lo, hi] = Clamp::bounds(plan.clamp);
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        for (pi, out_row) in out.chunks_exact_mut(plan.q).enumerate() {
            // Up to four vectors of the row at a time: independent accumulators that share
            // each broadcast weight.
            for q0 in (0..plan.q).step_by(4 * 16) {
                let lanes = (plan.q - q0).min(4 * 16);
                // Vectors with a lane in the row: the others are neither loaded nor computed.
                let vectors = lanes.div_ceil(16);
                let masks: [__mmask16; 4] =
                    std::array::from_fn(|v| first(lanes.saturating_sub(16 * v)));
                let mut acc = [b; 4];
                for ri in 0..plan.r {
                    let prow = (pi * sh + ri * dh) * SW;
                    for si in 0..plan.s {
                        let wv = _mm512_set1_ps(wk[ri * plan.s + si]);
                        let (phase, col) = ((si * dw) % SW, (si * dw) / SW);
                        let start = (prow + phase) * pitch + col + q0;
                        debug_assert!(start + lanes <= phases.len());
                        for v in 0..vectors {
                            // SAFETY: the window's last column, q0 + lanes − 1 + col, lies
                            // inside the phase row (the caller's contract); masked lanes are
                            // not read.
                            let x = unsafe {
                                _mm512_maskz_loadu_ps(
                                    masks[v],
                                    phases.as_ptr().wrapping_add(start + 16 * v),
                                )
                            };
                            acc[v] = _mm512_fmadd_ps(wv, x, acc[v]);
                        }
                    }
                }
                if let Some(sum) = sum {
                    let row = &sum[pi * plan.q..][..plan.q];
                    for v in 0..vectors {
                        // SAFETY: as for the store below, lanes inside the row of `sum`.
                        let s = unsafe {
                            _mm512_maskz_loadu_ps(masks[v], row.as_ptr().wrapping_add(q0 + 16 * v))
                        };
                        acc[v] = _mm512_add_ps(acc[v], s);
                    }
                }
                for v in 0..vectors {
                    // max and min return their second operand when either is NaN: NaN stays
                    // NaN, as in `Clamp::apply`.
                    let y = _mm512_min_ps(hi, _mm512_max_ps(lo, acc[v]));
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
