//! Criterion benches of the CUDA backend with the peer in the same run, under the ids of
//! `benches/ops.rs` (`<family>/<dtype>/eia/<size>`):
//! - GEMM beside cuBLAS on the same shapes (`cublasGemmEx` FP16 in, FP32 compute; `cublasSgemm`,
//!   default math mode: no TF32);
//! - batch norm and softmax beside a device-to-device copy of the same bytes (the bandwidth floor);
//! - convolution alone (its peer, cuDNN through PyTorch, is `benches/cuda_peers.py`, run in the
//!   same device session by `scripts/device`).
//!
//! After criterion, a summary table gives each workload's median TFLOPS or GB/s for eia and its
//! peer and the ratio (median of 15 samples, each a batch of launches between two stream
//! synchronisations lasting at least 5 ms). Without a GPU it prints why and measures nothing.
//! Filter with `EIA_BENCH_FILTER=<text>` (matched against the workload id).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use eia::backend::CudaBackend;
use eia::workload::Workload;
use eia::{f16, Backend, DType};

/// One summary row: the workload, its work (FLOPs or bytes), eia's and the peer's median times.
struct Row {
    id: String,
    dtype: DType,
    work: u64,
    memory_bound: bool,
    eia: f64,
    peer: Option<(&'static str, f64)>,
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

/// A named peer computation of the same work.
type PeerFn<'a> = (&'static str, Box<dyn FnMut() + 'a>);

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(600))
        .sample_size(10)
}

/// Median seconds per call of `f` (`sync` waits for the device).
fn median(mut f: impl FnMut(), sync: impl Fn()) -> f64 {
    f();
    sync();
    let t = Instant::now();
    f();
    sync();
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let reps = ((5e-3 / once).ceil() as usize).clamp(1, 10_000);
    let mut samples: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            sync();
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The peer's device state: cuBLAS and the copy run on their own stream of the same GPU.
struct Peer {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
}

impl Peer {
    fn new() -> Peer {
        let ctx = CudaContext::new(0).expect("CUDA context for the peer");
        let stream = ctx.new_stream().expect("peer stream");
        let blas = CudaBlas::new(stream.clone()).expect("cuBLAS (libcublas.so.12 on the path)");
        Peer { stream, blas }
    }

    fn sync(&self) {
        self.stream.synchronize().unwrap();
    }

    /// Row-major `Y[m,n] = A[m,k]·B[k,n]` through column-major cuBLAS: `Yᵀ = Bᵀ·Aᵀ`.
    fn gemm<T: cudarc::driver::DeviceRepr + Copy + 'static>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        one: T,
        zero: T,
    ) -> impl FnMut() + '_
    where
        CudaBlas: Gemm<T>,
    {
        let fill =
            |len: usize| -> CudaSlice<T> { self.stream.clone_htod(&vec![one; len]).unwrap() };
        let (a, b, mut y) = (fill(m * k), fill(k * n), fill(m * n));
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: one,
            lda: n as i32,
            ldb: k as i32,
            beta: zero,
            ldc: n as i32,
        };
        move || {
            // SAFETY: b is k×n and a m×k row-major (n×k and k×m column-major), y holds m·n.
            unsafe { self.blas.gemm(cfg, &b, &a, &mut y) }.unwrap();
        }
    }

    /// A device-to-device copy of `bytes` bytes.
    fn copy(&self, bytes: usize) -> impl FnMut() + '_ {
        let src: CudaSlice<u8> = self.stream.clone_htod(&vec![1u8; bytes]).unwrap();
        let mut dst: CudaSlice<u8> = self.stream.clone_htod(&vec![0u8; bytes]).unwrap();
        move || self.stream.memcpy_dtod(&src, &mut dst).unwrap()
    }
}

