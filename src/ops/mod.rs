//! What each computation means, independent of any device: ONNX attributes, validation and shape
//! inference (a typed error for every bad operand), and the exact FLOP count the meter charges.
//!
//! Every op is one variant of [`Op`] (its attributes): its ONNX name, its arity and its
//! [`Op::plan`], which turns the operand descriptors into a [`Plan`] — the validated, fully
//! resolved problem a backend executes without checking anything again ([`FamilyPlan`], one per
//! kernel family), with its output descriptor and FLOP count. A plan keeps the [`Op`] it came
//! from (`plan.op`), so a remote backend sends the op rather than the plan. Every front end
//! (Rust calls, the gRPC server, the C ABI, the remote `Program`) turns its input into an `Op`
//! once and runs it through [`crate::Backend::apply_into`].
//!
//! FLOP counts (what the meter charges, per the product contract):
//! - Gemm / MatMul: `2·M·N·K` per batch matrix; the alpha/beta/C epilogue and the fused ReLU
//!   or Clip are not charged.
//! - Conv: `2·N·K·P·Q·(C/group)·R·S`, plus `N·K·P·Q` for a fused residual sum; bias and the
//!   fused ReLU or Clip are not charged.
//! - BatchNormalization: `2` per element (one multiply, one add after folding the statistics).
//! - Softmax: `5` per element (max, subtract, exp, sum, scale).
//! - Relu, Clip, LeakyRelu: `1` per element; Sigmoid, Tanh: `4` per element.
//! - Add, Sub, Mul, Div: `1` per output element (Add's fused ReLU is not charged); Sum of n
//!   inputs: `n − 1` per output element, at least 1.
//! - MaxPool / AveragePool: the window's taps (`kernel_h·kernel_w`, padding positions
//!   included) per output element; GlobalMaxPool / GlobalAveragePool: `1` per input element.
//! - Concat, Transpose, Flatten, Reshape, Squeeze, Unsqueeze, Identity, Dropout: `1` per output
//!   element (data movement is charged, so that no op is free); empty tensors: 0.
//! - LRN: `size + 3` per element (the window's squares and adds, the scale, the power, the
//!   multiply), whatever the channels the window actually covers.

pub mod batchnorm;
pub mod binary;
pub mod conv;
pub mod gemm;
pub mod layout;
pub mod lrn;
pub mod pool;
pub mod softmax;
pub mod unary;

pub use batchnorm::{BatchNorm, BatchNormPlan};
pub use binary::{Add, BinaryKind, BinaryPlan};
pub use conv::{AutoPad, Conv, ConvPlan};
pub use gemm::{Gemm, GemmPlan, MatLayout, MatMul};
pub use layout::{
    Concat, Dropout, Flatten, LayoutKind, LayoutPlan, Reshape, Squeeze, Transpose, Unsqueeze,
};
pub use lrn::{Lrn, LrnPlan};
pub use pool::{AveragePool, MaxPool, PoolKind, PoolPlan};
pub use softmax::{Softmax, SoftmaxPlan};
pub use unary::{Activation, Clamp, Clip, LeakyRelu, UnaryPlan};

/// The most inputs a variadic op (Sum, Concat) takes.
pub const MAX_INPUTS: usize = 64;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::TensorDesc;

/// One op with its attributes: what every front end turns its input into. Its serde form
/// (the Python bindings' keywords) names a variant in snake_case (`"conv"`, `"batch_norm"`,
/// `"matmul"`) and an attribute by its field; attributes left out take their ONNX defaults.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Inputs A, B[, C].
    Gemm(Gemm),
    /// Inputs A, B.
    #[serde(rename = "matmul")]
    MatMul,
    /// Inputs X, W[, B]; X, W, Sum[, B] with the fused residual `sum`.
    Conv(Conv),
    /// Inputs X, scale, B, input_mean, input_var.
    BatchNorm(BatchNorm),
    /// Input X.
    Softmax(Softmax),
    /// Input X.
    Relu,
    /// Input X (ONNX's constant `min`/`max` inputs are attributes here).
    Clip(Clip),
    /// Input X.
    LeakyRelu(LeakyRelu),
    /// Input X.
    Sigmoid,
    /// Input X.
    Tanh,
    /// Inputs A, B (broadcast); an optional fused ReLU.
    Add(Add),
    /// Inputs A, B (broadcast).
    Sub,
    /// Inputs A, B (broadcast).
    Mul,
    /// Inputs A, B (broadcast).
    Div,
    /// Inputs data_0 … (1 ..= [`MAX_INPUTS`], all broadcast together).
    Sum,
    /// Input X (NCHW). Only the first output, Y, is supported (not Indices).
    MaxPool(MaxPool),
    /// Input X (NCHW).
    AveragePool(AveragePool),
    /// Input X (rank >= 3).
    GlobalAveragePool,
    /// Input X (rank >= 3).
    GlobalMaxPool,
    /// Inputs 1 ..= [`MAX_INPUTS`] tensors.
    Concat(Concat),
    /// Input data.
    Transpose(Transpose),
    /// Input input.
    Flatten(Flatten),
    /// Input data (ONNX's `shape` input is the attribute).
    Reshape(Reshape),
    /// Input data (ONNX's `axes` input is the attribute).
    Squeeze(Squeeze),
    /// Input data (ONNX's `axes` input is the attribute).
    Unsqueeze(Unsqueeze),
    /// Input input.
    Identity,
    /// Input data (inference: the identity).
    Dropout(Dropout),
    /// Input X (rank >= 3).
    Lrn(Lrn),
}

