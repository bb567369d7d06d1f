//! The op conformance suite, written once and run against every backend.
//!
//! `backend_suite!(make_backend)` expands to one `#[test]` per suite function for the backend
//! built by `make_backend` (candle's `test_device!` pattern). Every check compares against the
//! float64 reference (`reference.rs`) on fresh random inputs rounded to the tested dtype, writes
//! into outputs poisoned with NaN first, and bounds the relative error ‖out − ref‖ / ‖ref‖ by
//! 1e-5 (F32) or 1e-3 (F16). The random seed is printed so a failure can be replayed with
//! `EIA_TEST_SEED=<seed>`.

#![allow(dead_code)]

pub mod reference;
pub mod serve;
pub mod suite;
pub mod suite_binary;
pub mod suite_layout;
pub mod suite_lrn;
pub mod suite_pool;
pub mod suite_unary;

use eia::{Backend, DType, HostTensor, Tensor};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Relative error bound per dtype.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 1e-3,
    }
}

/// The smallest normal value of `dtype`. Below it a stored value has a fixed spacing (2^−24 in
/// FP16) rather than a relative one, so [`assert_close_scaled`] measures such elements against
/// this size: an FP16 product of two small inputs (0.0039 × 0.0077, say) is rounded to a
/// subnormal with a relative error up to 2^−11 / its size, not 2^−11.
pub fn smallest_normal(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => f32::MIN_POSITIVE as f64,
        DType::F16 => half::f16::MIN_POSITIVE.to_f64(),
    }
}

/// A seeded generator: fresh each run unless `EIA_TEST_SEED` is set; the seed is printed.
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("EIA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    println!("{test}: EIA_TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// A host tensor of `dtype` with uniform values in `[lo, hi)` (never all zero), rounded to
/// `dtype`.
pub fn random(rng: &mut StdRng, dtype: DType, shape: &[usize], lo: f32, hi: f32) -> HostTensor {
    let len: usize = shape.iter().product();
    let values: Vec<f32> = (0..len).map(|_| rng.random_range(lo..hi)).collect();
    HostTensor::from_f32(dtype, shape, &values).unwrap()
}

/// The tensor's values widened to f64 (what the reference sees: the rounded inputs).
pub fn f64s(t: &HostTensor) -> Vec<f64> {
    t.data().to_f64_vec()
}

/// A device tensor of `dtype` and `shape` filled with NaN.
pub fn poisoned<B: Backend>(backend: &B, dtype: DType, shape: &[usize]) -> Tensor<B::Storage> {
    backend
        .upload(&HostTensor::full(dtype, shape, f32::NAN).unwrap())
        .unwrap()
}

/// The magnitudes of `t`'s elements (the terms of an error bound, for [`assert_close_scaled`]).
pub fn abs(t: &HostTensor) -> Vec<f64> {
    f64s(t).iter().map(|v| v.abs()).collect()
}

/// Asserts `got` (downloaded) matches `want` within the dtype's relative error bound; NaN in
/// `got` fails unless `want` has NaN in the same place.
pub fn assert_close(what: &str, got: &HostTensor, want: &[f64], want_shape: &[usize]) {
    assert_close_scaled(what, got, want, want, want_shape)
}

/// Like [`assert_close`], but the error is relative to ‖scale‖ — for sums whose terms cancel,
/// `scale` is the same computation on absolute values (the standard backward error bound), so a
/// result near zero made of large terms is judged by the size of the terms. A nonzero scale
/// below the dtype's smallest normal counts as that ([`smallest_normal`]): the output cannot be
/// stored more precisely there.
pub fn assert_close_scaled(
    what: &str,
    got: &HostTensor,
    want: &[f64],
    scale: &[f64],
    want_shape: &[usize],
) {
    assert_eq!(got.shape(), want_shape, "{what}: output shape");
    let (tol, floor) = (tolerance(got.dtype()), smallest_normal(got.dtype()));
    let got = got.data().to_f64_vec();
    assert_eq!(got.len(), want.len(), "{what}: output length");
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (i, ((&g, &w), &sc)) in got.iter().zip(want).zip(scale).enumerate() {
        if w.is_nan() {
            assert!(
                g.is_nan(),
                "{what}: element {i} is {g}, the reference is NaN"
            );
            continue;
        }
        assert!(
            !g.is_nan(),
            "{what}: element {i} is NaN (unwritten or invalid), reference {w}"
        );
        if w.is_infinite() || g.is_infinite() {
            assert_eq!(g, w, "{what}: element {i}");
            continue;
        }
        let sc = if sc == 0.0 { 0.0 } else { sc.abs().max(floor) };
        diff += (g - w) * (g - w);
        norm += sc * sc;
    }
    let rel = if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    };
    assert!(
        rel <= tol,
        "{what}: relative error {rel:.3e} exceeds {tol:e}"
    );
}

/// The text `GET /metrics` answers at `addr` (headers included; the status must be 200), with
/// a 30 s read timeout (a loaded machine may be slow, a hung endpoint still fails).
pub fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut http = std::net::TcpStream::connect(addr).unwrap();
    http.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// Sends a child SIGTERM.
pub fn sigterm(child: &std::process::Child) {
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

/// Stops an `eia serve` child with SIGTERM (what the kubelet and `kill` send); returns its
/// exit status and its logs (stderr, which must be piped).
pub fn stop(mut serve: std::process::Child) -> (std::process::ExitStatus, String) {
    sigterm(&serve);
    let status = serve.wait().unwrap();
    (status, logs(&mut serve))
}

/// The logs (stderr, which must be piped) of an `eia serve` child that has exited.
pub fn logs(serve: &mut std::process::Child) -> String {
    use std::io::Read;
    let mut logs = String::new();
    serve
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    logs
}

/// Runs the suite for one backend.
#[macro_export]
macro_rules! backend_suite {
    ($make:expr) => {
        $crate::backend_suite!(@tests $make;
            gemm_matches_reference,
            gemm_allocating_form,
            matmul_batched_broadcast,
            conv_matches_reference,
            conv_resnet_shapes,
            conv_programs_match_reference,
            batch_norm_matches_reference,
            softmax_every_axis,
            softmax_extremes,
            empty_tensors,
            errors_gemm_matmul,
            errors_arity,
            errors_conv,
            errors_batch_norm_softmax,
            errors_leave_output_untouched,
            unary_matches_reference,
            unary_extremes,
            unary_errors,
            binary_broadcast_kinds,
            sum_n_inputs,
            binary_special_values,
            errors_binary,
            max_pool_matches_reference,
            max_pool_nan_never_wins,
            average_pool_matches_reference,
            average_pool_count_include_pad_known_answer,
            global_pools_match_reference,
            pool_empty_tensors,
            errors_pool,
            layout_transpose_every_perm,
            layout_concat_every_axis,
            layout_reshapes,
            errors_layout,
            lrn_matches_reference,
            lrn_mixed_magnitudes,
            lrn_far_magnitudes,
            lrn_extreme_bases,
            lrn_squares_beyond_f32,
            lrn_empty_tensors,
            errors_lrn,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let backend = $make;
                common::suite::$name(&backend);
            }
        )*
    };
}
