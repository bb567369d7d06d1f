//! Launch planning: from a validated op plan to the kernel launches that compute it — which
//! kernel of which PTX family, its grid and block, and its one params struct (the kernel ABI of
//! `kernels/README.md`). Pure Rust with no CUDA call, so the CUDA backend and the CPU emulator
//! of the kernels (`EmuBackend`, feature `emu`) execute the very same launches ([`launches`]:
//! one dispatch from an op's plan to its family's planner).

pub mod batchnorm;
pub mod binary;
pub mod conv;
#[cfg(all(test, feature = "emu"))]
mod emu_harness;
pub mod gemm;
pub mod layout;
pub mod lrn;
pub mod pool;
pub mod softmax;
pub mod unary;

use std::ffi::c_void;

use crate::dtype::DType;
use crate::error::Result;
use crate::ops::{FamilyPlan, Plan};

/// A device address (a `CUdeviceptr` on the GPU, a host address in the emulator).
pub type Ptr = u64;

/// A compute capability, e.g. 9.0 for the H100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
}

impl Arch {
    /// The baseline every kernel family has PTX for.
    pub const SM80: Arch = Arch { major: 8, minor: 0 };

    /// Hopper (sm_90a: wgmma, TMA) variants apply.
    pub fn is_hopper(self) -> bool {
        self.major == 9 && self.minor == 0
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sm_{}{}", self.major, self.minor)
    }
}

/// One `kernels/<family>.cu` file and the PTX generated from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Gemm,
    Conv,
    BatchNorm,
    Softmax,
    Unary,
    Binary,
    Pool,
    Layout,
    Lrn,
}

impl Family {
    pub const ALL: &[Family] = &[
        Family::Gemm,
        Family::Conv,
        Family::BatchNorm,
        Family::Softmax,
        Family::Unary,
        Family::Binary,
        Family::Pool,
        Family::Layout,
        Family::Lrn,
    ];

    /// The PTX targets this family ships (sm_80 always; sm_90a where it has Hopper kernels).
    pub fn targets(self) -> &'static [Target] {
        &[Target::Sm80]
    }

    /// The file stem: `kernels/<name>.cu`, `kernels/ptx/<name>.<target>.ptx`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Gemm => "gemm",
            Family::Conv => "conv",
            Family::BatchNorm => "batchnorm",
            Family::Softmax => "softmax",
            Family::Unary => "unary",
            Family::Binary => "binary",
            Family::Pool => "pool",
            Family::Layout => "layout",
            Family::Lrn => "lrn",
        }
    }
}

/// Which PTX file of a family a kernel lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// `compute_80` PTX: every GPU of compute capability 8.0 or newer.
    Sm80,
    /// `compute_90a` PTX: Hopper-only instructions.
    Sm90a,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::Sm80, Target::Sm90a];

    /// The file suffix and NVRTC architecture name.
    pub fn name(self) -> &'static str {
        match self {
            Target::Sm80 => "sm_80",
            Target::Sm90a => "sm_90a",
        }
    }
}

/// The params struct of one launch (each mirrors the C struct its kernel takes).
#[derive(Clone, Copy, Debug)]
#[allow(clippy::large_enum_variant)] // binary's 3.6 KiB: launches are few and short-lived
pub enum KernelArgs {
    Gemm(gemm::GemmParams),
    Conv(conv::ConvParams),
    BatchNorm(batchnorm::BatchNormParams),
    Softmax(softmax::SoftmaxParams),
    Unary(unary::UnaryParams),
    Binary(binary::BinaryParams),
    Pool(pool::PoolParams),
    Layout(layout::LayoutParams),
    Lrn(lrn::LrnParams),
}

impl KernelArgs {
    /// The address of the params struct, as `cuLaunchKernel`'s single kernel parameter (and the
    /// emulator's) expects it.
    pub fn as_ptr(&self) -> *const c_void {
        match self {
            KernelArgs::Gemm(p) => p as *const _ as *const c_void,
            KernelArgs::Conv(p) => p as *const _ as *const c_void,
            KernelArgs::BatchNorm(p) => p as *const _ as *const c_void,
            KernelArgs::Softmax(p) => p as *const _ as *const c_void,
            KernelArgs::Unary(p) => p as *const _ as *const c_void,
            KernelArgs::Binary(p) => p as *const _ as *const c_void,
            KernelArgs::Pool(p) => p as *const _ as *const c_void,
            KernelArgs::Layout(p) => p as *const _ as *const c_void,
            KernelArgs::Lrn(p) => p as *const _ as *const c_void,
        }
    }
}

/// One kernel launch.
#[derive(Clone, Debug)]
pub struct Launch {
    pub family: Family,
    pub target: Target,
    /// `<family>_<variant>_<dtype>`, the `extern "C"` name in the PTX.
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub args: KernelArgs,
}

/// The launches that compute `plan` from the operands at `x` (in the op's order; 0 for an
/// empty tensor) into the output at `y`.
pub fn launches(plan: &Plan, arch: Arch, x: &[Ptr], y: Ptr) -> Result<Vec<Launch>> {
    match &plan.family {
        FamilyPlan::Gemm(p) => gemm::gemm(p, arch, x[0], x[1], x.get(2).copied(), y),
        FamilyPlan::Conv(p) => conv::conv(p, arch, x, y),
        FamilyPlan::BatchNorm(p) => Ok(batchnorm::batch_norm(
            p,
            arch,
            x[0],
            [x[1], x[2], x[3], x[4]],
            y,
        )),
        FamilyPlan::Softmax(p) => Ok(softmax::softmax(p, arch, x[0], y)),
        FamilyPlan::Unary(p) => Ok(unary::unary(p, arch, x[0], y)),
        FamilyPlan::Binary(p) => Ok(binary::binary(p, arch, x, y)),
        FamilyPlan::Pool(p) => Ok(pool::pool(p, arch, x[0], y)),
        FamilyPlan::Layout(p) => Ok(layout::layout(p, arch, x, y)),
        FamilyPlan::Lrn(p) => Ok(lrn::lrn(p, arch, x[0], y)),
    }
}

/// The kernel-name suffix of a dtype.
pub fn dtype_suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
    }
}

/// `ceil(a / b)` as a grid dimension.
pub fn blocks(a: usize, b: usize) -> u32 {
    a.div_ceil(b) as u32
}

/// The value of `#define NAME <integer>` in a kernel source (tests check that a planner's
/// constants are the ones its kernels were compiled with).
#[cfg(test)]
pub(crate) fn c_define(src: &str, file: &str, name: &str) -> usize {
    src.lines()
        .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("{file} has no #define {name}"))
        .parse()
        .unwrap_or_else(|e| panic!("{file}: #define {name}: {e}"))
}
