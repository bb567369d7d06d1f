//! Launches for `kernels/gemm.cu` (stub: to be written).

use super::{Arch, Launch, Ptr};
use crate::ops::GemmPlan;

/// Mirrors the C params struct of `kernels/gemm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GemmParams {}

pub fn gemm(plan: &GemmPlan, arch: Arch, a: Ptr, b: Ptr, c: Option<Ptr>, y: Ptr) -> Vec<Launch> {
    let _ = (plan, arch);
    todo!()
}
