//! AVX-512 MaxPool of a blocked input (`[n][c/16][h·w][16]`, see [`crate::backend::cpu::blocked`])
//! into a planar output: a convolution's blocked output pooled without a planar copy first
//! (ResNet's stem writes its 64 channels blocked and the 3×3/2 MaxPool after it reads them so:
//! the stem's 16 × 16 transposes move to the pool's output, a quarter of the stem's).
//!
//! Every position's sixteen channels are one vector, so the window reduces whole vectors with
//! no shuffle, whatever the strides: separably, as the planar kernels do, each output row's
//! valid input rows into a padded row of vectors (`-inf`, the identity, past both ends, so no
//! column tap needs a range check), then each output's column taps from it. A NaN never wins
//! (the reduction's order and [`step`] as in [`super::avx512`]); a window with no position in
//! the input gives `-inf`. The results of an item's output rows, sixteen channels per position,
//! are transposed sixteen positions at a time into the sixteen output planes.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::avx512::step;
use super::window_rows;
use crate::backend::cpu::avx512::{first, load, store, supported, transpose16};
use crate::backend::cpu::blocked::BLOCK;
use crate::backend::cpu::scratch::TaskBuffer;
use crate::dtype::Element;
use crate::ops::{PoolKind, PoolPlan};

/// Output positions one item computes, about: its results (f32 vectors) stay in L2 until they
/// are transposed.
const ITEM_POSITIONS: usize = 1024;

/// Whether [`max_pool`] computes `plan`: a window MaxPool over whole blocks of channels, with
/// AVX-512 F, BW and VL.
pub fn applies(plan: &PoolPlan) -> bool {
    supported() && !plan.global && plan.kind == PoolKind::Max && plan.c.is_multiple_of(BLOCK)
}

/// MaxPool `plan` (for which [`applies`] holds) of blocked `x` into planar `y`. The threads
/// share (image, channel block, block of output rows) items.
pub fn max_pool<T: Element>(plan: &PoolPlan, x: &[T], y: &mut [T]) {
    assert!(applies(plan));
    let (hw, pq) = (plan.h * plan.w, plan.p * plan.q);
    assert_eq!(x.len(), plan.n * plan.c * hw);
    assert_eq!(y.len(), plan.n * plan.c * pq);
    if y.is_empty() {
        return;
    }
    let rows = (ITEM_POSITIONS / plan.q).clamp(1, plan.p);
    let row_blocks = plan.p.div_ceil(rows);
    // Padded row: `pad` columns of identity, the input row, identity up to the last column an
    // output's taps reach.
    let (sw, dw, pl) = (plan.stride[1], plan.dilation[1], plan.pad[1]);
    let width = (pl + plan.w).max((plan.q - 1) * sw + (plan.s - 1) * dw + 1);
    let out = crate::backend::cpu::Disjoint::new(y);
    (0..plan.n * plan.c / BLOCK * row_blocks)
        .into_par_iter()
        .for_each_init(
            || {
                (
                    TaskBuffer::take(BLOCK * width),
                    TaskBuffer::take(BLOCK * (rows * plan.q).next_multiple_of(BLOCK)),
                )
            },
            |(padded, results), item| {
                // Items in (image, block of rows, channel block) order, as the convolution
                // that wrote `x` shares out its rows: each thread mostly reads what it wrote.
                let blocks = plan.c / BLOCK;
                let (image, rb, cb) = (
                    item / (row_blocks * blocks),
                    item / blocks % row_blocks,
                    item % blocks,
                );
                let block = image * blocks + cb;
                let p0 = rb * rows;
                let p1 = (p0 + rows).min(plan.p);
                let positions = (p1 - p0) * plan.q;
                let xb = &x[block * BLOCK * hw..][..BLOCK * hw];
                let padded = padded.values(BLOCK * width);
                let results = results.values(BLOCK * positions.next_multiple_of(BLOCK));
                // SAFETY: `applies` checked AVX-512 F, BW and VL; the item writes positions
                // p0·q.. of its block's sixteen output planes, which no other item writes.
                unsafe {
                    pool_rows(plan, xb, p0..p1, padded, results);
                    let planes: [&mut [T]; BLOCK] = std::array::from_fn(|l| {
                        out.slice((block * BLOCK + l) * pq + p0 * plan.q, positions)
                    });
                    transpose_into(results, positions, planes);
                }
            },
        );
}

