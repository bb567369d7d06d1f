//! Virtual accelerators: the op suite on an accelerator, and every lifecycle error — quota,
//! unknown tier, admission, use after detach, double detach, foreign tensors, resize below use —
//! each typed, with nothing leaked.

mod common;

use eia::accelerator::{Capacity, Device, DeviceConfig, Tier, Tiers, MIN_TENSOR_CHARGE};
use eia::ops::{Gemm, Softmax};
use eia::{Backend, CpuBackend, DType, Error, HostTensor, PerDType};

const MIB: u64 = 1 << 20;

/// A device with a fixed capacity (no calibration) of 100 FP32 / 200 FP16 TFLOPS and 1 GiB.
fn device(overcommit: bool) -> Device<CpuBackend> {
    let config = DeviceConfig {
        tiers: Tiers::with_toml(
            "test tiers",
            "[[tier]]\nname = \"tiny\"\nfp32_tflops = 1.0\nfp16_tflops = 2.0\nmemory_mib = 1\n\n\
             [[tier]]\nname = \"huge\"\nfp32_tflops = 90.0\nfp16_tflops = 180.0\nmemory_mib = 512\n",
        )
        .unwrap(),
        capacity: Some(Capacity {
            tflops: PerDType::new(100.0, 200.0),
            memory: 1 << 30,
        }),
        overcommit,
        ..DeviceConfig::default()
    };
    Device::new(CpuBackend::new(), config).unwrap()
}

// The whole op suite, unchanged, on a metered accelerator (a tier fast enough that the meter
// never waits, so the suite checks the plumbing rather than the pacing).
backend_suite!(device(false).attach("huge").unwrap());

fn host(shape: &[usize], fill: f32) -> HostTensor {
    let len: usize = shape.iter().product();
    let values: Vec<f32> = (0..len).map(|i| fill + i as f32 * 1e-3).collect();
    HostTensor::from_f32(DType::F32, shape, &values).unwrap()
}

#[test]
fn memory_quota_is_enforced_and_nothing_held_is_lost() {
    let device = device(false);
    let acc = device.attach("tiny").unwrap(); // 1 MiB
    let kept_host = host(&[160, 1024], 0.5); // 640 KiB
    let kept = acc.upload(&kept_host).unwrap();
    let e = acc.alloc(kept.desc()).unwrap_err();
    assert_eq!(
        e,
        Error::MemoryQuota {
            accelerator: acc.id(),
            tier: "tiny".into(),
            requested: 640 * 1024,
            used: 640 * 1024,
            quota: MIB,
        }
    );
    assert!(e.to_string().contains("640 KiB in use of 1 MiB"), "{e}");
    // An op whose output would not fit fails the same way, before running.
    let e = acc.softmax(&Softmax::default(), &kept).unwrap_err();
    assert!(matches!(e, Error::MemoryQuota { .. }), "{e}");
    assert_eq!(acc.download(&kept).unwrap(), kept_host);
    assert_eq!(acc.usage().memory_used, 640 * 1024);
    // Freeing makes room again.
    drop(kept);
    assert_eq!(acc.usage().memory_used, 0);
    assert_eq!(acc.usage().memory_high_water, 640 * 1024);
    acc.alloc(&eia::TensorDesc::new(DType::F16, &[512, 1024]).unwrap())
        .unwrap();
    assert_eq!(device.memory_in_use(), 0, "the unnamed tensor was dropped");
}

#[test]
fn unknown_tier_is_a_clear_error() {
    let device = device(false);
    let e = device.attach("eia9.gigantic").err().unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("eia9.gigantic") && msg.contains("eia2.xlarge, tiny, huge"),
        "{msg}"
    );
    assert!(device.attach("ml.eia1.medium").is_ok());
    assert!(
        device.attached().is_empty(),
        "the accelerator was dropped, so detached"
    );
}

#[test]
fn use_after_detach_and_double_detach_are_errors() {
    let device = device(false);
    let acc = device.attach("huge").unwrap();
    let x = acc.upload(&host(&[4, 8], 0.1)).unwrap();
    let y = acc.softmax(&Softmax::default(), &x).unwrap();
    // Two 128-byte tensors, each charged the minimum.
    assert_eq!(device.memory_in_use(), 2 * MIN_TENSOR_CHARGE);
    let usage = acc.detach().unwrap();
    assert_eq!((usage.ops, usage.memory_used), (1, 0));
    assert_eq!(
        device.memory_in_use(),
        0,
        "detach frees the tensors still held"
    );
    assert!(device.attached().is_empty());
    let detached = Error::Detached(acc.id());
    assert_eq!(acc.detach().unwrap_err(), detached);
    assert_eq!(acc.download(&y).unwrap_err(), detached);
    assert_eq!(acc.softmax(&Softmax::default(), &x).unwrap_err(), detached);
    assert_eq!(acc.upload(&host(&[1], 1.0)).unwrap_err(), detached);
    assert_eq!(acc.resize("tiny").unwrap_err(), detached);
    assert_eq!(acc.synchronize().unwrap_err(), detached);
    assert_eq!(acc.usage().ops, 1, "the final record stays readable");
    drop((x, y)); // handles of a detached accelerator drop quietly
}

