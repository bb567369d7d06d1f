//! Per-tier benches: the op suite on a virtual accelerator of each tier, metered at its rates,
//! with the achieved TFLOPS reported against the tier's cap; and the meter's per-op overhead.
//!
//! - `cargo bench --bench tiers -- eia2.medium` runs one tier (any tier name: the built-in ones,
//!   plus custom tiers from the TOML file named by `EIA_TIERS`).
//! - `cargo bench --bench tiers -- meter` measures the overhead: a tiny op on the bare CPU
//!   backend and on an accelerator whose tier is so fast the meter never waits.
//!
//! Ids are `<tier>/<workload>/<dtype>`; throughput is FLOPs (Gelem/s = GFLOPS). After criterion's
//! report a summary prints, per tier and dtype, the achieved TFLOPS, the tier's cap and their
//! ratio (near 100%: meter-bound; far below: the device is the limit), and the overhead in ns.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use eia::accelerator::{Capacity, Device, DeviceConfig, Tier, Tiers};
use eia::ops::Softmax;
use eia::workload::Workload;
use eia::{Backend, CpuBackend, DType, HostTensor, PerDType};

/// Per (tier, dtype, workload): FLOPs run and time taken, summed over every timed iteration.
type Key = (String, DType, String);
static ACHIEVED: Mutex<BTreeMap<Key, (f64, Duration)>> = Mutex::new(BTreeMap::new());
/// Per bench id of the overhead group: total time and ops.
static OVERHEAD: Mutex<BTreeMap<String, (Duration, u64)>> = Mutex::new(BTreeMap::new());

/// The workloads each tier runs: a square and a skinny GEMM, two ResNet-50 convs, BN, softmax.
const SUITE: [&str; 6] = [
    "gemm/1024x1024x1024",
    "gemm/32x1000x2048",
    "conv/res4_3x3/n1",
    "conv/res2_1x1/n1",
    "batchnorm/1x64x112x112",
    "softmax/64x4096",
];

fn tiers() -> Tiers {
    match std::env::var_os("EIA_TIERS") {
        Some(path) => Tiers::load(path.as_ref()).expect("EIA_TIERS names a valid tier file"),
        None => Tiers::builtin(),
    }
}

/// A device that admits every tier (the CPU is far slower than the built-in tiers).
fn device(tiers: Tiers) -> Device<CpuBackend> {
    let config = DeviceConfig {
        tiers,
        overcommit: true,
        capacity: Some(Capacity {
            tflops: PerDType::new(f64::INFINITY, f64::INFINITY),
            memory: u64::MAX,
        }),
        ..DeviceConfig::default()
    };
    Device::new(CpuBackend::new(), config).unwrap()
}

fn per_tier(c: &mut Criterion) {
    let tiers = tiers();
    let device = device(tiers.clone());
    let workloads: Vec<Workload> = Workload::all()
        .into_iter()
        .filter(|w| SUITE.iter().any(|s| w.id().starts_with(s)))
        .collect();
    for tier in tiers.iter() {
        let mut group = c.benchmark_group(tier.name());
        let accel = device.attach_tier(tier.clone()).unwrap();
        for dtype in DType::ALL {
            for w in &workloads {
                let (flops, _) = w.plan(dtype).unwrap();
                group.throughput(Throughput::Elements(flops));
                let mut prepared = w.prepare(&accel, dtype).unwrap();
                let key = (tier.name().to_string(), dtype, w.id());
                group.bench_function(BenchmarkId::new(w.id(), dtype), |b| {
                    b.iter_custom(|iters| {
                        let t = Instant::now();
                        for _ in 0..iters {
                            prepared.run(&accel).unwrap();
                        }
                        let elapsed = t.elapsed();
                        let mut achieved = ACHIEVED.lock().unwrap();
                        let entry = achieved.entry(key.clone()).or_default();
                        entry.0 += flops as f64 * iters as f64;
                        entry.1 += elapsed;
                        elapsed
                    })
                });
            }
        }
        group.finish();
    }
}

/// A tiny softmax (8 elements) on the bare backend and on an accelerator that never waits.
fn meter_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("meter/overhead");
    let bare = CpuBackend::new();
    let device = device(Tiers::builtin());
    let unbounded = Tier::new("unbounded", PerDType::new(1e9, 1e9), 1 << 30).unwrap();
    let accel = device.attach_tier(unbounded).unwrap();
    let x = HostTensor::full(DType::F32, &[1, 8], 0.5).unwrap();
    fn bench<B: Backend>(
        group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        backend: &B,
        x: &HostTensor,
    ) {
        let x = backend.upload(x).unwrap();
        let mut y = backend.alloc(x.desc()).unwrap();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    backend
                        .softmax_into(&Softmax::default(), &x, &mut y)
                        .unwrap();
                }
                let elapsed = t.elapsed();
                let mut overhead = OVERHEAD.lock().unwrap();
                let entry = overhead.entry(name.to_string()).or_default();
                entry.0 += elapsed;
                entry.1 += iters;
                elapsed
            })
        });
    }
    bench(&mut group, "bare", &bare, &x);
    bench(&mut group, "accelerator", &accel, &x);
    group.finish();
}

fn summary() {
    let achieved = ACHIEVED.lock().unwrap();
    let tiers = tiers();
    if !achieved.is_empty() {
        println!("\nper-tier summary (all timed iterations; ratio near 100%: meter-bound, far below: device-bound):");
        println!(
            "{:<16} {:>5} {:<26} {:>16} {:>12} {:>8}",
            "tier", "dtype", "workload", "achieved TFLOPS", "tier TFLOPS", "ratio"
        );
    }
    let mut totals: BTreeMap<(String, DType), (f64, Duration)> = BTreeMap::new();
    let line = |tier: &str, dtype: DType, what: &str, flops: f64, time: Duration| {
        let tflops = flops / time.as_secs_f64() / 1e12;
        let cap = tiers.get(tier).unwrap().tflops(dtype);
        println!(
            "{tier:<16} {dtype:>5} {what:<26} {tflops:>16.4} {cap:>12} {:>7.1}%",
            100.0 * tflops / cap
        );
    };
    for ((tier, dtype, workload), (flops, time)) in achieved.iter() {
        line(tier, *dtype, workload, *flops, *time);
        let total = totals.entry((tier.clone(), *dtype)).or_default();
        total.0 += flops;
        total.1 += *time;
    }
    for ((tier, dtype), (flops, time)) in totals {
        line(&tier, dtype, "(whole suite)", flops, time);
    }
    let overhead = OVERHEAD.lock().unwrap();
    let per_op = |name: &str| {
        overhead
            .get(name)
            .map(|(t, n)| t.as_nanos() as f64 / *n as f64)
    };
    if let (Some(bare), Some(accel)) = (per_op("bare"), per_op("accelerator")) {
        println!(
            "\nmeter overhead per op: {:.0} ns (tiny softmax: bare {bare:.0} ns, on an accelerator {accel:.0} ns)",
            accel - bare
        );
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .configure_from_args();
    per_tier(&mut c);
    meter_overhead(&mut c);
    c.final_summary();
    summary();
}
