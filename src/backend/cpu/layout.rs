//! CPU layout ops on raw elements (bit copies, so FP16 is never widened), multi-threaded above
//! `TASK_BYTES`: a chunked memcpy for the copies, one memcpy per (row, input) for Concat, and
//! for Transpose either
//! - contiguous runs (the input's innermost dimension stays innermost): one memcpy per output
//!   row, the rows' input offsets stepped by an odometer; or
//! - a cache-blocked 2-D transpose of the input's innermost dimension (`i`, contiguous in `x`)
//!   and the output's innermost (`j`, contiguous in `y`) for every index of the other
//!   dimensions: tiles of about `TILE × TILE` elements (stretched along the longer side when the
//!   other is short), so a tile's input rows and output rows stay in L1, each tile transposed in
//!   register blocks (`Bits::widest`: 16 × 16 for 32-bit elements on AVX-512, 32 × 32 for 16-bit
//!   ones on AVX-512 with BW and 16 × 16 on AVX2, else 4 × 4 and 8 × 8 in SSE2 on x86-64), the edges in the narrower blocks,
//!   then element by element. NCHW ↔ NHWC and batched matrix transposes are this case.

use rayon::prelude::*;

use crate::ops::{LayoutKind, LayoutPlan};
use crate::tensor::HostData;

/// Bytes one task moves at least (smaller jobs run on the calling thread).
const TASK_BYTES: usize = 1 << 18;
/// Side of a square transpose tile, in elements (64 × 64 × 4 bytes in and out fit in L1).
/// (Prefetching the next tile's input rows while transposing one took 1.13–1.23× the time on
/// Zen 4: `eia run --filter transpose`, 6 alternated rounds.)
const TILE: usize = 64;

/// Computes `plan` from `x` (its inputs, in order) into `y`.
pub fn layout(plan: &LayoutPlan, x: &[&HostData], y: &mut HostData) {
    match y {
        HostData::F32(y) => run::<u32>(plan, x, bytemuck::cast_slice_mut(y)),
        HostData::F16(y) => run::<u16>(plan, x, bytemuck::cast_slice_mut(y)),
    }
}

/// `x` viewed as `shape` (no dimension of one, rank ≥ 2) with its dimensions permuted by `perm`,
/// as [`LayoutKind::Transpose`] moves it.
pub(super) fn transposed(x: &HostData, shape: &[usize], perm: &[usize]) -> HostData {
    let mut y = HostData::filled(x.dtype(), x.len(), 0.0);
    match &mut y {
        HostData::F32(v) => transpose::<u32>(elems(x), bytemuck::cast_slice_mut(v), shape, perm),
        HostData::F16(v) => transpose::<u16>(elems(x), bytemuck::cast_slice_mut(v), shape, perm),
    }
    y
}

fn elems<T: bytemuck::Pod>(x: &HostData) -> &[T] {
    bytemuck::cast_slice(x.as_bytes())
}

fn run<T: Bits>(plan: &LayoutPlan, x: &[&HostData], y: &mut [T]) {
    match &plan.kind {
        LayoutKind::Copy => copy(elems::<T>(x[0]), y),
        LayoutKind::Concat { outer, widths } => {
            let total: usize = widths.iter().sum();
            if total == 0 || *outer == 0 {
                return;
            }
            let inputs: Vec<&[T]> = x.iter().map(|t| elems::<T>(t)).collect();
            let rows_per_task = (TASK_BYTES / (total * size_of::<T>())).max(1);
            let work = |(r0, yc): (usize, &mut [T])| {
                for (r, row) in yc.chunks_mut(total).enumerate() {
                    let r = r0 * rows_per_task + r;
                    let mut at = 0;
                    for (xi, &w) in inputs.iter().zip(widths) {
                        row[at..at + w].copy_from_slice(&xi[r * w..(r + 1) * w]);
                        at += w;
                    }
                }
            };
            if outer * total * size_of::<T>() <= TASK_BYTES {
                y.chunks_mut(total * rows_per_task)
                    .enumerate()
                    .for_each(work);
            } else {
                y.par_chunks_mut(total * rows_per_task)
                    .enumerate()
                    .for_each(work);
            }
        }
        LayoutKind::Transpose { shape, perm } => transpose(elems::<T>(x[0]), y, shape, perm),
    }
}

