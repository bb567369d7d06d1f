//! Launches for `kernels/batchnorm.cu`: one streaming pass `y = x·a + b` with the per-channel
//! `a = scale/√(var + ε)`, `b = bias − mean·a` folded in FP32 inside the kernel. Large planes
//! (`inner >= PLANE_MIN_INNER`) go to `batchnorm_plane_*` (blocks over planes × chunks, the fold
//! once per block), small ones (`[N, C]` inputs included) to `batchnorm_rows_*` (a thread owns a
//! vector of columns of the `[N, C·inner]` view and walks down the rows). Both use 16-byte
//! vectors when `x` and `y` are 16-byte aligned (and, for rows, the row width allows it).

use super::{blocks, dtype_suffix, Arch, Family, KernelArgs, Launch, Ptr, Target};
use crate::ops::BatchNormPlan;

/// `BN_BLOCK`: threads of a rows block, the most threads of a plane block.
pub const BLOCK: u32 = 256;
/// `BN_PLANE_ITEMS`: vectors per thread per plane block.
pub const PLANE_ITEMS: usize = 4;
/// `BN_PLANE_MIN_INNER`: the plane size from which the plane kernel is used.
pub const PLANE_MIN_INNER: usize = 1024;
/// Blocks the rows kernel aims for (≈ 2 full waves of 256-thread blocks on a 132-SM H100); the
/// rest of the batch is walked by the threads, reusing their folded coefficients.
const ROWS_TARGET_BLOCKS: usize = 2048;
/// Largest grid x dimension (and the plane kernel's grid-stride).
const MAX_GRID_X: usize = i32::MAX as usize;
/// Largest grid y dimension.
const MAX_GRID_Y: usize = 65535;

/// Mirrors `struct BatchNormParams` of `kernels/batchnorm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BatchNormParams {
    pub x: Ptr,
    pub scale: Ptr,
    pub bias: Ptr,
    pub mean: Ptr,
    pub var: Ptr,
    pub y: Ptr,
    pub n: i64,
    pub c: i64,
    pub inner: i64,
    /// Plane kernel: blocks per `(n, c)` plane.
    pub chunks: i64,
    pub epsilon: f32,
    /// 1: the 16-byte vector path.
    pub vec: i32,
}

