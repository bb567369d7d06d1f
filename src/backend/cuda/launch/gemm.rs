//! Launches for `kernels/gemm.cu`: the kernel (CUDA-core SGEMM for FP32; for FP16 a tensor-core
//! cp.async pipeline for B along N or along K, or the gathering variant), its grid over
//! N tiles × M tiles × batch, and the `GemmParams` of each launch — batch dimensions merged where
//! their strides allow, the rest split into several launches with base offsets, and the
//! vector-load paths chosen per launch from the operands' strides and addresses.

use super::{blocks, dtype_suffix, Arch, Family, KernelArgs, Launch, Ptr, Target};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{Clamp, GemmPlan, MatLayout};

/// `GEMM_MAX_BATCH_DIMS`: batch dimensions one launch unravels.
pub const MAX_BATCH_DIMS: usize = 4;
/// `SG_BM`, `SG_BN`, `SG_THREADS`: the `gemm_simt_f32` block tile and block size.
pub const SG_BM: usize = 128;
pub const SG_BN: usize = 128;
pub const SG_THREADS: u32 = 256;
/// `TC_BM`, `TC_BN`, `TC_THREADS`: the FP16 kernels' block tile and block size.
pub const TC_BM: usize = 128;
pub const TC_BN: usize = 128;
pub const TC_THREADS: u32 = 256;

/// `GemmParams::flags` bits (`GEMM_*` in `gemm.cu`).
pub const HAS_C: i32 = 1;
pub const A_ALONG_K: i32 = 4;
pub const A_VEC: i32 = 8;
pub const B_ALONG_K: i32 = 16;
pub const B_VEC: i32 = 32;
pub const Y_VEC: i32 = 64;

/// The most blocks along grid y and z.
const MAX_GRID_YZ: usize = 65535;

/// Mirrors the C params struct of `kernels/gemm.cu` (strides and offsets in elements).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmParams {
    pub a: Ptr,
    pub b: Ptr,
    pub c: Ptr,
    pub y: Ptr,
    pub a_row: i64,
    pub a_col: i64,
    pub b_row: i64,
    pub b_col: i64,
    pub c_row: i64,
    pub c_col: i64,
    /// Per batch dimension (outermost first), A's and B's batch strides (0: broadcast).
    pub a_batch: [i64; MAX_BATCH_DIMS],
    pub b_batch: [i64; MAX_BATCH_DIMS],
    /// The batch dimensions, outermost first; 1 where unused.
    pub batch: [i64; MAX_BATCH_DIMS],
    /// Elements between consecutive output matrices (`m·n` of the plan).
    pub y_batch: i64,
    /// The batch index of `blockIdx.z == 0`.
    pub z0: i64,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub flags: i32,
    pub alpha: f32,
    pub beta: f32,
    /// The fused ReLU / Clip: `min(max(y, lo), hi)`; infinite bounds when there is none.
    pub lo: f32,
    pub hi: f32,
}

/// The kernels of `gemm.cu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// `gemm_simt_f32`.
    Simt,
    /// `gemm_tc_f16`: A contiguous along K, B along N, 8-element aligned.
    Tc,
    /// `gemm_tcnt_f16`: A and B contiguous along K (B transposed), 8-element aligned.
    TcNt,
    /// `gemm_tcgather_f16`: any strides.
    TcGather,
}

impl Kernel {
    fn variant(self) -> &'static str {
        match self {
            Kernel::Simt => "simt",
            Kernel::Tc => "tc",
            Kernel::TcNt => "tcnt",
            Kernel::TcGather => "tcgather",
        }
    }

    /// Block tile (M, N) and threads per block.
    fn tile(self) -> (usize, usize, u32) {
        match self {
            Kernel::Simt => (SG_BM, SG_BN, SG_THREADS),
            Kernel::Tc | Kernel::TcNt | Kernel::TcGather => (TC_BM, TC_BN, TC_THREADS),
        }
    }
}

/// One batch dimension after merging: its size and A's and B's strides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BatchDim {
    size: usize,
    a: usize,
    b: usize,
}

