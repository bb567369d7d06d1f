//! Elementwise arithmetic with multidirectional (numpy) broadcasting, ONNX opset 13+: Add, Sub,
//! Mul, Div of two inputs, and Sum of 1 ..= [`MAX_INPUTS`](super::MAX_INPUTS) inputs, all
//! broadcast together. Shapes are aligned on their last dimensions; each dimension pair must be
//! equal or one of them 1 (rank-0 tensors are scalars). Division follows IEEE 754 (`x / 0` is
//! ±inf, `0 / 0` NaN). FP16: FP32 math and one rounding on output (Sum accumulates every input in
//! FP32, left to right, and rounds once).
//!
//! Add may fuse a ReLU (`relu`, not an ONNX attribute: the residual Add → Relu of every ResNet
//! block), applied to the FP32 result before rounding.
//!
//! The plan resolves the broadcast once: the output shape, and per input the strides (0 on
//! broadcast dimensions) over the output's dimensions after dropping those of size 1 and
//! merging adjacent dimensions that every input treats alike (all read, or broadcast by the same
//! inputs). The common cases become short views: same shape `[n]` with every stride 1; a scalar
//! `[n]` with stride 0; per-channel `[N,C,H,W] · [1,C,1,1]` → `[N, C, H·W]` with strides
//! `[C·HW, HW, 1]` and `[0, 1, 0]`; a row vector `[M, N] · [N]` → `[M, N]`, `[1, 0]`... ↔ `[0, 1]`.

use super::{indexable, output, product, MAX_INPUTS};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::TensorDesc;

/// Which elementwise function a [`BinaryPlan`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    Div,
    /// The sum of all inputs (any number of them).
    Sum,
}

impl BinaryKind {
    /// The ONNX op type.
    pub fn name(self) -> &'static str {
        match self {
            BinaryKind::Add => "Add",
            BinaryKind::Sub => "Sub",
            BinaryKind::Mul => "Mul",
            BinaryKind::Div => "Div",
            BinaryKind::Sum => "Sum",
        }
    }

    /// The code the CUDA kernels switch on (`BIN_ADD` … in `kernels/binary.cu`).
    pub fn code(self) -> i32 {
        match self {
            BinaryKind::Add | BinaryKind::Sum => 0,
            BinaryKind::Sub => 1,
            BinaryKind::Mul => 2,
            BinaryKind::Div => 3,
        }
    }
}

/// ONNX Add attributes, plus the fused ReLU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Add {
    /// Apply `max(0, y)` to the sum (fused; not an ONNX attribute). Default false.
    pub relu: bool,
}

/// A validated elementwise op over the collapsed broadcast view.
#[derive(Clone, Debug, PartialEq)]
pub struct BinaryPlan {
    pub kind: BinaryKind,
    /// Fused ReLU on the result (Add only).
    pub relu: bool,
    pub dtype: DType,
    /// The output's dimensions after collapsing (no 1-sized dimension; empty for a one-element
    /// output). Their product is the output's length.
    pub dims: Vec<usize>,
    /// Per input (in order), its element stride along each of `dims`: 0 where it is broadcast.
    pub strides: Vec<Vec<usize>>,
    pub output: TensorDesc,
}

impl BinaryPlan {
    /// Exact FLOP count: 1 per output element for Add, Sub, Mul, Div (the fused ReLU is not
    /// charged); Sum of n inputs `max(n − 1, 1)` per output element.
    pub fn flops(&self) -> u64 {
        let per = match self.kind {
            BinaryKind::Sum => self.strides.len().saturating_sub(1).max(1) as u64,
            _ => 1,
        };
        per * product(self.output.shape())
    }

    /// Number of output elements.
    pub fn len(&self) -> usize {
        self.output.len()
    }

    /// True for an empty output.
    pub fn is_empty(&self) -> bool {
        self.output.is_empty()
    }

    /// True when every input has the output's shape (a plain elementwise pass).
    pub fn same_shape(&self) -> bool {
        self.dims.len() <= 1 && self.strides.iter().all(|s| s.iter().all(|&v| v == 1))
    }
}

