//! The CPU backend's cache of forms derived from a tensor (FP16 weights widened once, a
//! convolution's weights packed for the direct kernel or transformed for the Winograd one; see
//! `src/backend/cpu/derived.rs`): results through the cache match the float64 reference on every
//! run; uploaded weights are cached from their first read; a write to the weights —
//! through `write`, or as an op's output — invalidates it;
//! its memory is charged before it is built and returned when the tensor is dropped; through an
//! accelerator it counts against the memory quota, and a cache that would not fit is not built
//! (the op still computes, from the uncached weights); concurrent ops build it once.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{assert_close, f64s, poisoned, random, reference, rng};
use eia::accelerator::{Device, DeviceConfig, Tier};
use eia::backend::cpu::CpuData;
use eia::backend::MemoryAccount;
use eia::ops::{Conv, Gemm};
use eia::{Backend, CpuBackend, DType, HostTensor, PerDType, Tensor};
use rand::rngs::StdRng;

/// A memory account with room for `limit` bytes that counts what it holds and how often it
/// was charged.
#[derive(Default)]
struct Counted {
    held: AtomicU64,
    charges: AtomicU64,
    limit: u64,
}

impl Counted {
    fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    fn charges(&self) -> u64 {
        self.charges.load(Ordering::SeqCst)
    }
}

