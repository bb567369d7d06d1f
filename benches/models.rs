//! Whole-model benches: eia's own ResNet-50 and MobileNetV2 (seeded weights) per inference on
//! the CPU backend, on a remote accelerator over loopback beside it (the same model, one
//! `Program` per inference: the difference is the network and server overhead), and the load
//! time (parse, fold, plan, upload the weights).
//!
//! `metered` runs the same session on a local accelerator of a custom tier far below this device
//! (0.01 FP32 / 0.005 FP16 TFLOPS): its latency should sit on the metered floor (the model's FLOPs
//! over the tier's rate), i.e. its throughput on 10 (FP32) or 5 (FP16) GFLOPS.
//!
//! `cargo bench --bench models` (`-- resnet50` for one model). Throughput is FLOPs per second
//! (criterion's Gelem/s = GFLOPS). The tier used remotely is so fast that the meter never
//! waits. onnxruntime on the same models and inputs: `scripts/models.py --bench`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use eia::accelerator::{Device, DeviceConfig, Tier, Tiers};
use eia::model::zoo;
use eia::rpc::{self, ClientConfig, Connection, ServerConfig};
use eia::{CpuBackend, DType, HostTensor, LoadOptions, Model};

/// A tier far above this device: the meter never waits, so only the device and the wire count.
const UNMETERED: &str =
    "[[tier]]\nname = \"unmetered\"\nfp32_tflops = 1000.0\nfp16_tflops = 1000.0\nmemory_mib = 8192\n";

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
}

/// (name, ONNX bytes, batch, fp16).
fn cases() -> Vec<(&'static str, Vec<u8>, usize, bool)> {
    let r50 = zoo::resnet50(1);
    let mv2 = zoo::mobilenet_v2(1);
    vec![
        ("resnet50", r50.clone(), 1, false),
        ("resnet50", r50.clone(), 8, false),
        ("resnet50", r50, 1, true),
        ("mobilenetv2", mv2.clone(), 1, false),
        ("mobilenetv2", mv2, 1, true),
    ]
}

fn models(c: &mut Criterion) {
    let cpu = CpuBackend::new();
    let server = rpc::spawn(
        "127.0.0.1:0".parse().unwrap(),
        CpuBackend::new(),
        ServerConfig {
            device: DeviceConfig {
                tiers: Tiers::with_toml("bench", UNMETERED).unwrap(),
                overcommit: true,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .expect("an embedded server on loopback");
    let conn = Connection::connect(&server.url(false), ClientConfig::default()).unwrap();
    let remote = conn.attach("unmetered").unwrap();
    let device = Device::new(
        CpuBackend::new(),
        DeviceConfig {
            overcommit: true,
            ..Default::default()
        },
    )
    .unwrap();
    let metered = device
        .attach_tier(Tier::new("metered", 0.01, 0.005, 2 << 30).unwrap())
        .unwrap();
    for (name, bytes, batch, fp16) in cases() {
        let options = LoadOptions { batch, fp16 };
        let model = Model::from_bytes(&bytes, options).unwrap();
        let dtype = if fp16 { DType::F16 } else { DType::F32 };
        let id = format!("{name}/b{batch}/{dtype}");
        let input = &model.inputs()[0];
        let x = HostTensor::full(DType::F32, input.desc.shape(), 0.5).unwrap();
        let mut group = c.benchmark_group("models");
        group.throughput(Throughput::Elements(model.flops()));
        let local = model.session(&cpu).unwrap();
        group.bench_function(BenchmarkId::new("cpu", &id), |b| {
            b.iter(|| local.run(std::slice::from_ref(&x)).unwrap())
        });
        let far = model.session(&remote).unwrap();
        group.bench_function(BenchmarkId::new("remote", &id), |b| {
            b.iter(|| far.run(std::slice::from_ref(&x)).unwrap())
        });
        if batch == 1 {
            let slow = model.session(&metered).unwrap();
            group.bench_function(BenchmarkId::new("metered", &id), |b| {
                b.iter(|| slow.run(std::slice::from_ref(&x)).unwrap())
            });
        }
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(BenchmarkId::new("load", &id), |b| {
            b.iter(|| {
                Model::from_bytes(&bytes, options)
                    .unwrap()
                    .session(&cpu)
                    .map(drop)
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = models
}
criterion_main!(benches);