/// Output rows `rows` of one channel block `xb` (`[h·w][16]`) into `results` (`[positions][16]`,
/// f32), through `padded` (a padded row of vectors). Windows of one to three rows and columns
/// (every MaxPool of the model zoo) reduce in loops unrolled for their count ([`vertical`],
/// [`horizontal`]); a generic loop over the taps cost about twice the time in loop control.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL; `xb` holds `16·h·w` values, `padded` the padded
/// row's vectors and `results` a vector per output position of the rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pool_rows<T: Element>(
    plan: &PoolPlan,
    xb: &[T],
    rows: std::ops::Range<usize>,
    padded: &mut [f32],
    results: &mut [f32],
) {
    let ([sh, sw], [dh, dw], [pt, pl]) = (plan.stride, plan.dilation, plan.pad);
    // SAFETY (whole body): every window row read is an input row (`ih < h`, from
    // `window_rows`) of `w` positions; the padded row's vectors from `pl` hold `w` more, and an
    // output's widest column tap, `(q − 1)·sw + (s − 1)·dw`, is under its width; each output
    // row's `q` results lie inside `results`.
    unsafe {
        let identity = _mm512_set1_ps(f32::NEG_INFINITY);
        for v in padded.chunks_exact_mut(BLOCK) {
            _mm512_storeu_ps(v.as_mut_ptr(), identity);
        }
        let row = padded.as_mut_ptr().add(BLOCK * pl);
        let mut window = Vec::with_capacity(plan.r);
        for (o, op) in rows.enumerate() {
            let (lo, hi) = window_rows(plan, op);
            window.clear();
            window.extend(
                (lo..hi).map(|i| xb.as_ptr().add(BLOCK * (op * sh + i * dh - pt) * plan.w)),
            );
            match window[..] {
                [a] => vertical([a], plan.w, row),
                [a, b] => vertical([a, b], plan.w, row),
                [a, b, c] => vertical([a, b, c], plan.w, row),
                _ => vertical(&window[..], plan.w, row),
            }
            let out = results.as_mut_ptr().add(BLOCK * o * plan.q);
            let taps = (padded.as_ptr(), plan.q, sw, dw, out);
            match plan.s {
                1 => horizontal(taps, 1),
                2 => horizontal(taps, 2),
                3 => horizontal(taps, 3),
                s => horizontal(taps, s),
            }
        }
    }
}

/// `row[iw]` = the maximum of the window rows' position `iw`, for `w` positions (none: `-inf`).
/// Called with an array, its rows' loop unrolls.
///
/// # Safety
/// As for [`pool_rows`]: each window row holds `w` positions, `row` has room for `w` vectors.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn vertical<T: Element, W: AsRef<[*const T]>>(window: W, w: usize, row: *mut f32) {
    // SAFETY: the caller's contract.
    unsafe {
        for iw in 0..w {
            let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
            for src in window.as_ref() {
                acc = step::<true>(acc, load(src.add(BLOCK * iw), first(BLOCK)));
            }
            _mm512_storeu_ps(row.add(BLOCK * iw), acc);
        }
    }
}

/// The `q` outputs of one row from its padded row of vertical maxima: output `oq` the maximum
/// of vectors `oq·sw + j·dw`, `j < s`, written to `out` vector by vector. Called with a
/// constant `s`, its taps' loop unrolls.
///
/// # Safety
/// As for [`pool_rows`]: the padded row holds vector `(q − 1)·sw + (s − 1)·dw`, `out` has room
/// for `q` vectors.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn horizontal(
    (padded, q, sw, dw, out): (*const f32, usize, usize, usize, *mut f32),
    s: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        for oq in 0..q {
            let at = padded.add(BLOCK * oq * sw);
            let mut acc = _mm512_loadu_ps(at);
            for j in 1..s {
                acc = step::<true>(acc, _mm512_loadu_ps(at.add(BLOCK * j * dw)));
            }
            _mm512_storeu_ps(out.add(BLOCK * oq), acc);
        }
    }
}

