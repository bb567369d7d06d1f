//! CPU GEMM in FP32: batched and strided (transposes cost nothing), with the C broadcast and the
//! fused ReLU or Clip epilogue applied around the core product. Each output matrix is cut into
//! one block per thread along its longer side (rows, or columns when it has fewer rows than
//! columns), and each block is one single-threaded product on the `gemm` crate's kernels.
//! With AVX-512, one to [`FEW_ROWS`] rows against a B whose columns are contiguous (a
//! classifier's transposed weights, FP32 or FP16) read B once, a few columns side by side
//! ([`few_rows`]); other outputs with a single row or column take a vectorised GEMV. Other
//! FP16 GEMMs with few rows widen B one L2-sized panel of columns at a time, just before
//! multiplying it (`gemm_f16_b`).

use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

use half::f16;

use super::scratch::TaskBuffer;
use super::simd::{self, multiversion};
use super::Disjoint;
use crate::dtype::Element;
use crate::ops::{Clamp, GemmPlan, MatLayout};

/// Below this many FLOPs per matrix a matrix is not split across threads (a batch of such
/// matrices runs one matrix per thread instead).
const SMALL_MATRIX_FLOPS: usize = 1 << 21;

/// Fewest matrix rows per part when a GEMV's sum over K is split across threads.
const MIN_GEMV_ROWS: usize = 64;

/// Most rows of A for which an FP16 B is widened panel by panel (see [`gemm_f16_b`]).
const PANEL_MAX_ROWS: usize = 128;

/// Target size of one widened panel of B.
const PANEL_BYTES: usize = 512 << 10;

/// Column blocks are multiples of this many columns (one AVX-512 vector).
const COLUMN_ALIGN: usize = 16;

/// Lanes of the independent accumulators that let a dot product vectorise.
const LANES: usize = 16;

/// Most rows of A for which [`few_rows`] multiplies a B with contiguous columns by reading them
/// once, side by side, instead of the `gemm` crate packing B for every product.
const FEW_ROWS: usize = 8;

/// Fewest terms per output (`k`) for [`few_rows`] with more than one row: each output ends with
/// a reduction across its sixteen lanes, which a short sum does not pay for.
const FEW_ROWS_MIN_K: usize = 256;

/// Computes `plan` in FP32. `y` is fully written; its previous contents are ignored.
pub fn gemm_f32(plan: &GemmPlan, a: &[f32], b: &[f32], c: Option<&[f32]>, y: &mut [f32]) {
    let mn = plan.m * plan.n;
    if mn == 0 {
        return;
    }
    let small = is_small(plan);
    // Output matrix `index`, cut into at most `parts` blocks computed in parallel.
    let matrix = |index: usize, y: &mut [f32], parts: usize| {
        let (a_off, b_off) = plan.batch_offsets(index);
        let (a, b) = (&a[a_off..], &b[b_off..]);
        if reads_columns_once(plan) {
            return few_rows(plan, a, b, c, y, parts);
        }
        if plan.m == 1 || plan.n == 1 {
            return gemv(plan, a, b, c, y, parts);
        }
        let out = Disjoint::new(y);
        // SAFETY: `out` is this matrix's m×n output, exclusively borrowed here, and the blocks
        // of `split` are disjoint rectangles of it, one per call.
        let run = |block: Block| {
            let b = Columns {
                at: &b[block.cols.start * plan.b.col..],
                layout: plan.b,
            };
            unsafe { product(plan, a, b, c, out, block) }
        };
        let mut blocks = split(plan.m, plan.n, parts);
        if blocks.len() == 1 {
            run(blocks.remove(0));
        } else {
            blocks.into_par_iter().for_each(run);
        }
    };
    if plan.batch() > 1 && small {
        y.par_chunks_mut(mn)
            .enumerate()
            .for_each(|(i, yb)| matrix(i, yb, 1));
    } else {
        let parts = if small {
            1
        } else {
            rayon::current_num_threads()
        };
        for (i, yb) in y.chunks_mut(mn).enumerate() {
            matrix(i, yb, parts);
        }
    }
}

