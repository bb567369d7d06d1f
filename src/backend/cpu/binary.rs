//! CPU Add, Sub, Mul, Div and Sum over the plan's collapsed broadcast view. The output is split
//! into tasks of `TASK` elements; a task walks the rows of the innermost collapsed dimension,
//! where every input is either a contiguous slice (stride 1) or one value (stride 0), so each
//! run is one vectorised loop of four kinds (slice·slice, slice·scalar, scalar·slice, fill).
//! Each run is one `simd::map_to` (FP16 widened, computed in FP32 and rounded in registers; an
//! FP16 run divided by one value is multiplied by its reciprocal;
//! non-temporal stores when the op touches more bytes than the cache keeps, `simd::Store`), except
//! Sum: FP32 storage accumulates in the output, FP16 widens chunks of `CHUNK` and accumulates
//! every input in FP32 before rounding once.

use rayon::prelude::*;

use half::f16;

use super::simd::{self, map_to, multiversion, Store};
use crate::dtype::{DType, Element};
use crate::ops::{BinaryKind, BinaryPlan};

/// Output elements per parallel task.
const TASK: usize = 1 << 15;
/// Elements per widened FP16 chunk.
const CHUNK: usize = 1024;

/// One operand of a run: contiguous values or one broadcast value (as f32).
#[derive(Clone, Copy)]
enum Src<'a, T> {
    Slice(&'a [T]),
    Scalar(f32),
}

/// One element: `relu?(a ∘ b)` with op code 0 add, 1 sub, 2 mul, 3 div.
#[inline(always)]
fn eval(code: i32, relu: bool, a: f32, b: f32) -> f32 {
    let v = match code {
        0 => a + b,
        1 => a - b,
        2 => a * b,
        _ => a / b,
    };
    if relu {
        // max(0, NaN) stays NaN, as the float64 reference's ReLU does.
        if v < 0.0 {
            0.0
        } else {
            v
        }
    } else {
        v
    }
}

/// Runs `$body` with `$f` bound to a closure of its own type per (op, relu), so that each
/// instance of `$body` inlines one branch-free element function into a vectorised loop.
macro_rules! with_op {
    ($code:expr, $relu:expr, |$f:ident| $body:expr) => {
        match ($code, $relu) {
            (0, false) => {
                let $f = |p: f32, q: f32| eval(0, false, p, q);
                $body
            }
            (0, true) => {
                let $f = |p: f32, q: f32| eval(0, true, p, q);
                $body
            }
            (1, _) => {
                let $f = |p: f32, q: f32| eval(1, false, p, q);
                $body
            }
            (2, _) => {
                let $f = |p: f32, q: f32| eval(2, false, p, q);
                $body
            }
            _ => {
                let $f = |p: f32, q: f32| eval(3, false, p, q);
                $body
            }
        }
    };
}

/// Computes `plan` from `x` (one slice per input, storage type `T`) into `y`, the output
/// streamed where the op touches at least `stream_from` bytes (see [`Store::for_bytes`]).
pub fn binary<T: Element>(plan: &BinaryPlan, x: &[&[T]], y: &mut [T], stream_from: usize) {
    if y.is_empty() {
        return;
    }
    let dims = &plan.dims;
    let inner = dims.last().copied().unwrap_or(1);
    let n_in = x.len();
    let bytes: usize = x.iter().map(|x| x.len()).sum::<usize>() + y.len();
    let store = Store::for_bytes(bytes * T::DTYPE.size(), stream_from);
    y.par_chunks_mut(TASK).enumerate().for_each(|(t, yt)| {
        let mut e = t * TASK;
        let mut done = 0;
        let mut scratch = Scratch::default();
        let mut offs = [0usize; crate::ops::MAX_INPUTS];
        let mut ins: Vec<(&[T], bool)> = Vec::with_capacity(n_in);
        while done < yt.len() {
            let (row, col) = (e / inner, e % inner);
            let run = (inner - col).min(yt.len() - done);
            // Each input's offset of element (row, col).
            let offs = &mut offs[..n_in];
            offs.fill(0);
            let mut r = row;
            for d in (0..dims.len().saturating_sub(1)).rev() {
                let c = r % dims[d];
                r /= dims[d];
                for (o, s) in offs.iter_mut().zip(&plan.strides) {
                    *o += c * s[d];
                }
            }
            ins.clear();
            for ((xi, &o), s) in x.iter().zip(offs.iter()).zip(&plan.strides) {
                if s.last().copied().unwrap_or(0) == 0 {
                    ins.push((&xi[o..o + 1], false));
                } else {
                    ins.push((&xi[o + col..o + col + run], true));
                }
            }
            apply_run(plan, &ins, &mut yt[done..done + run], store, &mut scratch);
            done += run;
            e += run;
        }
    });
}

/// Per-task FP16 widening buffers (Sum).
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    acc: Vec<f32>,
}