fn family(c: &mut Criterion, gpu: &CudaBackend, peer: &Peer, name: &str, workloads: &[Workload]) {
    let filter = std::env::var("EIA_BENCH_FILTER").unwrap_or_default();
    for dtype in DType::ALL {
        let mut group = c.benchmark_group(format!("{name}/{dtype}"));
        for w in workloads.iter().filter(|w| w.id().contains(&filter)) {
            let (flops, _) = w.plan(dtype).unwrap();
            let bytes = w.bytes(dtype).unwrap();
            let work = if w.memory_bound() { bytes } else { flops };
            group.throughput(if w.memory_bound() {
                Throughput::Bytes(bytes)
            } else {
                Throughput::Elements(flops)
            });
            let size = w.id().split_once('/').unwrap().1.to_string();
            let mut prepared = w.prepare(gpu, dtype).unwrap();
            let sync = || gpu.synchronize().unwrap();
            group.bench_function(BenchmarkId::new("eia", &size), |b| {
                b.iter_custom(|iters| {
                    sync();
                    let t = Instant::now();
                    for _ in 0..iters {
                        prepared.run(gpu).unwrap();
                    }
                    sync();
                    t.elapsed()
                })
            });
            let eia = median(|| prepared.run(gpu).unwrap(), sync);
            let mut peer_fn: Option<PeerFn> = match w {
                Workload::Gemm { m, n, k } => Some((
                    "cuBLAS",
                    match dtype {
                        DType::F32 => Box::new(peer.gemm(*m, *n, *k, 1.0f32, 0.0)),
                        DType::F16 => Box::new(peer.gemm(*m, *n, *k, f16::ONE, f16::ZERO)),
                    },
                )),
                _ if w.memory_bound() => Some(("copy", Box::new(peer.copy(bytes as usize / 2)))),
                _ => None,
            };
            let peer_time = peer_fn.as_mut().map(|(who, f)| {
                group.bench_function(BenchmarkId::new(*who, &size), |b| {
                    b.iter_custom(|iters| {
                        peer.sync();
                        let t = Instant::now();
                        for _ in 0..iters {
                            f();
                        }
                        peer.sync();
                        t.elapsed()
                    })
                });
                (*who, median(f, || peer.sync()))
            });
            ROWS.lock().unwrap().push(Row {
                id: w.id(),
                dtype,
                work,
                memory_bound: w.memory_bound(),
                eia,
                peer: peer_time,
            });
        }
        group.finish();
    }
}

fn all(c: &mut Criterion) {
    let gpu = match CudaBackend::new(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            println!("cuda bench skipped: {e}");
            return;
        }
    };
    println!("device: {}", gpu.name());
    let peer = Peer::new();
    let mut gemms = Workload::gemms();
    let mut memory = Vec::new();
    for w in Workload::gpu_scale() {
        match w {
            Workload::Gemm { .. } => gemms.push(w),
            _ => memory.push(w),
        }
    }
    family(c, &gpu, &peer, "gemm", &gemms);
    let mut convs = Workload::resnet50_convs(1);
    convs.extend(Workload::resnet50_convs(32));
    family(c, &gpu, &peer, "conv", &convs);
    let mut bns = Workload::batch_norms();
    bns.extend(memory.iter().filter(|w| w.family() == "batchnorm").cloned());
    family(c, &gpu, &peer, "batchnorm", &bns);
    let mut softmaxes = Workload::softmaxes();
    softmaxes.extend(memory.iter().filter(|w| w.family() == "softmax").cloned());
    family(c, &gpu, &peer, "softmax", &softmaxes);
    family(c, &gpu, &peer, "pool", &Workload::pools());
    summary();
}

fn summary() {
    let rows = ROWS.lock().unwrap();
    println!(
        "\n{:<34} {:>5} {:>12} {:>12} {:>8}  peer",
        "workload", "dtype", "eia", "peer", "ratio"
    );
    for r in rows.iter() {
        let (scale, unit) = if r.memory_bound {
            (1e9, "GB/s")
        } else {
            (1e12, "TFLOPS")
        };
        let rate = |t: f64| r.work as f64 / t / scale;
        let peer = r
            .peer
            .map(|(who, t)| (format!("{:.2}", rate(t)), format!("{:.2}", t / r.eia), who))
            .unwrap_or(("-".into(), "-".into(), "(cuDNN: cuda_peers.py)"));
        println!(
            "{:<34} {:>5} {:>7.2} {unit:<4} {:>12} {:>8}  {}",
            r.id,
            r.dtype,
            rate(r.eia),
            peer.0,
            peer.1,
            peer.2
        );
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = all
}
criterion_main!(benches);