/// A rectangle of one output matrix.
#[derive(Clone, Debug, PartialEq)]
struct Block {
    rows: Range<usize>,
    cols: Range<usize>,
}

/// Cuts an `m×n` matrix into at most `parts` blocks along its longer side: along the rows when
/// `m ≥ n`, else along the columns in multiples of [`COLUMN_ALIGN`]. Each block's product packs
/// all of the operand that is not cut (B for row blocks, A for column blocks), so cutting the
/// longer side packs the smaller operand once per block instead of the larger one. (Skinny
/// FP32 GEMMs cut along their few rows, as before, ran at 0.57–0.74× onnxruntime on 2 threads:
/// `eia run --filter gemm/`, Intel Xeon model 207, 32×1000×2048 ~85 → ~135 GFLOPS,
/// 64×3136×576 ~115 → ~185.)
fn split(m: usize, n: usize, parts: usize) -> Vec<Block> {
    if m >= n {
        let rows = m.div_ceil(parts.max(1));
        (0..m)
            .step_by(rows)
            .map(|r0| Block {
                rows: r0..(r0 + rows).min(m),
                cols: 0..n,
            })
            .collect()
    } else {
        let cols = n.div_ceil(parts.max(1)).next_multiple_of(COLUMN_ALIGN);
        (0..n)
            .step_by(cols)
            .map(|c0| Block {
                rows: 0..m,
                cols: c0..(c0 + cols).min(n),
            })
            .collect()
    }
}

/// The columns of B a block multiplies, from its first one: `at[kk·layout.row + jj·layout.col]`
/// is `B[kk, c0 + jj]`.
#[derive(Clone, Copy)]
struct Columns<'a> {
    at: &'a [f32],
    layout: MatLayout,
}

