//! Launches for `kernels/pool.cu`: MaxPool / AveragePool take `pool_window_*` (a thread per
//! output element), the global pools `pool_global_*` (a warp per `(n, c)` plane).

use super::{blocks, dtype_suffix, Arch, Family, KernelArgs, Launch, Ptr, Target};
use crate::ops::{PoolKind, PoolPlan};

/// `POOL_THREADS`: threads of a block (both kernels).
pub const THREADS: u32 = 256;
/// Largest grid x dimension (the kernels grid-stride beyond it).
const MAX_GRID_X: usize = i32::MAX as usize;

/// Mirrors `struct PoolParams` of `kernels/pool.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PoolParams {
    pub x: Ptr,
    pub y: Ptr,
    /// `n·c`.
    pub planes: i64,
    pub h: i32,
    pub w: i32,
    pub p: i32,
    pub q: i32,
    pub r: i32,
    pub s: i32,
    pub stride_h: i32,
    pub stride_w: i32,
    pub dil_h: i32,
    pub dil_w: i32,
    pub pad_h: i32,
    pub pad_w: i32,
    pub padded_h: i32,
    pub padded_w: i32,
    /// 0: max, 1: average, 2: average counting padding.
    pub kind: i32,
    pub reserved: i32,
}

/// The launch computing `plan` (none for an empty tensor). Every dimension of the plan is at
/// most `MAX_DIM` (`i32::MAX`), so each fits its `int` field.
pub fn pool(plan: &PoolPlan, arch: Arch, x: Ptr, y: Ptr) -> Vec<Launch> {
    let _ = arch; // one sm_80 kernel set serves every architecture
    let planes = plan.planes();
    let total = planes * plan.p * plan.q;
    if total == 0 {
        return Vec::new();
    }
    let i = |v: usize| v as i32;
    let args = PoolParams {
        x,
        y,
        planes: planes as i64,
        h: i(plan.h),
        w: i(plan.w),
        p: i(plan.p),
        q: i(plan.q),
        r: i(plan.r),
        s: i(plan.s),
        stride_h: i(plan.stride[0]),
        stride_w: i(plan.stride[1]),
        dil_h: i(plan.dilation[0]),
        dil_w: i(plan.dilation[1]),
        pad_h: i(plan.pad[0]),
        pad_w: i(plan.pad[1]),
        padded_h: i(plan.padded[0]),
        padded_w: i(plan.padded[1]),
        kind: match plan.kind {
            PoolKind::Max => 0,
            PoolKind::Average => 1,
            PoolKind::AverageIncludePad => 2,
        },
        reserved: 0,
    };
    let (variant, grid) = if plan.global {
        ("global", blocks(planes, THREADS as usize / 32))
    } else {
        ("window", blocks(total.min(MAX_GRID_X), THREADS as usize))
    };
    vec![Launch {
        family: Family::Pool,
        target: Target::Sm80,
        kernel: format!("pool_{variant}_{}", dtype_suffix(plan.dtype)),
        grid: [grid.min(MAX_GRID_X as u32), 1, 1],
        block: [THREADS, 1, 1],
        args: KernelArgs::Pool(args),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::ops::{MaxPool, Op};
    use crate::tensor::TensorDesc;

    #[test]
    fn params_match_the_c_layout() {
        assert_eq!(std::mem::size_of::<PoolParams>(), 88);
        assert_eq!(std::mem::offset_of!(PoolParams, h), 24);
        assert_eq!(std::mem::offset_of!(PoolParams, kind), 80);
    }

    /// The constants here are the `#define`s of kernels/pool.cu, and every kernel named here
    /// is defined there.
    #[test]
    fn constants_match_the_kernel_source() {
        let src = include_str!("../../../../kernels/pool.cu");
        let define = |name: &str| crate::backend::cuda::launch::c_define(src, "pool.cu", name);
        assert_eq!(define("POOL_THREADS"), THREADS as usize);
        for variant in ["window", "global"] {
            for dtype in DType::ALL {
                let name = format!("(pool_{variant}_{},", dtype_suffix(dtype));
                assert!(src.contains(&name), "{name}");
            }
        }
    }

    #[test]
    fn kernels_and_grids() {
        let x = TensorDesc::new(DType::F16, &[2, 64, 112, 112]).unwrap();
        let m = Op::MaxPool(MaxPool {
            kernel_shape: [3, 3],
            strides: [2, 2],
            pads: [1; 4],
            ..MaxPool::default()
        });
        let crate::ops::FamilyPlan::Pool(p) = m.plan(&[&x]).unwrap().family else {
            panic!()
        };
        let l = &pool(&p, Arch::SM80, 0, 0)[0];
        assert_eq!(l.kernel, "pool_window_f16");
        assert_eq!(l.grid[0] as usize, (2 * 64 * 56 * 56usize).div_ceil(256));
        let g = Op::GlobalAveragePool.plan(&[&x]).unwrap();
        let crate::ops::FamilyPlan::Pool(p) = g.family else {
            panic!()
        };
        let l = &pool(&p, Arch::SM80, 0, 0)[0];
        assert_eq!((l.kernel.as_str(), l.grid[0]), ("pool_global_f16", 16));
        let empty = TensorDesc::new(DType::F32, &[0, 3, 4, 4]).unwrap();
        let g = Op::GlobalMaxPool.plan(&[&empty]).unwrap();
        let crate::ops::FamilyPlan::Pool(p) = g.family else {
            panic!()
        };
        assert!(pool(&p, Arch::SM80, 0, 0).is_empty());
    }
}

/// The kernels on the CPU emulator with their grids cut to one block, so that the grid-stride
/// loops (over output elements, and over planes for the warps of the global kernel) cover
/// everything; checked bit for bit against the full grid's result.
#[cfg(all(test, feature = "emu"))]
mod emu_tests {
    use super::super::emu_harness::{run as launch, Placed};
    use super::*;
    use crate::backend::EmuBackend;
    use crate::dtype::DType;
    use crate::ops::{AveragePool, FamilyPlan, MaxPool, Op};
    use crate::tensor::TensorDesc;

    fn run(op: &Op, dtype: DType, shape: &[usize], grid: Option<[u32; 3]>) -> Vec<f64> {
        let emu = EmuBackend::new();
        let desc = TensorDesc::new(dtype, shape).unwrap();
        let plan = op.plan(&[&desc]).unwrap();
        let FamilyPlan::Pool(p) = &plan.family else {
            panic!("not a pool plan")
        };
        let values: Vec<f32> = (0..desc.len())
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let x = Placed::upload(&emu, dtype, &values, 0);
        let y = Placed::poisoned(&emu, dtype, plan.output().len(), 0);
        launch(
            &emu,
            pool(p, Arch::SM80, x.addr(), y.addr()),
            grid,
            &[&x, &y],
        );
        y.download(&emu)
    }

    #[test]
    fn grid_stride_loops_cover_every_output() {
        let max = Op::MaxPool(MaxPool {
            kernel_shape: [3, 3],
            strides: [2, 2],
            pads: [1; 4],
            ..MaxPool::default()
        });
        let avg = Op::AveragePool(AveragePool {
            kernel_shape: [2, 3],
            strides: [1, 2],
            pads: [1, 0, 0, 2],
            ceil_mode: true,
            count_include_pad: true,
            ..AveragePool::default()
        });
        for dtype in DType::ALL {
            for (op, shape) in [
                (&max, &[2, 3, 33, 31][..]),
                (&avg, &[1, 4, 20, 21]),
                (&Op::GlobalAveragePool, &[3, 7, 5, 9]),
                (&Op::GlobalMaxPool, &[2, 11, 70]),
            ] {
                let full = run(op, dtype, shape, None);
                let cut = run(op, dtype, shape, Some([1, 1, 1]));
                assert!(full.iter().all(|v| !v.is_nan()), "{op:?} {shape:?}");
                assert_eq!(full, cut, "{op:?} {shape:?}");
            }
        }
    }
}
