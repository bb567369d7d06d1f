//! Attach a virtual accelerator, run ops on it, read its usage, resize it, detach it.
//! `cargo run --release --example accelerator`

use eia::accelerator::{Device, DeviceConfig, Tier};
use eia::ops::{Conv, Gemm, Softmax};
use eia::{Backend, CpuBackend, DType, HostTensor, PerDType};

fn main() -> eia::Result<()> {
    // The CPU is slower than any Elastic Inference tier, so admit tiers beyond its capacity.
    let config = DeviceConfig {
        overcommit: true,
        ..DeviceConfig::default()
    };
    let device = Device::new(CpuBackend::new(), config)?;
    // A small custom tier (0.005 FP32 / 0.02 FP16 TFLOPS, 64 MiB) so that the meter shows.
    let accel = device.attach_tier(Tier::new(
        "demo.small",
        PerDType::new(0.005, 0.02),
        64 << 20,
    )?)?;

    let x = accel.upload(&HostTensor::full(DType::F16, &[1, 64, 56, 56], 0.5)?)?;
    let w = accel.upload(&HostTensor::full(DType::F16, &[64, 64, 3, 3], 0.01)?)?;
    let conv = Conv {
        pads: [1, 1, 1, 1],
        relu: true,
        ..Conv::default()
    };
    for _ in 0..20 {
        let y = accel.conv(&conv, &x, &w, None)?; // 0.23 GFLOP each, metered at 0.02 TFLOPS
        accel.softmax(&Softmax { axis: 1 }, &y)?;
    }
    let a = accel.upload(&HostTensor::full(DType::F32, &[256, 256], 0.1)?)?;
    accel.gemm(&Gemm::default(), &a, &a, None)?;
    println!("{}", accel.usage());

    accel.resize("eia2.medium")?; // keeps its tensors and meter balance
    println!("resized to {}", accel.tier());
    let usage = accel.detach()?; // frees everything it held
    println!(
        "detached after {:.2} s attached",
        usage.attached.as_secs_f64()
    );
    Ok(())
}
