//! CPU GEMM on the `gemm` crate's FP32 kernels: batched, strided (transposes cost nothing), with
//! the C broadcast and ReLU epilogue applied around the core product.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::ops::GemmPlan;

/// Below this many FLOPs per matrix, a batch runs one matrix per thread instead of splitting
/// each matrix across threads.
const SMALL_MATRIX_FLOPS: usize = 1 << 21;

/// Computes `plan` in FP32. `y` is fully written; its previous contents are ignored.
pub fn gemm_f32(plan: &GemmPlan, a: &[f32], b: &[f32], c: Option<&[f32]>, y: &mut [f32]) {
    let mn = plan.m * plan.n;
    if mn == 0 {
        return;
    }
    let one = |index: usize, yb: &mut [f32], parallelism: Parallelism| {
        let (a_off, b_off) = plan.batch_offsets(index);
        matrix(plan, &a[a_off..], &b[b_off..], c, yb, parallelism);
    };
    let small = 2 * mn * plan.k < SMALL_MATRIX_FLOPS;
    if plan.batch() > 1 && small {
        y.par_chunks_mut(mn)
            .enumerate()
            .for_each(|(i, yb)| one(i, yb, Parallelism::None));
    } else {
        for (i, yb) in y.chunks_mut(mn).enumerate() {
            one(i, yb, Parallelism::Rayon(0));
        }
    }
}

/// One `m×n` output matrix: `y = relu?(alpha·A·B + beta·C)`.
fn matrix(
    plan: &GemmPlan,
    a: &[f32],
    b: &[f32],
    c: Option<&[f32]>,
    y: &mut [f32],
    parallelism: Parallelism,
) {
    let (m, n, k) = (plan.m, plan.n, plan.k);
    // Seed the output with beta·C (broadcast); the product then accumulates onto it.
    let seeded = match (c, plan.c) {
        (Some(c), Some(layout)) if plan.beta != 0.0 => {
            for (i, row) in y.chunks_exact_mut(n).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = plan.beta * c[i * layout.row + j * layout.col];
                }
            }
            true
        }
        _ => false,
    };
    if k == 0 {
        if !seeded {
            y.fill(0.0);
        }
    } else {
        debug_assert!(a.len() > (m - 1) * plan.a.row + (k - 1) * plan.a.col);
        debug_assert!(b.len() > (k - 1) * plan.b.row + (n - 1) * plan.b.col);
        // SAFETY: the plan was validated against the operand shapes, so every index
        // `i·row + j·col` of A (m×k), B (k×n) and Y (m×n, row stride n) lies inside its slice
        // (checked above in debug builds); `y` is exclusively borrowed and does not alias A or B.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                seeded,
                a.as_ptr(),
                plan.a.col as isize,
                plan.a.row as isize,
                b.as_ptr(),
                plan.b.col as isize,
                plan.b.row as isize,
                1.0,
                plan.alpha,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
    if plan.relu {
        relu(y);
    }
}

/// `max(0, v)` in place; NaN stays NaN.
pub fn relu(y: &mut [f32]) {
    for v in y {
        if *v < 0.0 {
            *v = 0.0;
        }
    }
}