impl MemoryAccount for Counted {
    fn try_charge(&self, bytes: u64) -> bool {
        let ok = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                (h + bytes <= self.limit).then_some(h + bytes)
            })
            .is_ok();
        self.charges.fetch_add(u64::from(ok), Ordering::SeqCst);
        ok
    }

    fn release(&self, bytes: u64) {
        self.held.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// A CPU backend charging its derived forms to a fresh account of `limit` bytes.
fn counted_cpu(limit: u64) -> (CpuBackend, Arc<Counted>) {
    let account = Arc::new(Counted {
        limit,
        ..Counted::default()
    });
    let mut cpu = CpuBackend::new();
    cpu.charge_derived_to(account.clone());
    (cpu, account)
}

fn conv3x3() -> Conv {
    Conv {
        strides: [1, 1],
        pads: [1, 1, 1, 1],
        dilations: [1, 1],
        group: 1,
        auto_pad: Default::default(),
        kernel_shape: None,
        sum: false,
        relu: false,
        clip: None,
    }
}

/// Runs `conv` on `x` and `w` into a poisoned output and checks it against the reference for
/// the host weights `w_host`.
fn check_conv<B: Backend>(
    backend: &B,
    what: &str,
    op: &Conv,
    (x, x_host): (&Tensor<B::Storage>, &HostTensor),
    (w, w_host): (&Tensor<B::Storage>, &HostTensor),
) {
    let (want, shape) = reference::conv(
        op,
        &f64s(x_host),
        x_host.shape(),
        &f64s(w_host),
        w_host.shape(),
        None,
    );
    let mut y = poisoned(backend, x_host.dtype(), &shape);
    backend.conv_into(op, x, w, None, &mut y).unwrap();
    assert_close(what, &backend.download(&y).unwrap(), &want, &shape);
}

/// `y = a · b` (Gemm without C) into a poisoned output, checked against the reference.
fn check_gemm(
    cpu: &CpuBackend,
    what: &str,
    (a, a_host): (&Tensor<CpuData>, &HostTensor),
    (b, b_host): (&Tensor<CpuData>, &HostTensor),
) {
    let (want, shape) = reference::gemm(
        &f64s(a_host),
        a_host.shape(),
        &f64s(b_host),
        b_host.shape(),
        None,
        1.0,
        0.0,
        false,
        false,
        false,
    );
    let mut y = poisoned(cpu, a_host.dtype(), &shape);
    cpu.gemm_into(&Gemm::default(), a, b, None, &mut y).unwrap();
    assert_close(what, &cpu.download(&y).unwrap(), &want, &shape);
}

fn upload(
    cpu: &CpuBackend,
    rng: &mut StdRng,
    dtype: DType,
    shape: &[usize],
) -> (Tensor<CpuData>, HostTensor) {
    let host = random(rng, dtype, shape, -1.0, 1.0);
    (cpu.upload(&host).unwrap(), host)
}

/// FP16 weights of shape `w_shape` (192 output channels: every register tile full) convolved
/// by `op` with an FP16 input of `x_shape`: the FP32 form derived on the first run (widened, or
/// packed for a kernel, as large either way) is reused, dropped with its charge by a write,
/// rebuilt from the written data's second read and returned when the tensor is dropped.
fn fp16_conv_weights_converted_once(name: &str, op: &Conv, x_shape: &[usize], w_shape: &[usize]) {
    let mut rng = rng(name);
    let (cpu, account) = counted_cpu(u64::MAX);
    let (x, xh) = upload(&cpu, &mut rng, DType::F16, x_shape);
    let (mut w, wh) = upload(&cpu, &mut rng, DType::F16, w_shape);
    let widened = 4 * wh.data().len() as u64;
    // Uploaded weights are converted into the cache on their first read, then reused.
    for run in ["first run", "cached run"] {
        check_conv(&cpu, run, op, (&x, &xh), (&w, &wh));
        assert_eq!(w.storage().derived_bytes(), widened, "{run}");
        assert_eq!((account.held(), account.charges()), (widened, 1), "{run}");
    }
    // New weights: the cache is dropped with its charge, and results follow the new values.
    // Written data is cached from its second read, as an op's output is.
    let new = random(&mut rng, DType::F16, wh.shape(), -1.0, 1.0);
    cpu.write(&mut w, &new).unwrap();
    assert_eq!((w.storage().derived_bytes(), account.held()), (0, 0));
    check_conv(&cpu, "after the write", op, (&x, &xh), (&w, &new));
    assert_eq!(
        account.charges(),
        1,
        "not cached on the first read after a write"
    );
    for run in ["after the write, cached again", "cached"] {
        check_conv(&cpu, run, op, (&x, &xh), (&w, &new));
    }
    assert_eq!((account.held(), account.charges()), (widened, 2));
    // The input, read once per run, was never cached.
    assert_eq!(x.storage().derived_bytes(), 0);
    drop(w);
    assert_eq!(
        account.held(),
        0,
        "the cache is returned when the tensor is dropped"
    );
}

#[test]
fn fp16_conv_weights_are_converted_once_and_a_write_invalidates_them() {
    // Packed for the direct kernel with AVX-512, else widened for the GEMM lowering.
    fp16_conv_weights_converted_once(
        "fp16_conv_weights_are_widened_once_and_a_write_invalidates_them",
        &conv3x3(),
        &[1, 16, 9, 9],
        &[192, 16, 3, 3],
    );
}

#[test]
fn fp16_pointwise_weights_are_converted_once_and_a_write_invalidates_them() {
    // Widened for the GEMM lowering (a 16×16 map, 64 input channels: not the direct kernel's).
    fp16_conv_weights_converted_once(
        "fp16_pointwise_weights_are_converted_once_and_a_write_invalidates_them",
        &Conv::default(),
        &[1, 64, 16, 16],
        &[192, 64, 1, 1],
    );
}

#[test]
fn fp16_gemm_b_cached_and_invalidated_as_an_op_output() {
    let mut rng = rng("fp16_gemm_b_cached_and_invalidated_as_an_op_output");
    let (cpu, account) = counted_cpu(u64::MAX);
    // A GEMV (m = 1), a few rows (B widened panel by panel for each call, never cached: faster
    // there than the FP32 kernel on a widened copy), many rows.
    for (m, k, n, cached) in [
        (1, 300, 70, true),
        (24, 96, 130, false),
        (200, 64, 48, true),
    ] {
        let (a, ah) = upload(&cpu, &mut rng, DType::F16, &[m, k]);
        let (mut b, bh) = upload(&cpu, &mut rng, DType::F16, &[k, n]);
        for run in 0..3 {
            check_gemm(
                &cpu,
                &format!("{m}x{k}x{n} run {run}"),
                (&a, &ah),
                (&b, &bh),
            );
        }
        let widened = if cached { 4 * (k * n) as u64 } else { 0 };
        assert_eq!(b.storage().derived_bytes(), widened);
        // B as the output of another op (a k×n GEMM) gets new values and loses its cache.
        let (p, ph) = upload(&cpu, &mut rng, DType::F16, &[k, 8]);
        let (q, qh) = upload(&cpu, &mut rng, DType::F16, &[8, n]);
        cpu.gemm_into(&Gemm::default(), &p, &q, None, &mut b)
            .unwrap();
        assert_eq!(b.storage().derived_bytes(), 0);
        let written = cpu.download(&b).unwrap();
        assert_ne!(written, bh);
        let (want, _) = reference::gemm(
            &f64s(&ph),
            ph.shape(),
            &f64s(&qh),
            qh.shape(),
            None,
            1.0,
            0.0,
            false,
            false,
            false,
        );
        assert_close("B written by an op", &written, &want, bh.shape());
        for run in 0..3 {
            let what = format!("{m}x{k}x{n} after B was an output, run {run}");
            check_gemm(&cpu, &what, (&a, &ah), (&b, &written));
        }
    }
    assert_eq!(account.held(), 0, "every B was dropped");
    // Two per cached B (uploaded, then written by the op), and the uploaded Q of the 300-row
    // GEMM: read once, but uploaded data is cached from its first read.
    assert_eq!(account.charges(), 5);
}

#[test]
fn fp32_weights_of_a_lowered_conv_derive_nothing() {
    let mut rng = rng("fp32_weights_of_a_lowered_conv_derive_nothing");
    let (cpu, account) = counted_cpu(u64::MAX);
    // A pointwise convolution with few input channels is a GEMM on the weights as they are
    // (strided 1×1 convolutions run on the direct kernel with AVX-512, which packs them).
    let op = Conv::default();
    let (x, xh) = upload(&cpu, &mut rng, DType::F32, &[1, 4, 6, 6]);
    let (w, wh) = upload(&cpu, &mut rng, DType::F32, &[5, 4, 1, 1]);
    for run in ["first", "second", "third"] {
        check_conv(&cpu, run, &op, (&x, &xh), (&w, &wh));
    }
    assert_eq!((w.storage().derived_bytes(), account.charges()), (0, 0));
}

/// FP32 3×3 weights `[192, 16, 3, 3]` (192 output channels fill every register tile) convolved
/// with an input of `x_shape`: the form derived on the first run is `avx512_bytes` with AVX-512
/// (none with the narrower instruction sets, whose GEMM lowering reads FP32 weights as they are),
/// reused, dropped with its charge by a write, rebuilt and returned when the tensor is dropped.
fn fp32_3x3_weights_derived_once(name: &str, x_shape: &[usize], avx512_bytes: u64) {
    let mut rng = rng(name);
    let (cpu, account) = counted_cpu(u64::MAX);
    let op = conv3x3();
    let (x, xh) = upload(&cpu, &mut rng, DType::F32, x_shape);
    let (mut w, wh) = upload(&cpu, &mut rng, DType::F32, &[192, 16, 3, 3]);
    let derived = if cpu.simd() == "avx512" {
        avx512_bytes
    } else {
        0
    };
    for run in ["first run", "cached run"] {
        check_conv(&cpu, run, &op, (&x, &xh), (&w, &wh));
        assert_eq!(w.storage().derived_bytes(), derived, "{run}");
        assert_eq!(account.held(), derived, "{run}");
    }
    let new = random(&mut rng, DType::F32, wh.shape(), -1.0, 1.0);
    cpu.write(&mut w, &new).unwrap();
    assert_eq!((w.storage().derived_bytes(), account.held()), (0, 0));
    for run in ["after the write", "after the write, cached again", "cached"] {
        check_conv(&cpu, run, &op, (&x, &xh), (&w, &new));
    }
    assert_eq!(account.held(), derived);
    drop(w);
    assert_eq!(account.held(), 0);
}

#[test]
fn fp32_3x3_weights_are_packed_once_for_the_direct_kernel_and_a_write_invalidates_them() {
    // A 9×9 map (rows of 5 tiles: too narrow for the Winograd kernel): the direct kernel's
    // packed form, as large as the weights.
    fp32_3x3_weights_derived_once(
        "fp32_3x3_weights_are_packed_once_for_the_direct_kernel",
        &[2, 16, 9, 9],
        4 * 192 * 16 * 9,
    );
}

#[test]
fn fp32_3x3_weights_are_transformed_once_for_the_winograd_kernel_and_a_write_invalidates_them() {
    // Two 16×16 maps (128 tiles of 2×2 outputs, rows of 8): the Winograd kernel's transformed
    // form, 16 values per 3×3 filter.
    fp32_3x3_weights_derived_once(
        "fp32_3x3_weights_are_transformed_once_for_the_winograd_kernel",
        &[2, 16, 16, 16],
        4 * 192 * 16 * 16,
    );
}

#[test]
fn a_cache_over_the_accounts_limit_is_not_built() {
    let mut rng = rng("a_cache_over_the_accounts_limit_is_not_built");
    let op = conv3x3();
    // Room for the first weights' cache (192·16·9·4 bytes), not for the second's too.
    let (cpu, account) = counted_cpu(192 * 16 * 9 * 4 + 100);
    let (x, xh) = upload(&cpu, &mut rng, DType::F16, &[1, 16, 5, 5]);
    let (w1, w1h) = upload(&cpu, &mut rng, DType::F16, &[192, 16, 3, 3]);
    let (w2, w2h) = upload(&cpu, &mut rng, DType::F16, &[192, 16, 3, 3]);
    for run in 0..3 {
        check_conv(&cpu, &format!("w1 run {run}"), &op, (&x, &xh), (&w1, &w1h));
        check_conv(&cpu, &format!("w2 run {run}"), &op, (&x, &xh), (&w2, &w2h));
    }
    assert_eq!(w1.storage().derived_bytes(), 192 * 16 * 9 * 4);
    assert_eq!(
        w2.storage().derived_bytes(),
        0,
        "over the limit: computed uncached"
    );
    drop(w1);
    assert_eq!(account.held(), 0);
    // With room again, the second weights are cached on their next use.
    check_conv(&cpu, "w2 with room", &op, (&x, &xh), (&w2, &w2h));
    assert_eq!(w2.storage().derived_bytes(), 192 * 16 * 9 * 4);
}

#[test]
fn concurrent_ops_on_the_same_weights_build_them_once() {
    let mut rng = rng("concurrent_ops_on_the_same_weights_build_them_once");
    let (cpu, account) = counted_cpu(u64::MAX);
    let op = conv3x3();
    let (x, xh) = upload(&cpu, &mut rng, DType::F16, &[1, 32, 8, 8]);
    let (w, wh) = upload(&cpu, &mut rng, DType::F16, &[192, 32, 3, 3]);
    // Uploaded, so the first read builds the cache: every thread below may be the one.
    std::thread::scope(|s| {
        for t in 0..6 {
            let (cpu, op, x, xh, w, wh) = (&cpu, &op, &x, &xh, &w, &wh);
            s.spawn(move || {
                for run in 0..5 {
                    let what = format!("thread {t} run {run}");
                    check_conv(cpu, &what, op, (x, xh), (w, wh));
                }
            });
        }
    });
    assert_eq!(account.charges(), 1, "built once");
    assert_eq!(account.held(), 4 * 192 * 32 * 9);
}

/// A device whose accelerators are never held back by the meter, with a tier of `memory` bytes.
fn accelerator(memory: u64) -> eia::Accelerator<CpuBackend> {
    let device = Device::new(
        CpuBackend::new(),
        DeviceConfig {
            overcommit: true,
            ..Default::default()
        },
    )
    .unwrap();
    let tier = Tier::new("cache-test", PerDType::new(1000.0, 1000.0), memory).unwrap();
    device.attach_tier(tier).unwrap()
}

#[test]
fn through_an_accelerator_the_cache_counts_against_the_quota() {
    let mut rng = rng("through_an_accelerator_the_cache_counts_against_the_quota");
    let op = conv3x3();
    let (xs, ws) = ([1, 16, 6, 6], [192, 16, 3, 3]);
    let (tensors, widened) = (
        2 * (16 * 36 + 192 * 16 * 9 + 192 * 36) as u64,
        4 * 192 * 16 * 9,
    );
    let acc = accelerator(1 << 20);
    let xh = random(&mut rng, DType::F16, &xs, -1.0, 1.0);
    let wh = random(&mut rng, DType::F16, &ws, -1.0, 1.0);
    let (x, mut w) = (acc.upload(&xh).unwrap(), acc.upload(&wh).unwrap());
    let mut y = acc
        .alloc(&eia::TensorDesc::new(DType::F16, &[1, 192, 6, 6]).unwrap())
        .unwrap();
    let before = acc.usage().memory_used;
    assert_eq!(before, tensors);
    for run in 0..3 {
        check_conv(&acc, &format!("run {run}"), &op, (&x, &xh), (&w, &wh));
        acc.conv_into(&op, &x, &w, None, &mut y).unwrap();
    }
    let usage = acc.usage();
    assert_eq!(usage.memory_used, tensors + widened, "the cache is charged");
    assert!(usage.memory_high_water >= tensors + widened);
    // A write drops the cache and its charge; the next runs use the new weights.
    let new = random(&mut rng, DType::F16, &ws, -1.0, 1.0);
    acc.write(&mut w, &new).unwrap();
    assert_eq!(acc.usage().memory_used, tensors);
    for run in 0..2 {
        check_conv(
            &acc,
            &format!("new weights run {run}"),
            &op,
            (&x, &xh),
            (&w, &new),
        );
    }
    assert_eq!(acc.usage().memory_used, tensors + widened);
    drop(w);
    assert_eq!(
        acc.usage().memory_used,
        tensors - 2 * 192 * 16 * 9,
        "returned on drop"
    );
}

#[test]
fn through_an_accelerator_a_cache_beyond_the_quota_is_not_built() {
    let mut rng = rng("through_an_accelerator_a_cache_beyond_the_quota_is_not_built");
    let op = conv3x3();
    let (xs, ws) = ([1, 16, 6, 6], [192, 16, 3, 3]);
    let tensors = 2 * (16 * 36 + 192 * 16 * 9) as u64;
    // Room for the tensors (and each run's output), not for the 108 KiB of widened weights.
    let acc = accelerator(tensors + 2 * 192 * 36 + 1024);
    let xh = random(&mut rng, DType::F16, &xs, -1.0, 1.0);
    let wh = random(&mut rng, DType::F16, &ws, -1.0, 1.0);
    let (x, w) = (acc.upload(&xh).unwrap(), acc.upload(&wh).unwrap());
    for run in 0..3 {
        check_conv(&acc, &format!("run {run}"), &op, (&x, &xh), (&w, &wh));
        assert_eq!(
            acc.usage().memory_used,
            tensors,
            "run {run}: nothing cached"
        );
    }
}

#[test]
fn through_an_accelerator_a_cache_yields_to_new_tensors() {
    let mut rng = rng("through_an_accelerator_a_cache_yields_to_new_tensors");
    let op = conv3x3();
    let (xs, ws) = ([1, 16, 6, 6], [192, 16, 3, 3]);
    let (tensors, output, widened) = (2 * (16 * 36 + 192 * 16 * 9), 2 * 192 * 36, 4 * 192 * 16 * 9);
    let acc = accelerator(tensors + output + widened + 1000);
    let xh = random(&mut rng, DType::F16, &xs, -1.0, 1.0);
    let wh = random(&mut rng, DType::F16, &ws, -1.0, 1.0);
    let (x, w) = (acc.upload(&xh).unwrap(), acc.upload(&wh).unwrap());
    for run in 0..3 {
        check_conv(&acc, &format!("run {run}"), &op, (&x, &xh), (&w, &wh));
    }
    assert_eq!(acc.usage().memory_used, tensors + widened);
    // 20,000 bytes fit only without the cache: it is dropped to make room, not the upload refused.
    let big = acc
        .upload(&HostTensor::full(DType::F32, &[5000], 1.0).unwrap())
        .unwrap();
    assert_eq!(acc.usage().memory_used, tensors + 20_000);
    for run in 0..2 {
        check_conv(
            &acc,
            &format!("beside the upload, run {run}"),
            &op,
            (&x, &xh),
            (&w, &wh),
        );
        assert_eq!(
            acc.usage().memory_used,
            tensors + 20_000,
            "no room to cache again"
        );
    }
    drop(big);
    check_conv(&acc, "room again", &op, (&x, &xh), (&w, &wh));
    assert_eq!(acc.usage().memory_used, tensors + widened, "cached again");
}
