//! Launches for `kernels/layout.cu`: `layout_copy_*` for the contiguous copies (16-byte slots
//! when `x` and `y` are 16-byte aligned), `layout_transpose_*` for a transpose over the plan's
//! merged dimensions (at most `MAX_RANK`), and one `layout_concat_*` launch per non-empty
//! Concat input. Every kernel grid-strides, so grids are capped at `MAX_BLOCKS`.

use super::{blocks, dtype_suffix, Arch, Family, KernelArgs, Launch, Ptr, Target};
use crate::ops::{LayoutKind, LayoutPlan};

/// `LAYOUT_THREADS`: threads of a block.
pub const THREADS: u32 = 256;
/// `LAYOUT_MAX_RANK`: dimensions of a transpose (the plan merges adjacent ones; `ops::layout`
/// refuses more).
pub const MAX_RANK: usize = 8;
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
            vec![launch("transpose", args)]
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
        assert_eq!(MAX_RANK, crate::ops::layout::MAX_TRANSPOSE_RANK);
        for variant in ["copy", "transpose", "concat"] {
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
