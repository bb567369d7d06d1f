//! Criterion benches for every op family × dtype over the shared inference workloads
//! (`eia::workload`), on the CPU backend, each with a peer in the same run:
//! - GEMM: the `gemm` crate called directly on the same operands (its FP32 kernels, and its
//!   native FP16 kernels for FP16);
//! - batch norm, softmax, the unary activations, the binary ops, pools, layout ops and LRN: a multi-threaded copy of the same bytes (the memory-bandwidth floor);
//! - convolution: onnxruntime, via `benches/compare.sh` (a Python peer cannot run inside
//!   criterion).
//!
//! Throughput is FLOPs (shown as Gelem/s = GFLOPS) for GEMM/conv and bytes for BN/softmax/pools.
//! Filter as usual: `cargo bench --bench ops -- gemm/FP32`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use eia::workload::Workload;
use eia::{f16, Backend, CpuBackend, DType};
use rayon::prelude::*;

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
}

fn family(c: &mut Criterion, name: &str, workloads: &[Workload]) {
    let backend = CpuBackend::new();
    for dtype in DType::ALL {
        let mut group = c.benchmark_group(format!("{name}/{dtype}"));
        for w in workloads {
            let (flops, _) = w.plan(dtype).unwrap();
            let bytes = w.bytes(dtype).unwrap();
            group.throughput(if w.memory_bound() {
                Throughput::Bytes(bytes)
            } else {
                Throughput::Elements(flops)
            });
            // Unary workloads share shapes across ops: their id names the op too.
            let size = match w {
                Workload::Unary { .. } => w.id(),
                _ => w.id().split_once('/').unwrap().1.to_string(),
            };
            let mut prepared = w.prepare(&backend, dtype).unwrap();
            // Every timing loop runs on a pool thread, back to back (see `Backend::run_ops`).
            group.bench_function(BenchmarkId::new("eia", &size), |b| {
                backend.run_ops(|| b.iter(|| prepared.run(&backend).unwrap()))
            });
            match w {
                Workload::Gemm { m, n, k } => {
                    group.bench_function(BenchmarkId::new("gemm-crate", &size), |b| {
                        backend.run_ops(|| gemm_peer(b, dtype, *m, *n, *k))
                    });
                }
                _ if w.memory_bound() => {
                    group.bench_function(BenchmarkId::new("copy", &size), |b| {
                        backend.run_ops(|| copy_peer(b, bytes as usize / 2))
                    });
                }
                _ => {}
            }
        }
        group.finish();
    }
}

/// The `gemm` crate on row-major `m×k · k×n`, all threads.
fn gemm_peer(b: &mut criterion::Bencher, dtype: DType, m: usize, n: usize, k: usize) {
    fn run<T: Copy + 'static>(
        b: &mut criterion::Bencher,
        m: usize,
        n: usize,
        k: usize,
        one: T,
        zero: T,
        fill: T,
    ) {
        let (lhs, rhs, mut dst) = (vec![fill; m * k], vec![fill; k * n], vec![zero; m * n]);
        b.iter(|| {
            // SAFETY: row-major buffers of exactly m×k, k×n and m×n elements.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    lhs.as_ptr(),
                    1,
                    k as isize,
                    rhs.as_ptr(),
                    1,
                    n as isize,
                    zero,
                    one,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(0),
                )
            }
        });
    }
    match dtype {
        DType::F32 => run(b, m, n, k, 1.0f32, 0.0, 0.5),
        DType::F16 => run(b, m, n, k, f16::ONE, f16::ZERO, f16::from_f32(0.5)),
    }
}

/// Copies `bytes` bytes on all threads (read once, write once: the traffic of a streaming op).
fn copy_peer(b: &mut criterion::Bencher, bytes: usize) {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    b.iter(|| {
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
    });
}

fn gemm_benches(c: &mut Criterion) {
    family(c, "gemm", &Workload::gemms());
}

fn conv_benches(c: &mut Criterion) {
    let mut convs = Workload::resnet50_convs(1);
    convs.extend(Workload::resnet50_convs(8));
    family(c, "conv", &convs);
}

fn batch_norm_benches(c: &mut Criterion) {
    family(c, "batchnorm", &Workload::batch_norms());
}

fn softmax_benches(c: &mut Criterion) {
    family(c, "softmax", &Workload::softmaxes());
}

fn unary_benches(c: &mut Criterion) {
    family(c, "unary", &Workload::unaries());
}

fn binary_benches(c: &mut Criterion) {
    family(c, "binary", &Workload::binaries(8));
}

fn pool_benches(c: &mut Criterion) {
    family(c, "pool", &Workload::pools());
}

fn layout_benches(c: &mut Criterion) {
    family(c, "layout", &Workload::layouts());
}

fn lrn_benches(c: &mut Criterion) {
    family(c, "lrn", &Workload::lrns());
}

criterion_group! {
    name = benches;
    config = config();
    targets = gemm_benches, conv_benches, batch_norm_benches, softmax_benches, unary_benches,
        binary_benches, pool_benches, layout_benches, lrn_benches
}
criterion_main!(benches);
