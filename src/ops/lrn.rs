//! LRN (ONNX opset 13): local response normalization across channels. For an input
//! `[N, C, D1, …, Dk]` (rank ≥ 3), `Y = X / (bias + alpha / size · square_sum) ^ beta`, where
//! `square_sum[n, c, …]` adds `X[n, i, …]²` over the channels
//! `i ∈ [max(0, c − ⌊(size − 1)/2⌋), min(C − 1, c + ⌈(size − 1)/2⌉)]`.
//!
//! Attributes are validated so that the base of the power is always positive and finite
//! attributes give finite math: `size ≥ 1` (odd or even, larger than `C` allowed; at most
//! [`MAX_DIM`]), `alpha` finite and `≥ 0`, `bias` finite and `> 0` (so the base is at least
//! `bias`), `beta` finite (any sign). onnxruntime is stricter (odd `size`, positive `alpha` and
//! `beta`, 4-D inputs only); eia accepts every shape and attribute ONNX's formula defines.

use super::{indexable, product, MAX_DIM};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::TensorDesc;

const OP: &str = "LRN";

/// ONNX LRN attributes. `size` is required (no default: 0 is refused).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lrn {
    /// Channels in the window (≥ 1).
    pub size: usize,
    /// ONNX default: 1e-4.
    pub alpha: f32,
    /// ONNX default: 0.75.
    pub beta: f32,
    /// ONNX default: 1.0.
    pub bias: f32,
}

impl Default for Lrn {
    fn default() -> Self {
        Lrn {
            size: 0,
            alpha: 1e-4,
            beta: 0.75,
            bias: 1.0,
        }
    }
}

/// A validated LRN over the `[n, c, inner]` view (`inner` = the product of the spatial axes).
#[derive(Clone, Debug, PartialEq)]
pub struct LrnPlan {
    pub dtype: DType,
    pub n: usize,
    pub c: usize,
    pub inner: usize,
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub bias: f32,
    pub output: TensorDesc,
}

impl LrnPlan {
    /// Exact FLOP count: `size + 3` per element (the window's squares and adds, the scale, the
    /// power and the multiply), saturating.
    pub fn flops(&self) -> u64 {
        (self.size as u64 + 3).saturating_mul(product(&[self.n, self.c, self.inner]))
    }

    /// Channels of the window before the centre: `⌊(size − 1) / 2⌋`.
    pub fn before(&self) -> usize {
        (self.size - 1) / 2
    }

    /// Channels of the window after the centre: `⌈(size − 1) / 2⌉`.
    pub fn after(&self) -> usize {
        self.size / 2
    }

    /// `alpha / size`, the factor of the square sum.
    pub fn scale(&self) -> f32 {
        (self.alpha as f64 / self.size as f64) as f32
    }
}

