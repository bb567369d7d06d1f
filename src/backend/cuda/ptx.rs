//! The PTX shipped in the crate: `kernels/ptx/<family>.<target>.ptx`, generated from
//! `kernels/<family>.cu` by NVRTC 12.4 (`scripts/ptx`, the `eia-ptx` tool) and committed. PTX
//! ISA 8.4 loads on every driver of CUDA 12.4 or newer. Families without a Hopper (sm_90a)
//! variant have `None` there and run their sm_80 kernels on Hopper too.

use super::launch::{Family, Target};

macro_rules! ptx {
    ($family:literal, $target:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/kernels/ptx/",
            $family,
            ".",
            $target,
            ".ptx"
        ))
    };
}

/// The embedded PTX of one family and target, if this build ships it.
pub fn source(family: Family, target: Target) -> Option<&'static str> {
    match (family, target) {
        (Family::Gemm, Target::Sm80) => Some(ptx!("gemm", "sm_80")),
        (Family::Conv, Target::Sm80) => Some(ptx!("conv", "sm_80")),
        (Family::BatchNorm, Target::Sm80) => Some(ptx!("batchnorm", "sm_80")),
        (Family::Softmax, Target::Sm80) => Some(ptx!("softmax", "sm_80")),
        (Family::Unary, Target::Sm80) => Some(ptx!("unary", "sm_80")),
        (Family::Binary, Target::Sm80) => Some(ptx!("binary", "sm_80")),
        (Family::Pool, Target::Sm80) => Some(ptx!("pool", "sm_80")),
        (Family::Layout, Target::Sm80) => Some(ptx!("layout", "sm_80")),
        (Family::Lrn, Target::Sm80) => Some(ptx!("lrn", "sm_80")),
        (_, Target::Sm90a) => None,
    }
}
