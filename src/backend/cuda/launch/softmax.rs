//! Launches for `kernels/softmax.cu`. Along a contiguous axis (`inner == 1`): rows of up to
//! `32·WARP_ELTS` elements go to `softmax_warp_*` (a row per power-of-two group of lanes, held in
//! registers), rows up to `BLOCK_THREADS·BLOCK_ELTS` to `softmax_block_*` (a row per block, in
//! registers), longer rows to `softmax_long_*` (online max/sum pass, then the write pass). Along
//! any other axis, `softmax_strided_*`: a thread per `(outer, inner)` column and row slice,
//! online statistics combined in shared memory. 16-byte vectors wherever `x` and `y` are 16-byte
//! aligned (the kernels peel unaligned row ends).

use super::{dtype_suffix, Arch, Family, KernelArgs, Launch, Ptr, Target};
use crate::ops::SoftmaxPlan;

/// `SM_WARP_THREADS`: threads of a warp-kernel block.
pub const WARP_THREADS: u32 = 128;
/// `SM_WARP_ELTS`: floats a lane holds in the warp kernel (a row of 32 lanes: 1024 elements).
pub const WARP_ELTS: usize = 32;
/// `SM_BLOCK_THREADS`: the most threads of a block-kernel block (128, 256, 512 or 1024).
pub const BLOCK_THREADS: u32 = 1024;
/// `SM_BLOCK_ELTS`: floats a thread holds in the block kernel.
pub const BLOCK_ELTS: usize = 16;
/// `SM_LONG_THREADS`: threads of a long-kernel block.
pub const LONG_THREADS: u32 = 512;
/// `SM_STRIDED_THREADS`: the most threads of a strided-kernel block.
pub const STRIDED_THREADS: u32 = 256;
/// Largest grid x dimension (the kernels grid-stride beyond it).
const MAX_GRID_X: usize = i32::MAX as usize;
/// Largest grid y dimension.
const MAX_GRID_Y: usize = 65535;

/// Mirrors `struct SoftmaxParams` of `kernels/softmax.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxParams {
    pub x: Ptr,
    pub y: Ptr,
    pub outer: i64,
    pub len: i64,
    pub inner: i64,
    /// 1: 16-byte vectors (x and y 16-byte aligned).
    pub vec: i32,
    /// Warp kernel: lanes per row, a power of two <= 32.
    pub lanes: i32,
}

/// The launch computing `plan` (none for an empty tensor).
pub fn softmax(plan: &SoftmaxPlan, arch: Arch, x: Ptr, y: Ptr) -> Vec<Launch> {
    let _ = arch; // one sm_80 kernel set serves every architecture
    let (outer, len, inner) = (plan.outer, plan.len, plan.inner);
    if outer * len * inner == 0 {
        return Vec::new();
    }
    let width = 16 / plan.dtype.size(); // elements per 16-byte vector
    let aligned = x.is_multiple_of(16) && y.is_multiple_of(16);
    let mut args = SoftmaxParams {
        x,
        y,
        outer: outer as i64,
        len: len as i64,
        inner: inner as i64,
        vec: 0,
        lanes: 0,
    };
    let (variant, grid, block) = if inner > 1 {
        let (tx, ty) = strided_block(len, inner);
        let grid = [
            inner.div_ceil(tx as usize).min(MAX_GRID_X) as u32,
            outer.min(MAX_GRID_Y) as u32,
            1,
        ];
        ("strided", grid, [tx, ty, 1])
    } else if len <= 32 * WARP_ELTS {
        // Rows of a few elements gain nothing from vectors: scalar lanes, more rows per warp.
        let v = if aligned && len >= 4 * width {
            width
        } else {
            1
        };
        // Enough lanes for one vector each (and for the < v peeled elements at either end).
        let lanes = len.div_ceil(v).next_power_of_two().max(v).min(32);
        args.vec = (v > 1) as i32;
        args.lanes = lanes as i32;
        let rows_per_block = WARP_THREADS as usize / lanes;
        let grid = [outer.div_ceil(rows_per_block).min(MAX_GRID_X) as u32, 1, 1];
        ("warp", grid, [WARP_THREADS, 1, 1])
    } else if aligned && len <= BLOCK_THREADS as usize * BLOCK_ELTS {
        // The block kernel has only the vector path; each thread holds BLOCK_ELTS elements.
        let threads =
            (len.div_ceil(BLOCK_ELTS).next_power_of_two() as u32).clamp(128, BLOCK_THREADS);
        args.vec = 1;
        (
            "block",
            [outer.min(MAX_GRID_X) as u32, 1, 1],
            [threads, 1, 1],
        )
    } else {
        args.vec = aligned as i32;
        (
            "long",
            [outer.min(MAX_GRID_X) as u32, 1, 1],
            [LONG_THREADS, 1, 1],
        )
    };
    vec![Launch {
        family: Family::Softmax,
        target: Target::Sm80,
        kernel: format!("softmax_{variant}_{}", dtype_suffix(plan.dtype)),
        grid,
        block,
        args: KernelArgs::Softmax(args),
    }]
}

