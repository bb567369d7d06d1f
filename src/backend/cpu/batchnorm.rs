//! CPU batch normalisation: the statistics fold (in f32) into one scale and one shift per
//! channel, then one streaming pass `y = x·a + b` split across threads by element ranges: one
//! `simd::map_to` per channel run (FP16 widened and rounded in registers; non-temporal stores
//! when the pass touches more bytes than the cache keeps, `simd::Store`), or on AVX-512, where
//! the output stays cached, each run inline in the task's loop ([`x16`]).

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::simd::{self, map_to, Store};
use super::Widen;
use crate::dtype::Element;
use crate::ops::BatchNormPlan;

/// Elements per parallel task.
const TASK: usize = 1 << 15;

/// Channels folded per chunk: their four statistics widened onto the stack, then one
/// vectorised loop.
const FOLD_CHUNK: usize = 64;

/// Folds scale, bias, mean, var (in the storage type) into per-channel `(a, b)` with
/// `y = x·a + b`: `a = scale / √(var + ε)`, `b = bias − mean·a`, in f32 (each step rounded
/// once: a few units in the last place, where the FP32 bound is 1e-5), a chunk of channels at a
/// time widened onto the stack. (Widening the statistics into scratch vectors first and folding
/// in f64 took 0.54 + 1.65 µs a call at 1024 channels, about a fifth of an FP16 1×1024×14×14
/// batch norm; this way the op takes 0.95× the time.)
pub fn fold<T: Widen>(plan: &BatchNormPlan, params: [&[T]; 4]) -> Vec<(f32, f32)> {
    let mut coef = Vec::with_capacity(plan.c);
    let mut p = [[0f32; FOLD_CHUNK]; 4];
    let mut ab = [[0f32; FOLD_CHUNK]; 2];
    for c0 in (0..plan.c).step_by(FOLD_CHUNK) {
        let n = FOLD_CHUNK.min(plan.c - c0);
        for (dst, src) in p.iter_mut().zip(params) {
            T::widen(&src[c0..c0 + n], &mut dst[..n]);
        }
        fold_chunk(&p, plan.epsilon, &mut ab);
        coef.extend(ab[0][..n].iter().zip(&ab[1][..n]).map(|(&a, &b)| (a, b)));
    }
    coef
}

simd::multiversion! {
    /// `ab = (a, b)` of each channel of a chunk (lanes past the chunk's channels give values
    /// nobody reads).
    fn fold_chunk(p: &[[f32; FOLD_CHUNK]; 4], epsilon: f32, ab: &mut [[f32; FOLD_CHUNK]; 2]) {
        let [scale, bias, mean, var] = p;
        let [a, b] = ab;
        for i in 0..FOLD_CHUNK {
            a[i] = scale[i] / (var[i] + epsilon).sqrt();
            b[i] = bias[i] - mean[i] * a[i];
        }
    }
}

/// Applies the folded affine map to `x` into `y` (same length, any storage type), the output
/// streamed where the op touches at least `stream_from` bytes (see [`Store::for_bytes`]).
pub fn apply<T: Element>(
    plan: &BatchNormPlan,
    coef: &[(f32, f32)],
    x: &[T],
    y: &mut [T],
    stream_from: usize,
) {
    let inner = plan.inner;
    let store = Store::for_bytes(2 * x.len() * T::DTYPE.size(), stream_from);
    #[cfg(target_arch = "x86_64")]
    let x16 = store == Store::Cached && avx512::supported();
    y.par_chunks_mut(TASK)
        .zip(x.par_chunks(TASK))
        .enumerate()
        .for_each(|(t, (yc, xc))| {
            // The task's first element is element `at` of channel `ch`'s run; the next run
            // starts the next channel (no division per run: a run is 49 elements in a 7×7 map).
            let (mut ch, mut at) = ((t * TASK / inner) % plan.c, t * TASK % inner);
            let mut off = 0;
            while off < xc.len() {
                let (a, b) = coef[ch];
                let run = (inner - at).min(xc.len() - off);
                let (xr, yr) = (&xc[off..off + run], &mut yc[off..off + run]);
                #[cfg(target_arch = "x86_64")]
                if x16 {
                    // SAFETY: the CPU supports AVX-512 F, BW and VL (`x16`); equal lengths.
                    unsafe { x16::affine(xr, yr, a, b) };
                } else {
                    map_to([xr], yr, store, |[v]| v * a + b);
                }
                #[cfg(not(target_arch = "x86_64"))]
                map_to([xr], yr, store, |[v]| v * a + b);
                off += run;
                at = 0;
                ch = if ch + 1 == plan.c { 0 } else { ch + 1 };
            }
        });
}

/// One channel's run on AVX-512, inlined into the task's loop over runs: a run is as short as
/// 49 elements (a 7×7 map), and a `map_to` call per run (its dispatch, its overlapped tail)
/// cost about as much as the run's arithmetic.
#[cfg(target_arch = "x86_64")]
mod x16 {
    use std::arch::x86_64::*;

    use super::avx512::{first, load, store};
    use crate::dtype::Element;

    /// `y = x·a + b` (one rounding: a fused multiply-add), sixteen lanes at a time, the tail
    /// masked.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL; `x` and `y` have equal lengths.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn affine<T: Element>(x: &[T], y: &mut [T], a: f32, b: f32) {
        debug_assert_eq!(x.len(), y.len());
        let (av, bv) = (_mm512_set1_ps(a), _mm512_set1_ps(b));
        let full = x.len() / 16 * 16;
        let mut step = |i: usize, m: __mmask16| {
            // SAFETY: the lanes under `m` are elements of `x` and of `y` (equal lengths, the
            // callers' `m`); AVX-512 F, BW and VL by this function's contract.
            unsafe {
                let v = load(x.as_ptr().add(i), m);
                store(y.as_mut_ptr().add(i), m, _mm512_fmadd_ps(v, av, bv));
            }
        };
        for i in (0..full).step_by(16) {
            step(i, !0);
        }
        if full < x.len() {
            step(full, first(x.len() - full));
        }
    }
}
