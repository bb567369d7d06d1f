//! The README's first steps: upload FP16 tensors, run a fused conv+ReLU and a softmax on the CPU
//! backend, read the result back. `cargo run --release --example quickstart`

use eia::ops::{Conv, Softmax};
use eia::{Backend, CpuBackend, DType, HostTensor};

fn main() -> eia::Result<()> {
    let cpu = CpuBackend::new();
    let x = cpu.upload(&HostTensor::from_f32(
        DType::F16,
        &[1, 3, 32, 32],
        &vec![0.5; 3 * 32 * 32],
    )?)?;
    let w = cpu.upload(&HostTensor::from_f32(
        DType::F16,
        &[8, 3, 3, 3],
        &vec![0.1; 8 * 27],
    )?)?;
    let conv = Conv {
        pads: [1, 1, 1, 1],
        relu: true,
        ..Conv::default()
    };
    let y = cpu.conv(&conv, &x, &w, None)?; // [1, 8, 32, 32], FP16
    let p = cpu.softmax(&Softmax { axis: 1 }, &y)?;
    let host = cpu.download(&p)?; // back on the host
    let values = host.data().to_f32_vec();
    println!(
        "softmax over 8 channels at pixel (0, 0): {:?}",
        &values.iter().step_by(32 * 32).collect::<Vec<_>>()
    );
    // Every channel sees the same input and weights, so the softmax is uniform: 1/8 each.
    assert!(values.iter().all(|v| (v - 0.125).abs() < 1e-3));
    Ok(())
}