/// `y = x`, in parallel chunks when large.
fn copy<T: Bits>(x: &[T], y: &mut [T]) {
    let chunk = (TASK_BYTES / size_of::<T>()).max(1);
    if x.len() <= chunk {
        y.copy_from_slice(x);
    } else {
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(y, x)| y.copy_from_slice(x));
    }
}

/// Runs `work(first, last)` over `0..n` items in contiguous ranges of `per_task` items, on the
/// pool when there is more than one range.
fn tasks(n: usize, per_task: usize, work: impl Fn(usize, usize) + Sync) {
    let per_task = per_task.max(1);
    let count = n.div_ceil(per_task);
    let range = |t: usize| work(t * per_task, ((t + 1) * per_task).min(n));
    if count <= 1 {
        (0..count).for_each(range);
    } else {
        (0..count).into_par_iter().for_each(range);
    }
}

/// A storage element moved as bits, with a register-blocked square transpose.
trait Bits: bytemuck::Pod + Send + Sync {
    /// Side of `block`.
    const B: usize;

    /// `y[i·sy + j] = x[i + j·sx]` for `i, j < B`.
    ///
    /// # Safety
    /// Those elements lie inside `x`'s and `y`'s allocations, and no other thread touches the
    /// written ones.
    unsafe fn block(x: *const Self, sx: usize, y: *mut Self, sy: usize);

    /// The widest square block this CPU runs: its side and its transpose, with `block`'s
    /// contract.
    fn widest() -> (usize, BlockFn<Self>) {
        (Self::B, Self::block)
    }
}

/// A square block transpose (see [`Bits::block`]).
type BlockFn<T> = unsafe fn(*const T, usize, *mut T, usize);

impl Bits for u32 {
    const B: usize = 4;

