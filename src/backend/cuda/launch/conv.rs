//! Launches for `kernels/conv.cu`: which convolution kernel computes a [`ConvPlan`], its grid
//! and block, and the [`ConvParams`] of each launch.
//!
//! - One input channel per group (depthwise, any channel multiplier): `conv_depthwise_<dtype>`,
//!   one thread per output element, grid x over (output plane, 256-pixel tile).
//! - Everything else: implicit GEMM per group (M = n·p·q output pixels, N = k/group output
//!   channels, K = (c/group)·r·s), grid (M tiles, N tiles, groups). FP32 runs on CUDA cores
//!   (`conv_simt_f32`, 128×128 tiles); FP16 on tensor cores with the tile of 128×128, 128×64 or
//!   64×64 that [`ConvKernel::choose`] estimates fastest.
//!
//! The kernels index one launch's output pixels and channel offsets in 32 bits: a plan whose
//! n·p·q (or, depthwise, number of blocks) exceeds that is split into launches over image ranges,
//! and one with more groups than grid z allows into launches over group ranges. A single image
//! must have fewer than 2³¹ input and output elements.

use super::{blocks, dtype_suffix, Arch, Family, KernelArgs, Launch, Ptr, Target};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{Clamp, ConvPlan};

/// `conv_tc128x128_f16` block tile (M × N) and threads (`CONV_TC128X128_*` in conv.cu).
pub const TC128X128: Tile = Tile {
    bm: 128,
    bn: 128,
    threads: 256,
};
/// `conv_tc128x64_f16` (`CONV_TC128X64_*`).
pub const TC128X64: Tile = Tile {
    bm: 128,
    bn: 64,
    threads: 256,
};
/// `conv_tc64x64_f16` (`CONV_TC64X64_*`).
pub const TC64X64: Tile = Tile {
    bm: 64,
    bn: 64,
    threads: 128,
};
/// `conv_simt_f32` (`CONV_SIMT_*`).
pub const SIMT: Tile = Tile {
    bm: 128,
    bn: 128,
    threads: 256,
};
/// `conv_depthwise_*` threads, one output pixel each (`CONV_DW_THREADS`).
pub const DW_THREADS: usize = 256;

/// SMs the FP16 tile choice plans for (an H100 SXM has 132, an A100 108).
pub const PLAN_SMS: usize = 132;

/// Grid y and z limit.
const GRID_YZ_MAX: usize = 65_535;

/// Mirrors `struct ConvParams` of `kernels/conv.cu`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvParams {
    /// Input `[n, c, h, w]` at the launch's first image.
    pub x: Ptr,
    /// Weights `[k, c/group, r, s]`.
    pub w: Ptr,
    /// Bias `[k]`, or 0 (NULL).
    pub bias: Ptr,
    /// Output `[n, k, p, q]` at the launch's first image.
    pub y: Ptr,
    /// The residual sum `[n, k, p, q]` at the launch's first image, or 0 (NULL).
    pub sum: Ptr,
    /// c·h·w.
    pub x_image: i64,
    /// k·p·q.
    pub y_image: i64,
    /// (c/group)·h·w.
    pub x_group: i64,
    /// (k/group)·(c/group)·r·s.
    pub w_group: i64,
    /// n·p·q of the launch's images.
    pub m: i32,
    /// (c/group)·r·s.
    pub kdim: i32,
    pub k: i32,
    /// Output channels per group.
    pub kg: i32,
    /// The group of `blockIdx.z == 0`.
    pub group0: i32,
    pub h: i32,
    pub w_in: i32,
    pub hw: i32,
    pub r: i32,
    pub s: i32,
    pub rs: i32,
    pub p: i32,
    pub q: i32,
    pub pq: i32,
    pub stride_h: i32,
    pub stride_w: i32,
    pub dil_h: i32,
    pub dil_w: i32,
    pub pad_h: i32,
    pub pad_w: i32,
    /// The fused ReLU / Clip after the bias and sum: `min(max(y, lo), hi)`; infinite bounds when
    /// there is none.
    pub lo: f32,
    pub hi: f32,
    /// 1: FP16 input tiles by 16-byte `cp.async` (see [`direct_input`]).
    pub a_async: i32,
    /// 1: FP16 weight tiles by 16-byte `cp.async` (K % 8 == 0 and `w` 16-byte aligned).
    pub b_async: i32,
    /// Depthwise: blocks per output plane.
    pub tiles: i32,
}

