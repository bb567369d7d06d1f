//! The machine's FP32 limits, measured rather than assumed, for reporting a kernel's GFLOPS as a
//! fraction of what the cores can do: `cargo bench --bench peak`.
//!
//! - **Clock**: a chain of dependent 64-bit `imul`s (3 cycles each on every x86-64 core since
//!   Sandy Bridge and Zen) — the scalar clock, turbo included.
//! - **FMA peak**: 12 independent FMA chains on the widest vectors the CPU has (AVX-512: 16
//!   lanes, else AVX2/FMA: 8), which fills every FMA port; run on one thread, then on every
//!   core at once (the rate the backend's threads can reach; wide vectors may lower the clock).
//!   Peak FLOP/cycle per core = FMA ports × lanes × 2; the FMA clock is the rate over that.
//!
//! Each figure is the best of many short trials (tens of µs), so a loaded machine still shows
//! the hardware's rate when one trial runs unpreempted; the trial count is printed.

use std::time::Instant;

/// Short trials, so some run between preemptions on a shared machine.
const TRIALS: usize = 2000;

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ghz = clock_ghz();
    println!("scalar clock (dependent imul chain): {ghz:.2} GHz (best of {TRIALS} trials)");
    let Some((name, lanes, fma)) = widest_fma() else {
        println!("no FMA vectors on this CPU: no FMA peak to measure");
        return;
    };
    let one = fma();
    println!("FMA peak, 1 thread, {name} ({lanes} lanes): {one:.1} GFLOPS");
    let all: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(fma)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    println!("FMA peak, {threads} threads at once: {all:.1} GFLOPS (the backend's limit)");
    let per_cycle = one / ghz;
    let ports = (per_cycle / (lanes as f64 * 2.0)).round().max(1.0);
    println!(
        "= {per_cycle:.1} FLOP per scalar cycle per core: {ports} FMA ports × {lanes} lanes × 2 \
         at {:.2} GHz under {name}",
        one / (ports * lanes as f64 * 2.0)
    );
}

/// Best over [`TRIALS`] of the scalar clock, from a chain of 3-cycle `imul`s.
fn clock_ghz() -> f64 {
    const N: u64 = 100_000;
    let mut best = f64::INFINITY;
    for trial in 0..TRIALS as u64 {
        let start = Instant::now();
        let mut x = std::hint::black_box(trial | 1);
        let y = std::hint::black_box(3u64);
        for _ in 0..N {
            for _ in 0..8 {
                x = std::hint::black_box(x.wrapping_mul(y));
            }
        }
        std::hint::black_box(x);
        best = best.min(start.elapsed().as_secs_f64());
    }
    (N * 8 * 3) as f64 / best / 1e9
}

type Fma = fn() -> f64;

/// The widest FMA the CPU runs: its name, its FP32 lanes and the measuring function.
fn widest_fma() -> Option<(&'static str, usize, Fma)> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Some(("AVX-512", 16, || unsafe { x86::fma_avx512() }));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Some(("AVX2/FMA", 8, || unsafe { x86::fma_avx2() }));
        }
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::time::Instant;

    use super::TRIALS;

    /// FMAs per chain and trial.
    const N: usize = 20_000;

    /// Twelve independent chains of `a = a·b + c`, as FLOPs per second at the best trial.
    macro_rules! fma_peak {
        ($name:ident, $feature:literal, $vec:ty, $lanes:expr, $set1:ident, $fmadd:ident) => {
            #[target_feature(enable = $feature)]
            pub unsafe fn $name() -> f64 {
                let mut best = f64::INFINITY;
                for trial in 0..TRIALS {
                    let (b, c) = ($set1(0.999), $set1(1e-4));
                    let mut a: [$vec; 12] = std::array::from_fn(|j| $set1((trial + j) as f32));
                    let start = Instant::now();
                    for _ in 0..N {
                        // A fixed-size loop over a register array: unrolled into 12 FMAs.
                        for v in a.iter_mut() {
                            *v = $fmadd(*v, b, c);
                        }
                    }
                    std::hint::black_box(&a);
                    best = best.min(start.elapsed().as_secs_f64());
                }
                (N * 12 * $lanes * 2) as f64 / best / 1e9
            }
        };
    }
    fma_peak!(
        fma_avx512,
        "avx512f",
        __m512,
        16,
        _mm512_set1_ps,
        _mm512_fmadd_ps
    );
    fma_peak!(
        fma_avx2,
        "avx2,fma",
        __m256,
        8,
        _mm256_set1_ps,
        _mm256_fmadd_ps
    );
}
