//! AVX-512 window pools with unit strides whose output plane has the input's size (Inception's
//! and GoogLeNet's 3×3 branch pools: pads `(r − 1)·dilation` in all), on planes small enough
//! for L1 ([`applies`]). Output position `i` of the plane then reads input position `i` shifted
//! by one constant per tap, so the plane is pooled as one flat run of vectors: no lane is lost
//! to a row's end (a 35-wide row would fill 35 of 48 lanes). Two passes, separably: each
//! position's column taps into an f32 scratch plane (`h`), then each position's row taps of
//! `h`, times the reciprocal of its window's count for an average. A tap whose position lies
//! outside the row (or the plane) is masked: its lanes read the reduction's identity, not the
//! neighbouring row's elements. The reductions run in the order of [`super::avx512`]'s
//! (column taps first; a MaxPool from `-inf`, so a NaN never wins). Against that kernel
//! (Inception's 256 × 35 × 35 AveragePool, in-process alternation, median per-round ratios of
//! two runs): 0.82–0.93× the time at batch 8 and on one thread, FP16 at batch 1 on two threads
//! 0.91; FP32 at batch 1 on two threads 0.98 and 1.14 (undecided).

use std::arch::x86_64::*;

use super::avx512::{step, store_all};
use super::Inverse;
use crate::backend::cpu::avx512::{first, load_or, store, supported};
use crate::dtype::Element;
use crate::ops::{PoolKind, PoolPlan};

/// Positions of the largest plane pooled flat: its scratch `h` (f32) and the plane stay in L1.
const MAX_POSITIONS: usize = 4096;

/// Whether [`Flat`] computes `plan`: AVX-512 F, BW and VL, unit strides, an output plane of the
/// input's size and at most [`MAX_POSITIONS`] positions.
pub fn applies(plan: &PoolPlan) -> bool {
    supported()
        && !plan.global
        && plan.stride == [1, 1]
        && (plan.p, plan.q) == (plan.h, plan.w)
        && plan.h * plan.w <= MAX_POSITIONS
}

/// A plan's taps and masks, shared by its planes.
pub struct Flat {
    max: bool,
    /// Positions of a plane (`h·w`).
    len: usize,
    /// Column tap `j`'s shift in positions: `j·dilation − pad_left`.
    col_shift: Vec<isize>,
    /// Row tap `a`'s shift in positions: `(a·dilation − pad_top)·w`.
    row_shift: Vec<isize>,
    /// Per vector `v` of 16 positions and column tap `j` (at `v·s + j`): the lanes whose tap
    /// lies inside the position's row (and whose position lies inside the plane).
    col_masks: Vec<__mmask16>,
    /// Per vector `v` and row tap `a` (at `v·r + a`): the lanes whose tap lies inside the plane.
    row_masks: Vec<__mmask16>,
    /// Averages: the reciprocal of each position's count, padded to whole vectors (empty for
    /// MaxPool).
    inv: Vec<f32>,
}

impl Flat {
    /// The kernel of `plan`, for which [`applies`] holds.
    pub fn new(plan: &PoolPlan, inv: &Inverse) -> Self {
        assert!(applies(plan));
        let w = plan.w as isize;
        let len = plan.h * plan.w;
        let vectors = len.div_ceil(16);
        let col_shift: Vec<isize> = (0..plan.s)
            .map(|j| (j * plan.dilation[1]) as isize - plan.pad[1] as isize)
            .collect();
        let row_taps: Vec<isize> = (0..plan.r)
            .map(|a| (a * plan.dilation[0]) as isize - plan.pad[0] as isize)
            .collect();
        // Every lane of the plane, then each tap's lanes outside cleared: the first or last
        // `|shift|` columns of every row, the first or last `|shift|` rows of the plane.
        let all = |taps: usize| -> Vec<__mmask16> {
            (0..vectors)
                .flat_map(|v| std::iter::repeat_n(first(len - 16 * v), taps))
                .collect()
        };
        let clear = |masks: &mut [__mmask16], taps: usize, tap: usize, from: usize, n: usize| {
            for i in from..from + n {
                masks[i / 16 * taps + tap] &= !(1 << (i % 16));
            }
        };
        let (mut col_masks, mut row_masks) = (all(plan.s), all(plan.r));
        for (j, &d) in col_shift.iter().enumerate() {
            let (off, n) = edge(d, plan.w);
            for row in 0..plan.h {
                clear(&mut col_masks, plan.s, j, row * plan.w + off, n);
            }
        }
        for (a, &d) in row_taps.iter().enumerate() {
            let (off, n) = edge(d, plan.h);
            clear(&mut row_masks, plan.r, a, off * plan.w, n * plan.w);
        }
        let inv = if plan.kind == PoolKind::Max {
            Vec::new()
        } else {
            let mut flat: Vec<f32> = (0..plan.h)
                .flat_map(|r| inv.cols[..plan.w].iter().map(move |&c| c * inv.row(r)))
                .collect();
            flat.resize(vectors * 16, 0.0);
            flat
        };
        Flat {
            max: plan.kind == PoolKind::Max,
            len,
            col_shift,
            row_shift: row_taps.iter().map(|&d| d * w).collect(),
            col_masks,
            row_masks,
            inv,
        }
    }

