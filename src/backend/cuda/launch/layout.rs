//! Launches for `kernels/layout.cu`: `layout_copy_*` for the contiguous copies (16-byte slots
//! when `x` and `y` are 16-byte aligned), for a transpose over the plan's merged dimensions (at
//! most `MAX_RANK`) `layout_transpose_tiled_*` (shared-memory tiles) when the two innermost
//! dimensions swap and both are at least `MIN_TILED` long (NCHW ↔ NHWC, batched matrix
//! transposes) and `layout_transpose_*` (one gather per element) otherwise, and one
//! `layout_concat_*` launch per non-empty Concat input. Every kernel grid-strides, so grids are
//! capped at `MAX_BLOCKS`.

use super::{blocks, dtype_suffix, Arch, Family, KernelArgs, Launch, Ptr, Target};
use crate::ops::{LayoutKind, LayoutPlan};

/// `LAYOUT_THREADS`: threads of a block.
pub const THREADS: u32 = 256;
/// `LAYOUT_MAX_RANK`: dimensions of a transpose (the plan merges adjacent ones; `ops::layout`
/// refuses more).
pub const MAX_RANK: usize = 8;
/// `LAYOUT_TILE`: side of a tiled transpose's tile.
pub const TILE: usize = 32;
/// The shortest innermost pair of dimensions the tiled transpose takes (shorter ones would
/// leave most of each tile idle).
const MIN_TILED: usize = 16;
/// The most blocks of a launch (the kernels grid-stride beyond).
const MAX_BLOCKS: usize = 1 << 16;

/// Mirrors `struct LayoutParams` of `kernels/layout.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LayoutParams {
    pub x: Ptr,
    pub y: Ptr,
    /// Elements this launch writes.
    pub n: i64,
    /// Concat: elements of an input row.
    pub width: i64,
    /// Concat: elements of an output row.
    pub out_width: i64,
    /// Concat: the input's first column in an output row.
    pub offset: i64,
    /// Transpose: the output's extents, outermost first.
    pub dims: [i64; MAX_RANK],
    /// Transpose: the input stride of each output dimension.
    pub strides: [i64; MAX_RANK],
    pub rank: i32,
    /// Copy: 1 for 16-byte slots.
    pub vec: i32,
}