    /// 16 × 16 on AVX-512 (one 64-byte load and store per row: NHWC → NCHW of 8×56×56×64
    /// FP32 took 0.59 ms in 4 × 4 blocks, 44% of a copy of the same bytes).
    #[cfg(target_arch = "x86_64")]
    fn widest() -> (usize, BlockFn<u32>) {
        if super::simd::level() >= super::simd::Level::Avx512 {
            (16, block16)
        } else {
            (Self::B, Self::block)
        }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn block(x: *const u32, sx: usize, y: *mut u32, sy: usize) {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86-64; the four 16-byte rows read and written lie inside
        // the buffers by the caller's contract (unaligned loads and stores).
        unsafe {
            let r = |j: usize| _mm_loadu_si128(x.add(j * sx) as *const __m128i);
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            let t0 = _mm_unpacklo_epi32(r0, r1);
            let t1 = _mm_unpacklo_epi32(r2, r3);
            let t2 = _mm_unpackhi_epi32(r0, r1);
            let t3 = _mm_unpackhi_epi32(r2, r3);
            let w = |i: usize, v| _mm_storeu_si128(y.add(i * sy) as *mut __m128i, v);
            w(0, _mm_unpacklo_epi64(t0, t1));
            w(1, _mm_unpackhi_epi64(t0, t1));
            w(2, _mm_unpacklo_epi64(t2, t3));
            w(3, _mm_unpackhi_epi64(t2, t3));
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn block(x: *const u32, sx: usize, y: *mut u32, sy: usize) {
        // SAFETY: the caller's contract.
        unsafe { scalar(x, sx, y, sy, 4, 4) }
    }
}

impl Bits for u16 {
    const B: usize = 8;

    /// 32 × 32 on AVX-512 with BW (a whole 64-byte line loaded and stored per row), 16 × 16 on
    /// AVX2 (32 bytes per row), in a copy compiled for AVX-512's 32 registers where the CPU has
    /// them but not BW.
    #[cfg(target_arch = "x86_64")]
    fn widest() -> (usize, BlockFn<u16>) {
        let level = super::simd::level();
        if super::avx512::supported() {
            (32, block32_u16)
        } else if level >= super::simd::Level::Avx512 {
            (16, block16_u16_x32)
        } else if level >= super::simd::Level::Avx2 {
            (16, block16_u16)
        } else {
            (Self::B, Self::block)
        }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn block(x: *const u16, sx: usize, y: *mut u16, sy: usize) {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86-64; the eight 16-byte rows read and written lie inside
        // the buffers by the caller's contract (unaligned loads and stores).
        unsafe {
            let r = |j: usize| _mm_loadu_si128(x.add(j * sx) as *const __m128i);
            let (r0, r1, r2, r3, r4, r5, r6, r7) = (r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7));
            // Pairs of rows interleaved, then quads, then all eight.
            let a0 = _mm_unpacklo_epi16(r0, r1);
            let a1 = _mm_unpacklo_epi16(r2, r3);
            let a2 = _mm_unpacklo_epi16(r4, r5);
            let a3 = _mm_unpacklo_epi16(r6, r7);
            let a4 = _mm_unpackhi_epi16(r0, r1);
            let a5 = _mm_unpackhi_epi16(r2, r3);
            let a6 = _mm_unpackhi_epi16(r4, r5);
            let a7 = _mm_unpackhi_epi16(r6, r7);
            let b0 = _mm_unpacklo_epi32(a0, a1);
            let b1 = _mm_unpacklo_epi32(a2, a3);
            let b2 = _mm_unpackhi_epi32(a0, a1);
            let b3 = _mm_unpackhi_epi32(a2, a3);
            let b4 = _mm_unpacklo_epi32(a4, a5);
            let b5 = _mm_unpacklo_epi32(a6, a7);
            let b6 = _mm_unpackhi_epi32(a4, a5);
            let b7 = _mm_unpackhi_epi32(a6, a7);
            let w = |i: usize, v| _mm_storeu_si128(y.add(i * sy) as *mut __m128i, v);
            w(0, _mm_unpacklo_epi64(b0, b1));
            w(1, _mm_unpackhi_epi64(b0, b1));
            w(2, _mm_unpacklo_epi64(b2, b3));
            w(3, _mm_unpackhi_epi64(b2, b3));
            w(4, _mm_unpacklo_epi64(b4, b5));
            w(5, _mm_unpackhi_epi64(b4, b5));
            w(6, _mm_unpacklo_epi64(b6, b7));
            w(7, _mm_unpackhi_epi64(b6, b7));
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn block(x: *const u16, sx: usize, y: *mut u16, sy: usize) {
        // SAFETY: the caller's contract.
        unsafe { scalar(x, sx, y, sy, 8, 8) }
    }
}

/// [`Bits::block`] for 16 × 16 32-bit elements, through [`super::avx512::transpose16`] (lane
/// shuffles: every bit pattern moves unchanged).
///
/// # Safety
/// The CPU must support AVX-512F; the rest as [`Bits::block`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block16(x: *const u32, sx: usize, y: *mut u32, sy: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the sixteen 64-byte rows read and written lie inside the buffers by the caller's
    // contract (unaligned loads and stores); AVX-512F by the caller's.
    unsafe {
        let r = std::array::from_fn(|j| _mm512_loadu_ps(x.add(j * sx).cast()));
        for (i, v) in super::avx512::transpose16(r).into_iter().enumerate() {
            _mm512_storeu_ps(y.add(i * sy).cast(), v);
        }
    }
}

/// Eight vectors of 16-bit elements (rows `r..r + 8`, loaded by `row(j)`) transposed within
/// each 128-bit lane, given the unpack intrinsics of one vector width (`lo16, hi16, lo32, hi32,
/// lo64, hi64`): vector `c` of the result holds, in lane `L`, column `8L + c` of the eight rows.
/// Straight-line code: written as loops over arrays or through `std::array::from_fn`, builds
/// have left the stages as calls or loops through memory (8×56×56×64 NHWC → NCHW FP16, two
/// threads, Intel Xeon model 207: 1.6–2.8 ms, 5–8% of a copy, where the SSE2 8 × 8 blocks took
/// 0.22–0.34 ms).
macro_rules! transpose8_in_lanes {
    ($row:expr, $r:expr, $lo16:ident, $hi16:ident, $lo32:ident, $hi32:ident, $lo64:ident, $hi64:ident) => {{
        let (a0, a1, a2, a3) = ($row($r), $row($r + 1), $row($r + 2), $row($r + 3));
        let (a4, a5, a6, a7) = ($row($r + 4), $row($r + 5), $row($r + 6), $row($r + 7));
        // Rows 2k, 2k + 1 interleaved: columns 0–3 of each lane's eight (lo), 4–7 (hi).
        let (b0, b1, b2, b3) = ($lo16(a0, a1), $hi16(a0, a1), $lo16(a2, a3), $hi16(a2, a3));
        let (b4, b5, b6, b7) = ($lo16(a4, a5), $hi16(a4, a5), $lo16(a6, a7), $hi16(a6, a7));
        // Rows 4m..4m + 4: column pairs (0, 1), (2, 3), (4, 5), (6, 7).
        let (c0, c1, c2, c3) = ($lo32(b0, b2), $hi32(b0, b2), $lo32(b1, b3), $hi32(b1, b3));
        let (c4, c5, c6, c7) = ($lo32(b4, b6), $hi32(b4, b6), $lo32(b5, b7), $hi32(b5, b7));
        [
            $lo64(c0, c4),
            $hi64(c0, c4),
            $lo64(c1, c5),
            $hi64(c1, c5),
            $lo64(c2, c6),
            $hi64(c2, c6),
            $lo64(c3, c7),
            $hi64(c3, c7),
        ]
    }};
}

/// [`Bits::block`] for 16 × 16 16-bit elements: interleaved as 16-, 32- and 64-bit pairs within
/// each 128-bit half (after which vector `c` of each group of eight rows holds column `c` of
/// those rows in its low half and column `c + 8` in its high half), then the halves of the two
/// groups joined.
///
/// # Safety
/// The CPU must support AVX2; the rest as [`Bits::block`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block16_u16(x: *const u16, sx: usize, y: *mut u16, sy: usize) {
    // SAFETY: the caller's contract.
    unsafe { block16_u16_body(x, sx, y, sy) }
}

/// [`block16_u16`] compiled for AVX-512 F and VL (a CPU without BW, which [`block32_u16`]
/// needs), whose 32 vector registers hold its sixteen rows and their shuffles: with AVX2's
/// sixteen the compiler keeps some on the stack.
///
/// # Safety
/// The CPU must support AVX-512 F and VL; the rest as [`Bits::block`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl")]
unsafe fn block16_u16_x32(x: *const u16, sx: usize, y: *mut u16, sy: usize) {
    // SAFETY: the caller's contract.
    unsafe { block16_u16_body(x, sx, y, sy) }
}

/// The body of [`block16_u16`], inlined into each copy (compiled with that copy's features).
///
/// # Safety
/// As [`block16_u16`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block16_u16_body(x: *const u16, sx: usize, y: *mut u16, sy: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the sixteen 32-byte rows read and written lie inside the buffers by the caller's
    // contract (unaligned loads and stores); AVX2 by the caller's.
    unsafe {
        let row = |j: usize| _mm256_loadu_si256(x.add(j * sx).cast());
        macro_rules! group {
            ($r:expr) => {
                transpose8_in_lanes!(
                    row,
                    $r,
                    _mm256_unpacklo_epi16,
                    _mm256_unpackhi_epi16,
                    _mm256_unpacklo_epi32,
                    _mm256_unpackhi_epi32,
                    _mm256_unpacklo_epi64,
                    _mm256_unpackhi_epi64
                )
            };
        }
        let (g0, g1) = (group!(0), group!(8));
        for c in 0..8 {
            let (lo, hi) = (g0[c], g1[c]);
            _mm256_storeu_si256(
                y.add(c * sy).cast(),
                _mm256_permute2x128_si256(lo, hi, 0x20),
            );
            _mm256_storeu_si256(
                y.add((c + 8) * sy).cast(),
                _mm256_permute2x128_si256(lo, hi, 0x31),
            );
        }
    }
}

/// [`Bits::block`] for 32 × 32 16-bit elements, one 64-byte vector per row: within each 128-bit
/// lane, each group of eight rows transposed as in [`block16_u16_body`] (after which vector
/// `8g + c` holds, in lane `L`, column `8L + c` of rows `8g..8g + 8`), then the four groups'
/// lanes `L` gathered into output row `8L + c` by a 4 × 4 transpose of 128-bit lanes. 160
/// shuffles for 2 KiB, where 16 × 16 blocks take 256.
///
/// # Safety
/// The CPU must support AVX-512 F and BW; the rest as [`Bits::block`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn block32_u16(x: *const u16, sx: usize, y: *mut u16, sy: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the thirty-two 64-byte rows read and written lie inside the buffers by the
    // caller's contract (unaligned loads and stores); AVX-512 F and BW by the caller's.
    unsafe {
        let row = |j: usize| _mm512_loadu_si512(x.add(j * sx).cast());
        macro_rules! group {
            ($r:expr) => {
                transpose8_in_lanes!(
                    row,
                    $r,
                    _mm512_unpacklo_epi16,
                    _mm512_unpackhi_epi16,
                    _mm512_unpacklo_epi32,
                    _mm512_unpackhi_epi32,
                    _mm512_unpacklo_epi64,
                    _mm512_unpackhi_epi64
                )
            };
        }
        let (r0, r1, r2, r3) = (group!(0), group!(8), group!(16), group!(24));
        for c in 0..8 {
            let (g0, g1, g2, g3) = (r0[c], r1[c], r2[c], r3[c]);
            // Lanes [g0₀, g0₁, g1₀, g1₁], [g0₂, g0₃, g1₂, g1₃], and the same of g2, g3.
            let t0 = _mm512_shuffle_i32x4::<0x44>(g0, g1);
            let t1 = _mm512_shuffle_i32x4::<0xee>(g0, g1);
            let t2 = _mm512_shuffle_i32x4::<0x44>(g2, g3);
            let t3 = _mm512_shuffle_i32x4::<0xee>(g2, g3);
            let w = |l: usize, v| _mm512_storeu_si512(y.add((8 * l + c) * sy).cast(), v);
            w(0, _mm512_shuffle_i32x4::<0x88>(t0, t2));
            w(1, _mm512_shuffle_i32x4::<0xdd>(t0, t2));
            w(2, _mm512_shuffle_i32x4::<0x88>(t1, t3));
            w(3, _mm512_shuffle_i32x4::<0xdd>(t1, t3));
        }
    }
}

/// `y[i·sy + j] = x[i + j·sx]` for `i < ni`, `j < nj`, element by element.
///
/// # Safety
/// As [`Bits::block`], for those elements.
unsafe fn scalar<T: Copy>(x: *const T, sx: usize, y: *mut T, sy: usize, ni: usize, nj: usize) {
    for i in 0..ni {
        for j in 0..nj {
            // SAFETY: the caller's contract.
            unsafe { *y.add(i * sy + j) = *x.add(i + j * sx) };
        }
    }
}

/// `y[i·sy + j] = x[i + j·sx]` for `i < ni`, `j < nj`: full register blocks of side `b`
/// (`block`), the edges in [`Bits::block`]'s narrower ones where `b` is wider, then scalar.
///
/// # Safety
/// As [`Bits::block`], for those elements; `block` is [`Bits::widest`]'s.
unsafe fn tile<T: Bits>(
    x: *const T,
    sx: usize,
    y: *mut T,
    sy: usize,
    (ni, nj): (usize, usize),
    (b, block): (usize, BlockFn<T>),
) {
    let (fi, fj) = (ni / b * b, nj / b * b);
    // SAFETY (every call below): the elements lie inside the tile, which the caller vouches
    // for.
    unsafe {
        for j in (0..fj).step_by(b) {
            for i in (0..fi).step_by(b) {
                block(x.add(i + j * sx), sx, y.add(i * sy + j), sy);
            }
        }
        // The edges: in the narrow blocks where these were wide ones, else element by element.
        let edge = |x: *const T, y: *mut T, ni: usize, nj: usize| {
            if b > T::B {
                tile(x, sx, y, sy, (ni, nj), (T::B, T::block as BlockFn<T>));
            } else {
                scalar(x, sx, y, sy, ni, nj);
            }
        };
        edge(x.add(fi), y.add(fi * sy), ni - fi, fj);
        edge(x.add(fj * sx), y.add(fj), ni, nj - fj);
    }
}

/// Walks a row-major index over `dims`, tracking its offsets in two layouts.
struct Odometer<'a> {
    dims: &'a [usize],
    /// Per dimension: its stride in x and in y.
    strides: &'a [(usize, usize)],
    index: Vec<usize>,
    at: (usize, usize),
}

