//! Launches for `kernels/conv.cu` (stub: to be written).

use super::{Arch, Launch, Ptr};
use crate::ops::ConvPlan;

/// Mirrors the C params struct of `kernels/conv.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConvParams {}

pub fn conv(plan: &ConvPlan, arch: Arch, x: Ptr, w: Ptr, bias: Option<Ptr>, y: Ptr) -> Vec<Launch> {
    let _ = (plan, arch);
    todo!()
}
