//! BatchNormalization (ONNX, inference form): `y = scale·(x − mean)/√(var + ε) + bias` per
//! channel (dimension 1) of an `[N, C, D1, …]` input.

use super::{indexable, product, same_dtype};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::TensorDesc;

const OP: &str = "BatchNormalization";

/// ONNX BatchNormalization attributes (inference mode).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchNorm {
    pub epsilon: f32,
}

impl Default for BatchNorm {
    fn default() -> Self {
        BatchNorm { epsilon: 1e-5 }
    }
}

/// A validated batch normalisation over `n` blocks of `c` channels of `inner` elements each.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormPlan {
    pub dtype: DType,
    pub n: usize,
    pub c: usize,
    /// Elements per channel per batch item (product of the spatial dims; 1 for `[N, C]`).
    pub inner: usize,
    pub epsilon: f32,
    pub output: TensorDesc,
}

impl BatchNormPlan {
    /// Exact FLOP count: 2 per element (the statistics fold into one scale and one shift).
    pub fn flops(&self) -> u64 {
        2 * product(&[self.n, self.c, self.inner])
    }
}

impl BatchNorm {
    /// Validates `x` (`[N, C, …]`, rank ≥ 2) and the four per-channel `[C]` parameters, given in
    /// ONNX order: scale, bias, mean, var.
    pub fn plan(&self, x: &TensorDesc, params: [&TensorDesc; 4]) -> Result<BatchNormPlan> {
        let dtype = x.dtype();
        indexable(OP, &[("X", x)])?;
        if x.rank() < 2 {
            return Err(Error::shape(
                OP,
                format!("X must have rank >= 2 ([N, C, ...]), got {:?}", x.shape()),
            ));
        }
        if !(self.epsilon >= 0.0 && self.epsilon.is_finite()) {
            return Err(Error::attribute(
                OP,
                "epsilon",
                format!("must be finite and >= 0, got {}", self.epsilon),
            ));
        }
        let c = x.shape()[1];
        for (name, t) in ["scale", "B", "input_mean", "input_var"]
            .into_iter()
            .zip(params)
        {
            same_dtype(OP, name, dtype, t)?;
            if t.shape() != [c] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{name} must have shape [{c}] (one per channel of X {:?}), got {:?}",
                        x.shape(),
                        t.shape()
                    ),
                ));
            }
        }
        Ok(BatchNormPlan {
            dtype,
            n: x.shape()[0],
            c,
            inner: x.shape()[2..].iter().product(),
            epsilon: self.epsilon,
            output: x.clone(),
        })
    }
}
