//! Metering accuracy on the CPU backend with small custom tiers (so the meter, not the device, is
//! the limit): a saturating client gets its tier's rate per precision, two tiers at once each get
//! their own, the burst is bounded as documented, ops larger than the burst go into debt, and a
//! resize changes the rate. The tests take turns (one lock) so they do not compete for cores.

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use eia::accelerator::{Accelerator, Capacity, Device, DeviceConfig, Tiers};
use eia::ops::Gemm;
use eia::{Backend, CpuBackend, DType, HostTensor, PerDType};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Custom tiers far below what the device delivers on 64³ GEMMs (tens of GFLOPS even with the
/// per-launch overhead of tiny ops): a 64³ GEMM costs 10.5 ms on m1 in FP32 — so much more than
/// it takes to compute, even on a machine whose cores are busy with other work (a test must
/// measure the meter, not spare cycles), and the meter, not the device, sets the pace.
const TIERS: &str = r#"
[[tier]]
name = "m1"          # 0.05 GFLOPS FP32, 0.1 GFLOPS FP16
fp32_tflops = 0.00005
fp16_tflops = 0.0001
memory_mib = 64

[[tier]]
name = "m3"
fp32_tflops = 0.00015
fp16_tflops = 0.0003
memory_mib = 64

[[tier]]
name = "glacial"     # a 64³ FP32 GEMM costs 0.25 s: more than the 0.1 s burst
fp32_tflops = 0.0000020972
fp16_tflops = 0.0000041943
memory_mib = 64
"#;

const N: usize = 64;
const GEMM_FLOPS: f64 = 2.0 * (N * N * N) as f64;
/// m1's FP32 rate in FLOP/s (m3 has three times as much).
const M1: f64 = 5e7;
/// The meter burst of these tests' device, in seconds.
const BURST: f64 = 0.1;

fn device() -> Device<CpuBackend> {
    let config = DeviceConfig {
        tiers: Tiers::with_toml("metering tiers", TIERS).unwrap(),
        capacity: Some(Capacity {
            tflops: PerDType::new(1.0, 1.0),
            memory: 1 << 30,
        }),
        // A client descheduled for less than the burst (a busy machine) loses no tokens: it
        // catches up, so the rate measured is the meter's, not the machine's spare cycles.
        burst: Duration::from_secs_f64(BURST),
        ..DeviceConfig::default()
    };
    Device::new(CpuBackend::with_threads(2).unwrap(), config).unwrap()
}

/// Runs GEMMs back to back: `warmup` first, then counts ops for
/// `window`; returns the achieved FLOP/s.
fn saturate(
    acc: &Accelerator<CpuBackend>,
    dtype: DType,
    warmup: Duration,
    window: Duration,
) -> f64 {
    let a = acc
        .upload(&HostTensor::full(dtype, &[N, N], 0.01).unwrap())
        .unwrap();
    let mut y = acc.alloc(a.desc()).unwrap();
    let op = Gemm::default();
    let t = Instant::now();
    while t.elapsed() < warmup {
        acc.gemm_into(&op, &a, &a, None, &mut y).unwrap();
    }
    let t = Instant::now();
    let mut ops = 0u64;
    while t.elapsed() < window {
        acc.gemm_into(&op, &a, &a, None, &mut y).unwrap();
        ops += 1;
    }
    ops as f64 * GEMM_FLOPS / t.elapsed().as_secs_f64()
}

fn assert_within(achieved: f64, rate: f64, tolerance: f64, what: &str) {
    let ratio = achieved / rate;
    println!(
        "{what}: achieved {:.3} GFLOPS / tier {:.3} GFLOPS = {ratio:.4}",
        achieved / 1e9,
        rate / 1e9
    );
    assert!(
        (ratio - 1.0).abs() <= tolerance,
        "{what}: achieved/tier = {ratio:.4}"
    );
}

#[test]
fn saturating_client_gets_its_tier_rate_per_precision() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = device();
    let acc = device.attach("m1").unwrap();
    let window = Duration::from_millis(1200);
    for dtype in DType::ALL {
        let achieved = saturate(&acc, dtype, Duration::from_millis(100), window);
        let rate = acc.tier().flops_per_second(dtype);
        assert_within(achieved, rate, 0.03, &format!("m1 {dtype}"));
    }
    let usage = acc.usage();
    assert!(usage.meter_bound(), "{usage}");
    assert!(usage.to_string().contains("meter-bound"), "{usage}");
}

#[test]
fn two_tiers_at_once_each_get_their_own_rate() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = device();
    let (slow, fast) = (device.attach("m1").unwrap(), device.attach("m3").unwrap());
    let window = Duration::from_millis(1200);
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(|| saturate(&slow, DType::F32, Duration::from_millis(100), window));
        let b = s.spawn(|| saturate(&fast, DType::F32, Duration::from_millis(100), window));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_within(a, M1, 0.05, "m1 beside m3");
    assert_within(b, 3.0 * M1, 0.05, "m3 beside m1");
}

#[test]
fn burst_is_bounded_as_documented() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = device();
    let acc = device.attach("m1").unwrap();
    let (burst, cost) = (BURST, GEMM_FLOPS / M1);
    let t = Instant::now();
    saturate(&acc, DType::F32, Duration::ZERO, Duration::from_millis(300));
    let elapsed = t.elapsed().as_secs_f64();
    let charged = acc.usage().charged;
    // Never more than the window plus the burst (plus the op that starts last) ...
    assert!(
        charged <= elapsed + burst + cost,
        "charged {charged} in {elapsed} s"
    );
    // ... and, saturating from an empty bucket, not much less.
    assert!(
        charged >= 0.97 * elapsed - cost,
        "charged {charged} in {elapsed} s"
    );
}

#[test]
fn ops_larger_than_the_burst_go_into_debt_without_deadlock() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = device();
    let acc = device.attach("glacial").unwrap();
    let a = acc
        .upload(&HostTensor::full(DType::F32, &[N, N], 0.01).unwrap())
        .unwrap();
    let t = Instant::now();
    for _ in 0..3 {
        acc.gemm(&Gemm::default(), &a, &a, None).unwrap();
    }
    // The first op runs on the full bucket and leaves it 0.23 s in debt; each next one waits
    // for the debt to clear and the bucket to refill: starts at 0, 0.25, 0.5 s.
    let elapsed = t.elapsed().as_secs_f64();
    assert!((0.48..0.65).contains(&elapsed), "3 ops took {elapsed} s");
    let usage = acc.usage();
    assert!((usage.charged - 0.75).abs() < 1e-3, "{}", usage.charged);
    assert!(
        usage.meter_balance < 0.0,
        "still in debt: {}",
        usage.meter_balance
    );
    assert!(usage.meter_wait.as_secs_f64() > 0.45, "{usage}");
}

#[test]
fn resize_changes_the_rate_at_once() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = device();
    let acc = device.attach("m3").unwrap();
    let window = Duration::from_millis(1000);
    let fast = saturate(&acc, DType::F32, Duration::from_millis(100), window);
    acc.resize("m1").unwrap();
    let slow = saturate(&acc, DType::F32, Duration::from_millis(50), window);
    assert_within(fast, 3.0 * M1, 0.05, "m3 before resize");
    assert_within(slow, M1, 0.05, "m1 after resize");
}