    /// One plane `x` into its output `y` (both `h·w` elements); `h` is scratch.
    pub fn plane<T: Element>(&self, x: &[T], y: &mut [T], h: &mut Vec<f32>) {
        assert!(x.len() == self.len && y.len() == self.len);
        assert!(supported());
        h.resize(self.len.div_ceil(16) * 16, 0.0);
        // SAFETY: the CPU has AVX-512 F, BW and VL (asserted); the slices have the plan's
        // lengths and `h` whole vectors of them (above).
        unsafe {
            match (self.max, self.col_shift.len(), self.row_shift.len()) {
                (true, 3, 3) => self.pass::<T, true, 3>(x, y, h),
                (true, ..) => self.pass::<T, true, 0>(x, y, h),
                (false, 3, 3) => self.pass::<T, false, 3>(x, y, h),
                (false, ..) => self.pass::<T, false, 0>(x, y, h),
            }
        }
    }

    /// Both passes of one plane: `MAX` pools the maximum (else the average), `K` is 3 for a
    /// 3×3 window (its taps unrolled), else 0.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL; `x` and `y` hold `len` elements, `h` whole
    /// vectors of them; `K` is 0 or the window's rows and columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn pass<T: Element, const MAX: bool, const K: usize>(
        &self,
        x: &[T],
        y: &mut [T],
        h: &mut [f32],
    ) {
        let (s, r) = (self.col_shift.len(), self.row_shift.len());
        let (cols, rows) = if K > 0 {
            (&self.col_shift[..K], &self.row_shift[..K])
        } else {
            (&self.col_shift[..], &self.row_shift[..])
        };
        let hp = h.as_mut_ptr();
        for v in 0..h.len() / 16 {
            let from = x.as_ptr().wrapping_add(16 * v);
            // SAFETY: the masks keep every lane read inside the plane.
            let acc =
                unsafe { reduce::<T, MAX>(from, &self.col_masks[v * s..][..cols.len()], cols) };
            // SAFETY: `h` holds whole vectors.
            unsafe { _mm512_storeu_ps(hp.add(16 * v), acc) };
        }
        let yp = y.as_mut_ptr();
        for v in 0..h.len() / 16 {
            let from = hp.wrapping_add(16 * v).cast_const();
            // SAFETY: as above, inside `h`.
            let mut acc =
                unsafe { reduce::<f32, MAX>(from, &self.row_masks[v * r..][..rows.len()], rows) };
            if !MAX {
                // SAFETY: `inv` holds whole vectors, as many as `h`.
                acc = _mm512_mul_ps(acc, unsafe {
                    _mm512_loadu_ps(self.inv.as_ptr().add(16 * v))
                });
            }
            let left = self.len - 16 * v;
            // SAFETY: the lanes stored are positions of `y`.
            unsafe {
                if left >= 16 {
                    store_all(yp.add(16 * v), acc)
                } else {
                    store(yp.add(16 * v), first(left), acc)
                }
            }
        }
    }
}

/// The positions `off..off + n` of a row (or column) of `len` whose tap shifted by `d` lies
/// outside it: the first `−d` for a negative shift, the last `d` for a positive one.
fn edge(d: isize, len: usize) -> (usize, usize) {
    let n = d.unsigned_abs().min(len);
    if d < 0 {
        (0, n)
    } else {
        (len - n, n)
    }
}

/// The taps of 16 positions from `from`, each shifted by its `shifts[k]` under its `masks[k]`
/// (a masked lane is not read and holds the identity), reduced from the first tap (MaxPool:
/// from the identity, so that a NaN never wins).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL; every lane under a mask must be readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn reduce<U: Element, const MAX: bool>(
    from: *const U,
    masks: &[__mmask16],
    shifts: &[isize],
) -> __m512 {
    let identity = _mm512_set1_ps(if MAX { f32::NEG_INFINITY } else { 0.0 });
    // SAFETY: the caller's contract.
    let tap = |k: usize| unsafe { load_or(from.wrapping_offset(shifts[k]), masks[k], identity) };
    let start = if MAX { identity } else { tap(0) };
    (usize::from(!MAX)..shifts.len()).fold(start, |acc, k| step::<MAX>(acc, tap(k)))
}