impl<'a> Odometer<'a> {
    /// Starts at row-major position `pos`.
    fn new(dims: &'a [usize], strides: &'a [(usize, usize)], mut pos: usize) -> Self {
        let mut index = vec![0; dims.len()];
        let mut at = (0, 0);
        for k in (0..dims.len()).rev() {
            index[k] = pos % dims[k];
            pos /= dims[k];
            at.0 += index[k] * strides[k].0;
            at.1 += index[k] * strides[k].1;
        }
        Odometer {
            dims,
            strides,
            index,
            at,
        }
    }

    /// Moves to the next position (wrapping past the last).
    fn step(&mut self) {
        for k in (0..self.dims.len()).rev() {
            self.index[k] += 1;
            self.at.0 += self.strides[k].0;
            self.at.1 += self.strides[k].1;
            if self.index[k] < self.dims[k] {
                return;
            }
            self.at.0 -= self.dims[k] * self.strides[k].0;
            self.at.1 -= self.dims[k] * self.strides[k].1;
            self.index[k] = 0;
        }
    }
}

/// A pointer into `y` shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct Out<T>(*mut T);
// SAFETY: tasks write disjoint elements of the one output (see `transpose`).
unsafe impl<T> Send for Out<T> {}
unsafe impl<T> Sync for Out<T> {}

