//! Launches for `kernels/binary.cu`. Every input with the output's shape (and any Sum whose
//! inputs all do): `binary_same_*`, 16-byte vectors when every pointer is 16-byte aligned. Two
//! inputs with broadcasting: `binary_rows_*` when the innermost collapsed dim has at least
//! `ROWS_MIN` elements (a block row per output row, each input read at stride 0 or 1), else
//! `binary_strided_*` (one element a thread). Sum of three or more inputs with broadcasting:
//! `binary_sum_*`. One launch holds every input (`MAX_IN` = `MAX_INPUTS`), so a Sum rounds once;
//! views of more than `MAX_RANK` collapsed dims are split into one launch per index of the outer
//! ones.

use super::{dtype_suffix, Arch, Family, KernelArgs, Launch, Ptr, Target};
use crate::ops::{BinaryPlan, MAX_INPUTS};

/// `BIN_MAX_IN`: inputs one launch takes.
pub const MAX_IN: usize = 64;
/// `BIN_MAX_RANK`: collapsed dims one launch takes.
pub const MAX_RANK: usize = 6;
/// `BIN_THREADS`: threads of every block.
pub const THREADS: u32 = 256;
/// The shortest innermost dim the rows kernel takes.
pub const ROWS_MIN: usize = 32;
/// Largest grid x dimension used (the kernels grid-stride beyond it).
const MAX_GRID_X: usize = 1 << 20;
/// Largest grid y dimension.
const MAX_GRID_Y: usize = 65535;

const _: () = assert!(MAX_IN == MAX_INPUTS);

/// Mirrors `struct BinaryParams` of `kernels/binary.cu` (3672 bytes, under CUDA's 4 KiB).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BinaryParams {
    pub x: [Ptr; MAX_IN],
    pub y: Ptr,
    /// Output elements.
    pub n: i64,
    /// `dims[..rank]`, outermost first.
    pub dims: [i64; MAX_RANK],
    /// Per input, its element strides over `dims` (0: broadcast).
    pub strides: [[i64; MAX_RANK]; MAX_IN],
    pub n_in: i32,
    pub rank: i32,
    /// `BIN_ADD` 0, `BIN_SUB` 1, `BIN_MUL` 2, `BIN_DIV` 3.
    pub op: i32,
    pub relu: i32,
    /// Same kernel: 16-byte slots.
    pub vec: i32,
    pub pad: i32,
}

/// The launches computing `plan` from the inputs at `x` into `y` (none for an empty output).
pub fn binary(plan: &BinaryPlan, arch: Arch, x: &[Ptr], y: Ptr) -> Vec<Launch> {
    let _ = arch; // one sm_80 kernel set serves every architecture
    if plan.is_empty() {
        return Vec::new();
    }
    let es = plan.dtype.size() as Ptr;
    let (mut dims, mut strides) = (plan.dims.clone(), plan.strides.clone());
    if dims.is_empty() {
        // One element: every input holds exactly it.
        dims = vec![1];
        strides = vec![vec![1]; x.len()];
    }
    // Dims beyond MAX_RANK: one launch per index of the outer ones.
    let lead = dims.len().saturating_sub(MAX_RANK);
    let (outer, inner) = (&dims[..lead], &dims[lead..]);
    let block_len: usize = inner.iter().product();
    let count: usize = outer.iter().product();
    let mut launches = Vec::with_capacity(count);
    for b in 0..count {
        let (mut r, mut offs) = (b, vec![0usize; x.len()]);
        for d in (0..lead).rev() {
            let c = r % outer[d];
            r /= outer[d];
            for (o, s) in offs.iter_mut().zip(&strides) {
                *o += c * s[d];
            }
        }
        let xs: Vec<Ptr> = x
            .iter()
            .zip(&offs)
            .map(|(&p, &o)| p + o as Ptr * es)
            .collect();
        let sub: Vec<&[usize]> = strides.iter().map(|s| &s[lead..]).collect();
        launches.push(one(plan, inner, &sub, &xs, y + (b * block_len) as Ptr * es));
    }
    launches
}