#[test]
fn foreign_tensors_are_refused() {
    let device = device(false);
    let (a, b) = (
        device.attach("huge").unwrap(),
        device.attach("tiny").unwrap(),
    );
    let xa = a.upload(&host(&[2, 3], 0.2)).unwrap();
    let xb = b.upload(&host(&[3, 2], 0.3)).unwrap();
    let e = a.gemm(&Gemm::default(), &xa, &xb, None).unwrap_err();
    assert_eq!(
        e,
        Error::ForeignTensor {
            accelerator: a.id(),
            owner: b.id()
        }
    );
    assert!(matches!(b.download(&xa), Err(Error::ForeignTensor { .. })));
    assert_eq!(
        a.usage().ops,
        0,
        "refused before the meter charged anything"
    );
}

#[test]
fn resize_keeps_tensors_and_refuses_below_use() {
    let device = device(false);
    let acc = device.attach("huge").unwrap();
    let data = host(&[300, 1024], 0.7); // 1.17 MiB > tiny's 1 MiB
    let x = acc.upload(&data).unwrap();
    let e = acc.resize("tiny").unwrap_err();
    assert_eq!(
        e,
        Error::ResizeBelowUsage {
            accelerator: acc.id(),
            tier: "tiny".into(),
            used: 300 * 1024 * 4,
            quota: MIB,
        }
    );
    assert_eq!(
        acc.tier().name(),
        "huge",
        "a refused resize changes nothing"
    );
    assert_eq!(acc.download(&x).unwrap(), data);
    drop(x);
    let small = acc.upload(&host(&[16], 0.1)).unwrap();
    acc.resize("ml.tiny").unwrap();
    assert_eq!(acc.tier().name(), "tiny");
    assert_eq!(device.attached()[0].1.name(), "tiny");
    assert_eq!(acc.usage().memory_quota, MIB);
    assert!(matches!(acc.upload(&data), Err(Error::MemoryQuota { .. })));
    assert_eq!(acc.download(&small).unwrap(), host(&[16], 0.1));
    acc.resize("eia2.xlarge").unwrap_err(); // 8 GiB does not fit on a 1 GiB device
    assert_eq!(acc.tier().name(), "tiny");
}

#[test]
fn admission_refuses_beyond_capacity_unless_overcommitted() {
    let strict = device(false);
    let first = strict.attach("huge").unwrap(); // 90 of 100 FP32 TFLOPS
    let e = strict.attach("huge").err().unwrap();
    let msg = e.to_string();
    assert!(matches!(e, Error::Capacity(_)), "{msg}");
    assert!(
        msg.contains("FP32: 90 TFLOPS needed, 90.000 of 100.000"),
        "{msg}"
    );
    assert!(msg.contains("overcommit"), "{msg}");
    assert!(
        strict.attach("eia2.xlarge").is_err(),
        "8 GiB on a 1 GiB device"
    );
    let small = strict.attach("tiny").unwrap();
    assert_eq!(strict.attached().len(), 2);
    first.detach().unwrap();
    let second = strict.attach("huge").unwrap();
    // Resizing counts the accelerator's own tier out before checking.
    second.resize("huge").unwrap();
    drop(small);

    // Overcommit shares compute (2 × 90 of 100 TFLOPS), never memory (a third 512 MiB tier
    // does not fit in 1 GiB).
    let loose = device(true);
    let two: Vec<_> = (0..2).map(|_| loose.attach("huge").unwrap()).collect();
    assert_eq!(loose.attached().len(), two.len());
    let e = loose.attach("huge").err().unwrap();
    assert!(
        matches!(&e, Error::Capacity(m) if m.contains("memory") && !m.contains("FP32")),
        "{e}"
    );
}