impl Lrn {
    /// Validates the attributes and `x` (rank ≥ 3, `[N, C, spatial...]`).
    pub fn plan(&self, x: &TensorDesc) -> Result<LrnPlan> {
        indexable(OP, &[("X", x)])?;
        let shape = x.shape();
        if shape.len() < 3 {
            return Err(Error::shape(
                OP,
                format!(
                    "X must have rank >= 3 ([N, C, spatial...]), got shape {shape:?} (rank {})",
                    shape.len()
                ),
            ));
        }
        if self.size == 0 || self.size > MAX_DIM {
            return Err(Error::attribute(
                OP,
                "size",
                format!(
                    "must be in 1..={MAX_DIM} (it is required), got {}",
                    self.size
                ),
            ));
        }
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(Error::attribute(
                OP,
                "alpha",
                format!(
                    "must be finite and >= 0 (so that the base stays positive), got {}",
                    self.alpha
                ),
            ));
        }
        if !self.beta.is_finite() {
            return Err(Error::attribute(
                OP,
                "beta",
                format!("must be finite, got {}", self.beta),
            ));
        }
        if !(self.bias.is_finite() && self.bias > 0.0) {
            return Err(Error::attribute(
                OP,
                "bias",
                format!(
                    "must be finite and > 0 (the base of the power is at least bias), got {}",
                    self.bias
                ),
            ));
        }
        Ok(LrnPlan {
            dtype: x.dtype(),
            n: shape[0],
            c: shape[1],
            inner: shape[2..].iter().product(),
            size: self.size,
            alpha: self.alpha,
            beta: self.beta,
            bias: self.bias,
            output: x.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lrn(size: usize) -> Lrn {
        Lrn {
            size,
            ..Lrn::default()
        }
    }

    #[test]
    fn plans_the_view_window_and_flops() {
        let x = TensorDesc::new(DType::F16, &[2, 5, 3, 4]).unwrap();
        let p = lrn(3).plan(&x).unwrap();
        assert_eq!((p.n, p.c, p.inner), (2, 5, 12));
        assert_eq!((p.before(), p.after(), p.flops()), (1, 1, 6 * 120));
        assert_eq!(p.output, x);
        let even = lrn(4).plan(&x).unwrap();
        assert_eq!((even.before(), even.after(), even.flops()), (1, 2, 7 * 120));
        let one = lrn(1).plan(&x).unwrap();
        assert_eq!((one.before(), one.after()), (0, 0));
        let wide = lrn(10).plan(&x).unwrap();
        assert_eq!((wide.before(), wide.after()), (4, 5));
        assert_eq!(wide.scale(), 1e-5);
        let x5 = TensorDesc::new(DType::F32, &[1, 3, 2, 2, 2]).unwrap();
        assert_eq!(lrn(2).plan(&x5).unwrap().inner, 8);
        let empty = TensorDesc::new(DType::F32, &[0, 3, 4]).unwrap();
        assert_eq!(lrn(3).plan(&empty).unwrap().flops(), 0);
        let huge = TensorDesc::new(DType::F32, &[1 << 20, 1 << 10, 1 << 10]).unwrap();
        assert_eq!(lrn(MAX_DIM).plan(&huge).unwrap().flops(), u64::MAX);
    }

    #[test]
    fn every_bad_attribute_and_shape_is_refused() {
        let x = TensorDesc::new(DType::F32, &[2, 5, 3, 4]).unwrap();
        let d = lrn(3);
        for (bad, name) in [
            (Lrn::default(), "size"),
            (lrn(MAX_DIM + 1), "size"),
            (Lrn { alpha: -1e-4, ..d }, "alpha"),
            (
                Lrn {
                    alpha: f32::NAN,
                    ..d
                },
                "alpha",
            ),
            (
                Lrn {
                    alpha: f32::INFINITY,
                    ..d
                },
                "alpha",
            ),
            (
                Lrn {
                    beta: f32::NAN,
                    ..d
                },
                "beta",
            ),
            (
                Lrn {
                    beta: f32::NEG_INFINITY,
                    ..d
                },
                "beta",
            ),
            (Lrn { bias: 0.0, ..d }, "bias"),
            (Lrn { bias: -1.0, ..d }, "bias"),
            (
                Lrn {
                    bias: f32::INFINITY,
                    ..d
                },
                "bias",
            ),
        ] {
            match bad.plan(&x) {
                Err(Error::Attribute {
                    op: "LRN",
                    name: n,
                    msg,
                }) => {
                    assert_eq!(n, name, "{bad:?}: {msg}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // Zero alpha and negative beta are well defined.
        assert!(Lrn {
            alpha: 0.0,
            beta: -0.5,
            ..d
        }
        .plan(&x)
        .is_ok());
        for shape in [&[2, 5][..], &[5], &[]] {
            let x = TensorDesc::new(DType::F32, shape).unwrap();
            match d.plan(&x) {
                Err(Error::Shape { op: "LRN", msg }) => assert!(msg.contains("rank >= 3"), "{msg}"),
                other => panic!("{shape:?}: {other:?}"),
            }
        }
    }
}
