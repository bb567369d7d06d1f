//! The op conformance suite on the CUDA backend, on a bare device handle and on a metered
//! virtual accelerator (its own stream). Without a CUDA driver or GPU every test prints why it is
//! skipped and passes; with `EIA_REQUIRE_GPU=1` (set on the GPU machine) a missing GPU fails
//! them instead, so a GPU run cannot silently test nothing.

mod common;

use eia::accelerator::{Device, DeviceConfig};
use eia::backend::CudaBackend;
use eia::Error;

/// The first CUDA device, or `None` (after printing why) where there is none and none is
/// required.
fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) if std::env::var_os("EIA_REQUIRE_GPU").is_none() => {
            println!("skipped: {e}");
            None
        }
        Err(e) => panic!("EIA_REQUIRE_GPU is set but the CUDA backend is unavailable: {e}"),
    }
}

backend_suite!(match gpu() {
    Some(b) => b,
    None => return,
});

mod accelerator {
    use super::*;
    use crate::backend_suite;

    // An accelerator big enough that the meter never waits: the suite checks that kernels run
    // on the accelerator's own stream and that results come back through it.
    backend_suite!(match gpu() {
        Some(b) => Device::new(
            b,
            DeviceConfig {
                overcommit: true,
                ..DeviceConfig::default()
            }
        )
        .unwrap()
        .attach("eia2.xlarge")
        .unwrap(),
        None => return,
    });
}

#[test]
fn unavailable_device_is_a_readable_error() {
    let err = match CudaBackend::new(1 << 20) {
        Ok(_) => panic!("device 1048576 cannot exist"),
        Err(e) => e,
    };
    let Error::Backend { backend, msg } = &err else {
        panic!("expected a Backend error, got {err:?}");
    };
    assert_eq!(*backend, "cuda");
    assert!(
        msg.contains("no CUDA driver") || msg.contains("no CUDA device"),
        "unexpected message: {msg}"
    );
    println!("{err}");
}

#[test]
fn device_reports_its_name_and_capability() {
    let Some(gpu) = gpu() else { return };
    let arch = gpu.arch();
    assert!(arch.major >= 8, "{arch}");
    println!("{} on {}", eia::Backend::name(&gpu), gpu.device_name());
    assert!(eia::Backend::total_memory(&gpu).unwrap() > 0);
}