/// The plan's batch dimensions, outermost first, without size-1 dimensions, with each pair of
/// adjacent dimensions that step through A and B (and Y, always contiguous) as one merged.
fn batch_dims(plan: &GemmPlan) -> Vec<BatchDim> {
    let mut dims: Vec<BatchDim> = Vec::new(); // innermost first while building
    for d in (0..plan.batch_dims.len()).rev() {
        let (size, a, b) = (
            plan.batch_dims[d],
            plan.a_batch_strides[d],
            plan.b_batch_strides[d],
        );
        if size == 1 {
            continue;
        }
        match dims.last_mut() {
            Some(inner) if a == inner.a * inner.size && b == inner.b * inner.size => {
                inner.size *= size;
            }
            _ => dims.push(BatchDim { size, a, b }),
        }
    }
    dims.reverse();
    dims
}

/// How one operand is loaded: `along_k` when its runs go along K (else along M or N), `vec`
/// when full runs of `run` elements may be read with one 16-byte load.
fn runs(
    mn_stride: usize,
    k_stride: usize,
    batch: &[BatchDim],
    batch_stride: fn(&BatchDim) -> usize,
    ptr: Ptr,
    run: usize,
) -> (bool, bool) {
    let along_k = k_stride == 1 || (mn_stride != 1 && k_stride <= mn_stride);
    let (unit, other) = if along_k {
        (k_stride, mn_stride)
    } else {
        (mn_stride, k_stride)
    };
    let vec = unit == 1
        && other % run == 0
        && batch.iter().all(|d| batch_stride(d).is_multiple_of(run))
        && ptr.is_multiple_of(16);
    (along_k, vec)
}

/// The FP16 kernel: the cp.async pipelines need A contiguous along K and B contiguous along N
/// (`gemm_tc_f16`, N a multiple of 8) or along K (`gemm_tcnt_f16`), K a multiple of 8, every
/// other stride and batch stride a multiple of 8 elements, and both bases 16-byte aligned.
fn f16_kernel(plan: &GemmPlan, batch: &[BatchDim], a: Ptr, b: Ptr) -> Kernel {
    let aligned = plan.a.col == 1
        && plan.a.row.is_multiple_of(8)
        && plan.k.is_multiple_of(8)
        && batch.iter().all(|d| d.a % 8 == 0 && d.b % 8 == 0)
        && a.is_multiple_of(16)
        && b.is_multiple_of(16);
    if aligned && plan.b.col == 1 && plan.b.row.is_multiple_of(8) && plan.n.is_multiple_of(8) {
        Kernel::Tc
    } else if aligned && plan.b.row == 1 && plan.b.col.is_multiple_of(8) {
        Kernel::TcNt
    } else {
        Kernel::TcGather
    }
}

/// A dimension as the kernel's `int`. The planner splits M; N and K beyond `i32::MAX` elements
/// are outside what `gemm.cu` indexes: a typed error, never a panic.
fn dim(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::shape(
            "Gemm",
            format!("{what} = {v} exceeds the CUDA kernels' 32-bit indices (at most {}); the CPU backend runs it", i32::MAX),
        )
    })
}

