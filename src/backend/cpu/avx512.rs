//! AVX-512 building blocks shared by the CPU kernels.

use std::arch::x86_64::*;

use super::simd;
use crate::dtype::{DType, Element};

/// Fetches the cache line holding `p` for writing (`prefetchw`, which every CPU with AVX-512
/// has; `_mm_prefetch` cannot ask for it on stable Rust): a kernel about to compute values it
/// will store into memory out of cache asks for those lines first, so the stores do not wait
/// for them. A hint: it never faults, whatever `p` is.
#[inline]
pub fn prefetch_for_write<T>(p: *const T) {
    // SAFETY: prefetchw reads and writes no architectural state and does not fault.
    unsafe {
        std::arch::asm!("prefetchw [{}]", in(reg) p, options(nostack, preserves_flags, readonly));
    }
}

/// Sixteen vectors of sixteen f32 transposed: lane `i` of vector `l` of the result is lane `l`
/// of vector `i` of `r`.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
pub unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // Within each 128-bit lane: pairs of rows interleaved, then quads (columns 4L + j of rows
    // 4i..4i + 4 in lane L of `u[4i + j]`), then lanes gathered across quads.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (q, j) = (i / 4 * 4, i % 4);
        let (a, b) = (
            _mm512_castps_pd(t[q + j / 2]),
            _mm512_castps_pd(t[q + 2 + j / 2]),
        );
        _mm512_castpd_ps(if j % 2 == 0 {
            _mm512_unpacklo_pd(a, b)
        } else {
            _mm512_unpackhi_pd(a, b)
        })
    });
    // Column 4L + j: lane L of u[j], u[4 + j], u[8 + j], u[12 + j].
    let mut out = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        let lo02 = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
        let lo13 = _mm512_shuffle_f32x4::<0xdd>(u[j], u[4 + j]);
        let hi02 = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
        let hi13 = _mm512_shuffle_f32x4::<0xdd>(u[8 + j], u[12 + j]);
        out[j] = _mm512_shuffle_f32x4::<0x88>(lo02, hi02);
        out[4 + j] = _mm512_shuffle_f32x4::<0x88>(lo13, hi13);
        out[8 + j] = _mm512_shuffle_f32x4::<0xdd>(lo02, hi02);
        out[12 + j] = _mm512_shuffle_f32x4::<0xdd>(lo13, hi13);
    }
    out
}

/// Whether the functions here run on this CPU: it has AVX-512 F, BW and VL, and the CPU backend's
/// SIMD level (`EIA_CPU_SIMD`) allows AVX-512.
pub fn supported() -> bool {
    simd::level() >= simd::Level::Avx512
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
}

/// Mask of the first `n` lanes (all sixteen for `n ≥ 16`).
#[inline]
pub fn first(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// Mask of the lanes `l` whose column `c + l` lies in `0..w`.
#[inline]
pub fn inside(c: isize, w: isize) -> __mmask16 {
    let lo = (-c).clamp(0, 16) as usize;
    let hi = (w - c).clamp(0, 16) as usize;
    first(hi) & !first(lo)
}

/// Sixteen elements at `p` under mask `m` as f32 (masked lanes zero, not read).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL; every lane under `m` must be readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
pub unsafe fn load<T: Element>(p: *const T, m: __mmask16) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe { load_or(p, m, _mm512_setzero_ps()) }
}

/// [`load`] with the masked lanes taken from `fill`.
///
/// # Safety
/// As for [`load`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
pub unsafe fn load_or<T: Element>(p: *const T, m: __mmask16, fill: __m512) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe {
        match T::DTYPE {
            DType::F32 => _mm512_mask_loadu_ps(fill, m, p.cast()),
            DType::F16 => _mm512_mask_cvtph_ps(fill, m, _mm256_maskz_loadu_epi16(m, p.cast())),
        }
    }
}

/// Stores the lanes of `v` under mask `m` at `p` (FP16 rounded to nearest even).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL; every lane under `m` must be writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn store<T: Element>(p: *mut T, m: __mmask16, v: __m512) {
    // SAFETY: the caller's contract.
    unsafe {
        match T::DTYPE {
            DType::F32 => _mm512_mask_storeu_ps(p.cast(), m, v),
            DType::F16 => _mm256_mask_storeu_epi16(
                p.cast(),
                m,
                _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v),
            ),
        }
    }
}

/// The epilogue of one vector of outputs: `(v + bias) + sum`, as `conv::epilogue` rounds it
/// (a missing bias is −0, which changes nothing), clamped to `[lo, hi]` (max and min return
/// their second operand when either is NaN: NaN stays NaN, as in `Clamp::apply`).
#[target_feature(enable = "avx512f")]
#[inline]
pub fn finished(v: __m512, bias: __m512, sum: Option<__m512>, lo: __m512, hi: __m512) -> __m512 {
    let v = _mm512_add_ps(v, bias);
    let v = sum.map_or(v, |s| _mm512_add_ps(v, s));
    _mm512_min_ps(hi, _mm512_max_ps(lo, v))
}

/// `out = clamp((row + bias) + sum)` (the bounds `[lo, hi]`; the sum in `out`'s storage type,
/// widened in registers), FP16 rounded as stored: [`finished`] over a row of outputs in one
/// pass.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL; `out` and the sum (if any) have `row`'s length.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn finish_into<Y: Element>(
    row: &[f32],
    bias: f32,
    sum: Option<&[Y]>,
    [lo, hi]: [f32; 2],
    out: &mut [Y],
) {
    debug_assert!(out.len() == row.len() && sum.is_none_or(|s| s.len() == row.len()));
    let (b, lo, hi) = (_mm512_set1_ps(bias), _mm512_set1_ps(lo), _mm512_set1_ps(hi));
    for i in (0..row.len()).step_by(16) {
        let m = first(row.len() - i);
        // SAFETY: lanes i..i + 16 under `m` lie inside `row`, `out` and the sum (equal
        // lengths, the caller's contract).
        unsafe {
            let s = sum.map(|s| load(s.as_ptr().add(i), m));
            let v = finished(load(row.as_ptr().add(i), m), b, s, lo, hi);
            store(out.as_mut_ptr().add(i), m, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_moves_every_lane() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        let src: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let mut dst = [0.0f32; 256];
        // SAFETY: AVX-512F is present; the loads and stores stay inside the 256-value arrays.
        unsafe {
            let r = std::array::from_fn(|i| _mm512_loadu_ps(src.as_ptr().add(16 * i)));
            for (l, v) in transpose16(r).into_iter().enumerate() {
                _mm512_storeu_ps(dst.as_mut_ptr().add(16 * l), v);
            }
        }
        for l in 0..16 {
            for i in 0..16 {
                assert_eq!(dst[16 * l + i], src[16 * i + l], "lane {i} of vector {l}");
            }
        }
    }
}
