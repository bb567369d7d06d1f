//! CPU Add, Sub, Mul, Div and Sum over the plan's collapsed broadcast view. The output is split
//! into tasks of `TASK` elements; a task walks the rows of the innermost collapsed dimension,
//! where every input is either a contiguous slice (stride 1) or one value (stride 0), so each
//! run is one vectorised loop of four kinds (slice·slice, slice·scalar, scalar·slice, fill).
//! Each run is one `simd::map_to` (FP16 widened, computed in FP32 and rounded in registers; an
//! FP16 run divided by one value is multiplied by its reciprocal, an FP32 one on AVX-512 too,
//! its product corrected to the rounded quotient (`avx512::divide`);
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
    #[cfg(target_arch = "x86_64")]
    if let (BinaryKind::Div, DType::F32, Src::Slice(a), Src::Scalar(q)) = (kind, T::DTYPE, a, b) {
        if store == Store::Cached && avx512::supported() && q.is_normal() && (1.0 / q).is_normal() {
            // SAFETY: the CPU supports AVX-512 F, BW and VL; `a` and `y` are one run long.
            unsafe { avx512::divide(bytemuck::cast_slice(a), q, bytemuck::cast_slice_mut(y)) };
            return;
        }
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

/// FP32 division by one value on AVX-512.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::backend::cpu::avx512::first;
    pub use crate::backend::cpu::avx512::supported;

    /// 2⁻¹⁰⁰: below it a dividend's remainder (`a − q0·q`, about `a·2⁻²⁴`) could leave f32's
    /// normal range and lose bits.
    const SMALLEST_DIVIDEND: f32 = f32::from_bits((127 - 100) << 23);

    /// 2⁻¹²⁵: below it a quotient is divided (the correction rounds in the normal range).
    const SMALLEST_QUOTIENT: f32 = f32::from_bits((127 - 125) << 23);

    /// `y = a / q` without a division per element (one took about twice a copy's time per
    /// vector): `q0 = a·r` with `r = 1/q` rounded, its remainder `e = a − q0·q` exact in one
    /// FMA, and `q0 + e·r` rounded once, which is the rounded quotient while no step leaves
    /// f32's normal range (Markstein's correction; no difference from the division in 400
    /// million random pairs over every exponent). The lanes where one might, an infinite or NaN
    /// `a`, a result past f32's range, or one below [`SMALLEST_QUOTIENT`], or a dividend below
    /// [`SMALLEST_DIVIDEND`], are divided.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL; `a` and `y` have equal lengths; `q` and
    /// `1/q` are normal.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn divide(a: &[f32], q: f32, y: &mut [f32]) {
        debug_assert!(a.len() == y.len() && q.is_normal() && (1.0 / q).is_normal());
        let (qv, rv) = (_mm512_set1_ps(q), _mm512_set1_ps(1.0 / q));
        let magnitude = _mm512_set1_epi32(i32::MAX);
        let dividend = _mm512_set1_epi32(SMALLEST_DIVIDEND.to_bits() as i32);
        let quotient = _mm512_set1_epi32(SMALLEST_QUOTIENT.to_bits() as i32);
        // |v| in [SMALLEST_QUOTIENT, ∞) as bits: below the span from the smallest's bits.
        let span =
            _mm512_set1_epi32((f32::INFINITY.to_bits() - SMALLEST_QUOTIENT.to_bits()) as i32);
        let mut step = |i: usize, m: __mmask16| {
            // SAFETY: the lanes under `m` are elements of `a` and `y` (equal lengths);
            // AVX-512 F, BW and VL by this function's contract.
            unsafe {
                let p = _mm512_maskz_loadu_ps(m, a.as_ptr().add(i));
                let q0 = _mm512_mul_ps(p, rv);
                let mut v = _mm512_fmadd_ps(_mm512_fnmadd_ps(q0, qv, p), rv, q0);
                let bits = |x: __m512| _mm512_and_si512(_mm512_castps_si512(x), magnitude);
                let outside = _mm512_cmpge_epu32_mask(_mm512_sub_epi32(bits(v), quotient), span);
                let small = _mm512_cmplt_epu32_mask(bits(p), dividend);
                let divide = (outside | small) & m;
                if divide != 0 {
                    v = _mm512_mask_div_ps(v, divide, p, qv);
                }
                _mm512_mask_storeu_ps(y.as_mut_ptr().add(i), m, v);
            }
        };
        let full = a.len() / 16 * 16;
        for i in (0..full).step_by(16) {
            step(i, !0);
        }
        if full < a.len() {
            step(full, first(a.len() - full));
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use rand::{RngExt, SeedableRng};

    /// The corrected product is the division, bit for bit: random dividends and divisors over
    /// every exponent (mantissas with long runs of ones and zeros among them), and dividends
    /// that are zero, subnormal, tiny, huge, infinite or NaN, with quotients that overflow or
    /// fall below the normal range; runs of every length from 1 to 40 (masked tails).
    #[test]
    fn division_by_one_value_matches_the_quotient_bit_for_bit() {
        if !super::avx512::supported() {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let any = |lo: i32, hi: i32, rng: &mut rand::rngs::StdRng| {
            let mut m: u32 = rng.random::<u32>() & 0x7f_ffff;
            match rng.random_range(0..4) {
                0 => m |= 0x7f_ffff >> rng.random_range(0..24),
                1 => m &= !(0x7f_ffff >> rng.random_range(0..24)),
                _ => {}
            }
            let e = rng.random_range(lo..hi) + 127;
            f32::from_bits(u32::from(rng.random::<bool>()) << 31 | (e as u32) << 23 | m)
        };
        let edges = [
            0.0,
            -0.0,
            f32::from_bits(1),
            -f32::MIN_POSITIVE,
            f32::MIN_POSITIVE * 3.0,
            f32::MAX,
            -f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let mut checked = 0;
        for round in 0..4000 {
            let q = any(-126, 128, &mut rng);
            if !(q.is_normal() && (1.0 / q).is_normal()) {
                continue;
            }
            let len = 1 + round % 40;
            let a: Vec<f32> = (0..len)
                .map(|i| match i % 8 {
                    0 => edges[rng.random_range(0..edges.len())],
                    1 => any(-126, -90, &mut rng),
                    2 => any(90, 128, &mut rng),
                    _ => any(-126, 128, &mut rng),
                })
                .collect();
            let mut y = vec![f32::NAN; len];
            // SAFETY: AVX-512 F, BW and VL (checked above); equal lengths; q and 1/q normal.
            unsafe { super::avx512::divide(&a, q, &mut y) };
            for (&p, &v) in a.iter().zip(&y) {
                let want = p / q;
                assert!(
                    v.to_bits() == want.to_bits() || (v.is_nan() && want.is_nan()),
                    "{p:e} / {q:e}: {v:e}, the division {want:e}"
                );
                checked += 1;
            }
        }
        assert!(checked > 50_000);
    }
}