/// An op's validated plan: the kernel family's resolved problem, and the op it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The op (with its attributes) this plan was made from.
    pub op: Op,
    pub family: FamilyPlan,
}

/// The resolved problem of one kernel family (what a backend's kernels take).
#[derive(Clone, Debug, PartialEq)]
pub enum FamilyPlan {
    /// Gemm and MatMul.
    Gemm(GemmPlan),
    Conv(ConvPlan),
    BatchNorm(BatchNormPlan),
    Softmax(SoftmaxPlan),
    /// Relu, Clip, LeakyRelu, Sigmoid, Tanh.
    Unary(UnaryPlan),
    /// Add, Sub, Mul, Div, Sum.
    Binary(BinaryPlan),
    /// MaxPool, AveragePool, GlobalMaxPool and GlobalAveragePool.
    Pool(PoolPlan),
    /// Concat, Transpose, Flatten, Reshape, Squeeze, Unsqueeze, Identity, Dropout.
    Layout(LayoutPlan),
    Lrn(LrnPlan),
}

impl Op {
    /// The ONNX op type.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Gemm(_) => "Gemm",
            Op::MatMul => "MatMul",
            Op::Conv(_) => "Conv",
            Op::BatchNorm(_) => "BatchNormalization",
            Op::Softmax(_) => "Softmax",
            Op::Relu => "Relu",
            Op::Clip(_) => "Clip",
            Op::LeakyRelu(_) => "LeakyRelu",
            Op::Sigmoid => "Sigmoid",
            Op::Tanh => "Tanh",
            Op::Add(_) => "Add",
            Op::Sub => "Sub",
            Op::Mul => "Mul",
            Op::Div => "Div",
            Op::Sum => "Sum",
            Op::MaxPool(_) => "MaxPool",
            Op::AveragePool(_) => "AveragePool",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::GlobalMaxPool => "GlobalMaxPool",
            Op::Concat(_) => "Concat",
            Op::Transpose(_) => "Transpose",
            Op::Flatten(_) => "Flatten",
            Op::Reshape(_) => "Reshape",
            Op::Squeeze(_) => "Squeeze",
            Op::Unsqueeze(_) => "Unsqueeze",
            Op::Identity => "Identity",
            Op::Dropout(_) => "Dropout",
            Op::Lrn(_) => "LRN",
        }
    }

    /// Its inputs' ONNX names in order, and how many of them are required (the rest are
    /// optional and may be left off the end).
    pub fn inputs(&self) -> (&'static [&'static str], usize) {
        match self {
            Op::Gemm(_) => (&["A", "B", "C"], 2),
            Op::MatMul => (&["A", "B"], 2),
            Op::Conv(c) if c.sum => (&["X", "W", "Sum", "B"], 3),
            Op::Conv(_) => (&["X", "W", "B"], 2),
            Op::BatchNorm(_) => (&["X", "scale", "B", "input_mean", "input_var"], 5),
            Op::Softmax(_) => (&["X"], 1),
            Op::Relu | Op::Clip(_) | Op::LeakyRelu(_) | Op::Sigmoid | Op::Tanh => (&["X"], 1),
            Op::Add(_) | Op::Sub | Op::Mul | Op::Div => (&["A", "B"], 2),
            Op::Sum => (&["data_0"], 1),
            Op::MaxPool(_) | Op::AveragePool(_) | Op::GlobalAveragePool | Op::GlobalMaxPool => {
                (&["X"], 1)
            }
            Op::Concat(_) => (&["inputs"], 1),
            Op::Transpose(_) | Op::Reshape(_) | Op::Squeeze(_) | Op::Unsqueeze(_) => (&["data"], 1),
            Op::Dropout(_) => (&["data"], 1),
            Op::Flatten(_) | Op::Identity => (&["input"], 1),
            Op::Lrn(_) => (&["X"], 1),
        }
    }

    /// How many inputs it takes (fewest ..= most).
    pub fn arity(&self) -> std::ops::RangeInclusive<usize> {
        if self.variadic() {
            return 1..=MAX_INPUTS;
        }
        if let Op::Concat(_) = self {
            return 1..=MAX_INPUTS;
        }
        let (names, required) = self.inputs();
        required..=names.len()
    }

    /// True for ops taking any number of inputs (1 ..= [`MAX_INPUTS`]) named after the first.
    pub fn variadic(&self) -> bool {
        matches!(self, Op::Sum)
    }

    /// Validates the inputs' descriptors (count, dtypes, shapes) and the attributes against
    /// them, and resolves the plan.
    pub fn plan(&self, inputs: &[&TensorDesc]) -> Result<Plan> {
        if !self.arity().contains(&inputs.len()) {
            let (names, required) = self.inputs();
            if self.variadic() {
                return Err(Error::Arity {
                    op: self.name(),
                    expected: format!("{}, ... (1 to {MAX_INPUTS})", names[0]),
                    got: inputs.len(),
                });
            }
            if let Op::Concat(_) = self {
                return Err(Error::Arity {
                    op: self.name(),
                    expected: format!("{} (1 ..= {MAX_INPUTS} tensors)", names[0]),
                    got: inputs.len(),
                });
            }
            let optional: String = names[required..]
                .iter()
                .map(|n| format!("[, {n}]"))
                .collect();
            return Err(Error::Arity {
                op: self.name(),
                expected: format!("{}{optional}", names[..required].join(", ")),
                got: inputs.len(),
            });
        }
        let x = inputs;
        let family = match self {
            Op::Gemm(g) => FamilyPlan::Gemm(g.plan(x[0], x[1], x.get(2).copied())?),
            Op::MatMul => FamilyPlan::Gemm(MatMul.plan(x[0], x[1])?),
            Op::Conv(c) => {
                let (sum, bias) = match c.sum {
                    true => (Some(x[2]), x.get(3).copied()),
                    false => (None, x.get(2).copied()),
                };
                FamilyPlan::Conv(c.plan(x[0], x[1], bias, sum)?)
            }
            Op::BatchNorm(b) => FamilyPlan::BatchNorm(b.plan(x[0], [x[1], x[2], x[3], x[4]])?),
            Op::Softmax(s) => FamilyPlan::Softmax(s.plan(x[0])?),
            Op::Relu => FamilyPlan::Unary(Activation::Relu.plan(x[0])?),
            Op::Clip(c) => FamilyPlan::Unary(c.activation().plan(x[0])?),
            Op::LeakyRelu(l) => FamilyPlan::Unary(l.activation().plan(x[0])?),
            Op::Sigmoid => FamilyPlan::Unary(Activation::Sigmoid.plan(x[0])?),
            Op::Tanh => FamilyPlan::Unary(Activation::Tanh.plan(x[0])?),
            Op::Add(a) => FamilyPlan::Binary(binary::plan(BinaryKind::Add, a.relu, x)?),
            Op::Sub => FamilyPlan::Binary(binary::plan(BinaryKind::Sub, false, x)?),
            Op::Mul => FamilyPlan::Binary(binary::plan(BinaryKind::Mul, false, x)?),
            Op::Div => FamilyPlan::Binary(binary::plan(BinaryKind::Div, false, x)?),
            Op::Sum => FamilyPlan::Binary(binary::plan(BinaryKind::Sum, false, x)?),
            Op::MaxPool(m) => FamilyPlan::Pool(m.plan(x[0])?),
            Op::AveragePool(a) => FamilyPlan::Pool(a.plan(x[0])?),
            Op::GlobalAveragePool => FamilyPlan::Pool(pool::plan_global(false, x[0])?),
            Op::GlobalMaxPool => FamilyPlan::Pool(pool::plan_global(true, x[0])?),
            Op::Concat(c) => FamilyPlan::Layout(c.plan(x)?),
            Op::Transpose(t) => FamilyPlan::Layout(t.plan(x[0])?),
            Op::Flatten(f) => FamilyPlan::Layout(f.plan(x[0])?),
            Op::Reshape(r) => FamilyPlan::Layout(r.plan(x[0])?),
            Op::Squeeze(s) => FamilyPlan::Layout(s.plan(x[0])?),
            Op::Unsqueeze(u) => FamilyPlan::Layout(u.plan(x[0])?),
            Op::Identity => FamilyPlan::Layout(layout::identity(x[0])?),
            Op::Dropout(d) => FamilyPlan::Layout(d.plan(x[0])?),
            Op::Lrn(l) => FamilyPlan::Lrn(l.plan(x[0])?),
        };
        Ok(Plan {
            op: self.clone(),
            family,
        })
    }
}