impl<T> Out<T> {
    /// The pointer (a method, so that closures capture the whole `Out`, not its field).
    fn ptr(self) -> *mut T {
        self.0
    }
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn transpose<T: Bits>(x: &[T], y: &mut [T], shape: &[usize], perm: &[usize]) {
    assert_eq!(x.len(), y.len());
    let rank = shape.len();
    let in_strides = strides(shape);
    // Output dimension k: its extent, and its (input, output) strides.
    let od: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
    let os = strides(&od);
    let st: Vec<(usize, usize)> = (0..rank).map(|k| (in_strides[perm[k]], os[k])).collect();
    let last = rank - 1;
    let q = perm.iter().position(|&a| a == last).unwrap();
    let size = size_of::<T>();
    if q == last {
        // Output rows are contiguous runs of the input.
        let n = od[last];
        let rows = y.len() / n;
        let (dims, st) = (&od[..last], &st[..last]);
        let out = Out(y.as_mut_ptr());
        tasks(rows, TASK_BYTES / (n * size), |r0, r1| {
            let mut odo = Odometer::new(dims, st, r0);
            for r in r0..r1 {
                let xi = odo.at.0;
                // SAFETY: row r of y (r < rows) is written by this task only.
                let row = unsafe { std::slice::from_raw_parts_mut(out.ptr().add(r * n), n) };
                row.copy_from_slice(&x[xi..xi + n]);
                odo.step();
            }
        });
        return;
    }
    // For every index of the other dimensions, y[i·syi + j] = x[i + j·sxj] with i along output
    // dimension q (the input's innermost) and j along the output's innermost.
    let (ni, nj) = (od[q], od[last]);
    let (sxj, syi) = (st[last].0, st[q].1);
    let others: Vec<usize> = (0..last).filter(|&k| k != q).collect();
    let (odims, ost): (Vec<usize>, Vec<(usize, usize)>) =
        others.iter().map(|&k| (od[k], st[k])).unzip();
    // Tile sides: square, stretched along one side when the other is short.
    let ti0 = ni.min(TILE);
    let tj = nj.min((TILE * TILE / ti0).max(TILE));
    let ti = ni.min((TILE * TILE / tj).max(TILE));
    let (tiles_i, tiles_j) = (ni.div_ceil(ti), nj.div_ceil(tj));
    let per_outer = tiles_i * tiles_j;
    let outer: usize = odims.iter().product();
    let out = Out(y.as_mut_ptr());
    let widest = T::widest();
    tasks(
        outer * per_outer,
        TASK_BYTES / (ti * tj * size),
        |t0, t1| {
            let mut odo = Odometer::new(&odims, &ost, t0 / per_outer);
            for t in t0..t1 {
                let (i0, j0) = (t % per_outer / tiles_j * ti, t % tiles_j * tj);
                let (xb, yb) = odo.at;
                // SAFETY: the tile (outer index, i0.., j0..) lies inside x and y (the plan's
                // shapes), and tasks own disjoint tiles of y.
                unsafe {
                    tile(
                        x.as_ptr().add(xb + i0 + j0 * sxj),
                        sxj,
                        out.ptr().add(yb + i0 * syi + j0),
                        syi,
                        (ti.min(ni - i0), tj.min(nj - j0)),
                        widest,
                    );
                }
                if (t + 1) % per_outer == 0 {
                    odo.step();
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::ops::Transpose;
    use crate::tensor::TensorDesc;

    /// Runs Transpose(`perm`) on `0, 1, 2, …` as `dtype` and checks every output element
    /// against the index formula.
    fn check(dtype: DType, shape: &[usize], perm: &[i64]) {
        let desc = TensorDesc::new(dtype, shape).unwrap();
        let plan = Transpose {
            perm: Some(perm.to_vec()),
        }
        .plan(&desc)
        .unwrap();
        let n = desc.len();
        // Distinct bit patterns per element (FP16: exact integers up to 2048, then the index's
        // low 16 bits as raw bits).
        let (x, mut y) = match dtype {
            DType::F32 => (
                HostData::F32((0..n).map(|i| i as f32).collect()),
                HostData::F32(vec![f32::NAN; n]),
            ),
            DType::F16 => (
                HostData::F16((0..n).map(|i| crate::f16::from_bits(i as u16)).collect()),
                HostData::F16(vec![crate::f16::NAN; n]),
            ),
        };
        layout(&plan, &[&x], &mut y);
        let bits = |d: &HostData| -> Vec<u32> {
            match d {
                HostData::F32(v) => v.iter().map(|&e| e as u32).collect(),
                HostData::F16(v) => v.iter().map(|e| e.to_bits() as u32).collect(),
            }
        };
        let (x, y) = (bits(&x), bits(&y));
        let xs = strides(shape);
        let od: Vec<usize> = perm.iter().map(|&a| shape[a as usize]).collect();
        for (j, &v) in y.iter().enumerate() {
            let (mut r, mut xi) = (j, 0);
            for k in (0..od.len()).rev() {
                xi += (r % od[k]) * xs[perm[k] as usize];
                r /= od[k];
            }
            assert_eq!(v, x[xi], "{dtype} {shape:?} {perm:?} at {j}");
        }
    }

    #[test]
    fn transpose_matches_the_index_formula() {
        for dtype in DType::ALL {
            for (shape, perm) in [
                (&[3usize, 4, 5][..], &[2i64, 0, 1][..]),
                (&[2, 3, 4, 5], &[0, 2, 3, 1]),
                (&[2, 3, 4, 5], &[3, 1, 2, 0]),
                (&[70, 45], &[1, 0]),
                (&[2, 3, 4, 5], &[1, 0, 2, 3]),
                // Many tiles and tasks: NCHW ↔ NHWC, batched matrices, short sides, row copies.
                (&[3, 67, 29, 31], &[0, 2, 3, 1]),
                (&[3, 29, 31, 67], &[0, 3, 1, 2]),
                (&[2, 70, 3, 50], &[0, 2, 3, 1]),
                (&[2, 3, 50, 70], &[0, 3, 1, 2]),
                (&[5, 130, 203], &[0, 2, 1]),
                (&[1000, 3], &[1, 0]),
                (&[3, 20000], &[1, 0]),
                (&[7, 9, 5, 400], &[2, 0, 3, 1]),
                (&[40, 30, 60], &[1, 0, 2]),
                (&[6, 5, 4, 3, 30], &[4, 2, 0, 3, 1]),
            ] {
                check(dtype, shape, perm);
            }
        }
    }
}