/// The first `positions` vectors of `results` (sixteen channels each) into `planes`, sixteen
/// positions at a time: channel `l` of position `i` to `planes[l][i]`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL; `results` holds `positions` rounded up to sixteen
/// vectors, and each plane `positions` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn transpose_into<T: Element>(
    results: &[f32],
    positions: usize,
    mut planes: [&mut [T]; BLOCK],
) {
    debug_assert!(results.len() >= BLOCK * positions.next_multiple_of(BLOCK));
    for i in (0..positions).step_by(BLOCK) {
        let m = first(positions - i);
        // SAFETY: sixteen vectors from position i lie inside `results` (the contract); the
        // stores, masked to the positions left, inside each plane.
        unsafe {
            let r = std::array::from_fn(|k| _mm512_loadu_ps(results.as_ptr().add(BLOCK * (i + k))));
            for (plane, v) in planes.iter_mut().zip(transpose16(r)) {
                store(plane.as_mut_ptr().add(i), m, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::backend::cpu::blocked::{to_blocked, Blocked};
    use crate::dtype::DType;
    use crate::ops::MaxPool;
    use crate::tensor::{HostData, TensorDesc};

    /// Against the planar kernels, bit for bit (a maximum is exact), FP32 and FP16, with NaNs
    /// among the inputs: ResNet's stem pool (two images, rows of more than one item), a window
    /// past both ends of an odd map with ceil_mode, a dilated window of unequal strides, and a
    /// map of one row, padded on both sides.
    #[test]
    fn matches_the_planar_max_pool() {
        if !supported() {
            return;
        }
        let pool = |kernel_shape, strides, pads, dilations, ceil_mode| MaxPool {
            kernel_shape,
            strides,
            pads,
            dilations,
            ceil_mode,
            ..MaxPool::default()
        };
        for (x, op) in [
            (
                [2, 64, 112, 112],
                pool([3, 3], [2, 2], [1; 4], [1, 1], false),
            ),
            (
                [1, 32, 9, 13],
                pool([3, 2], [2, 3], [2, 1, 2, 1], [1, 1], true),
            ),
            (
                [1, 16, 20, 17],
                pool([2, 3], [1, 2], [0, 1, 1, 0], [3, 2], false),
            ),
            (
                [1, 16, 1, 3],
                pool([1, 2], [1, 2], [0, 1, 0, 1], [1, 1], true),
            ),
        ] {
            for dtype in [DType::F32, DType::F16] {
                let desc = TensorDesc::new(dtype, &x).unwrap();
                let plan = op.plan(&desc).unwrap();
                let len = desc.len();
                // Distinct values in both storage types, every 37th a NaN.
                let values: Vec<f32> = (0..len)
                    .map(|i| match i % 37 {
                        5 => f32::NAN,
                        _ => ((i * 7919) % 2003) as f32 / 64.0 - 15.0,
                    })
                    .collect();
                let planar = match dtype {
                    DType::F32 => HostData::F32(values),
                    DType::F16 => HostData::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
                };
                let blocked = to_blocked(&planar, Blocked::of(&desc).unwrap());
                let case = format!("{dtype} {x:?} {op:?}");
                match (&planar, &blocked) {
                    (HostData::F32(p), HostData::F32(b)) => check(&plan, p, b, &case),
                    (HostData::F16(p), HostData::F16(b)) => check(&plan, p, b, &case),
                    _ => unreachable!(),
                }
            }
        }
    }

    fn check<T: Element>(plan: &PoolPlan, planar: &[T], blocked: &[T], case: &str) {
        let len = plan.n * plan.c * plan.p * plan.q;
        let poison = T::from_f32(7.0e3);
        let (mut want, mut got) = (vec![poison; len], vec![poison; len]);
        super::super::pool(plan, planar, &mut want);
        max_pool(plan, blocked, &mut got);
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                w.to_f32().to_bits(),
                g.to_f32().to_bits(),
                "{case}: output {i}"
            );
        }
        assert!(want.iter().any(|v| v.to_f32().is_finite()), "{case}");
    }
}