impl Plan {
    /// The output's dtype and shape.
    pub fn output(&self) -> &TensorDesc {
        match &self.family {
            FamilyPlan::Gemm(p) => &p.output,
            FamilyPlan::Conv(p) => &p.output,
            FamilyPlan::BatchNorm(p) => &p.output,
            FamilyPlan::Softmax(p) => &p.output,
            FamilyPlan::Unary(p) => &p.output,
            FamilyPlan::Binary(p) => &p.output,
            FamilyPlan::Pool(p) => &p.output,
            FamilyPlan::Layout(p) => &p.output,
            FamilyPlan::Lrn(p) => &p.output,
        }
    }

    /// Exact FLOP count (what the meter charges).
    pub fn flops(&self) -> u64 {
        match &self.family {
            FamilyPlan::Gemm(p) => p.flops(),
            FamilyPlan::Conv(p) => p.flops(),
            FamilyPlan::BatchNorm(p) => p.flops(),
            FamilyPlan::Softmax(p) => p.flops(),
            FamilyPlan::Unary(p) => p.flops(),
            FamilyPlan::Binary(p) => p.flops(),
            FamilyPlan::Pool(p) => p.flops(),
            FamilyPlan::Layout(p) => p.flops(),
            FamilyPlan::Lrn(p) => p.flops(),
        }
    }
}