/// One run of the innermost dimension: `ins` are (values, is_slice) per input; `store` is how
/// Add, Sub, Mul and Div write `y`.
fn apply_run<T: Element>(
    plan: &BinaryPlan,
    ins: &[(&[T], bool)],
    y: &mut [T],
    store: Store,
    s: &mut Scratch,
) {
    let kind = match plan.kind {
        BinaryKind::Sum if T::DTYPE == DType::F32 => {
            // f32 storage: the output is the accumulator (no rounding between inputs).
            let y: &mut [f32] = bytemuck::cast_slice_mut(y);
            fill(y, f32_src(ins[0]));
            for &i in &ins[1..] {
                accumulate(y, f32_src(i));
            }
            return;
        }
        BinaryKind::Sum => return sum_f16(ins, bytemuck::cast_slice_mut(y), s),
        kind => kind,
    };
    let [a, b] = [ins[0], ins[1]].map(|(v, slice)| {
        if slice {
            Src::Slice(v)
        } else {
            Src::Scalar(v[0].to_f32())
        }
    });
    if let (BinaryKind::Div, DType::F16, Src::Slice(a), Src::Scalar(q)) = (kind, T::DTYPE, a, b) {
        // FP16 values over one value: times its reciprocal, no division per element (divided,
        // FP16 storage ran at FP32's element rate: half FP32's fraction of a copy). Both are
        // FP16 values, so for every finite nonzero `q` (|q| ≥ 2^−24) `1/q` is a normal f32 and
        // `a·(1/q)` lies within 2^−23 of `a/q` relatively: the same FP16 value after rounding
        // unless `a/q` is that close to a rounding boundary (then one FP16 ulp apart). A zero,
        // infinite or NaN `q` gives what the division does (`a·±∞`, `a·±0`, NaN).
        let r = 1.0 / q;
        return map_to([a], y, store, |[p]| p * r);
    }
    with_op!(kind.code(), plan.relu, |f| match (a, b) {
        (Src::Slice(a), Src::Slice(b)) => map_to([a, b], y, store, |[p, q]| f(p, q)),
        (Src::Slice(a), Src::Scalar(q)) => map_to([a], y, store, |[p]| f(p, q)),
        (Src::Scalar(p), Src::Slice(b)) => map_to([b], y, store, |[q]| f(p, q)),
        (Src::Scalar(p), Src::Scalar(q)) => y.fill(T::from_f32(f(p, q))),
    })
}

/// Sum of FP16 runs: widened in chunks of `CHUNK`, accumulated in FP32, rounded once.
fn sum_f16<T: Element>(ins: &[(&[T], bool)], y: &mut [f16], s: &mut Scratch) {
    let (a, acc) = (&mut s.a, &mut s.acc);
    acc.resize(CHUNK, 0.0);
    let mut start = 0;
    while start < y.len() {
        let n = (y.len() - start).min(CHUNK);
        let acc = &mut acc[..n];
        for (k, &(v, slice)) in ins.iter().enumerate() {
            let src = widen_src(v, slice, start, n, a);
            if k == 0 {
                fill(acc, src);
            } else {
                accumulate(acc, src);
            }
        }
        simd::f32_to_f16(acc, &mut y[start..start + n]);
        start += n;
    }
}

/// The f32 view of `n` values from `start` of an FP16 operand (widened into `buf`).
fn widen_src<'a, T: Element>(
    v: &[T],
    slice: bool,
    start: usize,
    n: usize,
    buf: &'a mut Vec<f32>,
) -> Src<'a, f32> {
    if !slice {
        let mut one = [0.0f32];
        simd::f16_to_f32(bytemuck::cast_slice(&v[..1]), &mut one);
        return Src::Scalar(one[0]);
    }
    buf.resize(n, 0.0);
    simd::f16_to_f32(bytemuck::cast_slice(&v[start..start + n]), buf);
    Src::Slice(buf)
}

/// An f32 operand as a [`Src`].
fn f32_src<T: Element>((v, slice): (&[T], bool)) -> Src<'_, f32> {
    let v: &[f32] = bytemuck::cast_slice(v);
    if slice {
        Src::Slice(v)
    } else {
        Src::Scalar(v[0])
    }
}

/// `y = src` (a copy or a broadcast value).
fn fill(y: &mut [f32], src: Src<f32>) {
    match src {
        Src::Slice(v) => y.copy_from_slice(&v[..y.len()]),
        Src::Scalar(c) => y.fill(c),
    }
}

/// `y += src`.
fn accumulate(y: &mut [f32], src: Src<f32>) {
    match src {
        Src::Slice(v) => add_assign(y, &v[..y.len()]),
        Src::Scalar(c) => add_assign_scalar(y, c),
    }
}

multiversion! {
    fn add_assign(y: &mut [f32], v: &[f32]) {
        for (o, &a) in y.iter_mut().zip(v) {
            *o += a;
        }
    }
}

multiversion! {
    fn add_assign_scalar(y: &mut [f32], c: f32) {
        for o in y.iter_mut() {
            *o += c;
        }
    }
}