/// The launch computing `plan` (none for an empty tensor). `params` are scale, bias, mean, var.
pub fn batch_norm(
    plan: &BatchNormPlan,
    arch: Arch,
    x: Ptr,
    params: [Ptr; 4],
    y: Ptr,
) -> Vec<Launch> {
    let _ = arch; // one sm_80 kernel set serves every architecture
    let (n, c, inner) = (plan.n, plan.c, plan.inner);
    if n * c * inner == 0 {
        return Vec::new();
    }
    let width = 16 / plan.dtype.size(); // elements per 16-byte vector
    let aligned = x.is_multiple_of(16) && y.is_multiple_of(16);
    let [scale, bias, mean, var] = params;
    let mut args = BatchNormParams {
        x,
        scale,
        bias,
        mean,
        var,
        y,
        n: n as i64,
        c: c as i64,
        inner: inner as i64,
        chunks: 0,
        epsilon: plan.epsilon,
        vec: 0,
    };
    let (variant, grid, block) = if inner >= PLANE_MIN_INNER {
        // Unaligned plane ends are peeled in the kernel: any inner takes the vector path.
        let v = if aligned { width } else { 1 };
        let vectors = inner.div_ceil(v);
        let threads = (vectors.div_ceil(PLANE_ITEMS).next_multiple_of(32) as u32).min(BLOCK);
        let chunks = vectors.div_ceil(threads as usize * PLANE_ITEMS);
        args.vec = (v > 1) as i32;
        args.chunks = chunks as i64;
        (
            "plane",
            [(n * c * chunks).min(MAX_GRID_X) as u32, 1, 1],
            threads,
        )
    } else {
        let w = c * inner;
        let v = if aligned && w % width == 0 { width } else { 1 };
        args.vec = (v > 1) as i32;
        let gx = blocks(w / v, BLOCK as usize);
        let gy = ROWS_TARGET_BLOCKS
            .div_ceil(gx as usize)
            .min(n)
            .min(MAX_GRID_Y);
        ("rows", [gx, gy as u32, 1], BLOCK)
    };
    vec![Launch {
        family: Family::BatchNorm,
        target: Target::Sm80,
        kernel: format!("batchnorm_{variant}_{}", dtype_suffix(plan.dtype)),
        grid,
        block: [block, 1, 1],
        args: KernelArgs::BatchNorm(args),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::ops::BatchNorm;
    use crate::tensor::TensorDesc;

    fn plan(dtype: DType, shape: &[usize]) -> BatchNormPlan {
        let x = TensorDesc::new(dtype, shape).unwrap();
        let p = TensorDesc::new(dtype, &shape[1..2]).unwrap();
        BatchNorm::default().plan(&x, [&p, &p, &p, &p]).unwrap()
    }

    fn one(dtype: DType, shape: &[usize], x: Ptr) -> (Launch, BatchNormParams) {
        let launches = batch_norm(&plan(dtype, shape), Arch::SM80, x, [8, 16, 24, 32], 4096);
        assert_eq!(launches.len(), 1);
        let l = launches[0].clone();
        let KernelArgs::BatchNorm(p) = l.args else {
            panic!("not batchnorm args")
        };
        (l, p)
    }

    #[test]
    fn params_match_the_c_layout() {
        assert_eq!(std::mem::size_of::<BatchNormParams>(), 88);
        assert_eq!(std::mem::offset_of!(BatchNormParams, n), 48);
        assert_eq!(std::mem::offset_of!(BatchNormParams, chunks), 72);
        assert_eq!(std::mem::offset_of!(BatchNormParams, epsilon), 80);
        assert_eq!(std::mem::offset_of!(BatchNormParams, vec), 84);
    }

    /// The constants here are the `#define`s of kernels/batchnorm.cu, and every kernel named
    /// here is defined there.
    #[test]
    fn constants_match_the_kernel_source() {
        let src = include_str!("../../../../kernels/batchnorm.cu");
        let define = |name: &str| crate::backend::cuda::launch::c_define(src, "batchnorm.cu", name);
        assert_eq!(define("BN_BLOCK"), BLOCK as usize);
        assert_eq!(define("BN_PLANE_ITEMS"), PLANE_ITEMS);
        assert_eq!(define("BN_PLANE_MIN_INNER"), PLANE_MIN_INNER);
        for variant in ["plane", "rows"] {
            for dtype in DType::ALL {
                let name = format!("(batchnorm_{variant}_{},", dtype_suffix(dtype));
                assert!(src.contains(&name), "{name}");
            }
        }
    }

    #[test]
    fn empty_tensors_launch_nothing() {
        for shape in [&[0, 3][..], &[2, 0, 5], &[2, 3, 0, 4]] {
            assert!(batch_norm(&plan(DType::F32, shape), Arch::SM80, 0, [0; 4], 0).is_empty());
        }
    }

    #[test]
    fn small_planes_take_the_rows_kernel() {
        let (l, p) = one(DType::F32, &[64, 1000], 4096);
        assert_eq!(l.kernel, "batchnorm_rows_f32");
        assert_eq!(p.vec, 1);
        assert_eq!(l.grid, [1, 64, 1]); // 1000 / 4 columns-vectors fit one block
        assert_eq!(l.block, [BLOCK, 1, 1]);
        // Odd row width or an unaligned pointer: scalar.
        assert_eq!(one(DType::F16, &[2, 3, 5], 4096).1.vec, 0);
        assert_eq!(one(DType::F32, &[2, 8, 5], 4100).1.vec, 0);
        // The batch beyond the y grid is walked by the threads.
        let (l, _) = one(DType::F16, &[1 << 20, 8], 4096);
        assert_eq!(l.grid, [1, ROWS_TARGET_BLOCKS as u32, 1]);
        let (l, _) = one(DType::F32, &[1 << 10, 3000, 7], 4096);
        assert_eq!(l.grid[0], blocks(3000 * 7 / 4, BLOCK as usize));
        assert!(l.grid[1] >= 1 && l.grid[1] as usize <= MAX_GRID_Y);
    }

    #[test]
    fn large_planes_are_covered_by_the_plane_kernel() {
        for dtype in DType::ALL {
            for &inner in &[1024, 1025, 4096, 12544, 100_003] {
                for x in [4096, 4098] {
                    let (l, p) = one(dtype, &[3, 5, inner], x);
                    assert_eq!(l.kernel, format!("batchnorm_plane_{}", dtype_suffix(dtype)));
                    let v = if x % 16 == 0 { 16 / dtype.size() } else { 1 };
                    assert_eq!(p.vec, (v > 1) as i32);
                    let threads = l.block[0] as usize;
                    assert!(
                        threads.is_multiple_of(32) && threads <= BLOCK as usize && threads >= v
                    );
                    // Every vector of a plane has a (chunk, thread, item); no chunk is wasted.
                    let per_chunk = threads * PLANE_ITEMS * v;
                    assert!(p.chunks as usize * per_chunk >= inner);
                    assert!((p.chunks as usize - 1) * per_chunk < inner);
                    assert_eq!(l.grid, [15 * p.chunks as u32, 1, 1]);
                }
            }
        }
    }
}

/// The kernels themselves, run on the CPU emulator, beyond the conformance suite: both kernels,
/// the vector, peeled and scalar paths (tensors placed off 16-byte boundaries), and grid-stride
/// loops (grids cut down).
#[cfg(all(test, feature = "emu"))]
mod emu_tests {
    use super::super::emu_harness::{check_norm, run, values, Placed};
    use super::*;
    use crate::backend::EmuBackend;
    use crate::dtype::DType;
    use crate::ops::BatchNorm;
    use crate::tensor::TensorDesc;

    /// Runs the planned launch for x of `shape` placed `shift` elements past its buffer's
    /// 16-byte aligned start (y likewise), with `grid` (if any) replacing the planned grid;
    /// checks the result against float64 and returns the kernel's name.
    fn check(dtype: DType, shape: &[usize], shift: [usize; 2], grid: Option<[u32; 3]>) -> String {
        let emu = EmuBackend::new();
        let c = shape[1];
        let op = BatchNorm { epsilon: 1e-3 };
        let p = TensorDesc::new(dtype, &[c]).unwrap();
        let plan = op
            .plan(&TensorDesc::new(dtype, shape).unwrap(), [&p, &p, &p, &p])
            .unwrap();
        let n: usize = shape.iter().product();
        let xt = Placed::upload(&emu, dtype, &values(n, n as u64, -3.0, 3.0), shift[0]);
        let params = [
            (1, 0.5, 2.0),
            (2, -1.0, 1.0),
            (3, -0.5, 0.5),
            (4, 0.25, 2.0),
        ]
        .map(|(seed, lo, hi)| Placed::upload(&emu, dtype, &values(c, seed, lo, hi), 0));
        let yt = Placed::poisoned(&emu, dtype, n, shift[1]);
        let launches = batch_norm(
            &plan,
            Arch::SM80,
            xt.addr(),
            params.each_ref().map(Placed::addr),
            yt.addr(),
        );
        assert_eq!(launches.len(), 1);
        let buffers = [&xt, &yt, &params[0], &params[1], &params[2], &params[3]];
        let kernel = run(&emu, launches, grid, &buffers).remove(0);
        let [scale, bias, mean, var] = params.each_ref().map(|p| p.download(&emu));
        let inner = n / (shape[0] * c);
        let x = xt.download(&emu);
        let want: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let ch = i / inner % c;
                scale[ch] * (x - mean[ch]) / (var[ch] + op.epsilon as f64).sqrt() + bias[ch]
            })
            .collect();
        let what = format!("{shape:?} {shift:?} {kernel}");
        check_norm(&what, dtype, &yt.download(&emu), &want);
        kernel
    }

    #[test]
    fn every_path_and_alignment() {
        let shapes: [&[usize]; 10] = [
            &[1, 1],
            &[7, 3],
            &[5, 64],
            &[3, 5, 7],
            &[2, 8, 2],
            &[2, 3, 1000],
            &[2, 3, 1024],
            &[2, 3, 1031],
            &[1, 2, 4096],
            &[2, 3, 33, 65],
        ];
        for dtype in DType::ALL {
            let mut seen = std::collections::BTreeSet::new();
            for shape in shapes {
                for shift in [[0, 0], [1, 0], [0, 3], [5, 5]] {
                    seen.insert(check(dtype, shape, shift, None));
                }
            }
            assert_eq!(seen.len(), 2, "{seen:?}");
        }
    }

    #[test]
    fn grid_stride_loops_cover_every_element() {
        for dtype in DType::ALL {
            // Plane kernel: one block walks every (plane, chunk).
            assert!(check(dtype, &[2, 3, 5000], [0, 0], Some([1, 1, 1])).contains("plane"));
            assert!(check(dtype, &[2, 3, 5001], [1, 1], Some([2, 1, 1])).contains("plane"));
            // Rows kernel: a column of blocks walks the batch, BN_ROWS_UNROLL rows at a time.
            for rows in [1, 3, 4, 5, 9] {
                for shift in [[0, 0], [1, 1]] {
                    let k = check(dtype, &[rows, 600], shift, Some([3, 1, 1]));
                    assert!(k.contains("rows"));
                    check(dtype, &[rows * 7, 8, 3], shift, Some([1, 2, 1]));
                }
            }
        }
    }
}
