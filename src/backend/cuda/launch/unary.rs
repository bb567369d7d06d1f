//! Launches for `kernels/unary.cu`: one streaming pass of an elementwise activation
//! (`unary_<act>_<dtype>`, act relu, clip, leakyrelu, sigmoid or tanh). 16-byte vectors when `x`
//! and `y` sit at the same offset modulo 16 bytes (the unaligned head before the first boundary
//! and the tail after the last whole vector are peeled by the kernel), scalar otherwise. Blocks
//! walk chunks of `block·ITEMS` vectors, grid-stride beyond `MAX_GRID` blocks.

use super::{blocks, dtype_suffix, Arch, Family, KernelArgs, Launch, Ptr, Target};
use crate::ops::{Activation, UnaryPlan};

/// `UNARY_BLOCK`: the most threads of a block.
pub const BLOCK: u32 = 256;
/// `UNARY_ITEMS`: vectors per thread per chunk.
pub const ITEMS: usize = 4;
/// `UNARY_MAX_GRID`: the most blocks of a launch (the kernel grid-strides beyond).
pub const MAX_GRID: usize = 65535;

/// Mirrors `struct UnaryParams` of `kernels/unary.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnaryParams {
    pub x: Ptr,
    pub y: Ptr,
    pub n: i64,
    /// Vector path: elements before `x`'s first 16-byte boundary (at most `n`).
    pub head: i64,
    /// Clip bounds (infinite where unset).
    pub lo: f32,
    pub hi: f32,
    /// LeakyRelu slope.
    pub alpha: f32,
    /// 1: the 16-byte vector path.
    pub vec: i32,
}

/// The kernel-name part of an activation.
pub fn variant(act: Activation) -> &'static str {
    match act {
        Activation::Relu => "relu",
        Activation::Clip { .. } => "clip",
        Activation::LeakyRelu { .. } => "leakyrelu",
        Activation::Sigmoid => "sigmoid",
        Activation::Tanh => "tanh",
    }
}