/// One launch over a view of at most `MAX_RANK` dims.
fn one(plan: &BinaryPlan, dims: &[usize], strides: &[&[usize]], x: &[Ptr], y: Ptr) -> Launch {
    let n: usize = dims.iter().product();
    let mut args = BinaryParams {
        x: [0; MAX_IN],
        y,
        n: n as i64,
        dims: [1; MAX_RANK],
        strides: [[0; MAX_RANK]; MAX_IN],
        n_in: x.len() as i32,
        rank: dims.len() as i32,
        op: plan.kind.code(),
        relu: plan.relu as i32,
        vec: 0,
        pad: 0,
    };
    for (k, (&p, s)) in x.iter().zip(strides).enumerate() {
        args.x[k] = p;
        for (d, &v) in s.iter().enumerate() {
            args.strides[k][d] = v as i64;
        }
    }
    for (d, &v) in dims.iter().enumerate() {
        args.dims[d] = v as i64;
    }
    // Contiguous strides of `dims`: an input with them has the output's shape.
    let mut contiguous = vec![0usize; dims.len()];
    let mut acc = 1;
    for d in (0..dims.len()).rev() {
        contiguous[d] = acc;
        acc *= dims[d];
    }
    let same = strides.iter().all(|s| {
        s.iter()
            .zip(&contiguous)
            .all(|(a, b)| a == b || dims.len() == 1 && *a == 1)
    });
    let t = THREADS as usize;
    let inner = *dims.last().unwrap_or(&1);
    let (variant, grid) = if same {
        let width = 16 / plan.dtype.size();
        let aligned = x.iter().chain([&y]).all(|p| p.is_multiple_of(16));
        let v = if aligned && n >= width { width } else { 1 };
        args.vec = (v > 1) as i32;
        (
            "same",
            [(n / v).max(1).div_ceil(t).min(MAX_GRID_X) as u32, 1, 1],
        )
    } else if x.len() > 2 {
        ("sum", [n.div_ceil(t).min(MAX_GRID_X) as u32, 1, 1])
    } else if inner >= ROWS_MIN {
        let rows = n / inner;
        (
            "rows",
            [
                inner.div_ceil(t).min(MAX_GRID_X) as u32,
                rows.min(MAX_GRID_Y) as u32,
                1,
            ],
        )
    } else {
        ("strided", [n.div_ceil(t).min(MAX_GRID_X) as u32, 1, 1])
    };
    Launch {
        family: Family::Binary,
        target: Target::Sm80,
        kernel: format!("binary_{variant}_{}", dtype_suffix(plan.dtype)),
        grid,
        block: [THREADS, 1, 1],
        args: KernelArgs::Binary(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::ops::{binary, BinaryKind};
    use crate::tensor::TensorDesc;

    fn plan(kind: BinaryKind, dtype: DType, shapes: &[&[usize]]) -> BinaryPlan {
        let d: Vec<TensorDesc> = shapes
            .iter()
            .map(|s| TensorDesc::new(dtype, s).unwrap())
            .collect();
        binary::plan(kind, false, &d.iter().collect::<Vec<_>>()).unwrap()
    }

    fn kernels(p: &BinaryPlan, x: &[Ptr]) -> Vec<(String, BinaryParams)> {
        binary(p, Arch::SM80, x, 1 << 20)
            .into_iter()
            .map(|l| {
                assert_eq!(l.block, [THREADS, 1, 1]);
                let KernelArgs::Binary(a) = l.args else {
                    panic!("not binary args")
                };
                (l.kernel, a)
            })
            .collect()
    }

    #[test]
    fn params_match_the_c_layout() {
        assert_eq!(std::mem::size_of::<BinaryParams>(), 3672);
        assert!(std::mem::size_of::<BinaryParams>() <= 4096);
        assert_eq!(std::mem::offset_of!(BinaryParams, y), 512);
        assert_eq!(std::mem::offset_of!(BinaryParams, n), 520);
        assert_eq!(std::mem::offset_of!(BinaryParams, dims), 528);
        assert_eq!(std::mem::offset_of!(BinaryParams, strides), 576);
        assert_eq!(std::mem::offset_of!(BinaryParams, n_in), 3648);
        assert_eq!(std::mem::offset_of!(BinaryParams, pad), 3668);
    }

    /// The constants here are the `#define`s of kernels/binary.cu, and every kernel named here
    /// is defined there.
    #[test]
    fn constants_match_the_kernel_source() {
        let src = include_str!("../../../../kernels/binary.cu");
        let define = |name: &str| crate::backend::cuda::launch::c_define(src, "binary.cu", name);
        assert_eq!(define("BIN_MAX_IN"), MAX_IN);
        assert_eq!(define("BIN_MAX_RANK"), MAX_RANK);
        assert_eq!(define("BIN_THREADS"), THREADS as usize);
        for (kind, name) in [
            (BinaryKind::Add, "BIN_ADD"),
            (BinaryKind::Sub, "BIN_SUB"),
            (BinaryKind::Mul, "BIN_MUL"),
            (BinaryKind::Div, "BIN_DIV"),
            (BinaryKind::Sum, "BIN_ADD"),
        ] {
            assert_eq!(define(name), kind.code() as usize);
        }
        for variant in ["same", "rows", "strided", "sum"] {
            for dtype in DType::ALL {
                let name = format!("(binary_{variant}_{},", dtype_suffix(dtype));
                assert!(src.contains(&name), "{name}");
            }
        }
    }

    #[test]
    fn picks_the_kernel_by_view() {
        let add = BinaryKind::Add;
        let k = kernels(&plan(add, DType::F32, &[&[4, 5], &[4, 5]]), &[0, 16]);
        assert_eq!(k.len(), 1);
        assert_eq!((k[0].0.as_str(), k[0].1.vec), ("binary_same_f32", 1));
        let k = kernels(&plan(add, DType::F16, &[&[4, 5], &[4, 5]]), &[0, 2]);
        assert_eq!((k[0].0.as_str(), k[0].1.vec), ("binary_same_f16", 0));
        let k = kernels(
            &plan(BinaryKind::Mul, DType::F32, &[&[2, 64, 7, 7], &[64, 1, 1]]),
            &[0, 0],
        );
        assert_eq!(k[0].0, "binary_rows_f32");
        assert_eq!(&k[0].1.dims[..3], &[2, 64, 49]);
        assert_eq!((k[0].1.rank, k[0].1.op), (3, 2));
        let k = kernels(&plan(add, DType::F32, &[&[5, 1], &[1, 3]]), &[0, 0]);
        assert_eq!(k[0].0, "binary_strided_f32");
        let sum = BinaryKind::Sum;
        let k = kernels(
            &plan(sum, DType::F16, &[&[3, 4], &[4], &[3, 1]]),
            &[0, 0, 0],
        );
        assert_eq!((k[0].0.as_str(), k[0].1.n_in), ("binary_sum_f16", 3));
        let k = kernels(&plan(sum, DType::F32, &[&[3usize, 4][..]; 9]), &[0; 9]);
        assert_eq!((k[0].0.as_str(), k[0].1.n_in), ("binary_same_f32", 9));
        let k = kernels(&plan(add, DType::F32, &[&[], &[]]), &[0, 0]);
        assert_eq!((k[0].0.as_str(), k[0].1.n), ("binary_same_f32", 1));
        assert!(kernels(&plan(add, DType::F32, &[&[0, 3], &[3]]), &[0, 0]).is_empty());
    }

    #[test]
    fn views_beyond_max_rank_split_into_launches() {
        // Alternating broadcast dims never collapse: rank 8 → 2 outer dims of 2·3 launches.
        let a: &[usize] = &[2, 1, 4, 1, 2, 1, 3, 1];
        let b: &[usize] = &[3, 1, 2, 1, 2, 1, 2];
        let p = plan(BinaryKind::Add, DType::F32, &[a, b]);
        assert_eq!(p.dims, vec![2, 3, 4, 2, 2, 2, 3, 2]);
        let k = kernels(&p, &[0, 0]);
        assert_eq!(k.len(), 6);
        let block = 4 * 2 * 2 * 2 * 3 * 2;
        for (i, (_, a)) in k.iter().enumerate() {
            assert_eq!(a.rank as usize, MAX_RANK);
            assert_eq!(a.n, block as i64);
            assert_eq!(a.y, (1 << 20) + (i * block * 4) as u64);
        }
    }
}

/// The kernels run on the CPU emulator beyond the conformance suite: each kernel and path
/// (vector, tail, unaligned), grid-stride loops (grids cut to one block), special values.
#[cfg(all(test, feature = "emu"))]
mod emu_tests {
    use super::super::emu_harness::{run as launch, values, Placed};
    use super::*;
    use crate::backend::EmuBackend;
    use crate::dtype::DType;
    use crate::ops::{binary, BinaryKind};
    use crate::tensor::TensorDesc;

    /// Runs the planned launches (each grid replaced by `grid`) with input k placed `shift[k]`
    /// elements into its buffer; returns the output and the f64 reference and the kernels.
    fn run(
        kind: BinaryKind,
        dtype: DType,
        shapes: &[&[usize]],
        shift: usize,
        grid: Option<[u32; 3]>,
        special: bool,
    ) -> (Vec<f64>, Vec<f64>, Vec<String>) {
        let emu = EmuBackend::new();
        let descs: Vec<TensorDesc> = shapes
            .iter()
            .map(|s| TensorDesc::new(dtype, s).unwrap())
            .collect();
        let plan = binary::plan(kind, true, &descs.iter().collect::<Vec<_>>()).unwrap();
        let mut bufs = Vec::new();
        let mut vals = Vec::new();
        for (k, d) in descs.iter().enumerate() {
            let mut v = values(d.len(), k as u64 + 3, -8.0, 8.0);
            if special {
                for (i, e) in v.iter_mut().enumerate() {
                    *e = [0.0, -0.0, f32::INFINITY, f32::NAN, 2.0, -3.0][(i + k) % 6];
                }
            }
            let t = Placed::upload(&emu, dtype, &v, shift);
            vals.push(t.download(&emu));
            bufs.push(t);
        }
        let n = plan.output.len();
        let yt = Placed::poisoned(&emu, dtype, n, shift);
        let xs: Vec<Ptr> = bufs.iter().map(Placed::addr).collect();
        let launches = binary(&plan, Arch::SM80, &xs, yt.addr());
        let all: Vec<&Placed> = bufs.iter().chain([&yt]).collect();
        let names = launch(&emu, launches, grid, &all);
        let got = yt.download(&emu);
        // The f64 reference by full broadcasting.
        let out = plan.output.shape().to_vec();
        let want: Vec<f64> = (0..n)
            .map(|i| {
                let mut acc: Option<f64> = None;
                for (k, d) in descs.iter().enumerate() {
                    let (mut r, mut off, mut st) = (i, 0usize, 1usize);
                    for (o, &od) in out.iter().enumerate().rev() {
                        let c = r % od;
                        r /= od;
                        let di = o as isize - (out.len() - d.rank()) as isize;
                        if di >= 0 {
                            let dd = d.shape()[di as usize];
                            if dd != 1 {
                                off += c * st;
                            }
                            st *= dd;
                        }
                    }
                    let v = vals[k][off];
                    acc = Some(match (acc, kind) {
                        (None, _) => v,
                        (Some(a), BinaryKind::Sub) => a - v,
                        (Some(a), BinaryKind::Mul) => a * v,
                        (Some(a), BinaryKind::Div) => a / v,
                        (Some(a), _) => a + v,
                    });
                }
                let v = acc.unwrap();
                if plan.relu && v < 0.0 {
                    0.0
                } else {
                    v
                }
            })
            .collect();
        (got, want, names)
    }

    fn check(what: &str, dtype: DType, got: &[f64], want: &[f64]) {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-3 };
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            if w.is_nan() {
                assert!(g.is_nan(), "{what}: element {i} is {g}, want NaN");
            } else if w.is_infinite() || w == 0.0 {
                // FP16 overflow aside, exact.
                assert!(
                    g == w
                        || (dtype == DType::F16
                            && g.is_infinite() == w.is_infinite()
                            && (g - w).abs() < 1e-2),
                    "{what}: element {i} is {g}, want {w}"
                );
            } else {
                assert!(
                    ((g - w) / w).abs() <= 4.0 * tol,
                    "{what}: element {i} is {g}, want {w}"
                );
            }
        }
    }

    #[test]
    fn every_kernel_and_path() {
        let cases: &[(BinaryKind, &[&[usize]])] = &[
            (BinaryKind::Add, &[&[3, 37], &[3, 37]]),
            (BinaryKind::Sub, &[&[1001], &[1001]]),
            (BinaryKind::Mul, &[&[2, 16, 7, 9], &[16, 1, 1]]),
            (BinaryKind::Div, &[&[5, 70], &[70]]),
            (BinaryKind::Div, &[&[5, 70], &[]]),
            (BinaryKind::Sub, &[&[], &[3, 45]]),
            (BinaryKind::Add, &[&[7, 1], &[1, 5]]),
            (BinaryKind::Mul, &[&[3, 1, 4, 1, 2], &[2, 1, 3, 1]]),
            (
                BinaryKind::Add,
                &[&[2, 1, 3, 1, 2, 1, 3, 1], &[2, 1, 2, 1, 2, 1, 2]],
            ),
            (BinaryKind::Sum, &[&[3, 40]]),
            (BinaryKind::Sum, &[&[3, 40], &[3, 40], &[3, 40]]),
            (BinaryKind::Sum, &[&[3, 40], &[40], &[3, 1], &[], &[1, 1]]),
        ];
        for dtype in DType::ALL {
            let mut seen = std::collections::BTreeSet::new();
            for (kind, shapes) in cases {
                for shift in [0, 1] {
                    for grid in [None, Some([1, 1, 1])] {
                        let (got, want, k) = run(*kind, dtype, shapes, shift, grid, false);
                        let what =
                            format!("{kind:?} {dtype} {shapes:?} shift {shift} {grid:?} {k:?}");
                        check(&what, dtype, &got, &want);
                        seen.extend(k);
                    }
                }
            }
            let dt = dtype_suffix(dtype);
            for v in ["same", "rows", "strided", "sum"] {
                assert!(seen.contains(&format!("binary_{v}_{dt}")), "{seen:?}");
            }
        }
    }

    #[test]
    fn special_values() {
        for dtype in DType::ALL {
            for kind in [
                BinaryKind::Add,
                BinaryKind::Sub,
                BinaryKind::Mul,
                BinaryKind::Div,
            ] {
                for shapes in [&[&[37usize][..], &[37][..]][..], &[&[3, 40], &[40]]] {
                    let (got, want, k) = run(kind, dtype, shapes, 0, None, true);
                    check(&format!("{kind:?} {dtype} {k:?}"), dtype, &got, &want);
                }
            }
        }
    }
}
