//! CPU layout ops on raw elements (bit copies, so FP16 is never widened): a multi-threaded
//! memcpy for the copies, one memcpy per (row, input) for Concat, and for Transpose either
//! contiguous row copies (the input's innermost dimension stays innermost) or a blocked 2-D
//! transpose of the input's innermost and the output's innermost dimension, tile by tile.

use rayon::prelude::*;

use crate::ops::{LayoutKind, LayoutPlan};
use crate::tensor::HostData;

/// Bytes one copy task moves at least (smaller copies run on the calling thread).
const TASK_BYTES: usize = 1 << 18;
/// Side of a transpose tile, in elements.
const TILE: usize = 32;

/// Computes `plan` from `x` (its inputs, in order) into `y`.
pub fn layout(plan: &LayoutPlan, x: &[&HostData], y: &mut HostData) {
    match y {
        HostData::F32(y) => run::<u32>(plan, x, bytemuck::cast_slice_mut(y)),
        HostData::F16(y) => run::<u16>(plan, x, bytemuck::cast_slice_mut(y)),
    }
}

fn elems<T: bytemuck::Pod>(x: &HostData) -> &[T] {
    bytemuck::cast_slice(x.as_bytes())
}

fn run<T: bytemuck::Pod + Send + Sync>(plan: &LayoutPlan, x: &[&HostData], y: &mut [T]) {
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
fn copy<T: bytemuck::Pod + Send + Sync>(x: &[T], y: &mut [T]) {
    let chunk = (TASK_BYTES / size_of::<T>()).max(1);
    if x.len() <= chunk {
        y.copy_from_slice(x);
    } else {
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(y, x)| y.copy_from_slice(x));
    }
}

/// A pointer into `y` shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct Out<T>(*mut T);
// SAFETY: tasks write disjoint elements of the one output (see `transpose`).
unsafe impl<T> Send for Out<T> {}
unsafe impl<T> Sync for Out<T> {}

impl<T> Out<T> {
    /// # Safety
    /// `i` must lie inside the output, and no other task may write it.
    unsafe fn write(self, i: usize, v: T) {
        // SAFETY: the caller's contract.
        unsafe { *self.0.add(i) = v }
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

fn transpose<T: bytemuck::Pod + Send + Sync>(
    x: &[T],
    y: &mut [T],
    shape: &[usize],
    perm: &[usize],
) {
    let rank = shape.len();
    let in_strides = strides(shape);
    // Output dimension k: its extent, its input stride and its output stride.
    let od: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
    let is: Vec<usize> = perm.iter().map(|&a| in_strides[a]).collect();
    let os = strides(&od);
    let last = rank - 1;
    let q = perm.iter().position(|&a| a == rank - 1).unwrap();
    let out = Out(y.as_mut_ptr());
    // The dimensions iterated outside the inner kernel (all but q and last).
    let outer_dims: Vec<usize> = (0..rank).filter(|&k| k != q && k != last).collect();
    let outer: usize = outer_dims.iter().map(|&k| od[k]).product();
    let base = |mut o: usize| {
        let (mut xi, mut yi) = (0, 0);
        for &k in outer_dims.iter().rev() {
            let i = o % od[k];
            o /= od[k];
            xi += i * is[k];
            yi += i * os[k];
        }
        (xi, yi)
    };
    if q == last {
        // Rows of the output are contiguous runs of the input.
        let n = od[last];
        let row_base = |mut r: usize| {
            let mut xi = 0;
            for k in (0..last).rev() {
                let i = r % od[k];
                r /= od[k];
                xi += i * is[k];
            }
            xi
        };
        let work = |(r, row): (usize, &mut [T])| {
            let xi = row_base(r);
            row.copy_from_slice(&x[xi..xi + n]);
        };
        if std::mem::size_of_val(y) <= TASK_BYTES {
            y.chunks_mut(n).enumerate().for_each(work);
        } else {
            y.par_chunks_mut(n).enumerate().for_each(work);
        }
        return;
    }
    // A 2-D transpose per outer index: rows i of dimension q (stride 1 in x, os[q] in y),
    // columns j of dimension `last` (stride is[last] in x, 1 in y), in TILE × TILE tiles.
    let (ni, nj) = (od[q], od[last]);
    let (sxj, syi) = (is[last], os[q]);
    let tiles_i = ni.div_ceil(TILE);
    let tasks = outer * tiles_i;
    let work = |t: usize| {
        let (o, ti) = (t / tiles_i, t % tiles_i);
        let (xb, yb) = base(o);
        let i0 = ti * TILE;
        let i1 = (i0 + TILE).min(ni);
        for j0 in (0..nj).step_by(TILE) {
            let j1 = (j0 + TILE).min(nj);
            for i in i0..i1 {
                let yrow = yb + i * syi;
                for j in j0..j1 {
                    // SAFETY: (o, i, j) is a distinct output element for every task (tasks
                    // own distinct (o, i-tile) pairs), inside y by the plan's shapes.
                    unsafe { out.write(yrow + j, x[xb + i + j * sxj]) };
                }
            }
        }
    };
    if std::mem::size_of_val(y) <= TASK_BYTES {
        (0..tasks).for_each(work);
    } else {
        (0..tasks).into_par_iter().for_each(work);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::ops::Transpose;
    use crate::tensor::TensorDesc;

    #[test]
    fn transpose_matches_the_index_formula() {
        for (shape, perm) in [
            (vec![3usize, 4, 5], vec![2i64, 0, 1]),
            (vec![2, 3, 4, 5], vec![0, 2, 3, 1]),
            (vec![2, 3, 4, 5], vec![3, 1, 2, 0]),
            (vec![70, 45], vec![1, 0]),
            (vec![2, 3, 4, 5], vec![1, 0, 2, 3]),
        ] {
            let desc = TensorDesc::new(DType::F32, &shape).unwrap();
            let plan = Transpose {
                perm: Some(perm.clone()),
            }
            .plan(&desc)
            .unwrap();
            let n = desc.len();
            let x = HostData::F32((0..n).map(|i| i as f32).collect());
            let mut y = HostData::F32(vec![f32::NAN; n]);
            layout(&plan, &[&x], &mut y);
            let HostData::F32(y) = y else { unreachable!() };
            let xs = strides(&shape);
            let od: Vec<usize> = perm.iter().map(|&a| shape[a as usize]).collect();
            for (j, &v) in y.iter().enumerate() {
                let (mut r, mut xi) = (j, 0);
                for k in (0..od.len()).rev() {
                    xi += (r % od[k]) * xs[perm[k] as usize];
                    r /= od[k];
                }
                assert_eq!(v, xi as f32, "{shape:?} {perm:?} at {j}");
            }
        }
    }
}
