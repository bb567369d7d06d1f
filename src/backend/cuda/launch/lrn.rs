//! Launches for `kernels/lrn.cu`: `lrn_window_<dtype>`, a thread per output element summing its
//! window's squares.

use super::{blocks, dtype_suffix, Arch, Family, KernelArgs, Launch, Ptr, Target};
use crate::ops::LrnPlan;

/// `LRN_THREADS`: threads of a block.
pub const THREADS: u32 = 256;
/// The most blocks of a launch (the kernel grid-strides beyond).
pub const MAX_GRID: usize = 1 << 20;

/// Mirrors `struct LrnParams` of `kernels/lrn.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LrnParams {
    pub x: Ptr,
    pub y: Ptr,
    pub n: i64,
    pub c: i64,
    pub inner: i64,
    pub size: i32,
    /// `alpha / size`.
    pub scale: f32,
    pub bias: f32,
    pub beta: f32,
}

/// The launch computing `plan` (none for an empty tensor).
pub fn lrn(plan: &LrnPlan, arch: Arch, x: Ptr, y: Ptr) -> Vec<Launch> {
    let _ = arch; // one sm_80 kernel set serves every architecture
    let threads = plan.n * plan.c * plan.inner;
    if threads == 0 {
        return Vec::new();
    }
    let args = LrnParams {
        x,
        y,
        n: plan.n as i64,
        c: plan.c as i64,
        inner: plan.inner as i64,
        // Plans keep size within MAX_DIM = i32::MAX.
        size: plan.size as i32,
        scale: plan.scale(),
        bias: plan.bias,
        beta: plan.beta,
    };
    vec![Launch {
        family: Family::Lrn,
        target: Target::Sm80,
        kernel: format!("lrn_window_{}", dtype_suffix(plan.dtype)),
        grid: [blocks(threads, THREADS as usize).min(MAX_GRID as u32), 1, 1],
        block: [THREADS, 1, 1],
        args: KernelArgs::Lrn(args),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::ops::Lrn;
    use crate::tensor::TensorDesc;

    fn plan(dtype: DType, shape: &[usize], size: usize) -> LrnPlan {
        Lrn {
            size,
            ..Lrn::default()
        }
        .plan(&TensorDesc::new(dtype, shape).unwrap())
        .unwrap()
    }

    #[test]
    fn params_match_the_c_layout() {
        assert_eq!(std::mem::size_of::<LrnParams>(), 56);
        assert_eq!(std::mem::offset_of!(LrnParams, n), 16);
        assert_eq!(std::mem::offset_of!(LrnParams, size), 40);
        assert_eq!(std::mem::offset_of!(LrnParams, scale), 44);
        assert_eq!(std::mem::offset_of!(LrnParams, bias), 48);
        assert_eq!(std::mem::offset_of!(LrnParams, beta), 52);
    }

    /// The constant here is the `#define` of kernels/lrn.cu, and every kernel named here is
    /// defined there.
    #[test]
    fn constants_match_the_kernel_source() {
        let src = include_str!("../../../../kernels/lrn.cu");
        let define = |name: &str| crate::backend::cuda::launch::c_define(src, "lrn.cu", name);
        assert_eq!(define("LRN_THREADS"), THREADS as usize);
        for dtype in DType::ALL {
            let l = &lrn(&plan(dtype, &[1, 3, 4], 3), Arch::SM80, 0, 0)[0];
            assert!(src.contains(&format!("EIA_KERNEL_BOUNDS({},", l.kernel)));
        }
    }

    #[test]
    fn grid_and_params() {
        assert!(lrn(&plan(DType::F32, &[2, 0, 4], 3), Arch::SM80, 0, 0).is_empty());
        assert!(lrn(&plan(DType::F32, &[2, 3, 0], 3), Arch::SM80, 0, 0).is_empty());
        for (shape, size) in [
            (&[1, 96, 55, 55][..], 5),
            (&[2, 3, 7], 5),
            (&[1, 40, 2], 12),
            (&[1, 10, 2], 12),
        ] {
            let threads = shape.iter().product();
            let l = &lrn(&plan(DType::F16, shape, size), Arch::SM80, 1, 2)[0];
            let KernelArgs::Lrn(p) = l.args else {
                panic!("not LRN args")
            };
            assert_eq!((p.x, p.y, p.size), (1, 2, size as i32));
            assert_eq!((p.n, p.c), (shape[0] as i64, shape[1] as i64), "{shape:?}");
            assert_eq!(l.grid[0], blocks(threads, THREADS as usize), "{shape:?}");
            assert_eq!(l.block, [THREADS, 1, 1]);
        }
        let l = &lrn(&plan(DType::F32, &[64, 64, 1 << 20], 1), Arch::SM80, 0, 0)[0];
        assert_eq!(l.grid[0] as usize, MAX_GRID);
    }
}

/// The kernel on the CPU emulator beyond the conformance suite: the grid-stride loop (grids cut
/// down) and windows wider than the channels.
#[cfg(all(test, feature = "emu"))]
mod emu_tests {
    use super::super::emu_harness::{run, values, Placed};
    use super::*;
    use crate::backend::EmuBackend;
    use crate::dtype::DType;
    use crate::ops::Lrn;
    use crate::tensor::TensorDesc;

    /// The float64 LRN of `x` over the plan's `[n, c, inner]` view.
    fn reference(x: &[f64], p: &LrnPlan) -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        let at = |b: usize, k: usize, i: usize| (b * p.c + k) * p.inner + i;
        for b in 0..p.n {
            for ch in 0..p.c {
                for i in 0..p.inner {
                    let last = (ch + p.after()).min(p.c - 1);
                    let sum: f64 = (ch.saturating_sub(p.before())..=last)
                        .map(|k| x[at(b, k, i)] * x[at(b, k, i)])
                        .sum();
                    let base = p.bias as f64 + p.alpha as f64 / p.size as f64 * sum;
                    y[at(b, ch, i)] = x[at(b, ch, i)] * base.powf(-p.beta as f64);
                }
            }
        }
        y
    }

    #[test]
    fn grid_stride_and_wide_windows() {
        let emu = EmuBackend::new();
        for dtype in DType::ALL {
            for (shape, size, grid, shift) in [
                (&[2, 19, 37][..], 5, Some([1, 1, 1]), 1),
                (&[3, 20, 5], 2, Some([2, 1, 1]), 0),
                (&[1, 30, 9], 25, None, 3),
                (&[2, 33, 3], 8, Some([1, 1, 1]), 0),
            ] {
                let op = Lrn {
                    size,
                    alpha: 0.7,
                    beta: 0.75,
                    bias: 0.9,
                };
                let plan = op.plan(&TensorDesc::new(dtype, shape).unwrap()).unwrap();
                let n = plan.output.len();
                let x = Placed::upload(&emu, dtype, &values(n, n as u64, -2.0, 2.0), shift);
                let y = Placed::poisoned(&emu, dtype, n, shift);
                run(
                    &emu,
                    lrn(&plan, Arch::SM80, x.addr(), y.addr()),
                    grid,
                    &[&x, &y],
                );
                let got = y.download(&emu);
                let want = reference(&x.download(&emu), &plan);
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-3 };
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= tol * w.abs().max(1e-3),
                        "{dtype} {shape:?} size {size}: element {i} is {g}, want {w}"
                    );
                }
            }
        }
    }
}