/// The operand names of Sum's inputs (`data_0` …), for typed errors.
const SUM_NAMES: [&str; MAX_INPUTS] = {
    const N: [&str; 64] = [
        "data_0", "data_1", "data_2", "data_3", "data_4", "data_5", "data_6", "data_7", "data_8",
        "data_9", "data_10", "data_11", "data_12", "data_13", "data_14", "data_15", "data_16",
        "data_17", "data_18", "data_19", "data_20", "data_21", "data_22", "data_23", "data_24",
        "data_25", "data_26", "data_27", "data_28", "data_29", "data_30", "data_31", "data_32",
        "data_33", "data_34", "data_35", "data_36", "data_37", "data_38", "data_39", "data_40",
        "data_41", "data_42", "data_43", "data_44", "data_45", "data_46", "data_47", "data_48",
        "data_49", "data_50", "data_51", "data_52", "data_53", "data_54", "data_55", "data_56",
        "data_57", "data_58", "data_59", "data_60", "data_61", "data_62", "data_63",
    ];
    N
};

/// Validates `inputs` (A, B for the binary ops; data_0 … for Sum) and resolves the broadcast.
pub fn plan(kind: BinaryKind, relu: bool, inputs: &[&TensorDesc]) -> Result<BinaryPlan> {
    let op = kind.name();
    let names: &[&'static str] = match kind {
        BinaryKind::Sum => &SUM_NAMES,
        _ => &["A", "B"],
    };
    if inputs.is_empty() || inputs.len() > names.len() {
        return Err(Error::Arity {
            op,
            expected: match kind {
                BinaryKind::Sum => format!("data_0 ... (1 to {MAX_INPUTS})"),
                _ => "A, B".to_string(),
            },
            got: inputs.len(),
        });
    }
    let named: Vec<(&'static str, &TensorDesc)> =
        names.iter().copied().zip(inputs.iter().copied()).collect();
    indexable(op, &named)?;
    let dtype = inputs[0].dtype();
    for (name, t) in &named[1..] {
        super::same_dtype(op, name, dtype, t)?;
    }
    // The broadcast output shape, right-aligned.
    let rank = inputs.iter().map(|t| t.rank()).max().unwrap_or(0);
    let mut shape = vec![1usize; rank];
    let mut from: Vec<Option<usize>> = vec![None; rank]; // the input that set a dimension != 1
    for (k, t) in inputs.iter().enumerate() {
        let off = rank - t.rank();
        for (d, &n) in t.shape().iter().enumerate() {
            let o = off + d;
            if n == shape[o] || n == 1 {
                continue;
            }
            if shape[o] == 1 {
                shape[o] = n;
                from[o] = Some(k);
                continue;
            }
            let j = from[o].unwrap_or(0);
            let pair = if kind == BinaryKind::Sum {
                format!(
                    "{} {:?} and {} {:?}",
                    names[j],
                    inputs[j].shape(),
                    names[k],
                    t.shape()
                )
            } else {
                format!("A {:?} and B {:?}", inputs[0].shape(), inputs[1].shape())
            };
            return Err(Error::shape(
                op,
                format!(
                    "{pair} do not broadcast: dimension {} is {} and {n}",
                    o as i64 - rank as i64,
                    shape[o]
                ),
            ));
        }
    }
    let out = output(op, dtype, &shape)?;
    let (dims, strides) = collapse(&shape, inputs);
    Ok(BinaryPlan {
        kind,
        relu: relu && kind == BinaryKind::Add,
        dtype,
        dims,
        strides,
        output: out,
    })
}

/// The collapsed view of `shape` (see the module doc) and each input's strides over it.
fn collapse(shape: &[usize], inputs: &[&TensorDesc]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let rank = shape.len();
    // Per input, its contiguous strides over the output's dimensions (0 where broadcast).
    let full: Vec<Vec<usize>> = inputs
        .iter()
        .map(|t| {
            let off = rank - t.rank();
            let mut s = vec![0usize; rank];
            let mut acc = 1usize;
            for d in (0..t.rank()).rev() {
                if t.shape()[d] != 1 {
                    s[off + d] = acc;
                }
                acc *= t.shape()[d];
            }
            s
        })
        .collect();
    let mut dims: Vec<usize> = Vec::new();
    let mut strides: Vec<Vec<usize>> = vec![Vec::new(); inputs.len()];
    for d in 0..rank {
        if shape[d] == 1 {
            continue;
        }
        // Merge into the previous kept dimension when every input reads both or neither.
        let merge = !dims.is_empty()
            && full
                .iter()
                .zip(&strides)
                .all(|(f, s)| (f[d] == 0) == (*s.last().unwrap() == 0));
        if merge {
            *dims.last_mut().unwrap() *= shape[d];
            for (f, s) in full.iter().zip(strides.iter_mut()) {
                *s.last_mut().unwrap() = f[d];
            }
        } else {
            dims.push(shape[d]);
            for (f, s) in full.iter().zip(strides.iter_mut()) {
                s.push(f[d]);
            }
        }
    }
    (dims, strides)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(shape: &[usize]) -> TensorDesc {
        TensorDesc::new(DType::F32, shape).unwrap()
    }

    fn p(kind: BinaryKind, shapes: &[&[usize]]) -> Result<BinaryPlan> {
        let descs: Vec<TensorDesc> = shapes.iter().map(|s| d(s)).collect();
        let refs: Vec<&TensorDesc> = descs.iter().collect();
        plan(kind, false, &refs)
    }

    #[test]
    fn collapses_the_common_cases() {
        let same = p(BinaryKind::Add, &[&[2, 3, 4], &[2, 3, 4]]).unwrap();
        assert_eq!(
            (same.dims.clone(), same.strides.clone()),
            (vec![24], vec![vec![1], vec![1]])
        );
        assert!(same.same_shape());
        let scalar = p(BinaryKind::Mul, &[&[2, 3, 4], &[]]).unwrap();
        assert_eq!(scalar.dims, vec![24]);
        assert_eq!(scalar.strides, vec![vec![1], vec![0]]);
        assert!(!scalar.same_shape());
        let chan = p(BinaryKind::Mul, &[&[8, 16, 5, 5], &[1, 16, 1, 1]]).unwrap();
        assert_eq!(chan.dims, vec![8, 16, 25]);
        assert_eq!(chan.strides, vec![vec![400, 25, 1], vec![0, 1, 0]]);
        let chw = p(BinaryKind::Add, &[&[16, 1, 1], &[8, 16, 5, 5]]).unwrap();
        assert_eq!(chw.strides, vec![vec![0, 1, 0], vec![400, 25, 1]]);
        let outer = p(BinaryKind::Sub, &[&[1, 7], &[5, 1]]).unwrap();
        assert_eq!(outer.dims, vec![5, 7]);
        assert_eq!(outer.strides, vec![vec![0, 1], vec![1, 0]]);
        assert_eq!(outer.output.shape(), &[5, 7]);
        let row = p(BinaryKind::Div, &[&[3, 1, 5, 7], &[7]]).unwrap();
        assert_eq!(row.dims, vec![15, 7]);
        assert_eq!(row.strides, vec![vec![7, 1], vec![0, 1]]);
        let ones = p(BinaryKind::Add, &[&[1, 1], &[1]]).unwrap();
        assert!(ones.dims.is_empty() && ones.output.shape() == [1, 1]);
        let empty = p(BinaryKind::Add, &[&[0, 3], &[3]]).unwrap();
        assert_eq!(empty.output.shape(), &[0, 3]);
        assert!(empty.is_empty());
        let sum = p(BinaryKind::Sum, &[&[2, 3], &[3], &[2, 1], &[]]).unwrap();
        assert_eq!(sum.dims, vec![2, 3]);
        assert_eq!(sum.strides.len(), 4);
        assert_eq!(sum.flops(), 3 * 6);
        assert_eq!(p(BinaryKind::Sum, &[&[2, 3]]).unwrap().flops(), 6);
    }

    #[test]
    fn errors_are_typed() {
        let e = p(BinaryKind::Add, &[&[2, 3], &[4]]).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("Add: A [2, 3] and B [4] do not broadcast: dimension -1 is 3 and 4"),
            "{msg}"
        );
        let e = p(BinaryKind::Sum, &[&[2, 3], &[3], &[2, 2]]).unwrap_err();
        assert!(e.to_string().contains("data_2"), "{e}");
        let a = d(&[2]);
        let b = TensorDesc::new(DType::F16, &[2]).unwrap();
        assert!(matches!(
            plan(BinaryKind::Mul, false, &[&a, &b]),
            Err(Error::DTypeMismatch { operand: "B", .. })
        ));
        assert!(matches!(
            plan(BinaryKind::Sum, false, &[]),
            Err(Error::Arity { got: 0, .. })
        ));
        let many = vec![&a; MAX_INPUTS + 1];
        assert!(matches!(
            plan(BinaryKind::Sum, false, &many),
            Err(Error::Arity { .. })
        ));
        assert!(plan(BinaryKind::Sum, false, &vec![&a; MAX_INPUTS]).is_ok());
    }
}