/// The launches computing `plan` from the inputs at `x` into `y` (none for an empty output).
pub fn layout(plan: &LayoutPlan, arch: Arch, x: &[Ptr], y: Ptr) -> Vec<Launch> {
    let _ = arch; // one sm_80 kernel set serves every architecture
    let n = plan.output.len();
    if n == 0 {
        return Vec::new();
    }
    let base = LayoutParams {
        x: x[0],
        y,
        n: n as i64,
        width: 0,
        out_width: 0,
        offset: 0,
        dims: [0; MAX_RANK],
        strides: [0; MAX_RANK],
        rank: 0,
        vec: 0,
    };
    let launch = |variant: &str, args: LayoutParams| Launch {
        family: Family::Layout,
        target: Target::Sm80,
        kernel: format!("layout_{variant}_{}", dtype_suffix(plan.dtype)),
        grid: [
            blocks(args.n as usize, THREADS as usize).min(MAX_BLOCKS as u32),
            1,
            1,
        ],
        block: [THREADS, 1, 1],
        args: KernelArgs::Layout(args),
    };
    match &plan.kind {
        LayoutKind::Copy => {
            let vec = x[0].is_multiple_of(16) && y.is_multiple_of(16);
            vec![launch(
                "copy",
                LayoutParams {
                    vec: vec as i32,
                    ..base
                },
            )]
        }
        LayoutKind::Transpose { shape, perm } => {
            assert!(
                shape.len() <= MAX_RANK,
                "plans merge transposes to {MAX_RANK} dims"
            );
            let mut in_strides = vec![1usize; shape.len()];
            for i in (0..shape.len() - 1).rev() {
                in_strides[i] = in_strides[i + 1] * shape[i + 1];
            }
            let mut args = LayoutParams {
                rank: shape.len() as i32,
                ..base
            };
            for (k, &a) in perm.iter().enumerate() {
                args.dims[k] = shape[a] as i64;
                args.strides[k] = in_strides[a] as i64;
            }
            let r = shape.len();
            let (ni, nj) = (shape[perm[r - 2]], shape[perm[r - 1]]);
            if perm[r - 2] == r - 1 && perm[r - 1] == r - 2 && ni.min(nj) >= MIN_TILED {
                let tiles = n / (ni * nj) * ni.div_ceil(TILE) * nj.div_ceil(TILE);
                vec![Launch {
                    grid: [tiles.min(MAX_BLOCKS) as u32, 1, 1],
                    ..launch("transpose_tiled", args)
                }]
            } else {
                vec![launch("transpose", args)]
            }
        }
        LayoutKind::Concat { outer, widths } => {
            let total: usize = widths.iter().sum();
            let mut offset = 0;
            let mut out = Vec::new();
            for (&xi, &w) in x.iter().zip(widths) {
                if w > 0 {
                    out.push(launch(
                        "concat",
                        LayoutParams {
                            x: xi,
                            n: (outer * w) as i64,
                            width: w as i64,
                            out_width: total as i64,
                            offset: offset as i64,
                            ..base
                        },
                    ));
                }
                offset += w;
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::ops::{Concat, Transpose};
    use crate::tensor::TensorDesc;

    #[test]
    fn params_match_the_c_layout() {
        assert_eq!(std::mem::size_of::<LayoutParams>(), 184);
        assert_eq!(std::mem::offset_of!(LayoutParams, dims), 48);
        assert_eq!(std::mem::offset_of!(LayoutParams, strides), 112);
        assert_eq!(std::mem::offset_of!(LayoutParams, rank), 176);
        assert_eq!(std::mem::offset_of!(LayoutParams, vec), 180);
    }

    #[test]
    fn constants_match_the_kernel_source() {
        let src = include_str!("../../../../kernels/layout.cu");
        let define = |name: &str| crate::backend::cuda::launch::c_define(src, "layout.cu", name);
        assert_eq!(define("LAYOUT_THREADS"), THREADS as usize);
        assert_eq!(define("LAYOUT_MAX_RANK"), MAX_RANK);
        assert_eq!(define("LAYOUT_TILE"), TILE);
        assert_eq!(MAX_RANK, crate::ops::layout::MAX_TRANSPOSE_RANK);
        for variant in ["copy", "transpose", "transpose_tiled", "concat"] {
            for dtype in DType::ALL {
                let name = format!("(layout_{variant}_{},", dtype_suffix(dtype));
                assert!(src.contains(&name), "{name}");
            }
        }
    }

    #[test]
    fn concat_launches_one_per_nonempty_input() {
        let d = |s: &[usize]| TensorDesc::new(DType::F16, s).unwrap();
        let plan = Concat { axis: 1 }
            .plan(&[&d(&[2, 3]), &d(&[2, 0]), &d(&[2, 5])])
            .unwrap();
        let l = layout(&plan, Arch::SM80, &[16, 32, 48], 64);
        assert_eq!(l.len(), 2);
        let KernelArgs::Layout(p) = l[1].args else {
            panic!()
        };
        assert_eq!(
            (p.x, p.n, p.width, p.out_width, p.offset),
            (48, 10, 5, 8, 3)
        );
        assert_eq!(l[1].kernel, "layout_concat_f16");
    }

    #[test]
    fn tiled_transpose_when_the_innermost_pair_swaps() {
        let plan = |shape: &[usize], perm: &[i64]| {
            Transpose {
                perm: Some(perm.to_vec()),
            }
            .plan(&TensorDesc::new(DType::F16, shape).unwrap())
            .unwrap()
        };
        // NCHW → NHWC at ResNet size: [8, 64, 3136] → [8, 3136, 64], 8 · 98 · 2 tiles.
        let l = layout(&plan(&[8, 64, 56, 56], &[0, 2, 3, 1]), Arch::SM80, &[0], 0);
        assert_eq!(l[0].kernel, "layout_transpose_tiled_f16");
        assert_eq!(l[0].grid, [8 * 98 * 2, 1, 1]);
        let KernelArgs::Layout(p) = l[0].args else {
            panic!()
        };
        assert_eq!((p.rank, &p.dims[..3]), (3, &[8, 3136, 64][..]));
        assert_eq!(&p.strides[..3], &[64 * 3136, 1, 3136]);
        // A side under MIN_TILED, or the innermost pair not swapped: the gather.
        for (shape, perm) in [
            (&[8, 3, 56, 56][..], &[0, 2, 3, 1][..]),
            (&[20, 30, 40], &[2, 1, 0]),
        ] {
            let l = layout(&plan(shape, perm), Arch::SM80, &[0], 0);
            assert_eq!(l[0].kernel, "layout_transpose_f16", "{shape:?} {perm:?}");
        }
    }

    #[test]
    fn transpose_params_and_empty_outputs() {
        let plan = Transpose {
            perm: Some(vec![0, 2, 3, 1]),
        }
        .plan(&TensorDesc::new(DType::F32, &[2, 3, 4, 5]).unwrap())
        .unwrap();
        let l = layout(&plan, Arch::SM80, &[0], 0);
        let KernelArgs::Layout(p) = l[0].args else {
            panic!()
        };
        assert_eq!(p.rank, 3);
        assert_eq!(&p.dims[..3], &[2, 20, 3]);
        assert_eq!(&p.strides[..3], &[60, 1, 20]);
        let empty = Transpose { perm: None }
            .plan(&TensorDesc::new(DType::F32, &[0, 3]).unwrap())
            .unwrap();
        assert!(layout(&empty, Arch::SM80, &[0], 0).is_empty());
    }
}

/// The kernels themselves on the CPU emulator, beyond the conformance suite: every kernel
/// against the index formula (bit copies: exact), tensors off 16-byte boundaries, ragged and
/// exact tiles, permuted outer dimensions, and grid-stride loops (grids cut down).
#[cfg(all(test, feature = "emu"))]
mod emu_tests {
    use super::super::emu_harness::{run, values, Placed};
    use super::*;
    use crate::backend::EmuBackend;
    use crate::dtype::DType;
    use crate::ops::{Concat, Flatten, Transpose};
    use crate::tensor::TensorDesc;

    /// Runs `plan` on inputs of `shapes` placed `shift` elements into their buffers, each grid
    /// replaced by `grid`; returns the output (after the shift), the inputs and the kernels.
    fn launch(
        plan: &LayoutPlan,
        shapes: &[&[usize]],
        shift: usize,
        grid: Option<[u32; 3]>,
    ) -> (Vec<f64>, Vec<Vec<f64>>, Vec<String>) {
        let emu = EmuBackend::new();
        let dtype = plan.dtype;
        let xs: Vec<Placed> = (shapes.iter().enumerate())
            .map(|(k, s)| {
                let n = s.iter().product();
                Placed::upload(&emu, dtype, &values(n, k as u64 + 1, -4.0, 4.0), shift)
            })
            .collect();
        let y = Placed::poisoned(&emu, dtype, plan.output.len(), shift);
        let ptrs: Vec<Ptr> = xs.iter().map(Placed::addr).collect();
        let all: Vec<&Placed> = xs.iter().chain([&y]).collect();
        let kernels = run(&emu, layout(plan, Arch::SM80, &ptrs, y.addr()), grid, &all);
        let inputs = xs.iter().map(|x| x.download(&emu)).collect();
        (y.download(&emu), inputs, kernels)
    }

    /// Transpose(`perm`) of `shape` matches the index formula exactly; returns the kernel.
    fn transpose(
        dtype: DType,
        shape: &[usize],
        perm: &[usize],
        shift: usize,
        grid: Option<[u32; 3]>,
    ) -> String {
        let plan = Transpose {
            perm: Some(perm.iter().map(|&a| a as i64).collect()),
        }
        .plan(&TensorDesc::new(dtype, shape).unwrap())
        .unwrap();
        let (got, x, mut k) = launch(&plan, &[shape], shift, grid);
        let mut xs = vec![1; shape.len()];
        for i in (0..shape.len() - 1).rev() {
            xs[i] = xs[i + 1] * shape[i + 1];
        }
        for (j, &g) in got.iter().enumerate() {
            let (mut r, mut xi) = (j, 0);
            for &a in perm.iter().rev() {
                xi += r % shape[a] * xs[a];
                r /= shape[a];
            }
            assert_eq!(
                g, x[0][xi],
                "{dtype} {shape:?} {perm:?} shift {shift} {k:?}: element {j}"
            );
        }
        assert_eq!(k.len(), 1);
        k.remove(0)
    }

    #[test]
    fn transposes_tiled_and_gathered() {
        let cases: &[(&[usize], &[usize], &str)] = &[
            // NCHW ↔ NHWC: ragged and exact tiles.
            (&[2, 40, 7, 9], &[0, 2, 3, 1], "tiled"),
            (&[2, 7, 9, 40], &[0, 3, 1, 2], "tiled"),
            (&[1, 64, 8, 8], &[0, 2, 3, 1], "tiled"),
            (&[67, 130], &[1, 0], "tiled"),
            (&[16, 33], &[1, 0], "tiled"),
            // Outer dimensions permuted too.
            (&[3, 2, 20, 35], &[1, 0, 3, 2], "tiled"),
            // A side shorter than MIN_TILED, or not the innermost pair: the gather.
            (&[2, 3, 4, 5], &[0, 2, 3, 1], "layout_transpose_f"),
            (&[5, 100], &[1, 0], "layout_transpose_f"),
            (&[20, 30, 40], &[2, 1, 0], "layout_transpose_f"),
        ];
        for dtype in DType::ALL {
            for &(shape, perm, kernel) in cases {
                for shift in [0, 1] {
                    for grid in [None, Some([1, 1, 1]), Some([3, 1, 1])] {
                        let k = transpose(dtype, shape, perm, shift, grid);
                        assert!(k.contains(kernel), "{shape:?} {perm:?}: {k}");
                    }
                }
            }
        }
    }

    #[test]
    fn copies_and_concats() {
        for dtype in DType::ALL {
            for shift in [0, 1, 3] {
                for grid in [None, Some([1, 1, 1])] {
                    let shape = [3, 5, 67];
                    let plan = Flatten { axis: 1 }
                        .plan(&TensorDesc::new(dtype, &shape).unwrap())
                        .unwrap();
                    let (got, x, k) = launch(&plan, &[&shape], shift, grid);
                    assert_eq!(got, x[0], "{dtype} copy shift {shift} {k:?}");

                    let shapes: [&[usize]; 3] = [&[4, 3, 5], &[4, 1, 5], &[4, 6, 5]];
                    let descs = shapes.map(|s| TensorDesc::new(dtype, s).unwrap());
                    let plan = Concat { axis: 1 }.plan(&descs.each_ref()).unwrap();
                    let (got, x, k) = launch(&plan, &shapes, shift, grid);
                    let want: Vec<f64> = (0..4)
                        .flat_map(|r| {
                            x.iter().flat_map(move |xi| {
                                let w = xi.len() / 4;
                                xi[r * w..(r + 1) * w].iter().copied()
                            })
                        })
                        .collect();
                    assert_eq!(got, want, "{dtype} concat shift {shift} {k:?}");
                }
            }
        }
    }
}