/// One block of one output matrix on the calling thread: `y = clamp?(alpha·A·B + beta·C)`.
///
/// # Safety
/// `out` must point at the matrix's `m×n` row-major output, and no other thread may access
/// `block` of it during the call.
unsafe fn product(
    plan: &GemmPlan,
    a: &[f32],
    b: Columns,
    c: Option<&[f32]>,
    out: Disjoint,
    block: Block,
) {
    let (n, k) = (plan.n, plan.k);
    let (r0, c0, width) = (block.rows.start, block.cols.start, block.cols.len());
    debug_assert!(plan.m > 1 && n > 1, "single rows and columns go to `gemv`");
    // SAFETY: row i of the block is `width` values at i·n + c0, inside the m×n output and
    // owned by this call (the caller's contract).
    let row = |i: usize| unsafe { out.slice(i * n + c0, width) };
    // Seed the output with beta·C (broadcast); the product then accumulates onto it.
    let seeded = match seed(plan, c) {
        Some(seed) => {
            for i in block.rows.clone() {
                for (j, v) in block.cols.clone().zip(row(i)) {
                    *v = seed(i, j);
                }
            }
            true
        }
        None => false,
    };
    if k == 0 {
        if !seeded {
            block.rows.clone().for_each(|i| row(i).fill(0.0));
        }
    } else {
        debug_assert!(a.len() > (plan.m - 1) * plan.a.row + (k - 1) * plan.a.col);
        debug_assert!(b.at.len() > (k - 1) * b.layout.row + (width - 1) * b.layout.col);
        // SAFETY: the plan was validated against the operand shapes, so every index
        // `i·row + j·col` of A (m×k), of the block's columns of B (k×width) and of Y (m×n, row
        // stride n) lies inside its slice (checked above in debug builds); the block's part of
        // `y` is ours alone and aliases neither A nor B.
        unsafe {
            gemm::gemm(
                block.rows.len(),
                width,
                k,
                out.ptr().add(r0 * n + c0),
                1,
                n as isize,
                seeded,
                a.as_ptr().add(r0 * plan.a.row),
                plan.a.col as isize,
                plan.a.row as isize,
                b.at.as_ptr(),
                b.layout.col as isize,
                b.layout.row as isize,
                1.0,
                plan.alpha,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    }
    if let Some(c) = plan.clamp {
        block.rows.for_each(|i| clamp(c, row(i)));
    }
}

/// [`few_rows`] for a single matrix whose B is FP16 (an FP16 model's weights), read in its
/// storage type: half the bytes of a widened copy.
pub fn few_rows_f16(plan: &GemmPlan, a: &[f32], b: &[f16], c: Option<&[f32]>, y: &mut [f32]) {
    debug_assert_eq!(plan.batch(), 1);
    let parts = if is_small(plan) {
        1
    } else {
        rayon::current_num_threads()
    };
    few_rows(plan, a, b, c, y, parts)
}

/// Whether one output matrix of `plan` is below [`SMALL_MATRIX_FLOPS`] (not split across
/// threads).
fn is_small(plan: &GemmPlan) -> bool {
    2 * plan.m * plan.n * plan.k < SMALL_MATRIX_FLOPS
}

/// `beta·C[i, j]`, C broadcast to the output, where the plan adds a C (none without one, or
/// with `beta` 0).
fn seed<'a>(plan: &'a GemmPlan, c: Option<&'a [f32]>) -> Option<impl Fn(usize, usize) -> f32 + 'a> {
    match (c, plan.c) {
        (Some(c), Some(l)) if plan.beta != 0.0 => {
            Some(move |i: usize, j: usize| plan.beta * c[i * l.row + j * l.col])
        }
        _ => None,
    }
}

/// A whole `m×n` output matrix `y` set to `beta·C` (see [`seed`]), or to zeros without one: what
/// a product that accumulates onto `y` starts from.
fn seed_matrix(plan: &GemmPlan, c: Option<&[f32]>, y: &mut [f32]) {
    match seed(plan, c) {
        Some(seed) => {
            for (i, row) in y.chunks_exact_mut(plan.n).enumerate() {
                row.iter_mut()
                    .enumerate()
                    .for_each(|(j, v)| *v = seed(i, j));
            }
        }
        None => y.fill(0.0),
    }
}

/// Whether an FP16 GEMM should widen B panel by panel ([`gemm_f16_b`]): a single matrix with
/// few rows, whose B is read too few times to pay for widening it whole first.
pub fn widens_b_in_panels(plan: &GemmPlan) -> bool {
    plan.batch() == 1
        && (2..=PANEL_MAX_ROWS).contains(&plan.m)
        && plan.n > 1
        && plan.k > 0
        && (plan.b.col == 1 || plan.b.row == 1)
}

/// [`gemm_f32`] with B in FP16, for plans where [`widens_b_in_panels`]: each task widens a
/// panel of B's columns (about [`PANEL_BYTES`], so it stays in L2) and multiplies it at once.
pub fn gemm_f16_b(plan: &GemmPlan, a: &[f32], b: &[f16], c: Option<&[f32]>, y: &mut [f32]) {
    debug_assert!(widens_b_in_panels(plan));
    let (n, k) = (plan.n, plan.k);
    let width = (PANEL_BYTES / (4 * k)).next_multiple_of(COLUMN_ALIGN).min(
        n.div_ceil(rayon::current_num_threads())
            .next_multiple_of(COLUMN_ALIGN),
    );
    let out = Disjoint::new(y);
    (0..n).into_par_iter().step_by(width).for_each_init(
        || TaskBuffer::take(k * width),
        |panel, j0| {
            let cols = j0..(j0 + width).min(n);
            let panel = panel.values(k * cols.len());
            let layout = widen_panel(plan, b, cols.clone(), panel);
            let b = Columns { at: panel, layout };
            let block = Block {
                rows: 0..plan.m,
                cols,
            };
            // SAFETY: `out` is the m×n output, exclusively borrowed, and the column panels
            // are disjoint.
            unsafe { product(plan, a, b, c, out, block) };
        },
    );
}

/// Widens columns `cols` of B into `panel` (k×width), row-major when B's rows are contiguous,
/// column-major when its columns are; returns the panel's layout.
fn widen_panel(plan: &GemmPlan, b: &[f16], cols: Range<usize>, panel: &mut [f32]) -> MatLayout {
    let (k, width, l) = (plan.k, cols.len(), plan.b);
    debug_assert_eq!(panel.len(), k * width);
    if l.col == 1 {
        for (kk, dst) in panel.chunks_exact_mut(width).enumerate() {
            simd::f16_to_f32(&b[kk * l.row + cols.start..][..width], dst);
        }
        MatLayout { row: width, col: 1 }
    } else {
        debug_assert_eq!(
            l.row, 1,
            "`widens_b_in_panels` takes contiguous rows or columns"
        );
        for (j, dst) in cols.zip(panel.chunks_exact_mut(k)) {
            simd::f16_to_f32(&b[j * l.col..][..k], dst);
        }
        MatLayout { row: 1, col: k }
    }
}

/// One output matrix with a single row or column (`y` holds its `m·n` values), split over
/// `parts` threads: `y = clamp?(alpha·A·B + beta·C)` as matrix × vector.
fn gemv(plan: &GemmPlan, a: &[f32], b: &[f32], c: Option<&[f32]>, y: &mut [f32], parts: usize) {
    let k = plan.k;
    // The vector (alpha folded in) and the k×len matrix it multiplies, as strides.
    let (vector, stride, mat, layout) = if plan.m == 1 {
        // y[0, j] = alpha · Σ A[0, kk] · B[kk, j].
        (a, plan.a.col, b, plan.b)
    } else {
        // y[i, 0] = alpha · Σ B[kk, 0] · A[i, kk]: A read transposed.
        let at = MatLayout {
            row: plan.a.col,
            col: plan.a.row,
        };
        (b, plan.b.row, a, at)
    };
    let x: Vec<f32> = (0..k).map(|kk| plan.alpha * vector[kk * stride]).collect();
    seed_matrix(plan, c, y);
    if k > 0 && layout.col == 1 {
        // Matrix rows are contiguous: y += xᵀ·mat row by row, each part over its own rows of
        // the matrix (contiguous streams) into its own partial sum.
        let rows = k.div_ceil(parts).max(MIN_GEMV_ROWS);
        if rows >= k {
            axpy_rows(&x, mat, layout.row, y);
        } else {
            let len = y.len();
            let partials: Vec<Vec<f32>> = (0..k)
                .into_par_iter()
                .step_by(rows)
                .map(|k0| {
                    let mut part = vec![0.0; len];
                    let k1 = (k0 + rows).min(k);
                    axpy_rows(&x[k0..k1], &mat[k0 * layout.row..], layout.row, &mut part);
                    part
                })
                .collect();
            for part in partials {
                y.iter_mut().zip(part).for_each(|(v, p)| *v += p);
            }
        }
    } else if k > 0 {
        // One dot product per output, over a contiguous (or gathered) matrix column.
        let chunk = y.len().div_ceil(parts).max(COLUMN_ALIGN);
        y.par_chunks_mut(chunk).enumerate().for_each(|(ci, yc)| {
            let mut column = Vec::new();
            for (jj, v) in yc.iter_mut().enumerate() {
                let j = ci * chunk + jj;
                let col = if layout.row == 1 {
                    &mat[j * layout.col..][..k]
                } else {
                    column.clear();
                    column.extend((0..k).map(|kk| mat[kk * layout.row + j * layout.col]));
                    &column[..]
                };
                *v += dot(&x, col);
            }
        });
    }
    if let Some(c) = plan.clamp {
        clamp(c, y);
    }
}

/// Whether [`few_rows`] computes `plan`: one row, or up to [`FEW_ROWS`] with sums of at least
/// [`FEW_ROWS_MIN_K`] terms; more than one column, each contiguous in B (a classifier's
/// transposed weights); AVX-512.
pub fn reads_columns_once(plan: &GemmPlan) -> bool {
    (plan.m == 1 || (plan.m <= FEW_ROWS && plan.k >= FEW_ROWS_MIN_K))
        && plan.n > 1
        && plan.b.row == 1
        && plan.k > 0
        && simd::level() >= simd::Level::Avx512
}

/// One output matrix for which [`reads_columns_once`] holds, from B in its storage type (FP16
/// widened in registers), its columns split over `parts` threads: every row of A (alpha folded
/// in) against each group of B's columns, read side by side once ([`avx512::rows_dots`]). (A
/// batch-8 classifier, 8 × 2048 · 2048 × 1000, on the `gemm` crate: 1.22 ms in ResNet-50, B
/// packed for each product; this way 0.46 ms. MobileNetV2's batch-1 classifier, 1280 → 1000,
/// one thread: eight columns at a time 0.36 ms, one at a time 0.62, four 0.37; Intel Xeon model
/// 207.)
fn few_rows<T: Element>(
    plan: &GemmPlan,
    a: &[f32],
    b: &[T],
    c: Option<&[f32]>,
    y: &mut [f32],
    parts: usize,
) {
    assert!(reads_columns_once(plan));
    let (m, n, k) = (plan.m, plan.n, plan.k);
    let xs: Vec<f32> = (0..m)
        .flat_map(|i| (0..k).map(move |kk| plan.alpha * a[i * plan.a.row + kk * plan.a.col]))
        .collect();
    seed_matrix(plan, c, y);
    let col = |j: usize| &b[j * plan.b.col..][..k];
    let out = Disjoint::new(y);
    let chunk = n.div_ceil(parts).next_multiple_of(COLUMN_ALIGN);
    (0..n).into_par_iter().step_by(chunk).for_each(|j0| {
        let cols = j0..(j0 + chunk).min(n);
        #[cfg(target_arch = "x86_64")]
        {
            use avx512::rows_dots;
            // SAFETY: AVX-512F (`reads_columns_once`); `xs` holds m rows of k, each column k
            // values (the plan was validated against B's shape); these columns of every row
            // of the m×n output are this task's alone.
            unsafe {
                match m {
                    1 => rows_dots::<T, 1, 8>(&xs, &col, cols, out, n),
                    2 => rows_dots::<T, 2, 8>(&xs, &col, cols, out, n),
                    3 => rows_dots::<T, 3, 8>(&xs, &col, cols, out, n),
                    4 => rows_dots::<T, 4, 6>(&xs, &col, cols, out, n),
                    5 => rows_dots::<T, 5, 4>(&xs, &col, cols, out, n),
                    6 => rows_dots::<T, 6, 4>(&xs, &col, cols, out, n),
                    7 => rows_dots::<T, 7, 3>(&xs, &col, cols, out, n),
                    _ => rows_dots::<T, 8, 3>(&xs, &col, cols, out, n),
                }
            }
        }
    });
    if let Some(c) = plan.clamp {
        clamp(c, y);
    }
}

multiversion! {
    /// `y[j] += Σ_kk x[kk] · mat[kk·row + j]`, four matrix rows per pass over `y`.
    fn axpy_rows(x: &[f32], mat: &[f32], row: usize, y: &mut [f32]) {
        let len = y.len();
        let quads = x.len() / 4 * 4;
        for kk in (0..quads).step_by(4) {
            let r = |i: usize| &mat[(kk + i) * row..][..len];
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            let (x0, x1, x2, x3) = (x[kk], x[kk + 1], x[kk + 2], x[kk + 3]);
            for ((((v, &m0), &m1), &m2), &m3) in y.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
                *v += x0 * m0 + x1 * m1 + x2 * m2 + x3 * m3;
            }
        }
        for (kk, &xk) in x.iter().enumerate().skip(quads) {
            for (v, &m) in y.iter_mut().zip(&mat[kk * row..][..len]) {
                *v += xk * m;
            }
        }
    }
}

multiversion! {
    /// `Σ x[i] · y[i]` in [`LANES`] independent partial sums.
    fn dot(x: &[f32], y: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
        let tail: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| a * b).sum();
        for (xv, yv) in xc.zip(yc) {
            for l in 0..LANES {
                acc[l] += xv[l] * yv[l];
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

/// The AVX-512 kernel of [`few_rows`].
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use std::ops::Range;

    use super::Disjoint;
    use crate::backend::cpu::avx512::{first, load};
    use crate::dtype::Element;

    /// For the columns `cols` of the output: `y[r·n + j] += Σ_i xs[r·k + i] · col(j)[i]` for
    /// each of the `R` rows of `xs` (`k` values each), in groups of `C` columns read side by
    /// side (FP16 widened in registers; masked past the last whole vector), `R × C` sums of 16
    /// lanes in registers; the columns past the last whole group one at a time.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL; `xs` holds `R` rows of `k` values and every
    /// `col(j)` has `k`; `y` points at an `R × n` row-major output whose columns `cols` no other
    /// thread accesses during the call.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn rows_dots<'a, T: Element, const R: usize, const C: usize>(
        xs: &[f32],
        col: &impl Fn(usize) -> &'a [T],
        cols: Range<usize>,
        y: Disjoint,
        n: usize,
    ) {
        let k = xs.len() / R;
        let end = cols.start + cols.len() / C * C;
        for j in (cols.start..end).step_by(C) {
            let c: [&[T]; C] = std::array::from_fn(|q| col(j + q));
            assert!(c.iter().all(|c| c.len() == k));
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            for i in (0..k).step_by(16) {
                let m = first(k - i);
                // SAFETY: lanes under `m` are i..min(i + 16, k), inside every row of `xs` and
                // every column (asserted above); masked lanes are not read.
                unsafe {
                    let b: [__m512; C] = std::array::from_fn(|q| load(c[q].as_ptr().add(i), m));
                    for (r, row) in acc.iter_mut().enumerate() {
                        let x = _mm512_maskz_loadu_ps(m, xs.as_ptr().add(r * k + i));
                        for (a, &bv) in row.iter_mut().zip(&b) {
                            *a = _mm512_fmadd_ps(x, bv, *a);
                        }
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (q, &a) in row.iter().enumerate() {
                    // SAFETY: element (r, j + q) of the output, in this call's columns.
                    unsafe { *y.ptr().add(r * n + j + q) += _mm512_reduce_add_ps(a) };
                }
            }
        }
        if C > 1 && end < cols.end {
            // SAFETY: this call's contract, for the columns it left.
            unsafe { rows_dots::<T, R, 1>(xs, col, end..cols.end, y, n) };
        }
    }
}

multiversion! {
    /// A fused ReLU or Clip ([`Clamp`]) of `y` in place; NaN stays NaN.
    pub fn clamp(c: Clamp, y: &mut [f32]) {
        y.iter_mut().for_each(|v| *v = c.apply(*v));
    }
}

#[cfg(test)]
mod tests {
    use super::{split, Block};

    #[test]
    fn split_cuts_the_longer_side_into_disjoint_covering_blocks() {
        assert_eq!(
            split(256, 196, 2),
            vec![
                Block {
                    rows: 0..128,
                    cols: 0..196
                },
                Block {
                    rows: 128..256,
                    cols: 0..196
                },
            ]
        );
        assert_eq!(
            split(1, 1000, 2),
            vec![
                Block {
                    rows: 0..1,
                    cols: 0..512
                },
                Block {
                    rows: 0..1,
                    cols: 512..1000
                },
            ]
        );
        // Few rows, many columns (a skinny GEMM): cut along the columns.
        assert_eq!(
            split(32, 1000, 2),
            vec![
                Block {
                    rows: 0..32,
                    cols: 0..512
                },
                Block {
                    rows: 0..32,
                    cols: 512..1000
                },
            ]
        );
        assert_eq!(split(5, 3, 16).len(), 5);
        assert_eq!(
            split(7, 9, 1),
            vec![Block {
                rows: 0..7,
                cols: 0..9
            }]
        );
    }
}