/// The launches computing `plan`: `Y = clamp?(alpha·A·B + beta·C)` per batch index. None when
/// the output is empty. `arch` picks nothing yet: every GPU, Hopper included, runs the `sm_80`
/// PTX (an `sm_90a` wgmma variant is a later step).
pub fn gemm(
    plan: &GemmPlan,
    arch: Arch,
    a: Ptr,
    b: Ptr,
    c: Option<Ptr>,
    y: Ptr,
) -> Result<Vec<Launch>> {
    let _ = arch;
    let (m, n) = (plan.m, plan.n);
    if m == 0 || n == 0 || plan.batch() == 0 {
        return Ok(Vec::new());
    }
    let esize = plan.dtype.size() as u64;
    let at = |base: Ptr, elements: usize| base + elements as u64 * esize;
    let dims = batch_dims(plan);
    let (outer, inner) = dims.split_at(dims.len().saturating_sub(MAX_BATCH_DIMS));
    let inner_count: usize = inner.iter().map(|d| d.size).product();
    let outer_count: usize = outer.iter().map(|d| d.size).product();
    let mut batch = [1i64; MAX_BATCH_DIMS];
    let (mut a_batch, mut b_batch) = ([0i64; MAX_BATCH_DIMS], [0i64; MAX_BATCH_DIMS]);
    let first = MAX_BATCH_DIMS - inner.len();
    for (i, d) in inner.iter().enumerate() {
        batch[first + i] = d.size as i64;
        a_batch[first + i] = d.a as i64;
        b_batch[first + i] = d.b as i64;
    }
    let has_c = c.is_some() && plan.c.is_some() && plan.beta != 0.0;
    let [lo, hi] = Clamp::bounds(plan.clamp);
    let c_layout = plan.c.unwrap_or(MatLayout { row: 0, col: 0 });
    let c = c.unwrap_or(0);
    let mut launches = Vec::new();
    for o in 0..outer_count {
        // This outer batch index's offsets: the host-side part of the unravelling.
        let (mut a_off, mut b_off, mut rest) = (0, 0, o);
        for d in outer.iter().rev() {
            let i = rest % d.size;
            rest /= d.size;
            a_off += i * d.a;
            b_off += i * d.b;
        }
        let y_off = o * inner_count * m * n;
        // The row offsets below keep f16_kernel's alignment (multiples of 8 rows of A).
        let kernel = match plan.dtype {
            DType::F32 => Kernel::Simt,
            DType::F16 => f16_kernel(plan, inner, at(a, a_off), at(b, b_off)),
        };
        let (bm, bn, threads) = kernel.tile();
        for row0 in (0..m).step_by(MAX_GRID_YZ * bm) {
            let rows = (m - row0).min(MAX_GRID_YZ * bm);
            let (a, b) = (at(a, a_off + row0 * plan.a.row), at(b, b_off));
            let (c, y) = (at(c, row0 * c_layout.row), at(y, y_off + row0 * n));
            let run = 16 / esize as usize;
            let (a_k, a_vec) = runs(plan.a.row, plan.a.col, inner, |d| d.a, a, run);
            let (b_k, b_vec) = runs(plan.b.col, plan.b.row, inner, |d| d.b, b, run);
            let y_vec = match plan.dtype {
                DType::F32 => n % 4 == 0 && y % 16 == 0,
                DType::F16 => n % 2 == 0 && y % 4 == 0,
            };
            let flags = [
                (has_c, HAS_C),
                (a_k, A_ALONG_K),
                (a_vec, A_VEC),
                (b_k, B_ALONG_K),
                (b_vec, B_VEC),
                (y_vec, Y_VEC),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .fold(0, |f, (_, bit)| f | bit);
            for z0 in (0..inner_count).step_by(MAX_GRID_YZ) {
                let params = GemmParams {
                    a,
                    b,
                    c,
                    y,
                    a_row: plan.a.row as i64,
                    a_col: plan.a.col as i64,
                    b_row: plan.b.row as i64,
                    b_col: plan.b.col as i64,
                    c_row: c_layout.row as i64,
                    c_col: c_layout.col as i64,
                    a_batch,
                    b_batch,
                    batch,
                    y_batch: (m * n) as i64,
                    z0: z0 as i64,
                    m: dim(rows, "M")?,
                    n: dim(n, "N")?,
                    k: dim(plan.k, "K")?,
                    flags,
                    alpha: plan.alpha,
                    beta: plan.beta,
                    lo,
                    hi,
                };
                launches.push(Launch {
                    family: Family::Gemm,
                    target: Target::Sm80,
                    kernel: format!("gemm_{}_{}", kernel.variant(), dtype_suffix(plan.dtype)),
                    grid: [
                        blocks(n, bn),
                        blocks(rows, bm),
                        (inner_count - z0).min(MAX_GRID_YZ) as u32,
                    ],
                    block: [threads, 1, 1],
                    args: KernelArgs::Gemm(params),
                });
            }
        }
    }
    Ok(launches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Gemm, MatMul};
    use crate::tensor::TensorDesc;

    fn desc(dtype: DType, shape: &[usize]) -> TensorDesc {
        TensorDesc::new(dtype, shape).unwrap()
    }

    fn matmul(dtype: DType, a: &[usize], b: &[usize]) -> GemmPlan {
        MatMul.plan(&desc(dtype, a), &desc(dtype, b)).unwrap()
    }

    fn params(l: &Launch) -> GemmParams {
        match l.args {
            KernelArgs::Gemm(p) => p,
            _ => panic!("not a GEMM launch"),
        }
    }

    const A: Ptr = 0x10000;
    const B: Ptr = 0x20000;
    const C: Ptr = 0x30000;
    const Y: Ptr = 0x40000;

    #[test]
    fn params_match_the_c_struct() {
        // 4 pointers, 6 strides, 3 × 4 batch fields, y_batch, z0; 4 ints, 4 floats (alpha,
        // beta, and the clamp's lo, hi); no padding.
        assert_eq!(
            std::mem::size_of::<GemmParams>(),
            8 * (4 + 6 + 12 + 2) + 4 * 8
        );
        assert_eq!(std::mem::align_of::<GemmParams>(), 8);
    }

    #[test]
    fn grid_covers_ragged_shapes() {
        let plan = Gemm::default()
            .plan(
                &desc(DType::F32, &[257, 300]),
                &desc(DType::F32, &[300, 200]),
                Some(&desc(DType::F32, &[200])),
            )
            .unwrap();
        let l = gemm(&plan, Arch::SM80, A, B, Some(C), Y).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kernel, "gemm_simt_f32");
        assert_eq!(l[0].target, Target::Sm80);
        assert_eq!(l[0].grid, [2, 3, 1]);
        assert_eq!(l[0].block, [SG_THREADS, 1, 1]);
        let p = params(&l[0]);
        assert_eq!((p.m, p.n, p.k), (257, 200, 300));
        assert_eq!((p.c_row, p.c_col), (0, 1));
        assert_eq!(p.flags & HAS_C, HAS_C);
        assert_eq!(p.batch, [1; MAX_BATCH_DIMS]);
    }

    #[test]
    fn empty_outputs_launch_nothing_and_k0_launches() {
        for (a, b) in [([0, 5], [5, 3]), ([4, 5], [5, 0])] {
            let plan = matmul(DType::F32, &a, &b);
            assert!(gemm(&plan, Arch::SM80, A, B, None, Y).unwrap().is_empty());
        }
        let plan = matmul(DType::F16, &[0, 2, 3], &[3, 4]);
        assert!(gemm(&plan, Arch::SM80, A, B, None, Y).unwrap().is_empty());
        let plan = matmul(DType::F16, &[3, 0], &[0, 4]);
        let l = gemm(&plan, Arch::SM80, A, B, None, Y).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(params(&l[0]).k, 0);
    }

    #[test]
    fn beta_zero_or_absent_c_is_skipped() {
        let a = desc(DType::F32, &[3, 4]);
        let b = desc(DType::F32, &[4, 5]);
        let c = desc(DType::F32, &[3, 5]);
        for (op, c, want) in [
            (Gemm::default(), Some(&c), HAS_C),
            (Gemm::default(), None, 0),
            (
                Gemm {
                    beta: 0.0,
                    ..Gemm::default()
                },
                Some(&c),
                0,
            ),
        ] {
            let plan = op.plan(&a, &b, c).unwrap();
            let l = gemm(&plan, Arch::SM80, A, B, c.map(|_| C), Y).unwrap();
            assert_eq!(params(&l[0]).flags & HAS_C, want);
        }
    }

    #[test]
    fn contiguous_batch_dims_merge() {
        let plan = matmul(DType::F32, &[2, 3, 33, 65], &[2, 3, 65, 31]);
        let l = gemm(&plan, Arch::SM80, A, B, None, Y).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].grid, [1, 1, 6]);
        let p = params(&l[0]);
        assert_eq!(p.batch, [1, 1, 1, 6]);
        assert_eq!(p.a_batch[3], 33 * 65);
        assert_eq!(p.b_batch[3], 65 * 31);
        assert_eq!(p.y_batch, 33 * 31);
    }

    #[test]
    fn broadcast_batch_dims_stay_apart() {
        // A [2, 1, 3, 4] × B [5, 4, 6]: batch [2, 5], A strides [12, 0], B strides [0, 24].
        let plan = matmul(DType::F32, &[2, 1, 3, 4], &[5, 4, 6]);
        let p = params(&gemm(&plan, Arch::SM80, A, B, None, Y).unwrap()[0]);
        assert_eq!(p.batch, [1, 1, 2, 5]);
        assert_eq!(p.a_batch, [0, 0, 12, 0]);
        assert_eq!(p.b_batch, [0, 0, 0, 24]);
        // Both broadcast along the same dims: [3, 4] × [2, 4, 5] gives B strides only.
        let plan = matmul(DType::F32, &[3, 4], &[2, 4, 5]);
        let p = params(&gemm(&plan, Arch::SM80, A, B, None, Y).unwrap()[0]);
        assert_eq!(p.batch, [1, 1, 1, 2]);
        assert_eq!((p.a_batch[3], p.b_batch[3]), (0, 20));
    }

    #[test]
    fn more_than_four_batch_dims_split_on_the_host() {
        // Alternating broadcasts leave 6 dims that cannot merge: 2 outer dims run on the host.
        let plan = matmul(
            DType::F32,
            &[2, 1, 2, 1, 2, 1, 3, 4],
            &[1, 2, 1, 2, 1, 2, 4, 5],
        );
        assert_eq!(batch_dims(&plan).len(), 6);
        let l = gemm(&plan, Arch::SM80, A, B, None, Y).unwrap();
        assert_eq!(l.len(), 4);
        let (mn, a_mat, b_mat) = (15u64, 12u64, 20u64);
        for (o, launch) in l.iter().enumerate() {
            let p = params(launch);
            let (i0, i1) = (o as u64 / 2, o as u64 % 2);
            // A's outer dims: [2 (stride 4·a), 1 → broadcast]; B's: [broadcast, 2 (stride 4·b)].
            assert_eq!(p.a, A + 4 * (i0 * 4 * a_mat));
            assert_eq!(p.b, B + 4 * (i1 * 4 * b_mat));
            assert_eq!(p.y, Y + 4 * (o as u64 * 16 * mn));
            assert_eq!(p.batch, [2, 2, 2, 2]);
            assert_eq!(launch.grid[2], 16);
        }
    }

    /// The host-side split of more than four unmergeable batch dimensions, run by the emulator
    /// on the kernel sources, gives exactly what the CPU backend gives (the values are chosen
    /// so that every sum is exact in FP16).
    #[cfg(feature = "emu")]
    #[test]
    fn host_split_batches_match_the_cpu_backend() {
        use crate::backend::{Backend, CpuBackend, EmuBackend};
        use crate::tensor::HostTensor;
        let (a_shape, b_shape) = ([2, 1, 2, 1, 2, 1, 3, 4], [1, 2, 1, 2, 1, 2, 4, 5]);
        for dtype in DType::ALL {
            let host = |shape: &[usize], seed: usize| {
                let len: usize = shape.iter().product();
                let v: Vec<f32> = (0..len)
                    .map(|i| ((i * 7 + seed) % 13) as f32 / 8.0 - 0.75)
                    .collect();
                HostTensor::from_f32(dtype, shape, &v).unwrap()
            };
            let (a, b) = (host(&a_shape, 1), host(&b_shape, 5));
            let (cpu, emu) = (CpuBackend::new(), EmuBackend::new());
            let y = cpu.matmul(&cpu.upload(&a).unwrap(), &cpu.upload(&b).unwrap());
            let want = cpu.download(&y.unwrap()).unwrap().data().to_f32_vec();
            let y = emu.matmul(&emu.upload(&a).unwrap(), &emu.upload(&b).unwrap());
            let got = emu.download(&y.unwrap()).unwrap().data().to_f32_vec();
            assert_eq!(got, want, "{dtype}");
        }
    }

    #[test]
    fn large_batches_split_over_grid_z() {
        let plan = matmul(DType::F16, &[70000, 2, 8], &[70000, 8, 8]);
        let l = gemm(&plan, Arch::SM80, A, B, None, Y).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].grid[2], l[1].grid[2]), (65535, 70000 - 65535));
        assert_eq!((params(&l[0]).z0, params(&l[1]).z0), (0, 65535));
        assert_eq!(params(&l[1]).y, Y);
    }

    #[test]
    fn tall_outputs_split_over_grid_y() {
        let m = MAX_GRID_YZ * SG_BM + 5;
        let plan = matmul(DType::F32, &[m, 3], &[3, 7]);
        let l = gemm(&plan, Arch::SM80, A, B, None, Y).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].grid[1] as usize, MAX_GRID_YZ);
        assert_eq!(l[1].grid[1], 1);
        let p = params(&l[1]);
        assert_eq!(p.m, 5);
        assert_eq!(p.y_batch, (m * 7) as i64);
        assert_eq!(p.a, A + 4 * (MAX_GRID_YZ * SG_BM * 3) as u64);
        assert_eq!(p.y, Y + 4 * (MAX_GRID_YZ * SG_BM * 7) as u64);
    }

    #[test]
    fn f16_fast_path_needs_contiguous_aligned_operands() {
        let f16 = |a: &[usize], b: &[usize], ta, tb, pa: Ptr| {
            let op = Gemm {
                trans_a: ta,
                trans_b: tb,
                ..Gemm::default()
            };
            let plan = op
                .plan(&desc(DType::F16, a), &desc(DType::F16, b), None)
                .unwrap();
            gemm(&plan, Arch::SM80, pa, B, None, Y).unwrap()[0]
                .kernel
                .clone()
        };
        assert_eq!(f16(&[64, 32], &[32, 48], false, false, A), "gemm_tc_f16");
        assert_eq!(f16(&[63, 32], &[32, 48], false, false, A), "gemm_tc_f16");
        assert_eq!(
            f16(&[64, 36], &[36, 48], false, false, A),
            "gemm_tcgather_f16"
        );
        assert_eq!(
            f16(&[64, 32], &[32, 44], false, false, A),
            "gemm_tcgather_f16"
        );
        assert_eq!(
            f16(&[64, 32], &[32, 48], false, false, A + 2),
            "gemm_tcgather_f16"
        );
        assert_eq!(
            f16(&[32, 64], &[32, 48], true, false, A),
            "gemm_tcgather_f16"
        );
        // B transposed (contiguous along K) has its own pipeline, for any N.
        assert_eq!(f16(&[64, 32], &[48, 32], false, true, A), "gemm_tcnt_f16");
        assert_eq!(f16(&[64, 32], &[45, 32], false, true, A), "gemm_tcnt_f16");
        assert_eq!(
            f16(&[64, 36], &[48, 36], false, true, A),
            "gemm_tcgather_f16"
        );
        assert_eq!(
            f16(&[32, 64], &[48, 32], true, true, A),
            "gemm_tcgather_f16"
        );
        // Batch strides count too: [2, 3, 8] has a batch stride of 24, [2, 8, 8] of 64.
        let k = |a: &[usize], b: &[usize]| {
            gemm(&matmul(DType::F16, a, b), Arch::SM80, A, B, None, Y).unwrap()[0]
                .kernel
                .clone()
        };
        assert_eq!(k(&[2, 3, 8], &[8, 16]), "gemm_tc_f16");
        assert_eq!(k(&[2, 3, 8], &[2, 8, 8]), "gemm_tc_f16");
    }

    #[test]
    fn load_directions_and_vector_flags() {
        let flags = |dtype, a: &[usize], b: &[usize], ta, tb, pa: Ptr| {
            let op = Gemm {
                trans_a: ta,
                trans_b: tb,
                ..Gemm::default()
            };
            let plan = op.plan(&desc(dtype, a), &desc(dtype, b), None).unwrap();
            params(&gemm(&plan, Arch::SM80, pa, B, None, Y).unwrap()[0]).flags
        };
        let f32 = DType::F32;
        // NN: A along K, B along N, all vectorised.
        let f = flags(f32, &[16, 8], &[8, 12], false, false, A);
        assert_eq!(f, A_ALONG_K | A_VEC | B_VEC | Y_VEC);
        // TT: A along M, B along K.
        let f = flags(f32, &[8, 16], &[12, 8], true, true, A);
        assert_eq!(f, A_VEC | B_ALONG_K | B_VEC | Y_VEC);
        // Odd leading dimensions and misaligned bases keep the direction, lose the vectors.
        let f = flags(f32, &[16, 7], &[7, 13], false, false, A);
        assert_eq!(f, A_ALONG_K);
        let f = flags(f32, &[16, 8], &[8, 12], false, false, A + 4);
        assert_eq!(f, A_ALONG_K | B_VEC | Y_VEC);
        // FP16 runs are 8 long.
        let f = flags(DType::F16, &[16, 12], &[12, 16], false, false, A);
        assert_eq!(f, A_ALONG_K | B_VEC | Y_VEC);
        let f = flags(DType::F16, &[16, 16], &[16, 18], false, false, A);
        assert_eq!(f, A_ALONG_K | A_VEC | Y_VEC);
    }
}