/// An implicit GEMM block tile and its threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub bm: usize,
    pub bn: usize,
    pub threads: usize,
}

/// The kernel that computes a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernel {
    /// FP16 implicit GEMM on tensor cores, 128×128 tiles.
    Tc128x128,
    /// FP16 implicit GEMM on tensor cores, 128×64 tiles.
    Tc128x64,
    /// FP16 implicit GEMM on tensor cores, 64×64 tiles.
    Tc64x64,
    /// FP32 implicit GEMM on CUDA cores, 128×128 tiles.
    Simt,
    /// Direct convolution, one input channel per group.
    Depthwise,
}

impl ConvKernel {
    /// The kernel for `plan`. FP16: the tensor-core tile with the least estimated time, taken
    /// as (blocks on the busiest of [`PLAN_SMS`] SMs) × (tile area) / (relative efficiency of
    /// the tile: bigger tiles reuse each loaded element more); ties go to the bigger tile.
    pub fn choose(plan: &ConvPlan) -> ConvKernel {
        if plan.c_per_group() == 1 {
            return ConvKernel::Depthwise;
        }
        if plan.dtype == DType::F32 {
            return ConvKernel::Simt;
        }
        let cost = |kernel: ConvKernel, efficiency: usize| {
            let t = kernel.tile();
            gemm_blocks(plan, t).div_ceil(PLAN_SMS) * t.bm * t.bn * 100 / efficiency
        };
        [
            (ConvKernel::Tc128x128, 100),
            (ConvKernel::Tc128x64, 90),
            (ConvKernel::Tc64x64, 75),
        ]
        .into_iter()
        .min_by_key(|&(kernel, efficiency)| cost(kernel, efficiency))
        .map(|(kernel, _)| kernel)
        .unwrap_or(ConvKernel::Tc128x128)
    }

    /// The `<variant>` of the kernel name `conv_<variant>_<dtype>`.
    pub fn variant(self) -> &'static str {
        match self {
            ConvKernel::Tc128x128 => "tc128x128",
            ConvKernel::Tc128x64 => "tc128x64",
            ConvKernel::Tc64x64 => "tc64x64",
            ConvKernel::Simt => "simt",
            ConvKernel::Depthwise => "depthwise",
        }
    }

    /// The block tile (for the depthwise kernel: 1×1 and its threads).
    pub fn tile(self) -> Tile {
        match self {
            ConvKernel::Tc128x128 => TC128X128,
            ConvKernel::Tc128x64 => TC128X64,
            ConvKernel::Tc64x64 => TC64X64,
            ConvKernel::Simt => SIMT,
            ConvKernel::Depthwise => Tile {
                bm: 1,
                bn: 1,
                threads: DW_THREADS,
            },
        }
    }
}

/// Blocks of an implicit GEMM over the whole plan with tile `t`.
fn gemm_blocks(plan: &ConvPlan, t: Tile) -> usize {
    (plan.n * plan.p * plan.q).div_ceil(t.bm) * plan.k_per_group().div_ceil(t.bn) * plan.group
}

/// Whether the implicit GEMM's A operand is the input itself, in runs of 8 pixels that 16-byte
/// copies can move: a 1×1 window, stride 1, no padding (so p·q = h·w) and p·q % 8 == 0 (a run
/// never straddles two images or channels).
pub fn direct_input(plan: &ConvPlan) -> bool {
    plan.r == 1
        && plan.s == 1
        && plan.stride == [1, 1]
        && plan.pad == [0, 0]
        && (plan.p, plan.q) == (plan.h, plan.w)
        && (plan.p * plan.q).is_multiple_of(8)
}

/// `v` as a kernel `int`: beyond `i32::MAX` a typed error, never a panic.
fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| too_big(format!("{what} = {v}")))
}