/// Checks that `operand` has the op's dtype.
fn same_dtype(
    op: &'static str,
    operand: &'static str,
    expected: DType,
    t: &TensorDesc,
) -> Result<()> {
    if t.dtype() != expected {
        return Err(Error::DTypeMismatch {
            op,
            operand,
            expected,
            got: t.dtype(),
        });
    }
    Ok(())
}

/// Checks that `t` has rank `rank`.
fn expect_rank(op: &'static str, operand: &'static str, t: &TensorDesc, rank: usize) -> Result<()> {
    if t.rank() != rank {
        return Err(Error::shape(
            op,
            format!(
                "{operand} must have rank {rank}, got shape {:?} (rank {})",
                t.shape(),
                t.rank()
            ),
        ));
    }
    Ok(())
}

/// The largest dimension of any operand, and the largest stride, dilation and padded extent of
/// a convolution axis: what every backend can index (the CUDA kernels index one image, one
/// matrix, one row with 32-bit signed integers; their planners split larger batches into
/// several launches). Plans refuse larger problems with a typed error rather than letting a
/// backend overflow.
pub const MAX_DIM: usize = i32::MAX as usize;

/// Checks that every dimension of every operand is within [`MAX_DIM`].
fn indexable(op: &'static str, operands: &[(&'static str, &TensorDesc)]) -> Result<()> {
    for (name, t) in operands {
        if let Some(d) = t.shape().iter().find(|&&d| d > MAX_DIM) {
            return Err(Error::shape(
                op,
                format!(
                    "{name} {:?} has a dimension of {d}, more than the {MAX_DIM} any backend indexes",
                    t.shape()
                ),
            ));
        }
    }
    Ok(())
}

/// The output's descriptor, checked like an operand ([`indexable`]).
fn output(op: &'static str, dtype: DType, shape: &[usize]) -> Result<TensorDesc> {
    let desc = TensorDesc::new(dtype, shape)?;
    indexable(op, &[("the output", &desc)])?;
    Ok(desc)
}

/// Product of dimensions as u64 (FLOP counts never overflow for tensors that fit in memory).
fn product(dims: &[usize]) -> u64 {
    dims.iter().map(|&d| d as u64).product()
}