/// The launch computing `plan` (none for an empty tensor).
pub fn unary(plan: &UnaryPlan, arch: Arch, x: Ptr, y: Ptr) -> Vec<Launch> {
    let _ = arch; // one sm_80 kernel set serves every architecture
    let n = plan.len;
    if n == 0 {
        return Vec::new();
    }
    let es = plan.dtype.size() as u64;
    let width = 16 / plan.dtype.size(); // elements per 16-byte vector
                                        // Vectors need x and y equally placed within 16 bytes, and enough elements to be worth it.
    let vec = x % 16 == y % 16 && n >= 2 * width;
    let head = if vec {
        (((16 - x % 16) % 16) / es) as usize
    } else {
        0
    };
    let v = if vec { width } else { 1 };
    let vectors = (n - head) / v;
    let threads = (vectors.div_ceil(ITEMS).next_multiple_of(32) as u32).clamp(32, BLOCK);
    let grid = blocks(vectors, threads as usize * ITEMS).clamp(1, MAX_GRID as u32);
    let (lo, hi, alpha) = match plan.activation {
        Activation::Clip { min, max } => (min, max, 0.0),
        Activation::LeakyRelu { alpha } => (f32::NEG_INFINITY, f32::INFINITY, alpha),
        _ => (f32::NEG_INFINITY, f32::INFINITY, 0.0),
    };
    vec![Launch {
        family: Family::Unary,
        target: Target::Sm80,
        kernel: format!(
            "unary_{}_{}",
            variant(plan.activation),
            dtype_suffix(plan.dtype)
        ),
        grid: [grid, 1, 1],
        block: [threads, 1, 1],
        args: KernelArgs::Unary(UnaryParams {
            x,
            y,
            n: n as i64,
            head: head as i64,
            lo,
            hi,
            alpha,
            vec: vec as i32,
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::tensor::TensorDesc;

    fn plan(dtype: DType, n: usize, act: Activation) -> UnaryPlan {
        act.plan(&TensorDesc::new(dtype, &[n]).unwrap()).unwrap()
    }

    fn one(dtype: DType, n: usize, x: Ptr, y: Ptr) -> (Launch, UnaryParams) {
        let launches = unary(&plan(dtype, n, Activation::Relu), Arch::SM80, x, y);
        assert_eq!(launches.len(), 1);
        let l = launches[0].clone();
        let KernelArgs::Unary(p) = l.args else {
            panic!("not unary args")
        };
        (l, p)
    }

    #[test]
    fn params_match_the_c_layout() {
        assert_eq!(std::mem::size_of::<UnaryParams>(), 48);
        assert_eq!(std::mem::offset_of!(UnaryParams, n), 16);
        assert_eq!(std::mem::offset_of!(UnaryParams, head), 24);
        assert_eq!(std::mem::offset_of!(UnaryParams, lo), 32);
        assert_eq!(std::mem::offset_of!(UnaryParams, hi), 36);
        assert_eq!(std::mem::offset_of!(UnaryParams, alpha), 40);
        assert_eq!(std::mem::offset_of!(UnaryParams, vec), 44);
    }

    /// The constants here are the `#define`s of kernels/unary.cu, and every kernel named here
    /// is defined there.
    #[test]
    fn constants_match_the_kernel_source() {
        let src = include_str!("../../../../kernels/unary.cu");
        let define = |name: &str| crate::backend::cuda::launch::c_define(src, "unary.cu", name);
        assert_eq!(define("UNARY_BLOCK"), BLOCK as usize);
        assert_eq!(define("UNARY_ITEMS"), ITEMS);
        assert_eq!(define("UNARY_MAX_GRID"), MAX_GRID);
        assert!(src.contains("EIA_KERNEL_BOUNDS(unary_##act##_f32,"));
        assert!(src.contains("EIA_KERNEL_BOUNDS(unary_##act##_f16,"));
        for act in [
            Activation::Relu,
            Activation::Clip { min: 0.0, max: 1.0 },
            Activation::LeakyRelu { alpha: 0.1 },
            Activation::Sigmoid,
            Activation::Tanh,
        ] {
            let name = format!("\nUNARY_KERNELS({}, ", variant(act));
            assert!(src.contains(&name), "{name}");
            let l = &unary(&plan(DType::F16, 5, act), Arch::SM80, 0, 0)[0];
            assert_eq!(l.kernel, format!("unary_{}_f16", variant(act)));
        }
    }

    #[test]
    fn empty_tensors_launch_nothing() {
        assert!(unary(&plan(DType::F32, 0, Activation::Tanh), Arch::SM80, 0, 0).is_empty());
    }

    #[test]
    fn vectors_peel_and_cover() {
        for dtype in DType::ALL {
            let es = dtype.size() as u64;
            let width = 16 / dtype.size();
            for n in [1, 7, 8, 15, 16, 17, 100, 4099, 1 << 20, 3 << 28] {
                for (x, y) in [(4096, 8192), (4096 + es, 8192 + es), (4096 + 3 * es, 64)] {
                    let (l, p) = one(dtype, n, x, y);
                    let vec = x % 16 == y % 16 && n >= 2 * width;
                    assert_eq!(p.vec, vec as i32, "{dtype:?} {n} {x}");
                    let v = if vec { width } else { 1 };
                    assert!(p.head >= 0 && (p.head as usize) < v);
                    if vec {
                        assert_eq!((x + p.head as u64 * es) % 16, 0);
                    }
                    let vectors = (n - p.head as usize) / v;
                    let threads = l.block[0] as usize;
                    assert!(threads.is_multiple_of(32) && threads <= BLOCK as usize);
                    // Block 0 has a thread for every peeled element.
                    assert!(threads >= v);
                    assert!(l.grid[0] >= 1 && l.grid[0] as usize <= MAX_GRID);
                    // Every vector is in some chunk (the grid strides over the rest); no
                    // block is wasted.
                    let per_block = threads * ITEMS;
                    assert!((l.grid[0] as usize - 1) * per_block < vectors.max(1));
                }
            }
        }
    }

    #[test]
    fn activation_params() {
        let l = &unary(
            &plan(
                DType::F32,
                9,
                Activation::Clip {
                    min: -1.0,
                    max: 6.0,
                },
            ),
            Arch::SM80,
            0,
            0,
        )[0];
        let KernelArgs::Unary(p) = l.args else {
            panic!()
        };
        assert_eq!((p.lo, p.hi), (-1.0, 6.0));
        let l = &unary(
            &plan(DType::F32, 9, Activation::LeakyRelu { alpha: 0.2 }),
            Arch::SM80,
            0,
            0,
        )[0];
        let KernelArgs::Unary(p) = l.args else {
            panic!()
        };
        assert_eq!(p.alpha, 0.2);
    }
}

/// The kernels themselves, run on the CPU emulator, beyond the conformance suite: every
/// activation on the vector, peeled and scalar paths (tensors placed off 16-byte boundaries),
/// and grid-stride loops (grids cut down).
#[cfg(all(test, feature = "emu"))]
mod emu_tests {
    use super::super::emu_harness::{run, values, Placed};
    use super::*;
    use crate::backend::EmuBackend;
    use crate::dtype::DType;
    use crate::tensor::TensorDesc;

    /// Runs the planned launch for `n` elements with x and y placed `shift` elements past their
    /// buffers' 16-byte aligned starts, `grid` (if any) replacing the planned grid's x; checks
    /// every element against float64 (relative error, absolute near 0) and returns the vec flag.
    fn check(dtype: DType, act: Activation, n: usize, shift: [usize; 2], grid: Option<u32>) -> i32 {
        let emu = EmuBackend::new();
        let plan = act.plan(&TensorDesc::new(dtype, &[n]).unwrap()).unwrap();
        let xt = Placed::upload(&emu, dtype, &values(n, n as u64 + 1, -8.0, 8.0), shift[0]);
        let yt = Placed::poisoned(&emu, dtype, n, shift[1]);
        let launches = unary(&plan, Arch::SM80, xt.addr(), yt.addr());
        assert_eq!(launches.len(), 1);
        let l = &launches[0];
        let KernelArgs::Unary(args) = l.args else {
            panic!("not unary args")
        };
        let kernel = l.kernel.clone();
        let cut = grid.map(|g| [g, l.grid[1], l.grid[2]]);
        run(&emu, launches, cut, &[&xt, &yt]);
        let got = &yt.download(&emu);
        let x = &xt.download(&emu);
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-3 };
        for (i, (&g, &x)) in got.iter().zip(x).enumerate() {
            let want = act.eval_f64(x);
            let err = (g - want).abs() / want.abs().max(1e-3);
            assert!(
                err <= tol,
                "{kernel} n={n} {shift:?} element {i}: {x} gave {g}, want {want}"
            );
        }
        args.vec
    }

    #[test]
    fn every_activation_path_and_alignment() {
        let acts = [
            Activation::Relu,
            Activation::Clip {
                min: -1.5,
                max: 6.0,
            },
            Activation::LeakyRelu { alpha: 0.1 },
            Activation::Sigmoid,
            Activation::Tanh,
        ];
        for dtype in DType::ALL {
            for act in acts {
                let mut seen = std::collections::BTreeSet::new();
                for n in [1, 3, 8, 16, 17, 31, 70, 1000, 4133] {
                    for shift in [[0, 0], [1, 1], [3, 3], [0, 1], [5, 2]] {
                        seen.insert(check(dtype, act, n, shift, None));
                    }
                }
                assert_eq!(seen.len(), 2, "{act:?} {dtype:?}: {seen:?}");
            }
        }
    }

    #[test]
    fn grid_stride_loops_cover_every_element() {
        for dtype in DType::ALL {
            for shift in [[0, 0], [1, 1], [0, 2]] {
                check(dtype, Activation::Tanh, 20_011, shift, Some(1));
                check(dtype, Activation::Sigmoid, 9_000, shift, Some(2));
            }
        }
    }
}