/// The strided kernel's block `(TX, TY)`: powers of two, `TX` columns (coalesced, up to 32 while
/// rows need threads, more when rows are short) × `TY` row slices, 32 to `STRIDED_THREADS`
/// threads.
fn strided_block(len: usize, inner: usize) -> (u32, u32) {
    let max = STRIDED_THREADS as usize;
    let cols = inner.next_power_of_two().min(max);
    let ty = (max / cols.min(32)).min(len.next_power_of_two());
    let tx = (max / ty).min(cols);
    let ty = ty.max(32 / tx);
    (tx as u32, ty as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::ops::Softmax;
    use crate::tensor::TensorDesc;

    fn one(dtype: DType, shape: &[usize], axis: i64, x: Ptr) -> (Launch, SoftmaxParams) {
        let plan = Softmax { axis }
            .plan(&TensorDesc::new(dtype, shape).unwrap())
            .unwrap();
        let launches = softmax(&plan, Arch::SM80, x, 1 << 20);
        assert_eq!(launches.len(), 1);
        let l = launches[0].clone();
        let KernelArgs::Softmax(p) = l.args else {
            panic!("not softmax args")
        };
        assert!(l.block.iter().product::<u32>() % 32 == 0, "{l:?}");
        assert!(l.grid[1] as usize <= MAX_GRID_Y && l.grid[2] == 1);
        (l, p)
    }

    #[test]
    fn params_match_the_c_layout() {
        assert_eq!(std::mem::size_of::<SoftmaxParams>(), 48);
        assert_eq!(std::mem::offset_of!(SoftmaxParams, vec), 40);
        assert_eq!(std::mem::offset_of!(SoftmaxParams, lanes), 44);
    }

    /// The constants here are the `#define`s of kernels/softmax.cu, and every kernel named here
    /// is defined there.
    #[test]
    fn constants_match_the_kernel_source() {
        let src = include_str!("../../../../kernels/softmax.cu");
        let define = |name: &str| crate::backend::cuda::launch::c_define(src, "softmax.cu", name);
        assert_eq!(define("SM_WARP_THREADS"), WARP_THREADS as usize);
        assert_eq!(define("SM_WARP_ELTS"), WARP_ELTS);
        assert_eq!(define("SM_BLOCK_THREADS"), BLOCK_THREADS as usize);
        assert_eq!(define("SM_BLOCK_ELTS"), BLOCK_ELTS);
        assert_eq!(define("SM_LONG_THREADS"), LONG_THREADS as usize);
        assert_eq!(define("SM_STRIDED_THREADS"), STRIDED_THREADS as usize);
        for variant in ["warp", "block", "long", "strided"] {
            for dtype in DType::ALL {
                let name = format!("(softmax_{variant}_{},", dtype_suffix(dtype));
                assert!(src.contains(&name), "{name}");
            }
        }
    }

    #[test]
    fn empty_tensors_launch_nothing() {
        for shape in [&[0, 5][..], &[5, 0], &[2, 0, 3]] {
            let plan = Softmax { axis: 1 }
                .plan(&TensorDesc::new(DType::F16, shape).unwrap())
                .unwrap();
            assert!(softmax(&plan, Arch::SM80, 0, 0).is_empty());
        }
    }

    #[test]
    fn rows_pick_warp_block_or_long() {
        for dtype in DType::ALL {
            let v = 16 / dtype.size();
            let dt = dtype_suffix(dtype);
            for len in [1, 3, 5, 31, 32, 33, 100, 1000, 1023, 1024] {
                for x in [0, 2] {
                    let (l, p) = one(dtype, &[7, len], -1, x);
                    assert_eq!(l.kernel, format!("softmax_warp_{dt}"));
                    let lanes = p.lanes as usize;
                    assert!(lanes.is_power_of_two() && lanes <= 32);
                    let pv = if p.vec == 1 { v } else { 1 };
                    assert!(x == 0 || pv == 1);
                    // The body fits the lanes' registers; head and tail (< pv each) fit the lanes.
                    let per_lane = if lanes == 32 { WARP_ELTS / pv } else { 1 };
                    assert!(len / pv <= lanes * per_lane && pv <= lanes, "{len} {p:?}");
                    assert_eq!(l.grid[0] as usize, 7usize.div_ceil(128 / lanes));
                }
            }
            for len in [1025, 2047, 4096, 16384] {
                let (l, p) = one(dtype, &[3, len], -1, 0);
                assert_eq!(l.kernel, format!("softmax_block_{dt}"));
                assert_eq!(p.vec, 1);
                let threads = l.block[0] as usize;
                assert!([128, 256, 512, 1024].contains(&threads));
                assert!(len <= threads * BLOCK_ELTS);
                assert_eq!(l.grid, [3, 1, 1]);
                // Unaligned: the long kernel's scalar path.
                let (l, p) = one(dtype, &[3, len], -1, 2);
                assert_eq!(
                    (l.kernel.as_str(), p.vec),
                    (&*format!("softmax_long_{dt}"), 0)
                );
            }
            let (l, p) = one(dtype, &[3, 32771], -1, 0);
            assert_eq!(l.kernel, format!("softmax_long_{dt}"));
            assert_eq!(
                (p.vec, l.block, l.grid),
                (1, [LONG_THREADS, 1, 1], [3, 1, 1])
            );
        }
    }

    #[test]
    fn other_axes_take_the_strided_kernel() {
        for (shape, axis) in [
            (&[4099, 3][..], 0),
            (&[3, 4, 5][..], 1),
            (&[2, 3, 5, 7], 0),
            (&[2, 3, 5, 7], -3),
            (&[100_000, 2, 2], 1),
            (&[8, 21, 512, 512], 1),
            (&[1, 1 << 30], 0),
        ] {
            let (l, p) = one(DType::F32, shape, axis, 0);
            assert_eq!(l.kernel, "softmax_strided_f32");
            let [tx, ty, _] = l.block.map(|b| b as usize);
            assert!(tx.is_power_of_two() && ty.is_power_of_two());
            assert!((32..=STRIDED_THREADS as usize).contains(&(tx * ty)));
            let inner = p.inner as usize;
            assert_eq!(l.grid[0] as usize, inner.div_ceil(tx));
            assert_eq!(l.grid[1] as usize, (p.outer as usize).min(MAX_GRID_Y));
        }
        assert_eq!(strided_block(21, 512 * 512), (32, 8));
        assert_eq!(strided_block(3, 35), (64, 4));
        assert_eq!(strided_block(4099, 3), (4, 64));
        assert_eq!(strided_block(2, 2), (2, 16));
        assert_eq!(strided_block(2, 1 << 20), (128, 2));
    }
}

/// The kernels themselves, run on the CPU emulator, beyond the conformance suite: every kernel
/// and path (vector, peeled, scalar for unaligned tensors), grid-stride loops (grids cut to one
/// block), and the special values in each kernel.
#[cfg(all(test, feature = "emu"))]
mod emu_tests {
    use super::super::emu_harness::{check_norm as check, run as launch, values, Placed};
    use super::*;
    use crate::backend::EmuBackend;
    use crate::dtype::DType;
    use crate::ops::Softmax;
    use crate::tensor::TensorDesc;

    /// Softmax of `x` (`shape`, `axis`) by the planned launches, x and y placed `shift`
    /// elements past their buffers' 16-byte aligned starts, each grid replaced by `grid`.
    fn run(
        dtype: DType,
        shape: &[usize],
        axis: i64,
        x: &[f32],
        shift: [usize; 2],
        grid: Option<[u32; 3]>,
    ) -> (Vec<f64>, Vec<f64>, Vec<String>) {
        let emu = EmuBackend::new();
        let plan = Softmax { axis }
            .plan(&TensorDesc::new(dtype, shape).unwrap())
            .unwrap();
        let xt = Placed::upload(&emu, dtype, x, shift[0]);
        let yt = Placed::poisoned(&emu, dtype, x.len(), shift[1]);
        let launches = softmax(&plan, Arch::SM80, xt.addr(), yt.addr());
        let kernels = launch(&emu, launches, grid, &[&xt, &yt]);
        let got = yt.download(&emu);
        (got, reference(&xt.download(&emu), &plan), kernels)
    }

    /// The float64 softmax of the (dtype-rounded) input.
    fn reference(x: &[f64], p: &SoftmaxPlan) -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        for o in 0..p.outer {
            for i in 0..p.inner {
                let at = |l: usize| (o * p.len + l) * p.inner + i;
                let max = (0..p.len)
                    .map(|l| x[at(l)])
                    .fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..p.len).map(|l| (x[at(l)] - max).exp()).sum();
                for l in 0..p.len {
                    y[at(l)] = (x[at(l)] - max).exp() / sum;
                }
            }
        }
        y
    }

    #[test]
    fn rows_in_every_kernel_and_alignment() {
        let lens = [
            1, 2, 3, 7, 9, 16, 17, 31, 33, 100, 255, 257, 1000, 1021, 1024, 1025, 1500, 2048, 4099,
            8192, 16383, 16384, 16385, 20001,
        ];
        for dtype in DType::ALL {
            let mut seen = std::collections::BTreeSet::new();
            for len in lens {
                for shift in [[0, 0], [1, 0], [0, 3], [5, 5]] {
                    let shape = [3, len];
                    let x = values(3 * len, len as u64, -8.0, 8.0);
                    let (got, want, k) = run(dtype, &shape, -1, &x, shift, None);
                    let what = format!("{dtype} {shape:?} shift {shift:?} {k:?}");
                    check(&what, dtype, &got, &want);
                    seen.extend(k);
                }
            }
            let dt = dtype_suffix(dtype);
            let all = ["warp", "block", "long"].map(|v| format!("softmax_{v}_{dt}"));
            assert!(all.iter().all(|k| seen.contains(k)), "{seen:?}");
        }
    }

    #[test]
    fn grid_stride_loops_cover_every_row_and_column() {
        for dtype in DType::ALL {
            for (shape, axis) in [
                (&[1000, 3][..], 1),
                (&[300, 40][..], 1),
                (&[70, 1000][..], 1),
                (&[5, 3000][..], 1),
                (&[3, 17000][..], 1),
                (&[9, 5, 300][..], 1),
                (&[7, 33, 2][..], 0),
                (&[4, 3, 1000][..], 1),
            ] {
                let x = values(shape.iter().product(), 7, -8.0, 8.0);
                let (got, want, k) = run(dtype, shape, axis, &x, [0, 0], Some([1, 1, 1]));
                check(&format!("{dtype} {shape:?} {k:?}"), dtype, &got, &want);
            }
        }
    }

    #[test]
    fn special_values_in_every_kernel() {
        for dtype in DType::ALL {
            for (shape, axis) in [
                (&[6, 40][..], 1),
                (&[6, 3000][..], 1),
                (&[6, 20000][..], 1),
                (&[6, 40, 3][..], 1),
            ] {
                let len = shape[1];
                let inner: usize = shape[2..].iter().product();
                let mut x = values(shape.iter().product(), 3, -8.0, 8.0);
                // Row 0: -inf entries; 1: all -inf; 2: a NaN; 3: a +inf; 4: huge values;
                // 5: -inf at both ends.
                for l in 0..len {
                    for i in 0..inner {
                        let at = |r: usize| (r * len + l) * inner + i;
                        if l % 3 == 0 {
                            x[at(0)] = f32::NEG_INFINITY;
                        }
                        x[at(1)] = f32::NEG_INFINITY;
                        x[at(4)] = if dtype == DType::F16 { 60000.0 } else { 1e30 }
                            - (l % 5) as f32 * if dtype == DType::F16 { 32.0 } else { 1e23 };
                        if l == 0 || l == len - 1 {
                            x[at(5)] = f32::NEG_INFINITY;
                        }
                    }
                }
                for i in 0..inner {
                    x[(2 * len + len / 2) * inner + i] = f32::NAN;
                    x[(3 * len + len - 2) * inner + i] = f32::INFINITY;
                }
                let (got, want, k) = run(dtype, shape, axis, &x, [0, 0], None);
                let what = format!("{dtype} {shape:?} {k:?}");
                check(&what, dtype, &got, &want);
                let row = len * inner;
                assert!(got[row..4 * row].iter().all(|v| v.is_nan()), "{what}");
                assert!(got[..row].contains(&0.0), "{what}");
            }
        }
    }
}
