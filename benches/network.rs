//! Network benches on loopback, each beside its floor in the same run: a bare tonic echo of the
//! same bytes (`eia::rpc::echo`).
//!
//! - `network/roundtrip/{eia,echo}`: a tiny op (softmax of 8 FP32 values, one `Run` round trip)
//!   against an echo of the same 32 bytes.
//! - `network/upload/<MB>/{eia,echo}` and `network/download/<MB>/{eia,echo}`: 1–256 MB tensors
//!   in 1 MiB chunks against streaming the same bytes (throughput in bytes).
//!
//! After criterion's report a summary prints p50/p99 round trips (from 2,000 timed calls each)
//! and the ratios. `cargo bench --bench network`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use eia::accelerator::{Capacity, DeviceConfig, Tiers};
use eia::ops::Softmax;
use eia::rpc::echo::proto::{echo_client::EchoClient, Blob, Size};
use eia::rpc::{ClientConfig, Connection, RemoteAccelerator, ServerConfig};
use eia::{Backend, CpuBackend, DType, HostTensor, PerDType};
use tonic::transport::Channel;

const CHUNK: usize = 1 << 20;
const SIZES_MB: [usize; 4] = [1, 16, 64, 256];

struct Setup {
    _server: eia::rpc::ServerHandle,
    acc: RemoteAccelerator,
    echo: EchoClient<Channel>,
    runtime: tokio::runtime::Runtime,
    _conn: Arc<Connection>,
}

fn setup() -> Setup {
    let config = ServerConfig {
        device: DeviceConfig {
            tiers: Tiers::with_toml(
                "bench",
                "[[tier]]\nname = \"bench\"\nfp32_tflops = 1000.0\nfp16_tflops = 1000.0\nmemory_mib = 4096\n",
            )
            .unwrap(),
            capacity: Some(Capacity { tflops: PerDType::new(1e6, 1e6), memory: 1 << 40 }),
            ..DeviceConfig::default()
        },
        max_message_bytes: 64 << 20,
        ..ServerConfig::default()
    };
    let server =
        eia::rpc::spawn("127.0.0.1:0".parse().unwrap(), CpuBackend::new(), config).unwrap();
    let conn = Connection::connect(&server.url(false), ClientConfig::default()).unwrap();
    let acc = conn.attach("bench").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = eia::rpc::echo::spawn("127.0.0.1:0".parse().unwrap(), 64 << 20).unwrap();
    let echo = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .initial_stream_window_size(Some(eia::rpc::server::WINDOW_BYTES))
            .initial_connection_window_size(Some(2 * eia::rpc::server::WINDOW_BYTES))
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        EchoClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    });
    Setup {
        _server: server,
        acc,
        echo,
        runtime,
        _conn: conn,
    }
}

fn echo_unary(s: &Setup, data: &[u8]) {
    let mut c = s.echo.clone();
    s.runtime
        .block_on(c.unary(Blob {
            data: data.to_vec(),
        }))
        .unwrap();
}

fn echo_upload(s: &Setup, data: &[u8]) {
    let mut c = s.echo.clone();
    let chunks: Vec<Blob> = data
        .chunks(CHUNK)
        .map(|d| Blob { data: d.to_vec() })
        .collect();
    s.runtime
        .block_on(c.upload(tokio_stream::iter(chunks)))
        .unwrap();
}

fn echo_download(s: &Setup, bytes: usize) {
    let mut c = s.echo.clone();
    s.runtime.block_on(async move {
        let mut stream = c
            .download(Size {
                bytes: bytes as u64,
                chunk: CHUNK as u64,
            })
            .await
            .unwrap()
            .into_inner();
        let mut data = Vec::with_capacity(bytes);
        while let Some(b) = stream.message().await.unwrap() {
            data.extend_from_slice(&b.data);
        }
        assert_eq!(data.len(), bytes);
    });
}

fn percentiles(mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..200 {
        f();
    }
    let mut times: Vec<Duration> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .configure_from_args();
    let s = setup();
    let tiny = HostTensor::full(DType::F32, &[1, 8], 0.5).unwrap();
    let x = s.acc.upload(&tiny).unwrap();
    let mut y = s.acc.alloc(x.desc()).unwrap();
    let bytes32 = tiny.as_bytes().to_vec();
    let mut tiny_op = || s.acc.softmax_into(&Softmax::default(), &x, &mut y).unwrap();

    let mut group = c.benchmark_group("network/roundtrip");
    group.bench_function("eia", |b| b.iter(&mut tiny_op));
    group.bench_function("echo", |b| b.iter(|| echo_unary(&s, &bytes32)));
    group.finish();

    let mut rates = Vec::new();
    for mb in SIZES_MB {
        let n = mb << 20;
        let host = HostTensor::full(DType::F32, &[n / 4], 0.25).unwrap();
        let raw = host.as_bytes().to_vec();
        let held = s.acc.upload(&host).unwrap();
        let time = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            let runs = if mb >= 64 { 3 } else { 10 };
            for _ in 0..runs {
                f();
            }
            n as f64 * runs as f64 / t.elapsed().as_secs_f64() / 1e9
        };
        for (dir, eia_rate, echo_rate) in [
            (
                "upload",
                time(&mut || drop(s.acc.upload(&host).unwrap())),
                time(&mut || echo_upload(&s, &raw)),
            ),
            (
                "download",
                time(&mut || drop(s.acc.download(&held).unwrap())),
                time(&mut || echo_download(&s, n)),
            ),
        ] {
            rates.push((dir, mb, eia_rate, echo_rate));
        }
        if mb <= 16 {
            let mut group = c.benchmark_group(format!("network/upload/{mb}MB"));
            group.throughput(Throughput::Bytes(n as u64));
            group.bench_function(BenchmarkId::from_parameter("eia"), |b| {
                b.iter(|| drop(s.acc.upload(&host).unwrap()))
            });
            group.bench_function(BenchmarkId::from_parameter("echo"), |b| {
                b.iter(|| echo_upload(&s, &raw))
            });
            group.finish();
            let mut group = c.benchmark_group(format!("network/download/{mb}MB"));
            group.throughput(Throughput::Bytes(n as u64));
            group.bench_function(BenchmarkId::from_parameter("eia"), |b| {
                b.iter(|| s.acc.download(&held).unwrap())
            });
            group.bench_function(BenchmarkId::from_parameter("echo"), |b| {
                b.iter(|| echo_download(&s, n))
            });
            group.finish();
        }
    }
    c.final_summary();

    let (eia50, eia99) = percentiles(&mut tiny_op);
    let (echo50, echo99) = percentiles(|| echo_unary(&s, &bytes32));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("\nnetwork summary (loopback, one run):");
    println!(
        "tiny-op round trip: eia p50 {:.0} µs p99 {:.0} µs; echo p50 {:.0} µs p99 {:.0} µs; p50 ratio {:.2}x (target <= 1.5x)",
        us(eia50),
        us(eia99),
        us(echo50),
        us(echo99),
        eia50.as_secs_f64() / echo50.as_secs_f64()
    );
    for (dir, mb, eia_rate, echo_rate) in rates {
        println!(
            "{dir:<8} {mb:>4} MB: eia {eia_rate:.2} GB/s, echo {echo_rate:.2} GB/s, ratio {:.0}%",
            100.0 * eia_rate / echo_rate
        );
    }
}
