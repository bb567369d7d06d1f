//! Softmax (ONNX opset 13): `exp(x − max) / Σ exp(x − max)` along one axis, negative axes
//! counting from the end. Entries of `-inf` give 0; a row whose entries are all `-inf` (or that
//! holds NaN or `+inf`) has no defined softmax and gives NaN, as the float64 formula does.

use super::{indexable, product};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::TensorDesc;

const OP: &str = "Softmax";

/// ONNX Softmax attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Softmax {
    /// The reduced axis; negative values count from the end. ONNX default: -1.
    pub axis: i64,
}

impl Default for Softmax {
    fn default() -> Self {
        Softmax { axis: -1 }
    }
}

/// A validated softmax viewed as `[outer, len, inner]` with the reduction over `len`.
#[derive(Clone, Debug, PartialEq)]
pub struct SoftmaxPlan {
    pub dtype: DType,
    pub outer: usize,
    pub len: usize,
    pub inner: usize,
    pub output: TensorDesc,
}

impl SoftmaxPlan {
    /// Exact FLOP count: 5 per element.
    pub fn flops(&self) -> u64 {
        5 * product(&[self.outer, self.len, self.inner])
    }
}

impl Softmax {
    /// Validates the axis against `x` and resolves the `[outer, len, inner]` view.
    pub fn plan(&self, x: &TensorDesc) -> Result<SoftmaxPlan> {
        indexable(OP, &[("X", x)])?;
        let rank = x.rank() as i64;
        if rank == 0 {
            return Err(Error::shape(OP, "input must have rank >= 1, got a scalar"));
        }
        if self.axis < -rank || self.axis >= rank {
            return Err(Error::attribute(
                OP,
                "axis",
                format!(
                    "{} is out of range for input {:?} (valid: {} ..= {})",
                    self.axis,
                    x.shape(),
                    -rank,
                    rank - 1
                ),
            ));
        }
        let axis = self.axis.rem_euclid(rank) as usize;
        let shape = x.shape();
        Ok(SoftmaxPlan {
            dtype: x.dtype(),
            outer: shape[..axis].iter().product(),
            len: shape[axis],
            inner: shape[axis + 1..].iter().product(),
            output: x.clone(),
        })
    }
}