/// The error for a convolution the CUDA kernels cannot index.
fn too_big(what: String) -> Error {
    Error::shape(
        "Conv",
        format!(
            "{what} exceeds the CUDA kernels' 32-bit indices (at most {}); the CPU backend runs it",
            i32::MAX
        ),
    )
}

/// The launches that compute `plan`: `x` holds the device addresses of its operands in the
/// op's order (input, weights, then the residual sum and the bias when the plan has them) and
/// `y` the output's. Every GPU of compute capability 8.0 or newer runs the sm_80 kernels. No
/// launch for an empty output.
pub fn conv(plan: &ConvPlan, arch: Arch, x: &[Ptr], y: Ptr) -> Result<Vec<Launch>> {
    let (w, bias, sum) = (
        x[1],
        plan.bias_input().map(|i| x[i]),
        plan.sum_input().map(|i| x[i]),
    );
    let x = x[0];
    debug_assert!(
        arch >= Arch::SM80,
        "conv kernels need sm_80 or newer, got {arch}"
    );
    if plan.output.is_empty() {
        return Ok(Vec::new());
    }
    let kernel = ConvKernel::choose(plan);
    let Tile { bm, bn, threads } = kernel.tile();
    let (cg, kg) = (plan.c_per_group(), plan.k_per_group());
    let (hw, pq, rs) = (plan.h * plan.w, plan.p * plan.q, plan.r * plan.s);
    let kdim = cg * rs;
    let esize = plan.dtype.size() as u64;
    let tiles = pq.div_ceil(DW_THREADS);
    let [lo, hi] = Clamp::bounds(plan.clamp);
    let base = ConvParams {
        x,
        w,
        bias: bias.unwrap_or(0),
        y,
        sum: sum.unwrap_or(0),
        x_image: int(plan.c * hw, "c·h·w (one input image)")?.into(),
        y_image: int(plan.k * pq, "k·p·q (one output image)")?.into(),
        x_group: (cg * hw) as i64,
        w_group: (kg * kdim) as i64,
        m: 0,
        kdim: int(kdim, "(c/group)·r·s")?,
        k: int(plan.k, "k")?,
        kg: int(kg, "k/group")?,
        group0: 0,
        h: int(plan.h, "h")?,
        w_in: int(plan.w, "w")?,
        hw: int(hw, "h·w")?,
        r: int(plan.r, "r")?,
        s: int(plan.s, "s")?,
        rs: int(rs, "r·s")?,
        p: int(plan.p, "p")?,
        q: int(plan.q, "q")?,
        pq: int(pq, "p·q")?,
        stride_h: int(plan.stride[0], "stride")?,
        stride_w: int(plan.stride[1], "stride")?,
        dil_h: int(plan.dilation[0], "dilation")?,
        dil_w: int(plan.dilation[1], "dilation")?,
        pad_h: int(plan.pad[0], "pad")?,
        pad_w: int(plan.pad[1], "pad")?,
        lo,
        hi,
        a_async: (plan.dtype == DType::F16 && direct_input(plan) && x.is_multiple_of(16)) as i32,
        b_async: (plan.dtype == DType::F16 && kdim % 8 == 0 && w.is_multiple_of(16)) as i32,
        tiles: int(tiles, "depthwise tiles per plane")?,
    };
    // Images per launch, so that each launch's M (or depthwise blocks) fits an i32.
    let per_image = match kernel {
        ConvKernel::Depthwise => plan.k * tiles,
        _ => pq,
    };
    let images = (i32::MAX as usize - bm) / per_image;
    if images == 0 {
        return Err(too_big(format!("one image's {per_image} blocks or pixels")));
    }
    let n_tiles = kg.div_ceil(bn);
    if n_tiles > GRID_YZ_MAX {
        return Err(Error::shape(
            "Conv",
            format!("k/group = {kg} needs {n_tiles} blocks along the CUDA grid's y axis, more than its {GRID_YZ_MAX}; the CPU backend runs it"),
        ));
    }
    let kernel_name = format!("conv_{}_{}", kernel.variant(), dtype_suffix(plan.dtype));
    let launch = |grid: [u32; 3], args: ConvParams| Launch {
        family: Family::Conv,
        target: Target::Sm80,
        kernel: kernel_name.clone(),
        grid,
        block: [threads as u32, 1, 1],
        args: KernelArgs::Conv(args),
    };
    let mut launches = Vec::new();
    for n0 in (0..plan.n).step_by(images) {
        let nc = images.min(plan.n - n0);
        let mut args = base;
        args.x = x + n0 as u64 * plan.c as u64 * hw as u64 * esize;
        args.y = y + n0 as u64 * plan.k as u64 * pq as u64 * esize;
        if let Some(sum) = sum {
            args.sum = sum + n0 as u64 * plan.k as u64 * pq as u64 * esize;
        }
        args.m = int(nc * pq, "n·p·q")?;
        if kernel == ConvKernel::Depthwise {
            launches.push(launch(
                [int(nc * plan.k * tiles, "blocks")? as u32, 1, 1],
                args,
            ));
            continue;
        }
        for g0 in (0..plan.group).step_by(GRID_YZ_MAX) {
            args.group0 = int(g0, "group")?;
            let grid = [
                blocks(nc * pq, bm),
                n_tiles as u32,
                GRID_YZ_MAX.min(plan.group - g0) as u32,
            ];
            launches.push(launch(grid, args));
        }
    }
    Ok(launches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{AutoPad, Conv};
    use crate::tensor::TensorDesc;

    fn plan(dtype: DType, x: [usize; 4], w: [usize; 4], op: Conv, bias: bool) -> ConvPlan {
        let d = |s: &[usize]| TensorDesc::new(dtype, s).unwrap();
        let b = d(&[w[0]]);
        op.plan(&d(&x), &d(&w), bias.then_some(&b), None).unwrap()
    }

    fn grouped(group: usize) -> Conv {
        Conv {
            group,
            pads: [1; 4],
            ..Conv::default()
        }
    }

    const X: Ptr = 0x1000_0000;
    const W: Ptr = 0x2000_0000;
    const B: Ptr = 0x3000_0000;
    const Y: Ptr = 0x4000_0000;

    fn launches(plan: &ConvPlan) -> Vec<Launch> {
        let x: &[Ptr] = if plan.bias { &[X, W, B] } else { &[X, W] };
        conv(plan, Arch::SM80, x, Y).unwrap()
    }

    fn params(l: &Launch) -> ConvParams {
        match l.args {
            KernelArgs::Conv(p) => p,
            _ => panic!("not a conv launch"),
        }
    }

    /// The tile constants here are the `#define`s of kernels/conv.cu.
    #[test]
    fn constants_match_the_kernel_source() {
        let src = include_str!("../../../../kernels/conv.cu");
        let define = |name: &str| crate::backend::cuda::launch::c_define(src, "conv.cu", name);
        for (kernel, name) in [
            (ConvKernel::Tc128x128, "TC128X128"),
            (ConvKernel::Tc128x64, "TC128X64"),
            (ConvKernel::Tc64x64, "TC64X64"),
            (ConvKernel::Simt, "SIMT"),
        ] {
            let t = kernel.tile();
            assert_eq!(define(&format!("CONV_{name}_BM")), t.bm, "{name}");
            assert_eq!(define(&format!("CONV_{name}_BN")), t.bn, "{name}");
            assert_eq!(define(&format!("CONV_{name}_THREADS")), t.threads, "{name}");
        }
        assert_eq!(define("CONV_DW_THREADS"), DW_THREADS);
        // Every kernel the planner names is defined in the source.
        for kernel in [
            ConvKernel::Tc128x128,
            ConvKernel::Tc128x64,
            ConvKernel::Tc64x64,
            ConvKernel::Depthwise,
        ] {
            assert!(src.contains(&format!("(conv_{}_f16,", kernel.variant())));
        }
        for kernel in [ConvKernel::Simt, ConvKernel::Depthwise] {
            assert!(src.contains(&format!("(conv_{}_f32,", kernel.variant())));
        }
        // 5 pointers, 4 i64, 25 i32 and f32, and 4 bytes of tail padding, as C lays it out.
        assert_eq!(
            std::mem::size_of::<ConvParams>(),
            5 * 8 + 4 * 8 + 25 * 4 + 4
        );
    }

    #[test]
    fn kernel_choice() {
        let dense = |dtype, n, hw, k, c, r| {
            let op = Conv {
                pads: [r / 2; 4],
                ..Conv::default()
            };
            plan(dtype, [n, c, hw, hw], [k, c, r, r], op, false)
        };
        let f16 = |n, hw, k, c, r| ConvKernel::choose(&dense(DType::F16, n, hw, k, c, r));
        // ResNet-50 conv2_x 3×3 (56², 64 channels): 25 blocks of 128×128 at batch 1; at
        // batch 32, 784 blocks of which half of each tile's N would be wasted.
        assert_eq!(f16(1, 56, 64, 64, 3), ConvKernel::Tc64x64);
        assert_eq!(f16(32, 56, 64, 64, 3), ConvKernel::Tc128x64);
        // conv5_x 1×1 expansion (7², 512 → 2048) at batch 32: 208 blocks of 128×128.
        assert_eq!(f16(32, 7, 2048, 512, 1), ConvKernel::Tc128x128);
        // conv4_x 3×3 (14², 256) at batch 32: 98 blocks of 128×128, one wave either way.
        assert_eq!(f16(32, 14, 256, 256, 3), ConvKernel::Tc128x128);
        // Large: 128×128.
        assert_eq!(f16(32, 28, 512, 128, 1), ConvKernel::Tc128x128);
        // FP32 always uses the CUDA-core kernel.
        assert_eq!(
            ConvKernel::choose(&dense(DType::F32, 1, 56, 64, 64, 3)),
            ConvKernel::Simt
        );
        for dtype in DType::ALL {
            // Depthwise, with and without a channel multiplier, and a single input channel.
            let dw = plan(dtype, [1, 8, 10, 10], [8, 1, 3, 3], grouped(8), true);
            assert_eq!(ConvKernel::choose(&dw), ConvKernel::Depthwise);
            let mult = plan(dtype, [2, 5, 12, 9], [10, 1, 5, 3], grouped(5), true);
            assert_eq!(ConvKernel::choose(&mult), ConvKernel::Depthwise);
            let single = plan(dtype, [1, 1, 9, 9], [4, 1, 3, 3], grouped(1), false);
            assert_eq!(ConvKernel::choose(&single), ConvKernel::Depthwise);
            // Grouped with several channels per group is an implicit GEMM.
            let g = plan(dtype, [2, 12, 6, 6], [12, 4, 3, 3], grouped(3), true);
            assert_ne!(ConvKernel::choose(&g), ConvKernel::Depthwise);
        }
    }

    #[test]
    fn implicit_gemm_geometry() {
        // ResNet-50 conv4_x 3×3 at batch 32, FP16: M = 32·14·14 = 6272, N = 256, K = 2304.
        let p = plan(
            DType::F16,
            [32, 256, 14, 14],
            [256, 256, 3, 3],
            grouped(1),
            true,
        );
        let l = launches(&p);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kernel, "conv_tc128x128_f16");
        assert_eq!(l[0].family, Family::Conv);
        assert_eq!(l[0].target, Target::Sm80);
        assert_eq!(l[0].grid, [49, 2, 1]);
        assert_eq!(l[0].block, [256, 1, 1]);
        let a = params(&l[0]);
        assert_eq!(
            (a.m, a.kdim, a.kg, a.k, a.group0),
            (6272, 2304, 256, 256, 0)
        );
        assert_eq!((a.x, a.w, a.bias, a.y, a.sum), (X, W, B, Y, 0));
        assert_eq!((a.pad_h, a.pad_w, a.p, a.q, a.pq), (1, 1, 14, 14, 196));
        assert_eq!((a.x_image, a.y_image), (256 * 196, 256 * 196));
        assert_eq!((a.x_group, a.w_group), (256 * 196, 256 * 2304));
        assert_eq!(
            (a.lo, a.hi),
            (f32::NEG_INFINITY, f32::INFINITY),
            "no ReLU or Clip"
        );
        assert_eq!((a.a_async, a.b_async), (0, 1));

        // Grouped, small, FP16: 64×64 tiles, grid z over groups, per-group strides.
        let g = plan(DType::F16, [2, 12, 6, 6], [12, 4, 3, 3], grouped(3), false);
        let l = launches(&g);
        assert_eq!(l[0].kernel, "conv_tc64x64_f16");
        assert_eq!((l[0].grid, l[0].block), ([2, 1, 3], [128, 1, 1]));
        let a = params(&l[0]);
        assert_eq!(
            (a.m, a.kdim, a.kg, a.x_group, a.w_group),
            (72, 36, 4, 4 * 36, 4 * 36)
        );
        assert_eq!(
            (a.bias, a.b_async),
            (0, 0),
            "no bias; K = 36 is not a multiple of 8"
        );

        // FP32: CUDA-core kernel; strides, dilations, asymmetric pads pass through.
        let op = Conv {
            strides: [2, 1],
            pads: [2, 1, 0, 2],
            dilations: [1, 2],
            relu: true,
            ..Conv::default()
        };
        let f = plan(DType::F32, [2, 5, 12, 9], [10, 5, 5, 3], op, true);
        let l = launches(&f);
        assert_eq!(l[0].kernel, "conv_simt_f32");
        assert_eq!(l[0].grid, [blocks(2 * f.p * f.q, 128), 1, 1]);
        let a = params(&l[0]);
        assert_eq!((a.stride_h, a.stride_w, a.dil_h, a.dil_w), (2, 1, 1, 2));
        assert_eq!((a.pad_h, a.pad_w, a.b_async), (2, 1, 0));
        assert_eq!((a.lo, a.hi), (0.0, f32::INFINITY), "the ReLU");
    }

    #[test]
    fn input_tiles_use_cp_async_only_for_aligned_pointwise_convolutions() {
        let a_async = |x: [usize; 4], op: Conv, xp: Ptr| {
            let p = plan(DType::F16, x, [16, x[1], 1, 1], op, false);
            params(&conv(&p, Arch::SM80, &[xp, W], Y).unwrap()[0]).a_async
        };
        // ResNet-50 1×1 layers at 56² and 28²: direct; 14² = 196 pixels is not a multiple of 8.
        assert_eq!(a_async([2, 64, 56, 56], Conv::default(), X), 1);
        assert_eq!(a_async([1, 128, 28, 28], Conv::default(), X), 1);
        assert_eq!(a_async([1, 256, 14, 14], Conv::default(), X), 0);
        assert_eq!(a_async([1, 64, 56, 56], Conv::default(), X + 8), 0);
        let strided = Conv {
            strides: [2, 2],
            ..Conv::default()
        };
        assert_eq!(a_async([1, 64, 56, 56], strided, X), 0);
        let padded_end = Conv {
            pads: [0, 0, 1, 1],
            ..Conv::default()
        };
        assert_eq!(a_async([1, 64, 16, 16], padded_end, X), 0);
        // FP32 never.
        let f = plan(
            DType::F32,
            [1, 64, 8, 8],
            [16, 64, 1, 1],
            Conv::default(),
            false,
        );
        assert_eq!(params(&launches(&f)[0]).a_async, 0);
    }

    #[test]
    fn weight_tiles_use_cp_async_only_when_aligned() {
        let p = plan(
            DType::F16,
            [1, 16, 8, 8],
            [16, 16, 1, 1],
            Conv::default(),
            false,
        );
        assert_eq!(
            params(&conv(&p, Arch::SM80, &[X, W], Y).unwrap()[0]).b_async,
            1
        );
        assert_eq!(
            params(&conv(&p, Arch::SM80, &[X, W + 2], Y).unwrap()[0]).b_async,
            0
        );
        let odd = plan(DType::F16, [1, 3, 8, 8], [16, 3, 7, 7], grouped(1), false);
        assert_eq!(params(&launches(&odd)[0]).b_async, 0, "K = 147");
    }

    #[test]
    fn depthwise_geometry() {
        let op = Conv {
            strides: [2, 2],
            auto_pad: AutoPad::SameUpper,
            group: 32,
            ..Conv::default()
        };
        // 2 images × 64 channels (multiplier 2) × ceil(20·20 / 256) = 2 tiles.
        let p = plan(DType::F16, [2, 32, 40, 40], [64, 1, 3, 3], op, true);
        let l = launches(&p);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kernel, "conv_depthwise_f16");
        assert_eq!((l[0].grid, l[0].block), ([2 * 64 * 2, 1, 1], [256, 1, 1]));
        let a = params(&l[0]);
        assert_eq!((a.tiles, a.kg, a.k, a.pq, a.rs), (2, 2, 64, 400, 9));
    }

    #[test]
    fn empty_output_launches_nothing() {
        for (x, w) in [([0, 3, 5, 5], [4, 3, 3, 3]), ([2, 3, 5, 5], [0, 3, 3, 3])] {
            for dtype in DType::ALL {
                assert!(launches(&plan(dtype, x, w, Conv::default(), false)).is_empty());
            }
        }
    }

    #[test]
    fn no_input_channels_still_writes_the_output() {
        // c = 0: K = 0, the output is the bias.
        let p = plan(
            DType::F16,
            [1, 0, 5, 5],
            [4, 0, 3, 3],
            Conv::default(),
            true,
        );
        let l = launches(&p);
        assert_eq!(l.len(), 1);
        assert_eq!(params(&l[0]).kdim, 0);
        assert_ne!(l[0].kernel, "conv_depthwise_f16");
    }

    #[test]
    fn images_beyond_32_bit_indices_are_errors_not_panics() {
        // One 50000×50000 image: 2.5·10^9 elements, a valid plan the kernels cannot index.
        let p = plan(
            DType::F32,
            [1, 1, 50_000, 50_000],
            [1, 1, 1, 1],
            Conv::default(),
            false,
        );
        let e = conv(&p, Arch::SM80, &[X, W], Y).unwrap_err();
        assert!(e.to_string().contains("32-bit indices"), "{e}");
    }

    #[test]
    fn large_batches_and_many_groups_split_into_launches() {
        // n·p·q = 40000·256·256 > 2^31: launches over image ranges, pointers advanced.
        let p = plan(
            DType::F32,
            [40_000, 2, 256, 256],
            [2, 2, 1, 1],
            Conv::default(),
            false,
        );
        let l = launches(&p);
        let per = (i32::MAX as usize - SIMT.bm) / 65_536;
        assert_eq!(l.len(), 40_000usize.div_ceil(per));
        assert_eq!(params(&l[0]).m as usize, per * 65_536);
        let a1 = params(&l[1]);
        assert_eq!(a1.m as usize, (40_000 - per) * 65_536);
        assert_eq!(a1.x, X + (per * 2 * 65_536 * 4) as u64);
        assert_eq!(a1.y, Y + (per * 2 * 65_536 * 4) as u64);
        // A residual sum (input 2, before the bias) advances as the output does.
        let d = |s: &[usize]| TensorDesc::new(DType::F32, s).unwrap();
        let summed = Conv {
            sum: true,
            ..Conv::default()
        };
        let out = d(&[40_000, 2, 256, 256]);
        let s = summed
            .plan(&out, &d(&[2, 2, 1, 1]), Some(&d(&[2])), Some(&out))
            .unwrap();
        const S: Ptr = 0x5000_0000;
        let l = conv(&s, Arch::SM80, &[X, W, S, B], Y).unwrap();
        let (a0, a1) = (params(&l[0]), params(&l[1]));
        assert_eq!((a0.bias, a0.sum, a1.bias), (B, S, B));
        assert_eq!(a1.sum, S + (per * 2 * 65_536 * 4) as u64);

        // 70000 groups of 2 input channels: grid z covers 65535 groups per launch.
        let g = plan(
            DType::F16,
            [1, 140_000, 1, 1],
            [70_000, 2, 1, 1],
            grouped(70_000),
            false,
        );
        let l = launches(&g);
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].grid[2], params(&l[0]).group0), (65_535, 0));
        assert_eq!(
            (l[1].grid[2], params(&l[1]).group0),
            (70_000 - 65_535, 65_535)
        );
    }
}