#[test]
fn a_tier_without_fp16_is_admitted_on_fp32_alone_and_refuses_fp16_ops() {
    // 1 FP32 TFLOPS and 0.1 FP16: the device can run FP32 tenants, hardly any FP16.
    let config = DeviceConfig {
        tiers: Tiers::with_toml(
            "fp32 tiers",
            "[[tier]]\nname = \"fp32only\"\nfp32_tflops = 0.4\nfp16_tflops = 0\nmemory_mib = 1\n\n\
             [[tier]]\nname = \"both\"\nfp32_tflops = 0.4\nfp16_tflops = 3.2\nmemory_mib = 1\n",
        )
        .unwrap(),
        capacity: Some(Capacity {
            tflops: PerDType::new(1.0, 0.1),
            memory: 1 << 30,
        }),
        ..DeviceConfig::default()
    };
    let device = Device::new(CpuBackend::new(), config).unwrap();
    // The same FP32 rate with an FP16 rate is refused on FP16 capacity alone.
    let e = device.attach("both").err().unwrap();
    assert!(
        matches!(&e, Error::Capacity(m) if m.contains("FP16") && !m.contains("FP32")),
        "{e}"
    );
    let two: Vec<_> = (0..2).map(|_| device.attach("fp32only").unwrap()).collect();
    let e = device.attach("fp32only").err().unwrap();
    assert!(
        matches!(&e, Error::Capacity(m) if m.contains("FP32: 0.4 TFLOPS needed, 0.800 of 1.000") && !m.contains("FP16")),
        "{e}"
    );
    let acc = &two[0];
    assert_eq!(
        acc.tier().to_string(),
        "fp32only (0.4 FP32 TFLOPS, no FP16 TFLOPS, 1 MiB)"
    );
    let x = acc
        .upload(&HostTensor::full(DType::F16, &[4, 4], 0.5).unwrap())
        .unwrap();
    let e = acc.gemm(&Gemm::default(), &x, &x, None).unwrap_err();
    assert!(
        matches!(&e, Error::Capacity(m) if m.contains("does not offer FP16")),
        "{e}"
    );
    assert_eq!((acc.usage().ops, acc.usage().flops[DType::F16]), (0, 0));
    let x = acc
        .upload(&HostTensor::full(DType::F32, &[4, 4], 0.5).unwrap())
        .unwrap();
    acc.gemm(&Gemm::default(), &x, &x, None).unwrap();
    assert_eq!(acc.usage().ops, 1);
}

#[test]
fn calibrated_and_configured_capacity() {
    let backend = CpuBackend::new();
    let runs: Vec<Capacity> = (0..3)
        .map(|_| Capacity::measure(&backend).unwrap())
        .collect();
    for c in &runs {
        println!("calibrated: {c}");
        assert!(c.tflops.iter().all(|(_, &t)| t > 0.0), "{c}");
    }
    let tflops = PerDType::new(0.5, 0.25);
    let configured = Capacity::configured(&backend, tflops).unwrap();
    assert_eq!(configured.tflops, tflops);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = Capacity::configured(&backend, PerDType::new(bad, 1.0)).unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e}");
    }
}

#[test]
fn usage_counts_flops_per_precision_ops_and_bytes() {
    let device = device(false);
    let acc = device.attach("huge").unwrap();
    for dtype in DType::ALL {
        let a = acc
            .upload(&HostTensor::full(dtype, &[8, 16], 0.25).unwrap())
            .unwrap();
        let b = acc
            .upload(&HostTensor::full(dtype, &[16, 4], 0.5).unwrap())
            .unwrap();
        let y = acc.gemm(&Gemm::default(), &a, &b, None).unwrap();
        acc.download(&y).unwrap();
    }
    let u = acc.usage();
    assert_eq!(
        (u.ops, u.flops[DType::F32], u.flops[DType::F16]),
        (2, 2 * 8 * 4 * 16, 2 * 8 * 4 * 16)
    );
    assert_eq!(u.bytes_uploaded, (8 * 16 + 16 * 4) * (4 + 2));
    assert_eq!(u.bytes_downloaded, 8 * 4 * (4 + 2));
    assert_eq!(u.op_bytes, (8 * 16 + 16 * 4 + 8 * 4) * (4 + 2));
    let want = 1024.0 / 90e12 + 1024.0 / 180e12;
    assert!((u.charged - want).abs() < want * 1e-12, "{}", u.charged);
    assert_eq!(u.memory_used, 0, "every tensor above was dropped");
    let text = u.to_string();
    assert!(
        text.contains("accelerator") && text.contains("huge"),
        "{text}"
    );
}

#[test]
fn custom_tier_can_be_attached_directly() {
    let device = device(false);
    let tier = Tier::new("adhoc", PerDType::new(0.5, 1.0), 4 * MIB).unwrap();
    let acc = device.attach_tier(tier.clone()).unwrap();
    assert_eq!(acc.tier(), tier);
    assert!(acc.name().contains("adhoc"));
}
