//! Launches for `kernels/softmax.cu` (stub: to be written).

use super::{Arch, Launch, Ptr};
use crate::ops::SoftmaxPlan;

/// Mirrors the C params struct of `kernels/softmax.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxParams {}

pub fn softmax(plan: &SoftmaxPlan, arch: Arch, x: Ptr, y: Ptr) -> Vec<Launch> {
    let _ = (plan, arch);
    todo!()
}
