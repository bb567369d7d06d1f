//! What each computation means, independent of any device: ONNX attributes, validation and shape
//! inference (a typed error for every bad operand), and the exact FLOP count the meter charges.
//!
//! Each op family turns its attributes and operand descriptors into a *plan*: the validated,
//! fully resolved problem a backend executes without checking anything again. A plan also keeps
//! the attributes it came from, so a remote backend can send the op rather than the plan.
//!
//! FLOP counts (what the meter charges, per the product contract):
//! - Gemm / MatMul: `2·M·N·K` per batch matrix; the alpha/beta/C epilogue and ReLU are not charged.
//! - Conv: `2·N·K·P·Q·(C/group)·R·S`; bias and ReLU are not charged.
//! - BatchNormalization: `2` per element (one multiply, one add after folding the statistics).
//! - Softmax: `5` per element (max, subtract, exp, sum, scale).

pub mod batchnorm;
pub mod conv;
pub mod gemm;
pub mod softmax;

pub use batchnorm::{BatchNorm, BatchNormPlan};
pub use conv::{AutoPad, Conv, ConvPlan};
pub use gemm::{Gemm, GemmPlan, GemmSource, MatLayout, MatMul};
pub use softmax::{Softmax, SoftmaxPlan};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::TensorDesc;

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
